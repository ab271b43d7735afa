"""Per-task losses of a meta model on a minibatch, and deterministic minibatches of stacked tasks.

For a meta model ``f = model(operator, y, task)`` (:mod:`metajax.bilevel.parameters`)
and a minibatch of B images of one task with operator A:

    supervised:        ℓ = (1/B) Σ_b ‖f(y_b) − x_b‖²
    measurement-only:  ℓ = (1/B) Σ_b ‖A f(y_b) − y_b‖²
    splitting (SSDU):  ℓ = (1/(B D)) Σ_b Σ_d ‖P_Λ (A f_Θ(P_Θ y_b)) − P_Λ y_b‖²,   (Θ, Λ) = split_d(Ω)

the last two needing no ground truth. The measurement-only loss (Meta-Prior's
unsupervised inner loss) is *blind* for a network with exact data consistency
(DCNet): A f(y) = y whatever its weights, so ℓ ≈ 0 and its gradient carries
nothing (tested). The splitting loss hides the loss set Λ from the network
(it reconstructs from Θ with the operator A_Θ on mask Θ) and scores its
prediction of the hidden measurements, which no data-consistency step can fake:
it sees the unmeasured k-space the way the supervised loss does, without
ground truth. D draws (Θ, Λ) of :func:`metajax.masks.split` per image come from
the batch's ``key``.
The norms are sums over pixels (not means), as in the papers, so constants
tuned there (Bian et al.'s δ and λ) keep their meaning; the value grows with
the image size, which matters for inner SGD step sizes (Adam does not care).
Complex errors count ``|·|² = Re² + Im²``. On a :class:`TaskBatch` of N stacked
tasks both return the (N,) vector of per-task losses, computed with ``vmap``
over tasks (never a Python loop), so solvers can weight, sum or vmap them.
Tasks whose operators differ in type (denoising, blur, inpainting) cannot be
stacked; give each type its own :class:`TaskBatch` and pass the tuple:
:func:`group_losses` evaluates each group with ``vmap`` and concatenates.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp

from metajax._validation import check_key, check_positive_int, is_concrete
from metajax.data.tasks import Task
from metajax.masks import is_line_mask, split
from metajax.operators.base import LinearOperator


class TaskBatch(eqx.Module):
    """A minibatch of one task — ``x`` (B, H, W), ``y`` (B, …), ``task`` a scalar — or of N stacked
    tasks (every leaf, the operator's included, with a leading task axis N).

    Attributes:
        operator: the task's forward operator A.
        x: ground-truth images.
        y: measurements ``A x + noise``.
        task: the task's index (selects its ω in a :class:`~metajax.bilevel.TaskWeighted` model).
        key: PRNG key of the k-space splits of :func:`splitting_loss` (unused by the other losses).
    """

    operator: LinearOperator
    x: jax.Array
    y: jax.Array
    task: jax.Array
    key: jax.Array | None = None  # PRNG key of the k-space splits (splitting loss); one per task when stacked

    def __check_init__(self):
        x_shape, y_shape = getattr(self.x, "shape", None), getattr(self.y, "shape", None)
        if x_shape is None or y_shape is None:
            return
        lead = len(x_shape) - 2  # (B,) for one task, (N, B) for stacked tasks
        if lead < 1 or tuple(y_shape[:lead]) != tuple(x_shape[:lead]):
            raise ValueError(f"`TaskBatch`: `x` {tuple(x_shape)} and `y` {tuple(y_shape)} must hold the same images: "
                             "x is (B, H, W) (or (N, B, H, W) for stacked tasks) and y starts with the same "
                             f"{'(B,)' if lead == 1 else '(N, B)'} axes.")


def sample_batch(tasks: Task, key, split: str, batch_size: int, task_ids=None, *,
                 num_tasks: int | None = None) -> TaskBatch:
    """``batch_size`` images of ``split`` from each of the N stacked ``tasks``, deterministic given ``key``.

    Args:
        tasks: a stacked :class:`~metajax.data.Task` (:func:`~metajax.data.stack_tasks`), leading axis N.
        key: PRNG key; task i uses ``jax.random.split(key, N)[i]``.
        split: "train", "val" or "test".
        batch_size: images per task (distinct images within a task).
        task_ids: (N,) distinct task indices (default ``0..N−1``).
        num_tasks: how many tasks the model has task weights for, all groups of a
            :class:`~metajax.bilevel.TaskGroups` together (default N): every index
            must lie in ``[0, num_tasks)``.
    """
    check_key("key", key)
    if tasks.train.ndim != 4:
        raise ValueError("`tasks` must be stacked tasks (leading task axis); use `metajax.data.stack_tasks`.")
    n = tasks.train.shape[0]
    task_ids = jnp.arange(n) if task_ids is None else jnp.asarray(task_ids)
    if task_ids.shape != (n,) or not jnp.issubdtype(task_ids.dtype, jnp.integer):
        raise ValueError(f"`task_ids` must be ({n},) integers (one index per task); got {task_ids.shape} "
                         f"{task_ids.dtype}.")
    limit = n if num_tasks is None else check_positive_int("num_tasks", num_tasks)
    if is_concrete(task_ids):
        ids = task_ids.tolist()
        if any(i < 0 or i >= limit for i in ids):
            raise ValueError(f"`task_ids` must be task indices in [0, {limit}) (`num_tasks` = {limit}"
                             f"{'' if num_tasks is not None else ', the number of stacked tasks'}); got {ids}.")
        if len(set(ids)) != len(ids):
            raise ValueError(f"`task_ids` must be distinct (each task selects its own weight ω); got {ids}.")
    keys = jax.random.split(key, n)
    x, y = jax.vmap(lambda t, k: t.batch(k, split, batch_size))(tasks, keys)
    return TaskBatch(tasks.operator, x, y, task_ids, jax.vmap(lambda k: jax.random.fold_in(k, 1))(keys))


def _squared_error(a, b):
    d = a - b
    return jnp.sum(d.real**2 + d.imag**2) if jnp.iscomplexobj(d) else jnp.sum(d**2)


def _map(fn, xs, batch_size):
    """``vmap(fn)(xs)`` (``batch_size=None``) or ``lax.map`` in chunks of ``batch_size`` (same values)."""
    return jax.vmap(fn)(xs) if batch_size is None else jax.lax.map(fn, xs, batch_size=batch_size)


def _per_task(error_of_image, model, batch: TaskBatch, batch_size):
    if batch_size is not None and not (isinstance(batch_size, int) and batch_size >= 1):
        raise ValueError(f"`batch_size` must be None or a positive integer; got {batch_size!r}.")

    def one_task(b):
        keys = None if b.key is None else jax.random.split(b.key, b.x.shape[0])
        return jnp.mean(_map(lambda xyk: error_of_image(model, b.operator, b.task, *xyk), (b.x, b.y, keys),
                             batch_size))

    if batch.x.ndim == 3:
        return one_task(batch)
    if batch.x.ndim != 4:
        raise ValueError(f"`batch.x` must be (B, H, W) or (N, B, H, W); got shape {batch.x.shape}.")
    return _map(one_task, batch, batch_size)


def _supervised_error(model, operator, task, x, y, key):
    return _squared_error(model(operator, y, task), x)


def _measurement_error(model, operator, task, x, y, key):
    return _squared_error(operator(model(operator, y, task)), y)


def supervised_loss(model, batch: TaskBatch, *, batch_size: int | None = None) -> jax.Array:
    """``(1/B) Σ_b ‖f(y_b) − x_b‖²`` per task: a scalar for one task, (N,) for stacked tasks.

    ``batch_size``: ``None`` evaluates every image (and task) at once with ``vmap``;
    an integer k evaluates k at a time with ``lax.map`` (the same value, less
    memory; on XLA:CPU k = 1 runs a 32-channel CNN on 256² images 3.3× faster,
    ``benchmarks/dcnet_throughput.py``).
    """
    return _per_task(_supervised_error, model, batch, batch_size)


def measurement_loss(model, batch: TaskBatch, *, batch_size: int | None = None) -> jax.Array:
    """``(1/B) Σ_b ‖A f(y_b) − y_b‖²`` per task (no ground truth used): scalar or (N,); ``batch_size`` as in
    :func:`supervised_loss`."""
    return _per_task(_measurement_error, model, batch, batch_size)


class Splitting(eqx.Module):
    """The splitting (SSDU) loss with its settings: ``Splitting(fraction=0.4)(model, batch)``; see
    :func:`splitting_loss`."""

    fraction: float = eqx.field(static=True, default=0.4)
    draws: int = eqx.field(static=True, default=1)
    selection: str = eqx.field(static=True, default="uniform")
    center_fraction: float = eqx.field(static=True, default=0.035)
    lines: bool | str = eqx.field(static=True, default="auto")
    norm: str = eqx.field(static=True, default="l2")

    def __check_init__(self):
        check_positive_int("draws", self.draws)
        if self.norm not in ("l2", "l1l2"):
            raise ValueError(f"`norm` must be l2 or l1l2; got {self.norm!r}.")
        split(jax.random.key(0), jnp.ones((8, 8), bool), self.fraction, selection=self.selection)  # validates

    def error(self, model, operator, task, x, y, key):
        """Mean over ``draws`` splits of one image's ``‖P_Λ (A f(A_Θ, P_Θ y)) − P_Λ y‖²``."""
        mask = getattr(operator, "mask", None)
        if mask is None:
            raise TypeError(f"the splitting loss needs an MRI operator with a `mask`; got {type(operator).__name__}.")

        def one(k):
            def draw(lines):
                return split(k, mask, self.fraction, selection=self.selection, center_fraction=self.center_fraction,
                             lines=lines)

            if self.lines == "auto":  # whole lines of a line mask (Θ stays in its family), points otherwise
                line = is_line_mask(mask)
                theta, lam = jax.tree.map(lambda a, b: jnp.where(line, a, b), draw(True), draw(False))
            else:
                theta, lam = draw(bool(self.lines))
            hidden = eqx.tree_at(lambda op: op.mask, operator, theta)
            prediction = operator(model(hidden, jnp.where(theta, y, 0), task))
            error = jnp.where(lam, prediction - y, 0)
            if self.norm == "l2":
                return _squared_error(error, 0)
            target = jnp.abs(jnp.where(lam, y, 0))  # SSDU's normalised ℓ1–ℓ2
            return (jnp.sqrt(_squared_error(error, 0)) / jnp.sqrt(jnp.sum(target**2))
                    + jnp.sum(jnp.abs(error)) / jnp.sum(target))

        return jnp.mean(jax.lax.map(one, jax.random.split(key, self.draws)))

    def __call__(self, model, batch: TaskBatch, *, batch_size: int | None = None) -> jax.Array:
        if batch.key is None:
            raise ValueError("the splitting loss draws its k-space splits from `batch.key`; got a TaskBatch "
                             "without a key (TaskBatch(..., key=jax.random.key(0)), or `sample_batch`).")
        return _per_task(self.error, model, batch, batch_size)


def splitting_loss(model, batch: TaskBatch, *, fraction: float = 0.4, draws: int = 1, selection: str = "uniform",
                   center_fraction: float = 0.035, lines: bool | str = "auto", norm: str = "l2",
                   batch_size: int | None = None) -> jax.Array:
    """The self-supervised splitting loss (Yaman et al.'s SSDU) per task: scalar for one task, (N,) stacked.

    For each image and each of ``draws`` splits (Θ, Λ) = :func:`metajax.masks.split` of its operator's mask
    (keys from ``batch.key``): the network reconstructs from Θ only, ``x̂ = f(A_Θ, P_Θ y)`` with ``A_Θ`` the
    operator on mask Θ, and is scored on the hidden set, ``‖P_Λ (A x̂) − P_Λ y‖²`` (a sum over Λ and over
    coils for :class:`~metajax.operators.MultiCoilMRI`). ``fraction`` (expected share of the non-central
    sampled points in Λ; SSDU's 0.4), ``selection`` (uniform | gaussian), ``center_fraction`` (the centre
    block always in Θ) and ``lines`` (split whole columns; ``"auto"``: for line masks, decided from the mask,
    traced or not) are :func:`~metajax.masks.split`'s. ``norm="l1l2"``
    replaces the squared error by SSDU's normalised ℓ1–ℓ2, ``‖e‖₂ / ‖P_Λ y‖₂ + ‖e‖₁ / ‖P_Λ y‖₁`` (scale-free;
    the ℓ1 part weighs the weak high frequencies more than the squared error does). No ground
    truth is read (``batch.x`` is ignored). ``batch_size`` as in :func:`supervised_loss`.
    """
    loss = Splitting(fraction, draws, selection, center_fraction, lines, norm)
    return loss(model, batch, batch_size=batch_size)


def group_losses(loss, model, batches) -> jax.Array:
    """Per-task losses of groups of stacked tasks (one :class:`TaskBatch` per operator type), concatenated.

    ``loss`` is :func:`supervised_loss` or :func:`measurement_loss`; ``batches`` a
    TaskBatch or a tuple of them. Returns the (N₁ + N₂ + …,) vector in group order.
    """
    batches = (batches,) if isinstance(batches, TaskBatch) else tuple(batches)
    return jnp.concatenate([jnp.atleast_1d(loss(model, b)) for b in batches])
