"""Unrolled primal–dual network (PDNet), as used by Terris & Moreau (Meta-Prior, 2023).

Layer k is one Chambolle–Pock/Condat–Vũ iteration for
``min_x ½‖A x − y‖² + λ_k ‖W_k x‖₁`` with a learned analysis operator ``W_k``
(one 3×3 convolution, image channels → ``channels`` feature maps):

    x⁺ = x − τ_k (A^H (A x − y) + W_k^T u)
    u⁺ = clip(u + σ_k W_k (2x⁺ − x), −λ_k, λ_k)          (prox of (λ_k‖·‖₁)*)

with per-layer (W_k, λ_k, τ_k, σ_k) — nothing is shared between layers. Real
images use one channel (40·1·9 weights + 1 threshold = 361 parameters per
layer, as in the paper, plus the two step sizes); complex images enter ``W_k``
as two real channels [Re, Im] (721 + 2). ``W_k^T`` is computed as a forward
convolution (:func:`metajax.models.layers.conv_adjoint`). Works for any metajax
operator; ``x₀ = A^H y``, ``u₀ = 0``.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp

from metajax._validation import (check_float_dtype, check_key, check_measurements, check_model_precision,
                                check_positive_int)
from metajax.adjoint import Autodiff, unroll
from metajax.models.layers import conv, conv_adjoint, from_channels, to_channels, xavier_uniform
from metajax.operators.base import LinearOperator


class PDNetParams(eqx.Module):
    """The shared inputs of every PDNet layer: the forward ``operator`` and the measurements ``y``."""

    operator: LinearOperator
    y: jax.Array


def pdnet_phase(state, theta, params: PDNetParams):
    """One PDNet layer: ``state = (x, u)``, ``theta = {"kernel", "threshold", "tau", "sigma"}``."""
    x, u = state
    op, y = params.operator, params.y
    kernel = theta["kernel"].astype(u.dtype)
    x_new = x - theta["tau"] * (op.adjoint(op(x) - y) + from_channels(conv_adjoint(u, kernel), x))
    u_new = u + theta["sigma"] * conv(to_channels(2 * x_new - x), kernel)
    return x_new, jnp.clip(u_new, -theta["threshold"], theta["threshold"])


class PDNet(eqx.Module):
    """Unrolled PDNet with ``num_layers`` layers (see the module docstring).

    Args:
        key: PRNG key for the Xavier-uniform kernels.
        num_layers: number of unrolled layers T.
        channels: feature maps of each analysis operator (paper: 40).
        complex_images: True for MRI (two real input channels), False for real images.
        threshold: initial per-layer threshold.
        tau: initial per-layer primal step size.
        sigma: initial per-layer dual step size.
    """

    kernel: jax.Array
    threshold: jax.Array
    tau: jax.Array
    sigma: jax.Array

    def __init__(self, key, num_layers: int = 10, channels: int = 40, complex_images: bool = True,
                 threshold: float = 0.05, tau: float = 0.5, sigma: float = 0.5, kernel_size: int = 3,
                 dtype=jnp.float32):
        check_key("key", key)
        check_float_dtype("dtype", dtype)
        num_layers = check_positive_int("num_layers", num_layers)
        channels = check_positive_int("channels", channels)
        if check_positive_int("kernel_size", kernel_size) % 2 == 0:
            raise ValueError(f"`kernel_size` must be odd; got {kernel_size}.")
        shape = (channels, 2 if complex_images else 1, kernel_size, kernel_size)
        self.kernel = jnp.stack([xavier_uniform(k, shape, dtype) for k in jax.random.split(key, num_layers)])
        self.threshold = jnp.full(num_layers, threshold, dtype)
        self.tau = jnp.full(num_layers, tau, dtype)
        self.sigma = jnp.full(num_layers, sigma, dtype)

    @property
    def thetas(self) -> dict:
        """The per-layer controls of :func:`~metajax.adjoint.unroll`: ``kernel`` (L, C, 1 or 2, k, k) and
        ``threshold``, ``tau``, ``sigma`` (L,)."""
        return {"kernel": self.kernel, "threshold": self.threshold, "tau": self.tau, "sigma": self.sigma}

    def initial_state(self, operator, y):
        """``(x₀, u₀)``: the adjoint image ``A^H y`` (H, W) and zero dual channels (C, H, W), after the checks of
        the measurements and of the model's precision."""
        check_model_precision(self)
        y = check_measurements(operator, y)
        x0 = operator.adjoint(y)
        if (self.kernel.shape[2] == 2) != jnp.iscomplexobj(x0):
            raise ValueError(
                f"PDNet was built for {'complex' if self.kernel.shape[2] == 2 else 'real'} images but "
                f"`operator.adjoint(y)` has dtype {x0.dtype}; set `complex_images` accordingly."
            )
        real = jnp.finfo(x0.dtype).dtype
        return x0, jnp.zeros((self.kernel.shape[1], *x0.shape[-2:]), real)

    def __call__(self, operator: LinearOperator, y: jax.Array, *, adjoint=Autodiff()) -> jax.Array:
        """Reconstruct one image from ``y``; batches go through ``jax.vmap``."""
        u0 = self.initial_state(operator, y)
        return unroll(pdnet_phase, u0, self.thetas, PDNetParams(operator, y), adjoint=adjoint)[0]
