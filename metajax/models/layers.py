"""Building blocks of the learned models: convolutions, activations, initialisation.

Kernels are stored (O, I, kh, kw) with odd spatial sizes and act with zero
'SAME' padding. :func:`conv`, :func:`conv_adjoint` and :func:`complex_conv`
take one channels-first (C, H, W) image (batches go through ``vmap``); inside
the networks activations stay channels-last, the layout that
:func:`~metajax.models.convolution.conv2d` runs fastest.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from metajax.models.convolution import conv2d


def hwio(kernel: jax.Array) -> jax.Array:
    """(O, I, kh, kw) kernel (the storage layout, as in PyTorch) → (kh, kw, I, O) for :func:`conv2d`."""
    return kernel.transpose(2, 3, 1, 0)


def conv(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """Cross-correlation ``(W x)_o = Σ_i k_{o,i} ⋆ x_i``: (I, H, W) → (O, H, W), zero 'SAME' padding.

    Computed channels-last by :func:`~metajax.models.convolution.conv2d`, whose
    derivatives are forward convolutions (fast inside rolled loops).
    """
    return conv2d(x.transpose(1, 2, 0)[None], hwio(kernel).astype(x.dtype))[0].transpose(2, 0, 1)


def conv_adjoint(y: jax.Array, kernel: jax.Array) -> jax.Array:
    """Adjoint of :func:`conv`, (O, H, W) → (I, H, W).

    A forward correlation with the spatially flipped, channel-swapped kernel
    (exact for odd kernels with 'SAME' zero padding).
    """
    return conv(y, jnp.flip(kernel, axis=(-2, -1)).swapaxes(0, 1))


def complex_block_kernel(kernel_re: jax.Array, kernel_im: jax.Array) -> jax.Array:
    """HWIO kernel of ``(k_re + i k_im) ⋆`` acting on channels ``[Re x, Im x]``: blocks ``[[k_re, −k_im], [k_im, k_re]]``.

    ``kernel_re``, ``kernel_im``: (O, I, kh, kw) → (kh, kw, 2I, 2O).
    """
    block = jnp.concatenate(
        [jnp.concatenate([kernel_re, -kernel_im], axis=1), jnp.concatenate([kernel_im, kernel_re], axis=1)], axis=0
    )
    return hwio(block)


def complex_conv(x: jax.Array, kernel_re: jax.Array, kernel_im: jax.Array) -> jax.Array:
    """Complex correlation ``(k_re + i k_im) ⋆ x`` for complex (I, H, W) → complex (O, H, W).

    Computed as one real convolution of ``[Re x; Im x]`` with the block kernel
    ``[[k_re, −k_im], [k_im, k_re]]``.
    """
    stacked = jnp.concatenate([x.real, x.imag]).transpose(1, 2, 0)[None]
    out = conv2d(stacked, complex_block_kernel(kernel_re, kernel_im).astype(stacked.dtype))[0].transpose(2, 0, 1)
    half = kernel_re.shape[0]
    return jax.lax.complex(out[:half], out[half:])


def smoothed_relu(x: jax.Array, delta: float) -> jax.Array:
    """C¹ smoothed ReLU: 0 for x ≤ −δ, x²/(4δ) + x/2 + δ/4 for |x| < δ, x for x ≥ δ."""
    quadratic = x**2 / (4 * delta) + x / 2 + delta / 4
    return jnp.where(x <= -delta, 0.0, jnp.where(x >= delta, x, quadratic)).astype(x.dtype)


def xavier_uniform(key, shape, dtype=jnp.float32, gain: float = 1.0) -> jax.Array:
    """Glorot/Xavier uniform init for an (O, I, kh, kw) kernel: U(±gain·sqrt(6 / (fan_in + fan_out)))."""
    receptive = shape[2] * shape[3]
    limit = gain * (6.0 / (shape[1] * receptive + shape[0] * receptive)) ** 0.5
    return jax.random.uniform(key, shape, dtype, -limit, limit)


def to_channels(x: jax.Array) -> jax.Array:
    """Complex (H, W) → real (2, H, W) [Re, Im]; real (H, W) → (1, H, W)."""
    return jnp.stack([x.real, x.imag]) if jnp.iscomplexobj(x) else x[None]


def from_channels(c: jax.Array, like: jax.Array) -> jax.Array:
    """Inverse of :func:`to_channels` for an image of the dtype of ``like``."""
    return jax.lax.complex(c[0], c[1]) if jnp.iscomplexobj(like) else c[0]
