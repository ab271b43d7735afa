"""Learning check: supervised training of the default LOA and of the paper preset with the same budget.

    python benchmarks/loa_training.py                        # 10 CPU minutes per preset (needs ../shared/data)
    python benchmarks/loa_training.py --minutes 1 --presets default --eval-slices 3   # a quick look

Protocol. Chest slices 0–69 train (random ``--crop``² crops), 70–84 validate
(full 256²). Four tasks, radial sampling 10/20/30/40 %: one ``metajax.masks.radial``
mask per task at the crop size for training; the shared pseudo-radial masks
(``radial_masks.h5``) at 256² for evaluation. Shared θ (CNN, steps, ε₀) and one
ω per task (κ = sigmoid(ω)), Adam on ``mean |x_T − x|²`` over every task in every
batch (``--batch`` crops per task). Each preset trains for ``--minutes`` of
wall-clock time (compilation and evaluation excluded), then is evaluated on the
validation slices against zero-filled and TV (λ per ratio tuned on training
slices 60–69). PSNR on magnitude images with peak 1 (slices normalised to max 1).

Writes results/loa_training.{json,md,png} (table, learning curves) and the
trained models results/loa_training_<preset>.eqx, which benchmarks/loa_conditioning.py
reads for its after-training row.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

from common import RESULTS, machine
from metajax import data, masks, metrics
from metajax.models import LOA, tv_reconstruction, zero_filled
from metajax.operators import SingleCoilMRI

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
RATIOS = (0.1, 0.2, 0.3, 0.4)
TV_WEIGHTS = (1e-4, 2e-4, 5e-4, 1e-3, 2e-3, 5e-3)


def load(shared: Path):
    images = data.normalize_per_slice(data.load_fastmri(shared / "chest100_singlecoil.h5").target)
    shared_masks = masks.load_masks(shared / "radial_masks.h5")
    return images, [shared_masks[f"radial_{round(100 * r)}"] for r in RATIOS]


def stack(modules):
    return jax.tree.map(lambda *a: jnp.stack(a), *modules)


def build(preset: str, key, phases: int, **init) -> LOA:
    return (LOA if preset == "default" else LOA.paper)(key, num_phases=phases, **init)


def reconstruct(net, ops, omegas, ys):
    """ys (tasks, batch, H, W) → reconstructions, one ω per task."""
    return jax.vmap(lambda op, omega, y: jax.vmap(lambda yi: net(op, yi, omega))(y))(ops, omegas, ys)


def train(preset, images, args, train_masks=None, **init):
    key = jax.random.key(args.seed)
    net = build(preset, jax.random.fold_in(key, 1), args.phases, **init)
    if train_masks is None:
        train_masks = [masks.radial(jax.random.fold_in(key, 100 + i), (args.crop, args.crop), r)
                       for i, r in enumerate(RATIOS)]
    crop_ops = stack([SingleCoilMRI(m) for m in train_masks])
    params = (eqx.filter(net, eqx.is_inexact_array), jnp.zeros(len(RATIOS), jnp.float32))
    static = eqx.partition(net, eqx.is_inexact_array)[1]
    optimizer = optax.adam(args.lr)
    opt_state = optimizer.init(params)
    train_images = jnp.asarray(images[:70], jnp.float32)

    def batch(key):
        k_slice, k_row, k_col = jax.random.split(key, 3)
        shape = (len(RATIOS), args.batch)
        idx = jax.random.randint(k_slice, shape, 0, train_images.shape[0])
        rows = jax.random.randint(k_row, shape, 0, train_images.shape[1] - args.crop + 1)
        cols = jax.random.randint(k_col, shape, 0, train_images.shape[2] - args.crop + 1)
        crop = lambda i, r, c: jax.lax.dynamic_slice(train_images[i], (r, c), (args.crop, args.crop))  # noqa: E731
        return jax.vmap(jax.vmap(crop))(idx, rows, cols).astype(jnp.complex64)

    @jax.jit
    def step(params, opt_state, key):
        x = batch(key)
        ys = jax.vmap(lambda op, xs: jax.vmap(op)(xs))(crop_ops, x)

        def loss(params):
            recon = reconstruct(eqx.combine(params[0], static), crop_ops, params[1], ys)
            return jnp.mean(jnp.abs(recon - x) ** 2)

        value, grads = jax.value_and_grad(loss)(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        finite = jnp.all(jnp.asarray([jnp.all(jnp.isfinite(g)) for g in jax.tree.leaves(grads)]))
        return optax.apply_updates(params, updates), opt_state, value, finite

    start = time.perf_counter()
    compiled = step.lower(params, opt_state, key).compile()
    compile_s = time.perf_counter() - start
    curve, elapsed, i = [], 0.0, 0
    while elapsed < 60 * args.minutes and i < args.max_steps:
        start = time.perf_counter()
        params, opt_state, value, finite = compiled(params, opt_state, jax.random.fold_in(key, 10_000 + i))
        value = float(value)
        elapsed += time.perf_counter() - start
        if not bool(finite) or not np.isfinite(value):
            raise FloatingPointError(f"{preset}: non-finite loss or gradient at step {i}")
        curve.append((i, elapsed, value))
        i += 1
        if i % 25 == 0:
            print(f"  {preset} step {i} {elapsed:6.0f} s loss {value:.3e}", flush=True)
    return eqx.combine(params[0], static), params[1], curve, compile_s


def evaluate(net, omegas, images, eval_masks, tv_weights):
    val = jnp.asarray(images[70:85], jnp.complex64)
    rows = []
    for r, mask, omega, weight in zip(RATIOS, eval_masks, omegas, tv_weights):
        op = SingleCoilMRI(mask)
        ys = op(val)
        recon = jax.jit(jax.vmap(lambda y: net(op, y, omega)))(ys) if net is not None else None
        psnr = lambda x: np.asarray(metrics.psnr(jnp.abs(x), jnp.abs(val), data_range=1.0))  # noqa: E731
        row = {"ratio": r, "zero_filled": float(psnr(zero_filled(op, ys)).mean()),
               "tv": float(psnr(tv_reconstruction(op, ys, weight)).mean()), "tv_weight": weight}
        if recon is not None:
            row["loa"] = float(psnr(recon).mean())
        rows.append(row)
    return rows


def tune_tv(images, eval_masks):
    tune = jnp.asarray(images[60:70], jnp.complex64)
    weights = []
    for mask in eval_masks:
        op = SingleCoilMRI(mask)
        ys = op(tune)
        score = {w: float(metrics.psnr(jnp.abs(tv_reconstruction(op, ys, w)), jnp.abs(tune), data_range=1.0).mean())
                 for w in TV_WEIGHTS}
        weights.append(max(score, key=score.get))
    return weights


def plot(curves, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    for preset, curve in curves.items():
        steps, seconds, loss = zip(*curve)
        window = max(1, len(loss) // 20)
        smooth = np.convolve(loss, np.ones(window) / window, mode="valid")
        ax.plot(np.asarray(seconds)[window - 1:] / 60, smooth, label=preset)
    ax.set_xlabel("training time (min)")
    ax.set_ylabel("training loss (moving average)")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--presets", nargs="+", default=["default", "paper"], choices=["default", "paper"])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--crop", type=int, default=96)
    parser.add_argument("--batch", type=int, default=2, help="crops per task per step")
    parser.add_argument("--phases", type=int, default=11)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--max-steps", type=int, default=10**9, help="stop earlier after this many steps")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--shared", type=Path, default=SHARED)
    parser.add_argument("--name", default="loa_training")
    args = parser.parse_args()
    if not (args.shared / "chest100_singlecoil.h5").is_file():
        print(f"SKIP: {args.shared / 'chest100_singlecoil.h5'} is absent (the shared chest data)")
        return
    images, eval_masks = load(args.shared)
    tv_weights = tune_tv(images, eval_masks)
    baseline = evaluate(None, [None] * len(RATIOS), images, eval_masks, tv_weights)
    results, curves = {}, {}
    for preset in args.presets:
        print(f"training {preset} for {args.minutes} min", flush=True)
        net, omegas, curve, compile_s = train(preset, images, args)
        eqx.tree_serialise_leaves(RESULTS / f"{args.name}_{preset}.eqx", (net, omegas))
        rows = evaluate(net, omegas, images, eval_masks, tv_weights)
        results[preset] = {"steps": len(curve), "compile_s": compile_s, "omegas": np.asarray(omegas).tolist(),
                           "eps0": float(net.eps0), "rows": rows}
        curves[preset] = curve
        print(preset, rows, flush=True)
    RESULTS.mkdir(exist_ok=True)
    lines = [f"machine: {machine()['platform']}, {machine()['cpu_count']} CPUs, JAX {jax.__version__}", "",
             f"Chest validation slices 70–84 (256², shared pseudo-radial masks), PSNR (dB, peak 1). Training: "
             f"{args.minutes} min per preset, crops {args.crop}², {args.batch} per task × 4 tasks, Adam {args.lr}, "
             f"T = {args.phases}.", "",
             "| ratio | zero-filled | TV (λ tuned on slices 60–69) | " + " | ".join(
                 f"LOA {p} ({results[p]['steps']} steps)" for p in results) + " |",
             "|---|---|---|" + "---|" * len(results)]
    for i, base in enumerate(baseline):
        cells = [f"{results[p]['rows'][i]['loa']:.2f}" for p in results]
        lines.append(f"| {base['ratio']:.0%} | {base['zero_filled']:.2f} | {base['tv']:.2f} (λ={base['tv_weight']:g}) | "
                     + " | ".join(cells) + " |")
    text = "\n".join(lines) + "\n"
    (RESULTS / f"{args.name}.md").write_text(text)
    (RESULTS / f"{args.name}.json").write_text(json.dumps(
        {"machine": machine(), "args": {k: str(v) for k, v in vars(args).items()}, "baseline": baseline,
         "results": results, "curves": curves}, indent=1))
    plot(curves, RESULTS / f"{args.name}.png")
    print(text)


if __name__ == "__main__":
    main()
