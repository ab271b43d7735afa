"""The gradient-norm penalty method for bilevel meta-learning (Bian, Chen, Ye & Zhang 2021, Algorithm 2).

The lower level ``θ ∈ argmin L(θ, ω; D_tr)`` is replaced by the penalty on its
optimality condition, and θ (shared weights) and ω (task weights) minimise

    L̃(θ, ω) = L(θ, ω; B_val) + (λ/2) ‖∇_θ L(θ, ω; B_tr)‖²

on cross-task minibatches (every task in every batch). ∇L̃ is
reverse-over-reverse through the unrolled network (with its ``Autodiff`` or
``MLM`` adjoint). Algorithm 2, as :func:`~metajax.bilevel.meta_step` runs it
one gradient evaluation per call:

    while δ > δ_tol:
        while ‖∇_θ L̃‖² + ‖∇_ω L̃‖² > δ:          (at most ``max_rounds`` times)
            K steps  θ ← θ − Adam(∇_θ L̃)
            one step ω ← ω − Adam(∇_ω L̃)
        δ ← ν_δ δ,   λ ← ν_λ λ

The test opens each round (an evaluation whose norm is ≤ δ ends the stage
without a parameter update); a stage stopped by ``max_rounds`` is counted in
the state (``capped``), so a stochastic batch can never loop forever
unnoticed. When δ ≤ δ_tol the state says ``done`` and further steps change
nothing. Without task weights (ω has no leaves) a round is the K θ-steps.

For :func:`~metajax.bilevel.meta_gradient`, ``theta`` is the pair ``(θ, ω)``
(:func:`~metajax.bilevel.split_task_weights`), ``inner_loss`` is
``L(·; B_tr)``, ``outer_loss`` is ``L(·; B_val)`` (both over all tasks, e.g. the
mean of :func:`~metajax.bilevel.supervised_loss`), and λ is ``lam``.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import optax

from metajax._validation import check_positive, check_positive_int
from metajax.bilevel.base import BilevelMethod, meta_gradient
from metajax.linear_solve import tree_vdot


class PenaltyState(eqx.Module):
    """Algorithm 2's state: Adam states of θ and ω, the current λ and δ, and counters.

    ``round_step`` k ∈ 0..K (k < K: next is a θ-step; k = K: the ω-step);
    ``rounds`` in the current stage; ``stages`` completed; ``capped`` stages
    ended by ``max_rounds``; ``step`` gradient evaluations; ``done`` when δ ≤ δ_tol.
    """

    theta_opt: optax.OptState
    omega_opt: optax.OptState
    lam: jax.Array
    delta: jax.Array
    round_step: jax.Array
    rounds: jax.Array
    stages: jax.Array
    capped: jax.Array
    step: jax.Array
    done: jax.Array


class Penalty(BilevelMethod):
    """Bian et al.'s penalty method (module docstring). Defaults are the paper's.

    Args:
        lam: λ₀ (1e-5).
        delta: δ₀ (1e-3).
        delta_decay: ν_δ ∈ (0, 1) (0.95).
        delta_tol: δ_tol < δ₀ (4.35e-6).
        lam_growth: ν_λ ≥ 1 (1.001).
        theta_steps: K θ-steps per round (3; the paper leaves K open).
        max_rounds: rounds per stage at most (1000).
    """

    per_task = False
    lam: float = eqx.field(static=True, default=1e-5, converter=float)
    delta: float = eqx.field(static=True, default=1e-3, converter=float)
    delta_decay: float = eqx.field(static=True, default=0.95, converter=float)
    delta_tol: float = eqx.field(static=True, default=4.35e-6, converter=float)
    lam_growth: float = eqx.field(static=True, default=1.001, converter=float)
    theta_steps: int = eqx.field(static=True, default=3)
    max_rounds: int = eqx.field(static=True, default=1000)

    def __check_init__(self):
        check_positive("lam", self.lam)
        check_positive("delta", self.delta)
        check_positive("delta_tol", self.delta_tol)
        if not self.delta_tol < self.delta:
            raise ValueError(f"`delta_tol` must be smaller than `delta` (δ₀); got delta_tol={self.delta_tol}, "
                             f"delta={self.delta}.")
        if not 0 < self.delta_decay < 1:
            raise ValueError(f"`delta_decay` (ν_δ) must lie in (0, 1); got {self.delta_decay!r}.")
        if not self.lam_growth >= 1:
            raise ValueError(f"`lam_growth` (ν_λ) must be ≥ 1; got {self.lam_growth!r}.")
        check_positive_int("theta_steps", self.theta_steps)
        check_positive_int("max_rounds", self.max_rounds)

    @staticmethod
    def _pair(params):
        if not (isinstance(params, tuple) and len(params) == 2):
            raise TypeError("Penalty: `theta` must be the pair (θ, ω) of `split_task_weights`; "
                            f"got {type(params).__name__}.")
        return params

    def gradient(self, inner_loss, outer_loss, theta, args, key, lam=None):
        """∇L̃ at λ = ``lam`` (default λ₀) with respect to both halves of ``theta = (θ, ω)``."""
        self._pair(theta)
        lam = self.lam if lam is None else lam

        def objective(params):
            shared, omega = params
            inner, grad_shared = jax.value_and_grad(lambda s: inner_loss((s, omega), args))(shared)
            penalty = tree_vdot(grad_shared, grad_shared)
            outer = outer_loss(params, args)
            return outer + 0.5 * lam * penalty, (inner, outer, penalty)

        (value, (inner, outer, penalty)), grad = jax.value_and_grad(objective, has_aux=True)(theta)
        grad_sq = [tree_vdot(g, g) for g in grad]
        return grad, {"objective": value, "inner_loss": inner, "outer_loss": outer, "penalty": penalty,
                      "grad_sq_theta": grad_sq[0], "grad_sq_omega": grad_sq[1]}

    def init(self, params, optimizer) -> PenaltyState:
        shared, omega = self._pair(params)
        dtype = jnp.result_type(*jax.tree.leaves(shared))
        real = jnp.finfo(dtype).dtype
        zero = jnp.zeros((), jnp.int32)
        return PenaltyState(optimizer.init(shared), optimizer.init(omega), jnp.asarray(self.lam, real),
                            jnp.asarray(self.delta, real), zero, zero, zero, zero, zero,
                            jnp.asarray(self.delta <= self.delta_tol))

    def step(self, optimizer, inner_loss, outer_loss, params, state: PenaltyState, args, key):
        shared, omega = self._pair(params)
        has_omega = bool(jax.tree.leaves(omega))
        k_max = self.theta_steps
        grad, info = _gradient_at(self, inner_loss, outer_loss, params, args, key, state.lam)
        grad_sq = info["grad_sq_theta"] + info["grad_sq_omega"]
        active = ~state.done
        stage_end = active & (state.round_step == 0) & ((grad_sq <= state.delta) | (state.rounds >= self.max_rounds))
        theta_step = active & ~stage_end & (state.round_step < k_max)
        omega_step = active & ~stage_end & (state.round_step == k_max)

        def update(do, g, p, opt):
            updates, new_opt = optimizer.update(g, opt, p)
            return jax.tree.map(lambda a, b: jnp.where(do, a, b), (optax.apply_updates(p, updates), new_opt), (p, opt))

        shared, theta_opt = update(theta_step, grad[0], shared, state.theta_opt)
        omega, omega_opt = update(omega_step, grad[1], omega, state.omega_opt)
        last = k_max if has_omega else k_max - 1  # the round's last step
        round_done = (omega_step if has_omega else theta_step) & (state.round_step == last)
        round_step = jnp.where(stage_end | round_done, 0, state.round_step + (theta_step | omega_step))
        delta = jnp.where(stage_end, self.delta_decay * state.delta, state.delta)
        new_state = PenaltyState(
            theta_opt, omega_opt, jnp.where(stage_end, self.lam_growth * state.lam, state.lam), delta,
            round_step.astype(jnp.int32), jnp.where(stage_end, 0, state.rounds + round_done).astype(jnp.int32),
            state.stages + stage_end, state.capped + (stage_end & (grad_sq > state.delta)), state.step + 1,
            delta <= self.delta_tol)
        info = {**info, "stage_end": stage_end, "theta_step": theta_step, "omega_step": omega_step,
                "lam": state.lam, "delta": state.delta}
        return (shared, omega), new_state, info


def _gradient_at(method, inner_loss, outer_loss, params, args, key, lam):
    """:func:`meta_gradient` of the penalty objective at the state's λ (with its checks)."""
    return meta_gradient(_AtLam(method, lam), inner_loss, outer_loss, params, args, key=key)


class _AtLam(BilevelMethod):
    method: Penalty
    lam: jax.Array

    def gradient(self, inner_loss, outer_loss, theta, args, key):
        return self.method.gradient(inner_loss, outer_loss, theta, args, key, lam=self.lam)
