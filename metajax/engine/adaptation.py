"""Adaptation of a trained model to a user's own scans: one loop shared by ``metajax-adapt`` and
``metajax-reconstruct adapt=self``.

A user has S slices ``y_s`` measured on a mask Ω with operator A (and perhaps k images with ground
truth). :func:`adapt` runs Adam on one of three losses, moving the parameters ``params`` selects:

- ``self`` — the splitting loss (:func:`metajax.bilevel.splitting_loss`) on the slices' own
  measurements: no ground truth exists in this mode (the images handed to the loss are NaN, so
  reading one would poison the result; tested);
- ``finetune`` — the supervised loss on the k ground-truth images (measured on the same mask);
- ``omega`` — the supervised loss with only the task weight ω moving (θ frozen).

**Stopping without ground truth.** Before the first step, a fixed ``holdout`` share of the sampled
non-central k-space is set aside (:func:`metajax.pretrained.holdout`: whole lines of a line mask,
spoke-shaped strips of a 2-D mask): Γ. Every ``eval_every`` steps the model reconstructs up to
``eval_slices`` of the slices from Ω \\ Γ and its prediction of Γ is scored,
``e = mean_s sqrt(Σ_Γ w |A x̂_s − y_s|² / Σ_Γ w |y_s|²)``, with ``w`` weighting each radial band of
k-space by the unmeasured k-space it holds per held-out sample (:func:`heldout_weights`). The adapted
step with the smallest ``e`` is returned unless its ``e`` exceeds the unadapted model's by more than
``tolerance`` (10 %): then the unadapted model is, so a step size that wrecks the network never reaches
the user. The tolerance is there because the score is biased against adapted models — they were trained
on sparser inputs (Θ ⊂ Ω \\ Γ) — by 2–6 % where adaptation gained 0.2–0.3 dB (docs/adaptation.md). In ``self`` mode Γ is also removed from the training measurements (the
splits draw Θ and Λ from Ω \\ Γ only: ZS-SSL's third set), so the score is out of sample; the final
reconstruction uses all of Ω.

The report (``adaptation.json`` of both commands) holds the curve (step, training loss, held-out
error, seconds), the chosen step, and the time per step, per slice (total / S) and per volume
(compilation excluded, reported apart).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

from metajax import bilevel
from metajax.engine.validation import ConfigError
from metajax.pretrained.selfcheck import holdout

MODES = ("self", "finetune", "omega")
PARAMS = ("all", "cnn", "omega")
DEFAULT_LR = {"self": 1e-4, "finetune": 1e-4, "omega": 1e-2}
LOSSES = ("auto", "splitting", "supervised", "measurement")


@dataclass(frozen=True)
class Settings:
    """What :func:`adapt` does (the fields of ``adapt.*`` in the configs, same names and defaults)."""

    mode: str = "self"
    loss: str = "auto"  # auto (self: splitting, else supervised) | splitting | supervised | measurement
    params: str = "all"  # all: every float leaf (θ and ω) | cnn: the network's CNN only | omega: ω only
    steps: int = 60  # Adam steps
    lr: float | None = None  # Adam's step; None: DEFAULT_LR[mode] (small for θ: a trained network is wrecked by
    # 1e-3 within a few steps; ω alone needs a large one)
    batch: int = 2  # images (self: slices) per step
    eval_every: int = 10  # held-out error every this many steps (and at step 0 and the last)
    eval_slices: int = 8  # slices the held-out error is measured on (evenly spaced; all when fewer)
    holdout: float = 0.1  # share of the non-central sampled k-space held out for stopping
    tolerance: float = 0.1  # keep the best adapted step unless its held-out error exceeds step 0's by more than
    # this fraction (then the unadapted model): the score is biased against adapted models by a few per cent
    weighting: str = "unmeasured"  # held-out error: unmeasured (bands weighted like the unmeasured k-space) | plain
    fraction: float = 0.2  # splitting loss: expected share of Ω \ (centre ∪ Γ) in the loss set Λ (SSDU: 0.4;
    # 0.2 keeps the network's input closer to the full mask it reconstructs from: measured in docs/adaptation.md)
    draws: int = 1  # splitting loss: splits per image and step
    selection: str = "uniform"  # splitting loss: uniform | gaussian
    norm: str = "l2"  # splitting loss: l2 (squared error) | l1l2 (SSDU's normalised ℓ1–ℓ2)
    seed: int = 0

    def check(self) -> None:
        if self.mode not in MODES:
            raise ConfigError(f"`adapt.mode` must be one of {MODES}; got {self.mode!r}.")
        if self.loss not in LOSSES:
            raise ConfigError(f"`adapt.loss` must be one of {LOSSES}; got {self.loss!r}.")
        if self.mode == "self" and self.loss == "supervised":
            raise ConfigError("`adapt.mode=self` has no ground truth: its loss is splitting (or measurement, which "
                              "is blind for networks with exact data consistency); got adapt.loss=supervised.")
        if self.params not in PARAMS:
            raise ConfigError(f"`adapt.params` must be one of {PARAMS}; got {self.params!r}.")
        for name in ("steps", "batch", "eval_every", "eval_slices", "draws"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"`adapt.{name}` must be a positive integer; got {value!r}.")
        if self.lr is not None and not (self.lr > 0 and np.isfinite(self.lr)):
            raise ConfigError(f"`adapt.lr` must be a positive number; got {self.lr!r}.")
        for name in ("holdout", "fraction"):
            if not 0 < getattr(self, name) < 1:
                raise ConfigError(f"`adapt.{name}` must lie in (0, 1); got {getattr(self, name)!r}.")
        if self.selection not in ("uniform", "gaussian"):
            raise ConfigError(f"`adapt.selection` must be uniform or gaussian; got {self.selection!r}.")
        if not self.tolerance >= 0:
            raise ConfigError(f"`adapt.tolerance` must be ≥ 0; got {self.tolerance!r}.")
        if self.weighting not in ("unmeasured", "plain"):
            raise ConfigError(f"`adapt.weighting` must be unmeasured or plain; got {self.weighting!r}.")
        if self.norm not in ("l2", "l1l2"):
            raise ConfigError(f"`adapt.norm` must be l2 or l1l2; got {self.norm!r}.")


def single_task(model, operator):
    """The model to adapt to ``operator``'s scans: a :class:`~metajax.bilevel.RatioWeighted` model with the ω it
    would choose for ``operator`` as its only weight (so ``adapt.params=omega`` fits that one scalar and the
    adapted model uses it for any mask); any other model as it is."""
    if isinstance(model, bilevel.RatioWeighted):
        omega = model.omega_for(operator)
        return bilevel.RatioWeighted(model.net, [float(np.asarray(operator.mask).mean())], omega[None], model.adjoint)
    return model


def _trainable(model, params: str):
    """``(theta, static)`` of ``model`` for ``params`` (all | cnn | omega)."""
    if params == "all":
        return eqx.partition(model, eqx.is_inexact_array)
    if params == "omega":
        if not hasattr(model, "omega"):
            raise ConfigError("`adapt.params=omega` (or mode=omega) needs a model with task weights ω.")
        return eqx.partition(model, lambda leaf: leaf is model.omega)
    net = getattr(model, "net", model)
    if not hasattr(net, "cnn"):
        raise ConfigError(f"`adapt.params=cnn` needs a network with a `cnn` (DCNet); got {type(net).__name__}.")
    spec = jax.tree.map(lambda _: False, model)
    spec = eqx.tree_at(lambda m: getattr(m, "net", m).cnn, spec, jax.tree.map(eqx.is_inexact_array, net.cnn))
    return eqx.partition(model, spec)


RADIAL_BINS = 16


def heldout_weights(mask, held) -> jax.Array:
    """(H, W) importance weights of the held-out samples: ``w(r) = #unmeasured(r) / #held(r)`` per radial band
    r of k-space (``RADIAL_BINS`` bands of ``sqrt(u² + v²)`` in units of the grid), 0 off ``held``.

    The held-out samples lie where the mask samples — densely near the centre for most masks — while the error
    that decides image quality lies in the k-space the mask leaves out, mostly at high frequencies. Weighting
    each band by how much unmeasured k-space it holds per held-out sample makes the held-out error an estimate
    of the error over the unmeasured k-space (by Parseval, the image error). Bands without held-out samples
    get no weight."""
    mask, held = np.asarray(mask, bool), np.asarray(held, bool)
    h, w = mask.shape
    v, u = np.meshgrid((np.arange(h) - h // 2) / h, (np.arange(w) - w // 2) / w, indexing="ij")
    band = np.minimum((np.sqrt(u**2 + v**2) / np.sqrt(0.5) * RADIAL_BINS).astype(int), RADIAL_BINS - 1)
    unmeasured = np.bincount(band[~mask], minlength=RADIAL_BINS)
    count = np.bincount(band[held], minlength=RADIAL_BINS)
    ratio = np.where(count > 0, unmeasured / np.maximum(count, 1), 0.0)
    return jnp.asarray(np.where(held, ratio[band], 0.0), jnp.float32)


def heldout_error(model, operator, kept, held, y, weights=None) -> jax.Array:
    """Mean over the slices ``y`` (S, …) of ``sqrt(Σ w |A x̂ − y|² / Σ w |y|²)`` over the held-out samples,
    ``x̂ = model(A_kept, kept ⊙ y, 0)`` with ``A_kept`` = ``operator`` on the mask ``kept``; ``weights`` w
    (default: 1 on ``held``; :func:`heldout_weights` for the estimate of the unmeasured error)."""
    operator_kept = eqx.tree_at(lambda op: op.mask, operator, kept)
    weights = jnp.asarray(held, jnp.float32) if weights is None else weights

    def error(v):
        d = operator(model(operator_kept, jnp.where(kept, v, 0), 0)) - v
        return jnp.sqrt(jnp.sum(weights * jnp.abs(d) ** 2) / jnp.sum(weights * jnp.abs(v) ** 2))

    return jnp.mean(jax.lax.map(error, y))


def adapt(model, operator, y, settings: Settings, *, images=None, images_y=None, log=print, progress: bool = True,
          callback=None):
    """Adapt ``model`` to the slices ``y`` (S, H, W) measured with ``operator`` (see the module docstring).

    Args:
        model: a one-task model ``model(operator, y, 0)`` (:func:`single_task`).
        operator: the slices' :class:`~metajax.operators.SingleCoilMRI` (or any operator with a ``mask``).
        y: (S, H, W) measurements on the scale the model expects (images with maximum ≈ 1).
        settings: :class:`Settings`.
        images: ``finetune`` / ``omega``: the (k, H, W) ground-truth images trained on (measured with
            ``operator``); ``self``: must be None.
        images_y: the measurements of ``images`` (with the scan's noise, say); default ``operator(images)``.
        callback: called ``callback(step, model)`` after every step (e.g. to score the model at step budgets).

    Returns:
        ``(adapted model, report)``; the report is a dict (``curve``, ``best_step``, ``seconds``,
        ``seconds_per_step``, ``seconds_per_slice``, ``compile_seconds``, ``slices``, ``settings``).
    """
    settings.check()
    if (settings.mode == "self") != (images is None):
        raise ConfigError("`adapt.mode=self` reads no ground truth (images=None); finetune and omega need the "
                          "ground-truth images to train on.")
    params = "omega" if settings.mode == "omega" else settings.params
    key = jax.random.key(settings.seed)
    y = jnp.asarray(y)
    kept, held = holdout(jax.random.fold_in(key, 0), operator.mask, settings.holdout)
    operator_kept = eqx.tree_at(lambda op: op.mask, operator, kept)
    pick = np.unique(np.linspace(0, len(y) - 1, min(settings.eval_slices, len(y))).round().astype(int))
    y_eval = y[pick]
    if settings.mode == "self":  # the loss sees Ω \ Γ only; x is a NaN placeholder (no ground truth exists)
        train_operator, train_y = operator_kept, jnp.where(kept, y, 0)
        train_x = jnp.full(y.shape, jnp.nan, y.dtype)
    else:
        train_x = jnp.asarray(images, y.dtype)
        train_operator = operator
        train_y = jax.vmap(operator)(train_x) if images_y is None else jnp.asarray(images_y, y.dtype)
    loss_name = settings.loss if settings.loss != "auto" else ("splitting" if settings.mode == "self" else "supervised")
    loss_fn = {"supervised": bilevel.supervised_loss, "measurement": bilevel.measurement_loss,
               "splitting": bilevel.Splitting(settings.fraction, settings.draws, settings.selection,
                                              norm=settings.norm)}[loss_name]
    batch = min(settings.batch, len(train_y))
    theta, static = _trainable(model, params)
    lr = DEFAULT_LR[settings.mode] if settings.lr is None else settings.lr
    optimizer = optax.adam(lr)

    def step(p, opt_state, k):
        index = jax.random.choice(k, len(train_y), (batch,), replace=False)
        b = bilevel.TaskBatch(train_operator, train_x[index], train_y[index], 0, jax.random.fold_in(k, 1))
        value, grad = jax.value_and_grad(lambda q: loss_fn(eqx.combine(q, static), b, batch_size=1))(p)
        updates, opt_state = optimizer.update(grad, opt_state, p)
        return optax.apply_updates(p, updates), opt_state, value

    tic = time.perf_counter()
    theta0 = theta
    opt_state = optimizer.init(theta)
    step = jax.jit(step).lower(theta, opt_state, key).compile()
    weights = heldout_weights(operator.mask, held) if settings.weighting == "unmeasured" else None
    evaluate = jax.jit(lambda p: heldout_error(eqx.combine(p, static), operator, kept, held, y_eval, weights)).lower(
        theta).compile()
    compile_seconds = time.perf_counter() - tic

    start = float(evaluate(theta))
    best = (np.inf, 0, theta)  # the best adapted step so far (held-out error, step, parameters)
    curve = [{"step": 0, "loss": None, "heldout": start, "seconds": 0.0}]
    bar = _bar(settings.steps, progress)
    stopped = None
    tic = time.perf_counter()
    for k in range(1, settings.steps + 1):
        theta, opt_state, value = step(theta, opt_state, jax.random.fold_in(key, k))
        if not np.isfinite(float(value)):  # diverged: stop here, keep the best step so far
            log(f"adaptation stopped at step {k}: the {loss_name} loss is {float(value)} (adapt.lr = {lr} is too "
                f"large); keeping step {best[1]}.")
            stopped = k
            break
        row = {"step": k, "loss": float(value)}
        if callback is not None:
            callback(k, eqx.combine(theta, static))
        if k % settings.eval_every == 0 or k == settings.steps:
            row["heldout"] = float(evaluate(theta))
            if row["heldout"] < best[0]:
                best = (row["heldout"], k, theta)
        row["seconds"] = time.perf_counter() - tic
        curve.append(row)
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{row['loss']:.3e}", heldout=f"{curve_last(curve):.4f}")
        elif k == 1 or k % settings.eval_every == 0 or k == settings.steps:
            log(f"adapt ({settings.mode}) step {k}/{settings.steps}: loss {row['loss']:.4e}, held-out error "
                f"{curve_last(curve):.4f} (step 0: {start:.4f}), {row['seconds']:.0f} s")
    if bar is not None:
        bar.close()
    seconds = time.perf_counter() - tic
    if not best[0] <= (1 + settings.tolerance) * start:  # adaptation did not hold up: the model as it was
        best = (start, 0, theta0)
    report = {"curve": curve, "best_step": best[1], "best_heldout": best[0], "start_heldout": start,
              "seconds": seconds, "compile_seconds": compile_seconds, "seconds_per_step": seconds / max(1, len(curve) - 1),
              "diverged_at": stopped,
              "slices": int(len(y)), "seconds_per_slice": seconds / len(y), "trained_images": int(len(train_y)),
              "settings": asdict(settings), "moved": params, "loss": loss_name, "lr": lr}
    return eqx.combine(best[2], static), report


def curve_last(curve) -> float:
    """The latest held-out error of a curve."""
    return next(r["heldout"] for r in reversed(curve) if "heldout" in r)


def _bar(steps: int, progress: bool):
    if not progress:
        return None
    from tqdm import tqdm

    return tqdm(total=steps, desc="adapt", unit="step")
