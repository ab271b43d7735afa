"""Where the evaluation, adaptation and reconstruction entry points get a trained model: a run directory or
``pretrained:NAME``.

Both become a :class:`ModelSource`: the model as a meta model ``model(operator, y, task)`` whose task weight ω
(if it has one) is chosen from the operator's sampling ratio (:class:`~metajax.bilevel.RatioWeighted`, so it
reconstructs tasks it was not trained on), the config it was trained with (its data and tasks are the default
evaluation data), and a label for tables.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import equinox as eqx
import numpy as np
from omegaconf import OmegaConf

from metajax._validation import require_dir
from metajax import bilevel, masks, pretrained
from metajax.engine import checkpoint
from metajax.engine.experiment import Experiment

PRETRAINED = "pretrained:"


@dataclass
class ModelSource:
    model: eqx.Module | None  # a meta model model(operator, y, task); None for per-task networks
    config: object  # the training config (OmegaConf)
    ratios: tuple[float, ...]  # the trained tasks' nominal ratios
    label: str
    per_task: Callable[[int], eqx.Module] | None = None  # solver.per_task runs: the network of task i
    coils: str = "single"  # the k-space it was trained on: single | multi (the card's "coils")


def sampling_ratios(tasks) -> list[float]:
    """The measured sampled fraction of each stacked task's mask (what :class:`RatioWeighted` interpolates on)."""
    return [float(r) for r in np.asarray(tasks.operator.mask, np.float64).mean(axis=(-2, -1))]


def _trained(cfg):
    """A trained model's config without its ``trainer.init``: the weights come from the model file, and the run
    it was started from need not exist where the model is used."""
    if cfg.get("trainer") is not None and cfg.trainer.get("init") is not None:
        cfg.trainer.init = None
    return cfg


def line_tasks(tasks) -> list[bool] | None:
    """Whether each stacked task's mask is a 1-D line mask, or None when all tasks are of one kind (then the
    task weight depends on the ratio alone, as before)."""
    lines = [bool(masks.is_line_mask(m)) for m in tasks.operator.mask]
    return lines if len(set(lines)) > 1 else None


def load_model_source(spec: str, base: Path | None = None, key: str = "model_dir") -> ModelSource:
    """``spec`` = a run directory (``config.yaml`` + ``model.eqx``) or ``pretrained:NAME``; errors name ``key``
    (the config key ``spec`` came from)."""
    spec = str(spec)
    if spec.startswith(PRETRAINED):
        name = spec[len(PRETRAINED):]
        model, card = pretrained.load(name)
        return ModelSource(model, _trained(OmegaConf.create(card["config"])), tuple(card["config"]["tasks"]["ratios"]),
                           spec, coils=card.get("coils", "single"))
    run_dir = Path(spec)
    if base is not None and not run_dir.is_absolute():
        run_dir = base / run_dir
    require_dir(key, run_dir, "trained run directory (or pretrained:NAME)")
    for name in ("config.yaml", "model.eqx"):
        if not (run_dir / name).is_file():
            raise FileNotFoundError(f"`{key}`: {str(run_dir / name)!r} does not exist; give a trained run "
                                    f"directory or pretrained:NAME (available: {pretrained.available()}).")
    cfg = _trained(OmegaConf.load(run_dir / "config.yaml"))
    exp = Experiment(cfg, base)
    model = checkpoint.load(run_dir / "model.eqx", exp.model(exp.params))
    label = f"{cfg.model.name} ({cfg.solver.name})"
    ratios = tuple(cfg.tasks.ratios)
    if exp.per_task:
        return ModelSource(None, cfg, ratios, label, per_task=lambda i: exp.task_model(model, i))
    if isinstance(model, bilevel.TaskWeighted):
        model = bilevel.RatioWeighted.from_task_weighted(model, sampling_ratios(exp.tasks), line_tasks(exp.tasks))
    return ModelSource(model, cfg, ratios, label)
