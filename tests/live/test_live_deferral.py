"""A remote wait under the real scheduler and triggerer: a Globus copy (real globus-sdk, the Globus stand-in
serving the shipped facility collections) defers, holds no worker slot while Globus works, and resumes from the
triggerer's event when the task ends (issue 11: "nothing defers in the shipped DAGs; no test runs a real
triggerer")."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.live, pytest.mark.integration, pytest.mark.timeout(900)]
DAG_ID = "live_globus_deferral"


def _state(live, run_id: str) -> str:
    return live.api("GET", f"/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances/copy")["state"]


def _logs(live, run_id: str) -> str:
    """The task's logs (the worker's and the triggerer's files) once the run has ended, for a failure message."""
    live.server.wait_run(DAG_ID, run_id, timeout=120)
    logs = sorted((Path(live.server.env["AIRFLOW_HOME"]) / "logs" / f"dag_id={DAG_ID}").rglob("*.log"))
    return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-6000:]}" for p in logs)


def test_a_globus_copy_defers_to_the_triggerer_and_resumes_when_globus_finishes(live_airflow):
    src = live_airflow.globus_file("spot832", "raw/live/scan.h5")
    src.parent.mkdir(parents=True, exist_ok=True)
    src.write_bytes(b"live scan " * 10_000)
    dst = live_airflow.globus_file("nersc832", "raw/live/scan.h5")
    live_airflow.globus.hold()  # the submitted task stays ACTIVE until released
    try:
        live_airflow.unpause(DAG_ID)
        run_id = live_airflow.api("POST", f"/dags/{DAG_ID}/dagRuns", json={"logical_date": None})["dag_run_id"]
        deadline, seen = time.monotonic() + 300, []
        while time.monotonic() < deadline and (not seen or seen[-1] != "deferred"):
            seen.append(_state(live_airflow, run_id))
            assert seen[-1] not in ("failed", "success", "upstream_failed"), seen
            time.sleep(1)
        assert seen[-1] == "deferred", f"never deferred: {seen}"
        # deferred means no worker process holds it: it stays deferred while Globus works, nothing copied yet
        time.sleep(3)
        assert _state(live_airflow, run_id) == "deferred" and not dst.exists(), _logs(live_airflow, run_id)
        transfers = [t.doc for t in live_airflow.globus.tasks.values() if t.doc["type"] == "TRANSFER"]
        assert len(transfers) == 1 and transfers[0]["status"] == "ACTIVE", transfers
    finally:
        live_airflow.globus.release()
    state = live_airflow.wait_runs(DAG_ID, [run_id], timeout=300)[run_id]
    assert state == "success", live_airflow.task_log(DAG_ID, run_id, "copy")
    assert dst.read_bytes() == src.read_bytes()
    assert len([t for t in live_airflow.globus.tasks.values() if t.doc["type"] == "TRANSFER"]) == 1  # never twice
    log = live_airflow.task_log(DAG_ID, run_id, "copy")
    assert transfers[0]["task_id"] in log
