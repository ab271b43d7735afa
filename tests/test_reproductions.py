"""The reproduction experiments: closed forms of the linear Gaussian case, Theorem 3.1, a tiny end-to-end run."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from metajax.engine import reproductions
from metajax.engine.reproductions import linear_gaussian as lg
from metajax.operators import Downsampling, Scaled


def test_bayes_weights_match_the_formula_on_the_measured_set(x64):
    sigma = lg.covariance(4, 0.6)
    mask = jnp.asarray(np.random.default_rng(0).random(16) < 0.5)
    w = lg.bayes_weights(sigma, mask, 0.1)
    s = np.flatnonzero(np.asarray(mask))
    ref = np.asarray(sigma)[:, s] @ np.linalg.inv(np.asarray(sigma)[np.ix_(s, s)] + 0.01 * np.eye(len(s)))
    np.testing.assert_allclose(np.asarray(w)[:, s], ref, rtol=1e-12, atol=1e-12)
    assert np.all(np.asarray(w)[:, ~np.asarray(mask)] == 0)


def test_risk_and_moment_losses_match_monte_carlo(x64):
    c = lg.Config(size=3, samples=200000)
    sigma = lg.covariance(3, c.rho)
    names, masks = lg._masks(lg.Config(size=3, train_ratios=[0.5], unseen_ratios=[], unseen_box=0),
                             jax.random.key(0))
    (mask, cyy, cyx, cxx), _ = lg._task_data(c, sigma, masks, jax.random.key(1))
    w = lg.bayes_weights(sigma, masks[0], c.noise_std)
    supervised = lg._losses("supervised")(w, (mask[0], cyy[0], cyx[0], cxx[0]))
    np.testing.assert_allclose(2 * supervised, lg.risk(w, sigma, masks[0], c.noise_std), rtol=2e-2)


def test_measurement_fine_tuning_keeps_the_kernel_component(x64):
    """Theorem 3.1 (Terris & Moreau): measurement-only fine-tuning never changes (I − M) W."""
    c = lg.Config(size=4, samples=500, train_ratios=[0.5], unseen_ratios=[], unseen_box=0)
    sigma = lg.covariance(4, c.rho)
    _, masks = lg._masks(c, jax.random.key(0))
    args, _ = lg._task_data(c, sigma, masks, jax.random.key(1))
    task = jax.tree.map(lambda a: a[0], args)
    theta = jax.random.normal(jax.random.key(2), (16, 16), jnp.float64)
    off = 1.0 - task[0][:, None]
    measured = lg.fine_tune(theta, task, "measurement", 0.01, 200)
    supervised = lg.fine_tune(theta, task, "supervised", 0.01, 200)
    assert float(jnp.max(jnp.abs((measured - theta) * off))) < 1e-12
    assert float(jnp.max(jnp.abs((supervised - theta) * off))) > 1e-2


def test_scaled_operator_is_adjoint():
    op = Scaled(Downsampling(2), 2.0)
    x = jax.random.normal(jax.random.key(0), (8, 8))
    y = jax.random.normal(jax.random.key(1), (4, 4))
    np.testing.assert_allclose(jnp.vdot(op(x), y), jnp.vdot(x, op.adjoint(y)), rtol=1e-5)
    np.testing.assert_allclose(op.adjoint(op(jnp.ones((8, 8)))), jnp.ones((8, 8)), rtol=1e-6)
    with pytest.raises(ValueError, match="scale"):
        Scaled(Downsampling(2), -1.0)


def test_unknown_experiment_is_refused():
    with pytest.raises(ValueError, match="experiment.name"):
        reproductions.module("nope")


def test_linear_gaussian_end_to_end(tmp_path):
    from omegaconf import OmegaConf

    c = OmegaConf.merge(OmegaConf.structured(lg.Config), {"size": 4, "samples": 2000, "outer_steps": 20,
                                                           "inner_steps": 100, "finetune_steps": 500})
    reproductions.run(c, tmp_path, log=lambda m: None)
    result = json.loads((tmp_path / "results.json").read_text())
    assert (tmp_path / "weights.png").is_file() and (tmp_path / "errors.png").is_file()
    kernel = [r["kernel_change"] for r in result["kernel"] if r["fine_tuning"] == "measurement"]
    assert max(kernel) < 1e-12
    tuned = [r["excess_risk"] for r in result["rows"]
             if r["weights"] == "fine-tuned, supervised" and r["task"].startswith("train")]
    assert max(tuned) < 0.05  # supervised fine-tuning reaches the Bayes risk within 5 %
    assert not jax.config.jax_enable_x64  # float64 only inside the experiment


@pytest.mark.slow
def test_adaptation_experiment_end_to_end_and_resumes(tmp_path):
    from omegaconf import OmegaConf

    from metajax.engine.reproductions import adaptation

    c = OmegaConf.merge(OmegaConf.structured(adaptation.Config), {
        "meta_model": "pretrained:chest_dcnet", "conventional_model": "pretrained:chest_dcnet", "targets": ["mask"],
        "test_slices": 2, "shots": [0, 1], "budgets": [1, 2], "seeds": 2, "scratch_steps": 2, "ceiling_steps": 2})
    reproductions.run(c, tmp_path, log=lambda m: None)
    result = json.loads((tmp_path / "results.json").read_text())
    assert (tmp_path / "adaptation_curves.png").is_file() and len(list((tmp_path / "runs").glob("*.json"))) == 11
    summary = result["summary"]["mask"]
    for k in (0, 1):  # the same start twice: meta − conventional is exactly zero, the interval too
        assert summary["meta_minus_conventional"][f"k{k}_2"] == [0.0, 0.0, 0.0]
        assert summary[f"meta_k{k}"]["budgets"]["2"] == summary[f"conventional_k{k}"]["budgets"]["2"]
    zero_shot = result["results"]["mask"]["zero-shot meta"]
    selected = result["results"]["mask"]["runs"]["mask_meta_k0_s0"]["selected"]
    assert np.mean(selected) >= np.mean(zero_shot) - 0.05  # held-out selection: not worse than zero-shot
    stamp = (tmp_path / "runs" / "mask_meta_k1_s1.json").stat().st_mtime
    reproductions.run(c, tmp_path, log=lambda m: None)  # resumes: every run is read back, none recomputed
    assert (tmp_path / "runs" / "mask_meta_k1_s1.json").stat().st_mtime == stamp
