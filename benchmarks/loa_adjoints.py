"""Speed–memory trade-off of the LOA training step across adjoints, loop unrolling and checkpointing.

    python benchmarks/loa_adjoints.py                       # 128² batch 4, T = 11
    python benchmarks/loa_adjoints.py --size 256 --batch 1

One training step (mean-squared loss + gradient w.r.t. all LOA parameters, the
default LOA, radial 20 %) compiled for each setting: ``Autodiff(scan_unroll=u)``
and ``MLM(checkpoint_every=k, scan_unroll=u)`` (u counts phases: the MLM loop
over segments is unrolled too). Reported: median step time after a warm-up, XLA
temp memory (``compile().memory_analysis()``) and compile time. Writes
results/loa_adjoints.{json,md,png}: the curve of time against memory.
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
from metajax.models import LOA
from metajax.operators import SingleCoilMRI


def variants(t: int) -> dict:
    out = {f"Autodiff(scan_unroll={u})": Autodiff(scan_unroll=u) for u in (1, 2, t)}
    out.update({f"MLM(scan_unroll={u})": MLM(scan_unroll=u) for u in (1, 2, t)})
    out.update({f"MLM(checkpoint_every={k})": MLM(checkpoint_every=k) for k in (2, "sqrt", t)})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--phases", type=int, default=11)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--name", default="loa_adjoints")
    args = parser.parse_args()
    images = jnp.asarray(data.default_images(args.batch, args.size), jnp.complex64)
    op = SingleCoilMRI(masks.radial(jax.random.key(0), (args.size, args.size), 0.2))
    ys = op(images)
    params, static = eqx.partition(LOA(jax.random.key(1), num_phases=args.phases), eqx.is_inexact_array)
    rows = []
    for name, adjoint in variants(args.phases).items():
        def loss(params, adjoint=adjoint):
            net = eqx.combine(params, static)
            return jnp.mean(jnp.abs(jax.vmap(lambda y: net(op, y, 0.0, adjoint=adjoint))(ys) - images) ** 2)

        start = time.perf_counter()
        compiled = jax.jit(jax.value_and_grad(loss)).lower(params).compile()
        compile_s = time.perf_counter() - start
        jax.block_until_ready(compiled(params))
        samples = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            jax.block_until_ready(compiled(params))
            samples.append(time.perf_counter() - start)
        rows.append({"variant": name, "seconds": statistics.median(samples), "compile_s": compile_s,
                     "temp_MiB": compiled.memory_analysis().temp_size_in_bytes / 2**20})
        print(rows[-1], flush=True)
    write(args.name, rows, ["variant", "seconds", "temp_MiB", "compile_s"],
          note=f"LOA default, T = {args.phases}, {args.size}², batch {args.batch}, radial 20 %; one training step, "
               f"median of {args.repeats}")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4))
    for row in rows:
        marker = "o" if row["variant"].startswith("Autodiff") else "s"
        ax.scatter(row["temp_MiB"], row["seconds"], marker=marker)
        ax.annotate(row["variant"], (row["temp_MiB"], row["seconds"]), fontsize=7, xytext=(4, 2),
                    textcoords="offset points")
    ax.set_xscale("log")
    ax.set_xlabel("XLA temp memory (MiB)")
    ax.set_ylabel("training step (s)")
    ax.set_title(f"LOA T={args.phases}, {args.size}², batch {args.batch} ({jax.default_backend()})")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(RESULTS / f"{args.name}.png", dpi=90)
    plt.close(fig)


if __name__ == "__main__":
    main()
