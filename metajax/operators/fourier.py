"""Centred, orthonormal 2-D discrete Fourier transforms.

``fft2c(x) = fftshift(fft2(ifftshift(x), norm="ortho"))`` over the last two axes,
so the DC coefficient sits at index ``[H // 2, W // 2]`` and ``ifft2c`` is the exact
inverse (and adjoint) of ``fft2c`` for even and odd sizes alike.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from metajax._validation import check_inexact, check_min_ndim

_AXES = (-2, -1)


def fft2c(x: jax.Array) -> jax.Array:
    """Centred orthonormal 2-D FFT of ``x`` with shape (..., H, W); returns complex (..., H, W)."""
    check_inexact("x", x)
    check_min_ndim("x", x, 2, "(..., H, W)")
    return jnp.fft.fftshift(jnp.fft.fft2(jnp.fft.ifftshift(x, axes=_AXES), norm="ortho"), axes=_AXES)


def ifft2c(k: jax.Array) -> jax.Array:
    """Centred orthonormal inverse 2-D FFT of k-space ``k`` with shape (..., H, W)."""
    check_inexact("k", k)
    check_min_ndim("k", k, 2, "(..., H, W)")
    return jnp.fft.fftshift(jnp.fft.ifft2(jnp.fft.ifftshift(k, axes=_AXES), norm="ortho"), axes=_AXES)
