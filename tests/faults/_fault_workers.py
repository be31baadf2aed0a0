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


def wait_for(pred, timeout=60.0, what="condition"):
    end = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < end, f"timed out waiting for {what}"
        time.sleep(0.02)


def end_state(site, night, policy, exp) -> dict:
    """Everything the steps leave for one exposure, with its obs_id, day_obs and destination prefix normalised."""
    from lsst.daf.butler import Butler

    from facility_data.rubin import rucioreg, steps
    from facility_data.rubin.zipbuild import file_hashes

    client = site.rucio_client()
    p = steps.paths(policy, exp)

    def norm(s: str) -> str:
        return s.replace(str(policy.destination_prefix), "PREFIX").replace(exp.obs_id, "OBS").replace(
            str(exp.day_obs), "DAY")

    _, obs = rucioreg.did_names(exp.instrument, exp.day_obs, exp.obs_id, [])
    state = {"obs_open": client.get_did("raw", obs)["open"],
             "obs_content": sorted(norm(c["name"]) for c in client.list_content("raw", obs)),
             "obs_meta": {k: v for k, v in client.get_metadata("raw", obs, plugin="ALL").items()
                          if k in ("arcBackup", "SafeCopies")}}
    for f in (p.zip, p.yaml):
        name = f"{exp.instrument}/{exp.day_obs}/{f.name}"
        did, h = client.get_did("raw", name), file_hashes(f)
        state[norm(name)] = {
            "hashes_match": (did["bytes"], did["md5"], did["adler32"]) == (h.bytes, h.md5, h.adler32),
            "meta": client.get_metadata("raw", name, plugin="ALL").get("rubin_butler"),
            "parents": sorted(norm(x["name"]) for x in client.list_parent_dids("raw", name)),
            "pfns": [norm(pfn) for r in client.list_replicas([{"scope": "raw", "name": name}])
                     for pfn in r["rses"].get("SLAC_RAW_DISK", [])]}
    for i, repo in enumerate(night.destination_repos):
        b = Butler.from_config(str(repo))
        state[f"dest{i}:datasets"] = len(b.query_datasets("raw", collections="LSSTCam/raw/all", instrument="LSSTCam",
                                                          exposure=exp.exposure, explain=False))
        state[f"dest{i}:visits"] = len(b.query_dimension_records("visit", instrument="LSSTCam", visit=exp.exposure,
                                                                 explain=False))
    state["leftovers"] = sorted(norm(str(f)) for f in p.zip.parent.glob(".*"))  # temporaries, leases
    state["deep_complete"] = steps.exposure_status(steps.Context(policy), exp, deep=True).complete
    return state


# ------------------------------------------------------------------------------------------------ kill points
def _pause(marker: str, point: str) -> None:
    """Say where this process is (``marker``, written atomically), then block until the test SIGKILLs it."""
    _report(Path(marker), {"pid": os.getpid(), "point": point})
    while True:
        time.sleep(60)


def _pause_at(point: str, marker: str) -> None:
    """Monkeypatch (in this process only) the call where ``point`` is reached so that it pauses there."""
    from lsst.daf.butler.datastores.fileDatastore import FileDatastore
    from rucio.client.didclient import DIDClient

    from facility_data.rubin import lease, steps, zipbuild

    def before(owner, name, when=lambda *a, **k: True):
        original = getattr(owner, name)

        def paused(*args, **kwargs):
            if when(*args, **kwargs):
                _pause(marker, point)
            return original(*args, **kwargs)
        setattr(owner, name, paused)

    if point == "zip:mid-write":  # the temporary zip holds the first member, the second is being read
        opened = steps.open_store

        def open_store(storage):
            return _PausingStore(opened(storage), marker, point, at_object=2)
        steps.open_store = open_store
    elif point == "zip:after-install":  # the zip linked to its final path, its temporary (same inode) not removed
        before(zipbuild, "_remove_temp", lambda tmp: ".zip." in tmp.name and (
            tmp.parent / (tmp.name[1:].split(".zip.")[0] + ".zip")).exists())
    elif point == "dimensions:before-install":  # zip installed; the yaml's temporary written, not yet linked
        before(zipbuild, "_install", lambda tmp, dest: dest.name.endswith("_dimensions.yaml"))
    elif point == "butler:in-transaction":  # datasets inserted in the registry's open transaction, no artifact yet
        before(FileDatastore, "ingest_zip")
    elif point == "rucio:before-close":  # every replica registered and attached, the Obs dataset still open
        before(DIDClient, "close")
    elif point == "done:lease-held":  # every sink complete, the lease not yet released
        before(lease.Lease, "release")
    else:
        raise ValueError(f"unknown kill point {point!r}")


class _PausingStore:
    """The real store; pauses before the ``at_object``-th object is read for the zip."""

    def __init__(self, store, marker: str, point: str, at_object: int):
        self._store, self._marker, self._point, self._at, self._reads = store, marker, point, at_object, 0

    def __getattr__(self, name):
        return getattr(self._store, name)

    def iter_objects(self, objects):
        return serial_objects(self, objects)  # through this wrapper's iter_chunks (the zip reads iter_objects)

    def iter_chunks(self, key):
        self._reads += 1
        if self._reads == self._at:
            _pause(self._marker, self._point)
        yield from self._store.iter_chunks(key)


def run_exposure_until(policy, exposure, point: str, marker: str, site_root: str) -> None:
    """steps.run_exposure as a worker runs it, paused at ``point`` to be SIGKILLed there; reaching the end means the
    point was never reached. Rucio is the local site's client itself, not through the Airflow hook: importing
    Airflow would double the worker's start-up, and the hook plays no part in what a kill leaves."""
    from facility_data.localsite import Site
    from facility_data.rubin import steps

    _pause_at(point, marker)
    steps.run_exposure(steps.Context(policy, rucio=Site(Path(site_root)).rucio_client, lease_wait_s=0), exposure)
    _report(Path(marker), {"pid": os.getpid(), "point": None})
