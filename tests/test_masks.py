import h5py
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from metajax import masks

SHAPE = (128, 96)
RATIOS = (0.1, 0.15, 0.25, 0.4)
KEYS = jax.random.split(jax.random.key(2024), 20)


def _check_family(make, ratio, tolerance):
    generated = [np.asarray(make(k)) for k in KEYS]
    for mask in generated:
        assert mask.shape == SHAPE and mask.dtype == bool
        assert abs(mask.mean() - ratio) <= tolerance
        assert mask[SHAPE[0] // 2, SHAPE[1] // 2], "the k-space centre must be sampled"
    np.testing.assert_array_equal(make(KEYS[0]), generated[0])  # same key, same mask
    distinct = {m.tobytes() for m in generated}
    assert len(distinct) == len(generated), "different keys must give different masks"
    return generated


@pytest.mark.parametrize("ratio", RATIOS)
def test_radial_ratio_determinism_and_centre(ratio):
    generated = _check_family(lambda k: masks.radial(k, SHAPE, ratio), ratio, 0.005)
    # Spokes pass through the centre: the sampled density falls with radius.
    r = np.hypot(*np.meshgrid(np.arange(SHAPE[0]) - 64, np.arange(SHAPE[1]) - 48, indexing="ij"))
    assert generated[0][r < 8].mean() > 2 * generated[0][r > 30].mean()


@pytest.mark.parametrize("ratio", RATIOS)
def test_cartesian_lines_ratio_determinism_and_centre(ratio):
    generated = _check_family(lambda k: masks.cartesian(k, SHAPE, ratio), ratio, 0.5 / SHAPE[1])
    for mask in generated:
        assert (mask == mask[:1]).all(), "Cartesian masks sample whole columns"
        center = round(0.08 * SHAPE[1])
        start = SHAPE[1] // 2 - center // 2
        assert mask[0, start : start + center].all()


@pytest.mark.parametrize("ratio", RATIOS)
def test_variable_density_ratio_determinism_and_centre(ratio):
    generated = _check_family(lambda k: masks.variable_density(k, SHAPE, ratio), ratio, 0.005)
    stacked = np.mean(generated, axis=0)
    assert stacked[54:74, 38:58].mean() > stacked[:20, :20].mean()  # denser at the centre


@pytest.mark.parametrize("ratio", RATIOS + (1.0,))
def test_equispaced_ratio_centre_and_even_gaps(ratio):
    mask = np.asarray(masks.equispaced(SHAPE, ratio))
    assert abs(mask.mean() - ratio) <= 0.5 / SHAPE[1]
    assert (mask == mask[:1]).all() and mask[0, SHAPE[1] // 2]
    np.testing.assert_array_equal(masks.equispaced(SHAPE, ratio), mask)
    center = round(0.08 * SHAPE[1])
    outer = np.flatnonzero(~np.isin(np.arange(SHAPE[1]), np.arange(48 - center // 2, 48 - center // 2 + center)))
    picked = np.flatnonzero(np.isin(outer, np.flatnonzero(mask[0])))
    if len(picked) > 1:
        assert np.ptp(np.diff(picked)) <= 1, "outer lines are evenly spread"


@pytest.mark.parametrize("ratio", [0.15, 0.25, 0.35, 1.0])
def test_any_ratio_is_reached_on_small_and_odd_grids(ratio):
    for shape in [(33, 47), (64, 64)]:
        for make in (masks.radial, masks.variable_density):
            assert abs(float(make(jax.random.key(0), shape, ratio).mean()) - ratio) <= 0.5 / (shape[0] * shape[1])


def test_masks_are_jit_and_vmap_compatible():
    batched = jax.vmap(lambda k: masks.radial(k, (32, 32), 0.2))(KEYS[:3])
    for k, m in zip(KEYS[:3], batched):
        np.testing.assert_array_equal(m, masks.radial(k, (32, 32), 0.2))
    jitted = jax.jit(masks.cartesian, static_argnums=(1, 2))
    np.testing.assert_array_equal(jitted(KEYS[0], (32, 32), 0.25), masks.cartesian(KEYS[0], (32, 32), 0.25))
    raw_key = jax.random.PRNGKey(0)  # legacy uint32 keys are accepted as well
    assert masks.variable_density(raw_key, (16, 16), 0.5).sum() == 128


def test_sampling_ratio():
    assert float(masks.sampling_ratio(jnp.eye(4, dtype=bool))) == 0.25


def test_mask_file_round_trip_and_errors(tmp_path):
    path = tmp_path / "masks.h5"
    radial = np.asarray(masks.radial(KEYS[0], (32, 32), 0.3)).astype(np.uint8)
    with h5py.File(path, "w") as f:
        f.create_dataset("radial_30", data=radial).attrs["sampling_ratio"] = radial.mean()
        f.create_dataset("bad", data=np.full((4, 4), 2, np.uint8))
    with pytest.raises(ValueError, match=r"masks.h5:bad.*must be binary.*\[2\]"):
        masks.load_masks(path)
    with h5py.File(path, "a") as f:
        del f["bad"]
    loaded = masks.load_mask(path, "radial_30")
    assert loaded.dtype == bool
    np.testing.assert_array_equal(loaded, radial.astype(bool))
    with pytest.raises(KeyError, match=r"no mask 'radial_99'.*available: \['radial_30'\]"):
        masks.load_mask(path, "radial_99")
    with pytest.raises(FileNotFoundError, match=r"`path`.*nowhere.h5"):
        masks.load_masks(tmp_path / "nowhere.h5")


def test_shared_radial_masks(shared_file):
    path = shared_file("radial_masks.h5")
    loaded = masks.load_masks(path)
    assert sorted(loaded) == ["radial_10", "radial_20", "radial_30", "radial_40", "radial_50"]
    with h5py.File(path) as f:
        for name, mask in loaded.items():
            assert mask.shape == (256, 256) and mask[128, 128]
            assert abs(mask.mean() - f[name].attrs["sampling_ratio"]) < 0.005
            assert abs(mask.mean() - int(name[-2:]) / 100) < 0.005


@pytest.mark.parametrize(
    "call, error, message",
    [
        (lambda: masks.radial(KEYS[0], SHAPE, 0.0), ValueError, r"`ratio` must lie in \(0, 1\]; got 0.0"),
        (lambda: masks.radial(KEYS[0], SHAPE, 1.5), ValueError, r"`ratio` must lie in \(0, 1\]; got 1.5"),
        (lambda: masks.cartesian(KEYS[0], SHAPE, -0.1), ValueError, r"`ratio` must lie in \(0, 1\]"),
        (lambda: masks.equispaced(SHAPE, True), TypeError, r"`ratio` must be a real number"),
        (lambda: masks.variable_density(KEYS[0], SHAPE, "0.2"), TypeError, r"`ratio` must be a real number"),
        (lambda: masks.radial(KEYS[0], (0, 5), 0.2), ValueError, r"`shape` must be a pair of positive integers"),
        (lambda: masks.radial(KEYS[0], (5.5, 5), 0.2), ValueError, r"`shape` must be a pair"),
        (lambda: masks.radial(0, SHAPE, 0.2), TypeError, r"`key` must be a jax.random key"),
        (lambda: masks.cartesian(KEYS, SHAPE, 0.2), ValueError, r"`key` must be a single PRNG key"),
        (lambda: masks.cartesian(KEYS[0], SHAPE, 0.04), ValueError, r"fewer than the 8 centre lines"),
        (lambda: masks.equispaced(SHAPE, 0.3, center_fraction=1.2), ValueError, r"`center_fraction` must lie"),
        (lambda: masks.variable_density(KEYS[0], SHAPE, 0.3, sigma=0), ValueError, r"`sigma` must be a positive"),
    ],
)
def test_bad_mask_arguments_raise(call, error, message):
    with pytest.raises(error, match=message):
        call()
