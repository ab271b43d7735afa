"""DCNet training-step throughput and memory: against the default LOA and against the same DCNet in PyTorch eager.

    pip install -e ".[bench]"                        # torch==2.13.0 (CPU build), never a core dependency
    python benchmarks/peers/dcnet_torch.py           # 256² chest images, 4 images per step (one per task)
    python benchmarks/peers/dcnet_torch.py --smoke   # seconds: the float64 agreement check only (CI; skips without torch)

One process, one batch of the embedded chest images with their pseudo-radial
masks (one image per 10/20/30/40 % task, as a training step of the engine
sees), supervised loss ``Σ‖f(y) − x‖²`` and its gradient with respect to every
parameter. Rows (median of ``--repeats`` round-robin rounds after a warm-up):

- metajax DCNet of the shipped model (``preset=long``: 5 phases, 7 layers × 16
  channels) with the images one at a time (``lax.map``, the engine's
  ``trainer.map_batch=1``) and all at once (``vmap``);
- metajax DCNet of the README main job (``preset=quick``: 4 phases, 5 × 16);
- metajax's default LOA of the engine (``model=loa``: 5 phases, 3 × 4, Autodiff);
- the shipped DCNet in PyTorch eager (the same phases: residual CNN on
  [Re, Im], closed-form k-space data consistency; the batch as one NCHW
  tensor), weights copied from metajax; before timing, its float64 loss and
  gradient are checked against metajax's.

Reports images/s, the ratio to the shipped DCNet (lax.map) and XLA temp
memory (``memory_analysis``) or PyTorch's peak-RSS growth. Writes
results/dcnet_torch.{json,md}.
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

from metajax import bilevel, data  # noqa: E402
from metajax.models import LOA, DCNet  # noqa: E402
from metajax.operators import SingleCoilMRI  # noqa: E402

try:
    import torch
    import torch.nn.functional as F
except ImportError:  # the optional `bench` extra
    torch = None

RATIOS = (0.1, 0.2, 0.3, 0.4)
SHIPPED = {"phases": 5, "layers": 7, "channels": 16}
QUICK = {"phases": 4, "layers": 5, "channels": 16}


class TorchDCNet:
    """The DCNet forward pass for a batch (B, H, W) of one mask per image, parameters copied from metajax."""

    def __init__(self, net: DCNet, dtype):
        tensor = lambda a: torch.tensor(np.asarray(a), dtype=dtype, requires_grad=True)  # noqa: E731
        self.kernels = [tensor(np.asarray(k).transpose(3, 2, 0, 1)) for k in net.cnn.kernels]  # HWIO → OIHW
        self.biases = [tensor(b) for b in net.cnn.biases]
        self.mu_raw = tensor(net.mu_raw)
        self.dtype = dtype

    def parameters(self):
        return [*self.kernels, *self.biases, self.mu_raw]

    @staticmethod
    def fft2c(x):
        return torch.fft.fftshift(torch.fft.fft2(torch.fft.ifftshift(x, dim=(-2, -1)), norm="ortho"), dim=(-2, -1))

    @staticmethod
    def ifft2c(k):
        return torch.fft.fftshift(torch.fft.ifft2(torch.fft.ifftshift(k, dim=(-2, -1)), norm="ortho"), dim=(-2, -1))

    def cnn(self, x):
        h = torch.stack([x.real, x.imag], 1)
        for i, (k, b) in enumerate(zip(self.kernels, self.biases)):
            h = F.conv2d(h, k, b, padding=k.shape[-1] // 2)
            if i < len(self.kernels) - 1:
                h = F.relu(h)
        return torch.complex(h[:, 0], h[:, 1])

    def __call__(self, masks, y):
        mu = torch.finfo(self.dtype).tiny + F.softplus(self.mu_raw)
        x = self.ifft2c(y)
        for m in mu:
            k = self.fft2c(x + self.cnn(x))
            x = self.ifft2c(torch.where(masks, (y + m * k) / (1 + m), k))
        return x


def batch(dtype):
    images = data.chest_images()[:len(RATIOS)]
    complex_dtype = jnp.complex128 if dtype == jnp.float64 else jnp.complex64
    x = jnp.asarray(images, complex_dtype)
    masks = jnp.stack([jnp.asarray(data.pseudo_radial_mask(r)) for r in RATIOS])
    operators = jax.vmap(SingleCoilMRI)(masks)
    y = jax.vmap(lambda op, v: op(v))(operators, x)
    return operators, x, y


def jax_step(net, operators, x, y, map_batch):
    model = bilevel.Shared(net)
    params, static = eqx.partition(model, eqx.is_inexact_array)
    tasks = bilevel.TaskBatch(operators, x[:, None], y[:, None], jnp.arange(len(x)))

    def loss(p):
        return jnp.mean(bilevel.supervised_loss(eqx.combine(p, static), tasks, batch_size=map_batch))

    step = jax.jit(jax.value_and_grad(loss))
    compiled = step.lower(params).compile()
    return (lambda: jax.block_until_ready(compiled(params))), compiled.memory_analysis().temp_size_in_bytes / 2**20


def torch_step(net, operators, x, y, dtype):
    tnet = TorchDCNet(net, dtype)
    masks = torch.tensor(np.asarray(operators.mask))
    ty = torch.tensor(np.asarray(y))
    tx = torch.tensor(np.asarray(x))

    def step():
        loss = torch.mean(torch.sum(torch.abs(tnet(masks, ty) - tx) ** 2, dim=(-2, -1)))
        grads = torch.autograd.grad(loss, tnet.parameters())
        return loss, grads

    return tnet, step


def perturbed(net, key):
    """Random (non-zero) last layer so the gradient reaches every layer, as after a few training steps."""
    leaves, treedef = jax.tree.flatten(net.cnn)
    keys = jax.random.split(key, len(leaves))
    return eqx.tree_at(lambda n: n.cnn, net, jax.tree.unflatten(
        treedef, [a + 0.02 * jax.random.normal(k, a.shape, a.dtype) for a, k in zip(leaves, keys)]))


def check_agreement() -> float:
    """Relative difference of the float64 loss and gradient, metajax against PyTorch."""
    with jax.enable_x64(True):
        net = perturbed(DCNet(jax.random.key(0), 2, layers=3, channels=4, dtype=jnp.float64), jax.random.key(1))
        operators, x, y = batch(jnp.float64)
        x, y = x[:, ::4, ::4], None  # 64² keeps the check fast
        masks = operators.mask[:, ::4, ::4]
        operators = jax.vmap(SingleCoilMRI)(masks)
        y = jax.vmap(lambda op, v: op(v))(operators, x)
        model = bilevel.Shared(net)
        params, static = eqx.partition(model, eqx.is_inexact_array)
        tasks = bilevel.TaskBatch(operators, x[:, None], y[:, None], jnp.arange(len(x)))
        value, grad = jax.value_and_grad(lambda p: jnp.mean(bilevel.supervised_loss(eqx.combine(p, static),
                                                                                    tasks)))(params)
        tnet, step = torch_step(net, operators, x, y, torch.float64)
        t_value, t_grads = step()
        g = {"kernels": [np.asarray(k).transpose(3, 2, 0, 1) for k in grad.net.cnn.kernels],
             "biases": [np.asarray(b) for b in grad.net.cnn.biases], "mu": np.asarray(grad.net.mu_raw)}
        ours = [*g["kernels"], *g["biases"], g["mu"]]
        error = max(float(np.max(np.abs(a - b.numpy())) / (np.max(np.abs(a)) + 1e-300)) for a, b in zip(ours, t_grads))
        loss_error = abs(float(value) - t_value.item()) / abs(float(value))
    return max(error, loss_error)


def main() -> None:
    args = peer_arguments(__doc__, torch, check_agreement)
    if args is None:
        return
    operators, x, y = batch(jnp.float32)
    key = jax.random.key(0)
    shipped = perturbed(DCNet(key, SHIPPED["phases"], SHIPPED["layers"], SHIPPED["channels"]), key)
    quick = perturbed(DCNet(key, QUICK["phases"], QUICK["layers"], QUICK["channels"]), key)
    loa = LOA(key, 5, features=4, layers=3)
    runs, memory = {}, {}
    for name, net, map_batch in (("DCNet shipped, lax.map", shipped, 1), ("DCNet shipped, vmap", shipped, None),
                                 ("DCNet quick, lax.map", quick, 1), ("LOA default (T=5, 3×4)", loa, 1)):
        runs[name], memory[name] = jax_step(net, operators, x, y, map_batch)
    _, t_step = torch_step(shipped, operators, x, y, torch.float32)
    runs["DCNet shipped, PyTorch eager"] = t_step
    for fn in runs.values():  # warm-up
        fn()
    memory["DCNet shipped, PyTorch eager"] = peak_rss_growth(t_step)
    samples = round_robin(runs, args.repeats)
    reference = statistics.median(samples["DCNet shipped, lax.map"])
    rows = []
    for name, times in samples.items():
        seconds = statistics.median(times)
        kind = "peak RSS growth" if "PyTorch" in name else "XLA temp"
        rows.append({"variant": name, "step_s": seconds, "images_per_s": len(x) / seconds,
                     "vs_shipped_lax_map": reference / seconds, "memory_MiB": memory[name], "memory_kind": kind})
    write("dcnet_torch", rows, ["variant", "step_s", "images_per_s", "vs_shipped_lax_map", "memory_MiB",
                                "memory_kind"],
          note=f"Training step (loss + gradient), {len(x)} chest images of 256² (one per pseudo-radial task), "
               f"float32; median of {args.repeats} round-robin rounds. vs_shipped_lax_map > 1: faster than the "
               f"shipped DCNet with lax.map. float64 agreement with PyTorch: {args.agreement:.1e}.",
          extra={"agreement_float64": args.agreement})


if __name__ == "__main__":
    main()
