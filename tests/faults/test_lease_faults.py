"""The per-exposure lease and owned temporary files, with real processes (spawn), real files and SQLite Butlers.

A holder is a separate process: it dies (exit without release, SIGKILL mid-zip) or stays alive; the next attempt
must not be blocked by a dead one, must back off (ExposureBusy, retryable) from a live one, and must remove a dead
owner's temporary zip at once and finish byte-identical to a clean run.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import subprocess
import threading
import time
import warnings
from pathlib import Path

import pytest
from _fault_workers import hold_lease, released, slow_zip, wait_for

from facility_data.demo.rubin_synthetic import build_night, unique_day_obs, write_policy
from facility_data.rubin import lease, reconcile, steps
from facility_data.rubin.zipbuild import WriteFailed

warnings.filterwarnings("ignore", module="erfa")
SPAWN = multiprocessing.get_context("spawn")


@pytest.fixture
def night(tmp_path):
    return build_night(tmp_path, day_obs=unique_day_obs(), n_exposures=2, detectors=6)


def exposures(night, policy=None):
    return released(policy or night.policy(), night.day_obs, night.ends[night.obs_ids[-1]])


def start_holder(tmp_path, path: Path, *, dead: bool):
    ready, release = tmp_path / f"ready-{os.urandom(4).hex()}", tmp_path / f"release-{os.urandom(4).hex()}"
    proc = SPAWN.Process(target=hold_lease, args=(str(path), str(ready), str(release), dead))
    proc.start()
    wait_for(ready.exists, what="the holder's lease")
    return proc, ready.read_text(), release


def test_lease_of_a_dead_pid_on_this_host_does_not_block(tmp_path):
    path = tmp_path / ".obs.lease"
    proc, token, _ = start_holder(tmp_path, path, dead=True)
    proc.join(30)
    holder = lease.read_holder(path)
    assert holder.token == token and holder.pid == proc.pid and holder.host == lease.HOST  # left behind, not released
    held = lease.acquire(path, wait_s=0)  # no wait allowed: taken only because the pid is gone
    assert lease.read_holder(path).token == held.token != token
    held.release()
    assert not path.exists()


def test_live_holder_makes_the_step_back_off_with_busy_and_do_nothing(tmp_path, night):
    policy = night.policy()
    exp = exposures(night)[0]
    p = steps.paths(policy, exp)
    proc, token, release = start_holder(tmp_path, lease.lease_path(p.zip), dead=False)
    try:
        began = time.monotonic()
        with pytest.raises(lease.ExposureBusy) as err:
            steps.run_exposure(steps.Context(policy, lease_wait_s=0.5), exp)
        assert 0.5 <= time.monotonic() - began < 5  # waited boundedly, then gave up
        msg = str(err.value)
        assert f"{exp.obs_id}: busy" in msg and f"pid {proc.pid}" in msg and "retry later" in msg
        assert not p.zip.exists() and not p.yaml.exists() and not list(p.zip.parent.glob(".*.tmp"))
        # a dry run reads only: it takes no lease and is not blocked
        assert steps.run_zip(steps.Context(policy, dry_run=True), exp).state == "would-act"
    finally:
        release.write_text("")
        proc.join(30)
    ctx = steps.Context(policy, lease_wait_s=0)  # the holder is gone: at once
    assert [steps.run_step(ctx, exp, s).state for s in (steps.GATE, steps.ZIP, steps.DIMENSIONS)] == [
        "verified", "done", "done"]
    assert not lease.lease_path(p.zip).exists()


def test_waiting_step_proceeds_when_the_live_holder_releases(tmp_path, night):
    policy = night.policy()
    exp = exposures(night)[0]
    proc, _, release = start_holder(tmp_path, lease.lease_path(steps.paths(policy, exp).zip), dead=False)
    threading.Timer(1.0, release.write_text, args=("",)).start()
    assert steps.run_zip(steps.Context(policy, lease_wait_s=30), exp).state == "done"
    assert release.exists()  # the step went on only after the holder was told to release, not before
    proc.join(30)


def _foreign_lease(path: Path, age_s: float, ttl_s: float = 60) -> None:
    path.write_text(json.dumps({"token": "elsewhere_4242_0123abcd", "host": "elsewhere", "pid": 4242, "start": None,
                                "ttl_s": ttl_s, "acquired": "2026-01-01T00:00:00Z",
                                "task": {"dag_id": "rubin_unembargo_raw", "try_number": 1}}))
    t = time.time() - age_s
    os.utime(path, (t, t))


def test_lease_of_another_host_blocks_until_its_heartbeat_expires(tmp_path):
    path = tmp_path / ".obs.lease"
    _foreign_lease(path, age_s=5)  # heartbeat 5 s ago, ttl 60 s: alive as far as we can tell
    with pytest.raises(lease.ExposureBusy, match="held by elsewhere pid 4242 dag_id=rubin_unembargo_raw"):
        lease.acquire(path, wait_s=0.2)
    _foreign_lease(path, age_s=61)  # no heartbeat for longer than its ttl: dead
    held = lease.acquire(path, wait_s=0)
    assert lease.read_holder(path).host == lease.HOST
    held.release()


def test_holder_heartbeat_keeps_its_lease_alive(tmp_path):
    path = tmp_path / ".obs.lease"
    held = lease.acquire(path, ttl_s=0.5)
    time.sleep(1.2)  # longer than the ttl: only the heartbeat keeps it
    assert lease.read_holder(path).dead() is None
    with pytest.raises(lease.ExposureBusy):
        lease.acquire(path, wait_s=0.1)
    held.release()
    assert held.lost is None and not path.exists()


def test_sigkill_mid_zip_leaves_nothing_at_the_final_path_and_the_next_attempt_cleans_and_matches(tmp_path):
    night = build_night(tmp_path, day_obs=unique_day_obs(), n_exposures=1, detectors=6, file_size=2 << 20)
    policy = night.policy()
    exp = exposures(night)[0]
    p = steps.paths(policy, exp)
    proc = SPAWN.Process(target=slow_zip, args=(policy, exp, 0.2))
    proc.start()
    wait_for(lambda: any(t.stat().st_size > 0 for t in p.zip.parent.glob(".*.tmp")) if p.zip.parent.exists()
             else False, what="the temporary zip")
    os.kill(proc.pid, signal.SIGKILL)
    proc.join(30)
    assert proc.exitcode == -signal.SIGKILL
    temps = list(p.zip.parent.glob(f".{p.zip.name}.*.tmp"))
    assert len(temps) == 1 and not p.zip.exists()
    holder = lease.read_holder(lease.lease_path(p.zip))
    assert holder.pid == proc.pid and holder.token in temps[0].name  # the temporary file names its owner's lease
    # reconciliation lists it: its bytes, its owner, and that the owner is dead
    listed = reconcile.temporary_files(policy, exp.instrument, exp.day_obs)
    assert listed == [{"path": str(temps[0]), "bytes": temps[0].stat().st_size, "owner": holder.token,
                       "owner_dead": True}] and listed[0]["bytes"] > 0
    assert f"temporary files: 1, {listed[0]['bytes']} bytes (1 of dead owners" in reconcile.summary(
        {"temporary": listed})
    # fresh temp (seconds old, far below the old 6 h rule) of a dead owner: removed at once by the next attempt
    assert steps.run_zip(steps.Context(policy, lease_wait_s=0), exp).state == "done"
    assert not temps[0].exists() and not list(p.zip.parent.glob(".*.tmp"))
    assert not lease.lease_path(p.zip).exists()
    clean = night.policy(destination_prefix=tmp_path / "clean")
    assert steps.run_zip(steps.Context(clean), exp).state == "done"
    assert p.zip.read_bytes() == steps.paths(clean, exp).zip.read_bytes()


def test_temp_of_a_live_owner_on_this_host_is_kept(night):
    policy = night.policy()
    exp = exposures(night)[0]
    p = steps.paths(policy, exp).zip
    p.parent.mkdir(parents=True)
    live = p.parent / f".{p.name}.{lease.owner_token()}.tmp"  # this very process: alive
    live.write_bytes(b"being written")
    assert steps.run_zip(steps.Context(policy), exp).state == "done"
    assert live.exists()


def test_dead_owners_temp_beside_an_installed_zip_is_removed_by_a_real_run_not_a_dry_one(night):
    """A run killed between installing the zip (a hard link) and removing its temporary leaves a second link of the
    zip; the next run finds the zip verified and must still remove it (it used to stay for ever)."""
    policy = night.policy()
    exp = exposures(night)[0]
    p = steps.paths(policy, exp).zip
    assert steps.run_zip(steps.Context(policy), exp).state == "done"
    gone = subprocess.Popen(["true"])
    gone.wait()
    leftover = p.parent / f".{p.name}.{lease._TOKEN_HOST}_{gone.pid}_deadbeef.tmp"
    os.link(p, leftover)
    assert steps.run_zip(steps.Context(policy, dry_run=True), exp).state == "verified" and leftover.exists()
    assert steps.run_zip(steps.Context(policy), exp).state == "verified"
    assert not leftover.exists() and p.exists() and p.stat().st_nlink == 1


@pytest.fixture
def tiny_fs(tmp_path):
    """A 16 KiB tmpfs (root only): a destination that fills up mid-zip."""
    mnt = tmp_path / "full"
    mnt.mkdir()
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a tmpfs (the full-disk fault); CI runs as root")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16k", "tmpfs", str(mnt)], capture_output=True, text=True)
    if done.returncode:
        pytest.skip(f"running as root but mounting a tmpfs is not permitted here: {done.stderr.strip()}")
    yield mnt
    subprocess.run(["umount", str(mnt)], check=True)


def test_enospc_while_zipping_names_the_path_and_leaves_nothing(tiny_fs, night):
    policy = night.policy(destination_prefix=tiny_fs)
    exp = exposures(night)[0]
    p = steps.paths(policy, exp)
    with pytest.raises(WriteFailed) as err:
        steps.run_zip(steps.Context(policy), exp)
    assert err.value.errno == 28 and str(p.zip) in str(err.value) and "No space left on device" in str(err.value)
    assert not p.zip.exists() and not list(p.zip.parent.glob(".*.tmp")) and not lease.lease_path(p.zip).exists()


def test_operator_maps_busy_to_a_retryable_failure(tmp_path, night):
    from airflow.sdk.exceptions import AirflowException, AirflowFailException

    from facility_data.operators.embargo import run_rubin_step

    policy = night.policy()
    exp = exposures(night)[0]
    path = write_policy(policy, tmp_path / "policy.yaml")
    proc, _, release = start_holder(tmp_path, lease.lease_path(steps.paths(policy, exp).zip), dead=False)
    try:
        lease_wait, lease.WAIT_S = lease.WAIT_S, 0.2
        with pytest.raises(AirflowException) as err:
            run_rubin_step("zip", exp.to_dict(), False, str(path), {})
    finally:
        lease.WAIT_S = lease_wait
        release.write_text("")
        proc.join(30)
    assert not isinstance(err.value, AirflowFailException)  # Airflow's retries (with backoff) take it again
    assert str(err.value).startswith("BUSY, retry later: ") and isinstance(err.value.__cause__, lease.ExposureBusy)
    assert run_rubin_step("zip", exp.to_dict(), False, str(path), {})["state"] == "done"


def test_contenders_for_a_dead_holders_lease_hold_it_one_at_a_time(tmp_path):
    """Four processes released at once on a lease left by a dead pid: breaking it races, yet the holds never overlap
    (a breaker only removes the lease it judged dead, under the break lock)."""
    from _fault_workers import contend

    path = tmp_path / ".obs.lease"
    proc, _, _ = start_holder(tmp_path, path, dead=True)
    proc.join(30)
    log, barrier = tmp_path / "holds.log", SPAWN.Barrier(4)
    procs = [SPAWN.Process(target=contend, args=(str(path), barrier, str(log), 0.3)) for _ in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    holds = sorted((float(b), float(e)) for _, b, e in (line.split() for line in log.read_text().splitlines()))
    assert len(holds) == 4
    assert all(prev_end <= begin for (_, prev_end), (begin, _) in zip(holds, holds[1:], strict=False)), holds
    assert not path.exists() and not path.with_name(path.name + ".break").exists()
