import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import brain_mri
from scipy.signal import correlate2d

from metajax import data
from metajax.models import LOA, FeatureCNN, LOAParams, LOAPhase, PDNet, ResidualInitial, smoothed_l21
from metajax.models.layers import complex_conv, conv, conv_adjoint, smoothed_relu, xavier_uniform
from metajax.models.loa import BRANCH_ACCEPT_U, BRANCH_BACKTRACK, branch_counts
from metajax.operators import Blur, gaussian_kernel


@pytest.fixture(scope="module")
def brain():
    return brain_mri(2, 32, 0.25)


# ------------------------------------------------------------------ layers


def test_conv_matches_scipy_correlation_and_adjoint_is_exact(x64):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 9, 8))
    kernel = rng.standard_normal((3, 2, 3, 3))
    expected = np.stack([sum(correlate2d(x[i], kernel[o, i], mode="same") for i in range(2)) for o in range(3)])
    np.testing.assert_allclose(conv(jnp.asarray(x), jnp.asarray(kernel)), expected, rtol=1e-12, atol=1e-12)
    y = rng.standard_normal((3, 9, 8))
    lhs = np.vdot(conv(jnp.asarray(x), jnp.asarray(kernel)), y)
    rhs = np.vdot(x, conv_adjoint(jnp.asarray(y), jnp.asarray(kernel)))
    assert abs(lhs - rhs) / abs(lhs) < 1e-12
    (transposed,) = jax.linear_transpose(lambda v: conv(v, jnp.asarray(kernel)), jnp.asarray(x))(jnp.asarray(y))
    np.testing.assert_allclose(conv_adjoint(jnp.asarray(y), jnp.asarray(kernel)), transposed, rtol=1e-12, atol=1e-12)


def test_complex_conv_is_complex_correlation(x64):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 7, 6)) + 1j * rng.standard_normal((2, 7, 6))
    k_re, k_im = rng.standard_normal((2, 3, 2, 3, 3))
    expected = np.stack([
        sum(correlate2d(x[i], np.conj(k_re[o, i] + 1j * k_im[o, i]), mode="same") for i in range(2)) for o in range(3)
    ])  # scipy conjugates the second argument of a complex correlation
    np.testing.assert_allclose(complex_conv(jnp.asarray(x), jnp.asarray(k_re), jnp.asarray(k_im)), expected,
                               rtol=1e-12, atol=1e-12)


def test_smoothed_relu_pieces_and_continuity(x64):
    delta = 1e-3
    x = jnp.array([-1.0, -delta, -0.5 * delta, 0.0, 0.5 * delta, delta, 2.0])
    expected = [0.0, 0.0, (0.25 * delta**2) / (4 * delta) - 0.25 * delta + 0.25 * delta, delta / 4,
                (0.25 * delta**2) / (4 * delta) + 0.25 * delta + 0.25 * delta, delta, 2.0]
    np.testing.assert_allclose(smoothed_relu(x, delta), expected, rtol=1e-12, atol=1e-15)
    slope = jax.vmap(jax.grad(lambda v: smoothed_relu(v, delta)))
    np.testing.assert_allclose(slope(jnp.array([-delta * (1 + 1e-9), -delta * (1 - 1e-9)])), [0, 0], atol=1e-6)
    np.testing.assert_allclose(slope(jnp.array([delta * (1 - 1e-9), delta * (1 + 1e-9)])), [1, 1], atol=1e-6)


def test_xavier_uniform_bounds_and_variance():
    w = xavier_uniform(jax.random.key(0), (40, 2, 3, 3))
    limit = np.sqrt(6 / (2 * 9 + 40 * 9))
    assert float(jnp.max(jnp.abs(w))) <= limit
    assert abs(float(jnp.var(w)) - limit**2 / 3) < 0.1 * limit**2 / 3


def test_feature_cnn_structure_and_smoothed_l21(x64):
    cnn = FeatureCNN(jax.random.key(0), dtype=jnp.float64)
    assert [k.shape for k in cnn.kernels_re] == [(4, 1, 3, 3), (4, 4, 3, 3), (4, 4, 3, 3)]
    x = jnp.asarray(data.default_images(1, 16)[0], jnp.complex128)
    features = cnn(x)
    assert features.shape == (4, 16, 16) and features.dtype == jnp.complex128
    # Independent NumPy/SciPy reference: complex correlations, split smoothed ReLU, none after the last layer.
    def relu(v):
        return np.where(v <= -1e-3, 0, np.where(v >= 1e-3, v, v**2 / 4e-3 + v / 2 + 1e-3 / 4))

    h = np.asarray(x)[None]
    for i, (k_re, k_im) in enumerate(zip(cnn.kernels_re, cnn.kernels_im)):
        k = np.asarray(k_re) + 1j * np.asarray(k_im)
        h = np.stack([sum(correlate2d(h[c], np.conj(k[o, c]), mode="same") for c in range(h.shape[0]))
                      for o in range(k.shape[0])])
        if i < 2:
            h = relu(h.real) + 1j * relu(h.imag)
    np.testing.assert_allclose(features, h, rtol=1e-10, atol=1e-14)
    norms = np.sqrt((np.abs(np.asarray(features)) ** 2).sum(axis=0))
    eps = 0.01
    np.testing.assert_allclose(smoothed_l21(features, eps), np.sum(np.sqrt(norms**2 + eps**2) - eps), rtol=1e-12)
    np.testing.assert_allclose(smoothed_l21(features, 0.0), norms.sum(), rtol=1e-12)


# ------------------------------------------------------------------ LOA


def _manual_phases(net, op, y, omega):
    """Run the phases one by one, returning the states and the per-phase diagnostics."""
    (x, eps), params = net.phase_inputs(op, y, omega)
    states, infos = [(x, eps)], []
    for t in range(net.alpha.shape[0]):
        (x, eps), info = net.phase.step((x, eps), jax.tree.map(lambda a: a[t], net.thetas), params)
        states.append((x, eps))
        infos.append(info)
    return states, infos, params


LOA_CASES = {
    "default": lambda key, **kw: LOA(key, dtype=jnp.float64, **kw),
    "paper-large-steps": lambda key, **kw: LOA.paper(key, alpha=1.9, tau=2.0, dtype=jnp.float64, **kw),
}


@pytest.mark.parametrize("case", [pytest.param("default"), pytest.param("paper-large-steps", marks=pytest.mark.slow)])
def test_loa_energy_descends_every_phase(case, brain, x64):
    images, op, ys = brain
    net = LOA_CASES[case](jax.random.key(3), num_phases=6)
    states, infos, params = _manual_phases(net, op, ys[0], 0.5)
    a = net.phase.a
    n_pixels = images.shape[-1] * images.shape[-2]
    for t, info in enumerate(infos):
        (x, eps), (x_new, eps_new) = states[t], states[t + 1]
        step = float(jnp.sum(jnp.abs(x_new - x) ** 2))
        # The paper's guarantee, at the phase's ε: φ_ε(x⁺) ≤ φ_ε(x) − ‖x⁺ − x‖² / a.
        assert float(info["energy_after"]) <= float(info["energy_before"]) - step / a + 1e-12
        # φ_ε + κ N ε never rises across phases (ε may shrink in between; φ_ε alone may then rise).
        if t + 1 < len(infos):
            kappa = float(params.kappa)
            assert (float(infos[t + 1]["energy_before"]) + kappa * n_pixels * float(eps_new)
                    <= float(info["energy_before"]) + kappa * n_pixels * float(eps) + 1e-12)
        assert float(eps_new) >= net.phase.eps_min
    # LOA.trace records the same numbers under lax.scan.
    x_final, traced = net.trace(op, ys[0], 0.5)
    np.testing.assert_allclose(traced["energy_after"], [float(i["energy_after"]) for i in infos], rtol=1e-10)
    np.testing.assert_allclose(x_final, states[-1][0], rtol=1e-10, atol=1e-12)


def test_loa_takes_both_branches_and_shrinks_eps(brain, x64):
    images, op, ys = brain
    # κ ≈ 0: φ ≈ f and the data step u descends, so it is accepted; huge steps must backtrack.
    small_kappa = LOA.paper(jax.random.key(4), num_phases=4, alpha=0.5, tau=0.1, dtype=jnp.float64)
    assert set(np.asarray(small_kappa.trace(op, ys[0], -10.0)[1]["branch"]).tolist()) == {BRANCH_ACCEPT_U}
    huge_steps = LOA.paper(jax.random.key(4), num_phases=4, alpha=1.99, tau=3.0, dtype=jnp.float64)
    info = huge_steps.trace(op, ys[0], 0.0)[1]
    assert BRANCH_BACKTRACK in set(np.asarray(info["branch"]).tolist())
    assert np.all(np.asarray(info["backtracks"])[np.asarray(info["branch"]) == BRANCH_BACKTRACK] >= 1)
    np.testing.assert_array_equal(branch_counts(info["branch"]).sum(-1), np.ones(4))
    # With a loose ε rule (σ large) ε shrinks by γ on every phase, down to the floor.
    net = LOA(jax.random.key(4), num_phases=4, eps0=1.5e-3, phase=LOAPhase(sigma=1e12), dtype=jnp.float64)
    np.testing.assert_allclose(net.trace(op, ys[0], 0.0)[1]["eps"], [1.5e-3, 1.35e-3, 1.215e-3, 1.0935e-3], rtol=1e-12)
    net = LOA(jax.random.key(4), num_phases=4, eps0=1.1e-3, phase=LOAPhase(sigma=1e12), dtype=jnp.float64)
    np.testing.assert_allclose(net.trace(op, ys[0], 0.0)[1]["eps"], [1.1e-3, 1e-3, 1e-3, 1e-3], rtol=1e-12)


def test_branch_counts_tallies_over_the_batch():
    branch = jnp.array([[0, 1, 2], [0, 0, 2]])
    np.testing.assert_array_equal(branch_counts(branch), [[2, 0, 0], [1, 1, 0], [0, 0, 2]])


@pytest.mark.parametrize("build, omega", [(lambda k: LOA(k, num_phases=1, dtype=jnp.float64), 0.0),
                                          (lambda k: LOA.paper(k, num_phases=1, alpha=0.5, tau=0.1,
                                                               dtype=jnp.float64), -10.0),
                                          (lambda k: LOA.paper(k, num_phases=1, alpha=1.99, tau=3.0,
                                                               dtype=jnp.float64), 0.0)],
                         ids=["default", "paper-accept", "paper-backtrack"])
def test_loa_replaying_recorded_decisions_reproduces_the_phase(build, omega, brain, x64):
    """The DecidingPhase contract the MLM adjoint relies on: apply(decide(...).decisions) == decide(...)."""
    _, op, ys = brain
    net = build(jax.random.key(7))
    state, params = net.phase_inputs(op, ys[0], omega)
    theta = jax.tree.map(lambda a: a[0], net.thetas)
    new_state, decisions = net.phase.decide(state, theta, params)
    replayed = net.phase.apply(state, theta, params, decisions)
    np.testing.assert_array_equal(replayed[0], new_state[0])
    np.testing.assert_array_equal(replayed[1], new_state[1])


# jit-compiled once per dtype and worker: the raw values are array leaves, so every case reuses the program
_trace = eqx.filter_jit(lambda net, op, y: net.trace(op, y, 0.0))
_energy_grad = eqx.filter_jit(eqx.filter_grad(lambda n, op, y: jnp.sum(jnp.abs(n(op, y, 0.0)) ** 2)))


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
@pytest.mark.parametrize("raw", [-1e4, pytest.param(-50.0, marks=pytest.mark.slow), pytest.param(0.0, marks=pytest.mark.slow), 30.0])
def test_loa_steps_and_eps_stay_positive_for_any_raw_parameters(raw, dtype, brain, x64):
    """No optimizer step can make α_t, τ_t or ε non-positive or NaN, and every phase still descends."""
    images, op, ys = brain
    cdtype = jnp.complex64 if dtype == jnp.float32 else jnp.complex128
    net = LOA(jax.random.key(8), num_phases=3, dtype=dtype)
    net = eqx.tree_at(lambda n: (n.alpha_raw, n.tau_raw, n.eps0_raw), net,
                      (jnp.full(3, raw, dtype), jnp.full(3, raw, dtype), jnp.asarray(raw, dtype)))
    assert bool(jnp.all(net.alpha > 0)) and bool(jnp.all(net.tau > 0)) and float(net.eps0) >= net.phase.eps_min
    x, info = _trace(net, op, ys[0].astype(cdtype))
    assert bool(jnp.all(jnp.isfinite(x)))
    for key in ("alpha", "tau", "alpha_fallback", "eps"):
        assert bool(jnp.all(info[key] > 0)) and bool(jnp.all(jnp.isfinite(info[key]))), key
    assert bool(jnp.all(info["energy_after"] <= info["energy_before"]))
    grads = _energy_grad(net, op, ys[0].astype(cdtype))
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree.leaves(grads))


def _float32_vs_float64_gradient(net64, op, ys, images):
    """max over leaves of max|g32 − g64| / max|g64| for the same weights (DESIGN §5's conditioning measure)."""
    def grads(dtype, cdtype):
        net = jax.tree.map(lambda a: a.astype(dtype) if eqx.is_inexact_array(a) else a, net64)
        x, y = images.astype(cdtype), ys.astype(cdtype)
        return eqx.filter_grad(lambda n: jnp.mean(jnp.abs(jax.vmap(lambda v: n(op, v, 0.0))(y) - x) ** 2))(net)

    g32, g64 = grads(jnp.float32, jnp.complex64), grads(jnp.float64, jnp.complex128)
    return max(float(jnp.max(jnp.abs(a.astype(jnp.float64) - b)) / jnp.max(jnp.abs(b)))
               for a, b in zip(jax.tree.leaves(g32), jax.tree.leaves(g64)))


@pytest.mark.slow
def test_default_loa_float32_gradient_matches_float64(x64):
    """Well conditioned at initialisation: 48², T = 5, radial 20 %; the paper preset is exercised (and printed)."""
    images, op, ys = brain_mri(2, 48, 0.2)
    for key in (0, 1):
        error = _float32_vs_float64_gradient(LOA(jax.random.key(key), num_phases=5, dtype=jnp.float64), op, ys, images)
        assert error < 1e-3, (key, error)
    paper = _float32_vs_float64_gradient(LOA.paper(jax.random.key(0), num_phases=5, dtype=jnp.float64), op, ys, images)
    print(f"paper preset float32 vs float64 gradient error: {paper:.3g}")
    assert np.isfinite(paper)


@pytest.mark.slow
def test_linear_gain_is_the_norm_of_the_linearised_cnn(x64):
    """Frequency-grid gain vs power iteration on the network with activations replaced by slope · identity."""
    cnn = FeatureCNN(jax.random.key(2), dtype=jnp.float64)
    for slope in (1.0, 0.5):
        def linear(x):
            h = x[None]
            for i, (k_re, k_im) in enumerate(zip(cnn.kernels_re, cnn.kernels_im)):
                h = complex_conv(h, k_re, k_im) * (slope if i < len(cnn.kernels_re) - 1 else 1.0)
            return h

        x = jax.random.normal(jax.random.key(0), (64, 64)) + 0j
        for _ in range(100):
            out, vjp = jax.vjp(linear, x)
            x = jnp.conj(vjp(jnp.conj(out))[0])
            x = x / jnp.linalg.norm(x)
        power = float(jnp.linalg.norm(linear(x)))
        gain = float(cnn.linear_gain(slope, grid=64))
        assert 0.97 * gain <= power <= gain * (1 + 1e-6), (slope, power, gain)


def test_loa_phase_matches_finite_differences(brain, x64):
    """Directional derivative of one phase w.r.t. (x, α, τ, CNN weights, ε) vs central differences."""
    images, op, ys = brain
    net = LOA(jax.random.key(5), num_phases=1, dtype=jnp.float64)
    (x0, eps), params = net.phase_inputs(op, ys[0], 0.3)
    rng = np.random.default_rng(0)
    directions = (
        jnp.asarray(rng.standard_normal(x0.shape) + 1j * rng.standard_normal(x0.shape)) * 1e-2,
        jnp.asarray(rng.standard_normal(2)) * 1e-2,
        jax.tree.map(lambda w: jnp.asarray(rng.standard_normal(w.shape)) * 1e-2, params.features),
        jnp.asarray(1e-3),
    )

    def phase_output(x, steps, features, eps):
        p = LOAParams(features, params.operator, params.y, params.kappa)
        return net.phase((x, eps), {"alpha": steps[0], "tau": steps[1]}, p)[0]

    point = (x0, jnp.array([0.5, 0.1]), params.features, eps)
    _, tangent = jax.jvp(phase_output, point, directions)
    h = 1e-5
    plus = phase_output(*jax.tree.map(lambda p, d: p + h * d, point, directions))
    minus = phase_output(*jax.tree.map(lambda p, d: p - h * d, point, directions))
    finite = (plus - minus) / (2 * h)
    assert float(jnp.max(jnp.abs(finite - tangent)) / jnp.max(jnp.abs(tangent))) < 1e-6


@pytest.mark.slow
def test_loa_loss_falls_under_adam_to_the_zero_filled_level():
    """Trainable end to end: the loss falls steadily under Adam (quality is the job of benchmarks/loa_training.py).

    The default LOA starts slightly above the zero-filled error on tiny images (its initial regulariser is
    random) and must reach it within 25 steps.
    """
    import optax

    with jax.enable_x64(True):
        images, op, ys = brain_mri(2, 48, 0.2)
        net = LOA(jax.random.key(6), num_phases=3, dtype=jnp.float64)
        optimizer = optax.adam(1e-2)
        state = optimizer.init(eqx.filter(net, eqx.is_inexact_array))

        @eqx.filter_jit
        def step(net, state):
            loss, grads = eqx.filter_value_and_grad(
                lambda n: jnp.mean(jnp.abs(jax.vmap(lambda y: n(op, y, 0.0))(ys) - images) ** 2))(net)
            updates, state = optimizer.update(grads, state)
            return eqx.apply_updates(net, updates), state, loss

        losses = []
        for _ in range(25):
            net, state, loss = step(net, state)
            losses.append(float(loss))
        zero_filled = float(jnp.mean(jnp.abs(jax.vmap(op.adjoint)(ys) - images) ** 2))
    assert losses[-1] < 0.97 * losses[0] and losses[-1] < zero_filled * (1 + 1e-3), (losses[0], losses[-1], zero_filled)
    assert all(later <= earlier * (1 + 1e-3) for earlier, later in zip(losses[::5], losses[5::5]))


def test_residual_initial_starts_as_zero_filling(brain, x64):
    _, op, ys = brain
    initial = ResidualInitial(jax.random.key(0), dtype=jnp.float64)
    np.testing.assert_array_equal(initial(op, ys[0]), op.adjoint(ys[0]))
    shifted = eqx.tree_at(lambda m: m.scale, initial, jnp.asarray(0.5))
    np.testing.assert_allclose(shifted(op, ys[0]), op.adjoint(ys[0]) + 0.5 * initial.cnn(op.adjoint(ys[0]))[0])
    assert initial.cnn.kernels_re[-1].shape == (1, 8, 3, 3)


def test_loa_bad_constants_raise():
    with pytest.raises(ValueError, match=r"0 < rho < 1.*rho=1.5"):
        LOAPhase(rho=1.5)
    with pytest.raises(ValueError, match=r"`max_backtracks` must be a positive integer"):
        LOAPhase(max_backtracks=0)
    with pytest.raises(ValueError, match=r"`num_phases` must be a positive integer"):
        LOA(jax.random.key(0), num_phases=0)
    with pytest.raises(ValueError, match=r"`kernel_size` must be odd"):
        FeatureCNN(jax.random.key(0), kernel_size=4)
    with pytest.raises(ValueError, match=r"eps_min > 0.*eps_min=0"):
        LOAPhase(eps_min=0.0)
    with pytest.raises(ValueError, match=r"`eps0` must exceed the floor phase.eps_min = 0.001; got 0.001"):
        LOA(jax.random.key(0), eps0=1e-3)
    with pytest.raises(ValueError, match=r"`tau` must be a positive finite real number; got -1"):
        LOA(jax.random.key(0), tau=-1)


# ------------------------------------------------------------------ PDNet


def test_pdnet_parameter_count_and_real_image_restoration(x64):
    net = PDNet(jax.random.key(0), num_layers=5, complex_images=False, dtype=jnp.float64)
    per_layer = net.kernel[0].size + 1  # analysis kernel + threshold
    assert per_layer == 361
    image = jnp.asarray(data.default_images(1, 24)[0], jnp.float64)
    blur = Blur(gaussian_kernel(1.0, dtype=jnp.float64))
    recon = net(blur, blur(image))
    assert recon.shape == image.shape and recon.dtype == jnp.float64
    # With zero analysis kernels PDNet is gradient descent on ½‖Ax − y‖²: x_T = x_{T−1} − τ A^H(A x − y).
    plain = eqx.tree_at(lambda n: n.kernel, net, jnp.zeros_like(net.kernel))
    x = blur.adjoint(blur(image))
    for _ in range(5):
        x = x - 0.5 * blur.adjoint(blur(x) - blur(image))
    np.testing.assert_allclose(plain(blur, blur(image)), x, rtol=1e-12, atol=1e-12)


def test_pdnet_dtype_mismatch_raises(brain):
    _, op, ys = brain
    with pytest.raises(ValueError, match=r"PDNet was built for real images"):
        PDNet(jax.random.key(0), num_layers=2, complex_images=False)(op, ys[0].astype(jnp.complex64))
