"""SciCat inside the ALS DAGs, against the local SciCat stand-in (a real HTTP server that pyscicat talks to):
bl832_new_file ingests with the datablock path rewritten to the storage root; a scan not catalogued fails
ingest_scicat (SciCat refusing the login at once, SciCat down after the DAG's retries) with one alert naming the
service's message, while the data still moves; disabled is a success; and bl832_reconcile is the catch-up path
that ingests the scan once SciCat is back."""

from __future__ import annotations

import json
import os
import sqlite3
from datetime import UTC, datetime, timedelta

import _als_support as s
import pytest

from facility_data.localsite.scicat_standin import SciCatStandIn

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


@pytest.mark.parametrize("dag_id", ["bl832_new_file", "bl7012_new_file", "bl733_new_file"])
def test_ingest_scicat_is_a_leaf_so_a_failure_never_holds_data_back(airflow_db, dag_id):
    dag = s.dag(dag_id)
    assert dag.get_task("ingest_scicat").downstream_task_ids == set()
    # the copies, raw_copies and the announcements do not wait for it (their trigger rules are unchanged)
    assert all("ingest_scicat" not in t.upstream_task_ids for t in dag.tasks)
    assert all(t.trigger_rule == "all_success" for t in dag.tasks if t.task_id.startswith("announce_"))


def test_scicat_ingest_in_the_dag(site, scicat):
    watcher_path = s.write_scan(site)
    dr = s.dag("bl832_new_file").test(run_conf={"file_path": watcher_path})
    assert str(dr.state) == "success"
    (pid,) = scicat.datasets
    assert _xcom(dr, "ingest_scicat") == {"status": "ingested", "pid": pid}
    (block,) = scicat.origdatablocks[pid]
    assert block["dataFileList"][0]["path"] == watcher_path.replace("/global/raw/", "/data/raw/")
    assert [a["caption"] for a in scicat.attachments[pid]] == ["raw image"]


def _try_number(dr, task_id: str) -> int:
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session

    with create_session() as session:
        return session.query(TaskInstance).filter_by(dag_id=dr.dag_id, run_id=dr.run_id, task_id=task_id).one() \
            .try_number


def _with_retries(dag, retries: int = 2):
    """The production retries for ingest_scicat (s.dag turns retries off), without the 30 s wait between tries."""
    task = dag.get_task("ingest_scicat")
    task.retries, task.retry_delay = retries, timedelta(0)
    return dag


def _data_moved(site, watcher_path: str, st: dict) -> None:
    """The scan's copies were made and verified whatever SciCat did: ingest_scicat blocks nothing."""
    assert st["copy_spot_to_data"] == st["verify_data_copy"] == "success", sorted(st.items())
    assert st["copy_data_to_nersc"] == st["verify_nersc_copy"] == st["raw_copies"] == "success", sorted(st.items())
    rel = watcher_path.removeprefix("/global/")
    assert ((s.endpoint_dir(site, "spot832") / rel).read_bytes() == (s.endpoint_dir(site, "data832") / rel)
            .read_bytes() == (s.endpoint_dir(site, "nersc832") / rel).read_bytes())


def test_scicat_refusing_login_fails_the_task_at_once_with_an_alert_and_data_still_moves(site, scicat, monkeypatch,
                                                                                          caplog):
    monkeypatch.setenv("AIRFLOW_CONN_SCICAT_DEFAULT", scicat.connection_json(password="stale-password-789"))
    watcher_path = s.write_scan(site)
    dr = _with_retries(s.dag("bl832_new_file")).test(run_conf={"file_path": watcher_path})
    st = s.states(dr)
    assert str(dr.state) == "failed" and st["ingest_scicat"] == "failed", sorted(st.items())
    _data_moved(site, watcher_path, st)
    assert _try_number(dr, "ingest_scicat") == 1  # a retry cannot fix a refused login: no retries spent
    errors = [r for r in caplog.records if r.levelname == "ERROR" and r.getMessage().startswith("SciCat ingest of")]
    (line,) = errors
    assert "raw/" in line.getMessage() and "refused (401)" in line.getMessage() and "not retryable" in line.getMessage()
    assert "stale-password-789" not in caplog.text
    (alert,) = [a for a in _alerts(site) if a["task_id"] == "ingest_scicat"]
    assert "AirflowFailException" in alert["error"] and "refused (401)" in alert["error"]
    assert not scicat.datasets


def test_a_transient_scicat_outage_gets_the_dags_retries_and_ends_green(site, scicat):
    scicat.fail("POST", "auth/login", status=503, times=4)  # every login attempt of the first try (3 retries)
    watcher_path = s.write_scan(site)
    dr = _with_retries(s.dag("bl832_new_file")).test(run_conf={"file_path": watcher_path})
    st = s.states(dr)
    assert str(dr.state) == "success", sorted(st.items())
    assert _try_number(dr, "ingest_scicat") == 2
    (pid,) = scicat.datasets
    assert _xcom(dr, "ingest_scicat") == {"status": "ingested", "pid": pid}
    assert not (site / "alerts.jsonl").exists()  # a retried try is not an alert


def test_scicat_down_fails_the_task_after_retries_and_the_reconcile_catches_the_scan_up(site, scicat, caplog):
    scicat.down()
    watcher_path = s.write_scan(site)
    dr = _with_retries(s.dag("bl832_new_file")).test(run_conf={"file_path": watcher_path})
    st = s.states(dr)
    assert str(dr.state) == "failed" and st["ingest_scicat"] == "failed", sorted(st.items())
    _data_moved(site, watcher_path, st)
    assert _try_number(dr, "ingest_scicat") == 3  # the DAG's 2 retries came first
    unreachable = "/auth/login unreachable after 4 attempt(s): ConnectionError"
    (alert,) = [a for a in _alerts(site) if a["task_id"] == "ingest_scicat"]  # one alert, on the last try
    assert unreachable in alert["error"] and alert["try_number"] == 3
    assert "AirflowException: SciCat ingest of raw/" in alert["error"]  # the URL is masked in alerts, as every URL
    assert (f"SciCat ingest of {watcher_path.removeprefix('/global/')} failed: SciCatError: SciCat POST {scicat.url}"
            f"{unreachable}") in caplog.text

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


def test_scicat_disabled_is_a_success_that_asks_nothing(site, scicat):
    from facility_data.als.beamline import load_beamline
    from facility_data.als.dags.new_file import build_new_file_dag

    bl = load_beamline("bl832")
    dag = build_new_file_dag(bl.model_copy(update={"scicat": bl.scicat.model_copy(update={"enabled": False})}))
    for t in dag.tasks:
        t.retries = 0
    dr = dag.test(run_conf={"file_path": s.write_scan(site)})
    assert str(dr.state) == "success", s.states(dr)
    assert _xcom(dr, "ingest_scicat") == {"status": "disabled"}
    assert scicat.calls == [] and not (site / "alerts.jsonl").exists()


def test_scicat_still_down_at_the_reconcile_fails_the_run_with_the_reason(site, scicat):
    scicat.down()
    assert str(s.dag("bl832_new_file").test(run_conf={"file_path": s.write_scan(site)}).state) == "failed"
    _settled(site)
    dr = s.dag("bl832_reconcile").test(run_conf=DAY)
    assert str(dr.state) == "failed"
    (report,) = [json.loads(p.read_text()) for p in (site / "reports" / "als_reconcile" / "bl832").glob("*.json")]
    (scan,) = report["scans"]
    assert (scan["state"], scan["step"]) == ("partial", "scicat_ingest")
    assert "unreachable" in scan["reason"] and "ConnectionError" in scan["reason"]
