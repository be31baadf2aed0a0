"""SciCat inside bl832_new_file against canned HTTP responses: an ingest with the datablock path rewritten to the
storage root, and a refused login that is a warning + alert while the data still moves."""

from __future__ import annotations

import json

import _als_support as s
import pytest
import responses

pytestmark = pytest.mark.dagtest
API = "http://scicat.test/api/v3"
PID = "20.500.12269/dag-1"


@pytest.fixture
def site(airflow_db, tmp_path, monkeypatch):
    root = s.private_site(tmp_path, monkeypatch)
    monkeypatch.setenv("AIRFLOW_CONN_SCICAT_DEFAULT", json.dumps(
        {"conn_type": "scicat", "host": API, "login": "ingestor", "password": "canned-password"}))
    return root


def _xcom(dr, task_id):
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        row = session.query(XComModel).filter_by(dag_id=dr.dag_id, run_id=dr.run_id, task_id=task_id,
                                                 key="return_value").one()
        return row.value if not isinstance(row.value, str) else json.loads(row.value)


def test_scicat_ingest_in_the_dag(site):
    watcher_path = s.write_scan(site)
    quoted = PID.replace("/", "%2F")
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        rsps.post(f"{API}/auth/login", json={"access_token": "tok", "userId": "ingestor"})
        rsps.get(f"{API}/Datasets", json=[])
        rsps.post(f"{API}/Datasets", json={"pid": PID})
        rsps.get(f"{API}/Datasets/{quoted}/origdatablocks", json=[])
        block = rsps.post(f"{API}/Datasets/{quoted}/origdatablocks", json={"id": "odb"})
        rsps.get(f"{API}/Datasets/{quoted}/attachments", json=[])
        rsps.post(f"{API}/Datasets/{quoted}/attachments", json={"id": "att"})
        dr = s.dag("bl832_new_file").test(run_conf={"file_path": watcher_path})
    assert str(dr.state) == "success"
    assert _xcom(dr, "ingest_scicat") == {"status": "ingested", "pid": PID}
    sent = json.loads(block.calls[0].request.body)
    assert sent["dataFileList"][0]["path"] == watcher_path.replace("/global/raw/", "/data/raw/")


def test_scicat_refusing_login_is_a_warning_and_data_still_moves(site, caplog):
    watcher_path = s.write_scan(site)
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        rsps.post(f"{API}/auth/login", status=401, json={"error": "Unauthorized"})
        dr = s.dag("bl832_new_file").test(run_conf={"file_path": watcher_path})
    st = s.states(dr)
    assert str(dr.state) == "success"
    assert st["copy_data_to_nersc"] == "success" and st["announce_local"] == "success", sorted(st.items())
    result = _xcom(dr, "ingest_scicat")
    assert result["status"] == "failed" and "401" in result["error"]
    assert "SciCat ingest of raw/" in caplog.text and "failed (data movement continues)" in caplog.text
    assert "canned-password" not in caplog.text
    alerts = [json.loads(x) for x in (site / "alerts.jsonl").read_text().splitlines()]
    assert alerts[-1]["task_id"] == "ingest_scicat"
