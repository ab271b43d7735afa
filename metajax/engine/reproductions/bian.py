"""Bian et al. (J. Imaging 2021): meta-learning across sampling ratios, then ω-only adaptation to unseen masks.

Protocol, per model (``models``: the paper LOA, metajax's default LOA, DCNet):

1. **Seen tasks.** Meta-train (``solver``, default the penalty method of
   Algorithm 2) on radial ``seen`` ratios with one ω per ratio; train the
   conventional baseline of the paper — one network per ratio on its own images,
   the same steps and images per step (:func:`metajax.engine.cli.conventional_config`);
   test both (and zero-filled) on the test split. κ per task is reported (σ(ω)
   for the LOA, 2σ(ω) for DCNet).
2. **Unseen tasks.** Radial ``unseen_radial`` and Cartesian ``unseen_cartesian``
   masks: freeze θ and fit only ω (``adapt.mode=omega``) on the first
   ``adapt_images`` training images for ``adapt_steps`` full-batch Adam steps;
   against conventional training of a network from scratch on each unseen task
   with the same images (``conventional_steps``). Both training times are
   measured (the steps only, compilation excluded).
3. **Solver sweep.** The other ``metajax.bilevel`` methods (``sweep``) meta-train
   ``sweep_model`` on the seen tasks with the same configuration; tested on the
   seen ratios.

Every run is an engine training run in its own directory (resumable: a rerun of
the same command continues where it was stopped). Writes ``results.md``,
``results.json``, ``summary.png`` (PSNR against sampling ratio) and per model
``MODEL/{seen,unseen_radial,unseen_cartesian}.png`` (reconstructions and error maps).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List

import jax
import numpy as np
from omegaconf import OmegaConf

from metajax.engine import evaluation
from metajax.engine.cli import adapt_model, conventional_config
from metajax.engine.experiment import Experiment
from metajax.engine.models import load_model_source
from metajax.engine.reproductions.common import (
    engine_config,
    pyplot,
    ratio_list,
    write_results,
)
from metajax.engine.runner import kappa_of, train

PAPER = {"seen": 1.5, "unseen_radial": 1.22, "unseen_cartesian": 1.87}  # dB over conventional training


@dataclass
class Config:
    name: str = "bian"
    models: List[str] = field(default_factory=lambda: ["dcnet", "loa", "loa_paper"])
    model_overrides: Dict[str, List[str]] = field(default_factory=lambda: {
        "dcnet": ["model.phases=4", "model.features=16", "model.layers=5"], "loa": [], "loa_paper": []})
    train: List[str] = field(default_factory=lambda: [
        "tasks.crop=128", "trainer.steps=60", "trainer.batch=1", "trainer.lr_schedule=cosine", "trainer.map_batch=1",
        "trainer.val_every=30", "trainer.checkpoint_every=20", "trainer.progress=false", "trainer.log_every=20"])
    solver: str = "penalty"
    sweep: List[str] = field(default_factory=lambda: ["implicit", "maml", "fomaml", "task_weights", "joint"])
    sweep_model: str = "dcnet"
    sweep_overrides: List[str] = field(default_factory=lambda: ["trainer.steps=30", "trainer.val_every=15"])
    seen: List[float] = field(default_factory=lambda: [0.1, 0.2, 0.3, 0.4])
    unseen_radial: List[float] = field(default_factory=lambda: [0.15, 0.25, 0.35])
    unseen_cartesian: List[float] = field(default_factory=lambda: [0.1, 0.2, 0.3, 0.4])
    adapt_images: int = 4
    adapt_steps: int = 15
    adapt_lr: float = 0.05
    conventional_steps: int = 30
    conventional_batch: int = 2


PAPER_SIZE = {  # the paper's sizes (GPU hours): full images, stair training, 70 adaptation images × 50 epochs
    "models": ["loa_paper", "loa", "dcnet"],
    "model_overrides": {"dcnet": ["model.phases=5", "model.features=16", "model.layers=7"], "loa": ["model.phases=11"],
                        "loa_paper": []},
    "train": ["tasks.crop=0", "trainer.steps=20000", "trainer.batch=8", "trainer.stair=true", "trainer.map_batch=0",
              "trainer.val_every=500", "trainer.checkpoint_every=500", "trainer.progress=false",
              "trainer.log_every=100", "solver.outer_split=val"],
    "sweep_overrides": ["trainer.steps=5000", "trainer.val_every=500"],
    "adapt_images": 70, "adapt_steps": 50, "adapt_lr": 0.01, "conventional_steps": 2000, "conventional_batch": 8,
}


def _base(c: Config, model: str) -> list[str]:
    return ["preset=none", f"model={model}", *c.model_overrides.get(model, []), *c.train]


def _kappa(model) -> np.ndarray:
    return np.asarray(kappa_of(model.net, model.omega), np.float64)


def _seen(c: Config, model: str, out: Path, base_dir, log):
    overrides = [*_base(c, model), "tasks=radial", f"tasks.ratios={ratio_list(c.seen)}", f"solver={c.solver}"]
    meta_cfg = engine_config(overrides)
    meta = train(meta_cfg, out / "meta", base_dir, log=log)
    conv_cfg = conventional_config(OmegaConf.merge(meta_cfg, {"eval": {"conventional_per_task": True}}))
    conv = train(conv_cfg, out / "conventional", base_dir, log=log)
    exp, meta_model = meta["experiment"], meta["experiment"].model(meta["params"])
    conv_exp, conv_model = conv["experiment"], conv["experiment"].model(conv["params"])
    methods = {"zero-filled": evaluation.zero_filled_method,
               "conventional (per task)": evaluation.network_method(lambda i: conv_exp.task_model(conv_model, i)),
               f"meta ({c.solver})": evaluation.network_method(lambda i: meta_model)}
    rows, images = evaluation.evaluate(methods, exp.tasks, c.seen, "test", meta_cfg.trainer.seed, log=log)
    evaluation.figure(out / "seen.png", images, c.seen)
    kappa = _kappa(meta_model)
    for r in rows:
        r.update(label=f"radial {c.seen[r['task']]:.0%}", model=model, group="seen")
        if r["method"].startswith("meta"):
            r.update(kappa=float(kappa[r["task"]]), train_seconds=meta["train_seconds"])
        elif r["method"].startswith("conventional"):
            r.update(train_seconds=conv["train_seconds"])
    return rows


def _unseen(c: Config, model: str, kind: str, ratios, out: Path, base_dir, log):
    group = [f"tasks={kind}", f"tasks.ratios={ratio_list(ratios)}"]
    adapt_cfg = engine_config([*_base(c, model), *group, f"adapt.model_dir={out / 'meta'}", "adapt.mode=omega",
                               f"adapt.images={c.adapt_images}", f"adapt.steps={c.adapt_steps}",
                               f"adapt.lr={c.adapt_lr}"], "adapt")
    source = load_model_source(str(out / "meta"), base_dir)
    new_exp = Experiment(OmegaConf.merge(adapt_cfg, {"model": source.config.model}), base_dir)
    adapted, adapt_seconds = adapt_model(adapt_cfg, source, new_exp)
    conv_cfg = engine_config([*_base(c, model), *group, "solver=conventional", "solver.per_task=true",
                              f"data.train=[0,{c.adapt_images}]", f"trainer.steps={c.conventional_steps}",
                              f"trainer.batch={min(c.conventional_batch, c.adapt_images)}", "trainer.val_every=0",
                              f"trainer.checkpoint_every={c.conventional_steps}"])
    conv = train(conv_cfg, out / f"conventional_{kind}", base_dir, log=log)
    conv_exp, conv_model = conv["experiment"], conv["experiment"].model(conv["params"])
    methods = {"zero-filled": evaluation.zero_filled_method,
               "meta, before adaptation": evaluation.network_method(lambda i: source.model, lambda i: 0),
               f"conventional on the task ({c.conventional_steps} steps)":
                   evaluation.network_method(lambda i: conv_exp.task_model(conv_model, i)),
               f"meta, ω adapted ({c.adapt_steps} steps)": evaluation.network_method(lambda i: adapted[i],
                                                                                     lambda i: 0)}
    rows, images = evaluation.evaluate(methods, new_exp.tasks, ratios, "test", new_exp.cfg.trainer.seed, log=log)
    evaluation.figure(out / f"unseen_{kind}.png", images, ratios)
    before = [float(np.asarray(kappa_of(source.model.net, source.model.omega_for(
        _operator(new_exp.tasks, i))))) for i in range(len(ratios))]
    after = [float(_kappa(m)[0]) for m in adapted]
    conv_seconds = conv["train_seconds"] / len(ratios)  # per_task trains all tasks' networks in one vmapped loop
    for r in rows:
        i = r["task"]
        r.update(label=f"{kind} {ratios[i]:.0%}", model=model, group=f"unseen_{kind}")
        if r["method"].startswith("meta, before"):
            r.update(kappa=before[i])
        elif r["method"].startswith("meta, ω"):
            r.update(kappa=after[i], train_seconds=adapt_seconds[i])
        elif r["method"].startswith("conventional"):
            r.update(train_seconds=conv_seconds)
    return rows


def _operator(tasks, i):
    return jax.tree.map(lambda a: a[i], tasks.operator)


def _sweep(c: Config, out: Path, base_dir, log):
    rows = []
    for solver in c.sweep:
        cfg = engine_config([*_base(c, c.sweep_model), "tasks=radial", f"tasks.ratios={ratio_list(c.seen)}",
                             f"solver={solver}", *c.sweep_overrides])
        run = train(cfg, out / "sweep" / solver, base_dir, log=log)
        exp = run["experiment"]
        model = exp.model(run["params"])
        method = {f"{c.sweep_model} ({solver})": evaluation.network_method(lambda i, m=model: m)}
        new, _ = evaluation.evaluate(method, exp.tasks, c.seen, "test", cfg.trainer.seed, log=log)
        kappa = _kappa(model) if hasattr(model, "omega") else None
        for r in new:
            r.update(label=f"radial {c.seen[r['task']]:.0%}", model=c.sweep_model, group="sweep",
                     train_seconds=run["train_seconds"], steps=cfg.trainer.steps,
                     kappa=None if kappa is None else float(kappa[r["task"]]))
        rows += new
    return rows


def gains(rows) -> dict:
    """Per (model, group): the mean PSNR gain (dB) of the meta model (ω adapted on unseen tasks) over the
    conventional baseline, the per-task gains, and the training times."""
    out = {}
    for key in sorted({(r["model"], r["group"]) for r in rows if r["group"] != "sweep"}):
        sel = [r for r in rows if (r["model"], r["group"]) == key]
        meta = [r for r in sel if r["method"].startswith("meta (") or r["method"].startswith("meta, ω")]
        conv = [r for r in sel if r["method"].startswith("conventional")]
        per_task = [m["psnr"] - v["psnr"] for m, v in zip(meta, conv)]
        out[f"{key[0]}/{key[1]}"] = {
            "gain_db": float(np.mean(per_task)), "per_task_db": per_task,
            "meta_seconds": float(np.sum([m.get("train_seconds") or 0 for m in meta])) if key[1] != "seen"
            else meta[0].get("train_seconds"),
            "conventional_seconds": float(np.sum([v.get("train_seconds") or 0 for v in conv])) if key[1] != "seen"
            else conv[0].get("train_seconds"),
            "paper_gain_db": PAPER[key[1]]}
    return out


EXTRA = (("κ", "kappa", ".3f"), ("train s", "train_seconds", ".1f"))


def report(c: Config, rows, out: Path) -> str:
    sections = []
    g = gains(rows)
    lines = ["| model | tasks | meta − conventional (dB), mean | per task | meta train s | conventional train s "
             "| paper |", "|---|---|---|---|---|---|---|"]
    for key, v in g.items():
        model, group = key.split("/")
        lines.append(f"| {model} | {group} | {v['gain_db']:+.2f} | " + " / ".join(f"{d:+.2f}" for d in v["per_task_db"])
                     + f" | {v['meta_seconds'] or 0:.0f} | {v['conventional_seconds'] or 0:.0f} "
                       f"| {v['paper_gain_db']:+.2f} |")
    sections.append(("Summary: gain over conventional training", "\n".join(lines) + "\n\nSeen: meta-trained vs "
                     "one conventional network per ratio (same steps, same images per step). Unseen: ω-only "
                     "adaptation (θ frozen) vs a network trained from scratch on each task with the same images; "
                     "times are the training steps only (sums over the unseen tasks).\n"))
    for model in c.models:
        for group, title in (("seen", "seen radial ratios"), ("unseen_radial", "unseen radial ratios"),
                             ("unseen_cartesian", "unseen Cartesian masks")):
            sel = [r for r in rows if r["model"] == model and r["group"] == group]
            if sel:
                sections.append((f"{model}: {title}", evaluation.markdown(sel, extra=EXTRA)))
    sweep = [r for r in rows if r["group"] == "sweep"]
    if sweep:
        sections.append((f"Solver sweep ({c.sweep_model}, seen ratios)", evaluation.markdown(sweep, extra=EXTRA)))
    text = write_results(out, "Bian et al. protocol", sections, {"rows": rows, "gains": g}, c)
    _summary_figure(rows, out / "summary.png")
    return text


def _summary_figure(rows, path: Path) -> None:
    plt = pyplot()
    models = sorted({r["model"] for r in rows if r["group"] != "sweep"})
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8), squeeze=False)
    for ax, pattern in zip(axes[0], ("radial", "cartesian")):
        for model in models:
            for prefix, style in (("meta", "-o"), ("conventional", "--s")):
                sel = sorted([r for r in rows if r["model"] == model and r["label"].startswith(pattern)
                              and r["method"].startswith(prefix) and "before" not in r["method"]
                              and r["group"] != "sweep"], key=lambda r: r["ratio"])
                if sel:
                    ax.plot([r["ratio"] for r in sel], [r["psnr"] for r in sel], style, ms=3,
                            label=f"{model} {prefix}")
        ax.set_xlabel("sampling ratio")
        ax.set_ylabel("PSNR (dB)")
        ax.set_title(f"{pattern} masks (test split)", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def run(c: Config, out: Path, base_dir=None, log=print) -> str:
    rows = []
    for model in c.models:
        log(f"== {model}: meta-training on radial {c.seen} and conventional training per ratio")
        rows += _seen(c, model, out / model, base_dir, log)
        for kind, ratios in (("radial", c.unseen_radial), ("cartesian", c.unseen_cartesian)):
            if ratios:
                log(f"== {model}: ω-only adaptation to unseen {kind} {list(ratios)}")
                rows += _unseen(c, model, kind, ratios, out / model, base_dir, log)
        report(c, rows, out)
    if c.sweep:
        log(f"== solver sweep on {c.sweep_model}: {list(c.sweep)}")
        rows += _sweep(c, out, base_dir, log)
    return report(c, rows, out)
