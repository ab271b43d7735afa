"""Shipped pretrained models: each loads, reproduces its card, and works under jit and vmap on any mask."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from metajax import data, masks, metrics, pretrained
from metajax.operators import SingleCoilMRI

NAMES = pretrained.available()


def test_available_models_have_cards():
    assert NAMES, "no pretrained model is shipped"
    for name in NAMES:
        _, card = pretrained.load(name)
        assert {"data", "command", "config", "metrics", "trained_ratios", "reproduce"} <= set(card)
        assert card["command"].startswith("python tools/make_pretrained.py")


@pytest.mark.parametrize("name", NAMES)
def test_model_reproduces_its_card_on_three_test_slices(name):
    model, card = pretrained.load(name)
    source = card["config"]["data"]["source"]
    if source != "chest":
        pytest.skip(f"{name} was trained on {source} data")
    images = data.chest_images()[card["reproduce"]["slices"]]
    x = jnp.asarray(images, jnp.complex64)
    for ratio, expected in card["reproduce"]["psnr"].items():
        operator = SingleCoilMRI(jnp.asarray(data.pseudo_radial_mask(float(ratio))))
        recon = jax.jit(jax.vmap(lambda v: model(operator, v)))(operator(x))
        got = np.asarray(metrics.psnr(jnp.abs(recon), jnp.abs(x)))
        np.testing.assert_allclose(got, expected, atol=0.05, err_msg=f"ratio {ratio}")
        zero_filled = np.asarray(metrics.psnr(jnp.abs(operator.adjoint(operator(x))), jnp.abs(x)))
        assert np.all(got > zero_filled), (ratio, got, zero_filled)


@pytest.mark.parametrize("name", NAMES)
def test_model_takes_any_mask_and_size_and_picks_omega_by_ratio(name):
    model, card = pretrained.load(name)
    ratios = card["trained_ratios"]
    x = jnp.asarray(data.default_images(2, 64), jnp.complex64)
    op = SingleCoilMRI(masks.radial(jax.random.key(3), (64, 64), 0.25))
    out = jax.jit(jax.vmap(lambda v: model(op, v)))(op(x))
    assert out.shape == x.shape and out.dtype == jnp.complex64 and bool(jnp.all(jnp.isfinite(out)))
    # a trained ratio gets its own weight; between two trained ratios the weight is interpolated
    for r, w in zip(ratios, card["omega"]):
        mask = jnp.zeros(256 * 256, bool).at[: round(r * 256 * 256)].set(True).reshape(256, 256)
        assert float(model.omega_for(SingleCoilMRI(mask))) == pytest.approx(w, abs=2e-4)
