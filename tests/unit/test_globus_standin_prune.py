"""Pruning over Globus collections: a copy made by a Globus task that SUCCEEDED with checksum verification is a
verified twin; the sweep deletes through a Globus delete only with that evidence and a matching size now, and keeps
(with the reason in the audit) when the twin's size changed, the twin is missing, the task ran without
verify_checksum, or its checksum algorithm is not accepted. Real globus-sdk, the Globus Transfer stand-in, the
shipped facility endpoints and the shipped bl832 beamline."""

from __future__ import annotations

import hashlib
import sqlite3
from datetime import UTC, datetime, timedelta

import pytest
from globus_site import FACILITY_ENDPOINTS, PAYLOAD, ctx, globus_site, put  # tests/unit is on sys.path

from facility_data.als.beamline import load_beamline
from facility_data.als.ledger import Ledger
from facility_data.als.prune import Sweep
from facility_data.als.steps import record_copy
from facility_data.hooks.globus import GlobusHook
from facility_data.operators.globus import GlobusTransferOperator

KEY = "ALS-11111_user/20240101_120000_sample.h5"
SCAN = f"raw/{KEY}"
SHA = "sha256:" + hashlib.sha256(PAYLOAD).hexdigest()


@pytest.fixture
def site(monkeypatch, tmp_path):
    yield from globus_site(monkeypatch, tmp_path)


@pytest.fixture
def env(site, tmp_path):
    bl = load_beamline("bl832")
    # deletion on at data only (shipped: delete false everywhere)
    bl = bl.model_copy(update={"locations": {r: loc.model_copy(update={"delete": r == "data"})
                                             for r, loc in bl.locations.items()}})
    ledger = Ledger(tmp_path / "ledger.sqlite")
    ledger.record_scan(bl.id, SCAN, export_controlled=False, file_path=f"/global/{SCAN}", size=len(PAYLOAD),
                       checksum=SHA)
    return bl, ledger, scan_of(bl, KEY)


def scan_of(bl, key: str) -> dict:
    """The parts of a new-file scan record that record_copy reads."""
    return {"key": key, "relative": f"raw/{key}", "fingerprint": {"size": len(PAYLOAD), "checksum": SHA},
            "paths": {role: {"raw": bl.location(role).path_of(key)} for role in ("spot", "data", "nersc")}}


def hop(site, env, source: str, destination: str, key: str = KEY, **op_args) -> dict:
    """Copy the scan source -> destination with the real operator, then verify and record it (record_copy)."""
    bl, ledger, _ = env
    scan = scan_of(bl, key)
    src, dst = bl.location(source), bl.location(destination)
    result = GlobusTransferOperator(
        task_id=f"copy_{destination}", source_endpoint=src.endpoint, source_path=src.path_of(key),
        destination_endpoint=dst.endpoint, destination_path=dst.path_of(key), endpoints_file=str(FACILITY_ENDPOINTS),
        deferrable=False, poll_interval=0.02, export_controlled=False, **op_args).execute(ctx(f"copy_{destination}", run_id=key))
    record_copy(bl, site.eps, ledger, scan, source=source, destination=destination, transfer=result)
    return result


def arrive(site, env, key: str = KEY, *, nersc_hop: dict | None = None) -> None:
    """A scan at spot832, copied to data832 and on to NERSC, both hops checksum-verified unless told otherwise."""
    bl, ledger, _ = env
    ledger.record_scan(bl.id, f"raw/{key}", export_controlled=False, file_path=f"/global/raw/{key}",
                       size=len(PAYLOAD), checksum=SHA)
    put(site, "spot832", bl.location("spot").path_of(key))
    hop(site, env, "spot", "data", key, source_checksum=SHA)
    hop(site, env, "data", "nersc", key, **(nersc_hop or {"source_checksum": SHA}))


def sweep(site, env, days=40):
    bl, ledger, _ = env
    backend = GlobusHook().get_transfer_backend(poll_interval=0.02)
    return Sweep(bl, site.eps, ledger, now=datetime.now(UTC) + timedelta(days=days), dry_run=False,
                 backend=lambda ep: backend, run_id="scheduled__1", delete_deadline_seconds=60).run()


def decision(report, location, key=KEY):
    (d,) = [d for d in report.decisions if d.location == location and d.key == key]
    return d


def data_file(site, env):
    return site.local("data832_raw", env[0].location("data").path_of(KEY))


def nersc_file(site, env):
    return site.local("nersc832", env[0].location("nersc").path_of(KEY))


def test_verified_globus_copies_are_recorded_with_their_evidence(site, env):
    arrive(site, env)
    _, ledger, _ = env
    for role in ("data", "nersc"):
        rec = ledger.copy("bl832", role, KEY)
        assert rec.checksum == SHA and rec.checksum_algorithm == "SHA256"
        assert rec.verified_by.startswith("globus:") and rec.verified_by.removeprefix("globus:") in site.standin.tasks
    assert ledger.copy("bl832", "spot", KEY).verified_by is None  # nothing verified the spot file itself


def test_sweep_deletes_a_globus_copy_with_evidence_through_a_globus_delete_with_a_deadline(site, env):
    arrive(site, env)
    report = sweep(site, env)
    d = decision(report, "data")
    assert d.action == "deleted", d.reason
    assert not data_file(site, env).exists() and nersc_file(site, env).read_bytes() == PAYLOAD
    (delete,) = [t.doc for t in site.standin.tasks.values() if t.doc["type"] == "DELETE"]
    assert delete["status"] == "SUCCEEDED" and delete["deadline"]
    assert env[1].copy("bl832", "data", KEY).state == "deleted"
    assert decision(report, "spot").action == "kept"  # its twin at data has just been deleted; spot has no evidence


def test_two_items_of_one_location_get_a_delete_task_each(site, env):
    other = "ALS-11111_user/20240101_130000_other.h5"
    arrive(site, env)
    arrive(site, env, other)
    report = sweep(site, env)
    assert decision(report, "data").action == decision(report, "data", other).action == "deleted"
    assert len([t for t in site.standin.tasks.values() if t.doc["type"] == "DELETE"]) == 2
    for key in (KEY, other):
        assert not site.local("data832_raw", env[0].location("data").path_of(key)).exists()


def test_twin_whose_size_changed_keeps_the_copy(site, env):
    arrive(site, env)
    nersc_file(site, env).write_bytes(PAYLOAD + b"appended")
    d = decision(sweep(site, env), "data")
    assert d.action == "kept" and "B now, the ledger recorded" in d.reason
    assert data_file(site, env).exists()


def test_missing_twin_keeps_the_copy(site, env):
    arrive(site, env)
    nersc_file(site, env).unlink()
    d = decision(sweep(site, env), "data")
    assert d.action == "kept" and "no copy" in d.reason and "found at nersc" in d.reason
    assert data_file(site, env).exists()


def test_copy_made_without_verify_checksum_is_no_evidence(site, env):
    arrive(site, env, nersc_hop={"verify_checksum": False})
    assert env[1].copy("bl832", "nersc", KEY).verified_by is None
    d = decision(sweep(site, env), "data")
    assert d.action == "kept" and "no verify_checksum evidence" in d.reason
    assert data_file(site, env).exists()


def test_checksum_algorithm_not_accepted_is_no_evidence(site, env):
    arrive(site, env, nersc_hop={"checksum_algorithm": "CRC32"})  # Globus verifies, but 32 bits prove little
    assert env[1].copy("bl832", "nersc", KEY).verified_by is None
    d = decision(sweep(site, env), "data")
    assert d.action == "kept" and "no verify_checksum evidence" in d.reason
    assert data_file(site, env).exists()


def test_a_task_id_that_did_not_make_this_copy_is_no_evidence(site, env):
    bl, ledger, scan = env
    put(site, "spot832", bl.location("spot").path_of(KEY))
    spot_task = hop(site, env, "spot", "data", source_checksum=SHA)["task_id"]
    put(site, "nersc832", bl.location("nersc").path_of(KEY))  # the right bytes, put there by no Globus task
    record_copy(bl, site.eps, ledger, scan, source="data", destination="nersc",
                transfer={"task_id": spot_task, "checksum_algorithm": "SHA256"})  # a task that copied elsewhere
    assert ledger.copy("bl832", "nersc", KEY).verified_by is None
    d = decision(sweep(site, env), "data")
    assert d.action == "kept" and "no verify_checksum evidence" in d.reason


def test_ledger_from_before_evidence_is_migrated_and_its_checksums_are_not_trusted(site, env, tmp_path):
    bl, _, _ = env
    old = tmp_path / "old.sqlite"
    db = sqlite3.connect(old)
    db.executescript("""
    CREATE TABLE copies (beamline TEXT NOT NULL, location TEXT NOT NULL, key TEXT NOT NULL, scan TEXT NOT NULL,
        endpoint TEXT NOT NULL, path TEXT NOT NULL, size INTEGER, checksum TEXT, arrived_at TEXT NOT NULL,
        state TEXT NOT NULL, updated_at TEXT NOT NULL, run_id TEXT, PRIMARY KEY (beamline, location, key));""")
    now = datetime.now(UTC).isoformat()
    for role, ep in (("data", "data832_raw"), ("nersc", "nersc832")):
        db.execute("INSERT INTO copies VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                   ("bl832", role, KEY, SCAN, ep, bl.location(role).path_of(KEY), len(PAYLOAD), SHA, now, "present",
                    now, None))
    db.commit()
    db.close()
    ledger = Ledger(old)
    ledger.record_scan("bl832", SCAN, export_controlled=False, file_path=f"/global/{SCAN}")
    rec = ledger.copy("bl832", "nersc", KEY)
    assert rec.checksum == SHA and rec.verified_by is None and rec.checksum_algorithm is None
    put(site, "data832_raw", bl.location("data").path_of(KEY))
    put(site, "nersc832", bl.location("nersc").path_of(KEY))
    d = decision(sweep(site, (bl, ledger, env[2])), "data")
    assert d.action == "kept" and "no verify_checksum evidence" in d.reason


def test_dry_run_with_evidence_deletes_nothing(site, env):
    arrive(site, env)
    bl, ledger, _ = env
    backend = GlobusHook().get_transfer_backend(poll_interval=0.02)
    report = Sweep(bl, site.eps, ledger, now=datetime.now(UTC) + timedelta(days=40), dry_run=True,
                   backend=lambda ep: backend).run()
    assert decision(report, "data").action == "would_delete"
    assert data_file(site, env).exists()
    assert not [t for t in site.standin.tasks.values() if t.doc["type"] == "DELETE"]
