"""Conditioning of the LOA training gradient: float32 against float64 for the same weights.

    python benchmarks/loa_conditioning.py                 # default and paper presets, T = 11, several keys
    python benchmarks/loa_conditioning.py --keys 0 --settings default-128

For each preset and initialisation key, the gradient of ``mean |net(y) − x|²``
(radial 20 %, ``metajax.masks.radial``) with respect to every float leaf of the
network is computed with the weights cast to float32 and to float64; reported
is ``max over leaves of max|g32 − g64| / max|g64|`` (DESIGN.md §5's measure),
the relative change of the float32 gradient when ``y`` is perturbed by 1e-7
(relative), and the branch counts of both precisions. Settings: the default
images at 128², batch 4; chest slices 256², batch 1 (``../shared/data``, skipped
when absent). Where benchmarks/loa_training.py has written trained models,
they are measured too (ω of the 20 % task). Writes results/loa_conditioning.{json,md}.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from common import RESULTS, write
from metajax import data, masks
from metajax.models import LOA
from metajax.models.loa import branch_counts
from metajax.operators import SingleCoilMRI

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
BUILD = {"default": LOA, "paper": LOA.paper}


def settings(shared: Path) -> dict:
    out = {"default-128": lambda: data.default_images(4, 128)}
    chest = shared / "chest100_singlecoil.h5"
    if chest.is_file():
        for s in (70, 84):
            out[f"chest{s}-256"] = lambda s=s: data.normalize_per_slice(data.load_fastmri(chest, slices=[s]).target)
    else:
        print(f"chest settings skipped: {chest} is absent")
    return out


def cast(net, dtype):
    return jax.tree.map(lambda a: a.astype(dtype) if eqx.is_inexact_array(a) else a, net)


def gradient(net, images, mask, omega, dtype, perturb=0.0):
    complex_dtype = jnp.complex64 if dtype == jnp.float32 else jnp.complex128
    net = cast(net, dtype)
    x = jnp.asarray(images, complex_dtype)
    op = SingleCoilMRI(mask)
    ys = op(x)
    ys = ys * (1 + perturb * jax.random.normal(jax.random.key(123), ys.shape, jnp.finfo(dtype).dtype))
    params, static = eqx.partition(net, eqx.is_inexact_array)

    def loss(params):
        n = eqx.combine(params, static)
        return jnp.mean(jnp.abs(jax.vmap(lambda y: n(op, y, omega))(ys) - x) ** 2)

    grads = jax.jit(jax.grad(loss))(params)
    info = jax.jit(jax.vmap(lambda y: net.trace(op, y, omega)[1]))(ys)
    return grads, np.asarray(branch_counts(info["branch"])).sum(0).tolist()


def relative(grads, reference) -> float:
    pairs = zip(jax.tree.leaves(grads), jax.tree.leaves(reference))
    return max(float(jnp.max(jnp.abs(g.astype(r.dtype) - r)) / jnp.max(jnp.abs(r))) for g, r in pairs)


def measure(label, key, net, setting, images, omega, phases) -> dict:
    mask = masks.radial(jax.random.key(0), images.shape[-2:], 0.2)
    with jax.enable_x64(True):
        g64, b64 = gradient(cast(net, jnp.float64), images, mask, omega, jnp.float64)
        g32, b32 = gradient(net, images, mask, omega, jnp.float32)
        g32p, _ = gradient(net, images, mask, omega, jnp.float32, perturb=1e-7)
        row = {"model": label, "key": key, "setting": setting, "T": phases, "error_f32_vs_f64": relative(g32, g64),
               "change_from_1e-7_perturbation": relative(g32p, g32), "branches_f32": str(b32),
               "branches_f64": str(b64)}
    print(row, flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--presets", nargs="+", default=["default", "paper"], choices=list(BUILD))
    parser.add_argument("--keys", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--phases", type=int, default=11)
    parser.add_argument("--settings", nargs="*", default=None, help="subset of the settings (default: all)")
    parser.add_argument("--trained", default="loa_training", help="results/<name>_<preset>.eqx to measure too")
    parser.add_argument("--shared", type=Path, default=SHARED)
    parser.add_argument("--name", default="loa_conditioning")
    args = parser.parse_args()
    cases = settings(args.shared)
    cases = {k: v for k, v in cases.items() if args.settings is None or k in args.settings}
    rows = []
    for setting, load in cases.items():
        images = load()
        for preset in args.presets:
            for key in args.keys:
                net = BUILD[preset](jax.random.key(key), num_phases=args.phases)
                rows.append(measure(f"{preset} (initialisation)", key, net, setting, images, 0.0, args.phases))
            trained = RESULTS / f"{args.trained}_{preset}.eqx"
            if trained.is_file():
                like = (BUILD[preset](jax.random.key(0), num_phases=args.phases), jnp.zeros(4, jnp.float32))
                net, omegas = eqx.tree_deserialise_leaves(trained, like)
                rows.append(measure(f"{preset} (trained, {trained.name})", "—", net, setting, images,
                                    float(omegas[1]), args.phases))
    write(args.name, rows, ["model", "key", "setting", "T", "error_f32_vs_f64", "change_from_1e-7_perturbation",
                            "branches_f32", "branches_f64"],
          note="radial 20 %; error = max over parameter leaves of max|g32 − g64| / max|g64| for the same weights; "
               "branches = (u accepted, backtracking, exhausted) summed over phases and images")


if __name__ == "__main__":
    main()
