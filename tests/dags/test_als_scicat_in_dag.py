"""SciCat inside the ALS DAGs, against the local SciCat stand-in (a real HTTP server that pyscicat talks to):
bl832_new_file ingests with the datablock path rewritten to the storage root; SciCat down or refusing the login is
a warning + alert with the service's message while the data still moves; and bl832_reconcile is the catch-up path
that ingests the scan once SciCat is back."""

from __future__ import annotations

import json
import os
import sqlite3
from datetime import UTC, datetime, timedelta

import _als_support as s
import pytest
from standins.scicat import SciCatStandIn

pytestmark = pytest.mark.dagtest
DAY = {"first_day": "2024-01-01", "last_day": "2024-01-01"}


@pytest.fixture
def scicat():
    with SciCatStandIn() as server:
        yield server


@pytest.fixture
def site(airflow_db, tmp_path, monkeypatch, scicat):
    root = s.private_site(tmp_path, monkeypatch)
    # no reconstruction: these tests are about the catalogue, and the reconcile then judges only the raw chain
    monkeypatch.setenv("AIRFLOW_VAR_BL832_DECISION_SETTINGS", '{"local": false, "nersc": false, "alcf": false}')
    monkeypatch.setenv("AIRFLOW_CONN_SCICAT_DEFAULT", scicat.connection_json(backoff=0))
    return root


def _xcom(dr, task_id):
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        row = session.query(XComModel).filter_by(dag_id=dr.dag_id, run_id=dr.run_id, task_id=task_id,
                                                 key="return_value").one()
        return row.value if not isinstance(row.value, str) else json.loads(row.value)


def _alerts(site) -> list[dict]:
    return [json.loads(x) for x in (site / "alerts.jsonl").read_text().splitlines()]


def _settled(site) -> None:
    """Age the scan files and ledger events past the reconcile's settle time, as if the chain had run hours ago."""
    then = (datetime.now(UTC) - timedelta(hours=3)).timestamp()
    for p in (site / "endpoints").rglob("*"):
        os.utime(p, (then, then), follow_symlinks=False)
    with sqlite3.connect(s.ledger(site).path) as db:
        db.execute("UPDATE events SET time=?", (datetime.fromtimestamp(then, UTC).isoformat(),))


def test_scicat_ingest_in_the_dag(site, scicat):
    watcher_path = s.write_scan(site)
    dr = s.dag("bl832_new_file").test(run_conf={"file_path": watcher_path})
    assert str(dr.state) == "success"
    (pid,) = scicat.datasets
    assert _xcom(dr, "ingest_scicat") == {"status": "ingested", "pid": pid}
    (block,) = scicat.origdatablocks[pid]
    assert block["dataFileList"][0]["path"] == watcher_path.replace("/global/raw/", "/data/raw/")
    assert [a["caption"] for a in scicat.attachments[pid]] == ["raw image"]


def test_scicat_refusing_login_is_a_warning_and_data_still_moves(site, scicat, monkeypatch, caplog):
    monkeypatch.setenv("AIRFLOW_CONN_SCICAT_DEFAULT", scicat.connection_json(password="stale-password-789"))
    watcher_path = s.write_scan(site)
    dr = s.dag("bl832_new_file").test(run_conf={"file_path": watcher_path})
    st = s.states(dr)
    assert str(dr.state) == "success"
    assert st["copy_data_to_nersc"] == "success", sorted(st.items())
    result = _xcom(dr, "ingest_scicat")
    assert result["status"] == "failed" and "refused (401)" in result["error"]
    assert "SciCat ingest of raw/" in caplog.text and "failed (data movement continues)" in caplog.text
    assert "stale-password-789" not in caplog.text
    assert _alerts(site)[-1]["task_id"] == "ingest_scicat" and not scicat.datasets


def test_scicat_down_is_alerted_and_the_reconcile_catches_the_scan_up(site, scicat, caplog):
    scicat.down()
    watcher_path = s.write_scan(site)
    dr = s.dag("bl832_new_file").test(run_conf={"file_path": watcher_path})
    st = s.states(dr)
    assert str(dr.state) == "success" and st["copy_data_to_nersc"] == "success", sorted(st.items())
    result = _xcom(dr, "ingest_scicat")
    assert result["status"] == "failed"
    assert f"SciCat POST {scicat.url}/auth/login unreachable after 4 attempt(s): ConnectionError" in result["error"]
    alert = _alerts(site)[-1]
    assert alert["task_id"] == "ingest_scicat" and "unreachable" in alert["error"]

    # SciCat is back: the reconcile (the catch-up path) runs the chain's idempotent ingest for the scan
    scicat.up()
    _settled(site)
    dr = s.dag("bl832_reconcile").test(run_conf=DAY)
    assert str(dr.state) == "success", s.states(dr)
    (pid,) = scicat.datasets
    (block,) = scicat.origdatablocks[pid]
    assert block["dataFileList"][0]["path"] == watcher_path.replace("/global/raw/", "/data/raw/")
    (report,) = [json.loads(p.read_text()) for p in (site / "reports" / "als_reconcile" / "bl832").glob("*.json")]
    (scan,) = report["scans"]
    assert (scan["state"], scan["scicat"], scan["unchecked"]) == ("done", pid, [])

    # caught up once: a second reconcile only confirms
    posts = scicat.count("POST", "Datasets")
    assert str(s.dag("bl832_reconcile").test(run_conf=DAY).state) == "success"
    assert scicat.count("POST", "Datasets") == posts and len(scicat.datasets) == 1


def test_scicat_still_down_at_the_reconcile_fails_the_run_with_the_reason(site, scicat):
    scicat.down()
    s.dag("bl832_new_file").test(run_conf={"file_path": s.write_scan(site)})
    _settled(site)
    dr = s.dag("bl832_reconcile").test(run_conf=DAY)
    assert str(dr.state) == "failed"
    (report,) = [json.loads(p.read_text()) for p in (site / "reports" / "als_reconcile" / "bl832").glob("*.json")]
    (scan,) = report["scans"]
    assert (scan["state"], scan["step"]) == ("partial", "scicat_ingest")
    assert "unreachable" in scan["reason"] and "ConnectionError" in scan["reason"]
