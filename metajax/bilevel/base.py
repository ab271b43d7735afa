"""One entry point for meta-gradients, methods as strategies, and a stateful step for training loops.

- :func:`meta_gradient` ``(method, inner_loss, outer_loss, theta, args, *, key=None) -> (grad, info)``
  is the optimistix-style functional entry point (DESIGN §3): ``inner_loss(φ, args)``
  and ``outer_loss(φ, args)`` return scalars for one task's ``args``; ``grad``
  has ``theta``'s structure; ``info`` holds diagnostics. It works under ``jit``
  and under ``vmap`` over stacked ``args``.
- :func:`task_mean_gradient` averages per-task meta-gradients: ``vmap`` over the
  leading task axis of ``args``, or over each group of a :class:`TaskGroups`
  (tasks whose operators differ in type), weighting groups by their size.
- :func:`init` / :func:`meta_step` wrap a method and an optax optimizer into a
  training-loop step whose state (optimizer states, schedules, counters) is one
  PyTree, so it can be saved with ``eqx.tree_serialise_leaves`` and restored.

A non-finite inner or outer loss is a bad input, not a result: it raises
(``eqx.error_if``, also inside ``jit``) with a message naming the loss.
"""

from __future__ import annotations

import abc
from typing import ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
import optax

from metajax._validation import check_finite, check_key, is_concrete
from metajax.bilevel.inner import check_optimizer


class BilevelMethod(eqx.Module):
    """A bilevel strategy. Subclasses implement :meth:`gradient`; stateful ones override :meth:`init`/:meth:`step`.

    ``per_task`` says how :func:`meta_step` uses ``args``: True — per-task
    meta-gradients averaged over a leading task axis (:func:`task_mean_gradient`);
    False — ``args`` is the whole (cross-task) problem, passed as it is.
    """

    per_task: ClassVar[bool] = True

    @abc.abstractmethod
    def gradient(self, inner_loss, outer_loss, theta, args, key):
        """Return ``(grad, info)``; ``info`` holds at least ``inner_loss`` and ``outer_loss``."""

    def init(self, params, optimizer) -> MetaState:
        """The training-loop state for ``params``."""
        check_optimizer("optimizer", optimizer)
        return MetaState(optimizer.init(params), jnp.zeros((), jnp.int32))

    def step(self, optimizer, inner_loss, outer_loss, params, state, args, key):
        """One meta-update: ``(params, state, info)``."""
        gradient = task_mean_gradient if self.per_task else meta_gradient
        grad, info = gradient(self, inner_loss, outer_loss, params, args, key=key)
        updates, opt_state = optimizer.update(grad, state.opt_state, params)
        return optax.apply_updates(params, updates), MetaState(opt_state, state.step + 1), info


class MetaState(eqx.Module):
    """Training-loop state of the gradient-based methods: the outer optimizer's state and the step count."""

    opt_state: optax.OptState
    step: jax.Array


class TaskGroups(eqx.Module):
    """Groups of stacked tasks whose operators differ in type (each group: ``args`` with leading axis N_g)."""

    groups: tuple

    def __init__(self, *groups):
        if not groups:
            raise ValueError("`TaskGroups` needs at least one group.")
        self.groups = tuple(groups)
        _check_distinct_task_ids(self.groups)


def _check_distinct_task_ids(groups) -> None:
    """Tasks of different groups must have different indices (each selects its own ω): with the default
    ``task_ids`` every group would count from 0 and share the first group's task weights."""
    from metajax.bilevel.losses import TaskBatch

    seen = {}
    for g, group in enumerate(groups):
        batches = [b for b in jax.tree.leaves(group, is_leaf=lambda x: isinstance(x, TaskBatch))
                   if isinstance(b, TaskBatch)]
        ids = set()
        for b in batches:
            if not is_concrete(b.task):
                return
            ids.update(int(i) for i in jnp.atleast_1d(b.task))
        for other, other_ids in seen.items():
            if ids & other_ids:
                raise ValueError(
                    f"`TaskGroups`: groups {other} and {g} both use task indices {sorted(ids & other_ids)}, so they "
                    "would share those task weights ω. Give every group its own indices, e.g. "
                    "`sample_batch(..., task_ids=jnp.arange(n_g) + offset_g, num_tasks=total)`.")
        seen[g] = ids


def _check_params(name: str, tree) -> None:
    leaves = jax.tree.leaves(tree)
    if not leaves:
        raise ValueError(f"`{name}` has no array leaves; expected the parameters to differentiate.")
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        if not hasattr(leaf, "dtype") and not isinstance(leaf, (int, float)) or isinstance(leaf, bool):
            raise TypeError(f"`{name}` leaf {jax.tree_util.keystr(path) or '(root)'} is a {type(leaf).__name__} "
                            f"({leaf!r}); parameters must be real floating-point arrays (keep other values out of "
                            "the differentiated PyTree, e.g. with `eqx.partition(model, eqx.is_inexact_array)`).")
        if is_concrete(leaf) and hasattr(leaf, "dtype") and jnp.issubdtype(leaf.dtype, jnp.floating):
            check_finite(f"{name} leaf {jax.tree_util.keystr(path) or '(root)'}", leaf)
        if not jnp.issubdtype(jnp.result_type(leaf), jnp.floating):
            raise TypeError(
                f"`{name}` leaf {jax.tree_util.keystr(path) or '(root)'} has dtype {jnp.result_type(leaf)}; "
                "parameters must be real floating point (split complex weights into real parts and "
                "filter non-float leaves out, e.g. with `eqx.partition(model, eqx.is_inexact_array)`)."
            )


def _check_method(method) -> None:
    if isinstance(method, type) and issubclass(method, BilevelMethod):
        raise TypeError(f"`method` must be a method instance, e.g. `{method.__name__}(...)` with its settings; got the "
                        f"class {method.__name__} itself.")
    if not isinstance(method, BilevelMethod):
        raise TypeError(
            f"`method` must be a metajax.bilevel method instance (Implicit, MAML, Penalty, TaskWeights, e.g. "
            f"`MAML(optax.sgd(1e-2), 5)`); got {type(method).__name__} {method!r:.60}."
        )


def _checked_loss(name: str, loss):
    """``loss`` with its contract enforced where it is traced: a real floating-point scalar, and a failure to
    index the parameters (a ``theta`` whose structure is not what the loss expects) named as such."""

    def checked(phi, args):
        try:
            value = loss(phi, args)
        except (KeyError, AttributeError, IndexError) as error:
            raise type(error)(
                f"`{name}` failed on parameters shaped like `theta` ({type(error).__name__}: {error}); does "
                f"`theta`'s PyTree structure ({jax.tree.structure(phi)}) match what `{name}` indexes?") from error
        shape, dtype = jnp.shape(value), jnp.result_type(value)
        if shape != () or not jnp.issubdtype(dtype, jnp.floating):
            raise TypeError(f"`{name}` must return a real floating-point scalar; got shape {shape} and dtype {dtype} "
                            "(reduce per-task or per-image vectors with a sum or mean; take `jnp.real` or `abs` of "
                            "complex values).")
        return value

    return checked


def _check_finite_losses(grad, info):
    for name in ("inner_loss", "outer_loss"):
        grad = eqx.error_if(grad, ~jnp.all(jnp.isfinite(info[name])),
                            f"`{name}` returned a non-finite value (NaN or Inf); check the loss and its data.")
    return grad


def meta_gradient(method: BilevelMethod, inner_loss, outer_loss, theta, args, *, key=None):
    """The meta-gradient of ``outer_loss`` at the inner solution, by ``method``.

    Args:
        method: :class:`~metajax.bilevel.Implicit`, :class:`~metajax.bilevel.MAML`,
            :class:`~metajax.bilevel.Penalty` or :class:`~metajax.bilevel.TaskWeights`.
        inner_loss: ``loss(phi, args) -> scalar`` (a real float) with ``phi`` shaped like
            ``theta`` (for :class:`~metajax.bilevel.TaskWeights`, per train/val task;
            see there).
        outer_loss: the same kind of function, the loss the meta-gradient is of.
        theta: the meta-parameters, a PyTree of real float arrays.
        args: the task's data, any PyTree (measurements, images, operator).
        key: an optional PRNG key, validated and handed to the method (the built-in
            methods are deterministic; per-step randomness such as minibatches
            belongs in ``args``).

    Returns:
        ``(grad, info)``: ``grad`` like ``theta``; ``info`` a dict of arrays
        (losses, solver residual and iterations, status flags).
    """
    _check_method(method)
    for name, fn in (("inner_loss", inner_loss), ("outer_loss", outer_loss)):
        if not callable(fn):
            raise TypeError(f"`{name}` must be a function `loss(phi, args) -> scalar`; got {type(fn).__name__}.")
    if key is not None:
        check_key("key", key)
    _check_params("theta", theta)
    grad, info = method.gradient(_checked_loss("inner_loss", inner_loss), _checked_loss("outer_loss", outer_loss),
                                 theta, args, key)
    return _check_finite_losses(grad, info), info


def num_tasks(name: str, args) -> int:
    sizes = {jnp.shape(leaf)[0] if jnp.ndim(leaf) else None for leaf in jax.tree.leaves(args)}
    if len(sizes) != 1 or None in sizes:
        raise ValueError(
            f"`{name}` must be stacked tasks: every leaf with the same leading task axis; got leading sizes "
            f"{sorted(sizes, key=str)}."
        )
    return sizes.pop()


def _check_stacked(name: str, args) -> None:
    """Catch the two ways of passing tasks that ``vmap`` would silently misread: one task's unstacked
    :class:`~metajax.bilevel.TaskBatch` (its images would become one-image tasks) and a Python list of tasks."""
    from metajax.bilevel.losses import TaskBatch

    if isinstance(args, list) and args and all(isinstance(a, (dict, tuple, eqx.Module)) for a in args) and len(
            {jax.tree.structure(a) for a in args}) == 1:
        raise TypeError(f"`{name}` is a Python list of {len(args)} tasks; stack them into one PyTree with a leading "
                        "task axis, e.g. `jax.tree.map(lambda *a: jnp.stack(a), *tasks)` (or "
                        "`metajax.data.stack_tasks` and `sample_batch`).")
    for batch in jax.tree.leaves(args, is_leaf=lambda x: isinstance(x, TaskBatch)):
        if isinstance(batch, TaskBatch) and jnp.ndim(batch.task) == 0:
            raise ValueError(f"`{name}` holds one task's unstacked TaskBatch (x {tuple(jnp.shape(batch.x))}, a scalar "
                             "`task`): over its leading axis each image would be taken for a task of its own. Use "
                             "`meta_gradient` for one task, or stack tasks (`sample_batch` of `stack_tasks`).")


def task_mean_gradient(method: BilevelMethod, inner_loss, outer_loss, theta, args, *, key=None):
    """Mean over tasks of the per-task meta-gradients, each task's computed with ``vmap``.

    ``args`` is one group of stacked tasks (leading axis N) or a :class:`TaskGroups`.
    Returns ``(grad, info)``; ``info`` leaves have a leading task axis (a tuple of
    such dicts, one per group, for :class:`TaskGroups`).
    """
    _check_method(method)
    groups = args.groups if isinstance(args, TaskGroups) else (args,)
    names = ["args"] if len(groups) == 1 else [f"args.groups[{i}]" for i in range(len(groups))]
    for name, group in zip(names, groups):
        _check_stacked(name, group)
    sizes = [num_tasks(name, group) for name, group in zip(names, groups)]
    keys = [None] * len(groups) if key is None else jnp.split(jax.random.split(key, sum(sizes)),
                                                                 jnp.cumsum(jnp.array(sizes))[:-1].tolist())
    total, infos = None, []
    for group, size, group_keys in zip(groups, sizes, keys):
        run = lambda a, k: meta_gradient(method, inner_loss, outer_loss, theta, a, key=k)  # noqa: E731
        grads, info = jax.vmap(run, in_axes=(0, None if group_keys is None else 0))(group, group_keys)
        summed = jax.tree.map(lambda g: jnp.sum(g, axis=0), grads)
        total = summed if total is None else jax.tree.map(jnp.add, total, summed)
        infos.append(info)
    grad = jax.tree.map(lambda g: g / sum(sizes), total)
    return grad, (tuple(infos) if isinstance(args, TaskGroups) else infos[0])


def init(method: BilevelMethod, params, optimizer=None):
    """The state of :func:`meta_step` for ``params``.

    ``optimizer`` is the outer (meta) optax optimizer (default ``optax.adam(1e-3)``).
    """
    _check_method(method)
    return method.init(params, optax.adam(1e-3) if optimizer is None else optimizer)


def meta_step(method: BilevelMethod, inner_loss, outer_loss, params, state, args, *, optimizer=None, key=None):
    """One meta-training step: ``(params, state, info)``.

    Per-task methods (:class:`~metajax.bilevel.Implicit`, :class:`~metajax.bilevel.MAML`)
    average the meta-gradients of the tasks stacked in ``args`` (or its
    :class:`TaskGroups`) and take one ``optimizer`` step; :class:`~metajax.bilevel.Penalty`
    advances its Algorithm 2 by one gradient evaluation; :class:`~metajax.bilevel.TaskWeights`
    takes one step on its task-correlation matrix. ``optimizer`` must be the one
    given to :func:`init`. Jit it with the losses and optimizer closed over.
    """
    _check_method(method)
    optimizer = optax.adam(1e-3) if optimizer is None else optimizer
    check_optimizer("optimizer", optimizer)
    expected = jax.tree.structure(jax.eval_shape(lambda p: method.init(p, optimizer), params))
    if jax.tree.structure(state) != expected:
        raise ValueError("`state` does not belong to this method, optimizer and `params`: its structure differs from "
                         f"`init(method, params, optimizer)`'s ({jax.tree.structure(state)} vs {expected}). Create it "
                         "with `init` and the same optimizer that `meta_step` is given.")
    return method.step(optimizer, inner_loss, outer_loss, params, state, args, key)
