"""A destination Butler's SQLite registry locked by another connection (an exclusive transaction held open), with
real SQLite Butlers: the ingest retries the lock as transient within its budget, then fails naming it, and
nothing is half-ingested.

The Butler itself waits up to 5 minutes for a busy SQLite database before it reports the lock; the tests shorten
that wait (the pragma daf_butler sets on each new connection) so that one attempt takes 0.2 s, not 5 minutes.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import warnings
from contextlib import closing

import pytest
from _fault_workers import released

from facility_data import retry
from facility_data.demo.rubin_synthetic import build_night, unique_day_obs
from facility_data.rubin import butlerops, steps

warnings.filterwarnings("ignore", module="erfa")


@pytest.fixture
def short_lock_wait(monkeypatch):
    from lsst.daf.butler.registry.databases import sqlite as butler_sqlite

    def on_connect(dbapi_connection, record):
        dbapi_connection.isolation_level = None
        with closing(dbapi_connection.cursor()) as cursor:
            cursor.execute("PRAGMA foreign_keys=ON;")
            cursor.execute("PRAGMA busy_timeout = 200;")

    monkeypatch.setattr(butler_sqlite, "_onSqlite3Connect", on_connect)
    monkeypatch.setattr(retry, "BASE_DELAY", 0.01)


@pytest.fixture
def night(tmp_path, short_lock_wait):
    night = build_night(tmp_path, day_obs=unique_day_obs(), n_exposures=1, detectors=4)
    policy = night.policy()
    exp = released(policy, night.day_obs, night.ends[night.obs_ids[-1]])[0]
    ctx = steps.Context(policy)
    for name in (steps.GATE, steps.ZIP, steps.DIMENSIONS):
        steps.run_step(ctx, exp, name)
    dest = policy.destinations[0]
    ctx.butler(dest, writeable=True)  # opened before the lock: the fault hits the check and the ingest
    return night, policy, exp, ctx, dest


class Locker:
    """Another connection holding an exclusive transaction on a registry until ``release()``."""

    def __init__(self, registry):
        self.conn = sqlite3.connect(registry, isolation_level=None, check_same_thread=False)
        self.conn.execute("BEGIN EXCLUSIVE")
        self.released = threading.Event()

    def release(self):
        if not self.released.is_set():
            self.conn.rollback()
            self.conn.close()
            self.released.set()


def registry_of(night, dest) -> str:
    return str(night.destination_repos[0] / "gen3.sqlite3")


def retry_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == retry.__name__]


def test_lock_outlasting_the_budget_fails_naming_it_and_leaves_nothing_ingested(night, caplog):
    night_, policy, exp, ctx, dest = night
    lock = Locker(registry_of(night_, dest))
    try:
        with caplog.at_level(logging.WARNING, logger=retry.__name__), pytest.raises(Exception) as err:
            steps.run_butler(ctx, exp, dest)
    finally:
        lock.release()
    assert "database is locked" in str(err.value) and retry.is_transient_butler(err.value)
    lines = retry_lines(caplog)
    assert sum(f"/{retry.ATTEMPTS} in " in line and "database is locked" in line for line in lines) == (
        retry.ATTEMPTS - 1), lines
    assert any(f"gave up after {retry.ATTEMPTS} attempts" in line for line in lines)
    # nothing half-ingested: no dataset and no visit record of the exposure in the destination
    ok, state = butlerops.ingested(ctx.butler(dest, writeable=True), ctx.refs(exp), ctx.visits(exp), exp.instrument)
    assert not ok and state.startswith(f"0/{len(ctx.refs(exp))} datasets stored")
    assert steps.run_butler(steps.Context(policy), exp, dest).state == "done"  # lock gone: the next run ingests


def test_lock_released_during_the_retries_lets_the_same_run_ingest(night, caplog):
    night_, policy, exp, ctx, dest = night
    lock = Locker(registry_of(night_, dest))

    class ReleaseOnRetry(logging.Handler):  # the holder commits when the first retry is announced: no timing guess
        def emit(self, record):
            if "attempt 2/" in record.getMessage():
                lock.release()

    handler = ReleaseOnRetry()
    logging.getLogger(retry.__name__).addHandler(handler)
    try:
        with caplog.at_level(logging.WARNING, logger=retry.__name__):
            assert steps.run_butler(ctx, exp, dest).state == "done"
    finally:
        logging.getLogger(retry.__name__).removeHandler(handler)
        lock.release()
    assert any("database is locked" in line for line in retry_lines(caplog))
    assert steps.exposure_status(steps.Context(policy), exp, only=[steps.butler_step(dest)]).complete


def test_a_schema_error_is_not_retried():
    from sqlalchemy.exc import IntegrityError, OperationalError

    assert retry.is_transient_butler(OperationalError("INSERT", {}, sqlite3.OperationalError("database is locked")))
    assert not retry.is_transient_butler(OperationalError("SELECT", {}, sqlite3.OperationalError("no such table: x")))
    assert not retry.is_transient_butler(IntegrityError("INSERT", {}, sqlite3.IntegrityError("UNIQUE failed")))
