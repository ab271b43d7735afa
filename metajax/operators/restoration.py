"""Image-restoration forward models on (..., H, W) images, real or complex.

``Denoising``      A x = x
``Inpainting``     A x = M ⊙ x
``Blur``           A x = k ⊛ x            (circular convolution, kernel centred)
``Downsampling``   A x = S (k ⊛ x)        (S keeps every f-th pixel; box averaging when k is None)
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from metajax._validation import (
    as_binary_mask,
    check_finite,
    check_inexact,
    check_min_ndim,
    check_ndim,
    check_positive_int,
    check_real,
    check_trailing_shape,
)
from metajax.operators.base import LinearOperator


def _check_image(name: str, x) -> None:
    check_inexact(name, x)
    check_min_ndim(name, x, 2, "(..., H, W)")


class Denoising(LinearOperator):
    """Identity forward model ``A x = x`` (noise is added by the task)."""

    def __call__(self, x):
        _check_image("x", x)
        return x

    def adjoint(self, y):
        _check_image("y", y)
        return y


class Inpainting(LinearOperator):
    """Pixel masking ``A x = M ⊙ x``; ``mask`` is (H, W) binary, 1 = observed."""

    mask: jax.Array

    def __init__(self, mask):
        self.mask = as_binary_mask("mask", mask)

    def __call__(self, x):
        _check_image("x", x)
        check_trailing_shape("x", x, self.mask.shape, "(..., H, W)")
        return self.restrict(x)

    def adjoint(self, y):
        _check_image("y", y)
        check_trailing_shape("y", y, self.mask.shape, "(..., H, W)")
        return self.restrict(y)

    def restrict(self, y):
        return jnp.where(self.mask, y, 0)


def gaussian_kernel(sigma: float, size: int | None = None, dtype=jnp.float32) -> jax.Array:
    """Normalised isotropic Gaussian blur kernel, (size, size), default size ``2⌈3σ⌉+1``."""
    if not sigma > 0:
        raise ValueError(f"`sigma` must be positive; got {sigma!r}.")
    size = 2 * int(np.ceil(3 * sigma)) + 1 if size is None else check_positive_int("size", size)
    r = jnp.arange(size, dtype=dtype) - (size - 1) / 2
    g = jnp.exp(-0.5 * (r / sigma) ** 2)
    kernel = g[:, None] * g[None, :]
    return kernel / kernel.sum()


def _transfer_function(kernel: jax.Array, shape: tuple[int, int]) -> jax.Array:
    """DFT of ``kernel`` zero-padded to ``shape`` with its centre moved to pixel (0, 0)."""
    kh, kw = kernel.shape
    padded = jnp.zeros(shape, kernel.dtype).at[:kh, :kw].set(kernel)
    return jnp.fft.fft2(jnp.roll(padded, (-(kh // 2), -(kw // 2)), axis=(0, 1)))


def _circular_filter(x: jax.Array, transfer: jax.Array) -> jax.Array:
    out = jnp.fft.ifft2(jnp.fft.fft2(x) * transfer)
    return out if jnp.iscomplexobj(x) else out.real.astype(x.dtype)


class Blur(LinearOperator):
    """Circular convolution with a real kernel, ``A x = k ⊛ x``.

    The kernel's centre ``(kh // 2, kw // 2)`` is the origin; boundaries wrap
    (periodic), which makes ``A^H`` the correlation with the same kernel.

    Args:
        kernel: (kh, kw) real, finite kernel; at most the image size.
    """

    kernel: jax.Array

    def __init__(self, kernel):
        check_real("kernel", kernel)
        check_ndim("kernel", kernel, 2, "(kh, kw)")
        check_finite("kernel", kernel)
        self.kernel = jnp.asarray(kernel)

    def _transfer(self, name: str, x) -> jax.Array:
        _check_image(name, x)
        h, w = x.shape[-2:]
        if self.kernel.shape[0] > h or self.kernel.shape[1] > w:
            raise ValueError(
                f"`{name}` of spatial size {(h, w)} is smaller than the blur kernel "
                f"{tuple(self.kernel.shape)}; expected an image at least as large as the kernel."
            )
        return _transfer_function(self.kernel, (h, w))

    def __call__(self, x):
        return _circular_filter(x, self._transfer("x", x))

    def adjoint(self, y):
        return _circular_filter(y, jnp.conj(self._transfer("y", y)))


class Downsampling(LinearOperator):
    """Downsampling by an integer ``factor`` f: (..., H, W) → (..., H/f, W/f).

    With ``kernel=None`` the image is averaged over f×f blocks (area
    downsampling). With a kernel, the image is first blurred circularly by it
    (see :class:`Blur`) and then every f-th pixel, starting at (0, 0), is kept.
    H and W must be multiples of f; nothing is cropped.
    """

    factor: int = eqx.field(static=True)
    blur: Blur | None

    def __init__(self, factor: int, kernel=None):
        self.factor = check_positive_int("factor", factor)
        self.blur = None if kernel is None else Blur(kernel)

    def _check(self, name: str, x) -> None:
        _check_image(name, x)
        h, w = x.shape[-2:]
        if h % self.factor or w % self.factor:
            raise ValueError(
                f"`{name}` spatial size {(h, w)} must be divisible by factor {self.factor}; "
                "crop or pad the images explicitly first."
            )

    def __call__(self, x):
        self._check("x", x)
        f = self.factor
        if self.blur is None:
            h, w = x.shape[-2:]
            return x.reshape(*x.shape[:-2], h // f, f, w // f, f).mean(axis=(-3, -1))
        return self.blur(x)[..., ::f, ::f]

    def adjoint(self, y):
        _check_image("y", y)
        f = self.factor
        if self.blur is None:
            up = jnp.repeat(jnp.repeat(y, f, axis=-2), f, axis=-1)
            return up / f**2
        up = jnp.zeros((*y.shape[:-2], y.shape[-2] * f, y.shape[-1] * f), y.dtype)
        return self.blur.adjoint(up.at[..., ::f, ::f].set(y))
