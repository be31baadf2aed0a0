"""Entry points of the processes the fault tests start (spawn context: importable, picklable arguments only)."""

from __future__ import annotations

import json
import os
import time
import traceback
import warnings
from datetime import timedelta
from pathlib import Path

from facility_data.rubin.storage import serial_objects

warnings.filterwarnings("ignore", module="erfa")


def released(policy, day_obs: int, now):
    from facility_data.rubin import steps, windows

    ctx = steps.Context(policy)
    req = windows.parse_manual(policy, {"instrument": "LSSTCam", "day_obs": str(day_obs)})
    refs, problems = windows.select_manual(ctx.source, policy, req, now + timedelta(days=5))
    assert problems == [], problems
    return refs


def _report(out: Path, body: dict) -> None:
    tmp = out.with_suffix(".part")
    tmp.write_text(json.dumps(body, default=str))
    tmp.rename(out)


def run_exposures(policy, exposures, barrier, out: str, wait_s: float) -> None:
    """One run (scheduled or backfill): steps.run_exposure over ``exposures`` in the given order, started with the
    other runs at the barrier; writes per exposure its step states or its error."""
    from facility_data.rubin import steps

    ctx = steps.Context(policy, lease_wait_s=wait_s)
    ctx.source  # noqa: B018 - opened before the start, so the runs overlap from their first step
    barrier.wait(timeout=300)
    results = {}
    for exp in exposures:
        try:
            results[exp.obs_id] = [[o.step, o.state] for o in steps.run_exposure(ctx, exp)]
        except Exception as exc:  # noqa: BLE001 - reported to the test
            results[exp.obs_id] = f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}"
    _report(Path(out), {"pid": os.getpid(), "results": results})


def run_reconcile(policy, day_obs: int, now, barrier, out: str, wait_s: float, reports: str) -> None:
    """A reconcile repair run over the night, as rubin_unembargo_reconcile does it (check, repair, re-check)."""
    from facility_data.rubin import reconcile, steps

    req = reconcile.Request(instrument="LSSTCam", nights=(day_obs,), repair=True, dry_run=False, deep=False,
                            prune_embargo="off")
    ctx = steps.Context(policy, lease_wait_s=wait_s)
    ctx.source  # noqa: B018
    barrier.wait(timeout=300)
    try:
        result = reconcile.run(ctx, req, now=now, reports_dir=reports)
    except Exception as exc:  # noqa: BLE001 - reported to the test
        result = {"error": f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}"}
    _report(Path(out), {"pid": os.getpid(), "result": result})


class SlowStore:
    """The real local store, each chunk delayed: a zip build that lasts long enough to be killed mid-write."""

    def __init__(self, store, delay_s: float):
        self._store, self._delay = store, delay_s

    def __getattr__(self, name):
        return getattr(self._store, name)

    def iter_objects(self, objects):
        return serial_objects(self, objects)  # through this wrapper's iter_chunks

    def iter_chunks(self, key):
        for chunk in self._store.iter_chunks(key):
            time.sleep(self._delay)
            yield chunk


def slow_zip(policy, exposure, delay_s: float) -> None:
    """Build one exposure's zip slowly (to be SIGKILLed by the test while its temporary file grows)."""
    from facility_data.rubin import steps
    from facility_data.rubin.storage import open_store

    steps.run_zip(steps.Context(policy, store=SlowStore(open_store(policy.storage), delay_s)), exposure)


def hold_lease(path: str, ready: str, release: str, dead: bool) -> None:
    """Take a lease, say so (``ready`` file), then either die holding it (``dead``: no release, no cleanup) or hold
    it, heartbeating, until the ``release`` file appears."""
    from facility_data.rubin import lease

    held = lease.acquire(Path(path), wait_s=0)
    Path(ready).write_text(held.token)
    if dead:
        os._exit(0)
    while not Path(release).exists():
        time.sleep(0.05)
    held.release()


def contend(path: str, barrier, log: str, hold_s: float) -> None:
    """Take the lease (waiting), record when it held it (O_APPEND lines), hold it ``hold_s``, release."""
    from facility_data.rubin import lease

    barrier.wait(timeout=120)
    held = lease.acquire(Path(path), wait_s=60)
    began = time.monotonic()
    time.sleep(hold_s)
    ended = time.monotonic()
    held.release()
    with open(log, "a") as f:
        f.write(f"{os.getpid()} {began} {ended}\n")
