"""Building blocks of the learned models: convolutions, activations, initialisation.

Convolutions act on one image with channels first, (C, H, W), with zero
'SAME' padding and odd kernels (O, I, kh, kw); batches go through ``vmap``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

_DIMENSIONS = ("NCHW", "OIHW", "NCHW")


def conv(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """Cross-correlation ``(W x)_o = Σ_i k_{o,i} ⋆ x_i``: (I, H, W) → (O, H, W), zero 'SAME' padding."""
    return jax.lax.conv_general_dilated(x[None], kernel, (1, 1), "SAME", dimension_numbers=_DIMENSIONS)[0]


def conv_adjoint(y: jax.Array, kernel: jax.Array) -> jax.Array:
    """Adjoint of :func:`conv`, (O, H, W) → (I, H, W).

    Written as a forward correlation with the spatially flipped, channel-swapped
    kernel (exact for odd kernels with 'SAME' zero padding). XLA:CPU runs this
    much faster inside rolled loops than the transposed convolution autodiff
    would emit (DESIGN.md §5).
    """
    return conv(y, jnp.flip(kernel, axis=(-2, -1)).swapaxes(0, 1))


def complex_conv(x: jax.Array, kernel_re: jax.Array, kernel_im: jax.Array) -> jax.Array:
    """Complex correlation ``(k_re + i k_im) ⋆ x`` for complex (I, H, W) → complex (O, H, W).

    Computed as one real convolution of ``[Re x; Im x]`` with the block kernel
    ``[[k_re, −k_im], [k_im, k_re]]``.
    """
    block = jnp.concatenate(
        [jnp.concatenate([kernel_re, -kernel_im], axis=1), jnp.concatenate([kernel_im, kernel_re], axis=1)], axis=0
    )
    out = conv(jnp.concatenate([x.real, x.imag]), block)
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
