"""Each remote-service operator in a DAG under dag.test(), triggers inline: SFAPI submit + deferrable sensor
against a local SFAPI server, Globus Compute (local pool and deferred service task), and deferred Globus transfer
and delete against canned Globus responses. The DAGs are test-only files in tests/dags/dagfiles/."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import responses
from globus_sdk.testing import load_response

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "unit"))
from fake_sfapi import FakeSFAPI  # noqa: E402

pytestmark = pytest.mark.dagtest
TRANSFER = "https://transfer.api.globus.org/v0.10"
COMPUTE = "https://compute.api.globus.org"


@pytest.fixture
def dagbag(airflow_db, monkeypatch):
    """The test-only DAG folder, declared as a second DAG bundle: dag.test() serializes a DAG by syncing the
    configured bundles, so a DAG outside every bundle cannot be run by it."""
    from airflow.dag_processing.dagbag import DagBag

    bundles = [{"name": "dags-folder", "classpath": "airflow.dag_processing.bundles.local.LocalDagBundle",
                "kwargs": {}},
               {"name": "operator-checks", "classpath": "airflow.dag_processing.bundles.local.LocalDagBundle",
                "kwargs": {"path": str(HERE / "dagfiles"), "refresh_interval": 0}}]
    monkeypatch.setenv("AIRFLOW__DAG_PROCESSOR__DAG_BUNDLE_CONFIG_LIST", json.dumps(bundles))
    bag = DagBag(dag_folder=str(HERE / "dagfiles"))
    assert bag.import_errors == {}
    return bag


def states(run) -> dict:
    return {ti.task_id: ti.state for ti in run.get_task_instances()}


def test_sfapi_submit_and_deferred_sensor(dagbag, monkeypatch):
    from joserfc.jwk import RSAKey

    key = RSAKey.generate_key(2048)
    fake = FakeSFAPI(RSAKey.import_key(key.as_dict(private=False)))
    try:
        monkeypatch.setenv("AIRFLOW_CONN_SFAPI_DAGTEST", fake.connection_json(key.as_dict(private=True)))
        run = dagbag.get_dag("test_operators_sfapi").test()
        assert run.state == "success", states(run)
        job = run.get_task_instance("wait").xcom_pull(task_ids="wait")
        assert job["state"] == "COMPLETED" and job["jobid"] == "4242001"
        assert len(fake.submitted) == 1
    finally:
        fake.server.shutdown()


def test_sfapi_failed_job_fails_the_sensor(dagbag, monkeypatch):
    from joserfc.jwk import RSAKey

    key = RSAKey.generate_key(2048)
    fake = FakeSFAPI(RSAKey.import_key(key.as_dict(private=False)))
    fake.states["4242001"] = ["RUNNING", "NODE_FAIL"]
    try:
        monkeypatch.setenv("AIRFLOW_CONN_SFAPI_DAGTEST", fake.connection_json(key.as_dict(private=True)))
        dag = dagbag.get_dag("test_operators_sfapi")
        for t in dag.tasks:
            monkeypatch.setattr(t, "retries", 0)
        run = dag.test()
        assert run.state == "failed" and states(run)["wait"] == "failed"
    finally:
        fake.server.shutdown()


@pytest.fixture
def canned(monkeypatch):
    responses.start()
    try:
        load_response("auth.oauth2_client_credentials_tokens")
        yield
    finally:
        responses.stop()
        responses.reset()


def test_compute_local_and_deferred_service_task(dagbag, monkeypatch, canned):
    from globus_compute_sdk.serialize import ComputeSerializer

    conn = {"conn_type": "globus", "login": "id", "password": "secret"}
    monkeypatch.setenv("AIRFLOW_CONN_GLOBUS_DAGTEST_LOCAL", json.dumps({**conn, "extra": {"compute_endpoint": "local"}}))
    monkeypatch.setenv("AIRFLOW_CONN_GLOBUS_DAGTEST", json.dumps(conn))
    ep, fn, task = ("00000000-0000-4000-8000-00000000c0de", "00000000-0000-4000-8000-0000000000f1",
                    "00000000-0000-4000-8000-0000000000aa")
    responses.add(responses.POST, f"{COMPUTE}/v3/endpoints/{ep}/submit",
                  json={"tasks": {fn: [task]}, "request_id": "r", "task_group_id": "g", "endpoint_id": ep})
    records_seen = []  # the submission records (Airflow Variables) while the service task ran

    def running(request):
        records_seen.append(compute_records())
        return 200, {}, json.dumps({"task_id": task, "status": "running"})

    responses.add_callback(responses.GET, f"{COMPUTE}/v2/tasks/{task}", callback=running)
    responses.add(responses.GET, f"{COMPUTE}/v2/tasks/{task}",
                  json={"task_id": task, "status": "success", "result": ComputeSerializer().serialize(4),
                        "completion_t": "1"})
    run = dagbag.get_dag("test_operators_compute").test()
    assert run.state == "success", states(run)
    assert run.get_task_instance("local").xcom_pull(task_ids="local") == 42
    assert run.get_task_instance("remote").xcom_pull(task_ids="remote") == 4
    # a retry would have adopted the task: its id was recorded while it ran, and removed once it ended
    assert records_seen and list(records_seen[0].values()) == [task]
    assert compute_records() == {}


def compute_records() -> dict[str, str]:
    from airflow.models.variable import Variable  # the ORM model: the rows in the metadata DB
    from airflow.utils.session import create_session

    with create_session() as session:
        return {v.key: v.val for v in session.query(Variable) if v.key.startswith("facility_data.compute_task.")}


def test_globus_transfer_and_delete_deferred(dagbag, monkeypatch, canned, tmp_path):
    monkeypatch.setenv("AIRFLOW_CONN_GLOBUS_DAGTEST", json.dumps({"conn_type": "globus", "login": "id",
                                                                  "password": "secret"}))
    endpoints = tmp_path / "endpoints.yaml"
    endpoints.write_text("""endpoints:
  data832: {kind: globus, site: als, uuid: "00000000-0000-4000-8000-0000000000a1", root_path: /data}
  nersc832: {kind: globus, site: nersc, uuid: "00000000-0000-4000-8000-0000000000b2", root_path: /cfs}
""")
    monkeypatch.setenv("FACILITY_ENDPOINTS_FILE", str(endpoints))
    responses.add(responses.GET, f"{TRANSFER}/task_list", json={"DATA": [], "length": 0, "limit": 10, "offset": 0,
                                                                "total": 0})
    load_response("transfer.get_submission_id")
    task_id = load_response("transfer.submit_transfer").metadata["task_id"]
    load_response("transfer.submit_delete")  # same canned task id
    load_response("transfer.get_submission_id")
    done = {"task_id": task_id, "status": "SUCCEEDED", "files_transferred": 1, "bytes_transferred": 10,
            "effective_bytes_per_second": 5}
    responses.add(responses.GET, f"{TRANSFER}/task/{task_id}", json={**done, "status": "ACTIVE"})
    responses.add(responses.GET, f"{TRANSFER}/task/{task_id}", json=done)
    run = dagbag.get_dag("test_operators_globus").test()
    assert run.state == "success", states(run)
    stats = run.get_task_instance("copy").xcom_pull(task_ids="copy")
    assert stats["task_id"] == task_id and stats["files"] == 1 and stats["bytes"] == 10
    posted = [c.request.url.rsplit("/", 1)[1] for c in responses.calls
              if c.request.method == "POST" and "transfer.api" in c.request.url]
    assert posted == ["transfer", "delete"]  # one submission each, in order


def test_hpc_job_operator_runs_the_rendered_template_locally(dagbag):
    run = dagbag.get_dag("test_operators_hpc").test()
    assert run.state == "success", states(run)
    result = run.get_task_instance("local_job").xcom_pull(task_ids="local_job")
    assert result["hpc"] == "local" and result["exitcode"] == 0
    assert "reconstructing scan1.h5" in Path(result["log"]).read_text()  # job_params were templated
