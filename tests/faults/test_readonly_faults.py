"""A read-only destination in main storage, with real files and SQLite Butlers: the step fails at once with the
path named (an OSError is not transient: no retry storm), leaves nothing behind, and works once it is writable.

As root, permission bits do not bind, so the directory is made read-only the way a remounted or read-only export
is: a read-only bind mount of it onto itself (EROFS), unmounted afterwards. Otherwise its mode is set to 0555.
"""

from __future__ import annotations

import errno
import logging
import os
import subprocess
import warnings
from contextlib import contextmanager
from pathlib import Path

import pytest
from _fault_workers import released

from facility_data import retry
from facility_data.demo.rubin_synthetic import build_night, unique_day_obs
from facility_data.rubin import lease, steps

warnings.filterwarnings("ignore", module="erfa")


@contextmanager
def read_only(path: Path):
    if os.geteuid() != 0:
        path.chmod(0o555)
        try:
            yield errno.EACCES
        finally:
            path.chmod(0o755)
        return
    done = subprocess.run(["mount", "--bind", "-o", "ro", str(path), str(path)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"running as root and a read-only bind mount is not permitted here: {done.stderr.strip()}")
    try:
        yield errno.EROFS
    finally:
        subprocess.run(["umount", str(path)], check=True)


@pytest.fixture
def night(tmp_path, monkeypatch):
    monkeypatch.setattr(retry, "BASE_DELAY", 0.01)
    night = build_night(tmp_path, day_obs=unique_day_obs(), n_exposures=1, detectors=4)
    policy = night.policy()
    return night, policy, released(policy, night.day_obs, night.ends[night.obs_ids[-1]])[0]


@pytest.mark.parametrize("which", ["day directory", "destination prefix"])
def test_read_only_destination_fails_at_once_naming_the_path(night, caplog, which):
    _, policy, exp = night
    p = steps.paths(policy, exp)
    target = p.zip.parent if which == "day directory" else Path(policy.destination_prefix)
    target.mkdir(parents=True, exist_ok=True)
    with read_only(target) as code, caplog.at_level(logging.WARNING), pytest.raises(OSError) as err:
        steps.run_exposure(steps.Context(policy, lease_wait_s=0), exp)
    assert err.value.errno == code
    assert str(target) in str(err.value), str(err.value)
    assert not [r for r in caplog.records if r.name == retry.__name__]  # not transient: one attempt, no retries
    assert not p.zip.exists() and not p.yaml.exists()
    assert not (p.zip.parent.exists() and [q.name for q in p.zip.parent.iterdir()])
    # writable again: the next run completes the local steps
    ctx = steps.Context(policy)
    assert [steps.run_step(ctx, exp, s).state for s in (steps.GATE, steps.ZIP, steps.DIMENSIONS)] == [
        "verified", "done", "done"]
    assert not lease.lease_path(p.zip).exists()


def test_destination_turning_read_only_mid_run_fails_naming_the_file_and_the_lease_is_not_masking_it(
        night, monkeypatch, caplog):
    """The day directory is remounted read-only between the zip and the dimensions step, while the run holds the
    exposure's lease: the dimensions write fails naming the yaml, and that (not the lease's release) is the error."""
    from contextlib import ExitStack

    _, policy, exp = night
    p = steps.paths(policy, exp)
    real = steps.install_bytes
    stack = ExitStack()
    codes = []

    def remount_then_install(dest, data, owner=None):
        codes.append(stack.enter_context(read_only(dest.parent)))
        return real(dest, data, owner=owner)

    monkeypatch.setattr(steps, "install_bytes", remount_then_install)
    with stack, caplog.at_level(logging.WARNING), pytest.raises(OSError) as err:
        steps.run_exposure(steps.Context(policy, lease_wait_s=0), exp)
    assert err.value.errno == codes[0] and f"while writing {p.yaml}" in str(err.value), str(err.value)
    assert not [r for r in caplog.records if r.name == retry.__name__]
    assert p.zip.exists() and not p.yaml.exists()
