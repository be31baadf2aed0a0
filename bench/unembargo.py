"""Benchmark: the unembargo's zip stage vs `cp` of the same files, and the fixed per-exposure cost of the
dimensions, Butler and Rucio steps.

Builds a synthetic LSSTCam night (N exposures x 205 detector files + JSON sidecars) in a local embargo store, copies
every exposure folder once with ``cp -r`` and zips every exposure once with the zip step (stream + md5/adler32 while
writing + fsync + no-overwrite install), in the same run (best of five interleaved rounds each), then times the remaining steps per exposure. If the local
site (FACILITY_SITE with its Rucio server) is up, the Rucio step is included; otherwise it is skipped and said so.
Prints one JSON line:
{"bench": "unembargo", "exposures", "files", "bytes", "seconds", "cp_seconds", "vs_cp", "overhead_s_per_exposure",
 "rucio": "measured"|"skipped"}   (vs_cp = cp_seconds / seconds: the zip stage's throughput relative to cp)

Usage: .venv/bin/python bench/unembargo.py [--exposures 3] [--file-mib 1.0]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import subprocess
import tempfile
import time
import warnings
from datetime import timedelta
from pathlib import Path

ROUNDS = 5


def _site():
    """The running local site with Rucio, or None."""
    if not os.environ.get("FACILITY_SITE"):
        return None
    try:
        from facility_data.localsite import Site

        site = Site(Path(os.environ["FACILITY_SITE"]))
        if not site.status().get("rucio"):
            return None
        site.rucio_client().whoami()
        return site
    except Exception:
        return None


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--exposures", type=int, default=3)
    parser.add_argument("--file-mib", type=float, default=1.0)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    logging.disable(logging.INFO)

    from facility_data.rubin import steps, windows
    from facility_data.rubin.synthetic import build_night, unique_day_obs

    site = _site()
    work = Path(tempfile.mkdtemp(prefix="bench-unembargo-", dir=site.root / "main" if site else None))
    try:
        night = build_night(work, day_obs=unique_day_obs(), n_exposures=args.exposures, detectors=205,
                            file_size=int(args.file_mib * (1 << 20)))
        policy = night.policy()
        req = windows.parse_manual(policy, {"instrument": "LSSTCam", "day_obs": str(night.day_obs)})
        exps, _ = windows.select_manual(steps.Context(policy).source, policy, req,
                                        max(night.ends.values()) + timedelta(days=10))
        folders = [night.store.root / "LSSTCam" / str(night.day_obs) / e.obs_id for e in exps]
        n_bytes = sum(f.stat().st_size for d in folders for f in d.iterdir())
        n_files = sum(1 for d in folders for _ in d.iterdir())
        # best of ROUNDS interleaved rounds each: the machine is shared, single timings are noisy
        cp_times, zip_times = [], []
        for r in range(ROUNDS):
            cp_dir = work / f"cp-{r}"
            cp_dir.mkdir()
            t = time.perf_counter()
            for d in folders:
                subprocess.run(["cp", "-r", str(d), str(cp_dir / d.name)], check=True)
            subprocess.run(["sync", "-f", str(cp_dir)], check=False)  # on disk, as the zip is (fsync)
            cp_times.append(time.perf_counter() - t)
            shutil.rmtree(cp_dir)

            policy = night.policy(destination_prefix=work / f"dest-{r}")
            ctx = steps.Context(policy, rucio=site.rucio_client() if site else None)
            t = time.perf_counter()
            for e in exps:  # the whole step: listing, Butler zip index, zip, hashes, fsync, install
                assert steps.run_step(ctx, e, steps.ZIP).state == "done"
            zip_times.append(time.perf_counter() - t)
            if r < ROUNDS - 1:
                shutil.rmtree(work / f"dest-{r}")
        seconds, cp_seconds = min(zip_times), min(cp_times)

        rest = [n for n in steps.step_names(policy) if n not in (steps.GATE, steps.ZIP)]
        if not site:
            rest.remove(steps.RUCIO)
        t = time.perf_counter()
        for e in exps:
            for name in rest:
                assert steps.run_step(ctx, e, name).state == "done", name
        overhead = (time.perf_counter() - t) / len(exps)
        print(json.dumps({"bench": "unembargo", "exposures": len(exps), "files": n_files, "bytes": n_bytes,
                          "seconds": round(seconds, 3), "cp_seconds": round(cp_seconds, 3),
                          "vs_cp": round(cp_seconds / seconds, 3),
                          "overhead_s_per_exposure": round(overhead, 3),
                          "rucio": "measured" if site else "skipped"}), flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
