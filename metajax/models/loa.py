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

from metajax._validation import (check_measurements, check_model_precision, check_positive, check_positive_int,
                                check_task_weight)
from metajax.adjoint import Autodiff, DecidingPhase, unroll
from metajax.models.regularizers import FeatureCNN, smoothed_l21
from metajax.operators.base import LinearOperator

BRANCH_ACCEPT_U, BRANCH_BACKTRACK, BRANCH_EXHAUSTED = 0, 1, 2


def _sqnorm(x: jax.Array) -> jax.Array:
    return jnp.sum(x.real**2 + x.imag**2) if jnp.iscomplexobj(x) else jnp.sum(x**2)


def _value_and_real_gradient(fn, x):
    """``(h(x), ∇h(x))`` with the steepest-ascent direction of a real function of (possibly complex) x."""
    value, g = jax.value_and_grad(fn)(x)
    return value, (jnp.conj(g) if jnp.iscomplexobj(x) else g)


def positive(raw: jax.Array, floor=None) -> jax.Array:
    """``floor + softplus(raw)``: positive for every finite ``raw`` (``floor`` defaults to the dtype's smallest normal)."""
    floor = jnp.finfo(raw.dtype).tiny if floor is None else floor
    return floor + jax.nn.softplus(raw)


def positive_inverse(value, floor=None, dtype=jnp.float32) -> jax.Array:
    """The raw parameter ``r`` with ``positive(r, floor) = value`` (``value > floor``)."""
    value = jnp.asarray(value, dtype)
    shifted = value - (jnp.finfo(dtype).tiny if floor is None else floor)
    return shifted + jnp.log(-jnp.expm1(-shifted))  # log(expm1(s)), stable for small and large s


class LOAParams(eqx.Module):
    """What every phase shares: CNN weights, the task (operator, measurements, κ)."""

    features: FeatureCNN
    operator: LinearOperator
    y: jax.Array
    kappa: jax.Array


class LOAPhase(DecidingPhase):
    """One phase of Algorithm 1 as a pure function ``(state, theta, params) -> state``.

    ``state = (x, ε)``; ``theta = {"alpha": α_t, "tau": τ_t}`` (positive). All
    fields are static constants of the algorithm:

    - ``a, rho, max_backtracks, gamma, sigma``: Algorithm 1's constants (safeguard
      a, backtracking factor ρ and bound, ε-shrink factor γ and test constant σ).
    - ``eps_min``: floor of ε, which shrinks as ``ε ← max(γε, eps_min)``.
    - ``curvature_steps``: scale the regulariser step and the fallback step to
      the curvature estimate ``L_R = κ G² (1/ε + 1/(2δ))`` of ``R_ε`` (G: the
      gain of the CNN linearised with every unit active,
      :meth:`FeatureCNN.linear_gain`; 1/ε the curvature of the smoothed norm at
      vanishing features, 1/(2δ) that of the smoothed ReLU): the steps taken
      are ``τ = τ_t / (1 + τ_t L_R)`` and ``α_v = α_t / (1 + α_t L_R)`` (the
      harmonic combination of the learned step and ``1/L_R``), so they never
      exceed ``1/L_R`` and the unrolled map stays well conditioned for every ε,
      κ and weight scale (see :class:`LOA`). ``False`` takes τ_t and α_t as they
      are (the paper).

    As a :class:`~metajax.adjoint.DecidingPhase` it records its choices (branch,
    backtracking count, ε shrink), so the MLM adjoint replays them instead of
    re-running the tests in its backward pass.
    """

    a: float = eqx.field(static=True, default=1e3)
    rho: float = eqx.field(static=True, default=0.5)
    max_backtracks: int = eqx.field(static=True, default=8)
    gamma: float = eqx.field(static=True, default=0.9)
    sigma: float = eqx.field(static=True, default=1e3)
    eps_min: float = eqx.field(static=True, default=1e-3)
    curvature_steps: bool = eqx.field(static=True, default=True)
    curvature_slope: float = eqx.field(static=True, default=1.0)

    def __check_init__(self):
        if not (self.a > 0 and 0 < self.rho < 1 and 0 < self.gamma < 1 and self.sigma > 0 and self.eps_min > 0):
            raise ValueError(
                f"LOA constants need a > 0, 0 < rho < 1, 0 < gamma < 1, sigma > 0, eps_min > 0; got a={self.a}, "
                f"rho={self.rho}, gamma={self.gamma}, sigma={self.sigma}, eps_min={self.eps_min}."
            )
        check_positive_int("max_backtracks", self.max_backtracks)

    def regularizer(self, params: LOAParams, eps):
        """``R_ε(x) = κ r_ε(x)`` as a function of the image."""
        return lambda x: params.kappa * smoothed_l21(params.features.real_features(x), eps, axis=-1)

    def steps(self, theta, params: LOAParams, eps):
        """The steps taken: ``(α_t, τ, α_v)`` (data step, regulariser step, first fallback step)."""
        if not self.curvature_steps:
            return theta["alpha"], theta["tau"], theta["alpha"]
        gain = params.features.linear_gain(self.curvature_slope).astype(eps.dtype)
        curvature = params.kappa * gain**2 * (1 / eps + 1 / (2 * params.features.delta))
        return (theta["alpha"], theta["tau"] / (1 + theta["tau"] * curvature),
                theta["alpha"] / (1 + theta["alpha"] * curvature))

    def _candidates(self, state, theta, params):
        """The differentiable part: ``u = z − τ∇R_ε(z)`` with ``z = x − α∇f(x)``, the fallback direction
        ``∇φ_ε(x)``, the steps ``(α, τ, α_v)`` and ``φ_ε(x)`` (one CNN pass at x serves both)."""
        x, eps = state
        alpha, tau, alpha_v = steps = self.steps(theta, params, eps)
        regularizer = self.regularizer(params, eps)
        residual = params.operator(x) - params.y
        grad_fx = params.operator.adjoint(residual)
        z = x - alpha * grad_fx
        u = z - tau * _value_and_real_gradient(regularizer, z)[1]
        r_x, grad_rx = _value_and_real_gradient(regularizer, x)
        return u, grad_fx + grad_rx, steps, 0.5 * _sqnorm(residual) + r_x

    def _select(self, state, u, grad_x, alpha_v, decisions):
        x, eps = state
        v = x - alpha_v * self.rho ** decisions["exponent"] * grad_x
        x_new = jnp.where(decisions["accept"], u, jnp.where(decisions["found"], v, x))
        return x_new, jnp.where(decisions["shrink"], jnp.maximum(self.gamma * eps, self.eps_min), eps)

    def apply(self, state, theta, params, decisions):
        u, grad_x, (_, _, alpha_v), _ = self._candidates(state, theta, params)
        return self._select(state, u, grad_x, alpha_v, decisions)

    def decide(self, state, theta, params):
        new_state, info = self.step(state, theta, params)
        return new_state, {k: info[k] for k in ("accept", "found", "exponent", "shrink")}

    def step(self, state, theta, params: LOAParams):
        """One phase; returns ``(state_next, info)`` with the decisions and diagnostics.

        The tests (safeguard, sufficient decrease, ε rule) only *decide*; they run
        on ``stop_gradient`` values (the backtracking search in a
        ``lax.while_loop`` that runs only while no step has passed), so reverse
        mode never differentiates them. The step taken stays differentiable.
        Every energy is evaluated once: φ_ε(x) comes with ∇φ_ε(x), and the energy
        of the accepted point is the one its test computed.
        """
        x, eps = state
        u, grad_x, steps, phi_x = self._candidates(state, theta, params)
        alpha_v = steps[2]
        x_c, u_c, g_c, (alpha, tau, alpha_c), phi_x, eps_c = jax.lax.stop_gradient((x, u, grad_x, steps, phi_x, eps))
        regularizer = self.regularizer(params, eps_c)
        energy = lambda v: 0.5 * _sqnorm(params.operator(v) - params.y) + regularizer(v)  # noqa: E731
        norm = lambda v: jnp.sqrt(_sqnorm(v))  # noqa: E731
        phi_u = energy(u_c)
        accept = (norm(g_c) <= self.a * norm(u_c - x_c)) & (phi_u - phi_x <= -_sqnorm(u_c - x_c) / self.a)

        def backtrack(carry):
            j = carry[0] + 1
            step = alpha_c * self.rho**j * g_c
            phi_v = energy(x_c - step)
            return j, phi_v - phi_x <= -_sqnorm(step) / self.a, phi_v

        j, found, phi_v = jax.lax.while_loop(lambda c: ~c[1] & (c[0] < self.max_backtracks - 1), backtrack,
                                             (jnp.array(-1), accept, phi_u))
        decisions = {"accept": accept, "found": found & ~accept, "exponent": jnp.maximum(j, 0),
                     "shrink": jnp.array(False)}
        x_new_c, _ = self._select((x_c, eps_c), u_c, g_c, alpha_c, decisions)
        grad_new = params.operator.adjoint(params.operator(x_new_c) - params.y) + \
            _value_and_real_gradient(regularizer, x_new_c)[1]
        decisions["shrink"] = norm(grad_new) < self.sigma * self.gamma * eps_c
        info = {
            **decisions,
            "branch": jnp.where(accept, BRANCH_ACCEPT_U, jnp.where(decisions["found"], BRANCH_BACKTRACK,
                                                                   BRANCH_EXHAUSTED)),
            "energy_before": phi_x,
            "energy_after": jnp.where(accept, phi_u, jnp.where(decisions["found"], phi_v, phi_x)),
            "eps": eps_c,
            "backtracks": jnp.where(accept, 0, jnp.where(decisions["found"], j + 1, self.max_backtracks)),
            "alpha": alpha, "tau": tau, "alpha_fallback": alpha_c,
        }
        return self._select(state, u, grad_x, alpha_v, decisions), info


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
        alpha: initial step α_t, the same for every phase (positive).
        tau: initial step τ_t, the same for every phase (positive).
        eps0: initial smoothing ε₀ (learned), larger than ``phase.eps_min``.
        phase: the algorithm constants (``LOAPhase(a=..., rho=..., ...)``).
        initial: ``x₀ = initial(operator, y)``; :class:`ZeroFilled` by default,
            any (learnable) ``eqx.Module`` with that signature works.
        cnn: keyword arguments of :class:`FeatureCNN` (layers, features, delta).

    Parametrisation. The learned steps and ε₀ are stored as raw values and used
    as ``α_t = softplus(a_t)``, ``τ_t = softplus(b_t)`` and
    ``ε₀ = eps_min + softplus(e)`` (plus the dtype's smallest normal number for
    the steps), so no optimizer step can make them zero, negative or NaN.
    The defaults (``curvature_steps``, ε₀ = 1, ε ≥ 1e-3, α = 1, τ = 1, CNN smoothing
    δ = 0.1) keep the
    unrolled map and its float32 gradient well conditioned; :meth:`paper` builds
    the paper's constants. See docs/models.md for the measurements behind them.
    """

    features: FeatureCNN
    alpha_raw: jax.Array
    tau_raw: jax.Array
    eps0_raw: jax.Array
    phase: LOAPhase
    initial: eqx.Module

    def __init__(self, key, num_phases: int = 11, alpha: float = 1.0, tau: float = 1.0, eps0: float = 1.0,
                 phase: LOAPhase = LOAPhase(), initial: eqx.Module = ZeroFilled(), dtype=jnp.float32, **cnn):
        cnn.setdefault("delta", 0.1 if phase.curvature_steps else 1e-3)
        num_phases = check_positive_int("num_phases", num_phases)
        check_positive("alpha", alpha)
        check_positive("tau", tau)
        if not eps0 > phase.eps_min:
            raise ValueError(f"`eps0` must exceed the floor phase.eps_min = {phase.eps_min}; got {eps0}.")
        self.features = FeatureCNN(key, dtype=dtype, **cnn)
        self.alpha_raw = jnp.full(num_phases, positive_inverse(alpha, dtype=dtype))
        self.tau_raw = jnp.full(num_phases, positive_inverse(tau, dtype=dtype))
        self.eps0_raw = positive_inverse(eps0, phase.eps_min, dtype)
        self.phase = phase
        self.initial = initial

    @classmethod
    def paper(cls, key, num_phases: int = 11, *, alpha: float = 0.5, tau: float = 0.1, eps0: float = 1e-3,
              dtype=jnp.float32, **kwargs) -> LOA:
        """The constants of Bian et al.: ε₀ = 1e-3 and raw steps (no curvature scaling), ε floored only at 1e-8.

        Ill conditioned in float32 at this initialisation (docs/models.md); kept
        to reproduce and compare with the paper.
        """
        phase = LOAPhase(eps_min=1e-8, curvature_steps=False)
        return cls(key, num_phases, alpha=alpha, tau=tau, eps0=eps0, phase=phase, dtype=dtype, **kwargs)

    @property
    def alpha(self) -> jax.Array:
        """α_t, (T,)."""
        return positive(self.alpha_raw)

    @property
    def tau(self) -> jax.Array:
        """τ_t, (T,) (before the curvature scaling of :meth:`LOAPhase.steps`)."""
        return positive(self.tau_raw)

    @property
    def eps0(self) -> jax.Array:
        """ε₀, a scalar."""
        return positive(self.eps0_raw, self.phase.eps_min)

    @property
    def thetas(self) -> dict:
        """The per-phase controls of :func:`~metajax.adjoint.unroll`: ``{"alpha": (T,), "tau": (T,)}``."""
        return {"alpha": self.alpha, "tau": self.tau}

    def phase_inputs(self, operator, y, omega=None):
        """``(u0, params)`` of the unrolled phases: ``u0 = (x₀, ε₀)`` and the shared :class:`LOAParams`.

        ``omega=None`` fixes κ = 1 (conventional training of the same network, no task weight).
        """
        check_model_precision(self)
        y = check_measurements(operator, y)
        x0 = self.initial(operator, y)
        real = jnp.finfo(x0.dtype).dtype
        kappa = jnp.ones((), real) if omega is None else jax.nn.sigmoid(check_task_weight(omega, real))
        params = LOAParams(self.features, operator, y, kappa)
        return (x0, self.eps0.astype(real)), params

    def __call__(self, operator: LinearOperator, y: jax.Array, omega=None, *, adjoint=Autodiff()) -> jax.Array:
        """Reconstruct one image from measurements ``y`` of task weight ``omega`` (κ = sigmoid(ω);
        ``None``: κ = 1, the network without task weights that conventional training uses).

        Batches: ``jax.vmap(lambda y: net(op, y, omega))(ys)``.
        """
        u0, params = self.phase_inputs(operator, y, omega)
        return unroll(self.phase, u0, self.thetas, params, adjoint=adjoint)[0]

    def trace(self, operator: LinearOperator, y: jax.Array, omega=None):
        """Run all phases and return ``(x_T, info)``; ``info`` leaves have a leading phase axis T.

        ``info`` holds per phase: ``branch`` (0 u accepted, 1 backtracking, 2
        exhausted), ``backtracks``, ``eps``, ``energy_before``/``energy_after``
        (φ_ε at the phase's ε), the steps taken ``alpha``, ``tau`` and
        ``alpha_fallback``, and the decisions. :func:`branch_counts` tallies
        branches over a batch.
        """
        u0, params = self.phase_inputs(operator, y, omega)
        (x, _), info = jax.lax.scan(lambda s, th: self.phase.step(s, th, params), u0, self.thetas)
        return x, info


def branch_counts(branch: jax.Array) -> jax.Array:
    """Per-phase counts of each branch: ``branch`` (..., T) from :meth:`LOA.trace` → (T, 3) int counts
    of (u accepted, backtracking, exhausted) over the leading (batch) axes."""
    flat = jnp.reshape(branch, (-1, branch.shape[-1]))
    return jnp.stack([jnp.sum(flat == b, axis=0) for b in (BRANCH_ACCEPT_U, BRANCH_BACKTRACK, BRANCH_EXHAUSTED)],
                     axis=-1)
