"""The k-space split (masks.split) and the self-supervised splitting loss (bilevel.splitting_loss)."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from metajax import bilevel, masks, pretrained
from metajax.bilevel import MAML, TaskBatch, meta_gradient, splitting_loss
from metajax.data import chest_images
from metajax.operators import MultiCoilMRI, SingleCoilMRI, birdcage_maps


def _candidates(mask, center_fraction=0.035):
    return np.asarray(mask) & ~masks.center_block(mask.shape, center_fraction)


@pytest.mark.parametrize("selection", ["uniform", "gaussian"])
def test_split_partitions_the_mask_keeps_the_centre_and_draws_the_fraction(selection):
    mask = masks.variable_density(jax.random.key(1), (64, 64), 0.3)
    draw = jax.jit(lambda k: masks.split(k, mask, 0.4, selection=selection))
    shares = []
    for i in range(200):
        theta, lam = map(np.asarray, draw(jax.random.key(i)))
        assert not (theta & lam).any() and ((theta | lam) == np.asarray(mask)).all()
        assert theta[masks.center_block(mask.shape, 0.035)].all()
        shares.append(lam.sum() / _candidates(mask).sum())
    # E|Λ| = 0.4 m, each point independently: the mean of 200 draws within 4 standard errors
    m = _candidates(mask).sum()
    assert abs(np.mean(shares) - 0.4) < 4 * np.sqrt(0.4 * 0.6 / m / 200) + (0.01 if selection == "gaussian" else 0)


@pytest.mark.slow
def test_gaussian_selection_favours_the_centre():
    mask = jnp.ones((64, 64), bool)
    lam = jnp.mean(jnp.stack([masks.split(jax.random.key(i), mask, 0.4, selection="gaussian")[1]
                              for i in range(100)]), 0)
    assert float(lam[32, 28]) > 2 * float(lam[32, 2]) and float(lam[32, 28]) > 2 * float(lam[2, 32])


def test_split_by_lines_keeps_whole_columns():
    mask = masks.fastmri_equispaced(jax.random.key(0), (32, 64), 4.0, 0.08)
    theta, lam = masks.split(jax.random.key(3), mask, 0.4, lines=True)
    assert bool(masks.is_line_mask(theta)) and bool(masks.is_line_mask(lam)) and int(lam.sum()) > 0
    center_cols = masks.center_block(mask.shape, 0.035).any(0)
    assert not np.asarray(lam)[:, center_cols].any()


@pytest.mark.parametrize("bad, match", [({"fraction": 1.0}, "fraction"), ({"selection": "x"}, "selection")])
def test_split_rejects_bad_settings(bad, match):
    with pytest.raises(ValueError, match=match):
        masks.split(jax.random.key(0), jnp.ones((8, 8), bool), **{"fraction": 0.4, **bad})


class ImageWindow(eqx.Module):
    """A linear 'network' f(A, y) = w ⊙ A^H y (diagonal in image space, dense in k-space)."""

    w: jax.Array

    def __call__(self, operator, y, task=None):
        return self.w * operator.adjoint(y)


def _fft2c(x):
    return np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(x, axes=(-2, -1)), norm="ortho"), axes=(-2, -1))


def test_splitting_loss_expectation_equals_the_closed_form_for_a_linear_model(x64):
    """E over splits of ‖P_Λ A f(P_Θ y) − P_Λ y‖² for f = w ⊙ A^H, independent Bernoulli(p) selection:
    Σ_{i cand.} p (|Σ_j a_ij μ_j − y_i|² + Σ_j |a_ij|² μ_j (1 − μ_j)), a_ij = K_ij y_j, K = F diag(w) F^H,
    μ_j = P(j ∈ Θ | i ∈ Λ) — against a Monte-Carlo mean of the loss over 4000 keys."""
    n, p = 8, 0.4
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, n)) + 1j * rng.standard_normal((n, n))
    w = 0.5 + rng.random((n, n))
    mask = np.asarray(masks.variable_density(jax.random.key(0), (n, n), 0.6))
    cand = _candidates(mask, 0.25)
    y = np.where(mask, _fft2c(x), 0)
    # K = F diag(w) F^H on flattened k-space, built column by column
    basis = np.eye(n * n).reshape(n * n, n, n)
    K = np.stack([_fft2c(w * np.fft.fftshift(np.fft.ifft2(np.fft.ifftshift(e), norm="ortho"))).ravel()
                  for e in basis], axis=1)
    yf, mu0 = y.ravel(), np.where(cand, 1 - p, mask.astype(float)).ravel()
    expected = 0.0
    for i in np.flatnonzero(cand.ravel()):
        mu = mu0.copy()
        mu[i] = 0.0
        a = K[i] * yf
        expected += p * (abs(a @ mu - yf[i]) ** 2 + np.sum(abs(a) ** 2 * mu * (1 - mu)))
    op = SingleCoilMRI(mask)
    model = ImageWindow(jnp.asarray(w))
    batch = TaskBatch(op, jnp.asarray(x)[None], jnp.asarray(y)[None], 0)
    loss = jax.jit(jax.vmap(lambda k: splitting_loss(model, eqx.tree_at(lambda b: b.key, batch, k,
                                                                         is_leaf=lambda v: v is None),
                                                     fraction=p, center_fraction=0.25)))
    values = np.asarray(loss(jax.random.split(jax.random.key(5), 4000)))
    assert abs(values.mean() - expected) < 4 * values.std() / np.sqrt(values.size)
    assert values.std() / np.sqrt(values.size) < 0.05 * expected  # the test has power


def test_splitting_loss_multicoil_sums_the_coils(x64):
    n = 16
    rng = np.random.default_rng(1)
    x = rng.standard_normal((n, n)) + 1j * rng.standard_normal((n, n))
    sens = np.asarray(birdcage_maps((n, n), 3))
    mask = np.asarray(masks.variable_density(jax.random.key(2), (n, n), 0.4))
    op = MultiCoilMRI(mask, sens)
    y = np.where(mask, _fft2c(sens * x), 0)
    w = 0.5 + rng.random((n, n))
    key = jax.random.key(9)
    value = splitting_loss(ImageWindow(jnp.asarray(w)), TaskBatch(op, jnp.asarray(x)[None], jnp.asarray(y)[None], 0,
                                                                  key))
    theta, lam = map(np.asarray, masks.split(jax.random.split(jax.random.split(key, 1)[0], 1)[0], mask, 0.4))
    # (the key of the first draw of the first image)
    # NumPy reference: x̂ = w ⊙ Σ_c conj(S_c) F^H (Θ ⊙ y_c), scored on Λ of every coil
    coil_images = np.fft.fftshift(np.fft.ifft2(np.fft.ifftshift(np.where(theta, y, 0), axes=(-2, -1)), norm="ortho"),
                                  axes=(-2, -1))
    xhat = w * np.sum(np.conj(sens) * coil_images, 0)
    reference = np.sum(np.abs(np.where(lam, _fft2c(sens * xhat) - y, 0)) ** 2)
    np.testing.assert_allclose(float(value), reference, rtol=1e-10)


@pytest.mark.slow
def test_measurement_loss_is_blind_for_dcnet_and_the_splitting_loss_is_not():
    """Exact data consistency makes ‖A f(y) − y‖ vanish whatever the weights; the splitting loss does not."""
    model, _ = pretrained.load("chest_dcnet")
    x = jnp.asarray(chest_images()[90:91], jnp.complex64)
    op = SingleCoilMRI(masks.family_mask(jax.random.key(0), "pseudo_radial", (256, 256), 0.2))
    batch = TaskBatch(op, x, jax.vmap(op)(x), 0, jax.random.key(0))
    energy = float(jnp.sum(jnp.abs(batch.y) ** 2))
    broken = eqx.tree_at(lambda m: m.net.cnn, model, jax.tree.map(lambda a: 1.05 * a if eqx.is_inexact_array(a) else a,
                                                                  model.net.cnn))
    for net in (model, broken):
        assert float(bilevel.measurement_loss(net, batch)) < 1e-3 * energy
    split = [float(splitting_loss(net, batch)) for net in (model, broken)]
    assert split[0] > 1e-3 * energy and split[1] > 2 * split[0]  # it sees the difference the other cannot
    grads = [eqx.filter_grad(lambda m: loss(m, batch))(model) for loss in (bilevel.measurement_loss, splitting_loss)]
    norms = [float(optax.global_norm(jax.tree.leaves(eqx.filter(g.net.cnn, eqx.is_inexact_array)))) for g in grads]
    assert norms[0] < 1e-2 * norms[1], norms


@pytest.mark.slow
def test_splitting_loss_as_maml_inner_loss_equals_a_hand_written_step(x64):
    """meta_gradient(MAML, splitting inner, supervised outer) = autodiff of one explicit SGD step."""
    n = 8
    rng = np.random.default_rng(3)
    x = jnp.asarray(rng.standard_normal((2, n, n)) + 1j * rng.standard_normal((2, n, n)))
    op = SingleCoilMRI(masks.variable_density(jax.random.key(4), (n, n), 0.5))
    batch = TaskBatch(op, x, jax.vmap(op)(x), 0, jax.random.key(11))
    theta = ImageWindow(jnp.asarray(0.5 + rng.random((n, n))))

    def inner(phi, b):
        return splitting_loss(phi, b, center_fraction=0.25, draws=2)

    outer = lambda phi, b: bilevel.supervised_loss(phi, b)  # noqa: E731
    grad, _ = meta_gradient(MAML(optax.sgd(0.01), 1), inner, outer, theta, batch)
    manual = jax.grad(lambda t: outer(jax.tree.map(lambda a, g: a - 0.01 * g, t, jax.grad(inner)(t, batch)),
                                      batch))(theta)
    np.testing.assert_allclose(np.asarray(grad.w), np.asarray(manual.w), rtol=1e-10)
    assert float(jnp.abs(jax.grad(inner)(theta, batch).w).max()) > 0


def test_splitting_loss_needs_a_key_and_a_mask():
    op = SingleCoilMRI(jnp.ones((8, 8), bool))
    x = jnp.ones((1, 8, 8), jnp.complex64)
    with pytest.raises(ValueError, match="batch.key"):
        splitting_loss(ImageWindow(jnp.ones((8, 8))), TaskBatch(op, x, x, 0))
    with pytest.raises(ValueError, match="draws"):
        bilevel.Splitting(draws=0)
