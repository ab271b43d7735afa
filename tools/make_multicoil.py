"""Produce the shipped multi-coil model ``chest_mc_dcnet``: simulate, train, evaluate, write weights and card.

    python tools/make_multicoil.py > outputs/pretrained/chest_mc_dcnet_train.log   # simulate + train (resumable) + card (≈ 75 CPU min)
    python tools/make_multicoil.py --no-train # weights and card from the finished run in outputs/pretrained

Steps (the one documented way ``metajax/pretrained/chest_mc_dcnet/`` comes to be; nothing is edited by hand):

1. Simulation (:mod:`metajax.engine.multicoil`, all of it *simulated* multi-coil data): chest slices 0–69
   (train), 70–84 (validation), 85–99 (test); one acquisition per (slice, task) with a smooth random phase, a
   random coil array (training: 4–8 coils, SNR log-uniform in [15, 60]; validation and test: 8 coils, SNR 30)
   and white complex noise; ESPIRiT maps from each acquisition's own calibration centre.
2. Training: ``chest_dcnet`` (the single-coil shipped model) as the start — its mask-aware CNN and μ_k, with
   ``cg_iters`` CG iterations of multi-coil data consistency — and one task weight per task (:data:`TASKS`),
   Adam on the log relative error against the ESPIRiT-combined noiseless image, a fresh mask every step.
3. ``model.eqx`` (the best validation step) and ``card.json``: data, simulation settings, command, config,
   compute, and per task the PSNR/SSIM on the test slices of the model, zero-filled RSS, SENSE, TV and
   ℓ1-wavelet (λ tuned on validation slices) — see ``tools/multicoil_baselines.py``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import sys
import time
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
NAME = "chest_mc_dcnet"
CG_ITERS = 6
TRAIN = dict(coils=(4, 5, 6, 7, 8), max_coils=8, snr=(15.0, 60.0))
EVAL = dict(coils=(8,), snr=(30.0, 30.0))
OFFER_MARGIN_DB = 2.0  # as for the single-coil models: offered where ≥ zero-filled + 2 dB on average, no slice below
VAL_IMAGES = 5  # validation slices per task that select the model during training (all 15 tune the baselines)


def start_model():
    from metajax import pretrained
    from metajax.bilevel import TaskWeighted
    from metajax.engine.multicoil import TASKS, task_mask

    single, card = pretrained.load("chest_dcnet")
    net = eqx.tree_at(lambda n: n.phase, single.net, type(single.net.phase)(CG_ITERS))
    from metajax.operators import SingleCoilMRI

    omega = jnp.stack([single.omega_for(SingleCoilMRI(task_mask(jax.random.key(0), f, a))) for f, a in TASKS])
    config = dict(card["config"]["model"], cg_iters=CG_ITERS)
    return TaskWeighted(net, len(TASKS), omega), config


def datasets(log=print, train: bool = True, cache: Path | None = None):
    """``(train, validation, test)`` simulated sets (train None with ``train=False``); deterministic, cached as
    ``cache/sim_*.npz`` when ``cache`` is given (a rerun or ``--no-train`` reads them)."""
    from metajax.data import chest_images
    from metajax.engine import multicoil

    images = chest_images()
    key = jax.random.key(2026)
    parts = [("train", slice(0, 70), TRAIN), ("val", slice(70, 85), EVAL), ("test", slice(85, 100), EVAL)]
    out = []
    for i, (name, rows, settings) in enumerate(parts):
        if name == "train" and not train:
            out.append(None)
            continue
        path = None if cache is None else cache / f"sim_{name}.npz"
        if path is not None and path.is_file():
            out.append(multicoil.load_set(path))
            continue
        out.append(multicoil.simulate_set(images[rows], jax.random.fold_in(key, i), **settings, log=log))
        if path is not None:
            multicoil.save_set(path, out[-1])
    return tuple(out)


def main(argv=None):
    from metajax.engine import multicoil

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--no-train", action="store_true")
    parser.add_argument("--steps", type=int, default=multicoil.TrainSettings.steps)
    parser.add_argument("--out", default=str(ROOT / "outputs" / "pretrained" / NAME))
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    log = lambda m: print(m, flush=True)  # noqa: E731
    tic = time.perf_counter()
    train_set, val_set, test_set = datasets(log, cache=out)
    simulate_seconds = time.perf_counter() - tic
    model, config = start_model()
    settings = multicoil.TrainSettings(steps=args.steps)
    tic = time.perf_counter()
    if args.no_train:
        model = eqx.tree_deserialise_leaves(out / "best.eqx", model)
        history = json.loads((out / "checkpoint.json").read_text())["history"]
        if "seconds" not in history:  # runs before the history kept its time: the last progress line of the log
            lines = [line for line in (out.parent / f"{NAME}_train.log").read_text().splitlines()
                     if line.startswith("step ")]
            history["seconds"] = float(lines[-1].rsplit("(", 1)[1].split(" s)")[0])
    else:
        model, history = multicoil.train(model, train_set, multicoil.first_images(val_set, VAL_IMAGES), out, settings,
                                         log=log)
    train_seconds = history.get("seconds", time.perf_counter() - tic)
    eqx.tree_serialise_leaves(out / "model.eqx", model)
    log(f"wrote {out / 'model.eqx'}")
    write_card(model, config, history, test_set, out, simulate_seconds, train_seconds, settings, log)


def machine() -> dict:
    return {"platform": platform.platform(), "python": platform.python_version(), "jax": jax.__version__,
            "backend": jax.default_backend(), "cpus": os.cpu_count()}


def float32_gradient_check(model, train_set) -> dict:
    """Relative difference of the training loss's gradient in float32 and in float64 at the shipped weights
    (one training example of each acceleration)."""
    from metajax.engine import multicoil

    idx = np.asarray([np.flatnonzero(train_set.task == 0)[0], np.flatnonzero(train_set.task == 1)[0]])
    masks_ = jnp.stack(multicoil.validation_masks()[:2])

    def grad(dtype, complex_dtype):
        m = jax.tree_util.tree_map(lambda a: a.astype(dtype) if eqx.is_inexact_array(a) else a, model)
        y, target = multicoil._prepare(train_set, idx, masks_)
        g = eqx.filter_grad(multicoil._loss)(m, y.astype(complex_dtype), jnp.asarray(train_set.maps[idx],
                                             complex_dtype), masks_, target.astype(complex_dtype),
                                             jnp.asarray(train_set.task[idx]))
        return np.concatenate([np.ravel(np.asarray(v, np.float64)) for v in jax.tree_util.tree_leaves(
            eqx.filter(g, eqx.is_inexact_array))])

    g32 = grad(jnp.float32, jnp.complex64)
    with jax.enable_x64(True):
        g64 = grad(jnp.float64, jnp.complex128)
    return {"relative_difference": float(np.linalg.norm(g32 - g64) / np.linalg.norm(g64)),
            "what": "‖∇L_f32 − ∇L_f64‖ / ‖∇L_f64‖ of the training loss at the shipped weights, one 4× and one 8× "
                    "training example"}


def write_card(model, config, history, test_set, out, simulate_seconds, train_seconds, settings, log) -> None:
    from metajax.engine import multicoil

    baselines = json.loads((out / "baselines.json").read_text())
    fixed = multicoil.validation_masks()
    tic = time.perf_counter()
    recon = multicoil.reconstruct_set(model, test_set, fixed)
    seconds = (time.perf_counter() - tic) / len(recon)
    psnr, ssim = multicoil.scores(recon, test_set.rss)
    rows = [dict(method=NAME, task=t, psnr=psnr[test_set.task == t].tolist(), ssim=ssim[test_set.task == t].tolist(),
                 seconds_per_slice=seconds) for t in range(len(multicoil.TASKS))] + baselines["rows"]
    summary = []
    for t, (family, acc) in enumerate(multicoil.TASKS):
        entry = {"task": f"{family} {acc:g}x"}
        for r in rows:
            if r["task"] == t:
                entry[r["method"]] = {"psnr": float(np.mean(r["psnr"])), "ssim": float(np.mean(r["ssim"]))}
        best = max(("SENSE", "TV", "l1-wavelet"), key=lambda m: entry[m]["psnr"])
        entry["best_classical"] = best
        entry["margin_over_best_classical"] = {k: entry[NAME][k] - entry[best][k] for k in ("psnr", "ssim")}
        entry["margin_over_zero_filled_rss"] = entry[NAME]["psnr"] - entry["zero-filled RSS"]["psnr"]
        per_slice = np.subtract(*(next(r["psnr"] for r in rows if r["task"] == t and r["method"] == m)
                                  for m in (NAME, "zero-filled RSS")))
        entry["worst_margin_over_zero_filled_rss"] = float(per_slice.min())
        entry["offered"] = bool(per_slice.mean() >= OFFER_MARGIN_DB and per_slice.min() >= 0)
        summary.append(entry)
        log(f"{entry['task']}: {NAME} {entry[NAME]['psnr']:.2f} / {entry[NAME]['ssim']:.3f}; best classical {best} "
            f"{entry[best]['psnr']:.2f} / {entry[best]['ssim']:.3f}; zero-filled RSS "
            f"{entry['zero-filled RSS']['psnr']:.2f}")
    reproduce = {f"{f} {a:g}x": psnr[test_set.task == t][:3].tolist() for t, (f, a) in enumerate(multicoil.TASKS)}
    card = {
        "name": NAME, "coils": "multi",
        "model": "DCNet (5 phases, shared 7-layer 16-channel mask-aware CNN) with multi-coil CG data consistency "
                 f"({config['cg_iters']} iterations), started from chest_dcnet; one task weight per task",
        "data": {"source": "chest", "train": [0, 70], "val": [70, 85], "test": [85, 100], "simulated": True},
        "simulation": {"what": "SIMULATED multi-coil acquisitions of the real chest magnitude images "
                               "(metajax.data.simulate_multicoil): smooth random phase (peak π), random coil array, "
                               "white complex Gaussian noise; maps estimated by ESPIRiT from each acquisition's own "
                               "calibration centre; reference: the noiseless RSS image",
                       "train": {"coils": list(TRAIN["coils"]), "snr": list(TRAIN["snr"])},
                       "evaluation": {"coils": list(EVAL["coils"]), "snr": EVAL["snr"][0]},
                       "snr_definition": "foreground mean of the noiseless RSS image / noise σ per coil and sample",
                       "seed": 2026},
        "tasks": [f"{f} {a:g}x" for f, a in multicoil.TASKS],
        "command": "python tools/multicoil_baselines.py && python tools/make_multicoil.py",
        "config": {"model": config, "tasks": {"ratios": [1 / a for _, a in multicoil.TASKS],
                                              "families": [f for f, _ in multicoil.TASKS]},
                   "data": {"source": "chest"}, "training": dataclasses.asdict(settings)},
        "trained_ratios": [1 / a for _, a in multicoil.TASKS],
        "trained_lines": [f.startswith("fastmri") for f, _ in multicoil.TASKS],
        "omega": np.asarray(model.omega).tolist(),
        "compute": {"simulate_seconds": simulate_seconds, "train_seconds": train_seconds, "machine": machine(),
                    "validation_curve": history["val"]},
        "metrics": rows, "summary": summary, "offered": [e["task"] for e in summary if e["offered"]], "tuning": baselines["tuning"],
        "numerics": float32_gradient_check(model, _train_set_for_check(out)),
        "reproduce": {"slices": [85, 86, 87], "psnr": reproduce},
        "seconds_per_slice": {"model": seconds},
    }
    target = ROOT / "metajax" / "pretrained" / NAME
    target.mkdir(parents=True, exist_ok=True)
    eqx.tree_serialise_leaves(target / "model.eqx", model)
    (target / "card.json").write_text(json.dumps(card, indent=1))
    log(f"wrote {target}")


def _train_set_for_check(out):
    from metajax.engine import multicoil

    return multicoil.load_set(out / "sim_train.npz")


if __name__ == "__main__":
    sys.exit(main())
