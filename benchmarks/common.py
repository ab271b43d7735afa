"""Shared benchmark helpers: machine description, wall-clock timing, JSON + markdown output."""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from pathlib import Path

import jax

RESULTS = Path(__file__).parent / "results"


def machine() -> dict:
    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "jax": jax.__version__,
        "backend": jax.default_backend(),
        "devices": [d.device_kind for d in jax.devices()],
    }


def time_call(fn, *args, repeats: int = 10) -> float:
    """Median wall-clock seconds of ``fn(*args)`` after one warm-up (compilation) call."""
    jax.block_until_ready(fn(*args))
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def round_robin(runs: dict, repeats: int) -> dict[str, list[float]]:
    """Wall-clock seconds of every ``runs[name]()`` over ``repeats`` rounds, one call of each per round (so a busy
    machine slows all of them alike); call each once before, to warm up."""
    samples = {name: [] for name in runs}
    for _ in range(repeats):
        for name, fn in runs.items():
            start = time.perf_counter()
            fn()
            samples[name].append(time.perf_counter() - start)
    return samples


def peak_rss_growth(fn) -> float:
    """MiB by which the process's peak resident set grows while ``fn`` runs (Linux: VmHWM reset via clear_refs)."""
    def status(field):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field):
                return int(line.split()[1]) / 1024
        return float("nan")
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return float("nan")
    before = status("VmRSS")
    fn()
    return status("VmHWM") - before


def _cell(value) -> str:
    if isinstance(value, float):
        return "—" if value != value else f"{value:.4g}"
    return str(value)


def write(name: str, rows: list[dict], columns: list[str], note: str = "", extra: dict | None = None) -> Path:
    """Write ``results/<name>.json`` (rows, machine and ``extra``) and ``results/<name>.md``; print the table."""
    RESULTS.mkdir(exist_ok=True)
    info = machine()
    (RESULTS / f"{name}.json").write_text(json.dumps({"machine": info, **(extra or {}), "rows": rows}, indent=2))
    lines = [f"machine: {info['platform']}, {info['cpu_count']} CPUs, JAX {info['jax']} ({info['backend']}: "
             f"{', '.join(info['devices'])})", ""]
    if note:
        lines += [note, ""]
    lines += ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        cells = [_cell(row[c]) for c in columns]
        lines.append("| " + " | ".join(cells) + " |")
    text = "\n".join(lines) + "\n"
    (RESULTS / f"{name}.md").write_text(text)
    print(text)
    return RESULTS / f"{name}.json"


def peer_arguments(doc: str, torch, check_agreement, tolerance: float = 1e-10):
    """The common start of a PyTorch peer benchmark: ``--smoke`` / ``--repeats``; ``None`` (nothing to time)
    when PyTorch is missing or with ``--smoke``, after the float64 agreement check (asserted below
    ``tolerance``); else the parsed arguments with ``agreement`` (that relative difference) added, and PyTorch
    set to every core."""
    import argparse

    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    if torch is None:
        print("PyTorch is not installed (pip install -e '.[bench]'); skipping.")
        return None
    torch.set_num_threads(os.cpu_count())
    agreement = check_agreement()
    print(f"float64 loss and gradient, metajax vs PyTorch: relative difference {agreement:.2e}")
    assert agreement < tolerance, agreement
    args.agreement = agreement
    return None if args.smoke else args
