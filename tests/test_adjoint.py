"""MLM adjoint vs autodiff: the slow exact reference is JAX's reverse mode through ``lax.scan``."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import brain_mri

from metajax import masks
from metajax.adjoint import MLM, Autodiff, mlm_unroll, multipliers, unroll
from metajax.models import LOA, PDNet, ResidualInitial
from metajax.operators import SingleCoilMRI

ADJOINTS = [MLM(), MLM(checkpoint_every=2), MLM(checkpoint_every="sqrt"), MLM(scan_unroll=True)]
ADJOINT_IDS = ["store-all", "checkpoint-2", "checkpoint-sqrt", "scan-unrolled"]


def toy_phase(u, theta, params):
    """A nonlinear phase with a PyTree state, per-phase controls and shared params (incl. a bool mask)."""
    x, s = u
    drive = jnp.tanh(params["w"] @ x) * jnp.where(params["mask"], 1.0, 0.5)
    x_new = x - theta["a"] * drive + theta["b"] + s * params["c"]
    return x_new, 0.9 * s + 0.01 * jnp.sum(x_new**2)


def toy_problem(t=7, seed=0):
    rng = np.random.default_rng(seed)
    u0 = (jnp.asarray(rng.standard_normal(5)), jnp.asarray(0.5))
    thetas = {"a": jnp.asarray(rng.random(t)), "b": 0.1 * jnp.asarray(rng.standard_normal((t, 5)))}
    params = {"w": 0.5 * jnp.asarray(rng.standard_normal((5, 5))), "c": jnp.asarray(0.2), "mask": jnp.arange(5) > 2}
    return u0, thetas, params


def toy_loss(u):
    return jnp.sum(u[0] ** 3) + u[1] ** 2


def _max_relative_error(a, b):
    errors = jax.tree.map(lambda p, q: float(jnp.max(jnp.abs(p - q)) / (jnp.max(jnp.abs(q)) + 1e-300)), a, b)
    return max(jax.tree.leaves(errors))


def _float_grads(fn, *args):
    """Gradients of ``fn`` w.r.t. the float leaves of every argument."""
    return eqx.filter_grad(lambda args: fn(*args))(args)


# ------------------------------------------------------------------ toy phase


@pytest.mark.parametrize("adjoint", ADJOINTS, ids=ADJOINT_IDS)
@pytest.mark.parametrize("t", [1, 2, 7])
def test_mlm_gradients_equal_autodiff_toy(adjoint, t, x64):
    u0, thetas, params = toy_problem(t)
    reference = _float_grads(lambda *a: toy_loss(unroll(toy_phase, *a)), u0, thetas, params)
    ours = _float_grads(lambda *a: toy_loss(unroll(toy_phase, *a, adjoint=adjoint)), u0, thetas, params)
    assert _max_relative_error(ours, reference) < 1e-12
    np.testing.assert_allclose(unroll(toy_phase, u0, thetas, params, adjoint=adjoint)[0],
                               unroll(toy_phase, u0, thetas, params)[0], rtol=1e-14)


def test_mlm_under_jit_and_vmap_over_samples_and_controls(x64):
    u0, thetas, params = toy_problem(5)
    batch_u0 = jax.tree.map(lambda a: jnp.stack([a, 1.5 * a, -a]), u0)
    batch_thetas = jax.tree.map(lambda a: jnp.stack([a, 0.5 * a, a + 0.1]), thetas)

    def loss(adjoint):
        def total(u0s, ths, params):
            finals = jax.vmap(lambda u, th: unroll(toy_phase, u, th, params, adjoint=adjoint))(u0s, ths)
            return jnp.sum(jax.vmap(toy_loss)(finals))
        return jax.jit(lambda *a: _float_grads(total, *a))(batch_u0, batch_thetas, params)

    assert _max_relative_error(loss(MLM(checkpoint_every=2)), loss(Autodiff())) < 1e-12


def test_multipliers_equal_gradients_wrt_state_perturbations(x64):
    """λ_t = −∂ℓ/∂u_t, measured independently by adding δ_t to every state of a Python loop."""
    t = 6
    u0, thetas, params = toy_problem(t, seed=3)

    def perturbed_loss(deltas):
        u = jax.tree.map(lambda a, d: a + d[0], u0, deltas)
        for i in range(t):
            theta = jax.tree.map(lambda a: a[i], thetas)
            u = jax.tree.map(lambda a, d: a + d[i + 1], toy_phase(u, theta, params), deltas)
        return toy_loss(u)

    zeros = jax.tree.map(lambda a: jnp.zeros((t + 1, *jnp.shape(a)), a.dtype), u0)
    expected = jax.tree.map(jnp.negative, jax.grad(perturbed_loss)(zeros))
    for checkpoint in (None, 4):
        u_final, lambdas = multipliers(toy_phase, toy_loss, u0, thetas, params, checkpoint_every=checkpoint)
        assert jax.tree.map(jnp.shape, lambdas) == ((t + 1, 5), (t + 1,))
        assert _max_relative_error(lambdas, expected) < 1e-12
        np.testing.assert_allclose(u_final[0], unroll(toy_phase, u0, thetas, params)[0], rtol=1e-14)
        np.testing.assert_allclose(lambdas[0][-1], -jax.grad(toy_loss)(u_final)[0], rtol=1e-14)


@pytest.mark.parametrize("adjoint", [MLM(), MLM(checkpoint_every=3)], ids=["store-all", "checkpoint-3"])
def test_reverse_over_reverse_toy(adjoint, x64):
    """The penalty method differentiates ‖∇_θ ℓ‖²: gradients of gradients must agree."""
    u0, thetas, params = toy_problem(7, seed=5)

    def penalty(adj):
        def gradient_norm(thetas, params):
            g = jax.grad(lambda th: toy_loss(unroll(toy_phase, u0, th, params, adjoint=adj)))(thetas)
            return sum(jnp.sum(leaf**2) for leaf in jax.tree.leaves(g))
        return _float_grads(gradient_norm, thetas, params)

    assert _max_relative_error(penalty(adjoint), penalty(Autodiff())) < 1e-12


def test_forward_mode_is_not_supported_by_mlm(x64):
    u0, thetas, params = toy_problem(3)
    with pytest.raises(TypeError, match="custom_vjp"):
        jax.jvp(lambda th: mlm_unroll(toy_phase, u0, th, params)[0], (thetas,), (thetas,))
    # Autodiff supports it.
    jax.jvp(lambda th: unroll(toy_phase, u0, th, params)[0], (thetas,), (thetas,))


# ------------------------------------------------------------------ LOA and PDNet


@pytest.fixture(scope="module")
def mri_problem():
    return brain_mri(3, 16, 0.3)


def _network_loss(net, op, ys, images, adjoint, omega=0.2):
    if isinstance(net, LOA):
        recon = jax.vmap(lambda y: net(op, y, omega, adjoint=adjoint))(ys)
    else:
        recon = jax.vmap(lambda y: net(op, y, adjoint=adjoint))(ys)
    return jnp.sum(jnp.abs(recon - images) ** 2)


def _networks():
    # A learned initial network (scale ≠ 0) makes gradients flow through λ_0 into g_0's weights.
    initial = eqx.tree_at(lambda m: m.scale, ResidualInitial(jax.random.key(9), dtype=jnp.float64), jnp.asarray(0.3))
    return [
        LOA(jax.random.key(1), num_phases=4, initial=initial, dtype=jnp.float64),
        PDNet(jax.random.key(2), num_layers=4, channels=6, dtype=jnp.float64),
    ]


@pytest.mark.slow  # the default suite keeps the LOA paper preset (below) and the toy checks
@pytest.mark.parametrize("index", [0, 1], ids=["LOA", "PDNet"])
def test_network_gradients_equal_autodiff_with_batch_vmap_and_jit(index, mri_problem, x64):
    images, op, ys = mri_problem
    net = _networks()[index]
    grad = eqx.filter_jit(eqx.filter_grad(_network_loss))
    reference = grad(net, op, ys, images, Autodiff())
    for adjoint in (MLM(), MLM(checkpoint_every=3), MLM(scan_unroll=2), MLM(checkpoint_every=2, scan_unroll=4)):
        ours = grad(net, op, ys, images, adjoint)
        assert _max_relative_error(ours, reference) < 1e-12, adjoint
    if index == 0:
        assert all(float(jnp.max(jnp.abs(k))) > 0 for k in ours.initial.cnn.kernels_re)


def test_paper_preset_gradients_equal_autodiff(mri_problem, x64):
    images, op, ys = mri_problem
    net = LOA.paper(jax.random.key(3), num_phases=4, dtype=jnp.float64)
    grad = eqx.filter_jit(eqx.filter_grad(_network_loss))
    assert _max_relative_error(grad(net, op, ys, images, MLM()), grad(net, op, ys, images, Autodiff())) < 1e-12


@pytest.mark.slow
def test_loa_gradients_under_vmap_over_tasks(mri_problem, x64):
    """Tasks differ in mask and task weight ω; vmap over the stacked tasks."""
    images, _, _ = mri_problem
    ops = [SingleCoilMRI(masks.radial(jax.random.key(k), (16, 16), r)) for k, r in ((3, 0.2), (4, 0.4))]
    stacked = jax.tree.map(lambda *a: jnp.stack(a), *ops)
    omegas = jnp.array([-0.5, 0.7])
    net = LOA(jax.random.key(5), num_phases=2, dtype=jnp.float64)

    def loss(net, omegas, adjoint):
        def per_task(op, omega):
            ys = op(images)
            return jnp.sum(jnp.abs(jax.vmap(lambda y: net(op, y, omega, adjoint=adjoint))(ys) - images) ** 2)
        return jnp.sum(jax.vmap(per_task)(stacked, omegas))

    # Gradients w.r.t. the network and the task weights ω together.
    grad = eqx.filter_grad(lambda net_and_omegas, adjoint: loss(*net_and_omegas, adjoint))
    reference = grad((net, omegas), Autodiff())
    ours = grad((net, omegas), MLM())
    assert _max_relative_error(ours, reference) < 1e-12
    assert jnp.all(jnp.abs(ours[1]) > 0)


@pytest.mark.slow
@pytest.mark.parametrize("index", [0, 1], ids=["LOA", "PDNet"])
def test_network_reverse_over_reverse(index, mri_problem, x64):
    images, op, ys = mri_problem
    net = [LOA(jax.random.key(1), num_phases=2, dtype=jnp.float64), _networks()[1]][index]
    params, static = eqx.partition(net, eqx.is_inexact_array)

    def penalty(params, adjoint):
        g = eqx.filter_grad(lambda p: _network_loss(eqx.combine(p, static), op, ys[:1], images[:1], adjoint))(params)
        return sum(jnp.sum(leaf**2) for leaf in jax.tree.leaves(g))

    grad = eqx.filter_jit(jax.grad(penalty))
    reference = grad(params, Autodiff())
    ours = grad(params, MLM())
    assert _max_relative_error(ours, reference) < 1e-12


# ------------------------------------------------------------------ bad input


def test_bad_unroll_inputs_raise():
    u0, thetas, params = toy_problem(3)
    with pytest.raises(ValueError, match=r"inconsistent leading axes \(phase counts\): \['a'\]: 3, \['b'\]: 2"):
        unroll(toy_phase, u0, {"a": thetas["a"], "b": thetas["b"][:2]}, params)
    with pytest.raises(ValueError, match=r"T = 0 phases"):
        unroll(toy_phase, u0, jax.tree.map(lambda a: a[:0], thetas), params)
    with pytest.raises(ValueError, match=r"leaves \['c'\] are scalars"):
        unroll(toy_phase, u0, {**thetas, "c": jnp.asarray(1.0)}, params)
    with pytest.raises(ValueError, match=r"`phase` changes state leaf \[0\] from \(5,\) float32 to \(4,\) float32"):
        unroll(lambda u, th, p: (u[0][:4], u[1]), u0, thetas, params)
    with pytest.raises(ValueError, match=r"changes state leaf \[1\] from \(\) float32 to \(\) int32"):
        mlm_unroll(lambda u, th, p: (u[0], jnp.round(u[1]).astype(jnp.int32)), u0, thetas, params)
    with pytest.raises(ValueError, match=r"must return a state with the structure of `u0`"):
        unroll(lambda u, th, p: u[0], u0, thetas, params)
    with pytest.raises(TypeError, match=r"`u0` leaf \[1\] has dtype int32"):
        unroll(toy_phase, (u0[0], jnp.asarray(1)), thetas, params)
    with pytest.raises(ValueError, match=r"`checkpoint_every` must be None, 'sqrt' or a positive integer; got 0"):
        MLM(checkpoint_every=0)
    with pytest.raises(TypeError, match=r"`adjoint` must be an Autodiff or MLM instance"):
        unroll(toy_phase, u0, thetas, params, adjoint="mlm")


def test_mlm_differentiates_a_python_float_parameter_like_autodiff():
    """A Python float in ``params`` reaches the custom_vjp's backward rule as a float, not an array: its gradient
    must not be dropped (a float0 cotangent)."""
    def total(c, adjoint):
        return jnp.sum(unroll(lambda u, th, p: u * th + p, jnp.ones(3), jnp.full((2, 3), 0.5), c, adjoint=adjoint))

    assert float(jax.grad(total)(1.0, MLM())) == pytest.approx(float(jax.grad(total)(1.0, Autodiff()))) == 4.5
