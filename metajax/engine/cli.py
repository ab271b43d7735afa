"""Hydra entry points: ``metajax-train``, ``metajax-adapt``, ``metajax-evaluate``, ``metajax-baselines``.

Each takes Hydra overrides (``preset=ci solver=maml trainer.steps=50``), writes
into the Hydra run directory (``hydra.run.dir=DIR``) and prints a table:

- train: meta-trains (any solver; ``solver=conventional`` for plain training),
  then evaluates on the test split (``eval.baselines=true`` adds zero-filled,
  TV with λ tuned on validation, and conventional training of the same network
  for the same number of steps on the same images per step, see
  :func:`conventional_config`; ``eval.pretrained=NAME`` adds a shipped model);
  writes ``metrics.json``, ``results.md``, ``results.csv``,
  ``reconstructions.png`` besides what the training loop writes.
- evaluate: ``model_dir=DIR`` (a trained run) or ``model_dir=pretrained:NAME``
  on the test split of the model's own data and tasks — or of the data and
  tasks given on the command line (``data=…``, ``data.path=…``, ``tasks=…``,
  ``tasks.ratios=…`` replace the model's): the task weight of a model with
  task weights is chosen from each task's sampling ratio
  (:class:`~metajax.bilevel.RatioWeighted`).
- baselines: zero-filled, TV and conventional training for the configured tasks.
- adapt: ``adapt.model_dir`` (a run or ``pretrained:NAME``) adapted to each configured
  (new) task (:mod:`metajax.engine.adaptation`): ``adapt.mode=self`` on the test
  split's own measurements with the splitting loss (no ground truth read),
  ``finetune`` on ``adapt.images`` ground-truth training images, ``omega`` on the
  task weight only; the step kept is the one whose prediction of held-out
  k-space of the test measurements is best; writes ``adaptation.json`` (curve,
  chosen step, seconds per slice) besides the metrics.

``metajax-reconstruct`` (a user's k-space → images) is in
:mod:`metajax.engine.reconstruct`. In a ``-m`` sweep every run also rewrites
``sweep_results.md`` in the sweep directory: one table with a row per (run,
method, task).
"""

from __future__ import annotations

import functools
import json
import logging
import sys
import traceback
from pathlib import Path

import hydra
import jax
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import OmegaConf

from metajax import bilevel, pretrained
from metajax.engine import adaptation, distributed, evaluation
from metajax.engine.checkpoint import CheckpointError
from metajax.engine.config import SOLVERS, register
from metajax.engine.rundir import guard_writes
from metajax.engine.experiment import ConfigError, Experiment, task_families, task_labels
from metajax.engine.validation import check_config
from metajax.engine.models import ModelSource, load_model_source
from metajax.engine.runner import TrainingError, machine_info, train

register()
logging.getLogger("jax._src.xla_bridge").setLevel(logging.WARNING)  # not Hydra's INFO: "Unable to initialize TPU"


def _out_dir() -> Path:
    return Path(HydraConfig.get().runtime.output_dir)


def _base() -> Path:
    return Path(hydra.utils.get_original_cwd())


def _fresh_out_dir() -> Path:
    """The run directory of an evaluation or adaptation: never a training run's, whose results it would
    overwrite."""
    out_dir = _out_dir()
    if (out_dir / "train_log.jsonl").is_file() or (out_dir / "model.eqx").is_file():
        raise ConfigError(f"`hydra.run.dir` = {str(out_dir)!r} is a training run's directory; its metrics.json and "
                          "results.md would be overwritten. Give the evaluation its own hydra.run.dir.")
    return out_dir


def _report(out_dir: Path, rows, images, ratios, cfg, title: str, extra: dict | None = None) -> None:
    if not distributed.is_writer():
        return
    table = evaluation.markdown(rows, title)
    if extra and extra.get("tv_tuning"):
        labels = task_labels(cfg.tasks) or [f"ratio {r:.2f}" for r in cfg.tasks.ratios]
        table += "\n" + evaluation.tuning_note(extra["tv_tuning"], labels) + "\n"
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
    (support and query), so the baseline's batch is twice ``trainer.batch`` — the same lr, seed and validation;
    one network per task with ``eval.conventional_per_task`` (Bian et al.'s baseline). Reproducible: it depends
    on the config only (not on timings)."""
    batch = cfg.trainer.batch * (1 if cfg.solver.name in ("conventional", "joint") else 2)
    solver = OmegaConf.merge(OmegaConf.structured(SOLVERS["conventional"]),
                             {"per_task": cfg.eval.conventional_per_task})
    return OmegaConf.merge(cfg, {"solver": solver, "trainer": {"batch": batch, "checkpoint_every": cfg.trainer.steps}})


def _baseline_methods(cfg, exp: Experiment, out_dir: Path, meta_seconds: float | None):
    """Zero-filled, TV (λ tuned per task on validation) and conventional training of the same network."""
    _log(f"tuning TV on the validation split ({len(cfg.eval.tv_weights)} weights × {exp.num_tasks} tasks) ...")
    weights, tuning = evaluation.tune_tv(exp.tasks, cfg.trainer.seed, list(cfg.eval.tv_weights),
                                         cfg.eval.tv_iterations, cfg.eval.tv_tune_images, log=_log)
    methods = {"zero-filled": evaluation.zero_filled_method,
               "TV": evaluation.tv_method(weights, cfg.eval.tv_iterations)}
    conv_cfg = conventional_config(cfg)
    _log(f"conventional training: {conv_cfg.trainer.steps} steps, {conv_cfg.trainer.batch} images per task and "
         "step ...")
    result = train(conv_cfg, out_dir / "conventional", exp.base)
    conv = result["experiment"]
    trained = conv.model(result["params"])
    name = "conventional (per task)" if conv_cfg.solver.per_task else "conventional"
    methods[name] = evaluation.network_method(lambda i: conv.task_model(trained, i))
    return methods, {"tv_weights": weights, "tv_tuning": tuning, "conventional_steps": conv_cfg.trainer.steps,
                     "conventional_batch": conv_cfg.trainer.batch,
                     "meta_steps": None if meta_seconds is None else cfg.trainer.steps,
                     "meta_train_seconds": meta_seconds, "conventional_train_seconds": result["train_seconds"]}


def _log(message: str) -> None:
    if distributed.is_writer():  # in a multi-process run, process 0 speaks for all
        print(message, flush=True)


def _pretrained_method(cfg) -> dict:
    """``{"pretrained:NAME": method}`` when ``eval.pretrained`` names a shipped model (checked before any work)."""
    if not cfg.eval.pretrained:
        return {}
    model, _ = pretrained.load(cfg.eval.pretrained)
    return {f"pretrained:{cfg.eval.pretrained}": evaluation.network_method(lambda i: model, lambda i: 0)}


def _fail(error: Exception) -> None:
    print(f"error: {error}", file=sys.stderr)
    distributed.exit_now(1)


def _multiprocess(main):
    """Join the run's processes (``trainer.coordinator``) before ``main``; afterwards wait for all of them.
    An error in a multi-process run ends this process at once, so that the others are ended within
    ``trainer.heartbeat_timeout`` instead of waiting for it."""
    guarded = guard_writes(main)

    @functools.wraps(main)
    def wrapped(cfg):
        try:
            distributed.initialize(cfg.trainer)
        except ConfigError as error:
            _fail(error)
        try:
            guarded(cfg)
        except Exception:
            if not jax.distributed.is_initialized():
                raise
            traceback.print_exc()
            print(f"error: process {jax.process_index()} of {jax.process_count()} stopped (above; a collective that "
                  "fails usually means another process died). Run the same command on every process again to resume "
                  "from the last checkpoint.", file=sys.stderr)
            distributed.exit_now(1)
        distributed.barrier("metajax-end")

    return wrapped


@hydra.main(version_base=None, config_name="run")
@_multiprocess
def train_main(cfg) -> None:
    """``metajax-train [overrides]``: meta-train (or conventionally train) the configured model, with checkpoints that
    resume, then evaluate it (and the baselines with ``eval.baselines``) on ``eval.split``; writes the run directory
    (docs/engine.md)."""
    out_dir = _out_dir()
    try:
        shipped = _pretrained_method(cfg)
        result = train(cfg, out_dir, _base())
    except (ConfigError, FileNotFoundError, TrainingError, CheckpointError, ValueError) as error:
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
    methods.update(shipped)
    rows, images = evaluation.evaluate(methods, exp.tasks, cfg.tasks.ratios, cfg.eval.split, cfg.trainer.seed,
                                       log=_log, labels=task_labels(cfg.tasks))
    shift_table = ""
    if cfg.eval.shift and cfg.eval.baselines and distributed.is_writer():
        extra["shift_rows"], shift_table = _shift_rows(cfg, exp, model, out_dir)
    _report(out_dir, rows, images, cfg.tasks.ratios, cfg,
            f"{cfg.eval.split} split, {len(exp.splits[cfg.eval.split])} images per task; mean ± std", extra)
    if shift_table:
        with open(out_dir / "results.md", "a") as f:
            f.write("\n" + shift_table)
        print(shift_table)


def _shift_rows(cfg, exp: Experiment, model, out_dir: Path):
    """The run's meta-learned model and its conventional baseline on an unseen mask family (``eval.shift`` at
    ``eval.shift_ratio``): zero-shot, and adapted for ``eval.shift_steps`` self-supervised steps on the test
    slices' own measurements (no ground truth). ``(rows, markdown)``."""
    from metajax.engine.models import line_tasks, sampling_ratios

    shift_cfg = OmegaConf.merge(cfg, {"tasks": {"mask": cfg.eval.shift, "ratios": [cfg.eval.shift_ratio],
                                                "families": [], "bank": 0, "crop": 0}})
    shift_exp = Experiment(shift_cfg, _base())
    if isinstance(model, bilevel.TaskWeighted):
        model = bilevel.RatioWeighted.from_task_weighted(model, sampling_ratios(exp.tasks), line_tasks(exp.tasks))
    starts = {f"{cfg.model.name} ({cfg.solver.name})": model,
              "conventional": load_model_source(str(out_dir / "conventional")).model}
    task = jax.tree.map(lambda t: t[0], shift_exp.tasks)
    y = evaluation.measurements(shift_exp.tasks, cfg.eval.split, cfg.trainer.seed)[0][2]
    settings = adaptation.Settings(mode="self", steps=cfg.eval.shift_steps, seed=cfg.trainer.seed, eval_every=5)
    methods, seconds = {}, {}
    for name, start in starts.items():
        one = adaptation.single_task(start, task.operator)
        _log(f"unseen {cfg.eval.shift} {cfg.eval.shift_ratio:g}: self-supervised adaptation of {name} "
             f"({settings.steps} steps on the test slices' own measurements) ...")
        adapted, report = adaptation.adapt(one, task.operator, y, settings, progress=False, log=_log)
        seconds[name] = report["seconds"]
        methods[f"{name}, zero-shot"] = evaluation.network_method(lambda i, m=one: m, lambda i: 0)
        methods[f"{name}, self-adapted ({settings.steps} steps)"] = evaluation.network_method(
            lambda i, m=adapted: m, lambda i: 0)
    rows, _ = evaluation.evaluate(methods, shift_exp.tasks, [cfg.eval.shift_ratio], cfg.eval.split,
                                  cfg.trainer.seed, log=_log, labels=[f"{cfg.eval.shift} {cfg.eval.shift_ratio:g}"])
    title = (f"Unseen mask family ({cfg.eval.shift} {cfg.eval.shift_ratio:g}; trained on "
             f"{', '.join(sorted(set(task_families(cfg.tasks))))}); self-adaptation without ground truth took "
             + ", ".join(f"{s:.0f} s ({n})" for n, s in seconds.items()))
    return rows, evaluation.markdown(rows, title)


def _user_overrides() -> list[str]:
    return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []


def overridden_groups(overrides) -> set[str]:
    """Which of ``data`` / ``tasks`` the command line sets (``data=…``, ``data.path=…``, ``+tasks.x=…``)."""
    names = {o.lstrip("+~").split("=")[0].split(".")[0] for o in overrides}
    return names & {"data", "tasks"}


def evaluation_config(cfg, trained_cfg, overrides):
    """The trained run's config with the command line's ``data`` / ``tasks`` (if given) and ``eval`` in its place:
    a model trained on one data set evaluated on another."""
    replace = {group: cfg[group] for group in overridden_groups(overrides)}
    return OmegaConf.merge(trained_cfg, {**replace, "eval": cfg.eval})


def _model_method(source: ModelSource, exp: Experiment):
    """The evaluation method of a loaded model on ``exp``'s tasks: its ω chosen from each task's sampling ratio."""
    if source.per_task is not None:  # one trained network per task: only on the tasks it was trained for
        if list(exp.cfg.tasks.ratios) != list(source.ratios):
            raise ConfigError(f"{source.label} trained one network per task for ratios {list(source.ratios)}; it "
                              f"cannot reconstruct tasks.ratios = {list(exp.cfg.tasks.ratios)}.")
        return evaluation.network_method(lambda i: source.per_task(i))
    return evaluation.network_method(lambda i: source.model, lambda i: 0)


@hydra.main(version_base=None, config_name="run")
@guard_writes
def evaluate_main(cfg) -> None:
    """``metajax-evaluate model_dir=M [overrides]``: evaluate a trained run directory or ``pretrained:NAME`` on the
    configured (or the model's own) data and tasks."""
    if cfg.model_dir is None:
        _fail(ConfigError("`model_dir` must name a trained run directory or pretrained:NAME "
                          "(model_dir=outputs/... or model_dir=pretrained:chest_dcnet)."))
    try:
        out_dir = _fresh_out_dir()
        source = load_model_source(cfg.model_dir, _base())
        exp = Experiment(evaluation_config(cfg, source.config, _user_overrides()), _base())
        methods = {source.label: _model_method(source, exp), **_pretrained_method(cfg)}
    except (ConfigError, FileNotFoundError, CheckpointError, ValueError) as error:
        _fail(error)
    rows, images = evaluation.evaluate(methods, exp.tasks, exp.cfg.tasks.ratios, cfg.eval.split,
                                       exp.cfg.trainer.seed, log=_log, labels=task_labels(exp.cfg.tasks))
    _report(out_dir, rows, images, exp.cfg.tasks.ratios, cfg, f"{cfg.model_dir}, {cfg.eval.split} split")


@hydra.main(version_base=None, config_name="run")
@_multiprocess
def baselines_main(cfg) -> None:
    """``metajax-baselines [overrides]``: zero-filled, TV (λ tuned on validation, widened grid) and conventional
    training of the configured network, evaluated as ``metajax-train`` does."""
    out_dir = _out_dir()
    try:
        exp = Experiment(cfg, _base())
        shipped = _pretrained_method(cfg)
        methods, extra = _baseline_methods(cfg, exp, out_dir, None)
    except (ConfigError, FileNotFoundError, TrainingError, CheckpointError, ValueError) as error:
        _fail(error)
    rows, images = evaluation.evaluate({**methods, **shipped}, exp.tasks, cfg.tasks.ratios, cfg.eval.split,
                                       cfg.trainer.seed, log=_log, labels=task_labels(cfg.tasks))
    _report(out_dir, rows, images, cfg.tasks.ratios, cfg, f"baselines, {cfg.eval.split} split", extra)


def adapt_settings(a, seed: int) -> adaptation.Settings:
    """The :class:`~metajax.engine.adaptation.Settings` of an ``adapt`` config node."""
    fields = {f: getattr(a, f) for f in adaptation.Settings.__dataclass_fields__ if f != "seed"}
    return adaptation.Settings(**fields, seed=seed)


def adapt_model(cfg, source: ModelSource, new_exp: Experiment, log=_log):
    """``(models, reports)``: the loaded model adapted to each of ``new_exp``'s tasks, one model per task, and each
    task's report (:func:`metajax.engine.adaptation.adapt`: curve, chosen step, seconds).

    Each task starts from the model with the ω it would choose for that task's mask, and stops on the held-out
    k-space of the task's ``eval.split`` measurements (the ones evaluated). ``adapt.mode=self`` trains on those
    same measurements only (their images are never passed to the adaptation); ``finetune`` / ``omega`` on ``adapt.images`` ground-truth
    training images."""
    a = cfg.adapt
    settings = adapt_settings(a, cfg.trainer.seed)
    settings.check()
    if settings.mode != "self" and not 1 <= a.images <= len(new_exp.splits["train"]):
        raise ConfigError(f"`adapt.images` must be in [1, {len(new_exp.splits['train'])}] (the training images of "
                          f"the new tasks); got {a.images}.")
    if source.per_task is not None:
        raise ConfigError(f"{source.label} holds one network per task (solver.per_task); adapt a joint model.")
    labels = [f"{family} {ratio:.3g}" for family, ratio in zip(task_families(new_exp.cfg.tasks),
                                                              new_exp.cfg.tasks.ratios)]
    adapted, reports = [], []
    # the evaluated measurements themselves (noise included); their images are not passed on
    evaluated = evaluation.measurements(new_exp.tasks, cfg.eval.split, cfg.trainer.seed)
    for i in range(new_exp.num_tasks):
        task = jax.tree.map(lambda t: t[i], new_exp.tasks)
        y = evaluated[i][2]
        images = None if settings.mode == "self" else task.train[: a.images]
        log(f"adapt task {i + 1}/{new_exp.num_tasks} ({labels[i]}): {settings.mode}, "
            f"{settings.steps} steps on " + (f"the {len(y)} test slices' own measurements" if images is None else
                                             f"{len(images)} ground-truth training images"))
        model, report = adaptation.adapt(adaptation.single_task(source.model, task.operator), task.operator, y,
                                         settings, images=images, log=log, progress=a.progress)
        log(f"adapt task {i + 1}/{new_exp.num_tasks}: held-out error {report['start_heldout']:.4f} → "
            f"{report['best_heldout']:.4f} (step {report['best_step']} of {settings.steps} kept), "
            f"{report['seconds']:.1f} s ({report['seconds_per_slice']:.1f} s per slice)")
        adapted.append(model)
        reports.append({"task": labels[i], **report})
    return adapted, reports


@hydra.main(version_base=None, config_name="adapt")
@guard_writes
def adapt_main(cfg) -> None:
    """``metajax-adapt adapt.model_dir=M [overrides]``: adapt a trained model to new data or tasks (``adapt.mode``
    omega, finetune or self) and report before/after rows (docs/adaptation.md)."""
    try:
        out_dir = _fresh_out_dir()
        check_config(cfg)
        source = load_model_source(cfg.adapt.model_dir, _base(), "adapt.model_dir")
        new_exp = Experiment(OmegaConf.merge(cfg, {"model": source.config.model}), _base())
        if source.per_task is None:
            before = _model_method(source, new_exp)
        adapted, reports = adapt_model(cfg, source, new_exp)
    except (ConfigError, FileNotFoundError, CheckpointError, ValueError) as error:
        _fail(error)
    first = lambda i: 0  # noqa: E731 (each adapted model has one task)
    loss = reports[0]["loss"]
    methods = {"before adaptation": before,
               f"adapted ({cfg.adapt.mode}, {loss})": evaluation.network_method(lambda i: adapted[i], first)}
    rows, images = evaluation.evaluate(methods, new_exp.tasks, cfg.tasks.ratios, cfg.eval.split, cfg.trainer.seed,
                                       labels=task_labels(cfg.tasks))
    (out_dir / "adaptation.json").write_text(json.dumps({"tasks": reports, "machine": machine_info()}, indent=2))
    what = "its test slices' own measurements" if cfg.adapt.mode == "self" else f"{cfg.adapt.images} images"
    _report(out_dir, rows, images, cfg.tasks.ratios, cfg, f"{cfg.adapt.model_dir} adapted on {what}",
            {"adapt_seconds": [r["seconds"] for r in reports], "best_steps": [r["best_step"] for r in reports]})
