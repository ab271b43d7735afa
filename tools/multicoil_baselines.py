"""The classical rows of ``chest_mc_dcnet``'s card: zero-filled RSS, SENSE, TV and ℓ1-wavelet on the simulated
multi-coil chest test slices, λ tuned per task on validation slices (grid widened at its edges).

    python tools/multicoil_baselines.py      # writes outputs/pretrained/chest_mc_dcnet/baselines.json (≈ 25 CPU min)

It does not depend on the model, so it runs beside the training; ``tools/make_multicoil.py`` reads its output.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parent))
import make_multicoil  # noqa: E402


def main() -> None:
    from metajax.engine import multicoil

    log = lambda m: print(m, flush=True)  # noqa: E731
    _, val_set, test_set = make_multicoil.datasets(log, train=False)
    fixed = multicoil.validation_masks()
    tune_set = multicoil.first_images(val_set, make_multicoil.VAL_IMAGES)
    rows, tuning = [], {}
    zf = multicoil.rss_zero_filled_set(test_set, fixed)
    psnr, ssim = multicoil.scores(zf, test_set.rss)
    rows += [dict(method="zero-filled RSS", task=t, psnr=psnr[test_set.task == t].tolist(),
                  ssim=ssim[test_set.task == t].tolist()) for t in range(len(multicoil.TASKS))]
    for name, (solve, grid) in multicoil.classical_methods().items():
        for t, (family, acc) in enumerate(multicoil.TASKS):
            one = lambda d: multicoil.SimulatedSet(**{k: v[d.task == t] for k, v in vars(d).items()})  # noqa: E731
            lam, record = multicoil.tune(solve, grid, one(tune_set), fixed, log=log)
            tic = time.perf_counter()
            test_t = one(test_set)
            recon = multicoil.solve_set(solve, test_t, fixed, lam)
            seconds = (time.perf_counter() - tic) / len(test_t.task)
            psnr, ssim = multicoil.scores(recon, test_t.rss)
            rows.append(dict(method=name, task=t, psnr=psnr.tolist(), ssim=ssim.tolist(), weight=lam,
                             seconds_per_slice=seconds))
            tuning[f"{name} {family} {acc:g}x"] = record
            log(f"{name} {family} {acc:g}×: λ {lam:g}, PSNR {psnr.mean():.2f} / SSIM {ssim.mean():.3f} "
                f"({seconds:.1f} s per slice)")
    out = Path(make_multicoil.ROOT / "outputs" / "pretrained" / make_multicoil.NAME)
    out.mkdir(parents=True, exist_ok=True)
    (out / "baselines.json").write_text(json.dumps({"rows": rows, "tuning": tuning}, indent=1))
    log(f"wrote {out / 'baselines.json'}")


if __name__ == "__main__":
    main()
