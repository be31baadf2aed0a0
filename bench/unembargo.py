"""Benchmark: the unembargo's zip stage vs `cp` of the same files, and the fixed per-exposure cost of the
dimensions, Butler and Rucio steps.

Builds a synthetic LSSTCam night (N exposures x 205 detector files + JSON sidecars) in a local embargo store, copies
every exposure folder with ``cp -r`` (then ``sync``) and runs the zip stage over every exposure, in the same run (best
of five interleaved rounds each), then times the remaining steps per exposure. If the local site (FACILITY_SITE with
its Rucio server) is up, the Rucio step is included; otherwise it is skipped and said so.

The zip stage runs as the DAG runs it: each exposure's zip task (what EmbargoZipOperator calls: open the Butler, list,
zip index, stream + md5/adler32 while writing, fsync, no-overwrite install) in its own process, at most
``PER_RUN_PARALLELISM`` at once (the DAG's ``max_active_tis_per_dagrun``). ``vs_cp_one_worker`` is the same stage one
exposure at a time, for comparison. Prints one JSON line:
{"bench": "unembargo", "exposures", "files", "bytes", "seconds", "cp_seconds", "vs_cp", "workers",
 "vs_cp_one_worker", "md5_seconds", "cpus", "overhead_s_per_exposure", "rucio": "measured"|"skipped"}
(vs_cp = cp_seconds / seconds: the zip stage's throughput relative to cp). md5_seconds is one core hashing the same
bytes from memory: Rucio needs every zip's md5, which no implementation computes much faster than ~0.75 GB/s per
stream, so the stage can never beat md5_seconds / min(workers, cpus).

Usage: .venv/bin/python bench/unembargo.py [--exposures 4] [--file-mib 1.0]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import multiprocessing
import os
import shutil
import subprocess
import tempfile
import time
import warnings
from concurrent.futures import ProcessPoolExecutor
from datetime import timedelta
from pathlib import Path

ROUNDS = 5


def _quiet() -> None:
    warnings.filterwarnings("ignore")
    logging.disable(logging.INFO)


def _zip_task(policy_path: str, exposure: dict) -> str:
    """One zip task, as EmbargoZipOperator runs it (its own Context, so its own Butler)."""
    from facility_data.rubin.runs import run_named_step

    return run_named_step("zip", exposure, dry_run=False, policy_path=policy_path)["state"]


def _md5_seconds(folders: list[Path]) -> float:
    t = time.perf_counter()
    for f in (f for d in folders for f in sorted(d.iterdir())):
        with open(f, "rb") as fh:
            hashlib.md5(fh.read())
    return time.perf_counter() - t


def _settle(path: Path) -> None:
    """Flush earlier writes and deletions first (untimed), so each timed part syncs only its own."""
    subprocess.run(["sync", "-f", str(path)], check=False)


def _zip_stage(pool, policy_path: Path, exposures: list[dict]) -> float:
    _settle(policy_path.parent)
    t = time.perf_counter()
    if pool is None:
        states = [_zip_task(str(policy_path), e) for e in exposures]
    else:
        states = list(pool.map(_zip_task, [str(policy_path)] * len(exposures), exposures))
    seconds = time.perf_counter() - t
    assert states == ["done"] * len(exposures), states
    return seconds


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
    parser.add_argument("--exposures", type=int, default=4)
    parser.add_argument("--file-mib", type=float, default=1.0)
    args = parser.parse_args()
    _quiet()

    from facility_data.demo.rubin_synthetic import build_night, unique_day_obs, write_policy
    from facility_data.rubin import steps, windows
    from facility_data.rubin.runs import PER_RUN_PARALLELISM

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
        # the workers are started (and have imported the stack) before timing: the DAG's task processes do not
        # count either; each task still opens its own Butler, as in the DAG
        workers = min(PER_RUN_PARALLELISM, len(exps))
        pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("forkserver"), initializer=_quiet)
        exposures = [e.to_dict() for e in exps]
        # best of ROUNDS interleaved rounds each: the machine is shared, single timings are noisy
        cp_times, zip_times, one_times = [], [], []
        for r in range(-1, ROUNDS):  # round -1 warms the workers up, untimed
            cp_dir = work / f"cp-{r}"
            cp_dir.mkdir()
            _settle(work)
            t = time.perf_counter()
            for d in folders:
                subprocess.run(["cp", "-r", str(d), str(cp_dir / d.name)], check=True)
            subprocess.run(["sync", "-f", str(cp_dir)], check=False)  # on disk, as the zip is (fsync)
            cp_times.append(time.perf_counter() - t)
            shutil.rmtree(cp_dir)
            for runner, times in ((pool, zip_times), (None, one_times)):
                dest = work / f"dest-{r}-{'n' if runner else '1'}"
                policy = night.policy(destination_prefix=dest)
                policy_path = write_policy(policy, work / "policy.yaml")
                times.append(_zip_stage(runner, policy_path, exposures))
                shutil.rmtree(dest)
        pool.shutdown()
        seconds, cp_seconds, one_seconds = min(zip_times[1:]), min(cp_times[1:]), min(one_times[1:])
        md5_seconds = min(_md5_seconds(folders) for _ in range(3))

        policy = night.policy(destination_prefix=work / "dest")
        ctx = steps.Context(policy, rucio=site.rucio_client() if site else None)
        for e in exps:
            assert steps.run_step(ctx, e, steps.ZIP).state == "done"
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
                          "vs_cp": round(cp_seconds / seconds, 3), "workers": workers,
                          "vs_cp_one_worker": round(cp_seconds / one_seconds, 3),
                          "md5_seconds": round(md5_seconds, 3), "cpus": os.cpu_count(),
                          "overhead_s_per_exposure": round(overhead, 3),
                          "rucio": "measured" if site else "skipped"}), flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
