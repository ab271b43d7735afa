"""Meta-Prior's linear Gaussian case (Terris & Moreau 2023, §3): meta-learned linear weights vs Bayes.

Signals are ``d × d`` images ``x ~ N(0, Σ)`` with the separable exponential
covariance ``Σ = Σ₁ ⊗ Σ₁``, ``(Σ₁)_ab = ρ^|a−b|``. A task is inpainting with a
pixel mask ``M_i`` (diagonal, 1 = measured): ``y = M_i (x + e)``, ``e ~ N(0, σ²I)``.
The model is linear, ``f_W(y) = W y`` with ``W ∈ R^{n×n}`` (n = d²), and the
Bayes (posterior-mean) estimator of task i is, on the measured set S_i,

    W_i^B[:, S] = Σ[:, S] (Σ_SS + σ² I)⁻¹,    W_i^B[:, ~S] = 0.

Only the measured columns ``W M_i`` act on ``y``, so errors to Bayes are
``‖(W − W_i^B) M_i‖_F / ‖W_i^B‖_F``; the excess risk ``R(W)/R(W_i^B) − 1`` uses
the closed-form risk ``R(W) = tr((W M − I) Σ (W M − I)ᵀ) + σ² tr(W M Wᵀ)``.

Meta-training is :class:`metajax.bilevel.Implicit` (iMAML: inner
``argmin_φ L_in(φ) + λ/2 ‖φ − θ‖²`` by gradient descent, implicit gradient by CG)
with a supervised outer loss on held-out samples and an inner loss that is
either supervised ``½‖W y − x‖²`` or measurement-only ``½‖M W y − y‖²``.
Fine-tuning on a task is the same inner problem. Theorem 3.1: the gradient of
the measurement-only loss is ``M(·)``, so fine-tuning never changes the rows of
W that predict unmeasured pixels, ``(I − M) W`` — the component of the
weights in Ker(A); their values come from the meta-prior alone. Everything runs
in float64 (``jax.enable_x64`` inside :func:`run` only).

Writes ``results.md``, ``results.json`` and ``weights.png`` (their Fig. 2:
Bayes, meta-learned and fine-tuned weights per task) and ``errors.png``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import List

import jax
import jax.numpy as jnp
import numpy as np
import optax

from metajax import bilevel
from metajax.engine.reproductions.common import pyplot, write_results


@dataclass
class Config:
    name: str = "linear_gaussian"
    size: int = 8  # d: signals are d × d (n = d²)
    rho: float = 0.5  # correlation of neighbouring pixels
    noise_std: float = 0.1  # σ
    train_ratios: List[float] = field(default_factory=lambda: [0.3, 0.5, 0.7, 0.9])  # random pixel masks
    unseen_ratios: List[float] = field(default_factory=lambda: [0.4, 0.6])  # random masks with other keys
    unseen_box: int = 4  # also an unseen mask missing a centred box of this size (0: none)
    samples: int = 20000  # training (support) and as many held-out (query) samples per task
    lam: float = 0.01  # proximal weight λ of the inner problem
    inner_steps: int = 500  # gradient steps of the inner problem (step 1/L)
    cg_iters: int = 40
    outer_steps: int = 400
    outer_lr: float = 1e-2
    finetune_steps: int = 3000  # fine-tuning on a task: the inner problem, more steps
    seed: int = 0


PAPER_SIZE = {"size": 16, "samples": 20000, "inner_steps": 1000, "cg_iters": 100, "outer_steps": 2000,
              "finetune_steps": 5000}


def covariance(size: int, rho: float) -> jax.Array:
    a = jnp.arange(size)
    s1 = rho ** jnp.abs(a[:, None] - a[None, :]).astype(jnp.float64)
    return jnp.kron(s1, s1)


def bayes_weights(sigma, mask, noise_std):
    """``W^B`` (n, n) of the masked task (module docstring), via a solve on the full space: with
    ``D = diag(mask)``, ``W^B = Σ D (D Σ D + σ² D + (I − D))⁻¹`` equals the formula on S and is 0 off S."""
    d = jnp.diag(mask.astype(sigma.dtype))
    eye = jnp.eye(sigma.shape[0], dtype=sigma.dtype)
    return jnp.linalg.solve((d @ sigma @ d + noise_std ** 2 * d + (eye - d)).T, (sigma @ d).T).T


def risk(w, sigma, mask, noise_std):
    """``E‖W y − x‖²`` in closed form (module docstring)."""
    m = mask.astype(sigma.dtype)
    e = w * m[None, :] - jnp.eye(sigma.shape[0], dtype=sigma.dtype)
    return jnp.trace(e @ sigma @ e.T) + noise_std ** 2 * jnp.sum((w * m[None, :]) ** 2)


def _losses(kind: str):
    """The task losses from the samples' second moments ``args = (mask, C_yy, C_yx, c_xx)`` (means over
    samples of ``y yᵀ``, ``y xᵀ``, ``xᵀx``): supervised ``½ E‖W y − x‖²`` and measurement-only
    ``½ E‖M W y − y‖²`` (``M y = y``), exactly the sample means of the per-sample losses."""

    def supervised(w, args):
        mask, cyy, cyx, cxx = args
        return 0.5 * jnp.sum((w @ cyy) * w) - jnp.sum(w * cyx.T) + 0.5 * cxx

    def measurement(w, args):
        mask, cyy, cyx, cxx = args
        mw = w * mask[:, None]
        return 0.5 * jnp.sum((mw @ cyy) * mw) - jnp.sum(mw * cyy) + 0.5 * jnp.trace(cyy)

    return {"supervised": supervised, "measurement": measurement}[kind]


def _step_size(cyy, lam):
    """1/L for the inner problem: L = λ_max(C_yy) + λ bounds both losses' Hessians (plus the prox)."""
    return 1.0 / (jnp.linalg.eigvalsh(cyy)[-1] + lam)


def fine_tune(theta, args, kind: str, lam: float, steps: int):
    """The inner problem from θ: ``argmin_W L(W) + λ/2 ‖W − θ‖²`` by ``steps`` gradient steps of size 1/L."""
    loss = _losses(kind)
    lr = _step_size(args[1], lam)
    grad = jax.grad(lambda w: loss(w, args) + 0.5 * lam * jnp.sum((w - theta) ** 2))
    return jax.lax.fori_loop(0, steps, lambda _, w: w - lr * grad(w), theta)


def _masks(c: Config, key):
    n = c.size * c.size
    names, masks = [], []
    for i, r in enumerate([*c.train_ratios, *c.unseen_ratios]):
        k = jax.random.fold_in(key, i)
        chosen = jax.random.permutation(k, n)[: round(r * n)]
        masks.append(jnp.zeros(n, bool).at[chosen].set(True))
        names.append(f"{'train' if i < len(c.train_ratios) else 'unseen'} random {r:.0%}")
    if c.unseen_box:
        lo = (c.size - c.unseen_box) // 2
        box = jnp.ones((c.size, c.size), bool).at[lo:lo + c.unseen_box, lo:lo + c.unseen_box].set(False)
        masks.append(box.reshape(-1))
        names.append(f"unseen box {c.unseen_box}×{c.unseen_box}")
    return names, jnp.stack(masks)


def _task_data(c: Config, sigma, masks, key):
    """``(mask, C_yy, C_yx, c_xx)`` stacked over tasks, of the support (train) and the query (test) samples."""
    chol = jnp.linalg.cholesky(sigma)
    n = sigma.shape[0]

    def draw(k):
        kx, ke = jax.random.split(k)
        x = jax.random.normal(kx, (len(masks), c.samples, n), jnp.float64) @ chol.T
        y = (x + c.noise_std * jax.random.normal(ke, x.shape, jnp.float64)) * masks[:, None, :]
        moments = lambda a, b: jnp.einsum("tki,tkj->tij", a, b) / c.samples  # noqa: E731
        return masks.astype(jnp.float64), moments(y, y), moments(y, x), jnp.mean(jnp.sum(x * x, -1), -1)

    k_train, k_test = jax.random.split(key)
    return draw(k_train), draw(k_test)


def meta_train(c: Config, kind: str, train_args, test_args, log):
    """θ by iMAML on the training tasks (inner loss ``kind``, supervised outer loss); returns θ and the
    outer-loss curve."""
    n = c.size * c.size
    lr = jnp.min(jax.vmap(lambda cyy: _step_size(cyy, c.lam))(train_args[1]))
    method = bilevel.Implicit(lam=c.lam, inner_optimizer=optax.sgd(lr), inner_steps=c.inner_steps,
                              cg_max_iters=c.cg_iters, cg_tol=1e-10)
    inner, outer = _losses(kind), _losses("supervised")
    optimizer = optax.adam(c.outer_lr)
    # per task: the mask, the support samples (inner loss) and the query samples (outer loss)
    args = (train_args[0], train_args[1:], test_args[1:])

    @jax.jit
    def meta_step(theta, opt_state):
        grad, info = bilevel.task_mean_gradient(method, lambda w, a: inner(w, (a[0], *a[1])),
                                                lambda w, a: outer(w, (a[0], *a[2])), theta, args)
        updates, opt_state = optimizer.update(grad, opt_state, theta)
        return optax.apply_updates(theta, updates), opt_state, jnp.mean(info["outer_loss"])

    theta = jnp.zeros((n, n), jnp.float64)
    opt_state = optimizer.init(theta)
    curve = []
    for s in range(c.outer_steps):
        theta, opt_state, value = meta_step(theta, opt_state)
        curve.append(float(value))
        if s == 0 or (s + 1) % max(1, c.outer_steps // 5) == 0:
            log(f"meta-training ({kind} inner loss): step {s + 1}/{c.outer_steps}, outer loss {curve[-1]:.5f}")
    return theta, curve


def _relative(w, ref, mask):
    m = mask.astype(w.dtype)[None, :]
    return float(jnp.linalg.norm((w - ref) * m) / jnp.linalg.norm(ref))


def run(c, out: Path, base_dir=None, log=print) -> str:
    with jax.enable_x64(True):
        return _run(c, out, log)


def _run(c, out: Path, log) -> str:
    key = jax.random.key(c.seed)
    k_masks, k_data = jax.random.split(key)
    sigma = covariance(c.size, c.rho)
    names, masks = _masks(c, k_masks)
    train_args, test_args = _task_data(c, sigma, masks, k_data)
    num_train = len(c.train_ratios)
    bayes = jax.vmap(lambda m: bayes_weights(sigma, m, c.noise_std))(masks)
    bayes_risk = jax.vmap(lambda w, m: risk(w, sigma, m, c.noise_std))(bayes, masks)
    rows, kernel_rows, weights = [], [], {}
    for kind in ("supervised", "measurement"):
        meta_args = jax.tree.map(lambda a: a[:num_train], (train_args, test_args))
        theta, curve = meta_train(c, kind, *meta_args, log)
        weights[kind] = {"meta": theta}
        for i, name in enumerate(names):
            task = jax.tree.map(lambda a: a[i], train_args)
            tuned = {ft: fine_tune(theta, task, ft, c.lam, c.finetune_steps) for ft in ("supervised", "measurement")}
            weights[kind][i] = tuned
            for label, w in (("meta θ (no fine-tuning)", theta), ("fine-tuned, supervised", tuned["supervised"]),
                             ("fine-tuned, measurement-only", tuned["measurement"])):
                rows.append({"meta_inner_loss": kind, "task": name, "weights": label,
                             "relative_error": _relative(w, bayes[i], masks[i]),
                             "excess_risk": float(risk(w, sigma, masks[i], c.noise_std) / bayes_risk[i] - 1)})
            off = 1.0 - masks[i].astype(jnp.float64)[:, None]
            for ft, w in tuned.items():
                kernel_rows.append({"meta_inner_loss": kind, "task": name, "fine_tuning": ft,
                                    "kernel_change": float(jnp.linalg.norm((w - theta) * off)
                                                           / jnp.linalg.norm(theta * off))})
        weights[kind]["curve"] = curve
    text = _report(c, names, rows, kernel_rows, out)
    _figure(c, names, masks, bayes, weights, out / "weights.png")
    _error_figure(names, rows, out / "errors.png")
    return text


def _report(c, names, rows, kernel_rows, out: Path) -> str:
    sections = []
    for kind in ("supervised", "measurement"):
        lines = ["| task | weights | ‖(W − W^B)M‖/‖W^B‖ | excess risk R(W)/R(W^B) − 1 |", "|---|---|---|---|"]
        for r in rows:
            if r["meta_inner_loss"] == kind:
                lines.append(f"| {r['task']} | {r['weights']} | {r['relative_error']:.4f} | {r['excess_risk']:.4f} |")
        sections.append((f"Meta-trained with a {kind} inner loss", "\n".join(lines) + "\n"))
    lines = ["| meta inner loss | task | fine-tuning | ‖(I − M)(W − θ)‖ / ‖(I − M)θ‖ |", "|---|---|---|---|"]
    for r in kernel_rows:
        lines.append(f"| {r['meta_inner_loss']} | {r['task']} | {r['fine_tuning']} | {r['kernel_change']:.2e} |")
    sections.append(("Theorem 3.1: the Ker(A) component under fine-tuning", "\n".join(lines) + "\n"))
    setting = (f"d = {c.size} (n = {c.size ** 2}), ρ = {c.rho}, σ = {c.noise_std}, {c.samples} support + "
               f"{c.samples} query samples per task, λ = {c.lam}, {c.inner_steps} inner steps, {c.outer_steps} "
               f"meta steps (Adam {c.outer_lr}), fine-tuning {c.finetune_steps} steps; float64.\n")
    sections.insert(0, ("Setting", setting))
    return write_results(out, "Meta-Prior: the linear Gaussian case", sections,
                         {"rows": rows, "kernel": kernel_rows}, c)


def _figure(c, names, masks, bayes, weights, path: Path) -> None:
    """Their Fig. 2: per task (rows) the mask, W^B, the meta θ and the fine-tuned weights (measured columns)."""
    plt = pyplot()
    shown = [0, len(c.train_ratios) - 1, len(names) - 1]
    columns = ["mask", "Bayes W^B", "meta θ", "fine-tuned (supervised)", "fine-tuned (measurement-only)"]
    fig, axes = plt.subplots(len(shown), len(columns), figsize=(2.6 * len(columns), 2.6 * len(shown)), squeeze=False)
    w = weights["measurement"]
    vmax = float(jnp.max(jnp.abs(bayes)))
    for row, i in enumerate(shown):
        m = masks[i].astype(jnp.float64)[None, :]
        panels = [masks[i].reshape(c.size, c.size), bayes[i], w["meta"] * m, w[i]["supervised"] * m,
                  w[i]["measurement"] * m]
        for col, (title, image) in enumerate(zip(columns, panels)):
            ax = axes[row, col]
            if col == 0:
                ax.imshow(np.asarray(image), cmap="gray")
            else:
                ax.imshow(np.asarray(image), cmap="RdBu_r", vmin=-vmax, vmax=vmax)
            ax.set_title(f"{names[i]}\n{title}" if col == 0 else title, fontsize=7)
            ax.set_xticks([]), ax.set_yticks([])
    fig.suptitle("weights W M (rows: output pixel, columns: measured pixel); meta-trained with a measurement-only "
                 "inner loss", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _error_figure(names, rows, path: Path) -> None:
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.6), squeeze=False)
    labels = sorted({r["weights"] for r in rows})
    for ax, kind in zip(axes[0], ("supervised", "measurement")):
        width = 0.8 / len(labels)
        for j, label in enumerate(labels):
            values = [next(r["relative_error"] for r in rows if r["meta_inner_loss"] == kind and r["task"] == n
                           and r["weights"] == label) for n in names]
            ax.bar(np.arange(len(names)) + j * width, values, width, label=label)
        ax.set_xticks(np.arange(len(names)) + 0.4 - width / 2, names, rotation=30, ha="right", fontsize=7)
        ax.set_ylabel("‖(W − W^B)M‖ / ‖W^B‖")
        ax.set_title(f"meta-trained with a {kind} inner loss", fontsize=9)
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
