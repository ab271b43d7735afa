"""Classical reconstructions: zero-filled (adjoint), SENSE (CG), total variation (PDHG), ℓ1-wavelet (FISTA).

SENSE (Pruessmann et al. 1999) with an optional Tikhonov weight λ ≥ 0 is the
least-squares image ``x* = argmin_x ½‖A x − y‖² + (λ/2)‖x‖²``, computed by
``iterations`` conjugate-gradient steps on ``(A^H A + λ I) x = A^H y`` from
``x = 0`` (as sigpy's ``SenseRecon``; with λ = 0 the iteration count is the
regulariser, stopping before noise amplification).

ℓ1-wavelet CS (Lustig et al. 2007) solves
``x* = argmin_x ½‖A x − y‖² + λ‖W x‖₁`` with the orthonormal wavelet transform
:func:`~metajax.operators.wavelet.wavelet_transform` by FISTA (Beck & Teboulle
2009) with the step ``1/L``, ``L = ‖A‖²`` (power iteration, as below) — the
algorithm of sigpy's ``L1WaveletRecon``; the proximal map is exact because W is
orthonormal (complex soft thresholding of the coefficients' moduli).

TV reconstruction solves

    x* = argmin_x ½‖A x − y‖² + λ Σ_pixels sqrt(|∇_v x|² + |∇_h x|²)

(isotropic TV; for complex images the modulus covers real and imaginary
parts) with the primal–dual hybrid gradient method of Chambolle & Pock (2011)
applied to ``K = [A; ∇]``:

    p ← (p + σ (A x̄ − y)) / (1 + σ)              (prox of the data term's conjugate)
    q ← Π_{|q| ≤ λ}(q + σ ∇ x̄)                  (projection, pixelwise)
    x⁺ ← x − τ (A^H p + ∇^T q);   x̄ ← 2 x⁺ − x

with ``τ = 0.99 / (β‖K‖)``, ``σ = 0.99 β / ‖K‖`` and ``‖K‖² ≤ ‖A‖² + 8``; ``‖A‖``
is estimated by power iteration on ``A^H A`` from a fixed start vector (no
hidden randomness) and inflated by 2 % so that ``τσ‖K‖² < 1`` holds.

Deviation from the textbook ``τ = σ``: the dual TV variable lives on the scale
of λ while the image lives on the scale of ``s = max|A^H y|``, so we balance
the steps with ``β = sqrt(λ / s)`` (clipped to [0.01, 1]; β = 1 when λ = 0). On 256×256
chest images at 20 % radial sampling this reaches the converged PSNR in ~300
iterations instead of > 2000 with ``τ = σ``.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from metajax._validation import check_finite, check_per_image, check_positive_int, is_concrete
from metajax.linear_solve import conjugate_gradient
from metajax.operators.base import LinearOperator
from metajax.operators.wavelet import inverse_wavelet_transform, wavelet_transform


def zero_filled(operator: LinearOperator, y: jax.Array) -> jax.Array:
    """Zero-filled reconstruction ``A^H y`` (the adjoint applied to the measurements)."""
    check_finite("y", y)
    return operator.adjoint(y)


def finite_difference(x: jax.Array) -> jax.Array:
    """Forward differences with Neumann boundary, (..., H, W) → (2, ..., H, W) [vertical, horizontal]."""
    dv = jnp.concatenate([x[..., 1:, :] - x[..., :-1, :], jnp.zeros_like(x[..., :1, :])], axis=-2)
    dh = jnp.concatenate([x[..., :, 1:] - x[..., :, :-1], jnp.zeros_like(x[..., :, :1])], axis=-1)
    return jnp.stack([dv, dh])


def finite_difference_adjoint(q: jax.Array) -> jax.Array:
    """Adjoint of :func:`finite_difference` (minus the discrete divergence)."""
    qv, qh = q[0][..., :-1, :], q[1][..., :, :-1]
    pad_v = [(0, 0)] * (qv.ndim - 2)
    adj_v = jnp.pad(qv, pad_v + [(1, 0), (0, 0)]) - jnp.pad(qv, pad_v + [(0, 1), (0, 0)])
    adj_h = jnp.pad(qh, pad_v + [(0, 0), (1, 0)]) - jnp.pad(qh, pad_v + [(0, 0), (0, 1)])
    return adj_v + adj_h


def operator_norm(operator: LinearOperator, x_like: jax.Array, iterations: int = 30) -> jax.Array:
    """Estimate ``‖A‖`` by power iteration on ``A^H A`` starting from a fixed vector."""
    x = jax.random.normal(jax.random.key(0), x_like.shape, x_like.dtype)

    x = jax.lax.fori_loop(0, iterations, lambda _, x: operator.normal(x / jnp.linalg.norm(x)), x)
    unit = x / jnp.linalg.norm(x)
    return jnp.sqrt(jnp.real(jnp.vdot(unit, operator.normal(unit))))


def _tv_pdhg(operator, y, weight, iterations):
    """PDHG for one image: ``y`` is one measurement, ``weight`` a scalar."""
    x0 = operator.adjoint(y)
    weight = weight.astype(jnp.finfo(x0.dtype).dtype)
    norm_k = jnp.sqrt((1.02 * operator_norm(operator, x0)) ** 2 + 8.0)
    balance = jnp.clip(jnp.sqrt(weight / jnp.max(jnp.abs(x0))), 0.01, 1.0)
    balance = jnp.where(weight > 0, balance, 1.0)  # no TV term, no dual scale to balance
    tau, sigma = 0.99 / (norm_k * balance), 0.99 * balance / norm_k

    def body(_, state):
        x, x_bar, p, q = state
        p = (p + sigma * (operator(x_bar) - y)) / (1 + sigma)
        q = q + sigma * finite_difference(x_bar)
        q_norm = jnp.sqrt(jnp.sum(jnp.abs(q) ** 2, axis=0))
        # Π_{|q| ≤ λ}: rescale only where |q| > λ (so λ = 0 with q = 0 never forms 0/0).
        q = q * jnp.where(q_norm > weight, weight / jnp.where(q_norm > 0, q_norm, 1.0), 1.0)
        x_new = x - tau * (operator.adjoint(p) + finite_difference_adjoint(q))
        return x_new, 2 * x_new - x, p, q

    state = (x0, x0, jnp.zeros_like(y), jnp.zeros((2, *x0.shape), x0.dtype))
    return jax.lax.fori_loop(0, iterations, body, state)[0]


@eqx.filter_jit
def _tv_batched(operator, y, weight, iterations):
    return _batched(lambda y, w: _tv_pdhg(operator, y, w, iterations), operator, y, weight)


def _batched(solve_one, operator, y, weight):
    """``solve_one(y, weight)`` over every leading batch axis of ``y`` beyond one measurement."""
    batch_shape = jax.eval_shape(operator.adjoint, y).shape[:-2]
    solve = solve_one
    for _ in batch_shape:
        solve = jax.vmap(solve)
    return solve(y, jnp.broadcast_to(weight, batch_shape))


def _check_classical(operator, y, weight, iterations) -> int:
    check_finite("y", y)
    check_finite("weight", weight)
    check_per_image("weight", weight, jax.eval_shape(operator.adjoint, y).shape[:-2], "y")
    if is_concrete(weight) and not np.all(np.asarray(weight) >= 0):
        raise ValueError(f"`weight` must be non-negative; got {weight}.")
    return check_positive_int("iterations", iterations)


@eqx.filter_jit
def _sense_batched(operator, y, weight, iterations):
    def one(y, weight):
        rhs = operator.adjoint(y)
        weight = weight.astype(jnp.finfo(rhs.dtype).dtype)
        return conjugate_gradient(lambda v: operator.normal(v) + weight * v, rhs, tol=0.0, max_iters=iterations)[0]

    return _batched(one, operator, y, weight)


def sense_reconstruction(operator: LinearOperator, y: jax.Array, weight=0.0, iterations: int = 30) -> jax.Array:
    """SENSE: ``iterations`` CG steps on ``(A^H A + λ I) x = A^H y`` from zero (module docstring), jit-compiled.

    Args:
        operator: forward model ``A`` (e.g. :class:`~metajax.operators.MultiCoilMRI` with estimated maps).
        y: measurements; leading batch axes are solved image by image.
        weight: λ ≥ 0 (scalar or broadcastable to the batch shape).
        iterations: CG iterations.

    Returns:
        The reconstruction, shaped like ``A^H y``.
    """
    iterations = _check_classical(operator, y, weight, iterations)
    return _sense_batched(operator, y, jnp.asarray(weight), iterations)


@eqx.filter_jit
def _l1_wavelet_batched(operator, y, weight, iterations, wavelet, levels):
    def one(y, weight):
        x0 = operator.adjoint(y)
        real = jnp.finfo(x0.dtype).dtype
        step = 1.0 / operator_norm(operator, x0) ** 2
        threshold = (weight * step).astype(real)

        def prox(v):
            c = wavelet_transform(v, wavelet, levels)
            magnitude = jnp.abs(c)
            shrink = jnp.maximum(magnitude - threshold, 0) / jnp.where(magnitude > 0, magnitude, 1)
            return inverse_wavelet_transform(c * shrink, wavelet, levels)

        def body(_, state):
            x, v, t = state
            x_new = prox(v - step * operator.adjoint(operator(v) - y))
            t_new = (1 + jnp.sqrt(1 + 4 * t * t)) / 2
            return x_new, x_new + ((t - 1) / t_new) * (x_new - x), t_new

        return jax.lax.fori_loop(0, iterations, body, (x0, x0, jnp.ones((), real)))[0]

    return _batched(one, operator, y, weight)


def l1_wavelet_reconstruction(operator: LinearOperator, y: jax.Array, weight, iterations: int = 100,
                              wavelet: str = "db4", levels: int = 4) -> jax.Array:
    """ℓ1-wavelet CS by FISTA from the zero-filled image (module docstring), jit-compiled.

    Args:
        operator: forward model ``A``.
        y: measurements; leading batch axes are solved image by image.
        weight: λ ≥ 0 of ``λ‖W x‖₁`` (scalar or broadcastable to the batch shape).
        iterations: FISTA iterations.
        wavelet: the orthonormal wavelet (one of :data:`~metajax.operators.WAVELETS`).
        levels: the depth of the wavelet transform.
    """
    iterations = _check_classical(operator, y, weight, iterations)
    check_positive_int("levels", levels)
    return _l1_wavelet_batched(operator, y, jnp.asarray(weight), iterations, wavelet, levels)


def tv_reconstruction(operator: LinearOperator, y: jax.Array, weight, iterations: int = 300) -> jax.Array:
    """TV-regularised reconstruction by PDHG (see the module docstring), jit-compiled.

    Args:
        operator: forward model ``A``.
        y: measurements; leading batch axes (beyond what ``A^H`` maps to one
            (H, W) image) are solved independently, image by image.
        weight: λ ≥ 0, a scalar or an array broadcastable to the batch shape.
        iterations: number of PDHG iterations.

    Returns:
        The reconstruction, shaped like ``A^H y``.
    """
    iterations = _check_classical(operator, y, weight, iterations)
    return _tv_batched(operator, y, jnp.asarray(weight), iterations)
