"""The learnable optimization algorithm (LOA) network of Bian, Chen, Ye & Zhang (J. Imaging 2021).

Each phase is one iteration of their Algorithm 1 on the energy

    φ_ε(x) = f(x) + R_ε(x),   f(x) = ½‖A x − y‖²,   R_ε(x) = κ r_ε(x),   κ = sigmoid(ω),

with the learned smoothed l2,1 regularizer ``r_ε`` of :mod:`metajax.models.regularizers`:

    z = x − α_t ∇f(x)
    u = z − τ_t ∇R_ε(z)
    if ‖∇φ_ε(x)‖ ≤ a‖u − x‖ and φ_ε(u) − φ_ε(x) ≤ −‖u − x‖²/a:   x⁺ = u          (branch 0)
    else: v = x − α ∇φ_ε(x), α ← ρα from α = α_t until φ_ε(v) − φ_ε(x) ≤ −‖v − x‖²/a
          x⁺ = v (branch 1); if no α within ``max_backtracks`` tries passes, x⁺ = x (branch 2)
    if ‖∇φ_ε(x⁺)‖ < σ γ ε:   ε ← γ ε

so every phase satisfies φ_ε(x⁺) ≤ φ_ε(x) − ‖x⁺ − x‖²/a at the phase's ε. The
CNN weights and ε₀ are shared by all phases; (α_t, τ_t) are per phase; κ is
one scalar per task. Gradients are for complex images in the real sense:
``∇h(x) = ∂h/∂Re x + i ∂h/∂Im x`` (the conjugate of what ``jax.grad`` returns).

Monotone quantity across phases. Lowering ε *raises* ``r_ε`` (d/dε of
``sqrt(s² + ε²) − ε`` is negative), so φ_ε may rise when ε shrinks; what never
rises is ``φ_ε(x) + κ N ε`` (N pixels), i.e. ``f + κ Σ_j sqrt(‖g_j‖² + ε²)``.
:meth:`LOA.trace` records φ before and after each phase at the phase's ε (the
descent the paper guarantees) and ε itself.

Differences from the authors' public TensorFlow 1 code (which a user comparing
numbers must know): there the branch tests are Python ``if`` statements on
graph tensors, so the safeguard branch is never taken and α never shrinks; its
fallback step omits the data-fidelity gradient; its "∇R_ε" divides by the
image-wide sum of feature norms instead of the per-pixel norms; α, τ and ω are
complex; a = c = 1e3. metajax implements the paper's Algorithm 1 as written.
Unrolled for a fixed number of phases, the branch choice is piecewise
constant in the parameters, and gradients flow through the branch taken.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp

from metajax._validation import check_positive_int
from metajax.adjoint import Autodiff, DecidingPhase, unroll
from metajax.models.regularizers import FeatureCNN, smoothed_l21
from metajax.operators.base import LinearOperator

BRANCH_ACCEPT_U, BRANCH_BACKTRACK, BRANCH_EXHAUSTED = 0, 1, 2


def _sqnorm(x: jax.Array) -> jax.Array:
    return jnp.sum(x.real**2 + x.imag**2) if jnp.iscomplexobj(x) else jnp.sum(x**2)


def _real_gradient(fn, x):
    """Steepest-ascent direction of a real function of (possibly complex) x."""
    g = jax.grad(fn)(x)
    return jnp.conj(g) if jnp.iscomplexobj(x) else g


class LOAParams(eqx.Module):
    """What every phase shares: CNN weights, the task (operator, measurements, κ)."""

    features: FeatureCNN
    operator: LinearOperator
    y: jax.Array
    kappa: jax.Array


class LOAPhase(DecidingPhase):
    """One phase of Algorithm 1 as a pure function ``(state, theta, params) -> state``.

    ``state = (x, ε)``; ``theta = {"alpha": α_t, "tau": τ_t}``. All fields are
    static constants of the algorithm. As a :class:`~metajax.adjoint.DecidingPhase`
    it records its choices (branch, backtracking count, ε shrink), so the MLM
    adjoint replays them instead of re-running the tests in its backward pass.
    """

    a: float = eqx.field(static=True, default=1e3)
    rho: float = eqx.field(static=True, default=0.5)
    max_backtracks: int = eqx.field(static=True, default=8)
    gamma: float = eqx.field(static=True, default=0.9)
    sigma: float = eqx.field(static=True, default=1e3)

    def __check_init__(self):
        if not (self.a > 0 and 0 < self.rho < 1 and 0 < self.gamma < 1 and self.sigma > 0):
            raise ValueError(
                f"LOA constants need a > 0, 0 < rho < 1, 0 < gamma < 1, sigma > 0; got a={self.a}, "
                f"rho={self.rho}, gamma={self.gamma}, sigma={self.sigma}."
            )
        check_positive_int("max_backtracks", self.max_backtracks)

    def energies(self, params: LOAParams, eps):
        """``(φ_ε, ∇f, ∇φ_ε, ∇R_ε)`` as functions of the image, for this task and ε."""
        regularizer = lambda x: params.kappa * smoothed_l21(params.features(x), eps)  # noqa: E731
        energy = lambda x: 0.5 * _sqnorm(params.operator(x) - params.y) + regularizer(x)  # noqa: E731
        grad_f = lambda x: params.operator.adjoint(params.operator(x) - params.y)  # noqa: E731
        grad_r = lambda x: _real_gradient(regularizer, x)  # noqa: E731
        return energy, grad_f, lambda x: grad_f(x) + grad_r(x), grad_r

    def _candidates(self, state, theta, params):
        """The differentiable part: ``u = z − τ∇R_ε(z)`` with ``z = x − α∇f(x)``, and ``∇φ_ε(x)``."""
        x, eps = state
        _, grad_f, _, grad_r = self.energies(params, eps)
        grad_fx = grad_f(x)
        z = x - theta["alpha"] * grad_fx
        return z - theta["tau"] * grad_r(z), grad_fx + grad_r(x)

    def _select(self, state, theta, u, grad_x, decisions):
        x, eps = state
        v = x - theta["alpha"] * self.rho ** decisions["exponent"] * grad_x
        x_new = jnp.where(decisions["accept"], u, jnp.where(decisions["found"], v, x))
        return x_new, jnp.where(decisions["shrink"], self.gamma * eps, eps)

    def apply(self, state, theta, params, decisions):
        u, grad_x = self._candidates(state, theta, params)
        return self._select(state, theta, u, grad_x, decisions)

    def decide(self, state, theta, params):
        new_state, info = self.step(state, theta, params)
        return new_state, {k: info[k] for k in ("accept", "found", "exponent", "shrink")}

    def step(self, state, theta, params: LOAParams):
        """One phase; returns ``(state_next, info)`` with the decisions and diagnostics.

        The tests (safeguard, sufficient decrease, ε rule) only *decide*; they run
        on ``stop_gradient`` values (the backtracking search in a
        ``lax.while_loop`` that stops at the first passing α), so reverse mode
        never differentiates them. The step taken stays differentiable.
        """
        x, eps = state
        energy, _, grad_phi, _ = self.energies(params, jax.lax.stop_gradient(eps))
        u, grad_x = self._candidates(state, theta, params)
        x_c, u_c, g_c, alpha_c, eps_c = jax.lax.stop_gradient((x, u, grad_x, theta["alpha"], eps))
        norm = lambda v: jnp.sqrt(_sqnorm(v))  # noqa: E731
        phi_x = energy(x_c)
        accept = (norm(g_c) <= self.a * norm(u_c - x_c)) & (energy(u_c) - phi_x <= -_sqnorm(u_c - x_c) / self.a)

        def sufficient_decrease(j):
            step = alpha_c * self.rho**j * g_c
            return energy(x_c - step) - phi_x <= -_sqnorm(step) / self.a

        j, found = jax.lax.while_loop(
            lambda c: ~c[1] & (c[0] < self.max_backtracks - 1),
            lambda c: (c[0] + 1, sufficient_decrease(c[0] + 1)),
            (jnp.array(0), accept | sufficient_decrease(0)))
        decisions = {"accept": accept, "found": found & ~accept, "exponent": j, "shrink": jnp.array(False)}
        x_new_c, _ = self._select((x_c, eps_c), {"alpha": alpha_c}, u_c, g_c, decisions)
        decisions["shrink"] = norm(grad_phi(x_new_c)) < self.sigma * self.gamma * eps_c
        info = {
            **decisions,
            "branch": jnp.where(accept, BRANCH_ACCEPT_U, jnp.where(decisions["found"], BRANCH_BACKTRACK,
                                                                   BRANCH_EXHAUSTED)),
            "energy_before": phi_x,
            "energy_after": energy(x_new_c),
            "eps": eps_c,
            "backtracks": jnp.where(accept, 0, jnp.where(decisions["found"], j + 1, self.max_backtracks)),
        }
        return self._select(state, theta, u, grad_x, decisions), info


class ZeroFilled(eqx.Module):
    """Initial image ``x₀ = A^H y``."""

    def __call__(self, operator, y):
        return operator.adjoint(y)


class ResidualInitial(eqx.Module):
    """Learned initial network ``x₀ = z + s · g(z)`` with ``z = A^H y``.

    ``g`` is a small bias-free complex CNN (:class:`FeatureCNN` with one output
    channel) and ``s`` a learned scale initialised to 0, so training starts from
    the zero-filled image.
    """

    cnn: FeatureCNN
    scale: jax.Array

    def __init__(self, key, layers: int = 2, features: int = 8, dtype=jnp.float32):
        self.cnn = FeatureCNN(key, layers=layers, features=features, out_features=1, dtype=dtype)
        self.scale = jnp.zeros((), dtype)

    def __call__(self, operator, y):
        z = operator.adjoint(y)
        return z + self.scale.astype(z.real.dtype) * self.cnn(z)[0]


class LOA(eqx.Module):
    """Unrolled LOA network (see the module docstring).

    Args:
        key: PRNG key for the CNN initialisation.
        num_phases: T (paper: 11).
        alpha, tau: initial step sizes, the same for every phase.
        eps0: initial smoothing ε₀ (learned; paper: 0.001).
        phase: the algorithm constants (``LOAPhase(a=..., rho=..., ...)``).
        initial: ``x₀ = initial(operator, y)``; :class:`ZeroFilled` by default,
            any (learnable) ``eqx.Module`` with that signature works.
        cnn: keyword arguments of :class:`FeatureCNN` (layers, features, delta).
    """

    features: FeatureCNN
    alpha: jax.Array
    tau: jax.Array
    eps0: jax.Array
    phase: LOAPhase
    initial: eqx.Module

    def __init__(self, key, num_phases: int = 11, alpha: float = 0.5, tau: float = 0.1, eps0: float = 1e-3,
                 phase: LOAPhase = LOAPhase(), initial: eqx.Module = ZeroFilled(), dtype=jnp.float32, **cnn):
        num_phases = check_positive_int("num_phases", num_phases)
        self.features = FeatureCNN(key, dtype=dtype, **cnn)
        self.alpha = jnp.full(num_phases, alpha, dtype)
        self.tau = jnp.full(num_phases, tau, dtype)
        self.eps0 = jnp.asarray(eps0, dtype)
        self.phase = phase
        self.initial = initial

    @property
    def thetas(self) -> dict:
        return {"alpha": self.alpha, "tau": self.tau}

    def phase_inputs(self, operator, y, omega):
        """``(u0, params)`` of the unrolled phases: ``u0 = (x₀, ε₀)`` and the shared :class:`LOAParams`."""
        x0 = self.initial(operator, y)
        real = jnp.finfo(x0.dtype).dtype
        params = LOAParams(self.features, operator, y, jax.nn.sigmoid(jnp.asarray(omega, real)))
        return (x0, self.eps0.astype(real)), params

    def __call__(self, operator: LinearOperator, y: jax.Array, omega, *, adjoint=Autodiff()) -> jax.Array:
        """Reconstruct one image from measurements ``y`` of task weight ``omega`` (κ = sigmoid(ω)).

        Batches: ``jax.vmap(lambda y: net(op, y, omega))(ys)``.
        """
        u0, params = self.phase_inputs(operator, y, omega)
        return unroll(self.phase, u0, self.thetas, params, adjoint=adjoint)[0]

    def trace(self, operator: LinearOperator, y: jax.Array, omega):
        """Run all phases and return ``(x_T, info)``; ``info`` leaves have a leading phase axis T."""
        u0, params = self.phase_inputs(operator, y, omega)
        (x, _), info = jax.lax.scan(lambda s, th: self.phase.step(s, th, params), u0, self.thetas)
        return x, info
