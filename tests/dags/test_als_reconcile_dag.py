"""bl832_reconcile (and its bl7012/bl733 twins) as DAGs, with dag.test() on real files at the local endpoints: each
injected loss is repaired with the chain's steps or fails the run (the alert), a per-day report is written either
way, and a bad conf fails before anything is read or touched."""

from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path

import _als_support as s
import pytest
import responses

pytestmark = pytest.mark.dagtest

DAY = {"first_day": "2024-01-01", "last_day": "2024-01-01"}
API = "http://scicat.test/api/v3"


@pytest.fixture
def site(airflow_db, tmp_path, monkeypatch):
    root = s.private_site(tmp_path, monkeypatch)
    # No reconstruction expected: this file tests the raw chain (a missing reconstruction is its own test).
    monkeypatch.setenv("AIRFLOW_VAR_BL832_DECISION_SETTINGS", '{"local": false, "nersc": false, "alcf": false}')
    monkeypatch.setenv("AIRFLOW_CONN_SCICAT_DEFAULT", json.dumps(
        {"conn_type": "scicat", "host": API, "login": "ingestor", "password": "canned-password"}))
    return root


@contextmanager
def scicat(*, up: bool = True):
    """Canned SciCat answers: every dataset is created (or, ``up`` false, the login is refused)."""
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        if not up:
            rsps.post(f"{API}/auth/login", status=401, json={"error": "Unauthorized"})
            yield rsps
            return
        rsps.post(f"{API}/auth/login", json={"access_token": "tok", "userId": "ingestor"})
        rsps.get(f"{API}/Datasets", json=[])
        rsps.post(f"{API}/Datasets", json={"pid": "20.500.12269/x"})
        rsps.get(f"{API}/Datasets/20.500.12269%2Fx/origdatablocks", json=[])
        rsps.post(f"{API}/Datasets/20.500.12269%2Fx/origdatablocks", json={"id": "odb"})
        rsps.get(f"{API}/Datasets/20.500.12269%2Fx/attachments", json=[])
        rsps.post(f"{API}/Datasets/20.500.12269%2Fx/attachments", json={"id": "att"})
        yield rsps


def raw(site: Path, endpoint: str, name: str = "20240101_120000_shell", subdir: str = "raw") -> Path:
    return s.endpoint_dir(site, endpoint) / subdir / s.FOLDER / f"{name}.h5"


def stop_after(site: Path, watcher_path: str, step: str) -> None:
    """bl832_new_file's own steps up to ``step`` (validate or spot_to_data), as if the run had died there."""
    from facility_data.als.beamline import load_beamline
    from facility_data.als.steps import record_copy, validate_new_scan
    from facility_data.transfer import LocalTransfer, load_endpoints

    bl, eps = load_beamline("bl832"), load_endpoints()
    rec = validate_new_scan(bl, eps, s.ledger(site), {"file_path": watcher_path})
    if step == "spot_to_data":
        LocalTransfer().transfer(eps["spot832"], rec["paths"]["spot"]["raw"], eps["data832_raw"],
                                 rec["paths"]["data"]["raw"])
        record_copy(bl, eps, s.ledger(site), rec, source="spot", destination="data")


def settled(site: Path) -> None:
    """Age every scan file and ledger event past the 120-minute settle time, as if the chain had stopped then."""
    import os
    import sqlite3
    from datetime import UTC, datetime, timedelta

    then = datetime.now(UTC) - timedelta(hours=3)
    for p in (site / "endpoints").rglob("*"):
        os.utime(p, (then.timestamp(), then.timestamp()), follow_symlinks=False)
    with sqlite3.connect(s.ledger(site).path) as db:
        db.execute("UPDATE events SET time=?", (then.isoformat(),))


def reports(site: Path, beamline: str = "bl832") -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((site / "reports" / "als_reconcile" / beamline).glob("*.json"))]


def test_the_three_beamlines_have_a_reconcile_dag(airflow_db):
    assert {"bl832_reconcile", "bl7012_reconcile", "bl733_reconcile"} <= s.dag_ids()


def test_stopped_chains_are_repaired_and_the_run_is_green(site):
    stop_after(site, s.write_scan(site), "validate")
    stop_after(site, s.write_scan(site, "20240101_130000_second"), "spot_to_data")
    settled(site)
    with scicat():  # the chain never reached its ingest: the reconcile runs it
        dr = s.dag("bl832_reconcile").test(run_conf=DAY)
    assert str(dr.state) == "success", s.states(dr)
    for name in ("20240101_120000_shell", "20240101_130000_second"):
        spot = raw(site, "spot832", name).read_bytes()
        assert raw(site, "data832", name).read_bytes() == spot
        assert raw(site, "nersc832", name).read_bytes() == spot
    (doc,) = reports(site)
    assert doc["day"] == "2024-01-01" and doc["counts"]["done"] == 2
    assert sorted(tuple(x["repaired"]) for x in doc["scans"]) == [
        ("copy_data_to_nersc",), ("copy_spot_to_data", "copy_data_to_nersc")]
    assert all(x["scicat"] == "20.500.12269/x" and x["unchecked"] == [] for x in doc["scans"])
    (chart,) = (site / "reports" / "als_reconcile" / "bl832").glob("states_20240101_*.png")
    assert doc["chart"] == chart.name and chart.read_bytes().startswith(b"\x89PNG")

    settled(site)
    with scicat():
        dr = s.dag("bl832_reconcile").test(run_conf=DAY)  # idempotent: nothing left to do
    assert str(dr.state) == "success"
    assert all(x["repaired"] == [] for x in reports(site)[-1]["scans"])


def test_a_scan_still_in_flight_is_left_alone_and_the_run_is_green(site):
    s.write_scan(site)
    dr = s.dag("bl832_reconcile").test(run_conf=DAY)
    assert str(dr.state) == "success"
    assert not raw(site, "data832").exists()
    (doc,) = reports(site)
    assert doc["scans"] == [] and len(doc["in_flight"]) == 1


def test_a_lost_trigger_is_copied_on_site_and_fails_the_run_until_declared(site):
    s.write_scan(site)
    settled(site)
    dr = s.dag("bl832_reconcile").test(run_conf=DAY)
    assert str(dr.state) == "failed" and s.states(dr)["verdict"] == "failed"
    alerts = [json.loads(x) for x in (site / "alerts.jsonl").read_text().splitlines()]
    assert alerts[-1]["task_id"] == "verdict" and "is_export_control" in json.dumps(alerts[-1])
    assert raw(site, "data832").read_bytes() == raw(site, "spot832").read_bytes()
    assert not raw(site, "nersc832").exists()  # unknown export-control status: never off site
    (doc,) = reports(site)
    (scan,) = doc["scans"]
    assert (scan["state"], scan["step"], scan["repaired"]) == ("partial", "copy_data_to_nersc",
                                                               ["copy_spot_to_data"])


def test_a_scicat_ingest_that_still_fails_fails_the_run(site):
    stop_after(site, s.write_scan(site), "spot_to_data")
    settled(site)
    with scicat(up=False):
        dr = s.dag("bl832_reconcile").test(run_conf=DAY)
    assert str(dr.state) == "failed"
    assert raw(site, "nersc832").exists()  # the raw copies are repaired all the same
    (scan,) = reports(site)[0]["scans"]
    assert (scan["state"], scan["step"]) == ("partial", "scicat_ingest") and "401" in scan["reason"]


def test_a_missing_reconstruction_is_re_announced_and_the_run_fails_until_it_exists(site, monkeypatch):
    monkeypatch.setenv("AIRFLOW_VAR_BL832_DECISION_SETTINGS", '{"local": true, "nersc": true, "alcf": false}')
    stop_after(site, s.write_scan(site), "spot_to_data")
    settled(site)
    before = len(s.asset_events("x-als://bl832/recon/local"))
    with scicat():
        dr = s.dag("bl832_reconcile").test(run_conf=DAY)
    states = s.states(dr)
    assert str(dr.state) == "failed" and states["verdict"] == "failed"
    assert states["announce_local[0]"] == "success" and states["announce_nersc[0]"] == "success", states
    (event,) = s.asset_events("x-als://bl832/recon/local")[before:]
    assert event["file_path"] == f"/global/raw/{s.FOLDER}/20240101_120000_shell.h5"
    assert event["export_controlled"] is False and event["checksum"].startswith("sha256:")
    (scan,) = reports(site)[0]["scans"]
    assert (scan["state"], scan["step"]) == ("partial", "reconstruction")
    assert scan["repaired"] == ["copy_data_to_nersc", "announce_local", "announce_nersc"]

    settled(site)
    dr = s.dag("bl832_reconcile").test(run_conf={**DAY, "dry_run": True})
    assert len(s.asset_events("x-als://bl832/recon/local")) == before + 1  # a dry run announces nothing


def test_a_corrupted_copy_fails_the_run_and_goes_nowhere(site):
    stop_after(site, s.write_scan(site), "spot_to_data")
    data = raw(site, "data832")
    corrupt = bytearray(data.read_bytes())
    corrupt[len(corrupt) // 2] ^= 0xFF  # same size, other bytes
    data.write_bytes(bytes(corrupt))
    settled(site)
    dr = s.dag("bl832_reconcile").test(run_conf=DAY)
    assert str(dr.state) == "failed"
    assert not raw(site, "nersc832").exists()
    assert reports(site)[0]["scans"][0]["state"] == "inconsistent"


def test_dry_run_touches_nothing(site):
    stop_after(site, s.write_scan(site), "validate")
    settled(site)
    events = len(s.ledger(site).events("bl832"))
    dr = s.dag("bl832_reconcile").test(run_conf={**DAY, "dry_run": True})
    assert str(dr.state) == "failed"  # a partial scan is not done, dry run or not
    assert not raw(site, "data832").exists() and len(s.ledger(site).events("bl832")) == events
    assert reports(site)[0]["dry_run"] is True


@pytest.mark.parametrize("conf", [{**DAY, "dry-run": True}, {**DAY, "repair": "yes"}, {"last_day": "2999-01-01"}],
                         ids=["unknown-key", "wrong-type", "future"])
def test_bad_conf_fails_before_anything_is_touched(site, conf):
    from airflow.sdk.exceptions import ParamValidationError

    stop_after(site, s.write_scan(site), "validate")
    settled(site)
    events = len(s.ledger(site).events("bl832"))
    try:
        dr = s.dag("bl832_reconcile").test(run_conf=conf)
    except ParamValidationError:
        pass  # refused by the form itself
    else:
        assert str(dr.state) == "failed"
    assert not raw(site, "data832").exists() and len(s.ledger(site).events("bl832")) == events
    assert reports(site) == []


def test_bl7012_data_server_scan_gets_its_nersc_copy(site):
    from facility_data.als.beamline import load_beamline
    from facility_data.als.steps import validate_new_scan
    from facility_data.transfer import load_endpoints

    watcher_path = s.write_scan(site, endpoint="data7012")
    validate_new_scan(load_beamline("bl7012"), load_endpoints(), s.ledger(site), {"file_path": watcher_path})
    settled(site)
    with scicat():
        dr = s.dag("bl7012_reconcile").test(run_conf=DAY)
    assert str(dr.state) == "success", s.states(dr)
    assert raw(site, "nersc7012").read_bytes() == raw(site, "data7012").read_bytes()
    assert reports(site, "bl7012")[0]["counts"]["done"] == 1
