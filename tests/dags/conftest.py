"""Every DAG test has a SciCat, as the local site does (``Site.up`` serves the stand-in): ``<id>_new_file`` fails
when its scan is not catalogued, so a DAG test without one would end red for a reason it is not about."""

from __future__ import annotations

import pytest

from facility_data.localsite.scicat_standin import SciCatStandIn


@pytest.fixture(scope="session")
def scicat_service():
    """One in-process SciCat stand-in for the session (records accumulate; tests look up their own scans)."""
    with SciCatStandIn() as server:
        yield server


@pytest.fixture(autouse=True)
def scicat_default(scicat_service, monkeypatch):
    """``scicat_default`` points at the session's stand-in; a test may point it elsewhere (its own fixture runs
    later and wins)."""
    monkeypatch.setenv("AIRFLOW_CONN_SCICAT_DEFAULT", scicat_service.connection_json(backoff=0))
    return scicat_service
