"""Meta-gradient time and XLA temp memory against the number of inner steps K, per bilevel method.

    python benchmarks/bilevel_memory.py                    # LOA T = 5, 64², K ∈ {1, 5, 10, 20, 50}
    python benchmarks/bilevel_memory.py --steps 1 5 --repeats 1

One LOA reconstruction task (default LOA, T phases, radial 20 %, 2 training and
2 validation images, supervised losses, float32) and one meta-gradient
(``meta_gradient``) per method: MAML with autodiff through the inner loop, MAML
with the MLM adjoint over the inner steps, FOMAML and ``Implicit`` (CG, at most
``--cg-iters`` Hessian-vector products). Reported: median time after a warm-up,
XLA temp memory (``compile().memory_analysis()``) and compile time. Writes
results/bilevel_memory.{json,md,png}.
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import optax

from common import RESULTS, write
from metajax import data, masks
from metajax.adjoint import MLM, Autodiff
from metajax.bilevel import MAML, Implicit, Shared, meta_gradient, sample_batch, supervised_loss
from metajax.models import LOA
from metajax.operators import SingleCoilMRI


def methods(k: int, cg_iters: int, pixels: int) -> dict:
    sgd = optax.sgd(0.3 / pixels)  # the loss sums squared errors over pixels
    return {
        "MAML (autodiff)": MAML(sgd, k, adjoint=Autodiff()),
        "MAML (MLM adjoint)": MAML(sgd, k, adjoint=MLM()),
        "FOMAML": MAML(sgd, k, first_order=True),
        "Implicit (CG)": Implicit(lam=1.0, inner_optimizer=sgd, inner_steps=k, cg_tol=1e-6, cg_max_iters=cg_iters),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--phases", type=int, default=5)
    parser.add_argument("--steps", type=int, nargs="+", default=[1, 5, 10, 20, 50])
    parser.add_argument("--cg-iters", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    images = jnp.asarray(data.default_images(6, args.size), jnp.complex64)
    task = data.Task(SingleCoilMRI(masks.radial(jax.random.key(0), (args.size,) * 2, 0.2)), images[:2], images[2:4],
                     images[4:], noise_std=0.01)
    stacked = data.stack_tasks([task])
    batches = jax.tree.map(lambda a: a[0], (sample_batch(stacked, jax.random.key(1), "train", 2),
                                            sample_batch(stacked, jax.random.key(2), "val", 2)))
    theta = Shared(LOA(jax.random.key(3), num_phases=args.phases))

    def inner(phi, batch):
        return supervised_loss(phi, batch[0])

    def outer(phi, batch):
        return supervised_loss(phi, batch[1])

    rows = []
    for k in args.steps:
        for name, method in methods(k, args.cg_iters, args.size**2).items():
            start = time.perf_counter()
            compiled = jax.jit(lambda t, b, m=method: meta_gradient(m, inner, outer, t, b)).lower(
                theta, batches).compile()
            compile_s = time.perf_counter() - start
            jax.block_until_ready(compiled(theta, batches))
            samples = []
            for _ in range(args.repeats):
                start = time.perf_counter()
                _, info = jax.block_until_ready(compiled(theta, batches))
                samples.append(time.perf_counter() - start)
            rows.append({"method": name, "K": k, "seconds": statistics.median(samples),
                         "temp_MiB": compiled.memory_analysis().temp_size_in_bytes / 2**20, "compile_s": compile_s,
                         "outer_loss": float(info["outer_loss"]),
                         "cg_iterations": int(info["iterations"]) if "iterations" in info else None})
            print(rows[-1], flush=True)
    write("bilevel_memory", rows, ["method", "K", "seconds", "temp_MiB", "compile_s", "outer_loss"],
          note=f"default LOA, T = {args.phases}, {args.size}², 2 train + 2 val images, radial 20 %, inner SGD 0.3/pixels; "
               f"one meta-gradient, median of {args.repeats}; Implicit: λ = 1, CG ≤ {args.cg_iters} iterations")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for name in methods(1, 1, 1):
        sel = [r for r in rows if r["method"] == name]
        axes[0].plot([r["K"] for r in sel], [r["temp_MiB"] for r in sel], "o-", label=name)
        axes[1].plot([r["K"] for r in sel], [r["seconds"] for r in sel], "o-", label=name)
    for ax, label in zip(axes, ("XLA temp memory (MiB)", "meta-gradient (s)")):
        ax.set_xlabel("inner steps K")
        ax.set_ylabel(label)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"LOA T={args.phases}, {args.size}² ({jax.default_backend()})")
    fig.tight_layout()
    fig.savefig(RESULTS / "bilevel_memory.png", dpi=90)
    plt.close(fig)


if __name__ == "__main__":
    main()
