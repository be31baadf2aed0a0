"""Shared fixtures of the fault tests."""

from __future__ import annotations

import json

import pytest


@pytest.fixture(scope="module")
def conns(site):
    """The Rucio connection the default Context opens (inherited by spawned workers and runs)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AIRFLOW_CONN_RUCIO_DEFAULT", json.dumps({
            "conn_type": "rucio", "host": site.rucio_url, "login": site.rucio_account,
            "password": site.rucio_password}))
        yield
