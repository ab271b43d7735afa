"""Unrolled iterations ``u_t = phase(u_{t−1}, θ_t, params)``, t = 1..T, and their adjoints.

One entry point, :func:`unroll`, takes an ``adjoint=`` strategy:

- :class:`Autodiff` — ``lax.scan`` and JAX's reverse mode through it (stores
  every intermediate value of every phase).
- :class:`MLM` — the method of Lagrangian multipliers (Arora & Batra 2025) as a
  ``jax.custom_vjp``: the forward pass keeps only the states ``u_t`` (or every
  k-th one), and the backward pass runs

      λ_T = −∂ℓ/∂u_T,   λ_{t−1} = λ_t · ∂_u g(u_{t−1}, θ_t),
      ∂L/∂θ_t = −λ_t · ∂_θ g(u_{t−1}, θ_t),   ∂L/∂params = −Σ_t λ_t · ∂_p g(u_{t−1}, θ_t),
      ∂L/∂u_0 = −λ_0

  with one ``jax.vjp`` of the phase per step in a reverse ``lax.scan``.

Conventions. ``u`` is a PyTree of floating/complex arrays (e.g. ``(x, ε)``);
``thetas`` is a PyTree whose leaves share a leading axis T ≥ 1 (per-phase
controls); ``params`` is shared by all phases and may hold weights, task
parameters, operators and measurements. Non-float leaves of ``params`` (masks,
integers) get zero (``float0``) cotangents. For complex states, "∂ℓ/∂u" is
JAX's gradient convention (what ``jax.grad`` returns), so ``λ_t`` is exactly
``−jax.grad`` of the loss with respect to ``u_t``.

Not supported with :class:`MLM`: forward-mode differentiation (``jax.jvp``,
``jax.jacfwd``, ``jax.hessian``) — ``custom_vjp`` functions have no JVP rule;
use :class:`Autodiff` there. Reverse-over-reverse (gradients of gradients, as
the penalty bilevel method needs) works, because the backward pass is itself
ordinary differentiable JAX code. The phase must receive every traced value it
depends on through its arguments (``params``), not by closure.
"""

from __future__ import annotations

import abc
import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

# ------------------------------------------------------------------ validation


def num_phases(thetas) -> int:
    """The common leading axis T of the ``thetas`` leaves, with clear errors."""
    leaves, _ = jax.tree_util.tree_flatten_with_path(thetas)
    if not leaves:
        raise ValueError("`thetas` has no array leaves; expected per-phase controls with a leading axis T.")
    lengths = {jax.tree_util.keystr(path): (jnp.shape(leaf)[0] if jnp.ndim(leaf) else None) for path, leaf in leaves}
    if None in lengths.values():
        scalars = ", ".join(k or "(root)" for k, v in lengths.items() if v is None)
        raise ValueError(f"`thetas` leaves {scalars} are scalars; every leaf needs a leading phase axis T.")
    if len(set(lengths.values())) > 1:
        counts = ", ".join(f"{k or '(root)'}: {v}" for k, v in lengths.items())
        raise ValueError(f"`thetas` leaves have inconsistent leading axes (phase counts): {counts}.")
    t = next(iter(lengths.values()))
    if t == 0:
        raise ValueError("`thetas` has T = 0 phases; expected at least one phase.")
    return t


def _check_state(u0) -> None:
    for path, leaf in jax.tree_util.tree_flatten_with_path(u0)[0]:
        if not jnp.issubdtype(jnp.result_type(leaf), jnp.inexact):
            raise TypeError(
                f"`u0` leaf {jax.tree_util.keystr(path) or '(root)'} has dtype {jnp.result_type(leaf)}; "
                "states must be floating-point or complex."
            )


def _check_phase(phase, u0, thetas, params) -> None:
    """Fail early (with the offending leaf named) if the phase changes the state's structure."""
    if not callable(phase):
        raise TypeError(f"`phase` must be a function `phase(u, theta_t, params) -> u_next`; got "
                        f"{type(phase).__name__}.")
    theta0 = jax.tree.map(lambda a: a[0], thetas)
    out = eqx.filter_eval_shape(phase, u0, theta0, params)  # non-array leaves of params stay static
    expected = jax.tree.map(lambda a: jax.ShapeDtypeStruct(jnp.shape(a), jnp.result_type(a)), u0)
    if jax.tree.structure(out) != jax.tree.structure(expected):
        raise ValueError(
            f"`phase` must return a state with the structure of `u0`; got {jax.tree.structure(out)}, "
            f"expected {jax.tree.structure(expected)}."
        )
    for (path, got), want in zip(jax.tree_util.tree_flatten_with_path(out)[0], jax.tree.leaves(expected)):
        if got.shape != want.shape or got.dtype != want.dtype:
            raise ValueError(
                f"`phase` changes state leaf {jax.tree_util.keystr(path) or '(root)'} from "
                f"{want.shape} {want.dtype} to {got.shape} {got.dtype}; a phase must preserve shape and dtype."
            )


# ------------------------------------------------------------------ phases with discrete choices


class DecidingPhase(eqx.Module):
    """A phase whose discrete choices (branches, line-search counts) can be recorded and replayed.

    ``decide(u, θ, params) -> (u_next, decisions)`` runs the whole phase and
    returns its choices as a small PyTree; ``apply(u, θ, params, decisions)``
    recomputes ``u_next`` along the recorded choices, evaluating only what
    ``u_next`` depends on differentiably. The two must agree exactly, and the
    choices must be piecewise constant (they carry no gradient), so
    ``apply``'s derivatives equal the phase's. :class:`MLM` stores the choices
    of every phase (a few bytes each) in the forward pass and differentiates
    ``apply`` in the backward pass, so tests such as energy evaluations or a
    backtracking search are not recomputed there. Calling the phase is ``decide``.
    """

    @abc.abstractmethod
    def decide(self, u, theta, params):
        """Run the phase; return ``(u_next, decisions)``."""

    @abc.abstractmethod
    def apply(self, u, theta, params, decisions):
        """Recompute ``u_next`` along the recorded ``decisions``."""

    def __call__(self, u, theta, params):
        return self.decide(u, theta, params)[0]


def _decide(phase, u, theta, params):
    return phase.decide(u, theta, params) if isinstance(phase, DecidingPhase) else (phase(u, theta, params), None)


def _replay(phase, u, step_inputs, params):
    """The phase at ``u`` for ``step_inputs = (theta, decisions)``, along the recorded decisions."""
    theta, decisions = step_inputs
    return phase.apply(u, theta, params, decisions) if isinstance(phase, DecidingPhase) else phase(u, theta, params)


# ------------------------------------------------------------------ strategies


class Adjoint(eqx.Module):
    """How :func:`~metajax.adjoint.unroll` is differentiated. ``scan_unroll`` is passed to ``lax.scan(unroll=...)``."""

    scan_unroll: int | bool = eqx.field(default=1, static=True, kw_only=True)

    @abc.abstractmethod
    def run(self, phase, u0, thetas, params):
        """Return ``u_T``."""


class Autodiff(Adjoint):
    """Plain ``lax.scan``; JAX's autodiff stores every intermediate of every phase."""

    def run(self, phase, u0, thetas, params):
        return jax.lax.scan(lambda u, th: (phase(u, th, params), None), u0, thetas, unroll=self.scan_unroll)[0]


class MLM(Adjoint):
    """Method of Lagrangian multipliers as a ``custom_vjp``.

    Args:
        checkpoint_every: ``None`` stores every state ``u_0..u_{T−1}`` (T states);
            an integer k stores every k-th state and recomputes each segment in
            the backward pass (⌈T/k⌉ + k states, one extra forward pass);
            ``"sqrt"`` picks k = ⌈√T⌉.
        scan_unroll: ``lax.scan`` unroll factor (in phases) of the forward and backward phase loops:
            the scans within a segment and the scan over segments.
    """

    checkpoint_every: int | str | None = eqx.field(default=None, static=True)

    def __check_init__(self):
        k = self.checkpoint_every
        if not (k is None or k == "sqrt" or (isinstance(k, int) and not isinstance(k, bool) and k >= 1)):
            raise ValueError(f"`checkpoint_every` must be None, 'sqrt' or a positive integer; got {k!r}.")

    def segment(self, t: int) -> int:
        """Phases per checkpoint segment for T = ``t`` phases (1: every state is stored; ``"sqrt"``: ⌈√T⌉)."""
        if self.checkpoint_every is None:
            return 1  # every state is a checkpoint
        if self.checkpoint_every == "sqrt":
            return max(1, math.ceil(math.sqrt(t)))
        return min(self.checkpoint_every, t)

    def segment_unroll(self, t: int) -> int | bool:
        """Unroll factor of the loop over segments: ``scan_unroll`` counted in phases (so it acts on the
        phase loop whatever the segment length)."""
        if isinstance(self.scan_unroll, bool):
            return self.scan_unroll
        return max(1, self.scan_unroll // self.segment(t))

    def run(self, phase, u0, thetas, params):
        return _mlm(phase, self, u0, thetas, params)


def unroll(phase, u0, thetas, params, *, adjoint: Adjoint = Autodiff()):
    """Run ``u_t = phase(u_{t−1}, θ_t, params)`` for t = 1..T and return ``u_T``.

    Args:
        phase: ``phase(u, theta_t, params) -> u_next`` preserving the structure,
            shapes and dtypes of ``u``.
        u0: initial state (PyTree of float/complex arrays), e.g. a zero-filled image.
        thetas: PyTree of per-phase controls, every leaf with leading axis T ≥ 1.
        params: PyTree shared by all phases.
        adjoint: :class:`Autodiff` (default) or :class:`MLM`.
    """
    if not isinstance(adjoint, Adjoint):
        raise TypeError(f"`adjoint` must be an Autodiff or MLM instance; got {type(adjoint).__name__}.")
    num_phases(thetas)
    _check_state(u0)
    _check_phase(phase, u0, thetas, params)
    if not isinstance(adjoint, MLM):
        return adjoint.run(phase, u0, thetas, params)
    try:
        return adjoint.run(phase, u0, thetas, params)
    except jax.errors.UnexpectedTracerError as error:
        raise TypeError(_MLM_TRACER_HINT) from error
    except TypeError as error:
        if "forward-mode" not in str(error) and "jvp" not in str(error):
            raise
        raise TypeError(_MLM_JVP_HINT) from error


_MLM_TRACER_HINT = (
    "`phase` closes over a traced value (one being differentiated, vmapped or jit-traced from outside), which "
    "the MLM adjoint (a jax.custom_vjp) cannot see: pass that value through `params` or `thetas` instead, or use "
    "`adjoint=Autodiff()`.")
_MLM_JVP_HINT = (
    "forward-mode differentiation (jax.jvp, jax.jacfwd, jax.hessian) cannot go through the MLM adjoint, a "
    "jax.custom_vjp with a reverse rule only: use `adjoint=Autodiff()` for forward mode, or reverse mode "
    "(jax.grad, jax.vjp) with MLM.")


def mlm_unroll(phase, u0, thetas, params, *, checkpoint_every=None, scan_unroll=1):
    """:func:`~metajax.adjoint.unroll` with the Lagrangian-multiplier adjoint, ``adjoint=MLM(...)``."""
    return unroll(phase, u0, thetas, params, adjoint=MLM(checkpoint_every, scan_unroll=scan_unroll))


def multipliers(phase, loss, u0, thetas, params, *, checkpoint_every=None, scan_unroll=1, convention="jax"):
    """The final state and every Lagrange multiplier of ``loss(u_T)``.

    Returns:
        ``(u_T, lambdas)`` where ``lambdas`` has the structure of ``u0`` with a
        leading axis T+1: ``lambdas[t] = λ_t = −∂ℓ/∂u_t`` (so ``λ_T = −∂ℓ/∂u_T``).

    For complex state leaves ``u = a + ib``, ``convention`` says which gradient ``∂ℓ/∂u`` means:
    ``"jax"`` (default) is ``jax.grad``'s, ``∂ℓ/∂a − i ∂ℓ/∂b``; ``"real"`` is the real-sense gradient
    ``∂ℓ/∂a + i ∂ℓ/∂b`` (its conjugate: the steepest-ascent direction in ℂ ≅ ℝ², the convention of the LOA
    docs). Real leaves are the same in both.
    """
    if convention not in ("jax", "real"):
        raise ValueError(f"`convention` must be 'jax' or 'real'; got {convention!r}.")
    t = num_phases(thetas)
    _check_state(u0)
    _check_phase(phase, u0, thetas, params)
    if not callable(loss):
        raise TypeError(f"`loss` must be a function `loss(u_T) -> real scalar`; got {type(loss).__name__}.")
    value = jax.eval_shape(loss, u0)
    if not isinstance(value, jax.ShapeDtypeStruct) or value.shape != () or \
            not jnp.issubdtype(value.dtype, jnp.floating):
        raise ValueError(f"`loss` must return a real scalar; got {getattr(value, 'shape', value)} "
                         f"{getattr(value, 'dtype', '')} (sum or average a vector of losses first).")
    adjoint = MLM(checkpoint_every, scan_unroll=scan_unroll)
    u_final, residuals = _forward(phase, adjoint, u0, thetas, params)
    lam_final = jax.tree.map(jnp.negative, jax.grad(loss)(u_final))
    _, _, _, lams = _backward(phase, adjoint, t, residuals, thetas, params, lam_final, keep_multipliers=True)
    lams = jax.tree.map(lambda early, last: jnp.concatenate([early, last[None]]), lams, lam_final)
    return u_final, (jax.tree.map(jnp.conj, lams) if convention == "real" else lams)


# ------------------------------------------------------------------ MLM internals




def _split(tree, t: int, k: int):
    """Split leading axis T into (T // k full segments of k, remainder of T % k)."""
    n = t // k
    full = jax.tree.map(lambda a: a[: n * k].reshape(n, k, *a.shape[1:]), tree)
    rest = jax.tree.map(lambda a: a[n * k :], tree)
    return full, rest


def _forward(phase, adjoint: MLM, u0, thetas, params):
    """Run the phases; return ``u_T`` and the residuals: checkpoints (states at segment
    starts), the state after the last full segment, and every phase's decisions."""
    t = num_phases(thetas)
    k = adjoint.segment(t)
    full, rest = _split(thetas, t, k)

    def run(u, seg_thetas):
        return jax.lax.scan(lambda u, th: _decide(phase, u, th, params), u, seg_thetas, unroll=adjoint.scan_unroll)

    def segment(u, seg_thetas):
        u_next, decisions = run(u, seg_thetas)
        return u_next, (u, decisions)

    u_mid, (checkpoints, full_decisions) = jax.lax.scan(segment, u0, full, unroll=adjoint.segment_unroll(t))
    u_final, rest_decisions = run(u_mid, rest) if t % k else (u_mid, None)
    return u_final, (checkpoints, u_mid, _merge(full_decisions, rest_decisions, t % k))


def _merge(full, rest, has_rest):
    """Inverse of :func:`_split`: (n, k, ...) segments and an (r, ...) remainder back to (T, ...)."""
    flat = jax.tree.map(lambda f: f.reshape(-1, *f.shape[2:]), full)
    return jax.tree.map(lambda f, r: jnp.concatenate([f, r]), flat, rest) if has_rest else flat


def _diff_part(params):
    return eqx.partition(params, eqx.is_inexact_array)


def _segment_states(phase, adjoint, u_start, seg_inputs, params):
    """The k input states of a segment's phases, recomputed from ``u_start`` with k − 1 replays.

    The segment's last phase is not run here: its output is the next segment's
    start (or u_T), and its ``vjp`` evaluates it anyway. For k = 1 (every
    state stored) this costs nothing.
    """
    head = jax.tree.map(lambda a: a[:-1], seg_inputs)
    last, earlier = jax.lax.scan(
        lambda u, inp: (_replay(phase, u, inp, params), u), u_start, head, unroll=adjoint.scan_unroll)
    return jax.tree.map(lambda before, final: jnp.concatenate([before, final[None]]), earlier, last)


def _segment_backward(phase, adjoint, u_start, seg_inputs, params, lam, keep_multipliers):
    """Backward through one segment: recompute its states from ``u_start`` then reverse-scan vjps.

    ``seg_inputs = (thetas, decisions)`` of the segment's phases.
    """
    states = _segment_states(phase, adjoint, u_start, seg_inputs, params)
    diff, static = _diff_part(params)

    def step(carry, inputs):
        lam, grad_params = carry
        u_prev, (theta, decisions) = inputs
        _, vjp = jax.vjp(lambda u, th, p: _replay(phase, u, (th, decisions), eqx.combine(p, static)),
                         u_prev, theta, diff)
        lam_prev, cot_theta, cot_params = vjp(lam)
        grad_params = jax.tree.map(lambda acc, c: acc - c, grad_params, cot_params)
        grad_theta = jax.tree.map(jnp.negative, cot_theta)
        return (lam_prev, grad_params), (grad_theta, lam_prev if keep_multipliers else None)

    zeros = jax.tree.map(jnp.zeros_like, diff)
    (lam_start, grad_params), (grad_thetas, lams) = jax.lax.scan(
        step, (lam, zeros), (states, seg_inputs), reverse=True, unroll=adjoint.scan_unroll
    )
    return lam_start, grad_params, grad_thetas, lams


def _backward(phase, adjoint: MLM, t: int, residuals, thetas, params, lam_final, keep_multipliers):
    """Return (λ_0, ∂L/∂params (float leaves), ∂L/∂thetas, λ_0..λ_{T−1} stacked or None)."""
    checkpoints, u_mid, decisions = residuals
    k = adjoint.segment(t)
    full, rest = _split((thetas, decisions), t, k)
    lam = lam_final
    grad_params = jax.tree.map(jnp.zeros_like, _diff_part(params)[0])
    rest_grads = rest_lams = None
    if t % k:
        lam, grad_params, rest_grads, rest_lams = _segment_backward(
            phase, adjoint, u_mid, rest, params, lam, keep_multipliers)

    def segment(carry, inputs):
        lam, grad_params = carry
        u_start, seg_inputs = inputs
        lam, seg_params, seg_grads, seg_lams = _segment_backward(
            phase, adjoint, u_start, seg_inputs, params, lam, keep_multipliers)
        return (lam, jax.tree.map(jnp.add, grad_params, seg_params)), (seg_grads, seg_lams)

    (lam0, grad_params), (full_grads, full_lams) = jax.lax.scan(
        segment, (lam, grad_params), (checkpoints, full), reverse=True, unroll=adjoint.segment_unroll(t))
    grad_thetas = _merge(full_grads, rest_grads, t % k)
    # The step of phase t emits λ_{t−1}, so these stack to λ_0..λ_{T−1}.
    lams = _merge(full_lams, rest_lams, t % k) if keep_multipliers else None
    return lam0, grad_params, grad_thetas, lams


def _with_float0(params, grads):
    """Cotangents for every leaf of ``params``: ``grads`` where it has one (float leaves), float0 zeros elsewhere."""
    return jax.tree.map(
        lambda leaf, g: np.zeros(np.shape(leaf), jax.dtypes.float0) if g is None else g,
        params, grads, is_leaf=lambda x: x is None)


class _BoundPhase(DecidingPhase):
    """``phase`` with the non-array leaves of its ``params`` (strings, functions, ``None``-free static data) bound,
    so that the custom VJP sees arrays only."""

    phase: object
    static: object

    def decide(self, u, theta, params):
        return _decide(self.phase, u, theta, eqx.combine(params, self.static))

    def apply(self, u, theta, params, decisions):
        return _replay(self.phase, u, (theta, decisions), eqx.combine(params, self.static))


def _is_dynamic(leaf) -> bool:
    return eqx.is_array(leaf) or isinstance(leaf, (bool, int, float, complex))


def _mlm(phase, adjoint: MLM, u0, thetas, params):
    t = num_phases(thetas)
    params, static = eqx.partition(params, _is_dynamic)
    if jax.tree.leaves(static):  # non-array leaves cannot cross a custom_vjp: bind them to the phase
        phase = _BoundPhase(phase, static)

    @jax.custom_vjp
    def run(u0, thetas, params):
        return _forward(phase, adjoint, u0, thetas, params)[0]

    def fwd(u0, thetas, params):
        u_final, residuals = _forward(phase, adjoint, u0, thetas, params)
        return u_final, (residuals, thetas, params)

    def bwd(saved, cotangent):
        residuals, thetas, params = saved
        # A Python float differentiated from outside arrives here as its primal value, a float: as an array it gets
        # its gradient (not a float0, i.e. dropped, cotangent).
        params = jax.tree.map(lambda leaf: jnp.asarray(leaf) if isinstance(leaf, (float, complex)) else leaf, params)
        lam_final = jax.tree.map(jnp.negative, cotangent)
        lam0, grad_params, grad_thetas, _ = _backward(phase, adjoint, t, residuals, thetas, params, lam_final, False)
        return jax.tree.map(jnp.negative, lam0), grad_thetas, _with_float0(params, grad_params)

    run.defvjp(fwd, bwd)
    return run(u0, thetas, params)

