"""Produce a shipped pretrained model: train it with the engine, then write its weights and card as package data.

    python tools/make_pretrained.py                  # chest_dcnet: metajax-train preset=long, ≤ 90 CPU minutes

Steps (the one documented way the files in ``metajax/pretrained/<name>/`` come to be; nothing is edited by hand):

1. ``metajax-train preset=long hydra.run.dir=outputs/pretrained/<name> trainer.progress=false
   trainer.log_every=50`` — resumable: rerunning the command continues from the newest checkpoint, and a
   finished run is not trained again.
2. ``model.eqx``: the run's best-on-validation :class:`~metajax.bilevel.TaskWeighted` model.
3. ``card.json``: data and split, the command, the resolved config, compute and machine, κ per ratio, the
   validation curve, and PSNR/SSIM per sampling ratio of the model (as :func:`metajax.pretrained.load`
   returns it), zero-filled and TV (λ tuned on the validation split, ``--tv-iterations`` PDHG iterations) on
   the test slices 85–99, and on data the model never saw (the MNI152 template at 256², pseudo-radial masks);
   plus per-slice PSNRs of three test slices that ``tests/test_pretrained.py`` reproduces.
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


def train_command(name: str, preset: str) -> list[str]:
    return [str(Path(sys.executable).parent / "metajax-train"), f"preset={preset}",
            f"hydra.run.dir=outputs/pretrained/{name}", "trainer.progress=false", "trainer.log_every=50"]


def table(exp, methods, ratios, tv_iterations: int):
    from metajax.engine import evaluation

    weights = evaluation.tune_tv(exp.tasks, exp.cfg.trainer.seed, TV_WEIGHTS, tv_iterations)
    methods = {**methods(), "zero-filled": evaluation.zero_filled_method,
               "TV": evaluation.tv_method(weights, tv_iterations)}
    rows, _ = evaluation.evaluate(methods, exp.tasks, ratios, "test", exp.cfg.trainer.seed)
    keep = ("method", "ratio", "images", "psnr", "psnr_std", "ssim", "ssim_std", "nmse")
    return [{k: r[k] for k in keep} for r in rows], weights


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--name", default="chest_dcnet")
    parser.add_argument("--preset", default="long")
    parser.add_argument("--tv-iterations", type=int, default=500)
    args = parser.parse_args()
    command = train_command(args.name, args.preset)
    print("$ metajax-train " + " ".join(command[1:]), flush=True)
    subprocess.run(command, cwd=ROOT, check=True)

    from metajax import bilevel, metrics, pretrained
    from metajax.engine.evaluation import measurements, network_method
    from metajax.engine.experiment import Experiment
    from metajax.engine.models import sampling_ratios
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
    records = [json.loads(line) for line in (run_dir / "train_log.jsonl").read_text().splitlines() if line]
    steps = [r for r in records if "seconds" in r]
    info = json.loads((run_dir / "run_info.json").read_text())
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    ratios = list(cfg.tasks.ratios)
    card = {
        "name": args.name,
        "model": f"TaskWeighted {cfg.model.name}: {cfg.model.phases} phases, CNN {cfg.model.layers} layers × "
                 f"{cfg.model.features} channels, one task weight per ratio; ω chosen from the mask's ratio",
        "data": {"source": cfg.data.source, "train": list(cfg.data.train), "val": list(cfg.data.val),
                 "test": list(cfg.data.test), "masks": cfg.tasks.mask, "ratios": ratios,
                 "noise_std": cfg.tasks.noise_std},
        "command": f"python tools/make_pretrained.py --name {args.name} --preset {args.preset}  (runs: metajax-train "
                   + " ".join(command[1:]) + ")",
        "commit": commit,
        "config": OmegaConf.to_container(cfg, resolve=True),
        "trained_ratios": sampling_ratios(exp.tasks),
        "kappa": [float(k) for k in np.asarray(kappa_of(model.net, model.omega))],
        "omega": [float(w) for w in np.asarray(model.omega)],
        "compute": {"steps": len(steps), "train_seconds": sum(r["seconds"] for r in steps),
                    "images_per_s_median": float(np.median([r["images_per_s"] for r in steps])),
                    "machine": info["machine"]},
        "best": json.loads((run_dir / "best.json").read_text()) if (run_dir / "best.json").is_file() else None,
        "validation_curve": [{"step": r["step"], "val_psnr": r["val_psnr"]} for r in records if "val_psnr" in r],
    }
    (out / "card.json").write_text(json.dumps(card, indent=2))

    shipped, _ = pretrained.load(args.name)  # exactly what users get
    def method():  # a fresh method per table: a compiled method is specific to its image size
        return {args.name: network_method(lambda i: shipped, lambda i: 0)}

    print("evaluating on the chest test slices ...", flush=True)
    card["metrics"], card["tv_weights"] = table(exp, method, ratios, args.tv_iterations)
    unseen_cfg = OmegaConf.merge(cfg, {"data": {"source": "template", "num_slices": 32, "size": 256,
                                                "shuffle": True, "train": [0, 8], "val": [0, 8], "test": [8, 32]}})
    print("evaluating on the MNI152 template (never seen) ...", flush=True)
    card["metrics_unseen"], card["tv_weights_unseen"] = table(Experiment(unseen_cfg, ROOT), method, ratios,
                                                              args.tv_iterations)
    card["metrics_unseen_data"] = ("MNI152 2009a template (nilearn), 32 axial slices at 256², shuffled; test "
                                   "slices 8–31, TV tuned on slices 0–7; the template averages 152 brains, so it "
                                   "is smoother than any scan and flatters TV")
    reproduce = {"slices": [cfg.data.test[0] + i for i in range(REPRODUCE_SLICES)], "psnr": {}}
    for ratio, (operator, x, y) in zip(ratios, measurements(exp.tasks, "test", cfg.trainer.seed)):
        recon = jax.vmap(lambda v: shipped(operator, v))(y[:REPRODUCE_SLICES])
        reproduce["psnr"][str(ratio)] = [float(v) for v in metrics.psnr(jnp.abs(recon), jnp.abs(x[:REPRODUCE_SLICES]))]
    card["reproduce"] = reproduce
    (out / "card.json").write_text(json.dumps(card, indent=2))
    for name in ("metrics", "metrics_unseen"):
        print(name)
        for r in card[name]:
            print(f"  {r['method']:>12} {r['ratio']:.2f}  {r['psnr']:.2f} dB  SSIM {r['ssim']:.4f}")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
