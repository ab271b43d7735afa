"""Task-invariant parameters θ and task-specific weights ω: the models solvers train, and how to split them.

A *meta model* is called ``model(operator, y, task) -> x̂`` for one image of
task number ``task`` (an integer, traced or not). Two wrappers make one from a
network:

- :class:`TaskWeighted` — ``net(operator, y, ω[task])``: one learned weight per
  task (Bian et al.: κ_i = sigmoid(ω_i) scales the LOA regulariser).
- :class:`Shared` — ``net(operator, y)`` for every task: no task weight. For the
  LOA this is κ = 1, so conventional (non-meta) training and the baselines train
  the identical network; PDNet (no task weight) is always used this way.
- :class:`RatioWeighted` — a trained :class:`TaskWeighted` model for *any*
  sampling ratio: ω is interpolated between the trained tasks' ratios from the
  operator's own mask (what pretrained models and evaluation on new tasks use).

:func:`split_task_weights` is the filter-based split a solver needs: the float
leaves of the model become ``(θ, ω)`` — ω the :class:`TaskWeighted` weights,
θ every other float leaf (CNN weights, per-phase steps, ε₀) — and everything
else (structure, static fields, integer arrays) goes to ``static``, so
``jax.grad`` can differentiate θ and ω separately. :func:`join_task_weights`
inverts it.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from metajax._validation import check_positive_int, is_concrete
from metajax.adjoint import Adjoint
from metajax.masks import is_line_mask


def _call(net, operator, y, weight, adjoint):
    kwargs = {} if adjoint is None else {"adjoint": adjoint}
    return net(operator, y, **kwargs) if weight is None else net(operator, y, weight, **kwargs)


class TaskWeighted(eqx.Module):
    """``x̂ = net(operator, y, ω[task])`` with one learned weight ω_i per task.

    Args:
        net: a network called ``net(operator, y, omega[, adjoint=...])`` (e.g. :class:`~metajax.models.LOA`).
        num_tasks: N, the number of tasks (the length of ω).
        omega: initial ω, a scalar for all tasks or an (N,) array (default 0: κ = 1/2).
        adjoint: passed to ``net`` as ``adjoint=`` when given.
    """

    net: eqx.Module
    omega: jax.Array
    adjoint: Adjoint | None = None

    def __init__(self, net, num_tasks: int, omega=0.0, adjoint: Adjoint | None = None, dtype=jnp.float32):
        num_tasks = check_positive_int("num_tasks", num_tasks)
        omega = jnp.asarray(omega, dtype)
        if omega.ndim not in (0, 1) or (omega.ndim == 1 and omega.shape != (num_tasks,)):
            raise ValueError(f"`omega` must be a scalar or have shape ({num_tasks},); got {omega.shape}.")
        self.net = net
        self.omega = jnp.broadcast_to(omega, (num_tasks,))
        self.adjoint = adjoint

    def __call__(self, operator, y, task):
        n = self.omega.shape[0]
        if jnp.ndim(task) != 0 or not jnp.issubdtype(jnp.result_type(task), jnp.integer):
            raise TypeError(f"`task` must be an integer scalar (the task's index); got {task!r}.")
        if is_concrete(task):
            if not 0 <= int(task) < n:
                raise IndexError(f"`task` = {int(task)} is out of range for a model with {n} task weights.")
        else:  # JAX would clamp an out-of-range index to the last task
            task = eqx.error_if(task, (task < 0) | (task >= n), f"`task` is out of range for {n} task weights.")
        return _call(self.net, operator, y, self.omega[task], self.adjoint)


class Shared(eqx.Module):
    """``x̂ = net(operator, y)`` for every task (no task weight; the LOA then has κ = 1).

    Args:
        net: the network.
        adjoint: passed to ``net`` as ``adjoint=`` when given.
    """

    net: eqx.Module
    adjoint: Adjoint | None = None

    def __call__(self, operator, y, task=None):
        return _call(self.net, operator, y, None, self.adjoint)


class RatioWeighted(eqx.Module):
    """``x̂ = net(operator, y, ω(mask))``: the task weight chosen from the operator's sampling mask.

    ω(r) interpolates the trained pairs (r_i, ω_i) linearly in the mask's
    sampling ratio r (``jnp.interp``) and is constant beyond the smallest and
    largest trained ratio, so a mask between two trained ratios gets a weight
    between theirs and a trained ratio gets its own weight exactly. With
    ``lines`` (one flag per task: was its mask a 1-D line mask?), the mask's
    family decides first: a line mask (:func:`metajax.masks.is_line_mask`)
    interpolates among the line tasks only, any other mask among the 2-D tasks
    only (tasks of one family at one ratio share the mean of their ω; a family
    with no task falls back to all tasks). Works under ``jit`` and ``vmap``
    (computed from the mask, traced or not). The ``task`` argument of the
    meta-model signature is ignored.

    Args:
        net: the network of a :class:`TaskWeighted` model.
        ratios: the trained tasks' sampling ratios (N,), any order; distinct
            within each family.
        omega: their trained weights (N,).
        adjoint: passed to ``net`` as ``adjoint=`` when given.
        lines: optional (N,) bools, the family of each task (line or 2-D mask).
    """

    net: eqx.Module
    omega: jax.Array
    ratios: tuple[float, ...] = eqx.field(static=True)
    adjoint: Adjoint | None = None
    lines: tuple[bool, ...] | None = eqx.field(static=True, default=None)

    def __init__(self, net, ratios, omega, adjoint: Adjoint | None = None, lines=None):
        ratios = tuple(float(r) for r in ratios)
        omega = jnp.asarray(omega)
        if omega.shape != (len(ratios),) or len(ratios) == 0:
            raise ValueError(f"`omega` must have one weight per ratio, shape ({len(ratios)},); got {omega.shape}.")
        if not all(0 < r <= 1 for r in ratios):
            raise ValueError(f"`ratios` must be sampling ratios in (0, 1]; got {list(ratios)}.")
        if lines is not None:
            lines = tuple(bool(v) for v in lines)
            if len(lines) != len(ratios):
                raise ValueError(f"`lines` must have one flag per ratio ({len(ratios)}); got {len(lines)}.")
        elif len(set(ratios)) != len(ratios):
            raise ValueError(f"`ratios` must be distinct (or told apart by `lines`); got {list(ratios)}.")
        order = sorted(range(len(ratios)), key=ratios.__getitem__)
        self.net = net
        self.ratios = tuple(ratios[i] for i in order)
        self.omega = omega[jnp.asarray(order)]
        self.adjoint = adjoint
        self.lines = None if lines is None else tuple(lines[i] for i in order)

    @classmethod
    def from_task_weighted(cls, model: TaskWeighted, ratios, lines=None) -> RatioWeighted:
        """The :class:`TaskWeighted` ``model`` whose task i was trained at sampling ratio ``ratios[i]``."""
        return cls(model.net, ratios, model.omega, model.adjoint, lines)

    def _interp(self, ratio, members) -> jax.Array:
        """ω interpolated at ``ratio`` among the tasks ``members`` (tasks at one ratio averaged)."""
        grid = sorted({self.ratios[i] for i in members})
        weights = np.array([[float(self.ratios[i] == g and i in members) for i in range(len(self.ratios))]
                            for g in grid])
        weights /= weights.sum(axis=1, keepdims=True)
        values = jnp.asarray(weights, self.omega.dtype) @ self.omega
        return jnp.interp(ratio, jnp.asarray(grid, self.omega.dtype), values)

    def omega_for(self, operator) -> jax.Array:
        """ω for the operator's mask: its sampling ratio r (the fraction of ones), and its family with ``lines``."""
        mask = getattr(operator, "mask", None)
        if mask is None:
            raise TypeError(f"RatioWeighted needs an operator with a sampling `mask`; got {type(operator).__name__}.")
        ratio = jnp.mean(jnp.asarray(mask, self.omega.dtype))
        everyone = set(range(len(self.ratios)))
        if self.lines is None:
            return self._interp(ratio, everyone)
        line = {i for i in everyone if self.lines[i]}
        other = everyone - line
        return jnp.where(is_line_mask(mask), self._interp(ratio, line or everyone),
                         self._interp(ratio, other or everyone))

    def __call__(self, operator, y, task=None):
        return _call(self.net, operator, y, self.omega_for(operator), self.adjoint)


def task_weight_filter(model):
    """A PyTree of bools like ``model``: True exactly at the ω leaves of every :class:`TaskWeighted` in it."""

    def mark(node):
        if isinstance(node, TaskWeighted):
            return eqx.tree_at(lambda m: m.omega, jax.tree.map(lambda _: False, node), True)
        return jax.tree.map(lambda _: False, node)

    return jax.tree.map(mark, model, is_leaf=lambda n: isinstance(n, TaskWeighted))


def split_task_weights(model):
    """``((θ, ω), static)``: the model's float leaves split into shared θ and task weights ω.

    θ, ω and ``static`` have the model's structure with ``None`` holes
    (``eqx.partition``); ``ω`` has no leaves when the model has no
    :class:`TaskWeighted`. ``join_task_weights((θ, ω), static)`` is the model.
    """
    params, static = eqx.partition(model, eqx.is_inexact_array)
    is_omega = task_weight_filter(params)
    omega, theta = eqx.partition(params, is_omega)
    return (theta, omega), static


def join_task_weights(params, static):
    """Inverse of :func:`split_task_weights`."""
    theta, omega = params
    return eqx.combine(theta, omega, static)
