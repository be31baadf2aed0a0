"""GlobusTransferOperator / GlobusDeleteOperator / GlobusTaskTrigger through the real globus-sdk, against
globus_sdk.testing canned responses plus our own for task status, events and task lists."""

from __future__ import annotations

import asyncio
import json
import time
from types import SimpleNamespace

import pytest
import responses
import structlog.testing
from globus_sdk.testing import load_response

from facility_data.operators.globus import GlobusDeleteOperator, GlobusTransferOperator
from facility_data.transfer.globus import task_label
from facility_data.triggers.globus import GlobusTaskTrigger

TRANSFER = "https://transfer.api.globus.org/v0.10"
SRC_UUID = "00000000-0000-4000-8000-0000000000a1"
DST_UUID = "00000000-0000-4000-8000-0000000000b2"


@pytest.fixture
def globus(monkeypatch, tmp_path):
    """A globus connection, a Globus endpoints file, and a responses mock with a token already registered."""
    monkeypatch.setenv("AIRFLOW_CONN_GLOBUS_TEST", json.dumps(
        {"conn_type": "globus", "login": "client-id", "password": "client-secret-not-logged"}))
    endpoints = tmp_path / "endpoints.yaml"
    endpoints.write_text(f"""endpoints:
  data832: {{kind: globus, site: als, uuid: "{SRC_UUID}", root_path: /data}}
  spot832: {{kind: globus, site: als, uuid: "{SRC_UUID}", root_path: /}}
  nersc832: {{kind: globus, site: nersc, uuid: "{DST_UUID}", root_path: /global/cfs/als}}
""")
    responses.start()  # the module-level mock: globus_sdk.testing registers its canned responses there
    try:
        load_response("auth.oauth2_client_credentials_tokens")
        yield SimpleNamespace(endpoints=str(endpoints))
    finally:
        responses.stop()
        responses.reset()


def ctx(task_id="copy", run_id="manual__1"):
    return {"ti": SimpleNamespace(dag_id="dag", run_id=run_id, task_id=task_id, map_index=-1)}


def task_list(*docs):
    responses.add(responses.GET, f"{TRANSFER}/task_list", json={"DATA_TYPE": "task_list", "DATA": list(docs),
                                                                "length": len(docs), "limit": 10, "offset": 0,
                                                                "total": len(docs)})


def task_doc(task_id, status, nice_status=None, **extra):
    return {"DATA_TYPE": "task", "task_id": task_id, "status": status, "nice_status": nice_status, "type": "TRANSFER",
            "label": "x", "files": 3, "files_transferred": 3, "files_skipped": 0, "bytes_transferred": 3072,
            "bytes_checksummed": 3072, "effective_bytes_per_second": 1024, **extra}


def task_status(task_id, *docs):
    for doc in docs:
        if isinstance(doc, int):
            responses.add(responses.GET, f"{TRANSFER}/task/{task_id}", status=doc,
                          json={"code": "ServiceUnavailable", "message": "try later", "request_id": "r"})
        else:
            responses.add(responses.GET, f"{TRANSFER}/task/{task_id}", json=doc)


def events(task_id, *evs):
    responses.add(responses.GET, f"{TRANSFER}/task/{task_id}/event_list",
                  json={"DATA_TYPE": "event_list", "DATA": [{"DATA_TYPE": "event", "time": "2026-01-01 00:00:00",
                                                             **e} for e in evs], "limit": 10, "offset": 0,
                        "total": len(evs), "length": len(evs)})


def cancel_ok(task_id):
    # globus_sdk.testing's cancel_task fixture is for a random task id; this one answers for ours
    responses.add(responses.POST, f"{TRANSFER}/task/{task_id}/cancel",
                  json={"DATA_TYPE": "result", "code": "Canceled", "message": "The task has been cancelled."})


def cancelled(task_id) -> bool:
    return any(c.request.url.endswith(f"/task/{task_id}/cancel") and c.response is not None
               and c.response.status_code == 200 for c in responses.calls)


def submitted():
    sub = load_response("transfer.submit_transfer")
    load_response("transfer.get_submission_id")
    return sub.metadata["task_id"]


def run_trigger(trigger) -> dict:
    async def first():
        async for ev in trigger.run():
            return ev.payload
    return asyncio.run(first())


NOT_GIVEN = object()  # make_op leaves the argument out


def make_op(globus, **kw):
    args = dict(task_id="copy", source_endpoint="data832", source_path="raw/p1/scan.h5",
                destination_endpoint="nersc832", destination_path="raw/p1/scan.h5", endpoints_file=globus.endpoints,
                conn_id="globus_test", deferrable=True, poll_interval=0, label="bl832 scan.h5", export_controlled=False)
    args.update(kw)
    return GlobusTransferOperator(**{k: v for k, v in args.items() if v is not NOT_GIVEN})


def defer(op, context=None):
    from airflow.sdk.exceptions import TaskDeferred

    with pytest.raises(TaskDeferred) as info:
        op.execute(context or ctx())
    return info.value


def test_pending_then_succeeded_returns_stats(globus):
    task_list()
    task_id = submitted()
    task_status(task_id, task_doc(task_id, "ACTIVE", "Queued"), task_doc(task_id, "SUCCEEDED"))
    op = make_op(globus, recursive=True)
    deferred = defer(op)
    posted = [c.request for c in responses.calls if c.request.url.endswith("/v0.10/transfer")][0]
    doc = json.loads(posted.body)
    assert doc["sync_level"] == 3 and doc["verify_checksum"] is True  # 3 is how the SDK sends "checksum"
    assert doc["source_endpoint"] == SRC_UUID and doc["destination_endpoint"] == DST_UUID
    assert doc["DATA"][0]["source_path"] == "/data/raw/p1/scan.h5"
    assert doc["DATA"][0]["destination_path"] == "/global/cfs/als/raw/p1/scan.h5"
    assert doc["DATA"][0]["recursive"] is True
    from datetime import UTC, datetime

    globus_deadline = datetime.fromisoformat(doc["deadline"])
    assert 5.9 * 3600 < (globus_deadline - datetime.now(UTC)).total_seconds() <= 6 * 3600  # Globus stops it too
    assert doc["label"] == task_label("bl832 scan.h5", "dag/manual__1/copy/-1")
    event = run_trigger(deferred.trigger)
    assert event["status"] == "success"
    with structlog.testing.capture_logs() as logs:
        stats = op.execute_complete(ctx(), event, **deferred.kwargs)
    assert stats["files"] == 3 and stats["bytes"] == 3072 and stats["task_id"] == task_id
    assert stats["bytes_per_second"] == 1024
    (line,) = [e["event"] for e in logs if "SUCCEEDED" in e["event"]]
    assert line.startswith(f"Globus task {task_id} SUCCEEDED: 3 files, 3072 B in ") and line.endswith(" s (0.001 MB/s)")


def test_failed_task_fails_with_globus_error_and_is_not_reported_as_success(globus):
    task_list()
    task_id = submitted()
    task_status(task_id, task_doc(task_id, "FAILED", fatal_error={"code": "CANCELED",
                                                                  "description": "deadline exceeded by endpoint"}))
    events(task_id, {"code": "PERMISSION_DENIED", "is_error": True, "description": "permission denied",
                     "details": "/global/cfs/als/raw: Permission denied"})
    op = make_op(globus)
    event = run_trigger(defer(op).trigger)
    assert event["status"] == "failed"
    from airflow.sdk.exceptions import AirflowException

    with pytest.raises(AirflowException, match="FAILED: CANCELED: deadline exceeded.*Permission denied"):
        op.execute_complete(ctx(), event)
    assert not [c for c in responses.calls if c.request.url.endswith("/cancel")]  # already terminal


@pytest.mark.parametrize("nice", ["FILE_NOT_FOUND", "PERMISSION_DENIED"])
def test_fault_events_cancel_the_task_and_fail(globus, nice):
    task_list()
    task_id = submitted()
    cancel_ok(task_id)
    task_status(task_id, task_doc(task_id, "ACTIVE", nice, nice_status_details=f"{nice} on source"))
    events(task_id, {"code": nice, "is_error": True, "description": nice.lower().replace("_", " "),
                     "details": "550 /data/raw/p1/scan.h5"})
    op = make_op(globus)
    event = run_trigger(defer(op).trigger)
    assert event["status"] == "failed"
    assert nice in event["message"] and "550 /data/raw/p1/scan.h5" in event["message"]
    assert "task cancelled" in event["message"]
    assert cancelled(task_id)


def test_inactive_task_fails_and_is_cancelled(globus):
    task_list()
    task_id = submitted()
    cancel_ok(task_id)
    task_status(task_id, task_doc(task_id, "INACTIVE", "CREDENTIAL_EXPIRED",
                                  nice_status_details="consent for collection expired"))
    events(task_id)
    event = run_trigger(defer(make_op(globus)).trigger)
    assert event["status"] == "failed" and "INACTIVE" in event["message"]
    assert "consent for collection expired" in event["message"]
    assert cancelled(task_id)


def test_5xx_on_status_is_retried_by_the_sdk(globus):
    task_list()
    task_id = submitted()
    task_status(task_id, 503, task_doc(task_id, "SUCCEEDED"))
    event = run_trigger(defer(make_op(globus)).trigger)
    assert event["status"] == "success"
    status_calls = [c for c in responses.calls if c.request.url.endswith(f"/task/{task_id}")]
    assert [c.response.status_code for c in status_calls] == [503, 200]


def test_retry_adopts_the_task_it_already_submitted(globus):
    label = task_label("bl832 scan.h5", "dag/manual__1/copy/-1")
    task_list({"task_id": "11111111-1111-4111-8111-111111111111", "status": "FAILED", "label": label},
              {"task_id": "22222222-2222-4222-8222-222222222222", "status": "ACTIVE", "label": label})
    task_status("22222222-2222-4222-8222-222222222222", task_doc("22222222-2222-4222-8222-222222222222", "SUCCEEDED"))
    deferred = defer(make_op(globus))
    assert deferred.trigger.globus_task_id == "22222222-2222-4222-8222-222222222222"
    assert not [c for c in responses.calls if c.request.url.endswith("/v0.10/transfer")]  # nothing resubmitted
    listed = [c.request for c in responses.calls if "/task_list" in c.request.url][0]
    assert "filter=label" in listed.url
    assert run_trigger(deferred.trigger)["status"] == "success"


def test_deadline_cancels_the_remote_task(globus):
    task_id = "33333333-3333-4333-8333-333333333333"
    cancel_ok(task_id)
    task_status(task_id, task_doc(task_id, "ACTIVE", "Queued"))
    trigger = GlobusTaskTrigger(globus_task_id=task_id, conn_id="globus_test", deadline=time.time() - 1, poll_interval=0)
    event = run_trigger(trigger)
    assert event["status"] == "timeout" and "cancel requested" in event["message"]
    assert cancelled(task_id)
    from airflow.sdk.exceptions import AirflowException

    with pytest.raises(AirflowException, match="timeout"):
        make_op(globus).execute_complete(ctx(), event)


def test_trigger_serialize_round_trip_is_pinned():
    trigger = GlobusTaskTrigger(globus_task_id="t-1", conn_id="globus_x", deadline=1700000000.5, poll_interval=15)
    classpath, kwargs = trigger.serialize()
    assert classpath == "facility_data.triggers.globus.GlobusTaskTrigger"
    assert kwargs == {"globus_task_id": "t-1", "conn_id": "globus_x", "deadline": 1700000000.5,
                      "poll_interval": 15.0}
    assert GlobusTaskTrigger(**kwargs).serialize() == (classpath, kwargs)


def test_the_triggerer_setting_the_airflow_task_id_does_not_change_the_globus_task_polled():
    """The triggerer sets ``trigger.task_instance``, and BaseTrigger then overwrites ``trigger.task_id`` with the
    Airflow task's id: a trigger keeping the Globus task id there polled task "copy" (404) under a real triggerer."""
    from types import SimpleNamespace

    trigger = GlobusTaskTrigger(globus_task_id="t-1", conn_id="globus_x", deadline=1700000000.5)
    trigger.task_instance = SimpleNamespace(task_id="copy", dag_id="d", run_id="r", map_index=-1)
    assert trigger.task_id == "copy" and trigger.globus_task_id == "t-1"
    assert trigger.serialize()[1]["globus_task_id"] == "t-1" and trigger.describe() == "Globus task t-1"


def refused(caplog, run):
    """Run ``run`` (an operator's execute) expecting a refusal: AirflowFailException (never retried) raised from
    None, and exactly one ERROR line; returns (the exception's message, that line)."""
    from airflow.sdk.exceptions import AirflowFailException

    with pytest.raises(AirflowFailException) as err:
        run()
    assert err.value.__cause__ is None and err.value.__suppress_context__  # no chained domain traceback
    (line,) = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    return str(err.value), line


def test_export_controlled_refused_once_loud_before_any_request(globus, caplog):
    message, line = refused(caplog, lambda: make_op(globus, export_controlled=True).execute(ctx()))
    assert message.startswith("SafetyError: ") and "export-controlled" in message
    assert line == (f"refused transfer data832:raw/p1/scan.h5 -> nersc832:raw/p1/scan.h5 (data-safety policy): "
                    f"{message}")
    assert len(responses.calls) == 0  # nothing asked of Globus, not even a token


@pytest.mark.parametrize("status", [NOT_GIVEN, None, "", "None", " none\n", "null"])
def test_unknown_export_control_status_is_controlled_and_refused_before_any_request(globus, caplog, status):
    # unknown means controlled: an operator not told, or a template that renders empty, may not move data off site
    message, line = refused(caplog, lambda: make_op(globus, export_controlled=status).execute(ctx()))
    assert message == ("SafetyError: export-control status of data832:raw/p1/scan.h5 is not known (the transfer was "
                       "not told), so it may not leave als (requested: nersc)")
    assert "(data-safety policy)" in line and len(responses.calls) == 0


@pytest.mark.parametrize("status", ["maybe", "ture", "2", "١"])
def test_an_export_control_status_that_is_not_a_boolean_is_a_conf_refusal(globus, caplog, status):
    message, line = refused(caplog, lambda: make_op(globus, export_controlled=status).execute(ctx()))
    assert message == f"ConfError: export_controlled must be a boolean, got {status!r}"
    assert "(bad conf)" in line and len(responses.calls) == 0


@pytest.mark.parametrize("bad", ["/etc/shadow", "raw/../../etc/shadow", "raw\\p1", "", "raw/\x00"])
def test_bad_path_refused_once_loud_before_any_request(globus, caplog, bad):
    message, line = refused(caplog, lambda: make_op(globus, source_path=bad).execute(ctx()))
    assert message.startswith("PathError: path ") or message == "PathError: an empty path (the endpoint root itself) " \
        "is not allowed here"
    assert line == f"refused transfer data832:{bad} -> nersc832:raw/p1/scan.h5 (bad path): {message}"
    assert len(responses.calls) == 0


def test_unknown_endpoint_is_a_configuration_refusal(globus, caplog):
    message, line = refused(caplog, lambda: make_op(globus, destination_endpoint="nersc999").execute(ctx()))
    assert "no endpoint named 'nersc999'" in message
    assert "(bad configuration): ConfigError: " in line
    assert len(responses.calls) == 0


def test_a_network_error_is_not_a_refusal_and_keeps_its_retries(globus, caplog):
    import globus_sdk
    import requests

    task_list()
    responses.add(responses.GET, f"{TRANSFER}/submission_id", body=requests.ConnectionError("connection reset"))
    with pytest.raises(globus_sdk.GlobusConnectionError):  # itself, not AirflowFailException: Airflow retries it
        make_op(globus).execute(ctx())
    assert not [r for r in caplog.records if r.levelname == "ERROR" and r.getMessage().startswith("refused")]
    assert not [c for c in responses.calls if c.request.url.endswith("/v0.10/transfer")]


def test_not_deferrable_polls_in_worker(globus):
    task_list()
    task_id = submitted()
    task_status(task_id, task_doc(task_id, "ACTIVE"), task_doc(task_id, "SUCCEEDED"))
    stats = make_op(globus, deferrable=False).execute(ctx())
    assert stats["task_id"] == task_id and stats["files"] == 3


def test_delete_operator_submits_delete_and_waits(globus):
    task_list()
    sub = load_response("transfer.submit_delete")
    load_response("transfer.get_submission_id")
    task_id = sub.metadata["task_id"]
    task_status(task_id, task_doc(task_id, "SUCCEEDED", type="DELETE"))
    op = GlobusDeleteOperator(task_id="prune", endpoint="spot832", path="raw/p1/scan.h5", conn_id="globus_test",
                              endpoints_file=globus.endpoints, deferrable=True, poll_interval=0)
    deferred = defer(op, ctx("prune"))
    posted = json.loads([c.request for c in responses.calls if c.request.url.endswith("/v0.10/delete")][0].body)
    assert posted["endpoint"] == SRC_UUID and posted["DATA"][0]["path"] == "/raw/p1/scan.h5"
    result = op.execute_complete(ctx("prune"), run_trigger(deferred.trigger))
    assert result["task_id"] == task_id and result["path"] == "raw/p1/scan.h5"


@pytest.mark.parametrize("path", [".", "", "/raw/p1", "raw/../.."])
def test_delete_refuses_the_endpoint_root_and_bad_paths_once_loud(globus, caplog, path):
    op = GlobusDeleteOperator(task_id="prune", endpoint="spot832", path=path, conn_id="globus_test",
                              endpoints_file=globus.endpoints)
    message, line = refused(caplog, lambda: op.execute(ctx("prune")))
    assert message.startswith("PathError: ")
    assert line == f"refused delete spot832:{path} (bad path): {message}"
    assert len(responses.calls) == 0  # no token, no stat, no delete task


def test_delete_on_a_local_endpoint_refuses_a_symlink_out_of_its_root(tmp_path, caplog):
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (outside / "keep.h5").write_bytes(b"data")
    (root / "link").symlink_to(outside)
    endpoints = tmp_path / "endpoints.yaml"
    endpoints.write_text(f"endpoints:\n  scratch: {{kind: local, site: als, local_root: {root}}}\n")
    op = GlobusDeleteOperator(task_id="prune", endpoint="scratch", path="link/keep.h5", endpoints_file=str(endpoints))
    message, line = refused(caplog, lambda: op.execute(ctx("prune")))
    assert "resolves outside endpoint scratch" in message and "(bad path)" in line
    assert (outside / "keep.h5").read_bytes() == b"data"


def test_stat_and_list_through_sdk(globus):
    from facility_data.hooks.globus import GlobusHook
    from facility_data.transfer import get_endpoint

    stat = load_response("transfer.operation_stat")
    ep = get_endpoint("spot832", globus.endpoints).model_copy(update={"uuid": stat.metadata["endpoint_id"]})
    backend = GlobusHook("globus_test").get_transfer_backend()
    st = backend.stat(ep, "file1.txt")
    assert (st.size, st.is_dir, st.checksum) == (4, False, None)  # Globus cannot tell a checksum: policy keeps it
    load_response("transfer.operation_stat", case="not_found")
    assert backend.stat(ep, "nope") is None
    responses.add(responses.GET, f"{TRANSFER}/operation/endpoint/{ep.uuid}/ls",
                  json={"DATA_TYPE": "file_list", "DATA": [
                      {"name": "a.h5", "type": "file", "size": 7}, {"name": "rec", "type": "dir", "size": 4096},
                      {"name": "gone.h5", "type": "invalid_symlink", "size": 9, "link_target": "/x/gone.h5"},
                      {"name": "alias", "type": "dir", "size": 4096, "link_target": "/data/raw/p2"}]})
    listing = backend.list(ep, "raw/p1")
    assert [(f.path, f.is_dir, f.size, f.is_symlink) for f in listing] == [
        ("raw/p1/a.h5", False, 7, False), ("raw/p1/rec", True, None, False), ("raw/p1/gone.h5", False, None, True),
        ("raw/p1/alias", False, None, True)]  # links are reported, never treated as data to walk into


def test_hook_connection_test_reports_without_leaking_secret(globus):
    from facility_data.hooks.globus import GlobusHook

    ok, message = GlobusHook("globus_test").test_connection()
    assert ok and "client-secret" not in message


def test_unexpected_api_error_ends_the_wait_with_an_error_event(globus):
    task_id = "44444444-4444-4444-8444-444444444444"
    responses.add(responses.GET, f"{TRANSFER}/task/{task_id}", status=404,
                  json={"code": "TaskNotFound", "message": f"Task {task_id} not found", "request_id": "r"})
    event = run_trigger(GlobusTaskTrigger(globus_task_id=task_id, conn_id="globus_test", deadline=time.time() + 30,
                                          poll_interval=0))
    assert event["status"] == "error" and "TaskNotFound" in event["message"]


def test_not_deferrable_deadline_cancels_and_fails(globus):
    from facility_data.hooks.globus import GlobusHook
    from facility_data.transfer import TransferTimeout
    from facility_data.transfer.globus import GlobusTransfer

    task_id = "55555555-5555-4555-8555-555555555555"
    cancel_ok(task_id)
    task_status(task_id, task_doc(task_id, "ACTIVE", "Queued"))
    backend = GlobusTransfer(GlobusHook("globus_test").get_transfer_client(), poll_interval=0.01)
    with pytest.raises(TransferTimeout, match="cancelled"):
        backend.wait(task_id, deadline_seconds=0.05)
    assert cancelled(task_id)


def test_task_label_is_deterministic_legal_and_distinct():
    a = task_label("BL 8.3.2: scan/0001, ok?", "dag/run1/copy/-1")
    assert a == task_label("BL 8.3.2: scan/0001, ok?", "dag/run1/copy/-1")
    assert a != task_label("BL 8.3.2: scan/0001, ok?", "dag/run2/copy/-1")
    assert a.startswith("BL 8.3.2_ scan_0001_ ok_ af-") and len(a) <= 128
