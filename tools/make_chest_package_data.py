"""Write metajax's embedded chest data (package data) from the shared Deep ADMM-Net files.

    python tools/make_chest_package_data.py [--shared ../shared/data]

Reads ``chest100_singlecoil.h5`` (its ``reconstruction_esc`` images) and
``radial_masks.h5``, and writes ``metajax/data/chest/chest100.h5``: the 100
float32 images bit for bit (gzip level 9 with byte shuffling, one chunk per
slice) and the five masks as uint8 (gzip), with their ``sampling_ratio``
attributes and the source's provenance. The k-space is not stored: the
shared file's k-space *is* ``fft2c(image)`` (simulated, noiseless), so it is
recomputed exactly from the image.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import h5py
import numpy as np

OUT = Path(__file__).resolve().parents[1] / "metajax" / "data" / "chest" / "chest100.h5"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", default=str(Path(__file__).resolve().parents[1] / ".." / "shared" / "data"))
    args = parser.parse_args()
    shared = Path(args.shared)
    with h5py.File(shared / "chest100_singlecoil.h5", "r") as f:
        images = np.asarray(f["reconstruction_esc"][()], np.float32)
        attrs = dict(f.attrs)
    with h5py.File(shared / "radial_masks.h5", "r") as f:
        masks = {name: (np.asarray(d[()], np.uint8), float(d.attrs["sampling_ratio"])) for name, d in f.items()}
    OUT.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(OUT, "w") as f:
        f.create_dataset("images", data=images, compression="gzip", compression_opts=9, shuffle=True,
                         chunks=(1, *images.shape[1:]))
        f.attrs["source"] = str(attrs.get("source", "Deep-ADMM-Net data/ChestTrain (MIT)"))
        f.attrs["acquisition"] = str(attrs.get("acquisition", ""))
        group = f.create_group("masks")
        for name, (mask, ratio) in masks.items():
            d = group.create_dataset(name, data=mask, compression="gzip", compression_opts=9)
            d.attrs["sampling_ratio"] = ratio
    with h5py.File(OUT, "r") as f:  # round trip: bit-identical images and masks
        assert np.array_equal(f["images"][()], images)
        assert all(np.array_equal(f["masks"][n][()], m) for n, (m, _) in masks.items())
    print(f"wrote {OUT} ({OUT.stat().st_size / 2**20:.1f} MiB): {images.shape} images, masks {sorted(masks)}")


if __name__ == "__main__":
    main()
