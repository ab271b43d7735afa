"""Forward operators: pure, jit/vmap/grad-able ``equinox.Module``s."""

from metajax.operators.base import LinearOperator, Scaled
from metajax.operators.fourier import fft2c, ifft2c
from metajax.operators.mri import MultiCoilMRI, SingleCoilMRI, birdcage_maps
from metajax.operators.sensitivity import acs_maps, calibration_shape, espirit, espirit_kernel, rss
from metajax.operators.wavelet import WAVELETS, inverse_wavelet_transform, wavelet_transform
from metajax.operators.restoration import Blur, Denoising, Downsampling, Inpainting, gaussian_kernel

__all__ = [
    "Scaled",
    "LinearOperator",
    "fft2c",
    "ifft2c",
    "SingleCoilMRI",
    "MultiCoilMRI",
    "birdcage_maps",
    "espirit",
    "espirit_kernel",
    "acs_maps",
    "calibration_shape",
    "rss",
    "wavelet_transform",
    "inverse_wavelet_transform",
    "WAVELETS",
    "Denoising",
    "Inpainting",
    "Blur",
    "Downsampling",
    "gaussian_kernel",
]
