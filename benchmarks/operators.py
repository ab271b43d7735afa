"""Time metajax's forward/adjoint operators and the TV baseline.

    python benchmarks/operators.py [--size 256] [--batch 8]

Per call, jit-compiled, median of 10 after warm-up; complex64 images.
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp

from common import time_call, write
from metajax import masks
from metajax.models import tv_reconstruction
from metajax.operators import Blur, Downsampling, MultiCoilMRI, SingleCoilMRI, birdcage_maps, fft2c, gaussian_kernel


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--batch", type=int, default=8)
    args = parser.parse_args()
    shape = (args.size, args.size)
    key = jax.random.key(0)
    x = (jax.random.normal(key, (args.batch, *shape)) + 0j).astype(jnp.complex64)
    mask = masks.radial(key, shape, 0.2)
    ops = {
        "fft2c": None,
        "SingleCoilMRI": SingleCoilMRI(mask),
        "MultiCoilMRI (8 coils)": MultiCoilMRI(mask, birdcage_maps(shape, 8)),
        "Blur (Gaussian σ=2)": Blur(gaussian_kernel(2.0)),
        "Downsampling ×2": Downsampling(2),
    }
    rows = []
    for name, op in ops.items():
        if op is None:
            forward = jax.jit(fft2c)
            rows.append({"operation": name, "forward ms": 1e3 * time_call(forward, x), "adjoint ms": float("nan")})
            continue
        forward = jax.jit(lambda x, op=op: op(x))
        adjoint = jax.jit(lambda y, op=op: op.adjoint(y))
        y = forward(x)
        rows.append({"operation": name, "forward ms": 1e3 * time_call(forward, x),
                     "adjoint ms": 1e3 * time_call(adjoint, y)})
    single = ops["SingleCoilMRI"]
    y = single(x)
    seconds = time_call(lambda y: tv_reconstruction(single, y, 5e-4, iterations=100), y, repeats=3)
    rows.append({"operation": "TV-PDHG, one iteration (single coil)", "forward ms": 1e3 * seconds / 100,
                 "adjoint ms": float("nan")})
    write("operators", rows, ["operation", "forward ms", "adjoint ms"],
          note=f"batch {args.batch} of {args.size}×{args.size} complex64 images; milliseconds per batched call")


if __name__ == "__main__":
    main()
