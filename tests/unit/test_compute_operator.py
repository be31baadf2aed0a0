"""GlobusComputeOperator and GlobusComputeTrigger: local concurrent.futures executors standing in for an endpoint
(success, exception with traceback, deadline that kills the work), and the Globus Compute service path through the
real globus-compute-sdk against canned HTTP responses."""

from __future__ import annotations

import asyncio
import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from types import SimpleNamespace

import pytest
import responses
from airflow.sdk.exceptions import AirflowException, TaskDeferred
from globus_sdk.testing import load_response

from facility_data.compute import LocalProcessExecutor
from facility_data.operators.globus_compute import GlobusComputeOperator, submission_key
from facility_data.triggers.globus_compute import GlobusComputeTrigger

COMPUTE = "https://compute.api.globus.org"
ENDPOINT = "00000000-0000-4000-8000-00000000c0de"
FUNCTION = "00000000-0000-4000-8000-0000000000f1"
TASK = "00000000-0000-4000-8000-0000000000aa"


def reconstruct(scan: str, *, slices: int) -> dict:
    return {"scan": scan, "slices": slices, "pid": os.getpid()}


def broken(scan: str) -> None:
    raise ValueError(f"cannot open {scan}: not an HDF5 file")


def slow_then_mark(marker: str, seconds: float) -> None:
    time.sleep(seconds)
    with open(marker, "w") as fh:
        fh.write("still ran")


def ctx():
    return {"ti": SimpleNamespace(dag_id="d", run_id="r", task_id="t", map_index=-1)}


@pytest.fixture
def compute_conn(monkeypatch):
    def set_endpoint(endpoint):
        monkeypatch.setenv("AIRFLOW_CONN_GLOBUS_COMPUTE_TEST", json.dumps(
            {"conn_type": "globus", "login": "client-id", "password": "secret", "extra": {"compute_endpoint": endpoint}}))
    return set_endpoint


def test_any_executor_stands_in(compute_conn):
    op = GlobusComputeOperator(task_id="t", function=reconstruct, function_args=["scan1.h5"],
                               function_kwargs={"slices": 3}, executor_factory=lambda: ThreadPoolExecutor(1))
    assert op.execute(ctx())["slices"] == 3


def test_local_endpoint_runs_in_a_separate_process(compute_conn):
    compute_conn("local")
    op = GlobusComputeOperator(task_id="t", function=reconstruct, function_args=["scan1.h5"],
                               function_kwargs={"slices": 2}, conn_id="globus_compute_test")
    result = op.execute(ctx())
    assert result["scan"] == "scan1.h5" and result["pid"] != os.getpid()


def test_exception_fails_with_traceback_text(compute_conn):
    compute_conn("local")
    op = GlobusComputeOperator(task_id="t", function=broken, function_args=["x.h5"], conn_id="globus_compute_test")
    with pytest.raises(AirflowException, match=r"(?s)Traceback.*ValueError: cannot open x.h5: not an HDF5 file"):
        op.execute(ctx())


def test_deadline_kills_the_running_function(tmp_path):
    marker = tmp_path / "marker"
    op = GlobusComputeOperator(task_id="t", function=slow_then_mark, function_args=[str(marker), 1.0],
                               deadline=timedelta(seconds=0.3), executor_factory=LocalProcessExecutor)
    with pytest.raises(AirflowException, match="did not finish within 0 s.*worker process terminated"):
        op.execute(ctx())
    time.sleep(1.3)
    assert not marker.exists()  # the function was stopped, not left running


def test_deadline_cancels_a_queued_future(tmp_path):
    pool = ThreadPoolExecutor(1)
    pool.submit(time.sleep, 0.5)  # occupies the only worker: our function stays queued
    from facility_data.compute import ComputeTimeout, run_with_deadline

    marker = tmp_path / "m"
    with pytest.raises(ComputeTimeout, match="future cancelled"):
        run_with_deadline(pool, slow_then_mark, (str(marker), 0), deadline_seconds=0.1)
    pool.shutdown(wait=True)
    assert not marker.exists()


def test_registered_function_id_needs_a_real_endpoint(compute_conn):
    compute_conn("local")
    op = GlobusComputeOperator(task_id="t", function_id=FUNCTION, conn_id="globus_compute_test")
    with pytest.raises(ValueError, match="function_id can only run on a Globus Compute endpoint"):
        op.execute(ctx())


def test_exactly_one_of_function_or_id():
    with pytest.raises(ValueError, match="exactly one"):
        GlobusComputeOperator(task_id="t")


@pytest.fixture
def variables(monkeypatch):
    """Airflow Variables as a dict (outside a running task the SDK cannot write them; the DAG test uses the real
    ones through dag.test())."""
    from facility_data.operators import globus_compute

    store: dict[str, str] = {}

    class Variables:
        @staticmethod
        def get(key, default=None):
            return store.get(key, default)

        @staticmethod
        def set(key, value, description=None):
            store[key] = value

        @staticmethod
        def delete(key):
            store.pop(key, None)

    monkeypatch.setattr(globus_compute, "Variable", Variables)
    return store


# -- the Globus Compute service path (real SDK, canned HTTP) ------------------------------------------------------
@pytest.fixture
def service(compute_conn, variables):
    compute_conn(ENDPOINT)
    responses.start()
    try:
        load_response("auth.oauth2_client_credentials_tokens")
        responses.add(responses.POST, f"{COMPUTE}/v3/functions", json={"function_uuid": FUNCTION})
        responses.add(responses.POST, f"{COMPUTE}/v3/endpoints/{ENDPOINT}/submit",
                      json={"tasks": {FUNCTION: [TASK]}, "request_id": "r1", "task_group_id": "g1",
                            "endpoint_id": ENDPOINT})
        yield
    finally:
        responses.stop()
        responses.reset()


def task_answers(*docs):
    for doc in docs:
        responses.add(responses.GET, f"{COMPUTE}/v2/tasks/{TASK}", json={"task_id": TASK, **doc})


def run_trigger(trigger) -> dict:
    async def first():
        async for ev in trigger.run():
            return ev.payload
    return asyncio.run(first())


def deferred_op():
    op = GlobusComputeOperator(task_id="t", function=reconstruct, function_args=["s.h5"],
                               function_kwargs={"slices": 1}, conn_id="globus_compute_test", deferrable=True,
                               poll_interval=0)
    with pytest.raises(TaskDeferred) as info:
        op.execute(ctx())
    return op, info.value.trigger


def test_service_pending_then_success_returns_result(service):
    from globus_compute_sdk.serialize import ComputeSerializer

    op, trigger = deferred_op()
    assert trigger.compute_task_id == TASK
    submitted = json.loads([c.request for c in responses.calls if c.request.url.endswith("/submit")][0].body)
    assert list(submitted["tasks"]) == [FUNCTION]  # the registered function, once
    result = ComputeSerializer().serialize({"slices": 1})
    task_answers({"status": "waiting-for-launch"}, {"status": "success", "result": result, "completion_t": "1"})
    event = run_trigger(trigger)
    assert event == {"status": "success", "task_id": TASK, "message": "success"}
    assert op.execute_complete(ctx(), event) == {"slices": 1}


def test_service_failure_carries_remote_traceback(service):
    op, trigger = deferred_op()
    task_answers({"status": "failed", "exception": "Traceback (most recent call last):\n  File \"recon.py\"\n"
                                                   "RuntimeError: GPU out of memory", "completion_t": "1"})
    event = run_trigger(trigger)
    assert event["status"] == "failed" and "RuntimeError: GPU out of memory" in event["message"]
    with pytest.raises(AirflowException, match="GPU out of memory"):
        op.execute_complete(ctx(), event)


def test_service_deadline_fails_and_says_remote_cannot_be_cancelled(service):
    task_answers({"status": "running"})
    trigger = GlobusComputeTrigger(compute_task_id=TASK, conn_id="globus_compute_test", deadline=time.time() - 1,
                                   poll_interval=0)
    event = run_trigger(trigger)
    assert event["status"] == "timeout" and "cannot cancel" in event["message"]


# -- retries adopt the submission of an earlier try ------------------------------------------------------------
def submissions() -> int:
    return sum(c.request.url.endswith("/submit") for c in responses.calls)


def test_first_try_records_its_task_and_the_end_removes_it(service, variables):
    from globus_compute_sdk.serialize import ComputeSerializer

    op, trigger = deferred_op()
    key = submission_key(ctx())[0]
    assert variables == {key: TASK} and submissions() == 1
    task_answers({"status": "success", "result": ComputeSerializer().serialize({"slices": 1}), "completion_t": "1"})
    assert op.execute_complete(ctx(), run_trigger(trigger)) == {"slices": 1}
    assert variables == {}


def test_retry_adopts_a_pending_task_instead_of_submitting_again(service, variables):
    variables[submission_key(ctx())[0]] = TASK
    task_answers({"status": "running"})
    op, trigger = deferred_op()
    assert trigger.compute_task_id == TASK and submissions() == 0


def test_retry_after_a_failed_task_submits_again(service, variables):
    old = "00000000-0000-4000-8000-0000000000bb"
    key = submission_key(ctx())[0]
    variables[key] = old
    responses.add(responses.GET, f"{COMPUTE}/v2/tasks/{old}",
                  json={"task_id": old, "status": "failed", "exception": "RuntimeError: node lost", "completion_t": "1"})
    op, trigger = deferred_op()
    assert trigger.compute_task_id == TASK and submissions() == 1 and variables == {key: TASK}


def test_timeout_keeps_the_record_for_the_retry(service, variables):
    op, trigger = deferred_op()
    with pytest.raises(AirflowException, match="timeout"):
        op.execute_complete(ctx(), {"status": "timeout", "task_id": TASK, "message": "deadline passed"})
    assert variables == {submission_key(ctx())[0]: TASK}


def test_submission_key_is_per_task_instance():
    a = submission_key(ctx())
    b = submission_key({"ti": SimpleNamespace(dag_id="d", run_id="r", task_id="t", map_index=3)})
    assert a[0] != b[0] and a[1] == "d/r/t[-1]" and len(a[0]) < 250


def test_trigger_serialize_round_trip_is_pinned():
    expected = ("facility_data.triggers.globus_compute.GlobusComputeTrigger",
                {"compute_task_id": "t1", "conn_id": "g", "deadline": 12.5, "poll_interval": 3.0})
    assert GlobusComputeTrigger(**expected[1]).serialize() == expected


def test_the_triggerer_setting_the_airflow_task_id_does_not_change_the_compute_task_polled():
    """BaseTrigger overwrites ``task_id`` with the Airflow task's when the triggerer sets ``task_instance``."""
    from types import SimpleNamespace

    trigger = GlobusComputeTrigger(compute_task_id="t1", conn_id="g", deadline=12.5)
    trigger.task_instance = SimpleNamespace(task_id="recon", dag_id="d", run_id="r", map_index=-1)
    assert trigger.task_id == "recon" and trigger.compute_task_id == "t1"
    assert trigger.describe() == "Globus Compute task t1"
