"""Shipped pretrained models: each loads, reproduces its card, and works under jit and vmap on any mask."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from metajax import data, masks, metrics, pretrained
from metajax.operators import SingleCoilMRI

NAMES = [n for n in pretrained.available() if pretrained.load(n)[1].get("coils", "single") == "single"]
MULTICOIL = [n for n in pretrained.available() if n not in NAMES]


def test_available_models_have_cards():
    assert NAMES, "no pretrained model is shipped"
    for name in NAMES:
        _, card = pretrained.load(name)
        assert {"data", "command", "config", "metrics", "metrics_unseen", "trained_ratios", "trained_lines",
                "robustness", "offered", "self_check", "reproduce"} <= set(card)
        assert card["command"].startswith("python tools/make_pretrained.py")


def _grid():
    """The robustness grid's (label, mask) pairs, as the engine builds them (tasks=grid, seed 0, 256²)."""
    from metajax.engine.config import TASKS
    from metajax.engine.experiment import make_mask, task_families, task_labels

    tasks = TASKS["grid"]
    return [(label, make_mask(tasks, i, ratio, (256, 256), 0, None, family))
            for i, (label, family, ratio) in enumerate(zip(task_labels(tasks), task_families(tasks), tasks.ratios))]


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_model_reproduces_its_card_on_three_test_slices_of_every_family(name):
    model, card = pretrained.load(name)
    source = card["config"]["data"]["source"]
    if source != "chest":
        pytest.skip(f"{name} was trained on {source} data")
    images = data.chest_images()[card["reproduce"]["slices"]]
    x = jnp.asarray(images, jnp.complex64)
    grid = _grid()
    assert [label for label, _ in grid] == list(card["reproduce"]["psnr"])
    for label, mask in grid:
        operator = SingleCoilMRI(mask)
        recon = jax.jit(jax.vmap(lambda v: model(operator, v)))(operator(x))
        got = np.asarray(metrics.psnr(jnp.abs(recon), jnp.abs(x)))
        np.testing.assert_allclose(got, card["reproduce"]["psnr"][label], atol=0.05, err_msg=label)
        zero_filled = np.asarray(metrics.psnr(jnp.abs(operator.adjoint(operator(x))), jnp.abs(x)))
        if label in card["offered"]:
            assert np.all(got > zero_filled), (label, got, zero_filled)


@pytest.mark.parametrize("name", NAMES)
def test_card_offers_only_families_where_the_model_beats_zero_filled_on_every_slice(name):
    _, card = pretrained.load(name)
    assert card["offered"], "a shipped model is offered for at least one mask family"
    for label, entry in card["robustness"].items():
        for image_set in ("chest", "template"):
            model = next(r for r in card[{"chest": "metrics", "template": "metrics_unseen"}[image_set]]
                         if r["label"] == label and r["method"] == name)
            zf = next(r for r in card[{"chest": "metrics", "template": "metrics_unseen"}[image_set]]
                      if r["label"] == label and r["method"] == "zero-filled")
            margins = np.subtract(model["psnr_images"], zf["psnr_images"])
            assert entry[image_set]["worst_margin"] == pytest.approx(margins.min())
        assert entry["offered"] == (label in card["offered"]) == all(
            entry[s]["mean_margin"] >= 2.0 and entry[s]["worst_margin"] >= 0 for s in ("chest", "template"))


@pytest.mark.parametrize("name", NAMES)
def test_model_takes_any_mask_and_size_and_picks_omega_by_ratio(name):
    model, card = pretrained.load(name)
    ratios = card["trained_ratios"]
    x = jnp.asarray(data.default_images(2, 64), jnp.complex64)
    op = SingleCoilMRI(masks.radial(jax.random.key(3), (64, 64), 0.25))
    out = jax.jit(jax.vmap(lambda v: model(op, v)))(op(x))
    assert out.shape == x.shape and out.dtype == jnp.complex64 and bool(jnp.all(jnp.isfinite(out)))
    # a trained task's mask kind (1-D lines or 2-D) and ratio get its own weight (tasks of one kind and ratio
    # share their mean); between two trained ratios the weight is interpolated
    lines = card["trained_lines"] or [False] * len(ratios)
    for r, line in zip(ratios, lines):
        same = [w for r2, l2, w in zip(ratios, lines, card["omega"]) if l2 == line and r2 == r]
        if line:
            mask = jnp.broadcast_to(jnp.arange(256) < round(r * 256), (256, 256))
        else:
            mask = jnp.zeros(256 * 256, bool).at[: round(r * 256 * 256)].set(True).reshape(256, 256)
        assert float(model.omega_for(SingleCoilMRI(mask))) == pytest.approx(np.mean(same), abs=2e-4)


@pytest.mark.slow
@pytest.mark.parametrize("name", MULTICOIL)
def test_multicoil_model_reproduces_its_card_and_beats_the_classical_baselines(name):
    """Three test slices of every task re-simulated (same keys as the card) and reconstructed to the card's PSNR;
    the card offers the model exactly where it is ≥ zero-filled RSS + 2 dB on average with no slice below it (the
    shipped models' rule), and that holds for every fastMRI 1-D task."""
    from metajax.engine import multicoil

    model, card = pretrained.load(name)
    assert card["coils"] == "multi" and card["data"]["simulated"]
    assert card["command"].startswith("python tools/multicoil_baselines.py")
    images = data.chest_images()[card["reproduce"]["slices"]]
    settings = card["simulation"]["evaluation"]
    test = multicoil.simulate_set(images, jax.random.fold_in(jax.random.key(card["simulation"]["seed"]), 2),
                                  coils=tuple(settings["coils"]), snr=(settings["snr"], settings["snr"]))
    psnr, _ = multicoil.scores(multicoil.reconstruct_set(model, test, multicoil.validation_masks()), test.rss)
    for t, label in enumerate(card["tasks"]):
        np.testing.assert_allclose(psnr[test.task == t], card["reproduce"]["psnr"][label], atol=0.05, err_msg=label)
    for entry, t in zip(card["summary"], range(len(card["tasks"]))):
        model_psnr, zero_filled = (next(r["psnr"] for r in card["metrics"] if r["task"] == t and r["method"] == m)
                                   for m in (name, "zero-filled RSS"))
        margins = np.subtract(model_psnr, zero_filled)
        assert entry["offered"] == (margins.mean() >= 2.0 and margins.min() >= 0) == (entry["task"] in card["offered"])
        if entry["task"].startswith("fastmri"):
            assert entry["offered"], entry
    assert card["numerics"]["relative_difference"] < 1e-2
