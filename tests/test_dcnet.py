"""DCNet: zero-filled at initialisation, exact data consistency, gradients (MLM = autodiff = finite differences),
float32 numerics, task weights, and the ratio-weighted wrapper."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from metajax import bilevel, masks
from metajax.adjoint import MLM, Autodiff
from metajax.models import DCNet, data_consistency
from metajax.operators import MultiCoilMRI, SingleCoilMRI, birdcage_maps, fft2c


def _image(key, n, dtype=jnp.complex128):
    k1, k2 = jax.random.split(key)
    return (jax.random.uniform(k1, (n, n)) + 0.1j * jax.random.normal(k2, (n, n))).astype(dtype)


def _perturbed(net, key, scale=0.05):
    """The network with every CNN weight (the zero last layer included) perturbed: a non-trivial correction."""
    leaves, treedef = jax.tree.flatten(net.cnn)
    keys = jax.random.split(key, len(leaves))
    leaves = [a + scale * jax.random.normal(k, a.shape, a.dtype) for a, k in zip(leaves, keys)]
    return eqx.tree_at(lambda n: n.cnn, net, jax.tree.unflatten(treedef, leaves))


def test_initial_network_returns_the_zero_filled_image_exactly(x64):
    op = SingleCoilMRI(masks.radial(jax.random.key(0), (16, 16), 0.3))
    y = op(_image(jax.random.key(1), 16))
    net = DCNet(jax.random.key(2), num_phases=4, layers=3, channels=8, dtype=jnp.float64)
    np.testing.assert_allclose(np.asarray(net(op, y)), np.asarray(op.adjoint(y)), atol=1e-14)
    weighted = bilevel.TaskWeighted(net, 3, dtype=jnp.float64)  # ω = 0 is κ = 1: the same network
    np.testing.assert_allclose(np.asarray(weighted(op, y, 1)), np.asarray(bilevel.Shared(net)(op, y)), atol=1e-14)


def _dense(op, shape):
    """Dense matrix of a linear operator on complex images (columns = images of unit vectors)."""
    n = shape[0] * shape[1]
    eye = jnp.eye(n, dtype=jnp.complex128).reshape(n, *shape)
    return np.asarray(jax.vmap(op)(eye)).reshape(n, -1).T


@pytest.mark.parametrize("multicoil", [False, True])
def test_data_consistency_solves_the_proximal_problem(x64, multicoil):
    shape, mu = (8, 8), 0.3
    mask = masks.radial(jax.random.key(0), shape, 0.4)
    op = MultiCoilMRI(mask, birdcage_maps(shape, 3, dtype=jnp.complex128)) if multicoil else SingleCoilMRI(mask)
    x = _image(jax.random.key(1), 8)
    z = _image(jax.random.key(2), 8)
    y = op(x)
    a = _dense(op, shape)
    expected = np.linalg.solve(a.conj().T @ a + mu * np.eye(64), a.conj().T @ np.asarray(y).ravel()
                               + mu * np.asarray(z).ravel()).reshape(shape)
    got = data_consistency(op, y, z, jnp.asarray(mu), cg_iters=64)
    np.testing.assert_allclose(np.asarray(got), expected, atol=1e-10)
    if not multicoil:  # the closed form keeps the unsampled k-space of z and blends the sampled entries
        k = np.asarray(fft2c(got))
        m = np.asarray(mask)
        np.testing.assert_allclose(k[~m], np.asarray(fft2c(z))[~m], atol=1e-12)
        np.testing.assert_allclose(k[m], (np.asarray(y)[m] + mu * np.asarray(fft2c(z))[m]) / (1 + mu), atol=1e-12)


def _loss_and_parts(net, op, y, x, omega, adjoint):
    params, static = eqx.partition(net, eqx.is_inexact_array)

    def loss(p, w):
        return jnp.sum(jnp.abs(eqx.combine(p, static)(op, y, w, adjoint=adjoint) - x) ** 2)

    return loss, params


@pytest.mark.slow
def test_mlm_gradient_equals_autodiff_and_finite_differences(x64):
    op = SingleCoilMRI(masks.radial(jax.random.key(0), (12, 12), 0.3))
    x = _image(jax.random.key(1), 12)
    y = op(x)
    net = _perturbed(DCNet(jax.random.key(2), 3, layers=3, channels=4, dtype=jnp.float64), jax.random.key(3))
    omega = jnp.asarray(0.4)
    loss_ad, params = _loss_and_parts(net, op, y, x, omega, Autodiff())
    loss_mlm, _ = _loss_and_parts(net, op, y, x, omega, MLM())
    g_ad = jax.grad(loss_ad, argnums=(0, 1))(params, omega)
    g_mlm = jax.grad(loss_mlm, argnums=(0, 1))(params, omega)
    for a, b in zip(jax.tree.leaves(g_ad), jax.tree.leaves(g_mlm)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-10, atol=1e-12)
    direction = jax.tree.map(lambda a: jax.random.normal(jax.random.key(4), a.shape, a.dtype), params)
    h = 1e-6
    shift = lambda s: jax.tree.map(lambda p, d: p + s * d, params, direction)  # noqa: E731
    fd = (loss_ad(shift(h), omega) - loss_ad(shift(-h), omega)) / (2 * h)
    analytic = sum(jnp.vdot(g, d) for g, d in zip(jax.tree.leaves(g_ad[0]), jax.tree.leaves(direction)))
    assert float(fd) == pytest.approx(float(analytic), rel=1e-6)
    fd_omega = (loss_ad(params, omega + h) - loss_ad(params, omega - h)) / (2 * h)
    assert float(fd_omega) == pytest.approx(float(g_ad[1]), rel=1e-6)


@pytest.mark.slow
def test_float32_gradient_matches_float64_of_the_same_weights():
    """The numerics of training in float32: relative error of the float32 gradient ≤ 1e-2."""
    op = SingleCoilMRI(masks.radial(jax.random.key(0), (32, 32), 0.2))
    with jax.enable_x64(True):
        x64_image = _image(jax.random.key(1), 32)
        net64 = _perturbed(DCNet(jax.random.key(2), 4, layers=4, channels=8, dtype=jnp.float64), jax.random.key(3))
        loss64, p64 = _loss_and_parts(net64, op, op(x64_image), x64_image, jnp.asarray(0.0), Autodiff())
        g64 = jax.grad(loss64)(p64, jnp.asarray(0.0))
        g64 = [np.asarray(a) for a in jax.tree.leaves(g64)]
        leaves64 = [np.asarray(a) for a in jax.tree.leaves(p64)]
    x32 = jnp.asarray(np.asarray(x64_image), jnp.complex64)
    net32 = jax.tree.map(lambda a: a.astype(jnp.float32) if eqx.is_inexact_array(a) else a, net64)
    loss32, p32 = _loss_and_parts(net32, op, op(x32), x32, jnp.asarray(0.0, jnp.float32), Autodiff())
    assert all(np.array_equal(np.asarray(a, np.float32), b.astype(np.float32))
               for a, b in zip(jax.tree.leaves(p32), leaves64))
    g32 = [np.asarray(a, np.float64) for a in jax.tree.leaves(jax.grad(loss32)(p32, jnp.asarray(0.0, jnp.float32)))]
    error = np.sqrt(sum(np.sum((a - b) ** 2) for a, b in zip(g32, g64)) / sum(np.sum(b ** 2) for b in g64))
    print(f"float32 vs float64 gradient: relative error {error:.2e}")
    assert error < 1e-2, error


def test_vmap_jit_and_task_weight_scale_the_correction(x64):
    op = SingleCoilMRI(masks.radial(jax.random.key(0), (16, 16), 0.3))
    xs = jnp.stack([_image(jax.random.key(i), 16) for i in range(3)])
    ys = op(xs)
    net = _perturbed(DCNet(jax.random.key(2), 2, layers=3, channels=4, dtype=jnp.float64), jax.random.key(5))
    batched = jax.jit(jax.vmap(lambda v: net(op, v, 0.7)))(ys)
    for i in range(3):
        np.testing.assert_allclose(np.asarray(batched[i]), np.asarray(net(op, ys[i], 0.7)), atol=1e-12)
    assert float(DCNet.kappa(0.0)) == 1.0 and float(DCNet.kappa(None)) == 1.0
    assert float(DCNet.kappa(jnp.log(3.0))) == pytest.approx(1.5)
    one_phase = DCNet(jax.random.key(2), 1, layers=3, channels=4, dtype=jnp.float64)
    one_phase = _perturbed(one_phase, jax.random.key(5))
    x0 = op.adjoint(ys[0])
    for omega in (-1.0, 0.0, 2.0):  # one phase: x1 = DC(x0 + κ D(x0))
        expected = data_consistency(op, ys[0], x0 + DCNet.kappa(omega, jnp.float64) * one_phase.cnn(x0),
                                    one_phase.mu[0])
        np.testing.assert_allclose(np.asarray(one_phase(op, ys[0], omega)), np.asarray(expected), atol=1e-12)


def test_ratio_weighted_interpolates_omega_between_trained_ratios():
    net = DCNet(jax.random.key(0), 1, layers=2, channels=2)
    model = bilevel.RatioWeighted(net, [0.4, 0.1, 0.2], jnp.array([4.0, 1.0, 2.0]))
    assert model.ratios == (0.1, 0.2, 0.4)

    def op(count):
        return SingleCoilMRI(jnp.zeros(100, bool).at[:count].set(True).reshape(10, 10))

    for count, expected in ((10, 1.0), (15, 1.5), (20, 2.0), (30, 3.0), (5, 1.0), (60, 4.0)):
        assert float(model.omega_for(op(count))) == pytest.approx(expected)
    assert float(jax.jit(lambda o: model.omega_for(o))(op(15))) == pytest.approx(1.5)
    with pytest.raises(ValueError, match="omega"):
        bilevel.RatioWeighted(net, [0.1, 0.2], jnp.zeros(3))
    with pytest.raises(ValueError, match="ratios"):
        bilevel.RatioWeighted(net, [0.1, 0.1], jnp.zeros(2))


@pytest.mark.slow
def test_losses_with_lax_map_equal_the_vmapped_losses(x64):
    op = SingleCoilMRI(masks.radial(jax.random.key(0), (12, 12), 0.3))
    xs = jnp.stack([_image(jax.random.key(i), 12) for i in range(4)])
    net = _perturbed(DCNet(jax.random.key(2), 2, layers=3, channels=4, dtype=jnp.float64), jax.random.key(5))
    model = bilevel.TaskWeighted(net, 2, omega=jnp.array([0.3, -0.2]), dtype=jnp.float64)
    stacked = jax.tree.map(lambda a: jnp.stack([a, a]), op)
    batch = bilevel.TaskBatch(stacked, jnp.stack([xs[:2], xs[2:]]), jnp.stack([op(xs[:2]), op(xs[2:])]),
                              jnp.arange(2))
    for loss in (bilevel.supervised_loss, bilevel.measurement_loss):
        full = loss(model, batch)
        for k in (1, 2):
            np.testing.assert_allclose(np.asarray(loss(model, batch, batch_size=k)), np.asarray(full), rtol=1e-12)
    with pytest.raises(ValueError, match="batch_size"):
        bilevel.supervised_loss(model, batch, batch_size=0)


def test_ratio_weighted_with_families_picks_omega_among_tasks_of_the_masks_kind():
    net = DCNet(jax.random.key(0), 1, layers=2, channels=2)
    # tasks: 2-D at 0.1 and 0.3; lines at 0.25 (two tasks: their ω is averaged) and 0.5
    model = bilevel.RatioWeighted(net, [0.1, 0.3, 0.25, 0.25, 0.5], jnp.array([1.0, 3.0, 10.0, 20.0, 40.0]),
                                  lines=[False, False, True, True, True])
    lines = SingleCoilMRI(jnp.zeros((8, 8), bool).at[:, :2].set(True))  # 2 of 8 columns: ratio 0.25
    points = SingleCoilMRI(jnp.zeros(64, bool).at[:13].set(True).reshape(8, 8))  # ratio 0.203, 2-D
    assert float(model.omega_for(lines)) == pytest.approx(15.0)
    assert float(model.omega_for(points)) == pytest.approx(1.0 + (13 / 64 - 0.1) / 0.2 * 2.0, rel=1e-6)
    assert float(jax.jit(lambda o: model.omega_for(o))(lines)) == pytest.approx(15.0)
    only_2d = bilevel.RatioWeighted(net, [0.1, 0.3], jnp.array([1.0, 3.0]), lines=[False, False])
    assert float(only_2d.omega_for(lines)) == pytest.approx(2.5)  # no line task: all tasks
    with pytest.raises(ValueError, match="lines"):
        bilevel.RatioWeighted(net, [0.1, 0.3], jnp.zeros(2), lines=[True])


def test_mask_aware_dcnet_sees_the_unmeasured_part_and_warm_starts_exactly(x64):
    from metajax.models.dcnet import with_mask_input
    from metajax.operators import ifft2c

    op = SingleCoilMRI(masks.cartesian(jax.random.key(0), (16, 16), 0.4))
    x = _image(jax.random.key(1), 16)
    y = op(x)
    net = _perturbed(DCNet(jax.random.key(2), num_phases=3, layers=3, channels=8, dtype=jnp.float64),
                     jax.random.key(3))
    aware = with_mask_input(net)
    assert aware.cnn.mask_aware and not net.cnn.mask_aware and aware.cnn.kernels[0].shape[2] == 4
    np.testing.assert_allclose(np.asarray(aware(op, y)), np.asarray(net(op, y)), atol=1e-12)
    # one phase by hand: the CNN's extra input is F^H (1 − M) F x, the part of x data consistency never corrects
    aware_perturbed = _perturbed(aware, jax.random.key(4))
    unmeasured = ifft2c(jnp.where(op.mask, 0, fft2c(x)))
    z = x + aware_perturbed.cnn(x, unmeasured)
    mu = aware_perturbed.mu[0]
    expected = ifft2c(jnp.where(op.mask, (y + mu * fft2c(z)) / (1 + mu), fft2c(z)))
    got = aware_perturbed.phase(x, {"mu": mu}, aware_perturbed.phase_inputs(op, y)[1])
    np.testing.assert_allclose(np.asarray(got), np.asarray(expected), atol=1e-12)
    assert float(jnp.max(jnp.abs(aware_perturbed(op, y) - with_mask_input(_perturbed(net, jax.random.key(4)))(op, y)))) \
        > 1e-6  # with non-zero mask weights the network differs
    fresh = DCNet(jax.random.key(2), num_phases=2, layers=3, channels=4, mask_aware=True)
    assert fresh.cnn.kernels[0].shape[2] == 4 and bool(jnp.any(fresh.cnn.kernels[0][:, :, 2:] != 0))
    with pytest.raises(ValueError, match="mask-aware CNN needs `unmeasured`"):
        fresh.cnn(x.astype(jnp.complex64))
