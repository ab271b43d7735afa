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
from metajax.adjoint import Autodiff, unroll
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


class LOAPhase(eqx.Module):
    """One phase of Algorithm 1 as a pure function ``(state, theta, params) -> state``.

    ``state = (x, ε)``; ``theta = {"alpha": α_t, "tau": τ_t}``. All fields are
    static constants of the algorithm.
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

    def __call__(self, state, theta, params: LOAParams):
        return self.step(state, theta, params)[0]

    def energies(self, params: LOAParams, eps):
        """``(f, R_ε)`` as functions of the image for this task and ε."""
        data_fit = lambda x: 0.5 * _sqnorm(params.operator(x) - params.y)  # noqa: E731
        regularizer = lambda x: params.kappa * smoothed_l21(params.features(x), eps)  # noqa: E731
        return data_fit, regularizer

    def step(self, state, theta, params: LOAParams):
        """One phase; also returns diagnostics (branch, φ before/after, ε, backtracks).

        Branch tests, the backtracking search and the ε rule only *decide*; they
        run on ``stop_gradient`` values (the search in a ``lax.while_loop`` that
        stops at the first passing α), so reverse mode never differentiates
        them. The step actually taken stays differentiable in x, θ and the weights.
        """
        x, eps = state
        alpha, tau = theta["alpha"], theta["tau"]
        _, regularizer = self.energies(params, eps)
        energy = lambda v: 0.5 * _sqnorm(params.operator(v) - params.y) + regularizer(v)  # noqa: E731
        grad_f = lambda v: params.operator.adjoint(params.operator(v) - params.y)  # noqa: E731
        grad_phi = lambda v: grad_f(v) + _real_gradient(regularizer, v)  # noqa: E731
        norm = lambda v: jnp.sqrt(_sqnorm(v))  # noqa: E731
        frozen = jax.lax.stop_gradient

        z = x - alpha * grad_f(x)
        u = z - tau * _real_gradient(regularizer, z)
        grad_x = grad_phi(x)
        x_c, u_c, g_c, alpha_c, eps_c = frozen((x, u, grad_x, alpha, eps))
        phi_x = energy(x_c)
        accept = (norm(g_c) <= self.a * norm(u_c - x_c)) & (energy(u_c) - phi_x <= -_sqnorm(u_c - x_c) / self.a)

        def sufficient_decrease(j):
            step = alpha_c * self.rho**j * g_c
            return energy(x_c - step) - phi_x <= -_sqnorm(step) / self.a

        def keep_searching(carry):
            j, ok = carry
            return ~ok & (j < self.max_backtracks - 1)

        j, found = jax.lax.while_loop(
            keep_searching, lambda c: (c[0] + 1, sufficient_decrease(c[0] + 1)),
            (jnp.array(0), accept | sufficient_decrease(0)))
        found = found & ~accept
        v = x - alpha * self.rho**j * grad_x
        x_new = jnp.where(accept, u, jnp.where(found, v, x))
        x_new_c = frozen(x_new)
        shrink = norm(grad_phi(x_new_c)) < self.sigma * self.gamma * eps_c
        eps_new = jnp.where(shrink, self.gamma * eps, eps)
        info = {
            "branch": jnp.where(accept, BRANCH_ACCEPT_U, jnp.where(found, BRANCH_BACKTRACK, BRANCH_EXHAUSTED)),
            "energy_before": phi_x,
            "energy_after": energy(x_new_c),
            "eps": eps_c,
            "backtracks": jnp.where(accept, 0, jnp.where(found, j + 1, self.max_backtracks)),
        }
        return (x_new, eps_new), info


class ZeroFilled(eqx.Module):
    """Initial image ``x₀ = A^H y``."""

    def __call__(self, operator, y):
        return operator.adjoint(y)


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

    def _setup(self, operator, y, omega):
        x0 = self.initial(operator, y)
        real = jnp.finfo(x0.dtype).dtype
        params = LOAParams(self.features, operator, y, jax.nn.sigmoid(jnp.asarray(omega, real)))
        return (x0, self.eps0.astype(real)), params

    def __call__(self, operator: LinearOperator, y: jax.Array, omega, *, adjoint=Autodiff()) -> jax.Array:
        """Reconstruct one image from measurements ``y`` of task weight ``omega`` (κ = sigmoid(ω)).

        Batches: ``jax.vmap(lambda y: net(op, y, omega))(ys)``.
        """
        u0, params = self._setup(operator, y, omega)
        return unroll(self.phase, u0, self.thetas, params, adjoint=adjoint)[0]

    def trace(self, operator: LinearOperator, y: jax.Array, omega):
        """Run all phases and return ``(x_T, info)``; ``info`` leaves have a leading phase axis T."""
        u0, params = self._setup(operator, y, omega)
        (x, _), info = jax.lax.scan(lambda s, th: self.phase.step(s, th, params), u0, self.thetas)
        return x, info
