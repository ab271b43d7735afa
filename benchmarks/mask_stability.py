"""Why a DCNet diverges on masks it was not trained on: per-phase norms of the correction and of the image.

    python benchmarks/mask_stability.py

For the previous radial-only chest_dcnet (tests/data/radial_only_dcnet) and the shipped chest_dcnet, on three
chest test slices (85–87) and one mask per family, every phase k is unrolled by hand and reported:
``‖κ D(x_{k−1})‖`` (the CNN's correction), ``‖x_k‖``, the energy of ``x_k`` in *unmeasured* k-space
``‖(1 − M) F x_k‖`` against the truth's ``‖(1 − M) F x‖`` (data consistency never touches it), and PSNR.
The loop gain of phase k is ``‖D_k‖ / ‖D_{k−1}‖``: above 1 the correction feeds on itself through the
unmeasured k-space. Writes results/mask_stability.{json,md}.
"""

from __future__ import annotations

from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from omegaconf import OmegaConf

from common import write
from metajax import bilevel, data, masks, metrics, pretrained
from metajax.models.dcnet import data_consistency
from metajax.operators import SingleCoilMRI, fft2c

FIXTURE = Path(__file__).resolve().parents[1] / "tests" / "data" / "radial_only_dcnet"
MASKS = [("pseudo_radial", 0.2), ("fastmri_random", 0.25), ("fastmri_equispaced", 0.125), ("poisson_disc", 0.125),
         ("variable_density", 0.2), ("thinned_pseudo_radial", 0.2)]


def radial_only():
    cfg = OmegaConf.load(FIXTURE / "config.yaml")
    like = pretrained.build(OmegaConf.to_container(cfg.model), len(cfg.tasks.ratios))
    trained = eqx.tree_deserialise_leaves(FIXTURE / "model.eqx", like)
    return bilevel.RatioWeighted.from_task_weighted(
        trained, [float(np.mean(data.pseudo_radial_mask(r))) for r in cfg.tasks.ratios])


def phases(model, op, y, x):
    """Per-phase norms of one slice (the phase function written out, as DCPhase computes it)."""
    net = model.net
    kappa = net.kappa(model.omega_for(op))
    xk = op.adjoint(y)
    unmeasured = ~op.mask
    rows = []
    for k in range(net.num_phases):
        extra = xk - op.normal(xk) if net.cnn.mask_aware else None
        correction = kappa * net.cnn(xk, extra)
        xk = data_consistency(op, y, xk + correction, net.mu[k])
        rows.append({"phase": k + 1, "correction": float(jnp.linalg.norm(correction)),
                     "image": float(jnp.linalg.norm(xk)),
                     "unmeasured": float(jnp.linalg.norm(jnp.where(unmeasured, fft2c(xk), 0))),
                     "psnr": float(metrics.psnr(jnp.abs(xk), jnp.abs(x)))})
    return rows


def main() -> None:
    models = {"radial-only (previous chest_dcnet)": radial_only(), "chest_dcnet": pretrained.load("chest_dcnet")[0]}
    x = jnp.asarray(data.chest_images()[85:88], jnp.complex64)
    rows = []
    for family, ratio in MASKS:
        op = SingleCoilMRI(masks.family_mask(jax.random.key(0), family, (256, 256), ratio))
        truth_unmeasured = float(np.mean([jnp.linalg.norm(jnp.where(op.mask, 0, fft2c(v))) for v in x]))
        zero_filled = float(jnp.mean(metrics.psnr(jnp.abs(jax.vmap(op.adjoint)(jax.vmap(op)(x))), jnp.abs(x))))
        for name, model in models.items():
            per_slice = [phases(model, op, op(v), v) for v in x]
            for k in range(len(per_slice[0])):
                mean = {key: float(np.mean([s[k][key] for s in per_slice])) for key in per_slice[0][k]}
                previous = rows[-1]["correction"] if k else float("nan")
                rows.append({"model": name, "mask": f"{family} {ratio:g}", **mean, "gain": mean["correction"] / previous,
                             "truth_unmeasured": truth_unmeasured, "zero_filled": zero_filled})
    write("mask_stability", rows, ["model", "mask", "phase", "correction", "gain", "image", "unmeasured",
                                   "truth_unmeasured", "psnr", "zero_filled"],
          note="Means over chest test slices 85–87 (images scaled to max 1); ‖x‖ of the truth ≈ 57. "
               "gain = ‖D_k‖ / ‖D_{k−1}‖.")


if __name__ == "__main__":
    main()
