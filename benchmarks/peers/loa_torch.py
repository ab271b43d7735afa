"""LOA training step: metajax against the same algorithm in PyTorch eager, in one process.

    pip install -e ".[bench]"                      # torch==2.13.0 (CPU build), never a core dependency
    python benchmarks/peers/loa_torch.py           # 128² batch 4 and 256² batch 1, T = 11
    python benchmarks/peers/loa_torch.py --smoke   # seconds: the checks only, tiny sizes (CI; skips without torch)

:class:`TorchLOA` is Algorithm 1 exactly as :class:`metajax.models.LOA` runs it —
same parametrisation (softplus steps, ε floor, curvature-scaled steps), same
constants, same branch tests on detached values, same backtracking semantics
(a batch keeps stepping while any image still searches), and the same work
per phase (∇R at z; φ and ∇φ at x from one pass; φ at u and at each trial v;
∇φ at the new point for the ε rule) — written as a PyTorch user would, with
``torch.autograd.grad(create_graph=True)`` for the gradient steps, so the
training step is a double backward. Weights are copied from metajax.

Before timing, in one process: one phase from the same state agrees to float32
rounding; every branch decision of the whole float32 forward pass matches; the
float64 losses agree; the float64 gradients agree. Then the training step
(mean-squared loss + gradient w.r.t. all LOA parameters) is timed round-robin
after a warm-up for metajax ``Autodiff()`` (the default), ``MLM()`` and
``Autodiff(scan_unroll=True)`` against PyTorch eager with
``torch.set_num_threads(os.cpu_count())``; XLA temp memory and PyTorch's peak
RSS growth are reported. Writes results/loa_torch.{json,md}.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import peak_rss_growth, round_robin, write  # noqa: E402

from metajax import data, masks  # noqa: E402
from metajax.adjoint import MLM, Autodiff  # noqa: E402
from metajax.models import LOA  # noqa: E402
from metajax.models.loa import BRANCH_ACCEPT_U, BRANCH_BACKTRACK, BRANCH_EXHAUSTED  # noqa: E402
from metajax.operators import SingleCoilMRI  # noqa: E402

try:
    import torch
    import torch.nn.functional as F
except ImportError:  # the optional `bench` extra
    torch = None

VARIANTS = {"autodiff": Autodiff(), "mlm": MLM(), "autodiff-unrolled": Autodiff(scan_unroll=True)}


# ------------------------------------------------------------------ the same LOA in PyTorch


class TorchLOA:
    """Algorithm 1 for a batch of single-coil MRI measurements, parameters copied from a metajax ``LOA``."""

    def __init__(self, net: LOA, dtype):
        self.dtype = dtype
        tensor = lambda a: torch.tensor(np.asarray(a), dtype=dtype, requires_grad=True)  # noqa: E731
        self.kernels_re = [tensor(k) for k in net.features.kernels_re]
        self.kernels_im = [tensor(k) for k in net.features.kernels_im]
        self.alpha_raw, self.tau_raw, self.eps0_raw = tensor(net.alpha_raw), tensor(net.tau_raw), tensor(net.eps0_raw)
        self.delta = net.features.delta
        self.phase = net.phase

    def parameters(self):
        return [*self.kernels_re, *self.kernels_im, self.alpha_raw, self.tau_raw, self.eps0_raw]

    # -- pieces
    def positive(self, raw, floor=None):
        return (torch.finfo(self.dtype).tiny if floor is None else floor) + F.softplus(raw)

    def blocks(self):
        return [torch.cat([torch.cat([kr, -ki], 1), torch.cat([ki, kr], 1)], 0)
                for kr, ki in zip(self.kernels_re, self.kernels_im)]

    def linear_gain(self, slope, grid=32):
        size = self.kernels_re[0].shape[-1]
        offsets = torch.arange(size, dtype=self.dtype) - size // 2
        omega = 2 * torch.pi * torch.arange(grid, dtype=self.dtype) / grid
        angle = omega[:, None, None, None] * offsets[None, None, :, None] + omega[None, :, None, None] * offsets
        phase = torch.polar(torch.ones_like(angle), -angle)
        response = None
        for kr, ki in zip(self.kernels_re, self.kernels_im):
            layer = torch.einsum("oiab,uvab->uvoi", torch.complex(kr, ki), phase)
            response = layer if response is None else slope * torch.einsum("uvoi,uvij->uvoj", layer, response)
        return torch.sqrt(torch.max(torch.sum(response.abs() ** 2, dim=-2)))

    def features(self, x, blocks):
        h = torch.stack([x.real, x.imag], 1)
        for i, block in enumerate(blocks):
            h = F.conv2d(h, block, padding=block.shape[-1] // 2)
            if i < len(blocks) - 1:
                d = self.delta
                h = torch.where(h <= -d, torch.zeros_like(h), torch.where(h >= d, h, h**2 / (4 * d) + h / 2 + d / 4))
        return h

    def regularizer(self, x, eps, kappa, blocks):
        """R_ε per image, (B,)."""
        squared = torch.sum(self.features(x, blocks) ** 2, 1)
        return kappa * torch.sum(torch.sqrt(squared + eps[:, None, None] ** 2) - eps[:, None, None], (1, 2))

    def value_and_grad_r(self, x, eps, kappa, blocks, create_graph):
        with torch.enable_grad():
            if not x.requires_grad:
                x = x.detach().requires_grad_(True)
            value = self.regularizer(x, eps, kappa, blocks)
            (grad,) = torch.autograd.grad(value.sum(), x, create_graph=create_graph)
        return value, grad  # torch's gradient of a real function of complex x is ∂/∂Re + i ∂/∂Im

    @staticmethod
    def forward_op(x, mask):
        return mask * torch.fft.fftshift(torch.fft.fft2(torch.fft.ifftshift(x, dim=(-2, -1)), norm="ortho"),
                                         dim=(-2, -1))

    @staticmethod
    def adjoint_op(k, mask):
        return torch.fft.fftshift(torch.fft.ifft2(torch.fft.ifftshift(mask * k, dim=(-2, -1)), norm="ortho"),
                                  dim=(-2, -1))

    # -- one phase, batched
    def step(self, x, eps, t, y, mask, kappa, blocks, gain2):
        ph = self.phase
        sqnorm = lambda v: torch.sum(v.real**2 + v.imag**2, (-2, -1))  # noqa: E731
        alpha_t = self.positive(self.alpha_raw)[t]
        tau_t = self.positive(self.tau_raw)[t]
        if ph.curvature_steps:
            curvature = kappa * gain2 * (1 / eps + 1 / (2 * self.delta))
            tau, alpha_v = tau_t / (1 + tau_t * curvature), alpha_t / (1 + alpha_t * curvature)
        else:
            tau, alpha_v = tau_t.expand_as(eps), alpha_t.expand_as(eps)
        residual = self.forward_op(x, mask) - y
        grad_f = self.adjoint_op(residual, mask)
        z = x - alpha_t * grad_f
        u = z - tau[:, None, None] * self.value_and_grad_r(z, eps, kappa, blocks, True)[1]
        r_x, grad_rx = self.value_and_grad_r(x, eps, kappa, blocks, True)
        grad_x = grad_f + grad_rx
        phi_x = 0.5 * sqnorm(residual) + r_x
        with torch.no_grad():
            xc, uc, gc, av, eps_c, phi_xc = (a.detach() for a in (x, u, grad_x, alpha_v, eps, phi_x))
            energy = lambda v: 0.5 * sqnorm(self.forward_op(v, mask) - y) + self.regularizer(v, eps_c, kappa, blocks)  # noqa: E731,E501
            norm = lambda v: torch.sqrt(sqnorm(v))  # noqa: E731
            phi_u = energy(uc)
            accept = (norm(gc) <= ph.a * norm(uc - xc)) & (phi_u - phi_xc <= -sqnorm(uc - xc) / ph.a)
            j = torch.full_like(eps_c, -1, dtype=torch.long)
            found, phi_v = accept.clone(), phi_u.clone()
            while True:
                active = ~found & (j < ph.max_backtracks - 1)
                if not bool(active.any()):
                    break
                j = torch.where(active, j + 1, j)
                trial = (av * ph.rho ** j.to(self.dtype))[:, None, None] * gc
                e = energy(xc - trial)
                found = torch.where(active, e - phi_xc <= -sqnorm(trial) / ph.a, found)
                phi_v = torch.where(active, e, phi_v)
            backtrack = found & ~accept
            exponent = j.clamp(min=0).to(self.dtype)
            pick = lambda u_, v_, x_: torch.where(accept[:, None, None], u_, torch.where(backtrack[:, None, None], v_, x_))  # noqa: E731,E501
            x_new_c = pick(uc, xc - (av * ph.rho**exponent)[:, None, None] * gc, xc)
            grad_new = self.adjoint_op(self.forward_op(x_new_c, mask) - y, mask) + \
                self.value_and_grad_r(x_new_c, eps_c, kappa, blocks, False)[1]
            shrink = norm(grad_new) < ph.sigma * ph.gamma * eps_c
        branch = torch.where(accept, BRANCH_ACCEPT_U, torch.where(backtrack, BRANCH_BACKTRACK, BRANCH_EXHAUSTED))
        x_new = pick(u, x - (alpha_v * ph.rho**exponent)[:, None, None] * grad_x, x)
        eps_new = torch.where(shrink, torch.clamp(ph.gamma * eps, min=ph.eps_min), eps)
        return x_new, eps_new, branch

    def __call__(self, y, mask, kappa):
        """Reconstruct a batch (B, H, W) of measurements; returns ``(x_T, branches (T, B))``."""
        blocks = self.blocks()
        gain2 = self.linear_gain(self.phase.curvature_slope) ** 2 if self.phase.curvature_steps else None
        x = self.adjoint_op(y, mask)
        eps = self.positive(self.eps0_raw, self.phase.eps_min).expand(y.shape[0])
        branches = []
        for t in range(self.alpha_raw.shape[0]):
            x, eps, branch = self.step(x, eps, t, y, mask, kappa, blocks, gain2)
            branches.append(branch)
        return x, torch.stack(branches)


# ------------------------------------------------------------------ benchmark


def problem(size, batch, dtype):
    images = data.default_images(batch, size)
    mask = np.asarray(masks.radial(jax.random.key(0), (size, size), 0.2))
    return images, mask


def jax_step(net, images, mask, adjoint, dtype):
    complex_dtype = jnp.complex128 if dtype == jnp.float64 else jnp.complex64
    x = jnp.asarray(images, complex_dtype)
    op = SingleCoilMRI(mask)
    ys = op(x)
    params, static = eqx.partition(net, eqx.is_inexact_array)

    def loss(params):
        n = eqx.combine(params, static)
        return jnp.mean(jnp.abs(jax.vmap(lambda y: n(op, y, 0.0, adjoint=adjoint))(ys) - x) ** 2)

    return jax.jit(jax.value_and_grad(loss)), params, op, ys


def torch_step(model: TorchLOA, images, mask, dtype):
    complex_dtype = torch.complex128 if dtype == torch.float64 else torch.complex64
    x = torch.tensor(images).to(complex_dtype)
    mask_t = torch.tensor(mask)
    y = TorchLOA.forward_op(x, mask_t)
    kappa = torch.sigmoid(torch.tensor(0.0, dtype=dtype))

    def step():
        for p in model.parameters():
            p.grad = None
        out, branches = model(y, mask_t, kappa)
        loss = torch.mean((out - x).abs() ** 2)
        loss.backward()
        return loss.detach(), [p.grad for p in model.parameters()], branches

    return step, y, mask_t, kappa


def cast(net, dtype):
    return jax.tree.map(lambda a: a.astype(dtype) if eqx.is_inexact_array(a) else a, net)


def relative(a, b) -> float:
    a, b = np.asarray(a), np.asarray(b)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-300))


def checks(net, size, batch) -> dict:
    """Agreement of the two implementations (the numbers in the JSON's ``checks``)."""
    images, mask = problem(size, batch, None)
    out = {}
    # One phase from the same state, float32.
    net32 = cast(net, jnp.float32)
    model = TorchLOA(net32, torch.float32)
    op = SingleCoilMRI(mask)
    ys = op(jnp.asarray(images, jnp.complex64))

    def one_phase(y):
        u0, params = net32.phase_inputs(op, y, 0.0)
        return net32.phase.step(u0, jax.tree.map(lambda a: a[0], net32.thetas), params)[0][0]

    x1 = jax.vmap(one_phase)(ys)
    y_t = torch.tensor(np.asarray(ys))
    mask_t = torch.tensor(mask)
    kappa = torch.sigmoid(torch.tensor(0.0))
    with torch.no_grad():
        blocks = model.blocks()
        gain2 = model.linear_gain(net.phase.curvature_slope) ** 2
        x0 = model.adjoint_op(y_t, mask_t)
        eps0 = model.positive(model.eps0_raw, net.phase.eps_min).expand(batch)
    x1_t = model.step(x0, eps0, 0, y_t, mask_t, kappa, blocks, gain2)[0].detach().numpy()
    out["one_phase_float32_relative"] = relative(x1_t, x1)
    # Every branch decision of the whole float32 forward pass.
    info = jax.vmap(lambda y: net32.trace(op, y, 0.0)[1])(ys)
    with torch.no_grad():
        branches_t = model(y_t, mask_t, kappa)[1].numpy()
    out["branch_decisions"] = int(branches_t.size)
    out["branch_mismatches"] = int(np.sum(branches_t != np.asarray(info["branch"]).T))
    # float64 losses and gradients.
    with jax.enable_x64(True):
        net64 = cast(net, jnp.float64)
        step64, params64, _, _ = jax_step(net64, images, mask, Autodiff(), jnp.float64)
        loss64, grads64 = step64(params64)
        model64 = TorchLOA(net64, torch.float64)
        loss_t, grads_t, _ = torch_step(model64, images, mask, torch.float64)[0]()
        jax_grads = [*grads64.features.kernels_re, *grads64.features.kernels_im, grads64.alpha_raw,
                     grads64.tau_raw, grads64.eps0_raw]
        out["loss_float64_relative"] = abs(float(loss_t) - float(loss64)) / abs(float(loss64))
        out["gradient_float64_relative"] = max(relative(g_t.numpy(), g) for g_t, g in zip(grads_t, jax_grads))
    return out


def timing(net, size, batch, rounds, variants) -> list[dict]:
    images, mask = problem(size, batch, None)
    steps, rows = {}, {}
    for name in variants:
        fn, params, _, _ = jax_step(net, images, mask, VARIANTS[name], jnp.float32)
        start = time.perf_counter()
        compiled = fn.lower(params).compile()
        compile_s = time.perf_counter() - start
        jax.block_until_ready(compiled(params))
        steps[name] = lambda c=compiled, p=params: jax.block_until_ready(c(p))
        rows[name] = {"compile_s": compile_s, "memory_MiB": compiled.memory_analysis().temp_size_in_bytes / 2**20,
                      "memory_kind": "XLA temp"}
    model = TorchLOA(net, torch.float32)
    torch_fn = torch_step(model, images, mask, torch.float32)[0]
    torch_fn()  # warm-up
    steps["pytorch-eager"] = torch_fn
    rows["pytorch-eager"] = {"compile_s": 0.0, "memory_MiB": peak_rss_growth(torch_fn), "memory_kind": "peak RSS growth"}
    samples = round_robin(steps, rounds)
    torch_s = statistics.median(samples["pytorch-eager"])
    out = []
    for name, row in rows.items():
        seconds = statistics.median(samples[name])
        out.append({"size": size, "batch": batch, "variant": name, "seconds": seconds,
                    "speed_vs_pytorch": torch_s / seconds, **row})
        print(f"{size}² batch {batch} {name:18s} {seconds:.3f} s  ({torch_s / seconds:.2f}× PyTorch's speed)",
              flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cases", nargs="+", default=["128x4", "256x1"], help="SIZExBATCH")
    parser.add_argument("--phases", type=int, default=11)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--preset", choices=["default", "paper"], default="default")
    parser.add_argument("--smoke", action="store_true", help="checks only, 32² batch 2, T = 3 (seconds)")
    parser.add_argument("--name", default="loa_torch")
    args = parser.parse_args()
    if torch is None:
        print("SKIP: PyTorch is not installed (pip install -e '.[bench]' installs torch==2.13.0)")
        return
    torch.set_num_threads(os.cpu_count())
    build = LOA if args.preset == "default" else LOA.paper
    net = build(jax.random.key(1), num_phases=3 if args.smoke else args.phases)
    found = checks(net, 32 if args.smoke else 64, 2)
    print("checks:", found, flush=True)
    if args.smoke:
        assert found["one_phase_float32_relative"] < 1e-5 and found["branch_mismatches"] == 0, found
        assert found["loss_float64_relative"] < 1e-12 and found["gradient_float64_relative"] < 1e-9, found
        return
    rows = []
    for case in args.cases:
        size, batch = (int(v) for v in case.split("x"))
        rows += timing(net, size, batch, args.rounds, args.variants)
    write(args.name, rows, ["size", "batch", "variant", "seconds", "speed_vs_pytorch", "compile_s", "memory_MiB",
                            "memory_kind"],
          note=f"LOA ({args.preset}), T = {args.phases}, one training step (loss + gradient w.r.t. all parameters), "
               f"median of {args.rounds} round-robin rounds after warm-up; torch {torch.__version__}, "
               f"{torch.get_num_threads()} threads. Checks (float32 one phase, branch decisions, float64 loss and "
               f"gradient): {found}", extra={"checks": found, "preset": args.preset, "torch": torch.__version__})


if __name__ == "__main__":
    main()
