"""The adaptation loop shared by metajax-adapt and metajax-reconstruct (metajax.engine.adaptation)."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from metajax import bilevel, data, masks, pretrained
from metajax.engine import adaptation
from metajax.engine.validation import ConfigError
from metajax.models import DCNet
from metajax.operators import SingleCoilMRI


@pytest.fixture(scope="module")
def setting():
    images = jnp.asarray(data.default_images(6, 32), jnp.complex64)
    op = SingleCoilMRI(masks.variable_density(jax.random.key(0), (32, 32), 0.35))
    net = DCNet(jax.random.key(1), num_phases=2, layers=3, channels=8)
    model = bilevel.RatioWeighted(net, [0.35], jnp.zeros(1))
    return model, op, images, jax.vmap(op)(images)


def _same(a, b):
    return all(bool(jnp.array_equal(u, v)) for u, v in zip(jax.tree.leaves(eqx.filter(a, eqx.is_array)),
                                                          jax.tree.leaves(eqx.filter(b, eqx.is_array))))


def test_self_adaptation_reads_no_ground_truth_and_keeps_the_best_step(setting):
    model, op, _, y = setting
    settings = adaptation.Settings(mode="self", steps=6, lr=1e-3, eval_every=2)
    adapted, report = adaptation.adapt(model, op, y, settings, progress=False, log=lambda m: None)
    # the loss sees NaN images: any use of ground truth would make the parameters NaN
    assert all(bool(jnp.all(jnp.isfinite(leaf))) for leaf in jax.tree.leaves(eqx.filter(adapted, eqx.is_inexact_array)))
    scored = [r for r in report["curve"] if "heldout" in r]
    assert [r["step"] for r in scored] == [0, 2, 4, 6] and report["loss"] == "splitting"
    # the rule: the best adapted step, unless its error exceeds step 0's by more than the tolerance
    best_adapted = min(scored[1:], key=lambda r: r["heldout"])
    expected = best_adapted if best_adapted["heldout"] <= 1.1 * scored[0]["heldout"] else scored[0]
    assert (report["best_step"], report["best_heldout"]) == (expected["step"], expected["heldout"])
    assert report["seconds_per_slice"] == pytest.approx(report["seconds"] / len(y))
    # the returned parameters are those of the kept step: their held-out error is the recorded one
    kept, held = adaptation.holdout(jax.random.fold_in(jax.random.key(0), 0), op.mask, settings.holdout)
    pick = np.unique(np.linspace(0, len(y) - 1, min(settings.eval_slices, len(y))).round().astype(int))
    weights = adaptation.heldout_weights(op.mask, held)
    error = float(adaptation.heldout_error(adapted, op, kept, held, y[pick], weights))
    assert error == pytest.approx(report["best_heldout"], rel=1e-5)
    with pytest.raises(ConfigError, match="no ground truth"):
        adaptation.adapt(model, op, y, adaptation.Settings(mode="self", loss="supervised"), progress=False)
    with pytest.raises(ConfigError, match="reads no ground truth"):
        adaptation.adapt(model, op, y, settings, images=y, progress=False)


@pytest.mark.slow
def test_a_step_size_that_wrecks_the_model_is_not_kept():
    """lr 0.1 wrecks the shipped network; the held-out error catches it and the unadapted model comes back."""
    shipped, _ = pretrained.load("chest_dcnet")
    images = jnp.asarray(data.chest_images()[85:87], jnp.complex64)
    op = SingleCoilMRI(masks.family_mask(jax.random.key(0), "pseudo_radial", (256, 256), 0.2))
    model = adaptation.single_task(shipped, op)
    settings = adaptation.Settings(mode="finetune", steps=2, lr=0.1, eval_every=1, batch=1)
    adapted, report = adaptation.adapt(model, op, jax.vmap(op)(images[1:]), settings, images=images[:1],
                                       progress=False, log=lambda m: None)
    assert report["best_step"] == 0 and _same(adapted, model)
    scored = [r["heldout"] for r in report["curve"] if "heldout" in r]
    assert report["diverged_at"] is not None or max(scored) > report["start_heldout"]


def test_omega_mode_moves_only_the_task_weight(setting):
    model, op, images, y = setting
    adapted, report = adaptation.adapt(model, op, y, adaptation.Settings(mode="omega", steps=3, eval_every=1),
                                       images=images[:2], progress=False, log=lambda m: None)
    assert report["moved"] == "omega" and report["lr"] == adaptation.DEFAULT_LR["omega"]
    assert _same(adapted.net, model.net)


def test_params_cnn_freezes_the_data_consistency_weights(setting):
    model, op, images, y = setting
    theta, _ = adaptation._trainable(model, "cnn")
    moving = [leaf for leaf in jax.tree.leaves(theta) if leaf is not None]
    assert len(moving) == len(jax.tree.leaves(eqx.filter(model.net.cnn, eqx.is_inexact_array)))


def test_heldout_weights_match_the_unmeasured_kspace_per_band():
    """Σ over a band of the weights = the band's unmeasured count (for bands with held-out samples)."""
    mask = np.asarray(masks.variable_density(jax.random.key(3), (64, 64), 0.3))
    _, held = adaptation.holdout(jax.random.key(1), mask, 0.2)
    weights = np.asarray(adaptation.heldout_weights(mask, held))
    v, u = np.meshgrid((np.arange(64) - 32) / 64, (np.arange(64) - 32) / 64, indexing="ij")
    band = np.minimum((np.sqrt(u**2 + v**2) / np.sqrt(0.5) * adaptation.RADIAL_BINS).astype(int), 15)
    for b in range(adaptation.RADIAL_BINS):
        if np.asarray(held)[band == b].any():
            assert weights[band == b].sum() == pytest.approx(np.sum(~mask & (band == b)), rel=1e-5)
    assert not weights[~np.asarray(held)].any()


@pytest.mark.parametrize("field, value, match", [("mode", "x", "adapt.mode"), ("steps", 0, "adapt.steps"),
                                                 ("lr", -1.0, "adapt.lr"), ("holdout", 1.0, "adapt.holdout"),
                                                 ("params", "x", "adapt.params"), ("norm", "l3", "adapt.norm"),
                                                 ("tolerance", -0.1, "adapt.tolerance"),
                                                 ("weighting", "x", "adapt.weighting")])
def test_bad_settings_are_named(field, value, match):
    with pytest.raises(ConfigError, match=match):
        adaptation.Settings(**{field: value}).check()
