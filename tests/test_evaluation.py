"""The engine's evaluation helpers: the widened baseline search on a known score and on a real TV tuning."""

from pathlib import Path

import numpy as np
import pytest

from metajax.engine import evaluation

ROOT = Path(__file__).resolve().parents[1]


def test_widened_search_extends_past_a_winning_edge_until_the_choice_is_inside():
    calls = []

    def score(lam):  # peaks at λ = 0.1
        calls.append(lam)
        return -abs(np.log10(lam) + 1)

    best, record = evaluation.widened_search(score, [1e-3, 1e-2])
    assert best == pytest.approx(0.1) and not record["at_edge"] and record["widened"] == 2
    assert record["grid"] == pytest.approx([1e-3, 1e-2, 1e-1, 1.0])
    assert record["scores"] == pytest.approx([score(v) for v in record["grid"]])
    assert len(calls) == 4 + 4  # each value scored once by the search (and once more above)
    best, record = evaluation.widened_search(score, [10.0, 30.0], max_widenings=5)  # downwards, by its ratio 3
    assert best == pytest.approx(10 / 3**4) and record["grid"][0] == pytest.approx(10 / 3**5) and not record["at_edge"]
    best, record = evaluation.widened_search(score, [1e-6, 1e-5], max_widenings=1)  # runs out: said so
    assert best == pytest.approx(1e-4) and record["at_edge"] and record["widened"] == 1
    for grid in ([1e-3], [0.0, 1e-3], []):
        with pytest.raises(ValueError, match="grid"):
            evaluation.widened_search(score, grid)


def test_tune_tv_widens_a_grid_that_is_too_small_and_records_every_weight():
    """A TV grid of weights far below the useful range (the winner at its top edge) is widened upwards until the
    validation PSNR turns down; the record lists every weight tried with its PSNR."""
    from metajax.engine.experiment import Experiment
    from metajax.engine.reproductions.common import engine_config

    exp = Experiment(engine_config(["preset=ci", "tasks.ratios=[0.3]", "tasks.noise_std=0.05"]), ROOT)
    weights, records = evaluation.tune_tv(exp.tasks, 0, [1e-6, 1e-5], iterations=30, images=2, max_widenings=6)
    record = records[0]
    assert record["widened"] >= 1 and not record["at_edge"], record
    assert weights == [record["chosen"]] and record["chosen"] > 1e-5
    assert record["grid"][:2] == pytest.approx([1e-6, 1e-5]) and len(record["scores"]) == len(record["grid"])
    assert np.argmax(record["scores"]) not in (0, len(record["grid"]) - 1)
