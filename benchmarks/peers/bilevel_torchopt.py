"""MAML and iMAML meta-gradients: metajax against TorchOpt on the same small CNN regression task, one process.

    pip install -e ".[bench]"                              # torch==2.13.0 (CPU) and torchopt, never core dependencies
    python benchmarks/peers/bilevel_torchopt.py            # 16² b4 C8 and 32² b8 C16, K = 5, CG 10 iterations
    python benchmarks/peers/bilevel_torchopt.py --smoke    # seconds: the float64 agreement checks only (CI)

The task: a bias-free 3-layer CNN (1 → C → C → 1 channels, 3×3, tanh) regresses
clean brain slices from noisy ones (σ = 0.1); inner loss on 8 training images,
outer loss on 8 validation images, mean squared error. Same initial weights on
both sides.

- MAML: K differentiable SGD steps (lr 0.1), meta-gradient through them
  (metajax ``MAML(optax.sgd(0.1), K)``; TorchOpt's functional ``torchopt.sgd``
  with ``torch.autograd.grad(create_graph=True)``, the usual TorchOpt MAML).
- iMAML: K SGD steps (lr 0.05) on ``L_in(φ) + (λ/2)‖φ − θ‖²`` (λ = 5) from θ, then CG with exactly
  ``--cg-iters`` iterations (tolerance 0 on both sides) on Hessian-vector
  products (metajax ``Implicit``; TorchOpt ``torchopt.diff.implicit.custom_root``
  with ``torchopt.linear_solve.solve_cg``, as in TorchOpt's iMAML example but
  with plain CG, since the system is symmetric positive definite).

λ = 5 keeps ``I + H/λ`` positive definite on this task. At λ = 1 it is not:
metajax's CG stops at the negative-curvature direction and says so
(``status`` 2), while TorchOpt's CG runs on and returns a meta-gradient 5.75
(relative) away from metajax's last finite iterate, with no warning.

Checks first (float64): both meta-gradients agree between the frameworks. Then
float32 timing, round-robin after a warm-up, median of ``--repeats``, with
``torch.set_num_threads(os.cpu_count())``; XLA temp memory and PyTorch's peak
RSS growth during its first float32 call (a rough figure: the float64 checks
have already grown the allocator). Two settings by default: one where
per-operation overhead dominates (16², batch 4, 8 channels) and one where the
convolutions dominate (32², batch 8, 16 channels). Writes
results/bilevel_torchopt.{json,md}.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import peak_rss_growth, write  # noqa: E402

from metajax import data  # noqa: E402
from metajax.adjoint import Autodiff  # noqa: E402
from metajax.bilevel import MAML, Implicit, meta_gradient  # noqa: E402
from metajax.models.convolution import conv2d  # noqa: E402

LR, IMAML_LR, LAM = 0.1, 0.05, 5.0


def problem(size, batch, channels, seed=0):
    """Float64 NumPy data (N, H, W) and OIHW kernels."""
    rng = np.random.default_rng(seed)
    clean = np.abs(np.asarray(data.default_images(2 * batch, size)))
    noisy = clean + 0.1 * rng.standard_normal(clean.shape)
    shapes = [(channels, 1, 3, 3), (channels, channels, 3, 3), (1, channels, 3, 3)]
    kernels = [rng.uniform(-1, 1, s) * np.sqrt(6 / (9 * (s[0] + s[1]))) for s in shapes]  # Xavier uniform
    return {"x_tr": noisy[:batch], "t_tr": clean[:batch], "x_val": noisy[batch:], "t_val": clean[batch:]}, kernels


# ------------------------------------------------------------------ metajax


def jax_cnn(weights, x):
    h = x[..., None]
    for i, w in enumerate(weights):
        h = conv2d(h, w)
        h = jnp.tanh(h) if i < len(weights) - 1 else h
    return h[..., 0]


def jax_loss(split):
    def loss(weights, batch):
        return jnp.mean((jax_cnn(weights, batch[f"x_{split}"]) - batch[f"t_{split}"]) ** 2)
    return loss


def jax_methods(k, cg_iters):
    """Name → method; "PEER, variant" names are extra metajax variants of the peer method PEER."""
    return {"MAML": MAML(optax.sgd(LR), k),
            "MAML, inner loop unrolled": MAML(optax.sgd(LR), k, adjoint=Autodiff(scan_unroll=True)),
            "iMAML": Implicit(lam=LAM, inner_optimizer=optax.sgd(IMAML_LR), inner_steps=k, cg_tol=1e-30,
                              cg_max_iters=cg_iters)}


def jax_setup(batch, kernels, dtype):
    weights = [jnp.asarray(k.transpose(2, 3, 1, 0), dtype) for k in kernels]  # OIHW → HWIO
    return weights, {k: jnp.asarray(v, dtype) for k, v in batch.items()}


# ------------------------------------------------------------------ TorchOpt


def torch_functions(torch, torchopt, k, cg_iters):
    import torch.nn.functional as F

    def cnn(weights, x):
        h = x[:, None]
        for i, w in enumerate(weights):
            h = F.conv2d(h, w, padding=1)
            h = torch.tanh(h) if i < len(weights) - 1 else h
        return h[:, 0]

    def loss(weights, batch, split):
        return torch.mean((cnn(weights, batch[f"x_{split}"]) - batch[f"t_{split}"]) ** 2)

    def maml(meta, batch):
        opt = torchopt.sgd(LR)
        params = tuple(meta)
        state = opt.init(params)
        for _ in range(k):
            grads = torch.autograd.grad(loss(params, batch, "tr"), params, create_graph=True)
            updates, state = opt.update(grads, state, inplace=False)
            params = torchopt.apply_updates(params, updates, inplace=False)
        return torch.autograd.grad(loss(params, batch, "val"), meta)

    def objective(params, meta, batch):
        prox = sum(torch.sum((p - m) ** 2) for p, m in zip(params, meta))
        return loss(params, batch, "tr") + 0.5 * LAM * prox

    optimality = torch.func.grad(objective, argnums=0)  # TorchOpt differentiates it with functorch

    @torchopt.diff.implicit.custom_root(optimality, argnums=1,
                                        solve=torchopt.linear_solve.solve_cg(maxiter=cg_iters, rtol=0.0, atol=0.0))
    def inner_solve(params, meta, batch):
        center = tuple(m.detach() for m in meta)  # the inner loop is not differentiated
        params = tuple(p.detach().clone().requires_grad_(True) for p in params)
        opt = torchopt.sgd(IMAML_LR)
        state = opt.init(params)
        with torch.enable_grad():  # custom_root runs the solver under no_grad
            for _ in range(k):
                grads = torch.autograd.grad(objective(params, center, batch), params)
                updates, state = opt.update(grads, state, inplace=False)
                params = tuple(p.detach().requires_grad_(True) for p in torchopt.apply_updates(params, updates,
                                                                                                 inplace=False))
        return tuple(p.detach() for p in params)

    def imaml(meta, batch):
        params = inner_solve(tuple(m.detach() for m in meta), meta, batch)
        return torch.autograd.grad(loss(params, batch, "val"), meta)

    return {"MAML": maml, "iMAML": imaml}


def torch_setup(torch, batch, kernels, dtype):
    meta = tuple(torch.tensor(k, dtype=dtype, requires_grad=True) for k in kernels)
    return meta, {k: torch.tensor(v, dtype=dtype) for k, v in batch.items()}


# ------------------------------------------------------------------ main


def check(torch, t_fns, methods, batch_np, kernels) -> dict:
    """Float64 relative difference of the metajax and TorchOpt meta-gradients, per method."""
    checks = {}
    with jax.enable_x64(True):
        weights, batch = jax_setup(batch_np, kernels, jnp.float64)
        for name, method in methods.items():
            grad, _ = meta_gradient(method, jax_loss("tr"), jax_loss("val"), weights, batch)
            meta, t_batch = torch_setup(torch, batch_np, kernels, torch.float64)
            theirs = np.concatenate([g.detach().numpy().ravel() for g in t_fns[name.split(",")[0]](meta, t_batch)])
            ours = np.concatenate([np.asarray(g).transpose(3, 2, 0, 1).ravel() for g in grad])
            checks[name] = float(np.linalg.norm(ours - theirs) / np.linalg.norm(theirs))
    return checks


def timing(torch, t_fns, methods, batch_np, kernels, checks, repeats, setting) -> list[dict]:
    weights, batch = jax_setup(batch_np, kernels, jnp.float32)
    meta, t_batch = torch_setup(torch, batch_np, kernels, torch.float32)
    rows = []
    for name, method in methods.items():
        peer, first_new = name.split(",")[0], len(rows)
        start = time.perf_counter()
        compiled = jax.jit(lambda w, b, m=method: meta_gradient(m, jax_loss("tr"), jax_loss("val"), w, b)).lower(
            weights, batch).compile()
        compile_s = time.perf_counter() - start
        jax_call = lambda: jax.block_until_ready(compiled(weights, batch))  # noqa: E731
        torch_call = lambda fn=t_fns[peer]: fn(meta, t_batch)  # noqa: E731
        torch_memory = peak_rss_growth(torch_call)  # the first (cold) call: what the allocator has to grow
        jax_call()
        samples = {"metajax": [], "TorchOpt": []}
        for _ in range(repeats):
            for label, call in (("metajax", jax_call), ("TorchOpt", torch_call)):
                start = time.perf_counter()
                call()
                samples[label].append(time.perf_counter() - start)
        jax_s, torch_s = statistics.median(samples["metajax"]), statistics.median(samples["TorchOpt"])
        common = {"setting": setting, "method": peer, "float64_grad_rel_diff": checks[name]}
        rows.append({**common, "library": f"metajax {name[len(peer) + 2:] or 'default'}", "seconds": jax_s,
                     "speedup_vs_torchopt": torch_s / jax_s, "compile_s": compile_s,
                     "memory_MiB": compiled.memory_analysis().temp_size_in_bytes / 2**20, "memory_kind": "XLA temp"})
        if not any(r["method"] == peer and r["library"] == "TorchOpt" for r in rows):
            rows.append({**common, "library": "TorchOpt", "seconds": torch_s, "speedup_vs_torchopt": 1.0,
                         "compile_s": 0.0, "memory_MiB": torch_memory, "memory_kind": "peak RSS growth (cold call)"})
        print(*rows[first_new:], sep="\n", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--settings", nargs="+", default=["16,4,8", "32,8,16"],
                        help="size,batch,channels per setting (default: an overhead-bound and a compute-bound one)")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--cg-iters", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, checks only")
    args = parser.parse_args()
    try:
        import torch
        import torchopt
    except ImportError:
        print("torch/torchopt are not installed (pip install -e '.[bench]'); skipping")
        return
    if args.smoke:
        args.settings, args.steps, args.cg_iters = ["16,2,4"], 2, 3
    torch.set_num_threads(os.cpu_count())
    t_fns = torch_functions(torch, torchopt, args.steps, args.cg_iters)
    methods = jax_methods(args.steps, args.cg_iters)
    rows, all_checks = [], {}
    for setting in args.settings:
        size, batch, channels = (int(v) for v in setting.split(","))
        batch_np, kernels = problem(size, batch, channels)
        checks = check(torch, t_fns, methods, batch_np, kernels)
        print(f"{setting}: float64 meta-gradient relative difference (metajax vs TorchOpt):", checks, flush=True)
        if max(checks.values()) > 1e-8:
            raise SystemExit(f"meta-gradients disagree: {checks}")
        all_checks[setting] = checks
        if not args.smoke:
            label = f"{size}², batch {batch}, C = {channels}"
            rows += timing(torch, t_fns, methods, batch_np, kernels, checks, args.repeats, label)
    if args.smoke:
        return
    write("bilevel_torchopt", rows, ["setting", "method", "library", "seconds", "speedup_vs_torchopt", "memory_MiB",
                                     "memory_kind", "compile_s", "float64_grad_rel_diff"],
          note=f"CNN 1→C→C→1 (3×3, tanh, no bias); K = {args.steps} SGD steps (MAML lr {LR}; iMAML lr {IMAML_LR}, "
               f"λ = {LAM}), CG {args.cg_iters} iterations; float32, median of {args.repeats}, round-robin; "
               f"torch {torch.__version__}, torchopt {torchopt.__version__}, {torch.get_num_threads()} threads",
          extra={"torch": torch.__version__, "torchopt": torchopt.__version__, "checks": all_checks})


if __name__ == "__main__":
    main()
