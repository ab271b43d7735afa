"""The training loop: resumable, fault-checked, sharded over devices and processes, with progress and logs.

``train(cfg, run_dir)`` writes into ``run_dir``:

- ``config.yaml`` (the resolved config; a resumed run must match it),
  ``run_info.json`` (machine, JAX version, devices);
- ``checkpoints/step_XXXXXXXX.eqx`` every ``trainer.checkpoint_every`` steps
  (atomic; the newest ``trainer.keep_checkpoints`` are kept);
- ``train_log.jsonl`` (step, losses, images/s, phases and, every
  ``trainer.val_every`` steps and at steps 0 and last, ``val_psnr``: the mean
  PSNR per task on the full validation images), ``curves.png`` (loss and
  validation PSNR per task);
- ``best.eqx`` / ``best.json``: the parameters with the best mean validation
  PSNR so far and their step;
- ``model.eqx`` (``eqx.tree_serialise_leaves``): the best-on-validation model
  (``trainer.keep_best``, with validation) or the final one; ``omega.json``
  (the learned ω and κ per task, where the model has them) and, for
  ``task_weights``, ``task_weights.json``.

Restarted with the same command after being killed, it resumes from the newest
checkpoint, prints from which step, and produces a byte-identical
``model.eqx``: the parameters and solver state are restored exactly, and the
key and batches of step s are ``fold_in(key(seed), s)`` either way. A changed
configuration is refused (unless ``trainer.allow_config_change``). A NaN/Inf
loss or parameter stops the run with a message naming the step and the
quantity; nothing is written after the last good checkpoint. In a multi-process run
(:mod:`metajax.engine.distributed`) process 0 alone writes all of this.
"""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec
from omegaconf import OmegaConf

from metajax.engine import checkpoint, distributed
from metajax.engine.experiment import Experiment

# Fields that may differ between an interrupted run and its restart.
VOLATILE = ("trainer.resume", "trainer.allow_config_change", "trainer.progress", "trainer.coordinator",
            "trainer.process_id", "trainer.local_device_ids", "trainer.heartbeat_timeout", "trainer.init_timeout",
            "eval")


class TrainingError(RuntimeError):
    """Training stopped on a fault (non-finite loss or parameters)."""


def machine_info() -> dict:
    return {"platform": platform.platform(), "python": platform.python_version(), "jax": jax.__version__,
            "backend": jax.default_backend(), "processes": jax.process_count(),
            "devices": [str(d) for d in jax.devices()]}


def comparable_config(cfg) -> dict:
    container = OmegaConf.to_container(cfg, resolve=True)
    for dotted in VOLATILE:
        *parents, leaf = dotted.split(".")
        node = container
        for p in parents:
            node = node.get(p, {})
        node.pop(leaf, None)
    return container


def _differences(a, b, prefix=""):
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b)):
            yield from _differences(a.get(k), b.get(k), f"{prefix}{k}.")
    elif a != b:
        yield f"{prefix[:-1]}: {a!r} → {b!r}"


def check_resume_config(run_dir: Path, cfg) -> None:
    """Refuse to resume a run whose stored config differs (unless ``trainer.allow_config_change``)."""
    stored_path = run_dir / "config.yaml"
    current = comparable_config(cfg)
    if not checkpoint.latest(run_dir / "checkpoints"):
        return
    if not stored_path.is_file():
        if cfg.trainer.allow_config_change:
            return
        raise TrainingError(f"{run_dir} holds checkpoints but no config.yaml, so nothing shows they belong to this "
                            "configuration. Use a new run directory, or pass trainer.allow_config_change=true to "
                            "resume anyway.")
    changes = list(_differences(comparable_config(OmegaConf.load(stored_path)), current))
    if changes and not cfg.trainer.allow_config_change:
        raise TrainingError(
            f"{run_dir} holds checkpoints of a run with a different configuration ("
            + "; ".join(changes) + "). Use a new run directory, or pass trainer.allow_config_change=true "
            "to resume anyway.")


def all_finite(tree) -> bool:
    return all(bool(jnp.all(jnp.isfinite(leaf))) for leaf in jax.tree.leaves(tree))


def _open_run(cfg, run_dir: Path, exp: Experiment, log):
    """Process 0's side of a (re)start: check or clear the run directory, write the config, and find the step
    to resume from. Returns ``(start, params, state)``."""
    run_dir.mkdir(parents=True, exist_ok=True)
    ckpt_dir = run_dir / "checkpoints"
    if cfg.trainer.resume:
        check_resume_config(run_dir, cfg)
    else:
        checkpoint.clear(ckpt_dir)
    checkpoint.write_text_atomic(run_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
    checkpoint.write_text_atomic(run_dir / "run_info.json", json.dumps(
        {"machine": machine_info(), "config": OmegaConf.to_container(cfg, resolve=True)}, indent=2))
    params, state = exp.params, exp.init_state()
    found = checkpoint.latest(ckpt_dir) if cfg.trainer.resume else None
    if not found:
        (run_dir / "train_log.jsonl").write_text("")
        for name in ("best.eqx", "best.json"):
            (run_dir / name).unlink(missing_ok=True)
        return 0, params, state
    start, path = found
    params, state = checkpoint.load(path, (params, state))
    log(f"resumed from checkpoint {path} at step {start} of {cfg.trainer.steps}")
    log_path = run_dir / "train_log.jsonl"  # the log of the steps before the resume, without those after it
    kept = [line for line in _log_lines(log_path) if json.loads(line)["step"] <= start]
    log_path.write_text("".join(line + "\n" for line in kept))
    return start, params, state


def _log_lines(path: Path) -> list[str]:
    """The complete lines of ``train_log.jsonl``: a last line torn by a kill is dropped (its step is redone)."""
    lines = [line for line in path.read_text().splitlines() if line] if path.is_file() else []
    if lines:
        try:
            json.loads(lines[-1])
        except json.JSONDecodeError:
            lines.pop()
    return lines


def train(cfg, run_dir: Path, base: Path | None = None, log=print) -> dict:
    """Train as configured; returns ``{"experiment", "params", "records", "train_seconds", "resumed_from",
    "compile_seconds"}``: ``records`` is the whole ``train_log.jsonl`` (every step, also those before a resume)
    and ``train_seconds`` the sum of their step times (compilation excluded).

    In a multi-process run (:mod:`metajax.engine.distributed`) every process calls it; process 0 alone
    writes ``run_dir`` and logs, and every process returns the parameters process 0 wrote (``records`` and
    the timings are process 0's; the others return none)."""
    run_dir = Path(run_dir)
    exp = Experiment(cfg, base)  # loads data, fails on missing files before any compute
    writer = distributed.is_writer()
    log = log if writer else (lambda message: None)
    log(exp.data_summary)
    ckpt_dir = run_dir / "checkpoints"
    mesh = exp.mesh()  # checked before the run directory is touched
    start, params, state, refusal = 0, exp.params, exp.init_state(), None
    if writer:
        try:
            start, params, state = _open_run(cfg, run_dir, exp, log)
        except (TrainingError, checkpoint.CheckpointError) as error:
            start, refusal = -1, error
        except OSError as error:  # a read-only or full run directory
            start, refusal = -1, TrainingError(f"cannot write the run directory {run_dir}: {error}")
    start = int(distributed.broadcast(np.int32(start)))  # process 0's decision, taken once
    if start < 0:
        raise refusal or TrainingError("process 0 refused to start the run (its error says why).")
    if start > 0:
        params, state = distributed.broadcast((params, state))
    resumed_from = start or None
    replicated = NamedSharding(mesh, PartitionSpec())
    train_tasks = distributed.put(exp.train_tasks, NamedSharding(mesh, PartitionSpec("tasks")))
    params, state = distributed.put((params, state), replicated)
    compiled, compile_seconds = {}, {}
    images_per_step = exp.num_tasks * cfg.trainer.batch * (1 if exp.method is None else 2)
    log_path = run_dir / "train_log.jsonl"
    validate = cfg.trainer.val_every > 0 and writer
    validation = exp.validation_fn() if validate else None

    def validate_at(step_done, params):
        """Validation PSNR per task after ``step_done`` steps; keeps the best parameters (strict improvement)."""
        params = jax.device_get(params)
        psnr = [float(v) for v in validation(params)]
        mean = sum(psnr) / len(psnr)
        best_path = run_dir / "best.json"
        best = json.loads(best_path.read_text()) if best_path.is_file() else None
        if best is None or mean > best["psnr"]:
            checkpoint.write_atomic(run_dir / "best.eqx", params)
            checkpoint.write_text_atomic(best_path, json.dumps({"step": step_done, "psnr": mean, "per_task": psnr}))
        log(f"step {step_done}: validation PSNR " + " / ".join(f"{v:.2f}" for v in psnr) + f" dB (mean {mean:.2f})")
        return {"step": step_done, "val_psnr": psnr}

    def step_with_key(phases):
        fn = exp.step_fn(phases)
        return lambda p, s, t, i: fn(p, s, t, jax.random.fold_in(jax.random.key(cfg.trainer.seed), i), i)

    if validate and start == 0:
        with open(log_path, "a") as f:
            f.write(json.dumps(validate_at(0, params)) + "\n")
    progress = _progress(cfg, start) if writer else None
    try:
        for step in range(start, cfg.trainer.steps):
            phases = exp.phases_at(step)
            inputs = (params, state, train_tasks, distributed.put(np.int32(step), replicated))
            if phases not in compiled:
                tic = time.perf_counter()
                compiled[phases] = jax.jit(step_with_key(phases), out_shardings=replicated).lower(*inputs).compile()
                compile_seconds[phases] = time.perf_counter() - tic
                log(f"compiled the training step ({phases} phases) in {compile_seconds[phases]:.1f} s")
            tic = time.perf_counter()
            try:
                new_params, new_state, metrics = compiled[phases](*inputs)
                loss = float(metrics["loss"])
            except Exception as error:  # eqx.error_if of meta_gradient: a loss became NaN/Inf inside the step
                reason = next((line.strip() for line in str(error).splitlines() if "non-finite" in line), None)
                if reason is None:
                    raise
                raise TrainingError(f"step {step}: {reason} Training stopped; the last good checkpoint in "
                                    f"{ckpt_dir} is unchanged.") from None
            elapsed = time.perf_counter() - tic
            if not np.isfinite(loss):
                raise TrainingError(f"step {step}: the training loss is {loss}. Training stopped; the last good "
                                    f"checkpoint in {ckpt_dir} is unchanged.")
            if not all_finite(new_params):
                raise TrainingError(f"step {step}: the parameters became non-finite after the update. Training "
                                    f"stopped; the last good checkpoint in {ckpt_dir} is unchanged.")
            params, state = new_params, new_state
            if not writer:
                continue
            record = {"step": step + 1, "phases": phases, "seconds": elapsed,
                      "images_per_s": images_per_step / elapsed, **{k: float(v) for k, v in metrics.items()}}
            if validate and ((step + 1) % cfg.trainer.val_every == 0 or step + 1 == cfg.trainer.steps):
                record["val_psnr"] = validate_at(step + 1, params)["val_psnr"]
            with open(log_path, "a") as f:
                f.write(json.dumps(record) + "\n")
            if progress is not None:
                progress.set_postfix(loss=f"{loss:.3e}", img_s=f"{record['images_per_s']:.1f}")
                progress.update(1)
            elif (step + 1) % cfg.trainer.log_every == 0 or step + 1 == cfg.trainer.steps:
                log(f"step {step + 1}/{cfg.trainer.steps} loss {loss:.4e} ({record['images_per_s']:.1f} images/s)")
            if (step + 1) % cfg.trainer.checkpoint_every == 0 or step + 1 == cfg.trainer.steps:
                # the parameters and solver state are replicated: every process holds them whole
                checkpoint.save(ckpt_dir, step + 1, jax.device_get((params, state)), cfg.trainer.keep_checkpoints)
    finally:
        if progress is not None:
            progress.close()
    params = jax.device_get(params)
    records, best = [], None
    if writer:
        best = json.loads((run_dir / "best.json").read_text()) if validate and (run_dir / "best.json").is_file() \
            else None
        if best is not None and cfg.trainer.keep_best:
            params = checkpoint.load(run_dir / "best.eqx", params)
            log(f"model.eqx: the best-on-validation parameters (step {best['step']}, mean PSNR {best['psnr']:.2f} dB)")
        model = exp.model(params)
        checkpoint.write_atomic(run_dir / "model.eqx", model)
        _write_task_parameters(run_dir, exp, model, params)
        records = [json.loads(line) for line in _log_lines(log_path)]
        _curves(run_dir, records, list(cfg.tasks.ratios))
    params = distributed.broadcast(params)  # every process goes on with the model process 0 wrote
    return {"experiment": exp, "params": params, "records": records,
            "train_seconds": sum(r.get("seconds", 0.0) for r in records), "resumed_from": resumed_from,
            "compile_seconds": compile_seconds, "best": best}


def _progress(cfg, start):
    if not cfg.trainer.progress:
        return None
    from tqdm import tqdm

    return tqdm(total=cfg.trainer.steps, initial=start, desc=f"train ({cfg.solver.name})", unit="step")


def kappa_of(net, omega):
    """The task weight κ(ω) of ``net``: its own ``kappa`` (DCNet: 2·sigmoid(ω)) or the LOA's sigmoid(ω)."""
    return net.kappa(omega) if hasattr(net, "kappa") else jax.nn.sigmoid(omega)


def _write_task_parameters(run_dir: Path, exp: Experiment, model, params) -> None:
    omega = getattr(model, "omega", None)
    if omega is not None:
        (run_dir / "omega.json").write_text(json.dumps(
            {"ratios": list(exp.cfg.tasks.ratios), "omega": np.asarray(omega).tolist(),
             "kappa": np.asarray(kappa_of(model.net, omega)).tolist()}, indent=2))
    if exp.name == "task_weights":
        (run_dir / "task_weights.json").write_text(json.dumps(
            {"ratios": list(exp.cfg.tasks.ratios), "weights": np.asarray(params.weights).tolist()}, indent=2))


def _curves(run_dir: Path, records: list[dict], ratios=()) -> None:
    """Training loss (left) and validation PSNR per task (right, when validated)."""
    steps = [r for r in records if "loss" in r]
    validated = [r for r in records if "val_psnr" in r]
    if not steps:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2 if validated else 1, figsize=(11 if validated else 6, 3.5), squeeze=False)
    ax = axes[0, 0]
    for key in ("loss", "inner_loss"):
        if key in steps[0]:
            ax.plot([r["step"] for r in steps], [r[key] for r in steps], label=key, lw=0.8)
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_title("training loss (per batch)", fontsize=9)
    ax.legend()
    ax.grid(alpha=0.3)
    if validated:
        ax = axes[0, 1]
        for i in range(len(validated[0]["val_psnr"])):
            label = f"{ratios[i]:.0%}" if i < len(ratios) else f"task {i}"
            ax.plot([r["step"] for r in validated], [r["val_psnr"][i] for r in validated], "o-", ms=3, label=label)
        ax.set_xlabel("step")
        ax.set_ylabel("PSNR (dB)")
        ax.set_title("validation PSNR per task (full images)", fontsize=9)
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(run_dir / "curves.png", dpi=80)
    plt.close(fig)
