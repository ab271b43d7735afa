"""One run across processes (jax.distributed over 127.0.0.1, one CPU device per process), and sweeps through
the submitit launcher. JAX's distributed runtime is never initialised inside pytest: every run is a
subprocess, waited for with a timeout and killed by PID."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
TRAIN = [sys.executable, str(ROOT / "experiments" / "train.py")]
CONFIG = ["preset=ci", "trainer.steps=60", "trainer.checkpoint_every=2", "trainer.val_every=20", "eval.figure=false"]
ONE_DEVICE = {"JAX_PLATFORMS": "cpu", "JAX_NUM_CPU_DEVICES": "1"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_pair(run_dir: Path, *overrides) -> list[subprocess.Popen]:
    """Two processes of one run (process 0 first), each with one CPU device."""
    port = free_port()
    return [subprocess.Popen([*TRAIN, *CONFIG, *overrides, f"hydra.run.dir={run_dir}",
                              f"trainer.coordinator=127.0.0.1:{port}", "trainer.num_processes=2",
                              f"trainer.process_id={rank}"],
                             cwd=ROOT, env={**os.environ, **ONE_DEVICE}, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True) for rank in (0, 1)]


def finish(processes, timeout=600) -> list[tuple[int, str, str]]:
    results = []
    for p in processes:
        try:
            out, err = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            for q in processes:
                q.kill()
            raise
        results.append((p.returncode, out, err))
    return results


def assert_same_run(run_dir: Path, reference: Path) -> None:
    import equinox as eqx
    import jax
    from omegaconf import OmegaConf

    from metajax.engine.experiment import Experiment

    ours, theirs = (json.loads((d / "metrics.json").read_text())["rows"] for d in (run_dir, reference))
    for a, b in zip(ours, theirs, strict=True):
        assert (a["method"], a["ratio"]) == (b["method"], b["ratio"])
        assert abs(a["psnr"] - b["psnr"]) < 0.01
    exp = Experiment(OmegaConf.load(reference / "config.yaml"), ROOT)
    one, two = (jax.tree.leaves(eqx.filter(eqx.tree_deserialise_leaves(d / "model.eqx", exp.model(exp.params)),
                                           eqx.is_inexact_array)) for d in (run_dir, reference))
    for a, b in zip(one, two, strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)


@pytest.mark.slow
def test_two_processes_equal_one_process_on_two_devices_and_survive_a_kill(tmp_path):
    """One process on two forced CPU devices, then the same run as two processes with one device each (tasks
    sharded the same way): same metrics and parameters, one writer. Then a pair whose process 1 is SIGKILLed:
    process 0 ends within 60 s, and the same command rerun on both resumes and gives the same result."""
    reference = tmp_path / "single"
    result = subprocess.run([*TRAIN, *CONFIG, f"hydra.run.dir={reference}"], cwd=ROOT, capture_output=True, text=True,
                            timeout=600, env={**os.environ, "JAX_PLATFORMS": "cpu", "JAX_NUM_CPU_DEVICES": "2"})
    assert result.returncode == 0, result.stderr[-3000:]

    run_dir = tmp_path / "pair"
    (rc0, out0, err0), (rc1, out1, err1) = finish(start_pair(run_dir))
    assert rc0 == 0 and rc1 == 0, err0[-3000:] + err1[-3000:]
    assert_same_run(run_dir, reference)
    info = json.loads((run_dir / "run_info.json").read_text())["machine"]
    assert info["processes"] == 2 and len(info["devices"]) == 2
    steps = [json.loads(line)["step"] for line in (run_dir / "train_log.jsonl").read_text().splitlines()]
    assert steps == sorted(set(steps)) and steps[-1] == 60, "each step is logged once, by process 0"
    assert not list(run_dir.rglob(".*.tmp"))
    assert "| method |" in out0 and "| method |" not in out1 and "validation PSNR" not in out1

    run_dir = tmp_path / "killed"
    pair = start_pair(run_dir)
    deadline = time.time() + 300
    while not (run_dir / "checkpoints" / "step_00000004.eqx.sha256").exists() and time.time() < deadline:
        time.sleep(0.05)
    os.kill(pair[1].pid, signal.SIGKILL)
    tic = time.time()
    (rc0, _, err0), _ = finish(pair, timeout=90)
    assert time.time() - tic < 60 and rc0 != 0
    assert "another process died" in err0 or "another task died" in err0, err0[-2000:]
    assert not (run_dir / "model.eqx").exists(), "the run finished before it could be killed"

    (rc0, out0, err0), (rc1, _, err1) = finish(start_pair(run_dir))  # the same command on both processes
    assert rc0 == 0 and rc1 == 0, err0[-3000:] + err1[-3000:]
    step = int(out0.split("resumed from checkpoint")[1].split(" at step ")[1].split()[0])
    assert 4 <= step < 60
    assert_same_run(run_dir, reference)


def test_multi_process_keys_are_checked_before_any_work(tmp_path):
    """Bad multi-process keys fail before any work: the malformed ones in process (tests/console.py), the
    cluster auto-detection in a real subprocess (it asks JAX to join a cluster)."""
    from console import console

    for overrides, key in ((["trainer.coordinator=localhost"], "trainer.coordinator"),
                           (["trainer.num_processes=2"], "trainer.coordinator"),
                           (["trainer.coordinator=127.0.0.1:1", "trainer.num_processes=2", "trainer.process_id=2"],
                            "trainer.process_id")):
        result = console("train", "preset=ci", *overrides, f"hydra.run.dir={tmp_path}")
        assert result.returncode != 0 and key in result.stderr, (overrides, result.stderr[-2000:])
        assert not (tmp_path / "config.yaml").exists()
    result = subprocess.run([*TRAIN, "preset=ci", "trainer.coordinator=auto", f"hydra.run.dir={tmp_path}"], cwd=ROOT,
                            capture_output=True, text=True, timeout=120)  # no cluster here
    assert result.returncode != 0 and "trainer.coordinator=auto" in result.stderr, result.stderr[-2000:]
    assert not (tmp_path / "config.yaml").exists()


@pytest.mark.slow
def test_submitit_local_sweep_runs_each_point_as_two_processes(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    result = subprocess.run([*TRAIN, "-m", "cluster=local", "preset=ci", "eval.figure=false", "trainer.steps=2",
                             "trainer.val_every=0", "trainer.seed=0,1",
                             f"hydra.sweep.dir={tmp_path}"], cwd=ROOT, capture_output=True, text=True, timeout=600,
                            env={**os.environ, **ONE_DEVICE})
    assert result.returncode == 0, result.stderr[-3000:]
    for point in ("0", "1"):
        assert json.loads((tmp_path / point / "run_info.json").read_text())["machine"]["processes"] == 2
        assert {r["ratio"] for r in json.loads((tmp_path / point / "metrics.json").read_text())["rows"]} == {0.2, 0.4}
    table = (tmp_path / "sweep_results.md").read_text()
    assert "trainer.seed=0" in table and "trainer.seed=1" in table
