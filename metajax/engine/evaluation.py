"""Evaluation of reconstruction methods per task on full-size images: metrics, tables and figures.

A *method* here is ``reconstruct(task_index, operator, y) -> x̂`` for a batch of
measurements ``y`` (n, H, W) of one task. Measurements are drawn once per task
and split from a fixed key (``fold_in(key(seed + 1), task)``), so every method
sees the same data. Metrics are on magnitude images with the reference's
per-image maximum as peak (DESIGN §3): PSNR, SSIM (scikit-image's) and NMSE,
reported as mean ± std over images.
"""

from __future__ import annotations

import csv
import io
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from metajax import metrics
from metajax.models import tv_reconstruction, zero_filled

CHUNK = 4  # images reconstructed per compiled call


def measurements(tasks, split: str, seed: int):
    """``[(operator, x, y)]`` per task: the ``split`` images and their measurements."""
    out = []
    for i in range(tasks.noise_std.shape[0]):
        task = jax.tree.map(lambda a: a[i], tasks)
        x = task.images(split)
        out.append((task.operator, x, task.measure(jax.random.fold_in(jax.random.key(seed + 1), i), x)))
    return out


def network_method(model_for_task, task_index=lambda i: i):
    """A method from ``model_for_task(i)``, a meta model called ``model(operator, y, task_index(i))``
    (jit-compiled, ``CHUNK`` images per call)."""
    compiled = {}

    def reconstruct(i, operator, y):
        if i not in compiled:
            model, index = model_for_task(i), task_index(i)
            compiled[i] = jax.jit(lambda m, op, ys: jax.vmap(lambda v: m(op, v, index))(ys)).lower(
                model, operator, _pad(y[:CHUNK])).compile(), model
        fn, model = compiled[i]
        parts = [fn(model, operator, _pad(y[s:s + CHUNK]))[: len(y[s:s + CHUNK])] for s in range(0, len(y), CHUNK)]
        return jnp.concatenate(parts)

    return reconstruct


def _pad(y):
    return y if len(y) == CHUNK else jnp.concatenate([y, jnp.zeros((CHUNK - len(y), *y.shape[1:]), y.dtype)])


def zero_filled_method(i, operator, y):
    return zero_filled(operator, y)


def widened_search(score, grid, max_widenings: int = 3, log=None) -> tuple[float, dict]:
    """The value of ``grid`` (positive, at least two) with the highest ``score(value)``, never at an edge of what
    was tried: while the best value is the smallest (largest) tried, the grid is extended past it by its end
    ratio (``min²/next``, ``max²/previous``), at most ``max_widenings`` times (``record["at_edge"]`` says when
    they ran out). Returns ``(best, record)``, ``record = {"grid", "scores", "chosen", "widened", "at_edge"}``
    with every value tried in increasing order and its score."""
    grid = sorted(float(v) for v in grid)
    if len(grid) < 2 or grid[0] <= 0:
        raise ValueError(f"a tuning grid needs at least two positive values; got {grid}.")
    tried: dict[float, float] = {}
    widened = 0
    while True:
        for value in grid:
            if value not in tried:
                tried[value] = float(score(value))
        order = sorted(tried)
        best = max(order, key=tried.get)
        if widened == max_widenings or best not in (order[0], order[-1]):
            break
        grid = [best * order[0] / order[1]] if best == order[0] else [best * order[-1] / order[-2]]
        widened += 1
        if log is not None:
            log(f"  λ = {best:g} is at the edge of {[f'{v:g}' for v in order]}: widening to {grid[0]:g}")
    return best, {"grid": order, "scores": [tried[v] for v in order], "chosen": best, "widened": widened,
                  "at_edge": best in (order[0], order[-1])}


def tune_tv(tasks, seed: int, weights, iterations: int, images: int = 0, log=None,
            max_widenings: int = 3) -> tuple[list[float], list[dict]]:
    """Per task, the TV weight λ with the best mean PSNR on the validation split (its first ``images``; 0: all),
    by :func:`widened_search` from the grid ``weights`` (a single weight is used as given, untuned). Returns
    ``(weights, records)``: the chosen λ per task and :func:`widened_search`'s record of each."""
    weights = sorted(float(w) for w in weights)
    best, records = [], []
    for i, (operator, x, y) in enumerate(measurements(tasks, "val", seed)):
        if images:
            x, y = x[:images], y[:images]

        def score(w):
            return jnp.mean(metrics.psnr(jnp.abs(tv_reconstruction(operator, y, w, iterations)), jnp.abs(x)))

        if len(weights) == 1:
            choice, record = weights[0], {"grid": weights, "scores": [float(score(weights[0]))],
                                          "chosen": weights[0], "widened": 0, "at_edge": True}
        else:
            choice, record = widened_search(score, weights, max_widenings, log)
        best.append(choice)
        records.append(record)
        if log is not None:
            log(f"TV task {i}: λ = {choice:g} (validation PSNR " + ", ".join(
                f"{w:g}: {v:.2f}" for w, v in zip(record["grid"], record["scores"])) + ")"
                + (" — still at the edge of the widened grid" if record["at_edge"] and len(weights) > 1 else ""))
    return best, records


def tuning_note(records, labels) -> str:
    """One markdown line per task of :func:`tune_tv`'s records: the chosen λ, the range tried, the widenings."""
    lines = ["TV λ per task (best mean validation PSNR; the grid is widened past a winning edge):", ""]
    for label, r in zip(labels, records):
        edge = " — at the edge of what was tried" if r["at_edge"] else ""
        lines.append(f"- {label}: λ = {r['chosen']:g} of {len(r['grid'])} weights in [{r['grid'][0]:g}, "
                     f"{r['grid'][-1]:g}] (widened {r['widened']}×){edge}")
    return "\n".join(lines)


def tv_method(weights, iterations: int):
    return lambda i, operator, y: tv_reconstruction(operator, y, weights[i], iterations)


def evaluate(methods: dict, tasks, ratios, split: str, seed: int, log=None, labels=None):
    """``(rows, images)``: a row per (method, task) with mean ± std metrics (and the task's ``label`` when
    ``labels`` are given, e.g. its mask family); ``images[method][task]`` the first reconstruction (magnitude),
    plus ``images["truth"]`` and ``images["mask"]``."""
    rows, images = [], {"truth": [], "mask": []}
    data = measurements(tasks, split, seed)
    for i, (operator, x, _) in enumerate(data):
        images["truth"].append(np.abs(np.asarray(x[0])))
        images["mask"].append(np.asarray(operator.mask))
    for name, reconstruct in methods.items():
        images[name] = []
        for i, (operator, x, y) in enumerate(data):
            tic = time.perf_counter()
            recon = jnp.abs(reconstruct(i, operator, y))
            truth = jnp.abs(x)
            scores = {"psnr": metrics.psnr(recon, truth), "ssim": metrics.ssim(recon, truth),
                      "nmse": metrics.nmse(recon, truth)}
            row = {"method": name, "task": i, "ratio": float(ratios[i]), "images": int(len(x))}
            if labels is not None:
                row["label"] = labels[i]
            for k, v in scores.items():
                v = np.asarray(v, np.float64)
                row[k], row[f"{k}_std"] = float(v.mean()), float(v.std())
            row["psnr_images"] = [round(float(v), 4) for v in np.asarray(scores["psnr"])]
            rows.append(row)
            images[name].append(np.asarray(recon[0]))
            if log is not None:
                log(f"evaluated {name} at {row.get('label', f'ratio {ratios[i]:.2f}')}: {row['psnr']:.2f} dB "
                    f"({time.perf_counter() - tic:.1f} s)")
    return rows, images


def markdown(rows, title: str = "", extra=()) -> str:
    """A markdown table of :func:`evaluate`'s rows; the task column shows a row's ``label`` where rows have one
    (else its ratio), and ``extra`` adds columns ``(header, key, format)`` (blank where a row lacks the key)."""
    labelled = any("label" in r for r in rows)
    header = ["method", "task" if labelled else "ratio", "PSNR (dB)", "SSIM", "NMSE", *(h for h, _, _ in extra)]
    lines = ([title, ""] if title else []) + ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        cells = [r["method"], r["label"] if labelled else f"{r['ratio']:.2f}",
                 f"{r['psnr']:.2f} ± {r['psnr_std']:.2f}", f"{r['ssim']:.4f} ± {r['ssim_std']:.4f}",
                 f"{r['nmse']:.5f} ± {r['nmse_std']:.5f}"]
        cells += ["" if r.get(key) is None else format(r[key], fmt) for _, key, fmt in extra]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def to_csv(rows) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def figure(path: Path, images: dict, ratios, zoom: int = 4) -> None:
    """Bian et al. Fig. 1 style: per task a row of reconstructions (with a zoomed inset) and a row of
    error maps, one column per method, the mask and the ground truth first."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = [k for k in images if k not in ("truth", "mask")]
    cols = 1 + len(methods)
    fig, axes = plt.subplots(2 * len(ratios), cols, figsize=(2.6 * cols, 5.2 * len(ratios)), squeeze=False)
    for i, ratio in enumerate(ratios):
        truth = images["truth"][i]
        h, w = truth.shape
        box = (slice(h // 2 - h // (2 * zoom), h // 2 + h // (2 * zoom)),
               slice(w // 2 - w // (2 * zoom), w // 2 + w // (2 * zoom)))
        top, bottom = axes[2 * i], axes[2 * i + 1]
        panels = [("ground truth", truth)] + [(m, images[m][i]) for m in methods]
        for ax, (title, image) in zip(top, panels):
            ax.imshow(image, cmap="gray", vmin=0, vmax=1)
            inset = ax.inset_axes([0.62, 0.62, 0.38, 0.38])
            inset.imshow(image[box], cmap="gray", vmin=0, vmax=1)
            inset.set_xticks([]), inset.set_yticks([])
            psnr = "" if title == "ground truth" else f" {float(metrics.psnr(image, truth)):.2f} dB"
            ax.set_title(f"{title}{psnr}", fontsize=8)
            ax.axis("off")
        bottom[0].imshow(images["mask"][i], cmap="gray")
        bottom[0].set_title(f"mask {ratio:.0%}", fontsize=8)
        for ax, m in zip(bottom[1:], methods):
            ax.imshow(np.abs(images[m][i] - truth), cmap="inferno", vmin=0, vmax=0.1)
            ax.set_title(f"|error| ({m})", fontsize=8)
        for ax in bottom:
            ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
