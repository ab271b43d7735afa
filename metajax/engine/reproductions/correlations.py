"""Arora & Batra (2025): the learned task-correlation matrix σ(α) between training and validation tasks.

N training tasks (radial ``train_ratios``) and M validation tasks (radial
``val_radial`` — the seen ratios and unseen ones — and Cartesian
``val_cartesian``), on the default chest images. :class:`metajax.bilevel.TaskWeights`
learns ``α ∈ R^{N×M}`` (and the initialisation θ₀): for validation task j,
``θ(α_j)`` = ``inner_steps`` Adam steps from θ₀ on ``Σ_i softmax(α_j)_i ℓ_{τ_i}``
(training batches), and α minimises ``Σ_j ℓ_{v_j}(θ(α_j))`` on the validation
tasks' batches. Reported: the weight matrix (table and ``weights.png``), and per
validation task the test PSNR of θ₀, of θ(uniform weights) and of θ(α_j), each
θ computed with the same inner steps on the same fixed training batch
(``eval_batch`` images per training task). Then the XLA temp memory of one
meta-gradient step with the inner loop differentiated by autodiff and by the
MLM adjoint (:class:`metajax.adjoint.MLM`), as their paper motivates.
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

from metajax import bilevel, metrics
from metajax.adjoint import MLM, Autodiff
from metajax.bilevel.inner import adapt
from metajax.engine.experiment import Experiment, sample_batches
from metajax.engine.reproductions.common import (
    Stopwatch,
    engine_config,
    pyplot,
    ratio_list,
    write_results,
)


@dataclass
class Config:
    name: str = "correlations"
    model: List[str] = field(default_factory=lambda: ["model=dcnet", "model.phases=3", "model.features=8",
                                                      "model.layers=4"])
    train_ratios: List[float] = field(default_factory=lambda: [0.1, 0.2, 0.3, 0.4])
    val_radial: List[float] = field(default_factory=lambda: [0.1, 0.2, 0.3, 0.4, 0.15, 0.25, 0.35])
    val_cartesian: List[float] = field(default_factory=lambda: [0.2, 0.3])
    crop: int = 64
    batch: int = 1  # images per task and step
    steps: int = 40
    lr: float = 1e-3  # Adam on θ₀
    alpha_lr: float = 0.1  # Adam on α
    inner_steps: int = 3
    inner_lr: float = 1e-3  # Adam
    eval_batch: int = 4
    seed: int = 0


PAPER_SIZE = {"model": ["model=dcnet", "model.phases=5", "model.features=16", "model.layers=5"], "crop": 128,
              "batch": 4, "steps": 2000, "inner_steps": 5, "eval_batch": 16}


def _experiments(c, base_dir):
    common = ["preset=none", *c.model, f"tasks.crop={c.crop}", f"trainer.seed={c.seed}"]
    train = Experiment(engine_config([*common, "tasks=radial", f"tasks.ratios={ratio_list(c.train_ratios)}"]),
                       base_dir)
    vals = [Experiment(engine_config([*common, f"tasks={kind}", f"tasks.ratios={ratio_list(r)}"]), base_dir)
            for kind, r in (("radial", c.val_radial), ("cartesian", c.val_cartesian)) if r]
    names = [f"radial {r:.0%}" for r in c.val_radial] + [f"cartesian {r:.0%}" for r in c.val_cartesian]
    join = lambda attr: jax.tree.map(lambda *a: jnp.concatenate(a), *[getattr(v, attr) for v in vals])  # noqa: E731
    return train, join("train_tasks"), join("tasks"), names


def _inner_optimizer(c):
    # eps_root > 0: Adam's √v has an infinite derivative at v = 0 (parameters whose gradient is still zero, e.g.
    # behind DCNet's zero-initialised last layer), and the outer gradient differentiates through the updates
    return optax.adam(c.inner_lr, eps_root=1e-12)


def _method(c, adjoint):
    return bilevel.TaskWeights(_inner_optimizer(c), c.inner_steps, adjoint=adjoint, learn_init=True)


def run(c, out: Path, base_dir=None, log=print) -> str:
    train_exp, val_train_tasks, val_tasks, names = _experiments(c, base_dir)
    model = bilevel.Shared(train_exp.network(train_exp.params).net)
    theta0, static = eqx.partition(model, eqx.is_inexact_array)
    params = bilevel.TaskWeightsParams.uniform(theta0, len(c.train_ratios), len(names))
    loss = lambda phi, b: bilevel.supervised_loss(eqx.combine(phi, static), b)  # noqa: E731
    optimizer = optax.multi_transform({"alpha": optax.adam(c.alpha_lr), "init": optax.adam(c.lr)},
                                      bilevel.TaskWeightsParams("alpha", jax.tree.map(lambda _: "init", theta0)))

    def batches(key):
        k_train, k_val = jax.random.split(key)
        return (sample_batches(train_exp.train_tasks, k_train, "train", c.batch, train_exp.crop),
                sample_batches(val_train_tasks, k_val, "val", c.batch, train_exp.crop))

    def step_fn(method):
        def step(p, state, key):
            return bilevel.meta_step(method, loss, loss, p, state, batches(key), optimizer=optimizer)
        return jax.jit(step)

    method = _method(c, Autodiff())
    state = bilevel.init(method, params, optimizer)
    key = jax.random.key(c.seed + 5)
    memory = _memory(c, step_fn, params, state, key, log)
    step = step_fn(method)
    curve = []
    with Stopwatch() as w:
        for s in range(c.steps):
            params, state, info = step(params, state, jax.random.fold_in(key, s))
            curve.append(float(jnp.mean(info["outer_loss"])))
            if s == 0 or (s + 1) % max(1, c.steps // 8) == 0:
                log(f"task weights step {s + 1}/{c.steps}: mean validation loss {curve[-1]:.4g}")
    weights = np.asarray(params.weights)
    rows = _compare(c, params, static, train_exp, val_tasks, names, log)
    _figures(c, weights, names, curve, out)
    return _report(c, weights, names, rows, memory, w.seconds, out)


def _memory(c, step_fn, params, state, key, log) -> dict:
    """XLA temp bytes of one compiled meta step with the inner loop differentiated by autodiff and by MLM."""
    out = {}
    for name, adjoint in (("autodiff", Autodiff()), ("MLM adjoint", MLM())):
        compiled = step_fn(_method(c, adjoint)).lower(params, state, key).compile()
        analysis = compiled.memory_analysis()
        out[name] = None if analysis is None else analysis.temp_size_in_bytes / 2 ** 20
        log(f"meta step memory ({name}): {out[name]:.1f} MiB")
    return out


def _compare(c, params, static, train_exp, val_tasks, names, log):
    """Per validation task: test PSNR (full images) of θ₀, θ(uniform) and θ(α_j), all from the same fixed
    training batch."""
    fixed = sample_batches(train_exp.train_tasks, jax.random.key(c.seed + 9), "train", c.eval_batch, train_exp.crop)
    loss = lambda phi, b: bilevel.supervised_loss(eqx.combine(phi, static), b)  # noqa: E731

    @jax.jit
    def inner(w):
        weighted = lambda phi, a: jnp.dot(a[0], jax.vmap(loss, in_axes=(None, 0))(phi, a[1]))  # noqa: E731
        return adapt(weighted, _inner_optimizer(c), params.init, c.inner_steps, (w, fixed))[0]

    uniform = inner(jnp.full(len(c.train_ratios), 1.0 / len(c.train_ratios)))
    rows = []
    for j, name in enumerate(names):
        task = jax.tree.map(lambda a, j=j: a[j], val_tasks)
        y = task.measure(jax.random.fold_in(jax.random.key(c.seed + 1), j), task.test)
        row = {"task": name}
        for label, phi in (("θ₀", params.init), ("θ(uniform)", uniform), ("θ(α_j)", inner(params.weights[:, j]))):
            net = eqx.combine(phi, static)
            recon = jax.jit(jax.vmap(lambda v, net=net: net(task.operator, v)))(y)
            row[label] = float(jnp.mean(metrics.psnr(jnp.abs(recon), jnp.abs(task.test))))
        rows.append(row)
        log(f"{name}: θ₀ {row['θ₀']:.2f}, uniform {row['θ(uniform)']:.2f}, α_j {row['θ(α_j)']:.2f} dB")
    return rows


def _report(c, weights, names, rows, memory, seconds, out: Path) -> str:
    header = "| training task | " + " | ".join(names) + " |"
    lines = [header, "|---|" + "---|" * len(names)]
    for i, r in enumerate(c.train_ratios):
        lines.append(f"| radial {r:.0%} | " + " | ".join(f"{weights[i, j]:.3f}" for j in range(len(names))) + " |")
    comp = ["| validation task | θ₀ | θ(uniform) | θ(α_j) | α_j − uniform (dB) |", "|---|---|---|---|---|"]
    comp += [f"| {r['task']} | {r['θ₀']:.2f} | {r['θ(uniform)']:.2f} | {r['θ(α_j)']:.2f} "
             f"| {r['θ(α_j)'] - r['θ(uniform)']:+.3f} |" for r in rows]
    mem = ["| inner loop differentiated by | meta-step XLA temp memory (MiB) |", "|---|---|"]
    mem += [f"| {k} | {v:.1f} |" for k, v in memory.items()]
    setting = (f"{' '.join(c.model)}; {c.crop}² training crops, {c.batch} image(s) per task and step, {c.steps} "
               f"steps ({seconds:.0f} s), {c.inner_steps} inner Adam steps (lr {c.inner_lr}), α lr {c.alpha_lr}; "
               "test PSNR on the full 256² test images (chest 85–99).\n")
    sections = [("Setting", setting), ("Learned weights softmax(α) (columns sum to 1)", "\n".join(lines) + "\n"),
                ("θ(α_j) against uniform task weights (test PSNR, dB)", "\n".join(comp) + "\n"),
                ("Memory of the task-weights meta step", "\n".join(mem) + "\n")]
    return write_results(out, "Arora & Batra: learned task correlations", sections,
                         {"weights": weights, "validation_tasks": names, "train_ratios": list(c.train_ratios),
                          "rows": rows, "memory_mib": memory, "train_seconds": seconds}, c)


def _figures(c, weights, names, curve, out: Path) -> None:
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(12, 3.8), gridspec_kw={"width_ratios": [2, 1]})
    im = axes[0].imshow(weights, cmap="viridis", aspect="auto")
    axes[0].set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=7)
    axes[0].set_yticks(range(len(c.train_ratios)), [f"radial {r:.0%}" for r in c.train_ratios], fontsize=7)
    for i in range(weights.shape[0]):
        for j in range(weights.shape[1]):
            axes[0].text(j, i, f"{weights[i, j]:.2f}", ha="center", va="center", fontsize=6, color="w")
    axes[0].set_title("softmax(α): training task (rows) weight for each validation task", fontsize=9)
    fig.colorbar(im, ax=axes[0])
    axes[1].plot(curve, lw=0.8)
    axes[1].set_xlabel("step")
    axes[1].set_title("mean validation loss", fontsize=9)
    axes[1].set_yscale("log")
    fig.tight_layout()
    fig.savefig(out / "weights.png", dpi=90)
    plt.close(fig)
