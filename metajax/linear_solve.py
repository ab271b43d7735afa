"""Matrix-free linear solvers on PyTrees: the one conjugate-gradient loop of metajax, and a Neumann series.

:func:`conjugate_gradient` serves every symmetric (Hermitian) positive definite
system in the library: the data consistency ``(A^H A + μ I) x = A^H y + μ z`` of
:class:`~metajax.models.DCNet` and the SENSE baseline (complex images, a fixed
iteration count, differentiated through), and the implicit meta-gradient
``(I + H/λ) v = g`` of :class:`~metajax.bilevel.Implicit` (real parameter
PyTrees, stopped at a relative residual).

Both solvers return ``(x, info)`` with ``info = {"residual", "iterations", "status"}``:
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
and ``vmap`` (each batch member stops on its own test). With ``tol=0`` the CG
loop is a ``fori_loop`` of exactly ``max_iters`` steps (a step after convergence
leaves ``x`` unchanged), which reverse-mode autodiff differentiates; with
``tol > 0`` it is a ``while_loop`` that stops early (forward mode only, as the
implicit meta-gradient needs).

Deviations from ``jax.scipy.sparse.linalg.cg``: it has no residual, iteration
count or failure status, and it keeps iterating through non-positive curvature
(dividing by ``pᵀAp ≤ 0``); here the iteration stops there. The residual used
for the stopping test is the recursively updated one (as in ``jax.scipy``); the
returned ``residual`` is that same quantity.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = [
    "CONVERGED",
    "MAX_ITERS",
    "NEGATIVE_CURVATURE",
    "NONFINITE",
    "STATUS_NAMES",
    "conjugate_gradient",
    "neumann_series",
    "tree_axpy",
    "tree_vdot",
]

CONVERGED, MAX_ITERS, NEGATIVE_CURVATURE, NONFINITE = 0, 1, 2, 3
_RUNNING = -1
STATUS_NAMES = {CONVERGED: "converged", MAX_ITERS: "max_iters", NEGATIVE_CURVATURE: "negative_curvature",
                NONFINITE: "nonfinite"}


def tree_vdot(a, b) -> jax.Array:
    """Real inner product ``Re Σ_leaves Σ conj(a)·b`` of two PyTrees (real or complex leaves)."""
    return sum(jnp.vdot(x, y).real for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def tree_axpy(alpha, x, y):
    """``α x + y`` leafwise."""
    return jax.tree.map(lambda a, b: (alpha * a).astype(b.dtype) + b, x, y)


def _select(pred, on_true, on_false):
    return jax.tree.map(lambda a, b: jnp.where(pred, a, b), on_true, on_false)


def _check(tol, max_iters, *, allow_zero_tol: bool = False) -> None:
    if not (tol >= 0 if allow_zero_tol else tol > 0):
        raise ValueError(f"`tol` must be {'non-negative' if allow_zero_tol else 'positive'}; got {tol!r}.")
    if isinstance(max_iters, bool) or not isinstance(max_iters, int) or max_iters < 1:
        raise ValueError(f"`max_iters` must be a positive integer; got {max_iters!r}.")


def conjugate_gradient(matvec, b, x0=None, *, tol: float = 1e-6, max_iters: int = 100):
    """Solve ``A x = b`` for Hermitian positive definite ``A`` by conjugate gradients.

    The real inner product ``Re⟨a, b⟩`` is used throughout, so complex leaves are
    solved as their real and imaginary parts (``A`` need only be self-adjoint in
    that product, as ``A^H A + μ I`` is).

    Args:
        matvec: ``v -> A v`` on PyTrees with the structure and dtypes of ``b``.
        b: right-hand side PyTree (real or complex leaves).
        x0: starting point with ``b``'s structure (default zero).
        tol: stop when ``‖r_k‖ ≤ tol ‖b‖`` (``0``: run exactly ``max_iters`` steps, differentiable).
        max_iters: at most this many products ``A p``.

    Returns:
        ``(x, info)``; see the module docstring for ``info``.
    """
    _check(tol, max_iters, allow_zero_tol=True)
    b_norm = jnp.sqrt(tree_vdot(b, b))
    zero = jax.tree.map(jnp.zeros_like, b)
    finite_b = jnp.isfinite(b_norm)
    b = _select(finite_b, b, zero)
    if x0 is None:
        x0, r0 = zero, b
    else:
        x0 = _select(finite_b, x0, zero)
        r0 = tree_axpy(-1.0, matvec(x0), b)
    rs0 = tree_vdot(r0, r0)
    start_status = jnp.where(~finite_b | ~jnp.isfinite(rs0), NONFINITE,
                             jnp.where(jnp.sqrt(rs0) <= tol * b_norm, CONVERGED, _RUNNING))
    rs0 = jnp.where(jnp.isfinite(rs0), rs0, 0.0)

    def body(carry):
        x, r, p, rs, k, status = carry
        ap = matvec(p)
        curvature = tree_vdot(p, ap)
        alpha = rs / jnp.where(curvature > 0, curvature, 1.0)
        x_new = tree_axpy(alpha, p, x)
        r_new = tree_axpy(-alpha, ap, r)
        rs_new = tree_vdot(r_new, r_new)
        nonfinite = ~jnp.isfinite(curvature) | ~jnp.isfinite(rs_new)
        broken = nonfinite | ~(curvature > 0) | (status != _RUNNING)
        new_status = jnp.where(nonfinite, NONFINITE, jnp.where(~(curvature > 0), NEGATIVE_CURVATURE, jnp.where(
            jnp.sqrt(rs_new) <= tol * b_norm, CONVERGED, jnp.where(k + 1 >= max_iters, MAX_ITERS, _RUNNING))))
        p_new = tree_axpy(rs_new / jnp.where(rs > 0, rs, 1.0), p, r_new)
        x, r, p, rs = _select(broken, (x, r, p, rs), (x_new, r_new, p_new, rs_new))
        k, status = jnp.where(status == _RUNNING, k + 1, k), jnp.where(status == _RUNNING, new_status, status)
        return x, r, p, rs, k, status

    carry = (x0, r0, r0, rs0, jnp.array(0), start_status)
    if tol == 0:  # a fixed count: reverse-differentiable
        carry = jax.lax.fori_loop(0, max_iters, lambda _, c: body(c), carry)
    else:
        carry = jax.lax.while_loop(lambda c: c[-1] == _RUNNING, body, carry)
    x, _, _, rs, k, status = carry
    status = jnp.where(status == _RUNNING, MAX_ITERS, status)
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
