"""Forward operators: pure, jit/vmap/grad-able ``equinox.Module``s."""

from metajax.operators.base import LinearOperator, Scaled
from metajax.operators.fourier import fft2c, ifft2c
from metajax.operators.mri import MultiCoilMRI, SingleCoilMRI, birdcage_maps
from metajax.operators.restoration import Blur, Denoising, Downsampling, Inpainting, gaussian_kernel

__all__ = [
    "Scaled",
    "LinearOperator",
    "fft2c",
    "ifft2c",
    "SingleCoilMRI",
    "MultiCoilMRI",
    "birdcage_maps",
    "Denoising",
    "Inpainting",
    "Blur",
    "Downsampling",
    "gaussian_kernel",
]
