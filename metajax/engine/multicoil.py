"""Multi-coil training and evaluation on simulated acquisitions of the embedded chest images.

Everything here is **simulation** (:mod:`metajax.data.multicoil`): the chest
magnitude images with a smooth random phase, random coil arrays and white
complex noise; coil maps are *estimated* from each acquisition's own
auto-calibration centre (ESPIRiT), as they would be on a scanner, never the true ones.

A task is a mask family at an acceleration (:data:`TASKS`). Each (image, task)
pair is simulated once with its own key — coil count, geometry, phase, noise —
and its ESPIRiT maps are computed from the centre block that every mask of the
task samples (fastMRI's centre columns over 24 readout rows, or the 2-D
centre block); training draws a new mask of the task at every step.

Scaling follows ``metajax-reconstruct``: each slice's measurements and target are
divided by the maximum of its zero-filled (SENSE-combined) magnitude.
The reference is the noiseless root-sum-of-squares image; the training target is
its complex counterpart in the ESPIRiT phase convention,
``x_ref = Σ_c conj(E_c) S_c x`` (noiseless coil images combined with the estimated maps), whose
magnitude equals the RSS image inside the maps' support.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

from metajax import masks, metrics
from metajax.data.multicoil import simulate_multicoil
from metajax.operators import MultiCoilMRI
from metajax.operators.fourier import ifft2c
from metajax.operators.sensitivity import espirit, espirit_kernel

TASKS = (("fastmri_random", 4.0), ("fastmri_random", 8.0), ("fastmri_equispaced", 4.0),
         ("fastmri_equispaced", 8.0), ("poisson_disc", 4.0), ("poisson_disc", 8.0))
"""(family, acceleration) of the multi-coil tasks: fastMRI's 1-D masks and Poisson-disc, 4× and 8×."""


def center_fraction(acceleration: float) -> float:
    """fastMRI's centre fraction: 0.08 at 4×, 0.04 at 8×."""
    return 0.08 if acceleration <= 4 else 0.04


def task_mask(key, family: str, acceleration: float, shape=(256, 256)) -> jax.Array:
    """A mask of the task (fastMRI's centre fractions)."""
    return masks.family_mask(key, family, shape, 1.0 / acceleration, center_fraction(acceleration))


def calibration_block(family: str, acceleration: float, shape=(256, 256)) -> tuple[int, int]:
    """The centred block every mask of the task samples fully (the ESPIRiT calibration region), at most 24 wide:
    24 rows × the centre columns for the 1-D families, the centre block for the 2-D ones."""
    cf = center_fraction(acceleration)
    h, w = shape
    columns = round(w * cf)
    if family.startswith("fastmri"):
        return min(24, h), min(24, columns)
    return min(24, round(h * cf)), min(24, columns)


@dataclasses.dataclass
class SimulatedSet:
    """Simulated acquisitions, stacked: ``kspace`` (N, C, H, W) fully sampled with noise, ``maps`` (N, C, H, W)
    ESPIRiT estimates, ``target`` (N, H, W) complex reference (module docstring), ``rss`` (N, H, W) noiseless
    RSS, ``task`` (N,) task index, ``coils`` (N,) number of real coils (the rest are zero padding)."""

    kspace: np.ndarray
    maps: np.ndarray
    target: np.ndarray
    rss: np.ndarray
    task: np.ndarray
    coils: np.ndarray


_simulate = jax.jit(simulate_multicoil, static_argnums=(2,))


def simulate_set(images: np.ndarray, key, tasks=TASKS, coils=(8,), max_coils: int | None = None,
                 snr=(30.0, 30.0), log=print) -> SimulatedSet:
    """One simulated acquisition per (image, task); coil count uniform in ``coils``, SNR log-uniform in ``snr``.

    Acquisitions with fewer than ``max_coils`` (default ``max(coils)``) coils are padded with zero coils (zero
    k-space and maps), which changes no operator but lets them stack.
    """
    max_coils = max(coils) if max_coils is None else max_coils
    out = {k: [] for k in ("kspace", "maps", "target", "rss", "task", "coils")}
    tic = time.perf_counter()
    for t, (family, acc) in enumerate(tasks):
        calib = calibration_block(family, acc, images.shape[-2:])
        for i, image in enumerate(images):
            k = jax.random.fold_in(jax.random.fold_in(key, t), i)
            k_c, k_s, k_sim = jax.random.split(k, 3)
            c = int(jax.random.choice(k_c, jnp.asarray(coils)))
            s = float(jnp.exp(jax.random.uniform(k_s, (), minval=np.log(snr[0]), maxval=np.log(snr[1]))))
            sim = _simulate(k_sim, jnp.asarray(image), c, s)
            pad = [(0, max_coils - c), (0, 0), (0, 0)]
            kspace = jnp.pad(sim.kspace, pad)  # zero coils before ESPIRiT: one compilation for every coil count
            maps = espirit(kspace, calib, kernel=espirit_kernel(calib))
            target = jnp.sum(jnp.conj(maps) * jnp.pad(sim.maps, pad) * sim.image, axis=0)
            out["kspace"].append(np.asarray(kspace, np.complex64))
            out["maps"].append(np.asarray(maps, np.complex64))
            out["target"].append(np.asarray(target, np.complex64))
            out["rss"].append(np.asarray(sim.target, np.float32))
            out["task"].append(t)
            out["coils"].append(c)
        log(f"simulated task {family} {acc:g}× ({len(images)} images, {time.perf_counter() - tic:.0f} s)")
    return SimulatedSet(**{k: np.stack(v) for k, v in out.items()})


def save_set(path: Path, data: SimulatedSet) -> None:
    """Cache a simulated set (``.npz``, uncompressed)."""
    np.savez(path, **{f.name: getattr(data, f.name) for f in dataclasses.fields(data)})


def load_set(path: Path) -> SimulatedSet:
    with np.load(path) as f:
        return SimulatedSet(**{k: f[k] for k in f.files})


def first_images(data: SimulatedSet, count: int) -> SimulatedSet:
    """The acquisitions of the first ``count`` images of every task (the sets are stacked task by task)."""
    keep = np.concatenate([np.flatnonzero(data.task == t)[:count] for t in np.unique(data.task)])
    return SimulatedSet(**{f.name: getattr(data, f.name)[keep] for f in dataclasses.fields(data)})


def scaled(kspace, maps, mask, target=None):
    """``(y / s, x0 / s, s[, target / s])`` with ``s`` the maximum of the zero-filled magnitude ``|A^H y|``."""
    op = MultiCoilMRI(mask, maps)
    y = jnp.where(mask, kspace, 0)
    x0 = op.adjoint(y)
    s = jnp.max(jnp.abs(x0))
    return (y / s, x0 / s, s) + (() if target is None else (target / s,))


class MaskBank:
    """Training masks: the 1-D families drawn fresh at every step (cheap), the 2-D Poisson-disc ones from a bank
    of ``bank`` masks per task drawn once (a Poisson-disc mask takes seconds to generate). Every mask is checked
    to sample its task's calibration block."""

    def __init__(self, key, tasks=TASKS, shape=(256, 256), bank: int = 4):
        self.tasks, self.shape = tasks, shape
        self.banks = {t: np.stack([np.asarray(task_mask(jax.random.fold_in(jax.random.fold_in(key, t), j), f, a,
                                                        shape)) for j in range(bank)])
                      for t, (f, a) in enumerate(tasks) if not f.startswith("fastmri")}

    def sample(self, key, tasks_of_batch) -> jax.Array:
        """(B, H, W): a mask of each example's task."""
        out = []
        for j, t in enumerate(tasks_of_batch):
            k = jax.random.fold_in(key, j)
            if int(t) in self.banks:
                out.append(self.banks[int(t)][int(jax.random.randint(k, (), 0, len(self.banks[int(t)])))])
            else:
                out.append(np.asarray(task_mask(k, *self.tasks[int(t)], self.shape)))
            family, acc = self.tasks[int(t)]
            ch, cw = calibration_block(family, acc, self.shape)
            top, left = self.shape[0] // 2 - ch // 2, self.shape[1] // 2 - cw // 2
            if not out[-1][top:top + ch, left:left + cw].all():
                raise AssertionError(f"a {family} {acc:g}× mask misses its calibration block {ch}×{cw}")
        return jnp.asarray(np.stack(out))


def _loss(model, y, maps, mask, target, task):
    """Mean over the batch of log(‖f(y) − x_ref‖² / ‖x_ref‖²): every slice's relative error weighs the same."""

    def one(y, maps, mask, target, task):
        x = model(MultiCoilMRI(mask, maps), y, task)
        return jnp.log(jnp.sum(jnp.abs(x - target) ** 2) / jnp.sum(jnp.abs(target) ** 2))

    return jnp.mean(jax.vmap(one)(y, maps, mask, target, task))


@dataclasses.dataclass(frozen=True)
class TrainSettings:
    steps: int = 700
    batch: int = 2
    lr: float = 3e-4
    omega_lr: float = 1e-2
    seed: int = 0
    val_every: int = 100
    checkpoint_every: int = 25


def _prepare(data: SimulatedSet, idx, masks_):
    ys, x0s, ss, ts = jax.vmap(scaled)(jnp.asarray(data.kspace[idx]), jnp.asarray(data.maps[idx]), masks_,
                                       jnp.asarray(data.target[idx]))
    return ys, ts


def validation_masks(tasks=TASKS, shape=(256, 256), seed: int = 0) -> list:
    """One fixed mask per task (key ``fold_in(key(seed + 1), task)``) for validation and test."""
    return [task_mask(jax.random.fold_in(jax.random.key(seed + 1), t), f, a, shape) for t, (f, a) in enumerate(tasks)]


def reconstruct_set(model, data: SimulatedSet, fixed_masks) -> np.ndarray:
    """(N, H, W) magnitude reconstructions of every acquisition with its task's fixed mask, on the RSS scale."""
    fn = eqx.filter_jit(lambda m, y, maps, mask, t: m(MultiCoilMRI(mask, maps), y, t))
    out = []
    for i in range(len(data.task)):
        mask = fixed_masks[int(data.task[i])]
        y, _, s = scaled(jnp.asarray(data.kspace[i]), jnp.asarray(data.maps[i]), mask)
        out.append(np.abs(np.asarray(fn(model, y, jnp.asarray(data.maps[i]), mask, jnp.asarray(data.task[i])))) *
                   float(s))
    return np.stack(out)


def scores(recon: np.ndarray, reference: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-slice PSNR and SSIM of magnitude images against the RSS reference (peak: the reference's maximum)."""
    r, ref = jnp.asarray(recon), jnp.asarray(reference)
    return np.asarray(metrics.psnr(r, ref)), np.asarray(metrics.ssim(r, ref))


def train(model, train_set: SimulatedSet, val_set: SimulatedSet, out_dir: Path, settings: TrainSettings,
          log=print):
    """Adam on :func:`_loss` (θ at ``lr`` with a cosine decay, ω at ``omega_lr``), a fresh mask per example and
    step, batches from ``(seed, step)``; checkpoints every ``checkpoint_every`` steps into ``out_dir`` and resumes
    from them; keeps the best model on the validation set (mean PSNR over tasks, every ``val_every`` steps).
    Returns ``(best model, history)``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    schedule = optax.cosine_decay_schedule(settings.lr, settings.steps, alpha=0.05)
    labels = jax.tree_util.tree_map(lambda _: "theta", eqx.filter(model, eqx.is_inexact_array))
    labels = eqx.tree_at(lambda m: m.omega, labels, "omega")
    optimizer = optax.multi_transform({"theta": optax.adam(schedule), "omega": optax.adam(settings.omega_lr)},
                                      lambda _: labels)  # a function: the labels tree is itself callable
    opt_state = optimizer.init(eqx.filter(model, eqx.is_inexact_array))
    ckpt = out_dir / "checkpoint.eqx"
    meta = out_dir / "checkpoint.json"
    start, history, best = 0, {"loss": [], "val": []}, (-np.inf, None)
    if ckpt.is_file() and meta.is_file():
        state = json.loads(meta.read_text())
        model, opt_state = eqx.tree_deserialise_leaves(ckpt, (model, opt_state))
        start, history = state["step"], state["history"]
        if (out_dir / "best.eqx").is_file():
            best = (state["best_psnr"], eqx.tree_deserialise_leaves(out_dir / "best.eqx", model))
        log(f"resumed from step {start}")
    fixed = validation_masks()
    bank = MaskBank(jax.random.key(settings.seed + 2))

    @eqx.filter_jit
    def step(model, opt_state, y, maps, mask, target, task):
        loss, grads = eqx.filter_value_and_grad(_loss)(model, y, maps, mask, target, task)
        updates, opt_state = optimizer.update(grads, opt_state, eqx.filter(model, eqx.is_inexact_array))
        return eqx.apply_updates(model, updates), opt_state, loss

    n = len(train_set.task)
    tic = time.perf_counter()
    for i in range(start, settings.steps):
        key = jax.random.fold_in(jax.random.key(settings.seed), i)
        idx = np.asarray(jax.random.choice(key, n, (settings.batch,), replace=False))
        m = bank.sample(jax.random.fold_in(key, 1), train_set.task[idx])
        y, target = _prepare(train_set, idx, m)
        model, opt_state, loss = step(model, opt_state, y, jnp.asarray(train_set.maps[idx]), m, target,
                                      jnp.asarray(train_set.task[idx]))
        history["loss"].append(float(loss))
        done = i + 1
        if done % settings.val_every == 0 or done == settings.steps:
            psnr, _ = scores(reconstruct_set(model, val_set, fixed), val_set.rss)
            per_task = [float(psnr[val_set.task == t].mean()) for t in range(len(TASKS))]
            history["val"].append([done, per_task])
            if np.mean(per_task) > best[0]:
                best = (float(np.mean(per_task)), model)
                eqx.tree_serialise_leaves(out_dir / "best.eqx", model)
            log(f"step {done}: loss {np.mean(history['loss'][-settings.val_every:]):.4f}, validation PSNR "
                + " / ".join(f"{p:.2f}" for p in per_task) + f" ({time.perf_counter() - tic:.0f} s)")
        if done % settings.checkpoint_every == 0 or done == settings.steps:
            eqx.tree_serialise_leaves(ckpt, (model, opt_state))
            history["seconds"] = history.get("seconds", 0.0) + time.perf_counter() - tic
            tic = time.perf_counter()
            meta.write_text(json.dumps({"step": done, "history": history, "best_psnr": best[0]}))
    return (best[1] if best[1] is not None else model), history


def zero_filled_set(data: SimulatedSet, fixed_masks) -> np.ndarray:
    """(N, H, W) SENSE-combined zero-filled magnitudes ``|A^H y|`` with the estimated maps."""
    return np.stack([np.abs(np.asarray(MultiCoilMRI(fixed_masks[int(t)], jnp.asarray(m)).adjoint(
        jnp.where(fixed_masks[int(t)], jnp.asarray(k), 0)))) for k, m, t in zip(data.kspace, data.maps, data.task)])


def rss_zero_filled_set(data: SimulatedSet, fixed_masks) -> np.ndarray:
    """(N, H, W) root-sum-of-squares of the zero-filled coil images (fastMRI's zero-filled baseline)."""
    return np.stack([np.sqrt(np.sum(np.abs(np.asarray(ifft2c(jnp.where(fixed_masks[int(t)], jnp.asarray(k), 0))))
                                    ** 2, axis=0)) for k, t in zip(data.kspace, data.task)])


def classical_methods(tv_iterations: int = 300, wavelet_iterations: int = 200, sense_iterations: int = 30) -> dict:
    """``{name: (solve(operator, y, λ), initial λ grid)}`` of the classical baselines on scaled measurements."""
    from metajax.models import l1_wavelet_reconstruction, sense_reconstruction, tv_reconstruction

    return {
        "SENSE": (lambda op, y, lam: sense_reconstruction(op, y, lam, sense_iterations), [1e-3, 1e-2, 3e-2, 1e-1]),
        "TV": (lambda op, y, lam: tv_reconstruction(op, y, lam, tv_iterations), [3e-4, 1e-3, 3e-3, 1e-2]),
        "l1-wavelet": (lambda op, y, lam: l1_wavelet_reconstruction(op, y, lam, wavelet_iterations, "db4", 4),
                       [3e-4, 1e-3, 3e-3, 1e-2]),
    }


def solve_set(solve, data: SimulatedSet, fixed_masks, weight) -> np.ndarray:
    """(N, H, W) magnitudes of ``solve`` on every acquisition (scaled as the model sees it, rescaled back)."""
    out = []
    for k, maps, t in zip(data.kspace, data.maps, data.task):
        mask = fixed_masks[int(t)]
        y, _, s = scaled(jnp.asarray(k), jnp.asarray(maps), mask)
        out.append(np.abs(np.asarray(solve(MultiCoilMRI(mask, jnp.asarray(maps)), y, weight))) * float(s))
    return np.stack(out)


def tune(solve, grid, data: SimulatedSet, fixed_masks, max_widenings: int = 3, log=print) -> tuple[float, dict]:
    """λ with the best mean validation PSNR on ``data`` (one task), by
    :func:`metajax.engine.evaluation.widened_search` (the grid is widened past whichever end wins, so the choice
    is never at an edge of what was tried unless the widenings run out, which the record says)."""
    from metajax.engine.evaluation import widened_search

    return widened_search(lambda lam: scores(solve_set(solve, data, fixed_masks, lam), data.rss)[0].mean(), grid,
                          max_widenings, log)
