"""bl832_new_file on the facility profile: every endpoint a Globus collection (the shipped
include/endpoints.facility.yaml), served by the local Globus stand-in, real globus-sdk.

spot832 is mounted on the worker that validates the scan (its ``local_root``), as at the beamline, so the scan's
content fingerprint can be computed and the export-control rule can let it leave; data832 and NERSC are reached
through Globus only.
"""

from __future__ import annotations

import hashlib
import json
import sys

import _als_support as s
import pytest
import yaml

sys.path.insert(0, str(s.REPO / "tests" / "unit"))
from globus_site import FACILITY_ENDPOINTS, globus_site  # noqa: E402

pytestmark = pytest.mark.dagtest


@pytest.fixture
def site(airflow_db, tmp_path, monkeypatch):
    root = s.private_site(tmp_path, monkeypatch)
    monkeypatch.setenv("AIRFLOW_VAR_BL832_DECISION_SETTINGS", '{"local": false, "nersc": false, "alcf": false}')
    gen = globus_site(monkeypatch, tmp_path)
    g = next(gen)
    doc = yaml.safe_load(FACILITY_ENDPOINTS.read_text())
    spot_uuid = doc["endpoints"]["spot832"]["uuid"]
    doc["endpoints"]["spot832"]["local_root"] = str(g.dirs[spot_uuid])  # the beamline's mount of spot832
    eps_file = tmp_path / "endpoints.yaml"
    eps_file.write_text(yaml.safe_dump(doc))
    monkeypatch.setenv("FACILITY_ENDPOINTS_FILE", str(eps_file))
    g.root, g.endpoints_file = root, eps_file
    yield g
    gen.close()


def _include(site, tmp_path, monkeypatch, delete: tuple[str, ...] = ()) -> None:
    """A private include/ as a facility would set it: SciCat reads the raw file where data832 is mounted on the
    ingest worker (``scicat.h5_root``: Globus cannot read HDF5), deletion on for ``delete``."""
    include = s.enable_deletion(tmp_path, monkeypatch, delete)
    bl = include / "beamlines" / "bl832.yaml"
    data_uuid = yaml.safe_load(site.endpoints_file.read_text())["endpoints"]["data832"]["uuid"]
    text = bl.read_text().replace('h5_root: ""', f'h5_root: "{site.dirs[data_uuid] / "data"}"', 1)
    assert text != bl.read_text()
    bl.write_text(text)


def _scan(g, name="20240101_120000_shell") -> tuple[str, bytes]:
    from facility_data.demo import als_synthetic as synthetic

    p = g.local("spot832", f"raw/{s.FOLDER}/{name}.h5")
    p.parent.mkdir(parents=True, exist_ok=True)
    synthetic.write_scan(p, n_angles=s.ANGLES, size=s.SIZE, n_slices=s.SLICES, seed=3)
    return f"/global/raw/{s.FOLDER}/{name}.h5", p.read_bytes()


def test_new_file_moves_a_scan_through_globus_with_verified_checksums(site, tmp_path, monkeypatch, scicat_service):
    _include(site, tmp_path, monkeypatch)
    watcher_path, data = _scan(site, "20240101_120500_facility")
    dr = s.dag("bl832_new_file").test(run_conf={"file_path": watcher_path, "is_export_control": False})
    st = s.states(dr)
    assert str(dr.state) == "success", st
    assert st["copy_spot_to_data"] == st["copy_data_to_nersc"] == st["verify_nersc_copy"] == "success"
    rel = f"{s.FOLDER}/20240101_120500_facility.h5"
    assert site.local("data832_raw", rel).read_bytes() == data
    assert site.local("nersc832", f"raw/{rel}").read_bytes() == data
    ledger = s.ledger(site.root)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    for role in ("data", "nersc"):
        rec = ledger.copy("bl832", role, rel)
        assert rec is not None and rec.state == "present" and rec.checksum == digest, (role, rec)
    assert st["ingest_scicat"] == "success"
    assert [d for d in scicat_service.datasets.values() if "20240101_120500_facility" in json.dumps(d)], \
        "the scan is not catalogued"


def test_a_mount_missing_on_the_worker_fails_validate_loudly_and_nothing_moves(site, tmp_path):
    watcher_path, _ = _scan(site)
    doc = yaml.safe_load(site.endpoints_file.read_text())
    doc["endpoints"]["spot832"]["local_root"] = str(tmp_path / "not-mounted")
    site.endpoints_file.write_text(yaml.safe_dump(doc))
    dr = s.dag("bl832_new_file").test(run_conf={"file_path": watcher_path, "is_export_control": False})
    st = s.states(dr)
    assert str(dr.state) == "failed" and st["validate"] == "failed", st
    assert not [t for t in site.standin.tasks.values() if t.doc["type"] == "TRANSFER"]
    alerts = (site.root / "alerts.jsonl").read_text()
    assert "does not exist on this worker" in alerts and "not-mounted" in alerts


def test_an_export_controlled_scan_reaches_data832_and_never_nersc(site, tmp_path, monkeypatch):
    _include(site, tmp_path, monkeypatch)
    watcher_path, data = _scan(site, "20240101_130000_ec")
    dr = s.dag("bl832_new_file").test(run_conf={"file_path": watcher_path, "is_export_control": True})
    st = s.states(dr)
    assert st["copy_spot_to_data"] == "success" and st["copy_data_to_nersc"] != "success", st
    rel = f"{s.FOLDER}/20240101_130000_ec.h5"
    assert site.local("data832_raw", rel).read_bytes() == data
    assert not site.local("nersc832", f"raw/{rel}").exists()
    dests = [it["destination_path"] for t in site.standin.tasks.values() if t.doc["type"] == "TRANSFER"
             for it in t.items]
    assert [d for d in dests if d.startswith("/data/raw/")], dests  # the copy to data832 was submitted
    assert not [d for d in dests if "data_mover" in d], dests  # no transfer towards NERSC was ever submitted


def test_prune_deletes_the_spot832_copy_through_globus_once_its_twin_is_verified(site, tmp_path, monkeypatch):
    import sqlite3
    from datetime import UTC, datetime, timedelta

    _include(site, tmp_path, monkeypatch, delete=("spot",))
    watcher_path, data = _scan(site)
    dr = s.dag("bl832_new_file").test(run_conf={"file_path": watcher_path, "is_export_control": False})
    assert str(dr.state) == "success", s.states(dr)
    rel = f"{s.FOLDER}/20240101_120000_shell.h5"
    spot = site.local("spot832", f"raw/{rel}")
    with sqlite3.connect(site.root / "als" / "ledger.sqlite") as db:
        db.execute("UPDATE copies SET arrived_at=?", ((datetime.now(UTC) - timedelta(days=2)).isoformat(),))

    dr = s.dag("bl832_prune").test(run_conf={"dry_run": False})
    assert str(dr.state) == "success", s.states(dr)
    assert not spot.exists()
    assert site.local("data832_raw", rel).read_bytes() == data == site.local("nersc832", f"raw/{rel}").read_bytes()
    deletes = [t.doc for t in site.standin.tasks.values() if t.doc["type"] == "DELETE"]
    assert len(deletes) == 1 and deletes[0]["status"] == "SUCCEEDED", deletes

