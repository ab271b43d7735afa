"""Smoke runs of the benchmarks that have checks of their own (skipped cleanly where an optional peer is absent)."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_pytorch_peer_agrees_with_metajax():
    """benchmarks/peers/loa_torch.py --smoke: one phase, branch decisions, float64 loss and gradient agree."""
    pytest.importorskip("torch", reason="PyTorch is the optional `bench` extra (pip install -e '.[bench]')")
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "peers" / "loa_torch.py"), "--smoke"],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "branch_mismatches': 0" in result.stdout


def test_torchopt_peer_meta_gradients_agree_with_metajax():
    """benchmarks/peers/bilevel_torchopt.py --smoke: MAML and iMAML meta-gradients agree in float64."""
    pytest.importorskip("torch", reason="PyTorch is the optional `bench` extra (pip install -e '.[bench]')")
    pytest.importorskip("torchopt", reason="TorchOpt is the optional `bench` extra (pip install -e '.[bench]')")
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "peers" / "bilevel_torchopt.py"), "--smoke"],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "metajax vs TorchOpt" in result.stdout


def test_pytorch_dcnet_peer_agrees_with_metajax():
    """benchmarks/peers/dcnet_torch.py --smoke: the same DCNet in PyTorch has the same float64 loss and gradient."""
    pytest.importorskip("torch", reason="PyTorch is the optional `bench` extra (pip install -e '.[bench]')")
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "peers" / "dcnet_torch.py"), "--smoke"],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "metajax vs PyTorch: relative difference" in result.stdout
