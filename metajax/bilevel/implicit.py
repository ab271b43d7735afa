"""Implicit meta-gradients (iMAML, Rajeswaran et al. 2019; Meta-Prior, Terris & Moreau 2023).

Inner problem, for one task:

    φ*(θ) = argmin_φ  L_in(φ) + (λ/2)‖φ − θ‖²

approximated by ``inner_steps`` steps of an optax optimizer started from
``stop_gradient(θ)`` — θ enters the inner problem only through the proximal
term, which is what the implicit function theorem differentiates. At the
minimiser, ∇L_in(φ*) + λ(φ* − θ) = 0, so dφ*/dθ = (I + H/λ)⁻¹ with H the
Hessian of L_in at φ*, and the meta-gradient is

    ∇_θ L_out(φ*(θ)) = (I + H/λ)⁻¹ ∇L_out(φ*).

The system is solved matrix-free with Hessian-vector products — conjugate
gradients (default) or a truncated Neumann series. ``damping`` μ ≥ 0 adds μI to
H (it lands inside the Hessian term: ``(I + (H + μI)/λ) v = g``), which keeps a
slightly indefinite Hessian solvable. Memory does not grow with the number of
inner steps: the inner loop is not differentiated.
"""

from __future__ import annotations

import equinox as eqx
import jax
import optax

from metajax._validation import check_positive, check_positive_int
from metajax.bilevel.base import BilevelMethod
from metajax.bilevel.inner import adapt, check_optimizer
from metajax.linear_solve import STATUS_NAMES, conjugate_gradient, neumann_series, tree_axpy


class Implicit(BilevelMethod):
    """iMAML's implicit meta-gradient (see the module docstring).

    Args:
        lam: proximal weight λ > 0 (how far φ may move from θ).
        inner_optimizer: optax optimizer of the inner problem (e.g. ``optax.sgd(1e-2)``).
        inner_steps: its number of steps K ≥ 1.
        cg_tol: relative residual at which the linear solve stops.
        cg_max_iters: most Hessian-vector products (CG iterations, or Neumann terms).
        damping: μ ≥ 0 added to the Hessian.
        solver: "cg" or "neumann".
        neumann_step: η of the Neumann series ``η Σ_j (I − η A)^j g``; needs
            ``η < 2/(1 + (‖H‖ + μ)/λ)``.
        hvp: "reverse" (reverse-over-reverse; works through ``MLM`` adjoints,
            which have no forward mode) or "forward" (forward-over-reverse).
        throw: raise (``eqx.error_if``) when the solve does not converge, instead of
            returning its status in ``info``.

    ``info``: ``inner_loss`` (L_in(θ)), ``inner_objective`` (the proximal objective
    at the last inner step), ``outer_loss`` (L_out(φ*)), ``residual``,
    ``iterations`` and ``status`` of the solve (see
    :mod:`metajax.linear_solve`: 0 converged, 1 max iterations, 2
    negative curvature, 3 non-finite).
    """

    lam: float = eqx.field(static=True, converter=float)
    inner_optimizer: optax.GradientTransformation = eqx.field(static=True)
    inner_steps: int = eqx.field(static=True)
    cg_tol: float = eqx.field(static=True, default=1e-6, converter=float)
    cg_max_iters: int = eqx.field(static=True, default=50)
    damping: float = eqx.field(static=True, default=0.0, converter=float)
    solver: str = eqx.field(static=True, default="cg")
    neumann_step: float = eqx.field(static=True, default=0.5, converter=float)
    hvp: str = eqx.field(static=True, default="reverse")
    throw: bool = eqx.field(static=True, default=False)

    def __check_init__(self):
        check_positive("lam", self.lam)
        check_optimizer("inner_optimizer", self.inner_optimizer)
        check_positive_int("inner_steps", self.inner_steps)
        check_positive("cg_tol", self.cg_tol)
        check_positive_int("cg_max_iters", self.cg_max_iters)
        if not self.damping >= 0:
            raise ValueError(f"`damping` must be non-negative; got {self.damping!r}.")
        if self.solver not in ("cg", "neumann"):
            raise ValueError(f"`solver` must be 'cg' or 'neumann'; got {self.solver!r}.")
        check_positive("neumann_step", self.neumann_step)
        if self.hvp not in ("reverse", "forward"):
            raise ValueError(f"`hvp` must be 'reverse' or 'forward'; got {self.hvp!r}.")

    def hessian_operator(self, inner_loss, phi, args):
        """``v -> v + (H v + μ v)/λ``, H the Hessian of ``inner_loss(·, args)`` at ``phi`` (linearised once)."""
        grad = lambda p: jax.grad(inner_loss)(p, args)  # noqa: E731
        if self.hvp == "forward":
            _, hvp = jax.linearize(grad, phi)
        else:
            _, pullback = jax.vjp(grad, phi)  # H is symmetric: the vjp of ∇L is H v
            hvp = lambda v: pullback(v)[0]  # noqa: E731
        return lambda v: tree_axpy(1 / self.lam, tree_axpy(self.damping, v, hvp(v)), v)

    def gradient(self, inner_loss, outer_loss, theta, args, key):
        start = jax.lax.stop_gradient(theta)
        phi, (first, last) = adapt(inner_loss, self.inner_optimizer, start, self.inner_steps, args,
                                   proximal=self.lam, center=start)
        outer, g = jax.value_and_grad(outer_loss)(phi, args)
        matvec = self.hessian_operator(inner_loss, phi, args)
        if self.solver == "cg":
            v, solve = conjugate_gradient(matvec, g, tol=self.cg_tol, max_iters=self.cg_max_iters)
        else:
            v, solve = neumann_series(matvec, g, step=self.neumann_step, terms=self.cg_max_iters, tol=self.cg_tol)
        if self.throw:
            v = eqx.error_if(v, solve["status"] != 0, "Implicit: the linear solve (I + H/lam) v = g failed "
                             f"(status codes {STATUS_NAMES}); raise cg_max_iters or damping, or check the Hessian.")
        info = {"inner_loss": first, "inner_objective": last, "outer_loss": outer, **solve}
        return v, info
