"""MAML (Finn et al. 2017): differentiate the outer loss through K inner optimizer steps.

    φ_0 = θ,   φ_k = φ_{k−1} + update_k(∇J(φ_{k−1}))   (k = 1..K, any optax optimizer),
    J(φ) = L_in(φ) [+ (μ/2)‖φ − θ‖²],   meta-gradient  d L_out(φ_K) / dθ.

The inner steps are the phases of :func:`metajax.adjoint.unroll`
(:func:`metajax.bilevel.inner.adapt`), so ``adjoint=`` chooses how they are
differentiated: :class:`~metajax.adjoint.Autodiff` (JAX stores every
intermediate of every inner step, including the network's), or
:class:`~metajax.adjoint.MLM` (the K states only; each step is re-linearised in
the backward pass). Differentiating an optimizer with state (Adam) goes through
that state, and Adam's update ``m̂ / (√(v̂ + eps_root) + eps)`` is close to
``sign(g)``: where an inner-gradient component is exactly zero, its derivative
with respect to that component is ``1 / (√eps_root + eps)`` per step, about
10⁶ with optax's defaults, and with ``eps_root = 0`` the derivative of ``sqrt``
at 0 makes it NaN. The meta-gradient is then exact (it agrees with finite
differences wherever they can resolve it) but useless: ``eps_root > 0`` only
removes the NaN. For MAML through Adam use a large ``eps`` (e.g.
``optax.adam(lr, eps=1e-3, eps_root=1e-12)``, whose slope is at most 10³), or
SGD / momentum, whose updates are smooth.
``first_order=True`` is FOMAML: the gradient ``∇L_out(φ_K)`` at the adapted
parameters, with φ_K computed from ``stop_gradient(θ)``. ``proximal=μ`` adds the
proximal term of iMAML to the inner objective (θ then enters through the start
and the centre); with many small steps this converges to :class:`Implicit`'s
meta-gradient.
"""

from __future__ import annotations

import equinox as eqx
import jax
import optax

from metajax._validation import check_positive_int
from metajax.adjoint import Adjoint, Autodiff
from metajax.bilevel.base import BilevelMethod
from metajax.bilevel.inner import adapt, check_optimizer


class MAML(BilevelMethod):
    """MAML / FOMAML meta-gradient (see the module docstring).

    Args:
        inner_optimizer: optax optimizer of the inner loop.
        inner_steps: K ≥ 1.
        first_order: FOMAML (no differentiation through the inner loop).
        adjoint: :class:`~metajax.adjoint.Autodiff` (default) or :class:`~metajax.adjoint.MLM`.
        proximal: optional μ > 0 of a proximal term ``(μ/2)‖φ − θ‖²`` in the inner objective.

    ``info``: ``inner_loss`` (the inner objective at θ), ``inner_objective`` (at
    φ_{K−1}, the last step's) and ``outer_loss`` (L_out(φ_K)).
    """

    inner_optimizer: optax.GradientTransformation = eqx.field(static=True)
    inner_steps: int = eqx.field(static=True)
    first_order: bool = eqx.field(static=True, default=False)
    adjoint: Adjoint = Autodiff()
    proximal: float | None = eqx.field(static=True, default=None)

    def __check_init__(self):
        check_optimizer("inner_optimizer", self.inner_optimizer)
        check_positive_int("inner_steps", self.inner_steps)
        if not isinstance(self.adjoint, Adjoint):
            raise TypeError(f"`adjoint` must be Autodiff() or MLM(); got {type(self.adjoint).__name__}.")
        if self.proximal is not None and not self.proximal > 0:
            raise ValueError(f"`proximal` must be positive or None; got {self.proximal!r}.")

    def adapted(self, inner_loss, theta, args):
        """``(φ_K, (J(φ_0), J(φ_{K−1})))`` from θ."""
        return adapt(inner_loss, self.inner_optimizer, theta, self.inner_steps, args, proximal=self.proximal,
                     center=theta, adjoint=self.adjoint)

    def gradient(self, inner_loss, outer_loss, theta, args, key):
        if self.first_order:
            phi, (first, last) = self.adapted(inner_loss, jax.lax.stop_gradient(theta), args)
            outer, grad = jax.value_and_grad(outer_loss)(phi, args)
        else:
            def objective(th):
                phi, losses = self.adapted(inner_loss, th, args)
                return outer_loss(phi, args), losses

            (outer, (first, last)), grad = jax.value_and_grad(objective, has_aux=True)(theta)
        return grad, {"inner_loss": first, "inner_objective": last, "outer_loss": outer}
