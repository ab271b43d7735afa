"""Cartesian MRI forward models in centred k-space layout.

Single coil:  ``A x = M ⊙ F x``                 (H, W) complex → (H, W) complex
Multi coil:   ``(A x)_c = M ⊙ F (S_c ⊙ x)``      (H, W) complex → (C, H, W) complex

``F`` is :func:`metajax.operators.fft2c` (centred, orthonormal) and ``M`` a binary
mask in the same centred layout; unsampled k-space entries are exactly zero.
Leading batch axes ``(..., H, W)`` broadcast; ``vmap`` works as well.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from metajax._validation import (
    as_binary_mask,
    check_complex,
    check_finite,
    check_ndim,
    check_positive,
    check_positive_int,
    check_shape2d,
    check_trailing_shape,
)
from metajax.operators.base import LinearOperator
from metajax.operators.fourier import fft2c, ifft2c


def _check_image(name: str, x, shape: tuple[int, int]) -> None:
    check_complex(name, x)
    check_trailing_shape(name, x, shape, "(..., H, W)")


class SingleCoilMRI(LinearOperator):
    """Undersampled single-coil Cartesian MRI, ``A x = M ⊙ fft2c(x)``.

    Args:
        mask: (H, W) binary sampling mask (bool or 0/1), centred layout.
    """

    mask: jax.Array

    def __init__(self, mask):
        self.mask = as_binary_mask("mask", mask)

    @property
    def shape(self) -> tuple[int, int]:
        """The image (and k-space) size (H, W), the mask's shape."""
        return tuple(self.mask.shape)

    def __call__(self, x):
        _check_image("x", x, self.shape)
        return jnp.where(self.mask, fft2c(x), 0)

    def adjoint(self, y):
        _check_image("y", y, self.shape)
        return ifft2c(self.restrict(y))

    def restrict(self, y):
        return jnp.where(self.mask, y, 0)


class MultiCoilMRI(LinearOperator):
    """Undersampled multi-coil Cartesian MRI, ``(A x)_c = M ⊙ fft2c(S_c ⊙ x)``.

    The adjoint is ``A^H y = Σ_c conj(S_c) ⊙ ifft2c(M ⊙ y_c)``.

    Args:
        mask: (H, W) binary sampling mask, centred layout (shared by all coils).
        sens: (C, H, W) complex coil sensitivities.
    """

    mask: jax.Array
    sens: jax.Array

    def __init__(self, mask, sens):
        self.mask = as_binary_mask("mask", mask)
        check_complex("sens", sens)
        check_ndim("sens", sens, 3, "(C, H, W) of coil sensitivities")
        check_trailing_shape("sens", sens, self.mask.shape, f"(C, H, W) matching mask {self.mask.shape}")
        check_finite("sens", sens)
        self.sens = jnp.asarray(sens)

    @property
    def shape(self) -> tuple[int, int]:
        """The image (and k-space) size (H, W), the mask's shape."""
        return tuple(self.mask.shape)

    @property
    def num_coils(self) -> int:
        """C, the number of receive coils (the leading axis of ``sens``)."""
        return self.sens.shape[0]

    def __call__(self, x):
        _check_image("x", x, self.shape)
        return jnp.where(self.mask, fft2c(self.sens * x[..., None, :, :]), 0)

    def adjoint(self, y):
        check_complex("y", y)
        check_trailing_shape("y", y, self.sens.shape, "(..., C, H, W) matching the coil maps")
        return jnp.sum(jnp.conj(self.sens) * ifft2c(self.restrict(y)), axis=-3)

    def restrict(self, y):
        return jnp.where(self.mask, y, 0)


def birdcage_maps(shape, num_coils: int, radius: float = 1.5, dtype=jnp.complex64) -> jax.Array:
    """Simulated coil sensitivities of a birdcage array, shape (C, H, W).

    Coil ``c`` is a wire loop at angle ``φ_c = 2πc / C`` on a circle of ``radius``
    (in units of the half field of view) around the image centre. Its sensitivity
    at pixel position ``r`` (normalised to [-1, 1]) falls off as ``1 / |r − r_c|``
    and rotates in phase with the direction from the coil:
    ``S_c(r) ∝ exp(i (arg(r − r_c) − φ_c)) / |r − r_c|``.
    The maps are normalised so that ``Σ_c |S_c|² = 1`` at every pixel, which makes
    ``A^H A`` the identity for a fully sampled mask.

    Args:
        shape: (H, W) image size.
        num_coils: number of coils C ≥ 1.
        radius: coil-circle radius; must exceed √2 so every coil lies outside the image.
        dtype: complex dtype of the result.
    """
    h, w = check_shape2d("shape", shape)
    num_coils = check_positive_int("num_coils", num_coils)
    radius = check_positive("radius", radius)
    if radius <= 2**0.5:
        raise ValueError(f"`radius` must exceed sqrt(2) so coils lie outside the image; got {radius}.")
    if not jnp.issubdtype(dtype, jnp.complexfloating):
        raise TypeError(f"`dtype` must be a complex dtype; got {dtype}.")
    real = jnp.finfo(dtype).dtype
    y = (jnp.arange(h, dtype=real) - h / 2) / (h / 2)
    x = (jnp.arange(w, dtype=real) - w / 2) / (w / 2)
    phi = 2 * jnp.pi * jnp.arange(num_coils, dtype=real) / num_coils
    dx = x[None, None, :] - radius * jnp.cos(phi)[:, None, None]
    dy = y[None, :, None] - radius * jnp.sin(phi)[:, None, None]
    maps = jnp.exp(1j * (jnp.arctan2(dy, dx) - phi[:, None, None])) / jnp.hypot(dx, dy)
    maps = maps / jnp.sqrt(jnp.sum(jnp.abs(maps) ** 2, axis=0))
    return maps.astype(dtype)
