"""MLM adjoint vs autodiff for LOA and PDNet: gradient error, runtime and XLA memory.

    python benchmarks/gradient_equivalence.py                         # full grid
    python benchmarks/gradient_equivalence.py --models loa --phases 11 --sizes 256
    python benchmarks/gradient_equivalence.py --variants autodiff mlm autodiff-unrolled mlm-unrolled

For every model, image size and number of phases T, the gradient of
``mean |net(y) − x|²`` over a batch of default brain slices (radial 20 %)
with respect to all network parameters is compiled for each variant:

    autodiff     JAX reverse mode through lax.scan          (Autodiff())
    mlm          Lagrangian multipliers, every state stored  (MLM())
    mlm-sqrt     Lagrangian multipliers, checkpoints every ⌈√T⌉ phases (MLM("sqrt"))
    *-unrolled   the same with lax.scan(unroll=True)

Reported: XLA temp memory (``compile().memory_analysis().temp_size_in_bytes``),
median wall time of ``--repeats`` runs after a warm-up, the runtime and memory
ratios to autodiff measured in the same run, and the max over parameter leaves
of ``max|g − g_autodiff| / max|g_autodiff|`` in float32 and (for sizes in
``--error-sizes``) float64. Writes results/gradient_equivalence.{json,md,png}.
"""

from __future__ import annotations

import argparse
import statistics
import time

import equinox as eqx
import jax
import jax.numpy as jnp

from common import RESULTS, write
from metajax import data, masks
from metajax.adjoint import MLM, Autodiff
from metajax.models import LOA, PDNet
from metajax.operators import SingleCoilMRI

VARIANTS = {
    "autodiff": Autodiff(),
    "mlm": MLM(),
    "mlm-sqrt": MLM("sqrt"),
    "autodiff-unrolled": Autodiff(scan_unroll=True),
    "mlm-unrolled": MLM(scan_unroll=True),
}


def build(model: str, size: int, phases: int, batch: int, dtype):
    complex_dtype = jnp.complex128 if dtype == jnp.float64 else jnp.complex64
    images = jnp.asarray(data.default_images(batch, size), complex_dtype)
    op = SingleCoilMRI(masks.radial(jax.random.key(0), (size, size), 0.2))
    ys = op(images)
    if model == "loa":
        net = LOA(jax.random.key(1), num_phases=phases, dtype=dtype)
        apply = lambda net, y, adjoint: net(op, y, 0.0, adjoint=adjoint)  # noqa: E731
    else:
        net = PDNet(jax.random.key(1), num_layers=phases, dtype=dtype)
        apply = lambda net, y, adjoint: net(op, y, adjoint=adjoint)  # noqa: E731
    params, static = eqx.partition(net, eqx.is_inexact_array)

    def gradient(adjoint):
        def loss(params):
            net = eqx.combine(params, static)
            return jnp.mean(jnp.abs(jax.vmap(lambda y: apply(net, y, adjoint))(ys) - images) ** 2)
        return jax.jit(jax.grad(loss))

    return params, gradient


def relative_error(grads, reference) -> float:
    """Max over leaves of max|g − r| / max|r| (a leaf whose reference is exactly zero counts its absolute error)."""
    def leaf(g, r):
        scale = float(jnp.max(jnp.abs(r)))
        return float(jnp.max(jnp.abs(g - r))) / (scale if scale > 0 else 1.0)
    return max(jax.tree.leaves(jax.tree.map(leaf, grads, reference)))


def measure(model, size, phases, args) -> list[dict]:
    params, gradient = build(model, size, phases, args.batch, jnp.float32)
    rows, grads = [], {}
    for name in args.variants:
        compiled = gradient(VARIANTS[name]).lower(params).compile()
        memory = compiled.memory_analysis().temp_size_in_bytes / 2**20
        grads[name] = jax.block_until_ready(compiled(params))
        samples = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            jax.block_until_ready(compiled(params))
            samples.append(time.perf_counter() - start)
        rows.append({"model": model, "size": size, "T": phases, "variant": name,
                     "seconds": statistics.median(samples), "temp_MB": memory})
    base = {r["variant"]: r for r in rows}["autodiff"] if "autodiff" in args.variants else None
    errors64 = {}
    if size in args.error_sizes:
        with jax.enable_x64(True):
            params64, gradient64 = build(model, size, phases, args.batch, jnp.float64)
            reference = gradient64(Autodiff())(params64)
            for name in args.variants:
                if name != "autodiff":
                    errors64[name] = relative_error(gradient64(VARIANTS[name])(params64), reference)
    for row in rows:
        if base is not None:
            row["time_ratio"] = row["seconds"] / base["seconds"]
            row["memory_ratio"] = row["temp_MB"] / base["temp_MB"]
            row["error_f32"] = relative_error(grads[row["variant"]], grads["autodiff"])
        row["error_f64"] = errors64.get(row["variant"], float("nan"))
        print(", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()), flush=True)
    return rows


def plot(rows, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = sorted({r["model"] for r in rows})
    sizes = sorted({r["size"] for r in rows})
    fig, axes = plt.subplots(len(models), len(sizes), figsize=(4 * len(sizes), 3.2 * len(models)), squeeze=False)
    for i, model in enumerate(models):
        for j, size in enumerate(sizes):
            ax = axes[i][j]
            for variant in sorted({r["variant"] for r in rows}):
                pts = sorted((r["T"], r["temp_MB"]) for r in rows
                             if r["model"] == model and r["size"] == size and r["variant"] == variant)
                if pts:
                    ax.plot(*zip(*pts), marker="o", label=variant)
            ax.set_title(f"{model.upper()} {size}×{size}")
            ax.set_xlabel("phases T")
            ax.set_ylabel("XLA temp memory (MB)")
            ax.set_yscale("log")
            ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=["loa", "pdnet"], choices=["loa", "pdnet"])
    parser.add_argument("--phases", nargs="+", type=int, default=[1, 3, 5, 11, 20])
    parser.add_argument("--sizes", nargs="+", type=int, default=[64, 128, 256])
    parser.add_argument("--variants", nargs="+", default=["autodiff", "mlm", "mlm-sqrt"], choices=list(VARIANTS))
    parser.add_argument("--error-sizes", nargs="*", type=int, default=[64, 128])
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--name", default="gradient_equivalence")
    args = parser.parse_args()
    rows = []
    for model in args.models:
        for size in args.sizes:
            for phases in args.phases:
                rows += measure(model, size, phases, args)
    columns = ["model", "size", "T", "variant", "seconds", "time_ratio", "temp_MB", "memory_ratio",
               "error_f32", "error_f64"]
    write(args.name, rows, [c for c in columns if c in rows[0]],
          note=f"batch {args.batch}, float32 timings (median of {args.repeats}), radial 20 %; "
               "ratios are to autodiff in the same run; errors are max relative gradient errors vs autodiff")
    plot(rows, RESULTS / f"{args.name}.png")


if __name__ == "__main__":
    main()
