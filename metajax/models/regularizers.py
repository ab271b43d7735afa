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

from metajax._validation import check_float_dtype, check_key, check_positive_int
from metajax.models.convolution import conv2d
from metajax.models.layers import complex_block_kernel, smoothed_relu, xavier_uniform


class FeatureCNN(eqx.Module):
    """Bias-free complex CNN ``g``: complex (H, W) image → complex (features, H, W).

    Args:
        key: PRNG key for the Xavier-uniform initialisation.
        layers: number of convolution layers l (paper: 3).
        features: kernels per layer d (paper: 4).
        out_features: kernels of the last layer (default: ``features``).
        kernel_size: odd spatial size (paper: 3).
        delta: smoothing δ of the ReLU (paper: 0.001).

    Kernels are stored (O, I, kh, kw), real and imaginary parts separately.
    Internally a layer is one real convolution of the channels-last stack
    ``[Re h, Im h]`` by the block kernel ``[[k_re, −k_im], [k_im, k_re]]``, and
    φ_δ acts on that stack elementwise (real and imaginary parts separately),
    so no complex array is formed until the output.
    """

    kernels_re: tuple[jax.Array, ...]
    kernels_im: tuple[jax.Array, ...]
    delta: float = eqx.field(static=True)

    def __init__(self, key, layers: int = 3, features: int = 4, kernel_size: int = 3, delta: float = 1e-3,
                 out_features: int | None = None, dtype=jnp.float32):
        check_key("key", key)
        check_float_dtype("dtype", dtype)
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

    def real_features(self, x: jax.Array) -> jax.Array:
        """``[Re g(x), Im g(x)]`` channels-last: complex (..., H, W) → real (..., H, W, 2·out_features)."""
        real = x.real.dtype
        lead = x.shape[:-2]
        h = jnp.stack([x.real, x.imag], axis=-1).reshape(-1, *x.shape[-2:], 2)
        last = len(self.kernels_re) - 1
        for i, (k_re, k_im) in enumerate(zip(self.kernels_re, self.kernels_im)):
            h = conv2d(h, complex_block_kernel(k_re, k_im).astype(real))
            if i < last:
                h = smoothed_relu(h, self.delta)
        return h.reshape(*lead, *h.shape[1:])

    def __call__(self, x: jax.Array) -> jax.Array:
        """g(x): complex (H, W) → complex (out_features, H, W)."""
        h = self.real_features(x)
        half = h.shape[-1] // 2
        return jnp.moveaxis(jax.lax.complex(h[..., :half], h[..., half:]), -1, -3)

    def linear_gain(self, slope: float = 1.0, grid: int = 32) -> jax.Array:
        """Operator norm of ``g`` with every activation replaced by ``slope · identity``.

        That network is one convolution, whose norm (circular boundary) is the
        largest ``‖K_l(ω) · slope · … · slope · K_1(ω)‖`` over frequencies ω, with
        ``K_l(ω)`` the (O, I) frequency response of layer l; evaluated on a
        ``grid × grid`` frequency grid (the response of the small effective kernel
        is smooth, so the grid maximum is within a few percent). ``slope = 1``: the
        Jacobian of ``g`` wherever every unit is active; ``slope = 1/2``: where the
        image vanishes (φ_δ'(0) = 1/2). Differentiable in the kernels.
        """
        size = self.kernels_re[0].shape[-1]
        offsets = jnp.arange(size) - size // 2
        omega = 2 * jnp.pi * jnp.arange(grid) / grid
        phase = jnp.exp(-1j * (omega[:, None, None, None] * offsets[None, None, :, None]
                               + omega[None, :, None, None] * offsets[None, None, None, :]))  # (n, n, kh, kw)
        response = None
        for i, (k_re, k_im) in enumerate(zip(self.kernels_re, self.kernels_im)):
            layer = jnp.einsum("oiab,uvab->uvoi", jax.lax.complex(k_re, k_im), phase.astype(
                jnp.result_type(k_re.dtype, jnp.complex64)))
            response = layer if response is None else slope * jnp.einsum("uvoi,uvij->uvoj", layer, response)
        squared = jnp.sum(jnp.abs(response) ** 2, axis=-2)  # (n, n, 1): the image has one (complex) channel
        return jnp.sqrt(jnp.max(squared))


def smoothed_l21(features: jax.Array, eps: jax.Array, axis: int = 0) -> jax.Array:
    """``Σ_j sqrt(‖f_j‖² + ε²) − ε`` over pixels j of features whose channels lie along ``axis``.

    ``features`` may be complex (C, H, W) (``FeatureCNN.__call__``) or the
    real channels-last stack of :meth:`FeatureCNN.real_features` with ``axis=-1``
    (the squared norm over real and imaginary channels is the same).
    """
    squared = jnp.sum(features.real**2 + features.imag**2 if jnp.iscomplexobj(features) else features**2, axis=axis)
    return jnp.sum(jnp.sqrt(squared + eps**2) - eps)
