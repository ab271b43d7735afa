"""The Hydra entry points end to end (real subprocesses): outputs, sweeps, kill-and-resume, faults, sharding."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run(entry: str, *overrides, cwd=None, env=None, check=True):
    command = [sys.executable, str(ROOT / "experiments" / f"{entry}.py"), *overrides]
    result = subprocess.run(command, capture_output=True, text=True, timeout=900, cwd=cwd or ROOT,
                            env={**os.environ, **(env or {})})
    if check:
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def test_train_evaluate_baselines_adapt_end_to_end(tmp_path):
    train_dir = tmp_path / "train"
    result = run("train", "preset=ci", f"hydra.run.dir={train_dir}")
    for name in ("model.eqx", "metrics.json", "results.md", "results.csv", "reconstructions.png", "omega.json",
                 "train_log.jsonl", "run_info.json", "config.yaml", "curves.png"):
        assert (train_dir / name).is_file(), name
    assert len(list((train_dir / "checkpoints").glob("step_*.eqx"))) == 2  # 3 written, the newest 2 kept
    rows = json.loads((train_dir / "metrics.json").read_text())["rows"]
    assert [r["ratio"] for r in rows] == [0.2, 0.4] and all(r["psnr"] > 10 for r in rows)
    assert "loa (penalty)" in result.stdout

    evaluated = tmp_path / "evaluate"
    run("evaluate", "preset=ci", f"model_dir={train_dir}", f"hydra.run.dir={evaluated}")
    again = json.loads((evaluated / "metrics.json").read_text())["rows"]
    assert [r["psnr"] for r in again] == pytest.approx([r["psnr"] for r in rows], rel=1e-6)

    baselines = tmp_path / "baselines"
    run("baselines", "preset=ci", f"hydra.run.dir={baselines}")
    methods = {r["method"] for r in json.loads((baselines / "metrics.json").read_text())["rows"]}
    assert methods == {"zero-filled", "TV", "conventional"}

    adapted = tmp_path / "adapt"
    run("adapt", "preset=ci", f"adapt.model_dir={train_dir}", "tasks.ratios=[0.3]", "adapt.images=2",
        "adapt.steps=3", f"hydra.run.dir={adapted}")
    methods = [r["method"] for r in json.loads((adapted / "metrics.json").read_text())["rows"]]
    assert methods == ["before adaptation", "adapted (omega, supervised)"]
    finetuned = tmp_path / "finetune"
    run("adapt", "preset=ci", f"adapt.model_dir={train_dir}", "adapt.mode=finetune", "adapt.loss=measurement",
        "adapt.images=2", "adapt.steps=2", "eval.figure=false", f"hydra.run.dir={finetuned}")
    assert (finetuned / "metrics.json").is_file()


def test_conventional_per_task_trains_one_network_per_task(tmp_path):
    run("train", "preset=ci", "solver=conventional", "solver.per_task=true", "eval.figure=false",
        f"hydra.run.dir={tmp_path}")
    rows = json.loads((tmp_path / "metrics.json").read_text())["rows"]
    assert [r["method"] for r in rows] == ["loa (conventional)"] * 2


def test_sweep_over_every_solver_writes_one_table(tmp_path):
    solvers = ["penalty", "implicit", "maml", "fomaml", "task_weights", "conventional"]
    run("train", "-m", "preset=ci", f"solver={','.join(solvers)}", "trainer.steps=2", "tasks.ratios=[0.3,0.4]",
        "eval.figure=false", f"hydra.sweep.dir={tmp_path}")
    table = (tmp_path / "sweep_results.md").read_text()
    for solver in solvers:
        assert f"solver={solver}" in table and f"loa ({solver})" in table, table
    assert len(table.splitlines()) == 2 + 2 * len(solvers)  # header + one row per run and task
    assert (tmp_path / "4" / "task_weights.json").is_file()


def test_config_errors_fail_fast_naming_the_key(tmp_path):
    for override, message in (("trainer.steps=abc", "trainer.steps"), ("trainer.stepz=3", "trainer.stepz"),
                              ("data.source=fastmri", "data.path"),
                              ("data.path=/nonexistent.h5", "data.path")):
        extra = ["data.source=fastmri"] if override.startswith("data.path") else []
        result = run("train", "preset=ci", override, *extra, f"hydra.run.dir={tmp_path}", check=False)
        assert result.returncode != 0
        assert message in result.stdout + result.stderr, result.stdout + result.stderr
        assert not (tmp_path / "train_log.jsonl").exists()  # failed before any training


def test_injected_nan_stops_training_and_keeps_the_last_good_checkpoint(tmp_path):
    result = run("train", "preset=ci", "trainer.inject_nan_at=3", f"hydra.run.dir={tmp_path}", check=False)
    assert result.returncode != 0
    assert "step 3" in result.stderr and "non-finite" in result.stderr, result.stderr
    checkpoints = sorted((tmp_path / "checkpoints").glob("step_*.eqx"))
    assert [p.name for p in checkpoints] == ["step_00000002.eqx"]
    assert not (tmp_path / "model.eqx").exists()
    import equinox as eqx
    import jax
    from omegaconf import OmegaConf

    from metajax.engine.experiment import Experiment

    exp = Experiment(OmegaConf.load(tmp_path / "config.yaml"), ROOT)
    params, state = eqx.tree_deserialise_leaves(checkpoints[0], (exp.params, exp.init_state()))
    assert int(state.step) == 2 and all(bool(jax.numpy.all(jax.numpy.isfinite(a))) for a in jax.tree.leaves(params))


def test_sigkill_and_resume_gives_a_byte_identical_model(tmp_path):
    overrides = ["preset=ci", "trainer.steps=300", "trainer.checkpoint_every=5", "eval.figure=false"]
    run("train", *overrides, f"hydra.run.dir={tmp_path / 'straight'}")
    killed = tmp_path / "killed"
    process = subprocess.Popen([sys.executable, str(ROOT / "experiments" / "train.py"), *overrides,
                                f"hydra.run.dir={killed}"], cwd=ROOT, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    deadline = time.time() + 600
    while not list((killed / "checkpoints").glob("step_*.eqx")) and time.time() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (killed / "model.eqx").exists(), "the run finished before it could be killed"
    result = run("train", *overrides, f"hydra.run.dir={killed}")
    assert "resumed from checkpoint" in result.stdout
    step = int(result.stdout.split(" at step ")[1].split()[0])
    assert 0 < step < 300
    assert (killed / "model.eqx").read_bytes() == (tmp_path / "straight" / "model.eqx").read_bytes()


def test_two_devices_give_the_same_parameters_as_one(tmp_path):
    """XLA_FLAGS forces two CPU devices in the subprocess; tasks are sharded over them."""
    import equinox as eqx
    import jax
    import numpy as np
    from omegaconf import OmegaConf

    from metajax.engine.experiment import Experiment

    flags = {"XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    for devices in (1, 2):
        run("train", "preset=ci", f"trainer.devices={devices}", "eval.figure=false",
            f"hydra.run.dir={tmp_path / str(devices)}", env=flags)
    exp = Experiment(OmegaConf.load(tmp_path / "1" / "config.yaml"), ROOT)
    like = exp.model(exp.params)
    one, two = (eqx.tree_deserialise_leaves(tmp_path / str(d) / "model.eqx", like) for d in (1, 2))
    for a, b in zip(jax.tree.leaves(eqx.filter(one, eqx.is_inexact_array)),
                    jax.tree.leaves(eqx.filter(two, eqx.is_inexact_array))):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-5, atol=1e-6)
    info = json.loads((tmp_path / "2" / "run_info.json").read_text())
    assert len(info["machine"]["devices"]) == 2


def test_presets_compose_with_the_chosen_groups():
    """A preset never overrides the data a user selects; `paper` selects chest data, shared masks, the paper LOA."""
    from hydra import compose, initialize

    from metajax.engine.config import register

    register()
    with initialize(version_base=None):
        quick_chest = compose("run", overrides=["data=chest", "tasks=shared_radial"])
        assert (quick_chest.data.size, list(quick_chest.data.test)) == (256, [85, 100])
        assert quick_chest.tasks.crop == 48 and quick_chest.eval.baselines
        paper = compose("run", overrides=["preset=paper"])
        assert (paper.data.source, paper.tasks.mask, paper.model.name, paper.model.phases) == (
            "fastmri", "file", "loa_paper", 11)
        assert paper.trainer.stair and paper.trainer.lr == 1e-3
        assert compose("run", overrides=["preset=paper", "data=default"]).data.source == "default"
        ci = compose("run", overrides=["preset=ci"])
        assert ci.trainer.steps == 6 and ci.data.size == 32
