"""Matrix-free solvers for the implicit meta-gradient system ``(I + H/λ) v = g`` on PyTrees.

Both return ``(x, info)`` with ``info = {"residual", "iterations", "status"}``:
``residual`` is the relative residual ``‖b − A x‖ / ‖b‖`` of the returned ``x``
and ``status`` one of

- ``CONVERGED`` (0): the residual reached ``tol``;
- ``MAX_ITERS`` (1): it did not within ``max_iters``;
- ``NEGATIVE_CURVATURE`` (2): CG met a direction with ``pᵀAp ≤ 0`` (``A`` is not
  positive definite, e.g. an indefinite Hessian); ``x`` is the last iterate before it;
- ``NONFINITE`` (3): a NaN/Inf appeared (in ``b`` or in a product ``A p``); ``x``
  is the last finite iterate (zero if ``b`` itself is not finite).

So a failed solve never returns NaN silently: ``x`` stays finite and the status
says why. Everything is ``lax`` control flow, so the solvers work under ``jit``
and ``vmap`` (each batch member stops on its own test).

Deviations from ``jax.scipy.sparse.linalg.cg``: it has no residual, iteration
count or failure status, and it keeps iterating through non-positive curvature
(dividing by ``pᵀAp ≤ 0``); here the iteration stops there. The residual used
for the stopping test is the recursively updated one (as in ``jax.scipy``); the
returned ``residual`` is that same quantity.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

CONVERGED, MAX_ITERS, NEGATIVE_CURVATURE, NONFINITE = 0, 1, 2, 3
_RUNNING = -1
STATUS_NAMES = {CONVERGED: "converged", MAX_ITERS: "max_iters", NEGATIVE_CURVATURE: "negative_curvature",
                NONFINITE: "nonfinite"}


def tree_vdot(a, b) -> jax.Array:
    """Real inner product ``Σ_leaves Σ a·b`` of two PyTrees of real arrays."""
    return sum(jnp.vdot(x, y).real for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def tree_axpy(alpha, x, y):
    """``α x + y`` leafwise."""
    return jax.tree.map(lambda a, b: (alpha * a).astype(b.dtype) + b, x, y)


def _select(pred, on_true, on_false):
    return jax.tree.map(lambda a, b: jnp.where(pred, a, b), on_true, on_false)


def _check(tol, max_iters) -> None:
    if not tol > 0:
        raise ValueError(f"`tol` must be positive; got {tol!r}.")
    if isinstance(max_iters, bool) or not isinstance(max_iters, int) or max_iters < 1:
        raise ValueError(f"`max_iters` must be a positive integer; got {max_iters!r}.")


def conjugate_gradient(matvec, b, *, tol: float = 1e-6, max_iters: int = 100):
    """Solve ``A x = b`` for symmetric positive definite ``A`` by conjugate gradients from ``x₀ = 0``.

    Args:
        matvec: ``v -> A v`` on PyTrees with the structure of ``b`` (real leaves).
        b: right-hand side PyTree.
        tol: stop when ``‖r_k‖ ≤ tol ‖b‖``.
        max_iters: at most this many products ``A p``.

    Returns:
        ``(x, info)``; see the module docstring for ``info``.
    """
    _check(tol, max_iters)
    b_norm = jnp.sqrt(tree_vdot(b, b))
    zero = jax.tree.map(jnp.zeros_like, b)
    finite_b = jnp.isfinite(b_norm)
    start_status = jnp.where(~finite_b, NONFINITE, jnp.where(b_norm == 0, CONVERGED, _RUNNING))
    rs0 = jnp.where(finite_b, b_norm**2, 0.0)
    b = _select(finite_b, b, zero)

    def body(carry):
        x, r, p, rs, k, _ = carry
        ap = matvec(p)
        curvature = tree_vdot(p, ap)
        alpha = rs / jnp.where(curvature > 0, curvature, 1.0)
        x_new = tree_axpy(alpha, p, x)
        r_new = tree_axpy(-alpha, ap, r)
        rs_new = tree_vdot(r_new, r_new)
        nonfinite = ~jnp.isfinite(curvature) | ~jnp.isfinite(rs_new)
        broken = nonfinite | ~(curvature > 0)
        status = jnp.where(nonfinite, NONFINITE, jnp.where(~(curvature > 0), NEGATIVE_CURVATURE, jnp.where(
            jnp.sqrt(rs_new) <= tol * b_norm, CONVERGED, jnp.where(k + 1 >= max_iters, MAX_ITERS, _RUNNING))))
        p_new = tree_axpy(rs_new / jnp.where(rs > 0, rs, 1.0), p, r_new)
        x, r, p, rs = _select(broken, (x, r, p, rs), (x_new, r_new, p_new, rs_new))
        return x, r, p, rs, k + 1, status

    x, _, _, rs, k, status = jax.lax.while_loop(
        lambda c: c[-1] == _RUNNING, body, (zero, b, b, rs0, jnp.array(0), start_status))
    residual = jnp.where(b_norm > 0, jnp.sqrt(rs) / jnp.where(b_norm > 0, b_norm, 1.0), 0.0)
    return x, {"residual": jnp.where(finite_b, residual, jnp.inf), "iterations": k, "status": status}


def neumann_series(matvec, b, *, step: float, terms: int = 50, tol: float = 1e-6):
    """Approximate ``A⁻¹ b`` by the truncated Neumann series ``η Σ_{j<J} (I − η A)^j b``.

    Converges when every eigenvalue of ``A`` lies in ``(0, 2/η)``; for the
    implicit system ``A = I + H/λ`` this needs ``0 < η < 2/(1 + ‖H‖/λ)``. Costs
    ``terms`` products plus one for the residual; ``status`` is ``CONVERGED``
    when the final relative residual is ``≤ tol`` and ``MAX_ITERS`` otherwise
    (``NONFINITE`` if it is not finite, then ``x = 0``).
    """
    _check(tol, terms)
    if not step > 0:
        raise ValueError(f"`step` must be positive; got {step!r}.")

    def body(carry, _):
        term, total = carry
        return (tree_axpy(-step, matvec(term), term), tree_axpy(step, term, total)), None

    (_, x), _ = jax.lax.scan(body, (b, jax.tree.map(jnp.zeros_like, b)), None, length=terms)
    r = tree_axpy(-1.0, matvec(x), b)
    b_norm = jnp.sqrt(tree_vdot(b, b))
    residual = jnp.sqrt(tree_vdot(r, r)) / jnp.where(b_norm > 0, b_norm, 1.0)
    finite = jnp.isfinite(residual)
    status = jnp.where(~finite, NONFINITE, jnp.where(residual <= tol, CONVERGED, MAX_ITERS))
    x = _select(finite, x, jax.tree.map(jnp.zeros_like, x))
    return x, {"residual": jnp.where(finite, residual, jnp.inf), "iterations": jnp.array(terms), "status": status}
