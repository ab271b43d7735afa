"""Multi-coil DCNet training-step throughput: metajax against the same network in PyTorch eager.

    pip install -e ".[bench]"                              # torch==2.13.0 (CPU build), never a core dependency
    python benchmarks/peers/dcnet_multicoil_torch.py       # 2 simulated 256² 8-coil slices per step
    python benchmarks/peers/dcnet_multicoil_torch.py --smoke   # the float64 agreement check only

The network is ``chest_mc_dcnet``'s: DCNet with 5 phases, a shared mask-aware
7-layer 16-channel CNN and ``cg_iters`` CG iterations of multi-coil data
consistency, κ = 2·sigmoid(ω); the step is the training step of
:mod:`metajax.engine.multicoil` — loss ``mean log(‖f(y) − x‖² / ‖x‖²)`` over a
batch of 2 simulated acquisitions (8 coils, fastMRI equispaced 4× and 8×) and
its gradient with respect to every parameter. PyTorch runs the same
operations (FFT-based SENSE operator, the same CG recursion) on one batch
tensor; its float64 loss and gradient are checked against metajax's first.
Median of ``--repeats`` round-robin rounds after a warm-up. Writes
results/dcnet_multicoil_torch.{json,md}.
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import peak_rss_growth, peer_arguments, round_robin, write  # noqa: E402

from metajax import data, masks  # noqa: E402
from metajax.bilevel import TaskWeighted  # noqa: E402
from metajax.data import simulate_multicoil  # noqa: E402
from metajax.models import DCNet  # noqa: E402
from metajax.operators import MultiCoilMRI, calibration_shape, espirit, espirit_kernel  # noqa: E402

try:
    import torch
    import torch.nn.functional as F
except ImportError:  # the optional `bench` extra
    torch = None


def fft2c(x):
    return torch.fft.fftshift(torch.fft.fft2(torch.fft.ifftshift(x, dim=(-2, -1)), norm="ortho"), dim=(-2, -1))


def ifft2c(k):
    return torch.fft.fftshift(torch.fft.ifft2(torch.fft.ifftshift(k, dim=(-2, -1)), norm="ortho"), dim=(-2, -1))


class TorchMultiCoilDCNet:
    """The multi-coil DCNet forward pass for a batch: masks (B, H, W), maps (B, C, H, W), y (B, C, H, W)."""

    def __init__(self, model: TaskWeighted, dtype):
        net = model.net
        tensor = lambda a: torch.tensor(np.asarray(a), dtype=dtype, requires_grad=True)  # noqa: E731
        self.kernels = [tensor(np.asarray(k).transpose(3, 2, 0, 1)) for k in net.cnn.kernels]  # HWIO → OIHW
        self.biases = [tensor(b) for b in net.cnn.biases]
        self.mu_raw = tensor(net.mu_raw)
        self.omega = tensor(model.omega)
        self.cg_iters = net.phase.cg_iters
        self.dtype = dtype

    def parameters(self):
        return [*self.kernels, *self.biases, self.mu_raw, self.omega]

    def cnn(self, x, u):
        h = torch.stack([x.real, x.imag, u.real, u.imag], 1)
        for i, (k, b) in enumerate(zip(self.kernels, self.biases)):
            h = F.conv2d(h, k, b, padding=k.shape[-1] // 2)
            if i < len(self.kernels) - 1:
                h = F.relu(h)
        return torch.complex(h[:, 0], h[:, 1])

    def __call__(self, masks_, maps, y, task):
        def forward(x):
            return torch.where(masks_[:, None], fft2c(maps * x[:, None]), 0)

        def adjoint(k):
            return torch.sum(torch.conj(maps) * ifft2c(torch.where(masks_[:, None], k, 0)), dim=1)

        def vdot(a, b):
            return torch.sum(torch.real(torch.conj(a) * b), dim=(-2, -1))

        tiny = torch.finfo(self.dtype).tiny
        mu = tiny + F.softplus(self.mu_raw)
        kappa = 2 * torch.sigmoid(self.omega[task])[:, None, None]
        x = adjoint(y)
        for m in mu:
            normal = adjoint(forward(x))
            z = x + kappa * self.cnn(x, x - normal)
            apply = lambda v: adjoint(forward(v)) + m * v  # noqa: E731
            xk = z
            r = adjoint(y) + m * z - apply(z)
            p, rr = r, vdot(r, r)
            for _ in range(self.cg_iters):
                ap = apply(p)
                step = (rr / torch.clamp(vdot(p, ap), min=tiny))[:, None, None]
                xk, r = xk + step * p, r - step * ap
                rr_new = vdot(r, r)
                p = r + (rr_new / torch.clamp(rr, min=tiny))[:, None, None] * p
                rr = rr_new
            x = xk
        return x


def problem(dtype, size=256):
    """Two simulated acquisitions (4× and 8×) with ESPIRiT maps, measurements scaled as in training."""
    complex_dtype = jnp.complex128 if dtype == jnp.float64 else jnp.complex64
    out = {"y": [], "maps": [], "target": [], "mask": []}
    for i, (acc, cf) in enumerate(((4.0, 0.08), (8.0, 0.04 if size >= 256 else 0.08))):
        image = jnp.asarray(np.asarray(data.chest_images()[i][:: 256 // size, :: 256 // size]), dtype)
        sim = simulate_multicoil(jax.random.key(i), image, 8, 30.0)
        mask = masks.fastmri_equispaced(jax.random.key(i), (size, size), acc, cf)
        calib = calibration_shape(mask)
        maps = espirit(sim.kspace, calib, kernel=espirit_kernel(calib))
        y = jnp.where(mask, sim.kspace, 0)
        s = jnp.max(jnp.abs(MultiCoilMRI(mask, maps).adjoint(y)))
        out["y"].append(y / s)
        out["maps"].append(maps)
        out["target"].append(jnp.sum(jnp.conj(maps) * sim.maps * sim.image, 0) / s)
        out["mask"].append(mask)
    return {k: jnp.stack(v).astype(complex_dtype if k != "mask" else bool) for k, v in out.items()}


def jax_loss(model, batch):
    def one(y, maps, mask, target, task):
        x = model(MultiCoilMRI(mask, maps), y, task)
        return jnp.log(jnp.sum(jnp.abs(x - target) ** 2) / jnp.sum(jnp.abs(target) ** 2))

    return jnp.mean(jax.vmap(one)(batch["y"], batch["maps"], batch["mask"], batch["target"], jnp.arange(2)))


def torch_step(model, batch, dtype):
    tnet = TorchMultiCoilDCNet(model, dtype)
    t = {k: torch.tensor(np.asarray(v)) for k, v in batch.items()}
    task = torch.arange(2)

    def step():
        x = tnet(t["mask"], t["maps"], t["y"], task)
        loss = torch.mean(torch.log(torch.sum(torch.abs(x - t["target"]) ** 2, dim=(-2, -1))
                                    / torch.sum(torch.abs(t["target"]) ** 2, dim=(-2, -1))))
        return loss, torch.autograd.grad(loss, tnet.parameters())

    return step


def network(dtype, layers=7, channels=16, cg_iters=6):
    key = jax.random.key(0)
    net = DCNet(key, 5, layers=layers, channels=channels, cg_iters=cg_iters, mask_aware=True, dtype=dtype)
    leaves, treedef = jax.tree.flatten(net.cnn)  # a non-zero last layer, so every gradient is non-zero
    keys = jax.random.split(key, len(leaves))
    net = eqx.tree_at(lambda n: n.cnn, net, jax.tree.unflatten(
        treedef, [a + 0.02 * jax.random.normal(k, a.shape, a.dtype) for a, k in zip(leaves, keys)]))
    return TaskWeighted(net, 2, jnp.asarray([0.3, -0.2], dtype), dtype=dtype)


def check_agreement() -> float:
    with jax.enable_x64(True):
        model = network(jnp.float64, layers=3, channels=4, cg_iters=3)
        batch = problem(jnp.float64, size=64)
        value, grad = eqx.filter_value_and_grad(jax_loss)(model, batch)
        t_value, t_grads = torch_step(model, batch, torch.float64)()
        ours = [*[np.asarray(k).transpose(3, 2, 0, 1) for k in grad.net.cnn.kernels],
                *[np.asarray(b) for b in grad.net.cnn.biases], np.asarray(grad.net.mu_raw), np.asarray(grad.omega)]
        error = max(float(np.max(np.abs(a - b.numpy())) / (np.max(np.abs(a)) + 1e-300)) for a, b in zip(ours, t_grads))
        return max(error, abs(float(value) - t_value.item()) / abs(float(value)))


def main() -> None:
    args = peer_arguments(__doc__, torch, check_agreement)
    if args is None:
        return
    model = network(jnp.float32)
    batch = problem(jnp.float32)
    compiled = eqx.filter_jit(eqx.filter_value_and_grad(jax_loss))
    runs = {"metajax (jit, vmap over the batch)": lambda: jax.block_until_ready(compiled(model, batch)),
            "PyTorch eager": torch_step(model, batch, torch.float32)}
    for fn in runs.values():
        fn()
    memory = {"PyTorch eager": peak_rss_growth(runs["PyTorch eager"])}
    samples = round_robin(runs, args.repeats)
    reference = statistics.median(samples["PyTorch eager"])
    rows = [{"variant": name, "step_s": statistics.median(t), "images_per_s": 2 / statistics.median(t),
             "vs_pytorch": reference / statistics.median(t), "memory_MiB": memory.get(name, float("nan"))}
            for name, t in samples.items()]
    write("dcnet_multicoil_torch", rows, ["variant", "step_s", "images_per_s", "vs_pytorch", "memory_MiB"],
          note=f"Multi-coil training step (loss + gradient), 2 simulated 256² 8-coil slices, float32, 5 phases × "
               f"7 layers × 16 channels, 6 CG iterations; median of {args.repeats} rounds. vs_pytorch > 1: metajax "
               f"faster. float64 agreement with PyTorch: {args.agreement:.1e}.", extra={"agreement_float64": args.agreement})


if __name__ == "__main__":
    main()
