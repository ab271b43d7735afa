"""What adaptation and meta-learning buy a user: a model trained on chest images, adapted to shifts it never saw.

Source: the embedded chest images (the shipped models were trained on slices 0–69). Targets
(``targets``), each a shift no model was trained on:

- ``anatomy``: brain slices (the embedded MNI152 template at 256², shuffled; test = the first
  ``test_slices``, the few-shot and ceiling pool = slices 20–59) at pseudo-radial 10 %;
- ``mask``: chest test slices 85– at radial 20 % (``masks.radial``: a family outside the training
  mixture), pool = chest slices 0–69;
- ``noise``: chest test slices at pseudo-radial 20 % with complex k-space noise σ = ``noise_std`` per
  component (the models were trained noiseless), pool = chest slices 0–69.

Two starting points: ``meta_model`` (``chest_dcnet_meta``: meta-trained by first-order MAML to adapt
with the splitting loss, over mask families, accelerations and image-domain changes) and
``conventional_model`` (``chest_dcnet_joint``: the same start, tasks, augmentation and number of
gradient evaluations, trained jointly without the inner loop). For every target, start and seed:

- ``self`` (k = 0): :func:`metajax.engine.adaptation.adapt` in ``self`` mode on the test slices' own
  measurements (no ground truth);
- few-shot (k ∈ ``shots`` \\ {0}): ``finetune`` mode on k pool images drawn by the seed;

each for ``max(budgets)`` steps, the test PSNR recorded after each step budget, and the held-out-selected
model (the one ``metajax-adapt`` returns) at the end. Baselines: zero-shot (no adaptation), the same
network trained *from scratch* on the k images (``scratch_steps`` steps, held-out selection), and the
*ceiling*: the conventional start fine-tuned on the whole pool (``ceiling_steps``). Differences meta −
conventional are paired by test image (averaged over seeds) with a 95 % t-interval over images; "gap
closed" is (adapted − zero-shot) / (ceiling − zero-shot).

Writes ``results.md``, ``results.json``, ``adaptation_curves.png`` (PSNR against steps) and one
``runs/*.json`` per run (the experiment resumes from them).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import List

import jax
import jax.numpy as jnp
import numpy as np
from scipy import stats

from metajax import bilevel, data, masks, metrics
from metajax.engine import adaptation as adapting
from metajax.engine.experiment import ConfigError, build_network
from metajax.engine.models import load_model_source
from metajax.engine.reproductions.common import pyplot, write_results
from metajax.operators import SingleCoilMRI

TARGETS = {  # name: (images, mask family, ratio, noise σ)
    "anatomy": ("template", "pseudo_radial", 0.1, 0.0),
    "mask": ("chest", "radial", 0.2, 0.0),
    "noise": ("chest", "pseudo_radial", 0.2, None),  # None: noise_std
}


@dataclass
class Config:
    name: str = "adaptation"
    meta_model: str = "pretrained:chest_dcnet_meta"
    conventional_model: str = "pretrained:chest_dcnet_joint"
    targets: List[str] = field(default_factory=lambda: ["anatomy", "mask", "noise"])
    noise_std: float = 0.03
    test_slices: int = 6
    shots: List[int] = field(default_factory=lambda: [0, 1, 5])
    budgets: List[int] = field(default_factory=lambda: [5, 10, 20])
    seeds: int = 3
    batch: int = 2  # images (self: slices) per adaptation step
    lr: float = 1e-4  # adaptation (self and few-shot)
    scratch_steps: int = 40
    scratch_lr: float = 1e-3
    ceiling_steps: int = 100
    seed: int = 0


PAPER_SIZE = {"test_slices": 20, "budgets": [5, 10, 20, 50, 100], "seeds": 5, "scratch_steps": 1000,
              "ceiling_steps": 1000}


def target_data(name: str, cfg: Config):
    """``(operator, test images (n, H, W) complex64, pool images, noise σ)`` of target ``name``."""
    if name not in TARGETS:
        raise ConfigError(f"`experiment.targets`: {name!r} is not one of {sorted(TARGETS)}.")
    source, family, ratio, noise = TARGETS[name]
    if source == "template":
        images = data.normalize_per_slice(np.asarray(data.default_images(60, 256), np.float32))
        images = images[np.asarray(jax.random.permutation(jax.random.key(0), len(images)))]
        test, pool = images[:cfg.test_slices], images[20:60]
    else:
        images = data.chest_images()
        test, pool = images[85:85 + cfg.test_slices], images[:70]
    operator = SingleCoilMRI(masks.family_mask(jax.random.key(cfg.seed), family, (256, 256), ratio))
    noise = cfg.noise_std if noise is None else noise
    return operator, jnp.asarray(test, jnp.complex64), jnp.asarray(pool, jnp.complex64), noise


def _measure(operator, x, noise, key):
    y = jax.vmap(operator)(x)
    if noise:
        n = jax.random.normal(key, y.shape + (2,)) * noise
        y = jnp.where(operator.mask, y + n[..., 0] + 1j * n[..., 1], 0).astype(y.dtype)
    return y


def _psnr(model, operator, y, x) -> list[float]:
    recon = jax.jit(lambda m: jax.lax.map(lambda v: jnp.abs(m(operator, v, 0)), y))(model)
    return [float(v) for v in metrics.psnr(recon, jnp.abs(x))]


def _run(path: Path, compute):
    if path.is_file():
        return json.loads(path.read_text())
    result = compute()
    path.write_text(json.dumps(result))
    return result


def _adapt_run(start, operator, y_test, x_test, mode, images, images_y, steps, lr, budgets, seed, batch):
    """PSNR per test image after each budget, and of the held-out-selected model; the report's timings."""
    scores = {}

    def callback(k, model):  # the budgets, and every held-out evaluation (to study the stopping rule)
        if k in budgets or k % 5 == 0:
            scores[k] = _psnr(model, operator, y_test, x_test)

    settings = adapting.Settings(mode=mode, steps=steps, lr=lr, batch=batch, seed=seed, eval_every=5)
    selected, report = adapting.adapt(adapting.single_task(start, operator), operator, y_test, settings,
                                      images=images, images_y=images_y, progress=False, log=lambda m: None,
                                      callback=callback)
    return {"budgets": {str(k): v for k, v in scores.items()}, "selected": _psnr(selected, operator, y_test, x_test),
            "best_step": report["best_step"], "seconds_per_slice": report["seconds_per_slice"],
            "heldout": [[r["step"], r["heldout"]] for r in report["curve"] if "heldout" in r],
            "seconds": report["seconds"], "seconds_per_step": report["seconds_per_step"]}


def _ci(diff) -> tuple[float, float, float]:
    diff = np.asarray(diff, np.float64)
    half = stats.t.ppf(0.975, len(diff) - 1) * diff.std(ddof=1) / np.sqrt(len(diff)) if len(diff) > 1 else np.nan
    return float(diff.mean()), float(diff.mean() - half), float(diff.mean() + half)


def run(cfg, out_dir: Path, base_dir: Path | None = None, log=print) -> str:
    c = Config(**{k: v for k, v in dict(cfg).items()})
    if not c.shots or min(c.shots) < 0 or not c.budgets or min(c.budgets) < 1 or c.seeds < 1:
        raise ConfigError("`experiment.shots` (k ≥ 0 target images; 0: self-supervised only), `experiment.budgets` "
                          "(step counts ≥ 1) and `experiment.seeds` (≥ 1) must be non-empty / positive; got "
                          f"{list(c.shots)}, {list(c.budgets)}, {c.seeds}.")
    runs = out_dir / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    starts = {"conventional": load_model_source(c.conventional_model, base_dir),
              "meta": load_model_source(c.meta_model, base_dir)}
    steps = max(c.budgets)
    results = {}
    for target in c.targets:
        operator, x_test, pool, noise = target_data(target, c)
        y_test = _measure(operator, x_test, noise, jax.random.key(c.seed + 1))
        r = results[target] = {"ratio": float(operator.mask.mean()), "noise_std": noise, "runs": {}}
        for name, source in starts.items():
            r[f"zero-shot {name}"] = _psnr(adapting.single_task(source.model, operator), operator, y_test, x_test)
        r["zero-filled"] = [float(v) for v in metrics.psnr(jnp.abs(jax.vmap(operator.adjoint)(y_test)),
                                                          jnp.abs(x_test))]
        log(f"{target}: zero-filled {np.mean(r['zero-filled']):.2f}, zero-shot conventional "
            f"{np.mean(r['zero-shot conventional']):.2f}, meta {np.mean(r['zero-shot meta']):.2f} dB")

        def ceiling():
            model = adapting.single_task(starts["conventional"].model, operator)
            settings = adapting.Settings(mode="finetune", steps=c.ceiling_steps, lr=c.lr, batch=c.batch, seed=c.seed)
            best, report = adapting.adapt(model, operator, y_test, settings, images=pool,
                                          images_y=_measure(operator, pool, noise, jax.random.key(c.seed + 2)),
                                          progress=False, log=lambda m: None)
            return {"selected": _psnr(best, operator, y_test, x_test), "best_step": report["best_step"],
                    "seconds": report["seconds"]}

        r["ceiling"] = _run(runs / f"{target}_ceiling.json", ceiling)
        log(f"{target}: ceiling (conventional start fine-tuned on {len(pool)} target images) "
            f"{np.mean(r['ceiling']['selected']):.2f} dB")
        for k in c.shots:
            for seed in range(c.seeds):
                chosen = chosen_y = None
                if k:  # k pool images drawn by the seed, measured with the target's noise
                    chosen = pool[np.asarray(jax.random.choice(jax.random.key(100 + seed), len(pool), (k,),
                                                               replace=False))]
                    chosen_y = _measure(operator, chosen, noise, jax.random.key(200 + seed))
                for name, source in starts.items():
                    label = f"{target}_{name}_k{k}_s{seed}"
                    r["runs"][label] = _run(runs / f"{label}.json", lambda s=source: _adapt_run(
                        s.model, operator, y_test, x_test, "self" if k == 0 else "finetune", chosen, chosen_y, steps,
                        c.lr, c.budgets, seed, c.batch))
                    log(f"{label}: " + ", ".join(f"{b} steps {np.mean(v):.2f}" for b, v in
                                                 r["runs"][label]["budgets"].items())
                        + f"; selected {np.mean(r['runs'][label]['selected']):.2f} dB")
                if k:
                    label = f"{target}_scratch_k{k}_s{seed}"

                    def scratch(seed=seed, chosen=chosen, chosen_y=chosen_y):
                        net = build_network(starts["conventional"].config.model, jax.random.key(1000 + seed))
                        model = bilevel.RatioWeighted(net, [float(operator.mask.mean())], jnp.zeros(1))
                        settings = adapting.Settings(mode="finetune", steps=c.scratch_steps, lr=c.scratch_lr,
                                                     batch=min(c.batch, k), seed=seed, eval_every=10)
                        best, _ = adapting.adapt(model, operator, y_test, settings, images=chosen, images_y=chosen_y,
                                                 progress=False, log=lambda m: None)
                        return {"selected": _psnr(best, operator, y_test, x_test)}

                    r["runs"][label] = _run(runs / f"{label}.json", scratch)
                    log(f"{label}: {np.mean(r['runs'][label]['selected']):.2f} dB")
    text = _report(c, results, out_dir)
    _figure(c, results, out_dir / "adaptation_curves.png")
    return text


def _per_image(result, target, start, k, key, c):
    """(images,) PSNR averaged over seeds for a run key (a budget or "selected")."""
    rows = [result["runs"][f"{target}_{start}_k{k}_s{s}"] for s in range(c.seeds)]
    return np.mean([r["selected"] if key == "selected" else r["budgets"][str(key)] for r in rows], axis=0)


def _report(c: Config, results: dict, out_dir: Path) -> str:
    sections, summary = [], {}
    for target, r in results.items():
        zero = {s: np.asarray(r[f"zero-shot {s}"]) for s in ("conventional", "meta")}
        ceiling = np.mean(r["ceiling"]["selected"])
        lines = [f"ratio {r['ratio']:.3f}, noise σ {r['noise_std']}; {c.test_slices} test slices, {c.seeds} seeds; "
                 f"zero-filled {np.mean(r['zero-filled']):.2f} dB, ceiling {ceiling:.2f} dB "
                 f"(conventional start fine-tuned on the target pool, step {r['ceiling']['best_step']}).", "",
                 "| k | start | " + " | ".join(f"{b} steps" for b in c.budgets) + " | selected | gain | gap closed "
                 "| s / slice |", "|---|---|" + "---|" * (len(c.budgets) + 4)]
        summary[target] = {"ceiling": ceiling, "zero_filled": float(np.mean(r["zero-filled"]))}
        for start in ("conventional", "meta"):
            gap = ceiling - zero[start].mean()
            lines.append(f"| – | {start} (zero-shot) | " + " | ".join(f"{zero[start].mean():.2f}" for _ in c.budgets)
                         + f" | {zero[start].mean():.2f} | 0 | 0 % | |")
            for k in c.shots:
                values = [_per_image(r, target, start, k, b, c).mean() for b in c.budgets]
                selected = _per_image(r, target, start, k, "selected", c).mean()
                seconds = np.mean([r["runs"][f"{target}_{start}_k{k}_s{s}"]["seconds_per_slice"]
                                   for s in range(c.seeds)])
                closed = (selected - zero[start].mean()) / gap if gap > 0 else float("nan")
                lines.append(f"| {k} | {start} | " + " | ".join(f"{v:.2f}" for v in values)
                             + f" | {selected:.2f} | {selected - zero[start].mean():+.2f} | {100 * closed:.0f} % "
                             f"| {seconds:.1f} |")
                summary[target][f"{start}_k{k}"] = {"budgets": dict(zip(c.budgets, map(float, values))),
                                                    "selected": float(selected), "gap_closed": float(closed),
                                                    "zero_shot": float(zero[start].mean()),
                                                    "seconds_per_slice": float(seconds)}
        for k in c.shots:
            if k:
                scratch = np.mean([np.mean(r["runs"][f"{target}_scratch_k{k}_s{s}"]["selected"])
                                   for s in range(c.seeds)])
                lines.append(f"| {k} | scratch ({c.scratch_steps} steps) | " + " | ".join("" for _ in c.budgets)
                             + f" | {scratch:.2f} | | | |")
                summary[target][f"scratch_k{k}"] = float(scratch)
        lines += ["", "Meta − conventional start, same steps and data (paired by test image, mean over seeds; 95 % "
                  "t-interval over images):", "", "| k | " + " | ".join(f"{b} steps" for b in c.budgets)
                  + " | selected |", "|---|" + "---|" * (len(c.budgets) + 1)]
        zero_diff = _ci(zero["meta"] - zero["conventional"])
        summary[target]["meta_minus_conventional"] = {"zero_shot": zero_diff}
        lines.append("| zero-shot | " + " | ".join("{:+.2f} [{:+.2f}, {:+.2f}]".format(*zero_diff)
                                                   for _ in (*c.budgets, "selected")) + " |")
        for k in c.shots:
            cells = []
            for b in (*c.budgets, "selected"):
                diff = _per_image(r, target, "meta", k, b, c) - _per_image(r, target, "conventional", k, b, c)
                cells.append("{:+.2f} [{:+.2f}, {:+.2f}]".format(*_ci(diff)))
                summary[target]["meta_minus_conventional"][f"k{k}_{b}"] = _ci(diff)
            lines.append(f"| {k} | " + " | ".join(cells) + " |")
        sections.append((target, "\n".join(lines) + "\n"))
    return write_results(out_dir, "Adaptation under shifts: self-supervised, few-shot, meta-learned vs conventional "
                         "start", sections, {"summary": summary, "results": results}, c)


def _figure(c: Config, results: dict, path: Path) -> None:
    plt = pyplot()
    fig, axes = plt.subplots(1, len(results), figsize=(4.2 * len(results), 3.6), squeeze=False)
    for ax, (target, r) in zip(axes[0], results.items()):
        for start, style in (("conventional", "--"), ("meta", "-")):
            for k, color in zip(c.shots, ("C0", "C1", "C2", "C3")):
                ys = [np.mean(r[f"zero-shot {start}"])] + [_per_image(r, target, start, k, b, c).mean()
                                                           for b in c.budgets]
                ax.plot([0, *c.budgets], ys, style, color=color, marker="o", ms=3, label=f"{start}, k={k}")
        ax.axhline(np.mean(r["ceiling"]["selected"]), color="k", lw=0.8, ls=":", label="ceiling")
        ax.set_title(target, fontsize=9)
        ax.set_xlabel("adaptation steps")
        ax.set_ylabel("test PSNR (dB)")
    axes[0][0].legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
