"""Hydra entry points: ``metajax-train``, ``metajax-adapt``, ``metajax-evaluate``, ``metajax-baselines``.

Each takes Hydra overrides (``preset=ci solver=maml trainer.steps=50``), writes
into the Hydra run directory (``hydra.run.dir=DIR``) and prints a table:

- train: meta-trains (any solver; ``solver=conventional`` for plain training),
  then evaluates on the test split (``eval.baselines=true`` adds zero-filled,
  TV with λ tuned on validation, and conventional training given the same
  wall-clock budget); writes ``metrics.json``, ``results.md``, ``results.csv``,
  ``reconstructions.png`` besides what the training loop writes.
- evaluate: a trained ``model_dir`` on its tasks' test split.
- baselines: zero-filled, TV and conventional training for the configured tasks.
- adapt: a trained ``adapt.model_dir`` on the configured (new) tasks: fit only
  ω with θ frozen (``adapt.mode=omega``) or fine-tune θ (``adapt.mode=finetune``,
  ``adapt.loss=supervised|measurement``) on ``adapt.images`` training images.

In a ``-m`` sweep every run also rewrites ``sweep_results.md`` in the sweep
directory: one table with a row per (run, method, task).
"""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path

import equinox as eqx
import hydra
import jax
import jax.numpy as jnp
import optax
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import OmegaConf

from metajax import bilevel
from metajax.engine import evaluation
from metajax.engine.config import SOLVERS, register
from metajax.engine.experiment import ConfigError, Experiment
from metajax.engine.runner import TrainingError, load_trained, machine_info, train

register()
logging.getLogger("jax._src.xla_bridge").setLevel(logging.WARNING)  # not Hydra's INFO: "Unable to initialize TPU"


def _out_dir() -> Path:
    return Path(HydraConfig.get().runtime.output_dir)


def _base() -> Path:
    return Path(hydra.utils.get_original_cwd())


def _report(out_dir: Path, rows, images, ratios, cfg, title: str, extra: dict | None = None) -> None:
    table = evaluation.markdown(rows, title)
    (out_dir / "results.md").write_text(table)
    (out_dir / "results.csv").write_text(evaluation.to_csv(rows))
    overrides = HydraConfig.get().overrides.task if HydraConfig.initialized() else []
    (out_dir / "metrics.json").write_text(json.dumps(
        {"rows": rows, "overrides": list(overrides), "machine": machine_info(), **(extra or {})}, indent=2))
    if cfg.eval.figure:
        evaluation.figure(out_dir / "reconstructions.png", images, ratios)
    print(table)
    _sweep_table(out_dir)


def _sweep_table(out_dir: Path) -> None:
    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return
    sweep_dir = out_dir.parent
    lines = ["| run | overrides | method | ratio | PSNR (dB) | SSIM | NMSE |", "|---|---|---|---|---|---|---|"]
    for path in sorted(sweep_dir.glob("*/metrics.json"), key=lambda p: p.parent.name):
        result = json.loads(path.read_text())
        for r in result["rows"]:
            lines.append(f"| {path.parent.name} | {' '.join(result['overrides'])} | {r['method']} | {r['ratio']:.2f} "
                         f"| {r['psnr']:.2f} ± {r['psnr_std']:.2f} | {r['ssim']:.4f} | {r['nmse']:.5f} |")
    (sweep_dir / "sweep_results.md").write_text("\n".join(lines) + "\n")


def conventional_config(cfg):
    """The conventional baseline of a run: the same network trained on the plain supervised loss (κ = 1) for the
    same number of steps on the same number of images per step — a meta-solver's step sees two batches
    (support and query), so the baseline's batch is twice ``trainer.batch`` — the same lr, seed and validation.
    Reproducible: it depends on the config only (not on timings)."""
    batch = cfg.trainer.batch * (1 if cfg.solver.name == "conventional" else 2)
    return OmegaConf.merge(cfg, {"solver": OmegaConf.structured(SOLVERS["conventional"]),
                                 "trainer": {"batch": batch, "checkpoint_every": cfg.trainer.steps}})


def _baseline_methods(cfg, exp: Experiment, out_dir: Path, meta_seconds: float | None):
    """Zero-filled, TV (λ tuned per task on validation) and conventional training of the same network."""
    print(f"tuning TV on the validation split ({len(cfg.eval.tv_weights)} weights × {exp.num_tasks} tasks) ...",
          flush=True)
    weights = evaluation.tune_tv(exp.tasks, cfg.trainer.seed, list(cfg.eval.tv_weights), cfg.eval.tv_iterations)
    methods = {"zero-filled": evaluation.zero_filled_method,
               "TV": evaluation.tv_method(weights, cfg.eval.tv_iterations)}
    conv_cfg = conventional_config(cfg)
    print(f"conventional training: {conv_cfg.trainer.steps} steps, {conv_cfg.trainer.batch} images per task and "
          "step ...", flush=True)
    result = train(conv_cfg, out_dir / "conventional", exp.base)
    conv = result["experiment"]
    trained = conv.model(result["params"])
    methods["conventional"] = evaluation.network_method(lambda i: conv.task_model(trained, i))
    return methods, {"tv_weights": weights, "conventional_steps": conv_cfg.trainer.steps,
                     "conventional_batch": conv_cfg.trainer.batch,
                     "meta_steps": None if meta_seconds is None else cfg.trainer.steps,
                     "meta_train_seconds": meta_seconds, "conventional_train_seconds": result["train_seconds"]}


def _fail(error: Exception) -> None:
    print(f"error: {error}", file=sys.stderr)
    sys.exit(1)


@hydra.main(version_base=None, config_name="run")
def train_main(cfg) -> None:
    out_dir = _out_dir()
    try:
        result = train(cfg, out_dir, _base())
    except (ConfigError, FileNotFoundError, TrainingError) as error:
        _fail(error)
    exp, params = result["experiment"], result["params"]
    model = exp.model(params)
    methods = {f"{cfg.model.name} ({cfg.solver.name})": evaluation.network_method(
        lambda i: exp.task_model(model, i))}
    records = [r for r in result["records"] if "images_per_s" in r]
    extra = {"train_seconds": result["train_seconds"], "resumed_from": result["resumed_from"],
             "compile_seconds": result["compile_seconds"],
             "images_per_s_median": sorted(r["images_per_s"] for r in records)[len(records) // 2] if records else None}
    if cfg.eval.baselines:
        baselines, info = _baseline_methods(cfg, exp, out_dir, result["train_seconds"])
        methods = {**baselines, **methods}
        extra.update(info)
    rows, images = evaluation.evaluate(methods, exp.tasks, cfg.tasks.ratios, cfg.eval.split, cfg.trainer.seed)
    _report(out_dir, rows, images, cfg.tasks.ratios, cfg,
            f"{cfg.eval.split} split, {len(exp.splits[cfg.eval.split])} images per task; mean ± std", extra)


@hydra.main(version_base=None, config_name="run")
def evaluate_main(cfg) -> None:
    if cfg.model_dir is None:
        _fail(ConfigError("`model_dir` must name a trained run directory (model_dir=outputs/...)."))
    try:
        exp, model = load_trained(Path(cfg.model_dir), _base())
    except (ConfigError, FileNotFoundError) as error:
        _fail(error)
    methods = {f"{exp.cfg.model.name} ({exp.cfg.solver.name})": evaluation.network_method(
        lambda i: exp.task_model(model, i))}
    rows, images = evaluation.evaluate(methods, exp.tasks, exp.cfg.tasks.ratios, cfg.eval.split, exp.cfg.trainer.seed)
    _report(_out_dir(), rows, images, exp.cfg.tasks.ratios, cfg, f"{cfg.model_dir}, {cfg.eval.split} split")


@hydra.main(version_base=None, config_name="run")
def baselines_main(cfg) -> None:
    out_dir = _out_dir()
    try:
        exp = Experiment(cfg, _base())
        methods, extra = _baseline_methods(cfg, exp, out_dir, None)
    except (ConfigError, FileNotFoundError, TrainingError) as error:
        _fail(error)
    rows, images = evaluation.evaluate(methods, exp.tasks, cfg.tasks.ratios, cfg.eval.split, cfg.trainer.seed)
    _report(out_dir, rows, images, cfg.tasks.ratios, cfg, f"baselines, {cfg.eval.split} split", extra)


def adapt_model(cfg, trained_exp: Experiment, model, new_exp: Experiment):
    """The trained model adapted to ``new_exp``'s tasks (see the module docstring); one model per task."""
    a = cfg.adapt
    if a.mode not in ("omega", "finetune") or a.loss not in ("supervised", "measurement"):
        raise ConfigError(f"`adapt.mode` must be omega or finetune and `adapt.loss` supervised or measurement; got "
                          f"{a.mode!r}, {a.loss!r}.")
    if a.images > len(new_exp.splits["train"]):
        raise ConfigError(f"`adapt.images` = {a.images} exceeds the {len(new_exp.splits['train'])} training images.")
    net = trained_exp.task_model(model, 0).net
    omega0 = jnp.mean(model.omega) if isinstance(model, bilevel.TaskWeighted) else None
    if a.mode == "omega" and omega0 is None:
        raise ConfigError("`adapt.mode=omega` needs a model with task weights ω (solver penalty, implicit, maml).")
    loss_fn = bilevel.supervised_loss if a.loss == "supervised" else bilevel.measurement_loss
    adapted = []
    for i in range(new_exp.num_tasks):
        task = jax.tree.map(lambda t: t[i], new_exp.tasks)
        x = task.train[: a.images]
        batch = bilevel.TaskBatch(task.operator, x, task.measure(jax.random.key(cfg.trainer.seed + 7), x), 0)
        start = bilevel.TaskWeighted(net, 1, omega=omega0) if omega0 is not None else bilevel.Shared(net)
        theta, static = eqx.partition(start, eqx.is_inexact_array)
        if a.mode == "omega":  # θ frozen: only ω is a parameter
            theta, static = eqx.partition(start, lambda leaf: leaf is start.omega)

        def loss(p, b):
            return loss_fn(eqx.combine(p, static), b)

        phi, _ = jax.jit(lambda p, b: bilevel.adapt(loss, optax.adam(a.lr), p, a.steps, b))(theta, batch)
        adapted.append(eqx.combine(phi, static))
    return adapted


@hydra.main(version_base=None, config_name="adapt")
def adapt_main(cfg) -> None:
    out_dir = _out_dir()
    try:
        trained_exp, model = load_trained(Path(cfg.adapt.model_dir), _base())
        new_exp = Experiment(OmegaConf.merge(cfg, {"model": trained_exp.cfg.model}), _base())
        adapted = adapt_model(cfg, trained_exp, model, new_exp)
    except (ConfigError, FileNotFoundError) as error:
        _fail(error)
    before = trained_exp.task_model(model, 0)
    if isinstance(before, bilevel.TaskWeighted):  # before adaptation: the mean trained ω for every new task
        before = bilevel.TaskWeighted(before.net, 1, omega=jnp.mean(before.omega))
    first = lambda i: 0  # noqa: E731 (each adapted model has one task)
    methods = {"before adaptation": evaluation.network_method(lambda i: before, first),
               f"adapted ({cfg.adapt.mode}, {cfg.adapt.loss})": evaluation.network_method(lambda i: adapted[i], first)}
    rows, images = evaluation.evaluate(methods, new_exp.tasks, cfg.tasks.ratios, cfg.eval.split, cfg.trainer.seed)
    _report(out_dir, rows, images, cfg.tasks.ratios, cfg,
            f"{cfg.adapt.model_dir} adapted on {cfg.adapt.images} images, {cfg.adapt.steps} steps")
