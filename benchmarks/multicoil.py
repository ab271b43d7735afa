"""Multi-coil pieces on one 256² 8-coil slice: time per slice, and agreement with sigpy (the reference users compare).

    python benchmarks/multicoil.py            # writes results/multicoil.{json,md}
    python benchmarks/multicoil.py --no-sigpy # timings only

One simulated acquisition (chest slice 90, 8 coils, SNR 30; metajax.data.simulate_multicoil), fastMRI
equispaced 1-D mask 4× (8 % centre). Rows: ESPIRiT (24 × 24 calibration, kernel 6, sigpy's defaults; from the
fully sampled centre), the ACS estimate, SENSE (30 CG iterations), TV (300 PDHG iterations), ℓ1-wavelet
(200 FISTA iterations, db4, 4 levels), the shipped multi-coil model (if present), and the same in sigpy where it
has them. Agreement: ESPIRiT's maps against sigpy's EspiritCalib up to a per-pixel phase (relative error) and
against the true maps (mean projection error over the foreground); SENSE and ℓ1-wavelet (Haar, where both
transforms coincide) against sigpy's SenseRecon / L1WaveletRecon on the same objective and iterations, in float64.
Times: jit-compiled, median of ``--repeats`` after a warm-up, float32.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from common import time_call, write
from metajax import data, masks, pretrained
from metajax.data import simulate_multicoil
from metajax.models import l1_wavelet_reconstruction, sense_reconstruction, tv_reconstruction
from metajax.operators import MultiCoilMRI, acs_maps, espirit, rss
from metajax.operators.wavelet import max_levels


def _problem(dtype):
    image = jnp.asarray(np.asarray(data.chest_images()[90], dtype))
    sim = simulate_multicoil(jax.random.key(0), image, 8, 30.0)
    mask = masks.fastmri_equispaced(jax.random.key(0), (256, 256), 4.0, 0.08)
    return sim, mask, jnp.where(mask, sim.kspace, 0)


def _median(fn, repeats):
    fn()
    times = []
    for _ in range(repeats):
        tic = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - tic)
    return float(np.median(times))


def agreement() -> dict:
    import sigpy.mri as mr

    out = {}
    with jax.enable_x64(True):
        sim, mask, y = _problem(np.float64)
        kspace = np.asarray(sim.kspace)
        mine = np.asarray(espirit(sim.kspace))
        ref = np.asarray(mr.app.EspiritCalib(kspace, show_pbar=False).run())
        phase = np.exp(1j * np.angle(np.sum(np.conj(ref) * mine, 0)))
        out["espirit_vs_sigpy"] = float(np.linalg.norm(mine - ref * phase) / np.linalg.norm(ref))
        true = np.asarray(sim.maps / rss(sim.maps))
        fg = np.asarray(sim.target) > 0.1 * float(sim.target.max())
        inner = np.sum(np.conj(true) * mine, 0)
        out["espirit_vs_true_maps"] = float(np.mean(np.linalg.norm(mine - true * inner, axis=0)[fg]))
        maps = mine
        op = MultiCoilMRI(mask, jnp.asarray(maps))
        weights = np.asarray(mask, float)
        s_mine = np.asarray(sense_reconstruction(op, y, 0.0, 30))
        s_ref = mr.app.SenseRecon(np.asarray(y), maps, lamda=0.0, weights=weights, max_iter=30, show_pbar=False).run()
        out["sense_vs_sigpy"] = float(np.linalg.norm(s_mine - s_ref) / np.linalg.norm(s_ref))
        levels = max_levels((256, 256), "haar")
        w_mine = np.asarray(l1_wavelet_reconstruction(op, y, 1e-3, 300, "haar", levels))
        w_ref = mr.app.L1WaveletRecon(np.asarray(y), maps, 1e-3, weights=weights, wave_name="haar", max_iter=300,
                                      show_pbar=False).run()
        out["l1_wavelet_vs_sigpy"] = float(np.linalg.norm(w_mine - w_ref) / np.linalg.norm(w_ref))
        tic = time.perf_counter()
        mr.app.EspiritCalib(kspace.astype(np.complex64), show_pbar=False).run()
        out["sigpy_espirit_seconds"] = time.perf_counter() - tic
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--no-sigpy", action="store_true")
    args = parser.parse_args()
    sim, mask, y = _problem(np.float32)
    maps = espirit(sim.kspace)
    op = MultiCoilMRI(mask, maps)
    scale = float(jnp.max(jnp.abs(op.adjoint(y))))
    ys = y / scale
    rows = [
        {"step": "ESPIRiT (24×24, kernel 6, 100 power iterations)", "seconds": _median(lambda: espirit(sim.kspace),
                                                                                         args.repeats)},
        {"step": "ACS estimate (24×24 Hann)", "seconds": time_call(acs_maps, sim.kspace, repeats=args.repeats)},
        {"step": "SENSE (30 CG)", "seconds": _median(lambda: sense_reconstruction(op, ys, 0.01, 30), args.repeats)},
        {"step": "TV (300 PDHG)", "seconds": _median(lambda: tv_reconstruction(op, ys, 1e-3, 300), args.repeats)},
        {"step": "ℓ1-wavelet (200 FISTA, db4)",
         "seconds": _median(lambda: l1_wavelet_reconstruction(op, ys, 1e-3, 200), args.repeats)},
    ]
    if "chest_mc_dcnet" in pretrained.available():
        model, _ = pretrained.load("chest_mc_dcnet")
        fn = jax.jit(lambda m, v: m(op, v))
        rows.append({"step": "chest_mc_dcnet reconstruction", "seconds": _median(lambda: fn(model, ys), args.repeats)})
    extra = {}
    if not args.no_sigpy:
        try:
            extra = agreement()
        except ImportError:
            print("sigpy is not installed (pip install sigpy); agreement skipped.")
    if "sigpy_espirit_seconds" in extra:
        rows.append({"step": "sigpy EspiritCalib (same defaults, NumPy)", "seconds": extra["sigpy_espirit_seconds"]})
    note = ("One simulated 256² 8-coil slice (SNR 30), fastMRI equispaced 4×, float32, per slice. "
            + ", ".join(f"{k}: {v:.2e}" for k, v in extra.items() if not k.endswith("seconds")))
    write("multicoil", rows, ["step", "seconds"], note=note, extra=extra)


if __name__ == "__main__":
    main()
