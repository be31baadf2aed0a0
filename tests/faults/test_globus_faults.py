"""Globus 5xx on task-status polling, through the real globus-sdk (its own retry loop, configured from
facility_data/retry.py) against canned HTTP responses (``responses``, as tests/unit/test_globus_transfer.py): 502/503 are
retried boundedly and each retry is logged; after the budget, and at once on a 4xx, the service's error surfaces.

Not modelled: Globus itself (the responses are canned), Retry-After values from the real service.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time

import pytest
import responses
from globus_sdk.testing import load_response

from facility_data import retry
from facility_data.hooks.globus import GlobusHook
from facility_data.triggers.globus import GlobusTaskTrigger

TRANSFER = "https://transfer.api.globus.org/v0.10"
TASK = "00000000-0000-4000-8000-00000000c0de"


@pytest.fixture
def globus(monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONN_GLOBUS_FAULTS", json.dumps(
        {"conn_type": "globus", "login": "client-id", "password": "client-secret-not-logged"}))
    monkeypatch.setattr(retry, "BASE_DELAY", 0.01)
    responses.start()
    try:
        load_response("auth.oauth2_client_credentials_tokens")
        yield
    finally:
        responses.stop()
        responses.reset()


def answers(*statuses):
    """Task-status answers in order: an int is an error status, "SUCCEEDED" a finished task."""
    for s in statuses:
        if isinstance(s, int):
            responses.add(responses.GET, f"{TRANSFER}/task/{TASK}", status=s,
                          json={"code": "ServiceUnavailable" if s >= 500 else "ClientError.NotFound",
                                "message": f"canned {s}", "request_id": "r"})
        else:
            responses.add(responses.GET, f"{TRANSFER}/task/{TASK}", json={
                "DATA_TYPE": "task", "task_id": TASK, "status": s, "nice_status": None, "type": "TRANSFER",
                "label": "x", "files": 1, "files_transferred": 1, "files_skipped": 0, "bytes_transferred": 1,
                "bytes_checksummed": 1, "effective_bytes_per_second": 1})


def status_calls() -> list[int]:
    return [c.response.status_code for c in responses.calls if c.request.url.endswith(f"/task/{TASK}")]


def retry_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == retry.__name__]


def backend():
    return GlobusHook("globus_faults").get_transfer_backend(poll_interval=0)


def test_502_and_503_on_status_are_retried_and_logged(globus, caplog):
    answers(502, 503, "SUCCEEDED")
    with caplog.at_level(logging.WARNING, logger=retry.__name__):
        state = backend().task_state(TASK)
    assert state.outcome == "success"
    assert status_calls() == [502, 503, 200]
    lines = retry_lines(caplog)
    assert len(lines) == 2, lines
    assert f"/task/{TASK}: attempt 2/{retry.ATTEMPTS} in " in lines[0] and "HTTP 502" in lines[0]
    assert f"attempt 3/{retry.ATTEMPTS} in " in lines[1] and "HTTP 503" in lines[1]


def test_5xx_beyond_the_budget_fails_the_poll_with_the_services_message(globus, caplog):
    answers(*[503] * (retry.ATTEMPTS + 2))
    trigger = GlobusTaskTrigger(globus_task_id=TASK, conn_id="globus_faults", deadline=time.time() + 3600,
                                poll_interval=0)

    async def first():
        async for ev in trigger.run():
            return ev.payload

    with caplog.at_level(logging.WARNING, logger=retry.__name__):
        event = asyncio.run(first())
    assert status_calls() == [503] * retry.ATTEMPTS  # bounded
    assert event["status"] == "error" and "503" in event["message"] and "canned 503" in event["message"]
    assert len(retry_lines(caplog)) == retry.ATTEMPTS - 1


@pytest.mark.parametrize("status", [400, 403, 404])
def test_4xx_on_status_is_not_retried(globus, caplog, status):
    import globus_sdk

    answers(status, "SUCCEEDED")
    with caplog.at_level(logging.WARNING, logger=retry.__name__), pytest.raises(globus_sdk.GlobusAPIError) as err:
        backend().task_state(TASK)
    assert err.value.http_status == status and not retry.is_transient_globus(err.value)
    assert status_calls() == [status] and retry_lines(caplog) == []


def test_classification():
    import globus_sdk

    assert retry.is_transient_globus(globus_sdk.NetworkError("x", ConnectionResetError()))
    assert not retry.is_transient_globus(ValueError("x"))
