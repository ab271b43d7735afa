"""Range and meaning of every engine config value, checked before any data is read or anything computed.

Hydra's structured configs already reject unknown keys and wrong types (``trainer.steps=abc``); this module
rejects well-typed values that cannot work (``trainer.steps=0``, ``tasks.ratios=[1.5]``, a test split that
overlaps the training split, ``eval.split=tests``) with a :class:`ConfigError` naming the key, the value
and what is expected.
"""

from __future__ import annotations

import sys

from metajax.masks import FAMILIES

SOLVERS = ("penalty", "implicit", "maml", "fomaml", "task_weights", "conventional", "joint")
CHOICES = {
    "data.source": ("chest", "template", "fastmri", "nifti", "folder"),
    "tasks.mask": (*FAMILIES, "file", "mixture"),
    "model.name": ("dcnet", "loa", "loa_paper", "pdnet"),
    "solver.name": SOLVERS,
    "solver.adjoint": ("autodiff", "mlm"),
    "solver.outer_split": ("train", "val"),
    "solver.inner_loss": ("supervised", "splitting", "measurement"),
    "solver.outer_loss": ("supervised", "splitting", "measurement"),
    "solver.inner_optimizer": ("sgd", "adam"),
    "trainer.lr_schedule": ("constant", "cosine"),
    "trainer.task_balance": ("mean", "log"),
    "eval.split": ("train", "val", "test"),
    "adapt.mode": ("self", "finetune", "omega"),
    "adapt.loss": ("auto", "splitting", "supervised", "measurement"),
    "adapt.params": ("all", "cnn", "omega"),
    "adapt.selection": ("uniform", "gaussian"),
    "adapt.norm": ("l2", "l1l2"),
    "adapt.weighting": ("unmeasured", "plain"),
}
POSITIVE_INTS = ("data.num_slices", "model.phases", "model.features", "model.layers", "solver.inner_steps",
                 "solver.theta_steps", "solver.cg_iters", "trainer.steps", "trainer.batch", "trainer.checkpoint_every",
                 "trainer.keep_checkpoints", "trainer.log_every", "trainer.num_processes", "trainer.heartbeat_timeout",
                 "trainer.init_timeout", "eval.tv_iterations", "adapt.images", "adapt.steps", "adapt.batch",
                 "adapt.eval_every", "adapt.eval_slices", "adapt.draws", "eval.shift_steps")
NON_NEGATIVE_INTS = ("data.size", "tasks.crop", "tasks.bank", "trainer.map_batch", "trainer.val_every", "trainer.seed",
                     "trainer.devices", "trainer.process_id", "eval.tv_tune_images", "eval.figure_image")
POSITIVE_REALS = ("model.mu", "solver.inner_lr", "solver.lam", "solver.delta", "solver.delta_tol", "trainer.lr",
                  "trainer.omega_lr", "adapt.lr", "adapt.holdout", "adapt.fraction")
NON_NEGATIVE_REALS = ("tasks.noise_std", "adapt.tolerance")


class ConfigError(ValueError):
    """A configuration value that is well typed but not usable (names the key)."""


def _get(cfg, dotted: str):
    node = cfg
    for part in dotted.split("."):
        if node is None or part not in node:
            return _MISSING
        node = node[part]
    return node


_MISSING = object()


def _fail(key: str, expected: str, value) -> None:
    raise ConfigError(f"`{key}` must be {expected}; got {value!r}.")


def check_config(cfg) -> None:
    """Raise :class:`ConfigError` on the first value of ``cfg`` that cannot work (see the module docstring)."""
    for key, options in CHOICES.items():
        value = _get(cfg, key)
        if value is not _MISSING and value not in options:
            _fail(key, "one of " + ", ".join(options), value)
    for keys, test, expected in ((POSITIVE_INTS, lambda v: v >= 1, "a positive integer"),
                                 (NON_NEGATIVE_INTS, lambda v: v >= 0, "a non-negative integer"),
                                 (POSITIVE_REALS, lambda v: v > 0 and v != float("inf"), "a positive finite number"),
                                 (NON_NEGATIVE_REALS, lambda v: 0 <= v < float("inf"), "a non-negative finite number")):
        for key in keys:
            value = _get(cfg, key)
            if value is not _MISSING and value is not None and not test(value):  # None: the default (adapt.lr)
                _fail(key, expected, value)
    solver = cfg.solver
    if not 0 < solver.delta_decay < 1:
        _fail("solver.delta_decay", "in (0, 1)", solver.delta_decay)
    if not solver.lam_growth >= 1:
        _fail("solver.lam_growth", "≥ 1", solver.lam_growth)
    ratios = list(cfg.tasks.ratios)
    if not ratios or not all(0 < r <= 1 for r in ratios):
        _fail("tasks.ratios", "a non-empty list of sampling ratios in (0, 1]", ratios)
    families = list(cfg.tasks.get("families", None) or [])
    if cfg.tasks.mask == "mixture":
        if len(families) != len(ratios) or not all(f in FAMILIES for f in families):
            _fail("tasks.families", f"one family of {', '.join(FAMILIES)} per entry of tasks.ratios ({len(ratios)})",
                  families)
        if len(set(zip(families, ratios))) != len(ratios):
            _fail("tasks.families", "distinct (family, ratio) pairs (one task each)", list(zip(families, ratios)))
    elif len(set(ratios)) != len(ratios):
        _fail("tasks.ratios", "distinct ratios (one task each)", ratios)
    shift = cfg.eval.get("shift", None)
    if shift is not None and shift not in FAMILIES:
        _fail("eval.shift", "null or a mask family (" + ", ".join(FAMILIES) + ")", shift)
    if shift is not None and not 0 < cfg.eval.shift_ratio <= 1:
        _fail("eval.shift_ratio", "a sampling ratio in (0, 1]", cfg.eval.shift_ratio)
    weights = list(cfg.eval.tv_weights)
    if not weights or not all(w > 0 for w in weights):
        _fail("eval.tv_weights", "a non-empty list of positive TV weights", weights)
    if cfg.data.source == "template" and cfg.data.size < 8:
        _fail("data.size", "at least 8 for the template (the image size it is resized to)", cfg.data.size)
    if solver.per_task and solver.name != "conventional":
        _fail("solver.per_task", "false unless solver=conventional (only conventional training has one network per "
              "task)", solver.per_task)
    if cfg.model.name == "dcnet" and cfg.model.layers < 2:
        _fail("model.layers", "at least 2 for dcnet (an input and an output convolution)", cfg.model.layers)
    _check_splits(cfg.data)


def check_split_sizes(cfg, splits) -> None:
    """The values that need the loaded splits' sizes: evaluation's figure image and TV-tuning images."""
    count = len(splits[cfg.eval.split])
    if cfg.eval.figure_image >= count:
        _fail("eval.figure_image", f"an image index below {count} (the images of eval.split={cfg.eval.split})",
              cfg.eval.figure_image)
    if cfg.eval.tv_tune_images > len(splits["val"]):
        _fail("eval.tv_tune_images", f"0 (all) or at most {len(splits['val'])} (the validation images)",
              cfg.eval.tv_tune_images)


def _check_splits(cfg_data) -> None:
    ranges = {}
    for name in ("train", "val", "test"):
        value = list(cfg_data[name])
        if len(value) != 2 or not 0 <= value[0] < value[1]:
            _fail(f"data.{name}", "a slice range [start, stop) with 0 ≤ start < stop", value)
        ranges[name] = value
    for a, b in (("train", "test"), ("val", "test"), ("train", "val")):
        (a0, a1), (b0, b1) = ranges[a], ranges[b]
        if max(a0, b0) < min(a1, b1):
            message = (f"`data.{a}` = {ranges[a]} and `data.{b}` = {ranges[b]} overlap (slices "
                       f"{max(a0, b0)}..{min(a1, b1) - 1} are in both)")
            if b == "test":
                raise ConfigError(message + "; the test split must be held out.")
            print(f"warning: {message}.", file=sys.stderr)
