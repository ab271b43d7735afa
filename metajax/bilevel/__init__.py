"""Bilevel meta-learning: one entry point (:func:`meta_gradient`), methods as strategies.

- :class:`Implicit` — iMAML / Meta-Prior implicit gradients by conjugate gradients.
- :class:`MAML` — unrolled inner optimizer steps (autodiff or the MLM adjoint), FOMAML.
- :class:`Penalty` — Bian et al.'s gradient-norm penalty method (Algorithm 2).
- :class:`TaskWeights` — Arora & Batra's learned task correlations.

See docs/bilevel.md for the equations, costs and which to pick.
"""

from metajax.bilevel.base import (
    BilevelMethod,
    MetaState,
    TaskGroups,
    init,
    meta_gradient,
    meta_step,
    task_mean_gradient,
)
from metajax.bilevel.implicit import Implicit
from metajax.bilevel.inner import adapt
from metajax.linear_solve import conjugate_gradient, neumann_series
from metajax.bilevel.losses import (
    Splitting,
    TaskBatch,
    group_losses,
    measurement_loss,
    sample_batch,
    splitting_loss,
    supervised_loss,
)
from metajax.bilevel.maml import MAML
from metajax.bilevel.parameters import (
    RatioWeighted,
    Shared,
    TaskWeighted,
    join_task_weights,
    split_task_weights,
    task_weight_filter,
)
from metajax.bilevel.penalty import Penalty, PenaltyState
from metajax.bilevel.task_weights import TaskWeights, TaskWeightsParams

__all__ = [
    "BilevelMethod",
    "MetaState",
    "TaskGroups",
    "init",
    "meta_gradient",
    "meta_step",
    "task_mean_gradient",
    "Implicit",
    "MAML",
    "Penalty",
    "PenaltyState",
    "TaskWeights",
    "TaskWeightsParams",
    "adapt",
    "conjugate_gradient",
    "neumann_series",
    "TaskBatch",
    "sample_batch",
    "supervised_loss",
    "measurement_loss",
    "Splitting",
    "splitting_loss",
    "group_losses",
    "RatioWeighted",
    "Shared",
    "TaskWeighted",
    "split_task_weights",
    "join_task_weights",
    "task_weight_filter",
]
