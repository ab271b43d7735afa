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


# ----------------------------------------------------------------------------------------------- fastMRI line masks

def _fastmri_centre(width, center_fraction):
    """fastMRI's definition, written out: round(W·cf) columns from (W − n + 1) // 2."""
    n = round(width * center_fraction)
    pad = (width - n + 1) // 2
    return np.arange(pad, pad + n)


@pytest.mark.parametrize("acceleration, center_fraction", [(4, 0.08), (8, 0.04)])
def test_fastmri_random_centre_and_expected_acceleration(acceleration, center_fraction):
    width = 320  # a fastMRI knee width
    keys = jax.random.split(jax.random.key(5), 300)
    columns = np.stack([np.asarray(masks.fastmri_random(k, (16, width), acceleration, center_fraction))[0]
                        for k in keys])
    centre = _fastmri_centre(width, center_fraction)
    assert columns[:, centre].all()
    n = len(centre)
    p = (width / acceleration - n) / (width - n)
    outer = np.delete(columns, centre, axis=1)
    # each outer column is an independent Bernoulli(p): the mean over 300 masks is within 4 standard errors
    assert abs(outer.mean() - p) < 4 * np.sqrt(p * (1 - p) / outer.size)
    achieved = width / columns.sum(axis=1)
    assert abs(np.mean(columns.sum(axis=1)) - width / acceleration) < 1.0, achieved.mean()
    assert len({c.tobytes() for c in columns}) == len(columns)
    np.testing.assert_array_equal(masks.fastmri_random(keys[0], (16, width), acceleration, center_fraction)[0],
                                  columns[0])
    mask = np.asarray(masks.fastmri_random(keys[0], (16, width), acceleration, center_fraction))
    assert (mask == mask[:1]).all()


@pytest.mark.parametrize("acceleration, center_fraction", [(4, 0.08), (8, 0.04)])
def test_fastmri_equispaced_centre_spacing_and_acceleration(acceleration, center_fraction):
    width = 368  # a fastMRI brain width
    centre = _fastmri_centre(width, center_fraction)
    n = len(centre)
    spacing = acceleration * (n - width) / (n * acceleration - width)  # fastMRI's adjusted acceleration
    offsets = set()
    for k in jax.random.split(jax.random.key(6), 12):
        columns = np.asarray(masks.fastmri_equispaced(k, (8, width), acceleration, center_fraction))[0]
        assert columns[centre].all()
        outer = np.flatnonzero(columns & ~np.isin(np.arange(width), centre))
        first = np.flatnonzero(columns)[0]
        offsets.add(int(first))
        expected = np.round(np.arange(first, width - 1, spacing)).astype(int)  # the lattice from the offset
        assert set(outer) <= set(expected)
        assert abs(width / columns.sum() - acceleration) / acceleration < 0.05
    assert len(offsets) > 1 and max(offsets) < round(spacing)


# ----------------------------------------------------------------------------------------------- Poisson disc

def _poisson_radius(shape, center_fraction, slope, min_distance=1.0):
    h, w = shape
    ch, cw = round(center_fraction * h), round(center_fraction * w)
    y = np.maximum(np.abs(np.arange(h) - h / 2) - ch / 2, 0)
    x = np.maximum(np.abs(np.arange(w) - w / 2) - cw / 2, 0)
    return np.hypot((y / y.max())[:, None], (x / x.max())[None, :])


@pytest.mark.parametrize("acceleration", [4, 8])
def test_poisson_disc_acceleration_calibration_and_minimum_distance(acceleration):
    shape = (96, 80)
    key = jax.random.key(11)
    mask = np.asarray(masks.poisson_disc(key, shape, acceleration, center_fraction=0.1))
    assert abs(mask.size / mask.sum() - acceleration) / acceleration <= 0.05
    ch, cw = round(0.1 * 96), round(0.1 * 80)
    assert mask[48 - ch // 2:48 + ch // 2, 40 - cw // 2:40 + cw // 2].all(), "calibration block fully sampled"
    r = _poisson_radius(shape, 0.1, 0)
    assert not mask[r >= 1].any(), "corners are cropped"
    # Minimum distance: outside the calibration block no two samples are closer than 1 (the radius at r = 0,
    # the smallest), and the spacing grows outwards: the mean nearest-neighbour distance of the outer half exceeds
    # that of the inner half.
    block = np.zeros(shape, bool)
    block[48 - ch // 2:48 + ch // 2, 40 - cw // 2:40 + cw // 2] = True
    points = np.argwhere(mask & ~block).astype(float)
    d = np.hypot(*(points[:, None, :] - points[None, :, :]).transpose(2, 0, 1))
    np.fill_diagonal(d, np.inf)
    assert d.min() >= 1.0
    nearest = d.min(axis=1)
    radius = r[mask & ~block]
    assert nearest[radius > 0.5].mean() > nearest[radius < 0.5].mean()
    np.testing.assert_array_equal(masks.poisson_disc(key, shape, acceleration, center_fraction=0.1), mask)
    assert not np.array_equal(masks.poisson_disc(jax.random.key(12), shape, acceleration, center_fraction=0.1), mask)


def test_poisson_disc_keeps_the_growing_radius_between_every_pair():
    """The defining rule (sigpy's): no sample lies within R(r) = min_distance · (1 + s r) of an earlier one.
    Checked pairwise with the smaller of the two radii, for the slope the bisection settled on."""
    shape, acceleration, md = (64, 64), 10, 1.5
    mask = np.asarray(masks.poisson_disc(jax.random.key(3), shape, acceleration, center_fraction=0.0,
                                         min_distance=md))
    points = np.argwhere(mask).astype(float)
    r = _poisson_radius(shape, 0.0, 0)[mask]
    d = np.hypot(*(points[:, None, :] - points[None, :, :]).transpose(2, 0, 1))
    np.fill_diagonal(d, np.inf)
    assert d.min() >= md  # the radius is at least min_distance everywhere
    # the achieved spacing at the edge exceeds the one at the centre by the bisection's slope: R grows with r
    assert np.median(d.min(1)[r > 0.7]) > np.median(d.min(1)[r < 0.3])


# ----------------------------------------------------------------------------------------------- thinning, families

def test_thin_drops_exactly_the_requested_share_outside_the_centre():
    base = np.asarray(masks.radial(KEYS[0], (64, 64), 0.3))
    thinned = np.asarray(masks.thin(KEYS[1], base, 0.4))
    centre = np.zeros((64, 64), bool)
    centre[32 - 2:32 + 3, 32 - 2:32 + 3] = True  # round(0.08 · 64) = 5
    outer = base & ~centre
    assert not (thinned & ~base).any() and (thinned[centre] == base[centre]).all()
    assert (outer & ~thinned).sum() == round(0.4 * outer.sum())
    np.testing.assert_array_equal(masks.thin(KEYS[1], base, 0.4), thinned)


def test_is_line_mask():
    assert bool(masks.is_line_mask(masks.cartesian(KEYS[0], (32, 40), 0.3)))
    assert bool(masks.is_line_mask(masks.cartesian(KEYS[0], (32, 40), 0.3).T))
    assert not bool(masks.is_line_mask(masks.radial(KEYS[0], (32, 40), 0.3)))
    assert bool(jax.jit(masks.is_line_mask)(masks.equispaced((16, 16), 0.5)))


@pytest.mark.parametrize("family", masks.FAMILIES)
def test_every_family_reaches_its_ratio(family):
    ratio = 0.25 if family not in ("pseudo_radial", "thinned_pseudo_radial") else 0.2
    mask = np.asarray(masks.family_mask(KEYS[0], family, (256, 256), ratio))
    assert mask.shape == (256, 256) and mask.dtype == bool and mask[128, 128]
    expected = ratio * 0.6 + 0.08**2 * 0.4 if family == "thinned_pseudo_radial" else ratio
    tolerance = 0.03 if family == "fastmri_random" else 0.01 if family.startswith("thinned") else 0.005
    assert abs(mask.mean() - expected) <= tolerance, (family, mask.mean())


def test_mask_distribution_samples_each_tasks_bank_under_jit():
    tasks = [("radial", 0.25), ("fastmri_equispaced", 0.25), ("equispaced", 0.5)]
    dist = masks.MaskDistribution(jax.random.key(0), (32, 32), tasks, bank=3)
    assert dist.masks.shape == (3, 3, 32, 32)
    assert len({np.asarray(m).tobytes() for m in dist.masks[0]}) == 3  # random families: distinct masks
    assert len({np.asarray(m).tobytes() for m in dist.masks[2]}) == 1  # deterministic family: one mask
    drawn = jax.jit(dist.sample)(jax.random.key(4))
    for i in range(3):
        assert any(np.array_equal(drawn[i], m) for m in dist.masks[i])
    np.testing.assert_array_equal(dist.sample(jax.random.key(4)), drawn)
    seen = {np.asarray(dist.sample(k)[0]).tobytes() for k in jax.random.split(jax.random.key(1), 30)}
    assert len(seen) == 3


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: masks.fastmri_random(KEYS[0], SHAPE, 0.5), r"`acceleration` must be a real number ≥ 1"),
        (lambda: masks.fastmri_random(KEYS[0], SHAPE, 4, 0.3), r"`center_fraction` = 0.3 gives"),
        (lambda: masks.fastmri_equispaced(KEYS[0], SHAPE, 4, 0.0), r"`center_fraction` must be a real number"),
        (lambda: masks.poisson_disc(KEYS[0], SHAPE, 40, center_fraction=0.3), r"calibration block alone"),
        (lambda: masks.poisson_disc(KEYS[0], SHAPE, 4, min_distance=0), r"`min_distance` must be a positive"),
        (lambda: masks.thin(KEYS[0], np.ones((8, 8)), 1.0), r"`drop` must be a real number in \[0, 1\)"),
        (lambda: masks.family_mask(KEYS[0], "spiral", SHAPE, 0.2), r"`family` must be one of"),
        (lambda: masks.family_mask(KEYS[0], "pseudo_radial", SHAPE, 0.2), r"embedded pseudo-radial masks are 256"),
        (lambda: masks.MaskDistribution(KEYS[0], SHAPE, [], 2), r"at least one \(family, ratio\)"),
    ],
)
def test_bad_new_mask_arguments_raise(call, message):
    with pytest.raises(ValueError, match=message):
        call()
