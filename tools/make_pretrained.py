"""Produce a shipped pretrained model: train it with the engine, then write its weights and card as package data.

    python tools/make_pretrained.py                  # chest_dcnet: preset=long, then preset=robust (≈ 120 CPU min)
    python tools/make_pretrained.py --no-train       # weights and card from the finished runs in outputs/pretrained
    python tools/make_pretrained.py --name chest_dcnet_meta --baselines-from chest_dcnet   # preset=meta from chest_dcnet
    python tools/make_pretrained.py --name chest_dcnet_joint --baselines-from chest_dcnet  # its conventional twin

Steps (the one documented way the files in ``metajax/pretrained/<name>/`` come to be; nothing is edited by hand):

1. Stage 1, ``metajax-train preset=long hydra.run.dir=outputs/pretrained/<name>_long``: the DCNet on the
   embedded pseudo-radial masks (the previous release's chest_dcnet, 69 CPU minutes).
2. Stage 2, ``metajax-train preset=robust trainer.init=outputs/pretrained/<name>_long
   hydra.run.dir=outputs/pretrained/<name>``: the same network made mask-aware and trained on the mixture of
   mask families (``tasks=mixture``, a fresh mask per task and step). Both stages are resumable: rerunning
   continues from the newest checkpoint, and a finished stage is not trained again.
3. ``model.eqx``: stage 2's best-on-validation :class:`~metajax.bilevel.TaskWeighted` model.
4. ``card.json``: data and split, the commands, the resolved config, compute and machine of both stages, ω per
   task, and the robustness grid (``tasks=grid``: every mask family × acceleration) of the model as
   :func:`metajax.pretrained.load` returns it, zero-filled and TV (λ tuned per task on validation slices) on the
   chest test slices 85–99 and on the MNI152 template (never seen), with per-slice PSNRs; the families on which
   the model is offered (mean ≥ zero-filled + 2 dB and no slice below zero-filled, on both image sets); the
   self-check's flags against the per-slice truth; and per-slice PSNRs of three test slices per grid task that
   ``tests/test_pretrained.py`` reproduces.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[1]
TV_WEIGHTS = [1e-4, 3e-4, 1e-3, 3e-3, 1e-2]
REPRODUCE_SLICES = 3
OFFER_MARGIN_DB = 2.0  # a family is offered when the model is ≥ zero-filled + this on average, never below it


STAGES = {  # name: [(run directory name, overrides)]; each stage trains in outputs/pretrained/<run>
    # stage 1 on the pseudo-radial masks, stage 2 mask-aware on the mixture of families
    "chest_dcnet": [("chest_dcnet_long", ["preset=long"]),
                    ("chest_dcnet", ["preset=robust", "trainer.init=outputs/pretrained/chest_dcnet_long"])],
    # chest_dcnet meta-trained to adapt (first-order MAML, splitting inner loss, augmented mixture) ...
    "chest_dcnet_meta": [("chest_dcnet_meta", ["preset=meta"])],
    # ... and its conventional twin: the same start, tasks, augmentation and gradient evaluations, no inner loop
    "chest_dcnet_joint": [("chest_dcnet_joint", ["preset=meta", "solver=joint", "trainer.batch=3"])],
}


def train_command(run: str, overrides: list[str]) -> list[str]:
    return [str(Path(sys.executable).parent / "metajax-train"), *overrides, f"hydra.run.dir=outputs/pretrained/{run}",
            "trainer.progress=false", "trainer.log_every=25"]


def stages(name: str) -> list[tuple[str, list[str]]]:
    """``[(run directory name, overrides)]`` of the shipped model ``name``."""
    if name not in STAGES:
        raise SystemExit(f"--name: no recipe for {name!r}; known: {sorted(STAGES)}.")
    return STAGES[name]


def grid_config(cfg, data: dict | None = None):
    """``cfg`` evaluated on the robustness grid (one fixed mask per family × ratio), optionally other data."""
    from metajax.engine.config import TASKS

    grid = OmegaConf.structured(TASKS["grid"])
    return OmegaConf.merge(cfg, {"tasks": grid, "trainer": {"init": None}, **({"data": data} if data else {})})


def table(exp, method, tv_iterations: int, tune_images: int, baselines=None):
    """Rows of the model, zero-filled and TV (λ tuned per task on ``tune_images`` validation images).

    ``baselines`` = ``(rows, tv weights)`` of the same grid (same data, split, seed and masks) from another
    model's card: its zero-filled and TV rows are reused, as they do not depend on the model."""
    from metajax.engine import evaluation
    from metajax.engine.experiment import task_labels

    keep = ("method", "task", "label", "ratio", "images", "psnr", "psnr_std", "ssim", "ssim_std", "nmse", "psnr_images")
    if baselines is not None:
        rows, _ = evaluation.evaluate(method(), exp.tasks, exp.cfg.tasks.ratios, "test", exp.cfg.trainer.seed,
                                      log=lambda m: print(m, flush=True), labels=task_labels(exp.cfg.tasks))
        reused = [r for r in baselines[0] if r["method"] in ("zero-filled", "TV")]
        return [{k: r[k] for k in keep} for r in rows] + reused, baselines[1]
    weights, _ = evaluation.tune_tv(exp.tasks, exp.cfg.trainer.seed, TV_WEIGHTS, tv_iterations, tune_images)
    methods = {**method(), "zero-filled": evaluation.zero_filled_method,
               "TV": evaluation.tv_method(weights, tv_iterations)}
    rows, _ = evaluation.evaluate(methods, exp.tasks, exp.cfg.tasks.ratios, "test", exp.cfg.trainer.seed,
                                  log=lambda m: print(m, flush=True), labels=task_labels(exp.cfg.tasks))
    return [{k: r[k] for k in keep} for r in rows], weights


def offered(rows_by_set: dict, name: str) -> dict:
    """Per grid task: the model's mean margin over zero-filled and its worst slice margin, on every image set;
    ``offered`` when every set has mean ≥ OFFER_MARGIN_DB and no slice below zero-filled."""
    out = {}
    for label in dict.fromkeys(r["label"] for r in next(iter(rows_by_set.values()))):
        entry = {}
        for image_set, rows in rows_by_set.items():
            model = next(r for r in rows if r["label"] == label and r["method"] == name)
            zf = next(r for r in rows if r["label"] == label and r["method"] == "zero-filled")
            margins = np.subtract(model["psnr_images"], zf["psnr_images"])
            entry[image_set] = {"mean_margin": float(margins.mean()), "worst_margin": float(margins.min())}
        entry["offered"] = all(v["mean_margin"] >= OFFER_MARGIN_DB and v["worst_margin"] >= 0 for v in entry.values())
        out[label] = entry
    return out


def self_check_table(exp, model, rows, name: str) -> dict:
    """Run :func:`metajax.pretrained.self_check` on every test slice of every grid task and compare its flags
    with the per-slice truth: ``missed`` = model below zero-filled but not flagged; ``false_alarms`` = flagged
    though the model beats TV."""
    from metajax import pretrained
    from metajax.engine.evaluation import measurements
    from metajax.pretrained.selfcheck import TOLERANCE

    per_task, missed, alarms, below, beats = {}, 0, 0, 0, 0
    for i, (operator, _, y) in enumerate(measurements(exp.tasks, "test", exp.cfg.trainer.seed)):
        pick = {r["method"]: r for r in rows if r["task"] == i}
        check = pretrained.self_check(model, operator.mask, y, jax.random.key(0))
        flags = np.asarray(check["flag"], bool)
        m, z, t = (np.asarray(pick[k]["psnr_images"]) for k in (name, "zero-filled", "TV"))
        below_zf, beats_tv = m < z, m > t
        missed += int(np.sum(below_zf & ~flags))
        alarms += int(np.sum(beats_tv & flags))
        below += int(below_zf.sum())
        beats += int(beats_tv.sum())
        per_task[exp_label(exp, i)] = {"flags": flags.tolist(), "score": np.round(check["score"], 4).tolist()}
    return {"per_task": per_task, "below_zero_filled": below, "missed": missed, "beats_tv": beats,
            "false_alarms": alarms, "rule": f"flag when the model's held-out k-space error > {TOLERANCE} × "
                                            "min(zero-filled, TV)"}


def grid_experiments(cfg):
    """The chest and template Experiments of the robustness grid (the card's two image sets)."""
    from metajax.engine.experiment import Experiment

    unseen = {"source": "template", "num_slices": 32, "size": 256, "shuffle": True, "train": [0, 8], "val": [0, 8],
              "test": [8, 32]}
    return Experiment(grid_config(cfg), ROOT), Experiment(grid_config(cfg, unseen), ROOT)


def refresh_self_check(name: str) -> None:
    """Recompute the shipped card's ``self_check`` section from its own per-slice metrics."""
    from metajax import pretrained

    shipped, card = pretrained.load(name)
    chest, template = grid_experiments(OmegaConf.create(card["config"]))
    card["self_check"] = {"chest": self_check_table(chest, shipped, card["metrics"], name),
                          "template": self_check_table(template, shipped, card["metrics_unseen"], name)}
    (ROOT / "metajax" / "pretrained" / name / "card.json").write_text(json.dumps(card, indent=2))
    print_self_check(card)


def add_adaptation(name: str, results: Path) -> None:
    """The card's ``adaptation`` entry: what self-supervised and few-shot adaptation from this model (and from
    the other start of the experiment) bought on each target shift, from ``results.json`` of
    ``metajax-reproduce experiment=adaptation``."""
    record = json.loads(results.read_text())
    path = ROOT / "metajax" / "pretrained" / name / "card.json"
    card = json.loads(path.read_text())
    config = record["config"]
    card["adaptation"] = {"command": "metajax-reproduce experiment=adaptation", "config": config,
                          "machine": record["machine"], "summary": record["summary"],
                          "starts": {"meta": config["meta_model"], "conventional": config["conventional_model"]}}
    path.write_text(json.dumps(card, indent=2))
    print(f"wrote the adaptation entry of {path}")


def print_self_check(card: dict) -> None:
    for key, stats in card["self_check"].items():
        print(f"self-check {key}: {stats['missed']} of {stats['below_zero_filled']} below-zero-filled slices missed, "
              f"{stats['false_alarms']} false alarms of {stats['beats_tv']} slices beating TV")


def robustness_markdown(card: dict, name: str) -> str:
    """The card's grid as one markdown table: PSNR / SSIM of the model, zero-filled and TV per family × ratio on
    the chest test slices and on the template, and whether the model is offered there."""
    def cell(rows, label, method):
        r = next(r for r in rows if r["label"] == label and r["method"] == method)
        return f"{r['psnr']:.2f} / {r['ssim']:.3f}"

    lines = [f"| mask (family ratio) | chest: {name} | zero-filled | TV | template: {name} | zero-filled | TV "
             "| offered |", "|---|---|---|---|---|---|---|---|"]
    for label, entry in card["robustness"].items():
        cells = [cell(card[key], label, method) for key in ("metrics", "metrics_unseen")
                 for method in (name, "zero-filled", "TV")]
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {'yes' if entry['offered'] else 'no'} |")
    return "\n".join(lines) + "\n"


def exp_label(exp, i: int) -> str:
    from metajax.engine.experiment import task_labels

    return task_labels(exp.cfg.tasks)[i]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--name", default="chest_dcnet")
    parser.add_argument("--tv-iterations", type=int, default=300)
    parser.add_argument("--tv-tune-images", type=int, default=5)
    parser.add_argument("--no-train", action="store_true",
                        help="use the finished run directories as they are (rebuild the weights and card only)")
    parser.add_argument("--refresh-self-check", action="store_true",
                        help="recompute only the card's self-check statistics (after a change of its rule)")
    parser.add_argument("--baselines-from", metavar="NAME",
                        help="reuse the zero-filled and TV rows of the shipped model NAME's card (the same grid, "
                             "data and seed; they do not depend on the model) instead of recomputing them")
    parser.add_argument("--adaptation", metavar="RESULTS_JSON",
                        help="write only the card's `adaptation` entry: the summary of a finished "
                             "`metajax-reproduce experiment=adaptation` run (its results.json)")
    args = parser.parse_args()
    if args.refresh_self_check:
        refresh_self_check(args.name)
        return
    if args.adaptation:
        add_adaptation(args.name, Path(args.adaptation))
        return
    commands = []
    for run, overrides in stages(args.name):
        command = train_command(run, overrides)
        commands.append("metajax-train " + " ".join(command[1:]))
        if args.no_train:
            if not (ROOT / "outputs" / "pretrained" / run / "model.eqx").is_file():
                raise SystemExit(f"--no-train: outputs/pretrained/{run}/model.eqx does not exist; train it first.")
            continue
        print("$ " + commands[-1], flush=True)
        subprocess.run(command, cwd=ROOT, check=True)

    from metajax import bilevel, metrics, pretrained
    from metajax.engine.evaluation import measurements, network_method
    from metajax.engine.experiment import Experiment, task_families
    from metajax.engine.models import line_tasks, sampling_ratios
    from metajax.engine.runner import kappa_of

    run_dir = ROOT / "outputs" / "pretrained" / args.name
    cfg = OmegaConf.load(run_dir / "config.yaml")
    exp = Experiment(cfg, ROOT)
    model = eqx.tree_deserialise_leaves(run_dir / "model.eqx", exp.model(exp.params))
    if not isinstance(model, bilevel.TaskWeighted):
        raise SystemExit(f"{run_dir} holds a {type(model).__name__}; pretrained models carry task weights.")
    out = ROOT / "metajax" / "pretrained" / args.name
    out.mkdir(parents=True, exist_ok=True)
    eqx.tree_serialise_leaves(out / "model.eqx", model)

    def compute(run: str) -> dict:
        folder = ROOT / "outputs" / "pretrained" / run
        if not (folder / "train_log.jsonl").is_file():  # a stage kept from an earlier release: its own card
            earlier = json.loads((folder / "card.json").read_text())
            return {"run": run, "from_card": earlier.get("commit"), **earlier["compute"]}
        records = [json.loads(line) for line in (folder / "train_log.jsonl").read_text().splitlines() if line]
        steps = [r for r in records if "seconds" in r]
        info = json.loads((folder / "run_info.json").read_text()) if (folder / "run_info.json").is_file() else {}
        return {"run": run, "steps": len(steps), "train_seconds": sum(r["seconds"] for r in steps),
                "images_per_s_median": float(np.median([r["images_per_s"] for r in steps])) if steps else None,
                "machine": info.get("machine"), "validation_curve": [
                    {"step": r["step"], "val_psnr": r["val_psnr"]} for r in records if "val_psnr" in r]}

    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    families = task_families(cfg.tasks)
    card = {
        "name": args.name,
        "model": f"TaskWeighted {cfg.model.name}: {cfg.model.phases} phases, CNN {cfg.model.layers} layers × "
                 f"{cfg.model.features} channels{', mask-aware' if cfg.model.get('mask_aware') else ''}, one task "
                 "weight per training task; ω chosen from the mask's family (1-D lines or 2-D) and sampling ratio",
        "data": {"source": cfg.data.source, "train": list(cfg.data.train), "val": list(cfg.data.val),
                 "test": list(cfg.data.test), "masks": cfg.tasks.mask, "families": families,
                 "ratios": list(cfg.tasks.ratios), "noise_std": cfg.tasks.noise_std},
        "command": f"python tools/make_pretrained.py --name {args.name}"
                   + (f" --baselines-from {args.baselines_from}" if args.baselines_from else "")
                   + "  (runs: " + "; then ".join(commands) + ")",
        "commit": commit,
        "config": OmegaConf.to_container(cfg, resolve=True),
        "trained_ratios": sampling_ratios(exp.tasks),
        "trained_lines": line_tasks(exp.tasks),
        "kappa": [float(k) for k in np.asarray(kappa_of(model.net, model.omega))],
        "omega": [float(w) for w in np.asarray(model.omega)],
        "compute": {"stages": [compute(run) for run, _ in stages(args.name)]},
        "best": json.loads((run_dir / "best.json").read_text()) if (run_dir / "best.json").is_file() else None,
    }
    (out / "card.json").write_text(json.dumps(card, indent=2))

    shipped, _ = pretrained.load(args.name)  # exactly what users get

    def method():  # a fresh method per table: a compiled method is specific to its image size
        return {args.name: network_method(lambda i: shipped, lambda i: 0)}

    chest, template = grid_experiments(cfg)
    reuse = {"metrics": None, "metrics_unseen": None}
    if args.baselines_from:
        other = json.loads((ROOT / "metajax" / "pretrained" / args.baselines_from / "card.json").read_text())
        reuse = {"metrics": (other["metrics"], other["tv_weights"]),
                 "metrics_unseen": (other["metrics_unseen"], other["tv_weights_unseen"])}
        card["baselines_from"] = args.baselines_from
    print("evaluating the robustness grid on the chest test slices ...", flush=True)
    card["metrics"], card["tv_weights"] = table(chest, method, args.tv_iterations, args.tv_tune_images,
                                                reuse["metrics"])
    print("evaluating the robustness grid on the MNI152 template (never seen) ...", flush=True)
    card["metrics_unseen"], card["tv_weights_unseen"] = table(template, method, args.tv_iterations,
                                                              args.tv_tune_images, reuse["metrics_unseen"])
    card["metrics_unseen_data"] = ("MNI152 2009a template (nilearn), 32 axial slices at 256², shuffled; test "
                                   "slices 8–31, TV tuned on slices 0–7; the template averages 152 brains, so it "
                                   "is smoother than any scan and flatters TV")
    card["robustness"] = offered({"chest": card["metrics"], "template": card["metrics_unseen"]}, args.name)
    card["offered"] = [label for label, entry in card["robustness"].items() if entry["offered"]]
    print("self-check on every test slice of the grid ...", flush=True)
    card["self_check"] = {"chest": self_check_table(chest, shipped, card["metrics"], args.name),
                          "template": self_check_table(template, shipped, card["metrics_unseen"], args.name)}
    reproduce = {"slices": [cfg.data.test[0] + i for i in range(REPRODUCE_SLICES)], "seed": chest.cfg.trainer.seed,
                 "psnr": {}}
    for i, (operator, x, y) in enumerate(measurements(chest.tasks, "test", chest.cfg.trainer.seed)):
        recon = jax.vmap(lambda v: shipped(operator, v))(y[:REPRODUCE_SLICES])
        reproduce["psnr"][exp_label(chest, i)] = [
            float(v) for v in metrics.psnr(jnp.abs(recon), jnp.abs(x[:REPRODUCE_SLICES]))]
    card["reproduce"] = reproduce
    (out / "card.json").write_text(json.dumps(card, indent=2))
    for key in ("metrics", "metrics_unseen"):
        print(key)
        for r in card[key]:
            print(f"  {r['method']:>12} {r['label']:>26}  {r['psnr']:.2f} dB  SSIM {r['ssim']:.4f}")
    table_md = robustness_markdown(card, args.name)
    (run_dir / "robustness.md").write_text(table_md)
    print(table_md)
    print("offered:", card["offered"])
    print_self_check(card)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
