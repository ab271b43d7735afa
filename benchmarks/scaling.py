"""Throughput of the meta-training step over devices and processes.

    python benchmarks/scaling.py [--steps 12] [--preset quick]

Runs ``metajax-train preset=PRESET`` (validation, baselines and figures off) once per layout, on CPU devices:
1 process × 1 device, 1 process × 2 devices (``JAX_NUM_CPU_DEVICES=2``: tasks sharded over the two) and
2 processes × 1 device (``jax.distributed`` over 127.0.0.1, gloo collectives). Reports the median images/s of
the steps after the first (compilation excluded: ``train_log.jsonl``) and the ratio to 1 × 1, and checks that
the three layouts reach the same final training loss. On a machine with fewer cores than devices the layouts
share the cores, so the ratios measure the overhead of sharding, not a speed-up.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import write

ROOT = Path(__file__).resolve().parents[1]


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_layout(processes: int, devices: int, overrides: list[str], run_dir: Path) -> dict:
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "JAX_NUM_CPU_DEVICES": str(devices)}
    command = [sys.executable, str(ROOT / "experiments" / "train.py"), *overrides, f"hydra.run.dir={run_dir}"]
    if processes > 1:
        port = _port()
        commands = [[*command, f"trainer.coordinator=127.0.0.1:{port}", f"trainer.num_processes={processes}",
                     f"trainer.process_id={rank}"] for rank in range(processes)]
    else:
        commands = [command]
    tic = time.perf_counter()
    children = [subprocess.Popen(c, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
                for c in commands]
    for child in children:
        _, err = child.communicate(timeout=3600)
        if child.returncode:
            raise RuntimeError(f"{processes} × {devices}: metajax-train failed:\n{err[-3000:]}")
    wall = time.perf_counter() - tic
    records = [json.loads(line) for line in (run_dir / "train_log.jsonl").read_text().splitlines()]
    steps = [r for r in records if "images_per_s" in r][1:]
    return {"layout": f"{processes} process{'es' if processes > 1 else ''} × {devices} device{'s' * (devices > 1)}",
            "processes": processes, "devices_per_process": devices,
            "images_per_s": statistics.median(r["images_per_s"] for r in steps),
            "step_seconds": statistics.median(r["seconds"] for r in steps),
            "final_loss": records[-1]["loss"], "wall_seconds": wall}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--preset", default="quick")
    args = parser.parse_args()
    overrides = [f"preset={args.preset}", f"trainer.steps={args.steps}", f"trainer.checkpoint_every={args.steps}",
                 "trainer.val_every=0", "trainer.progress=false", "eval.baselines=false", "eval.pretrained=null",
                 "eval.figure=false"]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for processes, devices in ((1, 1), (1, 2), (2, 1)):
            rows.append(run_layout(processes, devices, overrides, Path(tmp) / f"{processes}x{devices}"))
            print(rows[-1], flush=True)
    for row in rows:
        row["ratio"] = row["images_per_s"] / rows[0]["images_per_s"]
        row["loss_vs_1x1"] = abs(row["final_loss"] - rows[0]["final_loss"]) / abs(rows[0]["final_loss"])
    write("scaling", rows, ["layout", "images_per_s", "ratio", "step_seconds", "final_loss", "loss_vs_1x1",
                            "wall_seconds"],
          note=f"`metajax-train preset={args.preset}`, {args.steps} steps, median over steps 2…{args.steps} "
               f"(compilation excluded); {os.cpu_count()} CPU cores shared by every layout.",
          extra={"overrides": overrides})


if __name__ == "__main__":
    main()
