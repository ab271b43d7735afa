"""Meta-Prior (Terris & Moreau 2023): a PDNet meta-trained on four restoration tasks, fine-tuned on unseen ones.

Data: grayscale photographs that scikit-image ships (``skimage.data``; nothing is
downloaded), resized to ``2·size`` and cut into four ``size × size`` quadrants;
``train_photos`` give the training images, ``test_photos`` the test images. MRI:
the embedded chest slices resized to ``size`` (0–69 train, 85–99 test).

Training tasks (noise σ = ``noise_std`` unless said): denoising (σ = 0.1);
TV-prox estimation (input ``x + 0.1·n``, target its TV denoising by
``skimage.restoration.denoise_tv_chambolle`` with weight ``tv_prox_weight``);
Gaussian deblurring (σ_blur = 1.5); inpainting (50 % random pixels). Unseen
tasks: ×2 super-resolution (2×2 area downsampling) and ×4 Cartesian MRI (25 %
of the lines, 8 % centre) on the chest images.

Meta-training is :class:`metajax.bilevel.Implicit` (iMAML) with a supervised
inner and outer loss, one :class:`~metajax.bilevel.TaskGroups` group per
operator type. Fine-tuning on an unseen task: ``finetune_steps`` Adam steps on
``finetune_images`` training images of that task with the supervised loss
``‖f(y) − x‖²`` or the measurement-only loss ``‖A f(y) − y‖²``, started from the
meta-prior θ — against the same network from its random initialisation with
the same steps (training from scratch), the adjoint ``A^H y`` (zero-filled for
MRI) and TV (λ tuned on the fine-tuning images). The PDNet has complex
images (two input channels) so that one network serves natural images
(imaginary part 0) and MRI; metrics are on magnitudes with peak 1.

Writes ``results.md``, ``results.json``, ``finetuning.png`` (test PSNR against
fine-tuning steps) and ``meta_training.png``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import List

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

from metajax import bilevel, data, masks, metrics
from metajax.engine.evaluation import widened_search
from metajax.engine.reproductions.common import Stopwatch, pyplot, write_results
from metajax.models import PDNet, tv_reconstruction
from metajax.operators import (
    Blur,
    Denoising,
    Downsampling,
    Inpainting,
    Scaled,
    SingleCoilMRI,
    gaussian_kernel,
)


@dataclass
class Config:
    name: str = "multitask"
    size: int = 64
    train_photos: List[str] = field(default_factory=lambda: [
        "astronaut", "coffee", "chelsea", "coins", "moon", "rocket", "clock", "grass", "brick", "page",
        "immunohistochemistry", "hubble_deep_field"])
    test_photos: List[str] = field(default_factory=lambda: ["camera", "text", "gravel", "microaneurysms"])
    layers: int = 10
    channels: int = 40
    noise_std: float = 0.01
    tv_prox_weight: float = 0.1
    meta_steps: int = 150
    meta_batch: int = 4  # support and as many query images per task and step
    meta_lr: float = 1e-3
    lam: float = 1.0  # proximal weight of the inner problem
    inner_steps: int = 3
    inner_lr: float = 1e-4  # Adam
    cg_iters: int = 5
    finetune_images: int = 8
    finetune_steps: int = 100
    finetune_lr: float = 1e-3
    eval_at: List[int] = field(default_factory=lambda: [0, 10, 25, 50, 100])
    tv_weights: List[float] = field(default_factory=lambda: [1e-3, 3e-3, 1e-2, 3e-2])
    seed: int = 0


PAPER_SIZE = {"size": 128, "meta_steps": 5000, "meta_batch": 8, "inner_steps": 10, "cg_iters": 10,
              "finetune_images": 32, "finetune_steps": 500, "eval_at": [0, 25, 50, 100, 250, 500]}


def photographs(names, size: int) -> np.ndarray:
    """(4·len(names), size, size) float32 in [0, 1]: each photograph grayscale, resized to 2·size, quartered."""
    import skimage.data
    from skimage.color import rgb2gray, rgba2rgb
    from skimage.transform import resize

    out = []
    for name in names:
        if not hasattr(skimage.data, name):
            raise ValueError(f"`photos`: scikit-image ships no image {name!r}.")
        image = np.asarray(getattr(skimage.data, name)(), np.float64)
        if image.ndim == 3:
            image = rgb2gray(rgba2rgb(image) if image.shape[-1] == 4 else image / 255.0)
        elif image.max() > 1:
            image = image / 255.0
        side = min(image.shape)
        image = resize(image[:side, :side], (2 * size, 2 * size), anti_aliasing=True)
        out += [image[i * size:(i + 1) * size, j * size:(j + 1) * size] for i in range(2) for j in range(2)]
    return data.normalize_per_slice(np.stack(out).astype(np.float32))


def chest(size: int) -> dict:
    from skimage.transform import resize

    images = data.chest_images()
    small = np.stack([resize(im, (size, size), anti_aliasing=True) for im in images]).astype(np.float32)
    small = data.normalize_per_slice(small)
    return {"train": small[:70], "test": small[85:]}


def _noisy(key, y, std):
    noise = jax.random.normal(key, y.shape, jnp.float32) if not jnp.iscomplexobj(y) else \
        (jax.random.normal(key, y.shape + (2,), jnp.float32) @ jnp.array([1, 1j], jnp.complex64))
    return y + std * noise


def make_tasks(c, key):
    """``{name: (operator, train (x, y), test (x, y))}`` of the training and unseen tasks (complex64 images)."""
    from skimage.restoration import denoise_tv_chambolle

    train = jnp.asarray(photographs(c.train_photos, c.size), jnp.complex64)
    test = jnp.asarray(photographs(c.test_photos, c.size), jnp.complex64)
    mr = {k: jnp.asarray(v, jnp.complex64) for k, v in chest(c.size).items()}
    shape = (c.size, c.size)
    keys = iter(jax.random.split(key, 16))
    inpaint = jax.random.uniform(next(keys), shape) < 0.5
    specs = {
        "denoising": (Denoising(), 0.1, None),
        "TV-prox": (Denoising(), 0.1, c.tv_prox_weight),
        "deblurring": (Blur(gaussian_kernel(1.5)), c.noise_std, None),
        "inpainting": (Inpainting(inpaint), c.noise_std, None),
        "super-resolution ×2": (Scaled(Downsampling(2), 2.0), c.noise_std, None),
        "MRI ×4": (SingleCoilMRI(masks.cartesian(next(keys), shape, 0.25)), c.noise_std, None),
    }
    tasks = {}
    for name, (op, std, tv) in specs.items():
        splits = mr if name.startswith("MRI") else {"train": train, "test": test}
        pair = []
        for split in ("train", "test"):
            x = splits[split]
            y = _noisy(next(keys), op(x), std)
            if tv is not None:  # the target is the TV denoising of the noisy input
                x = jnp.asarray(np.stack([denoise_tv_chambolle(np.asarray(v.real), weight=tv) for v in y]),
                                jnp.complex64)
            pair.append((x, y))
        tasks[name] = (op, *pair)
    return tasks


TRAIN_TASKS = ("denoising", "TV-prox", "deblurring", "inpainting")
UNSEEN_TASKS = ("super-resolution ×2", "MRI ×4")


def _batch(op, x, y, index):
    return bilevel.TaskBatch(op, x[index], y[index], jnp.zeros((), jnp.int32))


def _loss(kind):
    return bilevel.supervised_loss if kind == "supervised" else bilevel.measurement_loss


def meta_train(c, tasks, net, log):
    """θ by iMAML over the training tasks (one TaskGroups group per task); returns θ, static and the curve."""
    model = bilevel.Shared(net)
    theta, static = eqx.partition(model, eqx.is_inexact_array)
    method = bilevel.Implicit(lam=c.lam, inner_optimizer=optax.adam(c.inner_lr), inner_steps=c.inner_steps,
                              cg_max_iters=c.cg_iters)
    optimizer = optax.adam(c.meta_lr)
    loss = lambda phi, b: bilevel.supervised_loss(eqx.combine(phi, static), b)  # noqa: E731

    @jax.jit
    def step(theta, opt_state, key):
        groups = []
        for i, name in enumerate(TRAIN_TASKS):
            op, (x, y), _ = tasks[name]
            order = jax.random.permutation(jax.random.fold_in(key, i), x.shape[0])
            support = _batch(op, x, y, order[:c.meta_batch])
            query = _batch(op, x, y, order[c.meta_batch:2 * c.meta_batch])
            groups.append(jax.tree.map(lambda a: a[None], (support, query)))
        grad, info = bilevel.task_mean_gradient(method, lambda p, a: loss(p, a[0]), lambda p, a: loss(p, a[1]),
                                                theta, bilevel.TaskGroups(*groups))
        updates, opt_state = optimizer.update(grad, opt_state, theta)
        return optax.apply_updates(theta, updates), opt_state, jnp.stack([g["outer_loss"][0] for g in info])

    opt_state = optimizer.init(theta)
    curve = []
    for s in range(c.meta_steps):
        theta, opt_state, outer = step(theta, opt_state, jax.random.fold_in(jax.random.key(c.seed + 1), s))
        curve.append(np.asarray(outer).tolist())
        if s == 0 or (s + 1) % max(1, c.meta_steps // 10) == 0:
            log(f"meta-training step {s + 1}/{c.meta_steps}: query loss per task "
                + " / ".join(f"{v:.3g}" for v in curve[-1]))
    return theta, static, curve


def test_psnr(model, op, x, y) -> np.ndarray:
    recon = jax.jit(jax.vmap(lambda v: model(op, v)))(y)
    return np.asarray(metrics.psnr(jnp.abs(recon), jnp.abs(x)), np.float64)


def fine_tune(c, theta, static, task, kind: str, log, label: str):
    """Adam on the ``kind`` loss of the task's first ``finetune_images`` training images from ``theta``; the mean
    test PSNR at the steps ``eval_at`` and the training seconds (compilation excluded)."""
    op, (x, y), (xt, yt) = task
    batch = bilevel.TaskBatch(op, x[:c.finetune_images], y[:c.finetune_images], jnp.zeros((), jnp.int32))
    optimizer = optax.adam(c.finetune_lr)
    loss = _loss(kind)

    def step(p, s):
        value, grad = jax.value_and_grad(lambda q: loss(eqx.combine(q, static), batch))(p)
        updates, s = optimizer.update(grad, s, p)
        return optax.apply_updates(p, updates), s, value

    state = optimizer.init(theta)
    step = jax.jit(step).lower(theta, state).compile()
    curve, seconds, params = {}, 0.0, theta
    for k in range(c.finetune_steps + 1):
        if k in c.eval_at:
            curve[k] = float(np.mean(test_psnr(eqx.combine(params, static), op, xt, yt)))
        if k == c.finetune_steps:
            break
        with Stopwatch() as w:
            params, state, value = step(params, state)
            jax.block_until_ready(value)
        seconds += w.seconds
    log(f"{label}: test PSNR " + ", ".join(f"{k}: {v:.2f}" for k, v in curve.items()) + f" dB ({seconds:.0f} s)")
    return curve, seconds


def baselines(c, task):
    """Adjoint / zero-filled and TV (λ tuned on the fine-tuning images) mean test PSNR."""
    op, (x, y), (xt, yt) = task
    n = c.finetune_images
    adjoint = lambda o, v: o.adjoint(v)  # noqa: E731
    best, _ = widened_search(lambda w: np.mean(np.asarray(metrics.psnr(jnp.abs(tv_reconstruction(op, y[:n], w)),
                                                                        jnp.abs(x[:n])))), c.tv_weights)
    return {"adjoint (zero-filled)": float(np.mean(test_psnr(adjoint, op, xt, yt))),
            f"TV (λ = {best:g})": float(np.mean(np.asarray(metrics.psnr(jnp.abs(tv_reconstruction(op, yt, best)),
                                                                         jnp.abs(xt)))))}


def run(c, out: Path, base_dir=None, log=print) -> str:
    key = jax.random.key(c.seed)
    tasks = make_tasks(c, key)
    net = PDNet(jax.random.fold_in(key, 99), c.layers, channels=c.channels, complex_images=True)
    with Stopwatch() as w:
        theta, static, curve = meta_train(c, tasks, net, log)
    meta_seconds = w.seconds
    scratch, _ = eqx.partition(bilevel.Shared(net), eqx.is_inexact_array)
    rows, curves = [], {}
    for name in (*TRAIN_TASKS, *UNSEEN_TASKS):  # the meta-prior itself, no fine-tuning
        op, _, (xt, yt) = tasks[name]
        rows.append({"task": name, "method": "meta-prior, no fine-tuning", "steps": 0,
                     "psnr": float(np.mean(test_psnr(eqx.combine(theta, static), op, xt, yt)))})
    for name in UNSEEN_TASKS:
        for method, value in baselines(c, tasks[name]).items():
            rows.append({"task": name, "method": method, "steps": None, "psnr": value})
        for kind in ("supervised", "measurement"):
            for start, params in (("meta-prior", theta), ("from scratch", scratch)):
                label = f"{start}, fine-tuned ({kind})"
                curve_k, seconds = fine_tune(c, params, static, tasks[name], kind, log, f"{name}: {label}")
                curves[(name, label)] = curve_k
                rows.append({"task": name, "method": label, "steps": c.finetune_steps,
                             "psnr": curve_k[c.finetune_steps], "seconds": seconds,
                             "psnr_at": {str(k): v for k, v in curve_k.items()}})
    _figures(c, curves, curve, out)
    return _report(c, rows, meta_seconds, out)


def _report(c, rows, meta_seconds, out: Path) -> str:
    steps = list(c.eval_at)
    lines = ["| task | method | " + " | ".join(f"{k} steps" for k in steps) + " | train s |",
             "|---|---|" + "---|" * (len(steps) + 1)]
    for r in rows:
        if "psnr_at" in r:
            cells = [f"{r['psnr_at'][str(k)]:.2f}" for k in steps]
            lines.append(f"| {r['task']} | {r['method']} | " + " | ".join(cells) + f" | {r['seconds']:.0f} |")
        else:
            lines.append(f"| {r['task']} | {r['method']} | {r['psnr']:.2f} |" + " |" * len(steps))
    verdict = []
    for task in UNSEEN_TASKS:
        for kind in ("supervised", "measurement"):
            meta = next(r for r in rows if r["task"] == task and r["method"] == f"meta-prior, fine-tuned ({kind})")
            scratch = next(r for r in rows if r["task"] == task and r["method"] == f"from scratch, fine-tuned ({kind})")
            verdict.append({"task": task, "loss": kind, "meta": meta["psnr"], "scratch": scratch["psnr"],
                            "gain_db": meta["psnr"] - scratch["psnr"]})
    vlines = ["| task | fine-tuning loss | meta-prior | from scratch | gain (dB) |", "|---|---|---|---|---|"]
    vlines += [f"| {v['task']} | {v['loss']} | {v['meta']:.2f} | {v['scratch']:.2f} | {v['gain_db']:+.2f} |"
               for v in verdict]
    setting = (f"{c.size}² images; PDNet {c.layers} layers × {c.channels} channels (complex images); iMAML "
               f"λ = {c.lam}, {c.inner_steps} inner Adam steps (lr {c.inner_lr}), CG {c.cg_iters}, {c.meta_steps} "
               f"meta steps ({meta_seconds:.0f} s), batch {c.meta_batch}; fine-tuning on {c.finetune_images} "
               f"images, Adam {c.finetune_lr}. Mean test PSNR (dB), magnitude, peak 1.\n")
    sections = [("Setting", setting), (f"After {c.finetune_steps} fine-tuning steps: meta-prior vs from scratch",
                                       "\n".join(vlines) + "\n"),
                ("Test PSNR against fine-tuning steps", "\n".join(lines) + "\n")]
    return write_results(out, "Meta-Prior: multi-task restoration", sections,
                         {"rows": rows, "verdict": verdict, "meta_seconds": meta_seconds}, c)


def _figures(c, curves, meta_curve, out: Path) -> None:
    plt = pyplot()
    fig, axes = plt.subplots(1, len(UNSEEN_TASKS), figsize=(5.5 * len(UNSEEN_TASKS), 3.8), squeeze=False)
    for ax, task in zip(axes[0], UNSEEN_TASKS):
        for (name, label), curve in curves.items():
            if name == task:
                ax.plot(list(curve), list(curve.values()), "-o" if "meta" in label else "--s", ms=3, label=label)
        ax.set_xlabel("fine-tuning steps")
        ax.set_ylabel("test PSNR (dB)")
        ax.set_title(task, fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "finetuning.png", dpi=90)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    values = np.asarray(meta_curve)
    for i, name in enumerate(TRAIN_TASKS):
        ax.plot(values[:, i], lw=0.8, label=name)
    ax.set_yscale("log")
    ax.set_xlabel("meta step")
    ax.set_title("query loss per training task", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "meta_training.png", dpi=90)
    plt.close(fig)
