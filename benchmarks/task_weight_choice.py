"""How a pretrained model should choose its task weight from the mask: family and ratio, ratio only, or none.

    python benchmarks/task_weight_choice.py [--slices 15]

The shipped chest_dcnet on the robustness grid (``tasks=grid``: every family × acceleration, one mask each,
seed 0) and the chest test slices 85–99, with ω chosen three ways: from the mask's family (1-D lines or
2-D) and sampling ratio (what ``pretrained.load`` does), from the ratio alone (all trained tasks one group),
and κ = 1 (ω = 0, no task weight). Writes results/task_weight_choice.{json,md}.
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np

from common import write
from metajax import bilevel, data, metrics, pretrained
from metajax.engine.config import TASKS
from metajax.engine.experiment import make_mask, task_families, task_labels
from metajax.operators import SingleCoilMRI


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=15)
    args = parser.parse_args()
    model, card = pretrained.load("chest_dcnet")
    ratios, omega = card["trained_ratios"], np.asarray(card["omega"])
    choices = {
        "family + ratio": model,
        "ratio only": bilevel.RatioWeighted(model.net, ratios, omega, lines=[False] * len(ratios)),
        "none (κ = 1)": bilevel.RatioWeighted(model.net, ratios, np.zeros_like(omega), lines=[False] * len(ratios)),
    }
    x = jnp.asarray(data.chest_images()[85:85 + args.slices], jnp.complex64)
    tasks = TASKS["grid"]
    rows = []
    for i, (label, family, ratio) in enumerate(zip(task_labels(tasks), task_families(tasks), tasks.ratios)):
        op = SingleCoilMRI(make_mask(tasks, i, ratio, (256, 256), 0, None, family))
        y = jax.vmap(op)(x)
        row = {"mask": label, "zero-filled": float(jnp.mean(metrics.psnr(jnp.abs(jax.vmap(op.adjoint)(y)),
                                                                          jnp.abs(x))))}
        for name, m in choices.items():
            recon = jax.jit(jax.vmap(lambda v, m=m: m(op, v)))(y)
            row[name] = float(jnp.mean(metrics.psnr(jnp.abs(recon), jnp.abs(x))))
        rows.append(row)
        print(row, flush=True)
    means = {k: float(np.mean([r[k] for r in rows])) for k in ("zero-filled", *choices)}
    rows.append({"mask": "mean", **means})
    write("task_weight_choice", rows, ["mask", "zero-filled", *choices],
          note=f"Mean PSNR (dB) of chest test slices 85–{84 + args.slices}, shipped chest_dcnet, ω chosen three ways.")


if __name__ == "__main__":
    main()
