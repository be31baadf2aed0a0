"""A Rucio server that stops answering: the project's bounded retries fire (the client alone gives up at once)."""

from __future__ import annotations

import logging

import pytest
from rucio.common.exception import ServerConnectionException

from facility_data import retry
from facility_data.localsite.procs import free_port
from facility_data.rubin.rucioreg import RetryingRucio


def test_stopped_server_is_retried_with_backoff_then_fails_with_the_clients_message(site, monkeypatch, caplog):
    monkeypatch.setattr(retry, "BASE_DELAY", 0.01)
    client = site.rucio_client()
    client.ping()  # authenticated against the live server
    client.host = f"http://127.0.0.1:{free_port()}"  # now the server is gone: nothing listens there
    calls = []
    real_ping = client.ping
    client.ping = lambda: calls.append(1) or real_ping()
    with caplog.at_level(logging.WARNING, logger=retry.__name__), pytest.raises(ServerConnectionException):
        RetryingRucio(client).ping()
    assert len(calls) == retry.ATTEMPTS
    lines = [r.getMessage() for r in caplog.records]
    for n in range(2, retry.ATTEMPTS + 1):
        assert any(f"rucio ping: attempt {n}/{retry.ATTEMPTS} in " in line for line in lines), lines
    assert any(f"gave up after {retry.ATTEMPTS} attempts: ServerConnectionException" in line for line in lines)


def test_logical_answers_are_not_retried(site):
    from rucio.common.exception import DataIdentifierNotFound

    calls = []
    client = site.rucio_client()
    real = client.get_did
    client.get_did = lambda *a, **k: calls.append(1) or real(*a, **k)
    with pytest.raises(DataIdentifierNotFound):
        RetryingRucio(client).get_did("raw", "no/such/did")
    assert len(calls) == 1
