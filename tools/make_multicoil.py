"""Produce the shipped multi-coil model ``chest_mc_dcnet``: simulate, train, evaluate, write weights and card.

    python tools/make_multicoil.py            # simulate + train (resumable) + card (≈ 70 CPU min on 2 cores)
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
import json
import sys
import time
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp

ROOT = Path(__file__).resolve().parents[1]
NAME = "chest_mc_dcnet"
CG_ITERS = 6
TRAIN = dict(coils=(4, 5, 6, 7, 8), max_coils=8, snr=(15.0, 60.0))
EVAL = dict(coils=(8,), snr=(30.0, 30.0))
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


def datasets(log=print):
    from metajax.data import chest_images
    from metajax.engine import multicoil

    images = chest_images()
    key = jax.random.key(2026)
    return (multicoil.simulate_set(images[0:70], jax.random.fold_in(key, 0), **TRAIN, log=log),
            multicoil.simulate_set(images[70:85], jax.random.fold_in(key, 1), **EVAL, log=log),
            multicoil.simulate_set(images[85:100], jax.random.fold_in(key, 2), **EVAL, log=log))


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
    train_set, val_set, test_set = datasets(log)
    simulate_seconds = time.perf_counter() - tic
    model, config = start_model()
    settings = multicoil.TrainSettings(steps=args.steps)
    tic = time.perf_counter()
    if args.no_train:
        model = eqx.tree_deserialise_leaves(out / "best.eqx", model)
        history = json.loads((out / "checkpoint.json").read_text())["history"]
    else:
        model, history = multicoil.train(model, train_set, multicoil.first_images(val_set, VAL_IMAGES), out, settings,
                                         log=log)
    train_seconds = time.perf_counter() - tic
    (out / "run.json").write_text(json.dumps({"simulate_seconds": simulate_seconds, "train_seconds": train_seconds,
                                              "config": config, "settings": vars(settings) if hasattr(
                                                  settings, "__dict__") else {}}, indent=2))
    eqx.tree_serialise_leaves(out / "model.eqx", model)
    log(f"wrote {out / 'model.eqx'}")


if __name__ == "__main__":
    sys.exit(main())
