"""A worker SIGKILLed at each boundary of an exposure's unembargo (inside and between zip, dimensions, Butler ingest,
Rucio registration, and after the last step with the lease still held), then the same steps rerun.

The worker is a real process (spawn) running ``steps.run_exposure`` against the real local site (Rucio on
PostgreSQL, SQLite Butlers, local files); a hook patched in the child pauses it at the point and writes a marker, and
the test kills it there: no timer decides where it dies. After the kill, no final path holds a partial artefact and
the read-only status names the interrupted step as missing, never inconsistent. The rerun, allowed no wait for the
dead holder's lease, does only what is missing and ends in a clean run's state: zip and yaml byte-identical, Rucio
checksums equal to the files, each dataset in the destination Butler once, no temporary or lease left.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import uuid
import warnings
from pathlib import Path

import pytest
from _fault_workers import end_state, released, run_exposure_until, wait_for

from facility_data.demo.rubin_synthetic import build_night, unique_day_obs
from facility_data.rubin import lease, rucioreg, steps
from facility_data.rubin.sinks import temporary_files

pytestmark = pytest.mark.integration
warnings.filterwarnings("ignore", module="erfa")
SPAWN = multiprocessing.get_context("spawn")
DETECTORS = 6
BUTLER = "butler:"  # the one destination's step, completed with its label below

# kill point -> the step the status must report as first missing after the kill (None: every sink complete)
POINTS = {
    "zip:mid-write": steps.ZIP,
    "zip:after-install": steps.DIMENSIONS,
    "dimensions:before-install": steps.DIMENSIONS,
    "butler:in-transaction": BUTLER,
    "rucio:before-close": steps.RUCIO,
    "done:lease-held": None,
}


def one_exposure(site, root: Path):
    night = build_night(root, day_obs=unique_day_obs(), n_exposures=1, detectors=DETECTORS, file_size=1 << 20)
    policy = night.policy(destination_prefix=site.root / "main" / f"test-{uuid.uuid4().hex[:8]}")
    return night, policy, released(policy, night.day_obs, night.ends[night.obs_ids[-1]])[0]


@pytest.fixture(scope="module")
def clean(site, conns, tmp_path_factory):
    """An unkilled run of an exposure of the same shape: the end state every rerun must reach."""
    night, policy, exp = one_exposure(site, tmp_path_factory.mktemp("clean"))
    steps.run_exposure(steps.Context(policy), exp)
    state = end_state(site, night, policy, exp)
    raws = [r for r in steps.Context(policy).refs(exp) if r.datasetType.name == "raw"]
    assert state["dest0:datasets"] == len(raws) > 0 and state["dest0:visits"] == 1 and state["deep_complete"]
    return state


def kill_at(site, tmp_path, policy, exp, point: str) -> int:
    """Run the exposure in a worker, wait until it pauses at ``point``, SIGKILL it; return its pid."""
    marker = tmp_path / "reached.json"
    proc = SPAWN.Process(target=run_exposure_until, args=(policy, exp, point, str(marker), str(site.root)))
    proc.start()
    try:
        wait_for(lambda: marker.exists() or proc.exitcode is not None, timeout=120, what=f"the worker at {point}")
        assert marker.exists(), f"the worker ended (exit {proc.exitcode}) before reaching {point}"
        reached = json.loads(marker.read_text())
        assert reached == {"pid": proc.pid, "point": point}, f"the worker finished without reaching {point}"
        if point == "zip:mid-write":  # the first member's bytes are in the temporary file, not only in flight
            zip_path = steps.paths(policy, exp).zip
            wait_for(lambda: any(t.stat().st_size > 0 for t in zip_path.parent.glob(f".{zip_path.name}.*.tmp")),
                     what="bytes in the temporary zip")
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.join(30)
    assert proc.exitcode == -signal.SIGKILL
    return proc.pid


@pytest.mark.parametrize("point", list(POINTS))
def test_sigkill_at_a_step_boundary_then_the_rerun_converges_to_a_clean_runs_state(site, conns, clean, tmp_path,
                                                                                    point):
    from lsst.daf.butler import Butler

    night, policy, exp = one_exposure(site, tmp_path)
    p = steps.paths(policy, exp)
    names = steps.step_names(policy)
    missing = POINTS[point]
    missing = names[-2] if missing == BUTLER else missing
    pid = kill_at(site, tmp_path, policy, exp, point)

    # what the killed worker left: its lease, judged dead at once (same host, pid gone)
    holder = lease.read_holder(lease.lease_path(p.zip))
    assert isinstance(holder, lease.Holder) and holder.pid == pid and holder.dead(), holder
    # no partial artefact at a final path: each final file is there only once its step installed it
    done_before = names[:names.index(missing)] if missing else names
    assert p.zip.exists() == (steps.ZIP in done_before) and p.yaml.exists() == (steps.DIMENSIONS in done_before)
    # the read-only (deep) status: complete up to the interrupted step, which is missing; never a false INCONSISTENT
    status = steps.exposure_status(steps.Context(policy), exp, deep=True)
    assert status.first_missing == missing and set(status.steps.values()) <= {"done", "missing"}, status
    if point == "butler:in-transaction":  # SQLite rolled the killed transaction back: not one dataset registered
        dest = Butler.from_config(str(night.destination_repos[0]))
        refs = steps.Context(policy).refs(exp)
        assert refs and [dest.get_dataset(r.id) for r in refs] == [None] * len(refs)
    if point == "rucio:before-close":  # files attached to the Obs dataset, which is still open
        obs = rucioreg.did_names(exp.instrument, exp.day_obs, exp.obs_id, [])[1]
        assert site.rucio_client().get_did(policy.rucio.scope, obs)["open"] is True
    temps = temporary_files(policy, exp.instrument, exp.day_obs)
    assert all(t["owner_dead"] for t in temps), temps  # a leftover is recognisable as a dead owner's
    if point.startswith(("zip:", "dimensions:")):  # the interrupted writer's temporary
        assert len(temps) == 1 and temps[0]["bytes"] > 0, temps

    # the rerun: no wait allowed for the dead holder; it does only what is missing
    outcomes = steps.run_exposure(steps.Context(policy, lease_wait_s=0), exp)
    states = {o.step: o.state for o in outcomes}
    assert list(states) == names
    assert [states[n] for n in done_before] == ["verified"] * len(done_before), states
    if missing:
        assert states[missing] == "done", states

    # the same end state as the unkilled run: every sink complete, checksums equal, datasets once, nothing left over
    assert end_state(site, night, policy, exp) == clean
    assert not lease.lease_path(p.zip).exists() and temporary_files(policy, exp.instrument, exp.day_obs) == []
    ref = night.policy(destination_prefix=Path(policy.destination_prefix).parent / f"ref-{uuid.uuid4().hex[:8]}")
    ctx = steps.Context(ref)
    steps.run_step(ctx, exp, steps.ZIP), steps.run_step(ctx, exp, steps.DIMENSIONS)
    r = steps.paths(ref, exp)
    assert p.zip.read_bytes() == r.zip.read_bytes() and p.yaml.read_bytes() == r.yaml.read_bytes()
