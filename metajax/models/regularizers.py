"""Learned regularizers: a feature CNN ``g`` and the smoothed l2,1 energy of its features.

    r(x)   = Σ_j ‖g_j(x)‖                            (l2,1 over pixels j, l2 over channels)
    r_ε(x) = Σ_j sqrt(‖g_j(x)‖² + ε²) − ε             (Bian et al. 2021, eq. for R_ε)

``g(x) = W_l ⋆ φ_δ(… φ_δ(W_1 ⋆ x))`` is a bias-free complex CNN (complex
kernels, the smoothed ReLU φ_δ applied to real and imaginary parts
separately, no activation after the last layer), Xavier-initialised.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp

from metajax._validation import check_positive_int
from metajax.models.layers import complex_conv, smoothed_relu, xavier_uniform


class FeatureCNN(eqx.Module):
    """Bias-free complex CNN ``g``: complex (H, W) image → complex (features, H, W).

    Args:
        key: PRNG key for the Xavier-uniform initialisation.
        layers: number of convolution layers l (paper: 3).
        features: kernels per layer d (paper: 4).
        out_features: kernels of the last layer (default: ``features``).
        kernel_size: odd spatial size (paper: 3).
        delta: smoothing δ of the ReLU (paper: 0.001).
    """

    kernels_re: tuple[jax.Array, ...]
    kernels_im: tuple[jax.Array, ...]
    delta: float = eqx.field(static=True)

    def __init__(self, key, layers: int = 3, features: int = 4, kernel_size: int = 3, delta: float = 1e-3,
                 out_features: int | None = None, dtype=jnp.float32):
        layers = check_positive_int("layers", layers)
        features = check_positive_int("features", features)
        out_features = features if out_features is None else check_positive_int("out_features", out_features)
        if check_positive_int("kernel_size", kernel_size) % 2 == 0:
            raise ValueError(f"`kernel_size` must be odd; got {kernel_size}.")
        widths = [1] + [features] * (layers - 1) + [out_features]
        shapes = [(widths[i + 1], widths[i], kernel_size, kernel_size) for i in range(layers)]
        keys = jax.random.split(key, 2 * layers)
        # Real and imaginary parts each get half the variance of a real Xavier kernel.
        self.kernels_re = tuple(xavier_uniform(k, s, dtype, gain=0.5**0.5) for k, s in zip(keys[:layers], shapes))
        self.kernels_im = tuple(xavier_uniform(k, s, dtype, gain=0.5**0.5) for k, s in zip(keys[layers:], shapes))
        self.delta = float(delta)

    def __call__(self, x: jax.Array) -> jax.Array:
        h = x[None]
        last = len(self.kernels_re) - 1
        for i, (k_re, k_im) in enumerate(zip(self.kernels_re, self.kernels_im)):
            h = complex_conv(h, k_re.astype(x.real.dtype), k_im.astype(x.real.dtype))
            if i < last:
                h = jax.lax.complex(smoothed_relu(h.real, self.delta), smoothed_relu(h.imag, self.delta))
        return h


def smoothed_l21(features: jax.Array, eps: jax.Array) -> jax.Array:
    """``Σ_j sqrt(‖f_j‖² + ε²) − ε`` over pixels j of complex (C, H, W) features."""
    squared = jnp.sum(features.real**2 + features.imag**2, axis=0)
    return jnp.sum(jnp.sqrt(squared + eps**2) - eps)
