"""Benchmark: local reconstruction (facility_data.als.recon) vs scikit-image's iradon on the same sinograms.

Prints one JSON line: {"bench": "recon_local", "slices", "seconds", "slices_per_s", "vs_iradon", ...}.
``seconds`` is our filtered back-projection of all slices (building the sparse back-projector included);
``vs_iradon`` = iradon's time on the same sinograms, same filter, same run, divided by ours (>1: ours is faster).
``end_to_end_seconds`` is ``reconstruct()`` on the HDF5 scan: read, normalise, centre estimate, FBP, TIFF writes.
Both run single-threaded numpy/scipy; sizes keep the whole benchmark well under 30 s on a 2-core machine.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

# Odd detector width: the true rotation centre (n - 1) / 2 is then also skimage's n // 2, so both reconstruct
# exactly the same geometry and their images can be compared pixel by pixel.
SIZE, SLICES, ANGLES, FILTER = 255, 64, 361, "shepp-logan"


def main() -> int:
    from skimage.transform import iradon

    from facility_data.als import recon
    from facility_data.demo import als_synthetic as synthetic

    with tempfile.TemporaryDirectory(prefix="bench-recon-") as tmp:
        h5 = synthetic.write_scan(Path(tmp) / "20240101_000000_bench.h5", n_angles=ANGLES, size=SIZE,
                                  n_slices=SLICES, seed=0)
        scan = recon.read_scan(h5)
        sinograms = recon.normalize(scan.data, scan.flats, scan.darks).transpose(1, 0, 2).copy()
        theta_deg = np.rad2deg(scan.theta)
        center = SIZE // 2

        t0 = time.perf_counter()
        ours = recon.fbp(sinograms, scan.theta, center=center, filter_name=FILTER)
        ours_s = time.perf_counter() - t0

        t0 = time.perf_counter()
        ref = np.stack([iradon(s.T, theta_deg, circle=True, filter_name=FILTER) for s in sinograms])
        iradon_s = time.perf_counter() - t0

        yy, xx = np.mgrid[:SIZE, :SIZE] - (SIZE - 1) / 2
        inside = np.hypot(yy, xx) < SIZE / 2 - 3
        agreement = float(np.corrcoef(ours[:, inside].ravel(), ref[:, inside].ravel())[0, 1])
        truth = synthetic.phantom(SIZE, SLICES)[:, inside].ravel()
        quality = {name: round(float(np.corrcoef(vol[:, inside].ravel(), truth)[0, 1]), 4)
                   for name, vol in (("ours", ours), ("iradon", ref))}

        t0 = time.perf_counter()
        result = recon.reconstruct(h5, Path(tmp) / "out")
        e2e_s = time.perf_counter() - t0

    print(json.dumps({
        "bench": "recon_local",
        "slices": SLICES,
        "seconds": round(ours_s, 4),
        "slices_per_s": round(SLICES / ours_s, 2),
        "vs_iradon": round(iradon_s / ours_s, 2),
        "iradon_seconds": round(iradon_s, 4),
        "detector_pixels": SIZE,
        "angles": ANGLES,
        "filter": FILTER,
        "agreement_with_iradon": round(agreement, 5),
        "corr_vs_phantom": quality,
        "end_to_end_seconds": round(e2e_s, 4),
        "center_found": round(result.center, 3),
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
