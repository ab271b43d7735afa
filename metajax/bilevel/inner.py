"""The inner (lower-level) loop: K steps of an optax optimizer, run as the phases of :func:`unroll`.

Step t of the inner loop is one phase ``u_t = g(u_{t−1})`` of
:func:`metajax.adjoint.unroll` with state ``u = (φ, optimizer state, losses)``:

    ℓ_t, ∇ = value_and_grad(J)(φ_{t−1}),   J(φ) = inner_loss(φ, args) + (μ/2)‖φ − c‖²
    (updates, s_t) = optimizer.update(∇, s_{t−1}, φ_{t−1}),   φ_t = φ_{t−1} + updates

(μ = ``proximal``, c = ``center``; no proximal term when μ is None). So the
same ``adjoint=`` switch as for the networks decides how the loop is
differentiated: :class:`~metajax.adjoint.Autodiff` stores every intermediate of
every step; :class:`~metajax.adjoint.MLM` stores only the K states and
differentiates one step at a time backwards (memory ∝ K states, not K steps'
intermediates). Integer leaves of the optimizer state (Adam's step count) ride
in the state as floats (exact below 2²⁴ steps) and are cast back inside the
step, so the unrolled state is all floating point as :func:`unroll` requires.
"""

from __future__ import annotations

from typing import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import optax

from metajax._validation import check_positive_int
from metajax.adjoint import Adjoint, Autodiff, unroll


def check_optimizer(name: str, optimizer) -> None:
    if not isinstance(optimizer, optax.GradientTransformation):
        raise TypeError(
            f"`{name}` must be an optax GradientTransformation (e.g. `optax.sgd(1e-2)`); "
            f"got {type(optimizer).__name__}."
        )


def proximal_objective(loss, proximal):
    """``(φ, args, c) -> loss(φ, args) + (μ/2)‖φ − c‖²`` (just ``loss`` when μ is None)."""
    if proximal is None:
        return lambda phi, args, center: loss(phi, args)

    def objective(phi, args, center):
        distance = sum(jnp.sum((a - c) ** 2) for a, c in zip(jax.tree.leaves(phi), jax.tree.leaves(center)))
        return loss(phi, args) + 0.5 * proximal * distance

    return objective


class _InnerStep(eqx.Module):
    """One optimizer step as a phase ``(u, t, params) -> u_next``; ``params = (args, center)``."""

    objective: Callable = eqx.field(static=True)
    optimizer: optax.GradientTransformation = eqx.field(static=True)
    int_dtypes: tuple = eqx.field(static=True)  # dtypes of the optimizer state's non-float leaves

    def __call__(self, u, t, params):
        phi, floats, ints, first_loss, _ = u
        args, center = params
        opt_state = _join(floats, ints, self.int_dtypes)
        loss, grads = jax.value_and_grad(self.objective)(phi, args, center)
        updates, opt_state = self.optimizer.update(grads, opt_state, phi)
        floats, ints = _split(opt_state)
        loss = loss.astype(first_loss.dtype)
        first_loss = jnp.where(t == 0, loss, first_loss)
        return optax.apply_updates(phi, updates), floats, ints, first_loss, loss


def _split(opt_state):
    """Float leaves of an optimizer state, and its other leaves cast to float (None where float)."""
    floats = jax.tree.map(lambda a: a if eqx.is_inexact_array(a) else None, opt_state)
    ints = jax.tree.map(lambda a: None if eqx.is_inexact_array(a) else jnp.asarray(a, jnp.float32), opt_state)
    return floats, ints


def _join(floats, ints, int_dtypes):
    restored = iter(int_dtypes)
    ints = jax.tree.map(lambda a: a.astype(next(restored)), ints)
    return eqx.combine(floats, ints, is_leaf=lambda x: x is None)


def adapt(loss, optimizer, phi0, steps: int, args, *, proximal: float | None = None, center=None,
          adjoint: Adjoint = Autodiff()):
    """Run ``steps`` optimizer steps on ``loss(φ, args) [+ (μ/2)‖φ − center‖²]`` from ``phi0``.

    Args:
        loss: ``loss(phi, args) -> scalar``.
        optimizer: an optax ``GradientTransformation``.
        phi0: the starting parameters (a PyTree of real float arrays).
        steps: K ≥ 1.
        args: the loss's data (any PyTree), passed to every step.
        proximal: the proximal weight μ > 0, or ``None`` for no proximal term.
        center: the proximal centre (a PyTree like ``phi0``; default ``phi0``).
        adjoint: how the loop is differentiated (see the module docstring).

    Returns:
        ``(phi_K, (loss_first, loss_last))``: the adapted parameters and the
        objective at ``φ₀`` and at ``φ_{K−1}`` (the values the first and last
        steps evaluated; no extra evaluation is spent on diagnostics).
    """
    steps = check_positive_int("inner_steps", steps)
    check_optimizer("inner_optimizer", optimizer)
    if proximal is not None and not proximal > 0:
        raise ValueError(f"`proximal` must be positive or None; got {proximal!r}.")
    center = phi0 if center is None else center
    opt_state = optimizer.init(phi0)
    floats, ints = _split(opt_state)
    int_dtypes = tuple(jnp.result_type(a) for a in jax.tree.leaves(opt_state) if not eqx.is_inexact_array(a))
    dtype = jnp.result_type(*jax.tree.leaves(phi0))
    zero = jnp.zeros((), jnp.finfo(dtype).dtype)
    phase = _InnerStep(proximal_objective(loss, proximal), optimizer, int_dtypes)
    u0 = (phi0, floats, ints, zero, zero)
    phi, _, _, first, last = unroll(phase, u0, jnp.arange(steps, dtype=zero.dtype), (args, center), adjoint=adjoint)
    return phi, (first, last)
