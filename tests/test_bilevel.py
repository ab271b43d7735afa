"""Bilevel solvers against independent references: closed forms, dense linear algebra, finite differences."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from metajax import data, masks
from metajax.adjoint import MLM, Autodiff
from metajax.bilevel import (
    MAML,
    Implicit,
    Penalty,
    Shared,
    TaskGroups,
    TaskWeighted,
    TaskWeights,
    TaskWeightsParams,
    adapt,
    init,
    group_losses,
    join_task_weights,
    measurement_loss,
    meta_gradient,
    meta_step,
    sample_batch,
    split_task_weights,
    supervised_loss,
    task_mean_gradient,
)
from metajax.linear_solve import CONVERGED
from metajax.models import LOA
from metajax.operators import Inpainting, SingleCoilMRI


def _rel(a, b):
    a, b = jnp.concatenate([jnp.ravel(x) for x in jax.tree.leaves(a)]), jnp.concatenate(
        [jnp.ravel(x) for x in jax.tree.leaves(b)])
    return float(jnp.linalg.norm(a - b) / jnp.linalg.norm(b))


def ridge_problem(seed=0):
    rng = np.random.default_rng(seed)
    d = 5
    x_tr, x_val = rng.standard_normal((20, d)), rng.standard_normal((15, d))
    w_true = rng.standard_normal(d)
    args = {"x_tr": jnp.asarray(x_tr), "y_tr": jnp.asarray(x_tr @ w_true + 0.3 * rng.standard_normal(20)),
            "x_val": jnp.asarray(x_val), "y_val": jnp.asarray(x_val @ w_true + 0.3 * rng.standard_normal(15))}
    theta = {"w": jnp.asarray(rng.standard_normal(d))}
    return theta, args


def ridge_inner(phi, args):
    return 0.5 * jnp.mean((args["x_tr"] @ phi["w"] - args["y_tr"]) ** 2)


def ridge_outer(phi, args):
    return 0.5 * jnp.mean((args["x_val"] @ phi["w"] - args["y_val"]) ** 2)


def ridge_hypergradient(theta, args, lam):
    """Closed form: φ* = (H + λI)⁻¹(Xᵀy/n + λθ), dφ*/dθ = λ(H + λI)⁻¹, H = XᵀX/n."""
    x, y = np.asarray(args["x_tr"]), np.asarray(args["y_tr"])
    h = x.T @ x / len(y)
    system = h + lam * np.eye(len(h))
    phi = np.linalg.solve(system, x.T @ y / len(y) + lam * np.asarray(theta["w"]))
    xv, yv = np.asarray(args["x_val"]), np.asarray(args["y_val"])
    return lam * np.linalg.solve(system, xv.T @ (xv @ phi - yv) / len(yv)), np.linalg.eigvalsh(h)


@pytest.mark.parametrize("solver", ["cg", "neumann"])
@pytest.mark.parametrize("hvp", ["reverse", "forward"])
def test_implicit_equals_closed_form_ridge_hypergradient(solver, hvp, x64):
    theta, args = ridge_problem()
    lam = 0.5
    exact, eig = ridge_hypergradient(theta, args, lam)
    step = 1 / (eig.max() + lam)  # inner GD contracts by 1 − (λ_min + λ)/(λ_max + λ) per step
    method = Implicit(lam=lam, inner_optimizer=optax.sgd(step), inner_steps=400, cg_tol=1e-13,
                      cg_max_iters=30 if solver == "cg" else 400, solver=solver,
                      neumann_step=1 / (1 + eig.max() / lam), hvp=hvp)
    grad, info = jax.jit(lambda t, a: meta_gradient(method, ridge_inner, ridge_outer, t, a))(theta, args)
    np.testing.assert_allclose(grad["w"], exact, rtol=1e-8)
    assert int(info["status"]) == CONVERGED
    np.testing.assert_allclose(info["inner_loss"], ridge_inner(theta, args), rtol=1e-12)


def test_implicit_damping_lands_inside_the_hessian_term(x64):
    """damping μ: (I + (H + μI)/λ) v = g — the ridge hypergradient with H replaced by H + μI."""
    theta, args = ridge_problem()
    lam, mu = 0.5, 0.3
    _, eig = ridge_hypergradient(theta, args, lam)
    method = Implicit(lam=lam, inner_optimizer=optax.sgd(1 / (eig.max() + lam)), inner_steps=400, cg_tol=1e-13,
                      damping=mu)
    grad, _ = meta_gradient(method, ridge_inner, ridge_outer, theta, args)
    phi, _ = adapt(ridge_inner, optax.sgd(1 / (eig.max() + lam)), theta, 400, args, proximal=lam)
    g_out = jax.grad(ridge_outer)(phi, args)["w"]
    x = np.asarray(args["x_tr"])
    h = x.T @ x / len(x)
    expected = np.linalg.solve(np.eye(5) + (h + mu * np.eye(5)) / lam, np.asarray(g_out))
    np.testing.assert_allclose(grad["w"], expected, rtol=1e-9)


def test_unrolled_proximal_maml_with_many_small_steps_converges_to_implicit(x64):
    theta, args = ridge_problem()
    lam = 0.5
    exact, eig = ridge_hypergradient(theta, args, lam)
    errors = []
    for steps in (50, 200, 800):
        method = MAML(optax.sgd(0.25 / (eig.max() + lam)), steps, proximal=lam)
        grad, _ = jax.jit(lambda t, a: meta_gradient(method, ridge_inner, ridge_outer, t, a))(theta, args)
        errors.append(_rel(grad["w"], exact))
    assert errors[0] > errors[1] > errors[2] and errors[2] < 1e-8, errors


# ------------------------------------------------------------------ MAML: FOMAML, vmap, MLM


def test_fomaml_is_the_outer_gradient_at_the_adapted_parameters(x64):
    theta, args = ridge_problem()
    opt = optax.adam(0.05)
    grad, info = meta_gradient(MAML(opt, 7, first_order=True), ridge_inner, ridge_outer, theta, args)
    phi, state = theta, opt.init(theta)  # an independent Python loop
    for _ in range(7):
        updates, state = opt.update(jax.grad(ridge_inner)(phi, args), state, phi)
        phi = optax.apply_updates(phi, updates)
    np.testing.assert_allclose(grad["w"], jax.grad(ridge_outer)(phi, args)["w"], rtol=1e-12)
    np.testing.assert_allclose(info["outer_loss"], ridge_outer(phi, args), rtol=1e-12)


def test_maml_through_adam_equals_autodiff_of_a_python_loop(x64):
    theta, args = ridge_problem()
    opt = optax.adam(0.05, eps_root=1e-12)

    def reference(th):
        phi, state = th, opt.init(th)
        for _ in range(5):
            updates, state = opt.update(jax.grad(ridge_inner)(phi, args), state, phi)
            phi = optax.apply_updates(phi, updates)
        return ridge_outer(phi, args)

    expected = jax.grad(reference)(theta)
    for adjoint in (Autodiff(), MLM(), MLM(checkpoint_every=2)):
        grad, _ = meta_gradient(MAML(opt, 5, adjoint=adjoint), ridge_inner, ridge_outer, theta, args)
        np.testing.assert_allclose(grad["w"], expected["w"], rtol=1e-11)


def _mri_tasks(size=8, num_tasks=2, dtype=jnp.complex128):
    images = jnp.asarray(data.default_images(8, size), dtype)
    tasks = [data.Task(SingleCoilMRI(masks.radial(jax.random.key(10 + i), (size, size), r)), images[:4],
                       images[4:6], images[6:], noise_std=0.01)
             for i, r in enumerate((0.3, 0.5, 0.4)[:num_tasks])]
    return data.stack_tasks(tasks)


def _loa_meta_model(adjoint=None, num_tasks=2):
    net = LOA(jax.random.key(0), num_phases=2, features=2, layers=2, dtype=jnp.float64)
    return TaskWeighted(net, num_tasks, omega=jnp.linspace(-0.5, 0.5, num_tasks), adjoint=adjoint,
                        dtype=jnp.float64)


def _model_losses(static, reduce=lambda losses: losses):
    """inner/outer losses of ``φ = (θ, ω)`` on ``args = (train batch, val batch)``."""

    def inner(phi, args):
        return reduce(supervised_loss(join_task_weights(phi, static), args[0]))

    def outer(phi, args):
        return reduce(supervised_loss(join_task_weights(phi, static), args[1]))

    return inner, outer


@pytest.fixture(scope="module")
def loa_batches():
    with jax.enable_x64(True):
        tasks = _mri_tasks()
        return sample_batch(tasks, jax.random.key(1), "train", 1), sample_batch(tasks, jax.random.key(2), "val", 1)


@pytest.mark.slow
def test_maml_on_loa_mlm_equals_autodiff(loa_batches, x64):
    """Second order through LOA's unrolled phases inside unrolled inner steps, both adjoints."""
    one_task = jax.tree.map(lambda a: a[1], loa_batches)
    grads = {}
    for name, adjoint in (("autodiff", Autodiff()), ("mlm", MLM())):
        params, static = split_task_weights(_loa_meta_model(adjoint))
        inner, outer = _model_losses(static)
        method = MAML(optax.sgd(0.5 / 64), 2, adjoint=adjoint)  # 8×8 images: the loss sums 64 pixels
        grads[name], info = jax.jit(lambda p, a: meta_gradient(method, inner, outer, p, a))(params, one_task)
    assert _rel(grads["mlm"], grads["autodiff"]) < 1e-12
    omega = np.asarray(grads["mlm"][1].omega)
    assert omega[0] == 0 and omega[1] != 0  # the task's gradient touches only its own ω
    assert float(info["outer_loss"]) > 0


class SmoothNet(eqx.Module):
    """x̂ = A^H y + sigmoid(ω) W₂ tanh(W₁ A^H y) on real (H, W) images: smooth in every parameter."""

    w1: jax.Array
    w2: jax.Array

    def __call__(self, operator, y, omega):
        z = operator.adjoint(y)
        out = self.w2 @ jnp.tanh(self.w1 @ z.ravel())
        return z + jax.nn.sigmoid(omega) * out.reshape(z.shape)


def _inpainting_tasks(num_tasks=3, size=4, seed=0):
    rng = np.random.default_rng(seed)
    images = jnp.asarray(rng.random((num_tasks, 10, size, size)))
    tasks = [data.Task(Inpainting(jnp.asarray(rng.random((size, size)) < 0.6)), images[i, :6], images[i, 6:8],
                       images[i, 8:], noise_std=0.05) for i in range(num_tasks)]
    return data.stack_tasks(tasks)


def _smooth_model(num_tasks=3, size=4, seed=0):
    rng = np.random.default_rng(seed)
    n = size * size
    net = SmoothNet(jnp.asarray(0.5 * rng.standard_normal((n, n))), jnp.asarray(0.3 * rng.standard_normal((n, n))))
    return TaskWeighted(net, num_tasks, omega=jnp.asarray(rng.standard_normal(num_tasks)), dtype=jnp.float64)


@pytest.mark.slow
def test_maml_vmap_over_tasks_equals_a_python_loop(x64):
    tasks = _inpainting_tasks()
    batches = sample_batch(tasks, jax.random.key(0), "train", 3), sample_batch(tasks, jax.random.key(1), "val", 2)
    params, static = split_task_weights(_smooth_model())
    inner, outer = _model_losses(static)
    for method in (MAML(optax.sgd(0.02), 3), MAML(optax.adam(0.1), 2, first_order=True)):
        together, info = jax.jit(lambda p, a: task_mean_gradient(method, inner, outer, p, a))(params, batches)
        loop = [meta_gradient(method, inner, outer, params, jax.tree.map(lambda a: a[i], batches))
                for i in range(3)]
        assert _rel(together, jax.tree.map(lambda *g: sum(g) / 3, *[g for g, _ in loop])) < 1e-12
        np.testing.assert_allclose(info["outer_loss"], [i["outer_loss"] for _, i in loop], rtol=1e-12)
        omega = np.stack([np.asarray(g[1].omega) for g, _ in loop])
        np.testing.assert_array_equal(omega - np.diag(np.diag(omega)), 0)  # each task moves only its own ω


def test_task_groups_weight_each_group_by_its_size(x64):
    theta, args = ridge_problem()
    stack = lambda *trees: jax.tree.map(lambda *a: jnp.stack(a), *trees)  # noqa: E731
    variants = [jax.tree.map(lambda a: a * s, args) for s in (1.0, 0.5, 2.0)]
    method = MAML(optax.sgd(0.1), 3)
    together, _ = task_mean_gradient(method, ridge_inner, ridge_outer, theta, stack(*variants))
    grouped, infos = task_mean_gradient(method, ridge_inner, ridge_outer, theta,
                                        TaskGroups(stack(variants[0]), stack(*variants[1:])))
    assert _rel(grouped, together) < 1e-13 and len(infos) == 2 and infos[1]["outer_loss"].shape == (2,)


# ------------------------------------------------------------------ penalty method


def _penalty_objective(inner, outer, lam, args):
    """L̃ written out independently: L_val + (λ/2)‖∇_θ L_tr‖²."""

    def objective(p):
        g = jax.grad(lambda s: inner((s, p[1]), args))(p[0])
        return outer(p, args) + 0.5 * lam * sum(jnp.sum(a**2) for a in jax.tree.leaves(g))

    return objective


def test_penalty_gradient_equals_central_finite_differences(x64):
    tasks = _inpainting_tasks()
    batches = sample_batch(tasks, jax.random.key(0), "train", 3), sample_batch(tasks, jax.random.key(1), "val", 2)
    params, static = split_task_weights(_smooth_model())
    inner, outer = _model_losses(static, jnp.mean)
    grad, info = jax.jit(lambda p, a: meta_gradient(Penalty(lam=0.3), inner, outer, p, a))(params, batches)
    objective = jax.jit(_penalty_objective(inner, outer, 0.3, batches))
    np.testing.assert_allclose(info["objective"], objective(params), rtol=1e-14)
    rng = np.random.default_rng(3)
    for _ in range(3):
        direction = jax.tree.map(lambda a: jnp.asarray(rng.standard_normal(a.shape)), params)
        shifted = lambda s: jax.tree.map(lambda a, d: a + s * d, params, direction)  # noqa: E731
        h = 1e-5
        fd = (objective(shifted(h)) - objective(shifted(-h))) / (2 * h)
        analytic = sum(jnp.sum(g * d) for g, d in zip(jax.tree.leaves(grad), jax.tree.leaves(direction)))
        np.testing.assert_allclose(analytic, fd, rtol=1e-7)
    assert float(info["penalty"]) > 0 and float(info["grad_sq_omega"]) > 0


@pytest.mark.slow
def test_penalty_gradient_on_loa_mlm_equals_autodiff(loa_batches, x64):
    grads = []
    for adjoint in (Autodiff(), MLM()):
        params, static = split_task_weights(_loa_meta_model(adjoint))
        inner, outer = _model_losses(static, jnp.mean)
        grads.append(jax.jit(lambda p, a: meta_gradient(Penalty(lam=0.3), inner, outer, p, a))(params, loa_batches))
    assert _rel(grads[1][0], grads[0][0]) < 1e-12
    assert float(grads[0][1]["penalty"]) > 0


# ------------------------------------------------------------------ task weights


def test_task_weights_concentrate_on_the_diagonal_when_validation_copies_training(x64):
    rng = np.random.default_rng(4)
    n, d = 3, 4
    xs = jnp.asarray(rng.standard_normal((n, 16, d)))
    targets = jnp.asarray(3 * rng.standard_normal((n, d)))
    train = {"x": xs, "y": jnp.einsum("nsd,nd->ns", xs, targets)}

    def loss(phi, task):
        return jnp.mean((task["x"] @ phi - task["y"]) ** 2)

    method = TaskWeights(optax.sgd(0.1), 4)
    params = TaskWeightsParams.uniform(jnp.zeros(d), n, n)
    opt = optax.adam(0.3)
    state = init(method, params, opt)
    step = jax.jit(lambda p, s: meta_step(method, loss, loss, p, s, (train, train), optimizer=opt))
    first = None
    for _ in range(60):
        params, state, info = step(params, state)
        first = info["outer_loss"] if first is None else first
    weights = np.asarray(params.weights)
    assert np.all(np.diag(weights) > 0.9), weights
    assert np.all(info["outer_loss"] < first)
    np.testing.assert_allclose(params.init, 0)  # θ₀ is not learned unless asked


def test_task_weights_gradient_mlm_equals_autodiff_and_finite_differences(x64):
    rng = np.random.default_rng(5)
    train = {"x": jnp.asarray(rng.standard_normal((3, 8, 2))), "y": jnp.asarray(rng.standard_normal((3, 8)))}
    val = jax.tree.map(lambda a: a[:2] * 1.1, train)

    def loss(phi, task):
        return jnp.mean(jnp.tanh(task["x"] @ phi) - task["y"]) ** 2 + 0.1 * jnp.sum(phi**4)

    params = TaskWeightsParams(jnp.asarray(rng.standard_normal((3, 2))), jnp.asarray(rng.standard_normal(2)))
    grads = [meta_gradient(TaskWeights(optax.sgd(0.2), 3, adjoint=a, learn_init=True), loss, loss, params,
                           (train, val))[0] for a in (Autodiff(), MLM())]
    assert _rel(grads[1], grads[0]) < 1e-12

    def objective(alpha):
        def column(a, v):
            phi, _ = adapt(lambda p, w: jnp.dot(w, jax.vmap(loss, (None, 0))(p, train)), optax.sgd(0.2),
                           params.init, 3, jax.nn.softmax(a))
            return loss(phi, v)
        return sum(column(alpha[:, j], jax.tree.map(lambda x: x[j], val)) for j in range(2))

    h = 1e-6
    e = jnp.zeros((3, 2)).at[1, 0].set(1.0)
    fd = (objective(params.alpha + h * e) - objective(params.alpha - h * e)) / (2 * h)
    np.testing.assert_allclose(grads[0].alpha[1, 0], fd, rtol=1e-6)


# ------------------------------------------------------------------ bad input


def test_bad_inputs_raise_naming_the_argument(x64):
    theta, args = ridge_problem()
    with pytest.raises(ValueError, match="lam"):
        Implicit(lam=0.0, inner_optimizer=optax.sgd(0.1), inner_steps=3)
    with pytest.raises(ValueError, match="inner_steps"):
        MAML(optax.sgd(0.1), 0)
    with pytest.raises(TypeError, match="inner_optimizer"):
        MAML(lambda g: g, 3)
    with pytest.raises(TypeError, match="inner_optimizer"):
        Implicit(lam=1.0, inner_optimizer="adam", inner_steps=3)
    with pytest.raises(ValueError, match="delta_tol"):
        Penalty(delta=1e-3, delta_tol=1e-3)
    with pytest.raises(ValueError, match="lam"):
        Penalty(lam=-1.0)
    with pytest.raises(TypeError, match="method"):
        meta_gradient(optax.sgd(0.1), ridge_inner, ridge_outer, theta, args)
    with pytest.raises(TypeError, match="theta"):
        meta_gradient(MAML(optax.sgd(0.1), 2), ridge_inner, ridge_outer, {"w": jnp.arange(3)}, args)
    with pytest.raises(Exception, match="inner_loss"):
        meta_gradient(MAML(optax.sgd(0.1), 2), lambda p, a: jnp.nan * ridge_inner(p, a), ridge_outer, theta, args)
    with pytest.raises(Exception, match="outer_loss"):
        jax.jit(lambda t: meta_gradient(Implicit(lam=1.0, inner_optimizer=optax.sgd(0.1), inner_steps=2),
                                        ridge_inner, lambda p, a: jnp.log(-ridge_outer(p, a)), t, args))(theta)
    tw = TaskWeights(optax.sgd(0.1), 2)
    stacked = jax.tree.map(lambda a: jnp.stack([a, a, a]), args)
    with pytest.raises(ValueError, match="alpha"):
        meta_gradient(tw, ridge_inner, ridge_outer, TaskWeightsParams.uniform(theta, 2, 3), (stacked, stacked))
    ragged = {"a": jnp.zeros((3, 2)), "b": jnp.zeros((2, 2))}
    with pytest.raises(ValueError, match="leading"):
        task_mean_gradient(MAML(optax.sgd(0.1), 2), ridge_inner, ridge_outer, theta, ragged)
    with pytest.raises(TypeError, match="key"):
        meta_gradient(MAML(optax.sgd(0.1), 2), ridge_inner, ridge_outer, theta, args, key=3)


# ------------------------------------------------------------------ the linear Gaussian case (Meta-Prior §3)


class LinearNet(eqx.Module):
    """x̂ = W y on flattened real (H, W) images."""

    w: jax.Array

    def __call__(self, operator, y):
        return (self.w @ y.ravel()).reshape(y.shape)


def _gaussian_tasks(masks_, sigma, num_train, num_val, size=4, seed=0):
    """Images x ~ N(0, Σ) (squared-exponential covariance on the pixel grid), one inpainting task per mask."""
    grid = np.stack(np.meshgrid(np.arange(size), np.arange(size), indexing="ij"), -1).reshape(-1, 2)
    cov = np.exp(-np.sum((grid[:, None] - grid[None]) ** 2, -1) / 4.0) + 0.05 * np.eye(size * size)
    rng = np.random.default_rng(seed)
    chol = np.linalg.cholesky(cov)
    tasks = []
    for m in masks_:
        x = (rng.standard_normal((num_train + num_val, size * size)) @ chol.T).reshape(-1, size, size)
        tasks.append(data.Task(Inpainting(jnp.asarray(m)), jnp.asarray(x[:num_train]),
                               jnp.asarray(x[num_train:]), jnp.asarray(x[num_train:][:1]), noise_std=sigma))
    return data.stack_tasks(tasks), cov


def _bayes(cov, mask, sigma):
    """E[x | y] = Σ Pᵀ (P Σ Pᵀ + σ² I)⁻¹ y_P: the (n, n) matrix acting on zero-filled y."""
    p = np.eye(len(cov))[np.ravel(mask)]
    return cov @ p.T @ np.linalg.solve(p @ cov @ p.T + sigma**2 * np.eye(len(p)), p)


@pytest.mark.slow
def test_linear_gaussian_meta_learning_approaches_bayes_and_finetuning_keeps_the_kernel(x64):
    size, sigma, lam = 4, 0.1, 0.16  # the loss sums 16 pixels: λ and the step are scaled by 16
    rng = np.random.default_rng(7)
    task_masks = [rng.random((size, size)) < 0.55 for _ in range(3)]
    tasks, cov = _gaussian_tasks(task_masks, sigma, num_train=4000, num_val=1000)
    args = (sample_batch(tasks, jax.random.key(0), "train", 4000), sample_batch(tasks, jax.random.key(1), "val", 1000))
    model = Shared(LinearNet(jnp.zeros((size * size, size * size))))
    inner = lambda phi, a: supervised_loss(phi, a[0])  # noqa: E731
    outer = lambda phi, a: supervised_loss(phi, a[1])  # noqa: E731
    method = Implicit(lam=lam, inner_optimizer=optax.sgd(1.5 / 16), inner_steps=400, cg_tol=1e-10, cg_max_iters=100)
    opt = optax.adam(0.05)
    state = init(method, model, opt)
    step = jax.jit(lambda p, s: meta_step(method, inner, outer, p, s, args, optimizer=opt))
    for _ in range(60):
        model, state, info = step(model, state)
    assert np.all(np.asarray(info["status"]) == CONVERGED)

    def adapted_error(start):
        errors = []
        for i, m in enumerate(task_masks):
            task_args = jax.tree.map(lambda a: a[i], args)
            w = adapt(inner, method.inner_optimizer, start, 400, task_args, proximal=lam)[0].net.w
            bayes = _bayes(cov, m, sigma)
            observed = m.ravel()  # W acts on zero-filled y: only the observed columns matter
            errors.append(np.linalg.norm((np.asarray(w) - bayes)[:, observed]) / np.linalg.norm(bayes[:, observed]))
        return max(errors)

    error_meta = adapted_error(model)
    error_scratch = adapted_error(Shared(LinearNet(jnp.zeros_like(model.net.w))))
    print(f"relative error to the Bayes estimator after adaptation: meta-learned {error_meta:.4f}, "
          f"from zero {error_scratch:.4f}")
    assert error_meta < 0.15 and error_meta < 0.5 * error_scratch

    # (least squares on the same samples, no proximal pull, is 0.03–0.04 from Bayes: the sampling floor)
    # Theorem 3.1: measurement-only fine-tuning on a new operator never changes the weights' Ker(A) component.
    new_mask = rng.random((size, size)) < 0.5
    new_tasks, _ = _gaussian_tasks([new_mask], sigma, num_train=200, num_val=10, seed=1)
    new_batch = jax.tree.map(lambda a: a[0], sample_batch(new_tasks, jax.random.key(2), "train", 200))
    finetuned = adapt(lambda phi, b: measurement_loss(phi, b), optax.adam(0.01), model, 100, new_batch)[0].net.w
    kernel = ~new_mask.ravel()  # Ker(A) = the unobserved pixels: rows of W that map into it
    np.testing.assert_allclose(finetuned[kernel], model.net.w[kernel], atol=1e-6, rtol=0)
    assert float(jnp.max(jnp.abs(finetuned[~kernel] - model.net.w[~kernel]))) > 1e-3


# ------------------------------------------------------------------ interop: flax.nnx modules


@pytest.mark.slow
def test_maml_and_implicit_on_a_flax_nnx_module_match_equinox(x64):
    nnx = pytest.importorskip("flax.nnx")

    class MLP(nnx.Module):
        def __init__(self, rngs):
            self.hidden = nnx.Linear(3, 8, rngs=rngs, param_dtype=jnp.float64)
            self.out = nnx.Linear(8, 1, rngs=rngs, param_dtype=jnp.float64)

        def __call__(self, x):
            return self.out(jnp.tanh(self.hidden(x)))[:, 0]

    graphdef, state = nnx.split(MLP(nnx.Rngs(0)))
    weights = {"w1": state["hidden"]["kernel"].get_value(), "b1": state["hidden"]["bias"].get_value(),
               "w2": state["out"]["kernel"].get_value(), "b2": state["out"]["bias"].get_value()}
    rng = np.random.default_rng(8)
    x = jnp.asarray(rng.standard_normal((20, 3)))
    args = {"x": x, "y": jnp.sin(x @ jnp.array([1.0, -2.0, 0.5]))}

    def nnx_loss(phi, a):
        return jnp.mean((nnx.merge(graphdef, phi)(a["x"]) - a["y"]) ** 2)

    def eqx_loss(phi, a):
        return jnp.mean(((jnp.tanh(a["x"] @ phi["w1"] + phi["b1"]) @ phi["w2"] + phi["b2"])[:, 0] - a["y"]) ** 2)

    for method in (MAML(optax.sgd(0.1), 4), MAML(optax.sgd(0.1), 4, first_order=True),
                   Implicit(lam=2.0, inner_optimizer=optax.sgd(0.1), inner_steps=20, cg_tol=1e-12)):
        g_nnx, _ = jax.jit(lambda s: meta_gradient(method, nnx_loss, nnx_loss, s, args))(state)
        g_eqx, _ = meta_gradient(method, eqx_loss, eqx_loss, weights, args)
        np.testing.assert_allclose(g_nnx["hidden"]["kernel"].get_value(), g_eqx["w1"], rtol=1e-10)
        np.testing.assert_allclose(g_nnx["out"]["bias"].get_value(), g_eqx["b2"], rtol=1e-10)


@pytest.mark.slow
def test_implicit_on_loa_through_the_mlm_adjoint_equals_autodiff(loa_batches, x64):
    """Reverse-over-reverse Hessian-vector products work through the MLM custom VJP."""
    one_task = jax.tree.map(lambda a: a[0], loa_batches)
    results = []
    for adjoint in (Autodiff(), MLM()):
        params, static = split_task_weights(_loa_meta_model(adjoint))
        inner, outer = _model_losses(static)
        method = Implicit(lam=64.0, inner_optimizer=optax.sgd(0.5 / 64), inner_steps=2, cg_tol=1e-12, cg_max_iters=4)
        results.append(jax.jit(lambda p, a: meta_gradient(method, inner, outer, p, a))(params, one_task))
    assert _rel(results[1][0], results[0][0]) < 1e-12
    assert int(results[0][1]["iterations"]) == 4 and float(results[0][1]["residual"]) < 1


def test_solver_states_round_trip_through_serialisation(tmp_path, x64):
    theta, args = ridge_problem()
    params = (theta, {"s": jnp.array(0.3)})
    method = Penalty(theta_steps=2)
    opt = optax.adam(1e-3)
    state = init(method, params, opt)
    inner = lambda p, a: ridge_inner(p[0], a) * (1 + p[1]["s"] ** 2)  # noqa: E731
    for _ in range(3):
        params, state, _ = meta_step(method, inner, inner, params, state, args, optimizer=opt)
    path = tmp_path / "state.eqx"
    eqx.tree_serialise_leaves(path, (params, state))
    like = (jax.tree.map(jnp.zeros_like, params), init(method, params, opt))
    restored = eqx.tree_deserialise_leaves(path, like)
    for a, b in zip(jax.tree.leaves((params, state)), jax.tree.leaves(restored)):
        np.testing.assert_array_equal(a, b)
    assert int(restored[1].rounds) == 1 and int(restored[1].step) == 3  # θ, θ, ω: one round


def test_losses_per_task_against_numpy_and_batches_deterministic_per_key(x64):
    tasks = _inpainting_tasks()
    batch = sample_batch(tasks, jax.random.key(0), "train", 3)
    again = sample_batch(tasks, jax.random.key(0), "train", 3)
    other = sample_batch(tasks, jax.random.key(1), "train", 3)
    np.testing.assert_array_equal(batch.y, again.y)
    assert not np.array_equal(batch.y, other.y)
    model = TaskWeighted(SmoothNet(jnp.zeros((16, 16)), jnp.zeros((16, 16))), 3, dtype=jnp.float64)  # x̂ = A^H y
    mask = np.asarray(tasks.operator.mask)[:, None]  # (N, 1, H, W)
    x, y = np.asarray(batch.x), np.asarray(batch.y)
    expected = np.mean(np.sum((mask * y - x) ** 2, axis=(2, 3)), axis=1)  # ‖·‖² per image, mean over the batch
    np.testing.assert_allclose(supervised_loss(model, batch), expected, rtol=1e-13)
    np.testing.assert_allclose(measurement_loss(model, batch), 0, atol=1e-30)  # A A^H y = y for a mask
    np.testing.assert_allclose(group_losses(supervised_loss, model, (batch, batch)),
                               np.tile(expected, 2), rtol=1e-13)


def test_maml_through_adam_at_a_zero_gradient_is_adams_exact_derivative(x64):
    """A zero inner-gradient component: Adam's update ≈ sign(g) has slope 1/(√eps_root + eps) there. With a large
    eps the meta-gradient is finite and equals central differences; with optax's default eps it explodes
    (exactly, not by a bug: docs/bilevel.md)."""
    theta, a = jnp.array([1.0, 0.0]), jnp.array(0.5)
    inner = lambda p, a: jnp.sum((p[:1] - a) ** 2) + 3.0 * p[1] ** 2  # noqa: E731 (∂/∂p₁ = 6 p₁ = 0 at θ)
    outer = lambda p, a: jnp.sum((p - a) ** 2)  # noqa: E731
    smooth = MAML(optax.adam(0.1, eps=1e-3, eps_root=1e-12), 2)
    grad, _ = meta_gradient(smooth, inner, outer, theta, a)
    f = lambda t: outer(smooth.adapted(inner, t, a)[0], a)  # noqa: E731
    h = jnp.array([0.0, 1e-9])
    np.testing.assert_allclose(grad[1], (f(theta + h) - f(theta - h)) / 2e-9, rtol=5e-3)
    sharp, _ = meta_gradient(MAML(optax.adam(0.1, eps_root=1e-12), 2), inner, outer, theta, a)
    assert abs(float(sharp[1])) > 1e3 * abs(float(grad[1]))
