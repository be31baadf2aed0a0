"""The embargo under the real scheduler: a manual run with a future logical date and a data interval in the future,
as the REST API and the trigger dialog allow, must not release exposures whose release time has not come (issue 10)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from _live_support import floor15, rubin_night, sink_contents

# the timeout includes starting the site and Airflow (minutes on a busy 2-core machine)
pytestmark = [pytest.mark.live, pytest.mark.integration, pytest.mark.timeout(900)]
DAG_ID = "rubin_unembargo_raw"


def test_future_logical_date_and_window_release_nothing_and_fail(live_airflow, site):
    window_start = floor15(datetime.now(UTC)) + timedelta(hours=2)  # far from any scheduled window of the session
    ln = rubin_night(live_airflow, site, first_release=window_start + timedelta(minutes=1), n_exposures=1)
    assert all(window_start <= r < window_start + timedelta(minutes=15) for r in ln.releases.values())
    live_airflow.unpause(DAG_ID)

    # Airflow starts no task of a run before its logical date, so the dialog's way to a future window now is a
    # logical date just ahead with "Data Interval: Specify Manually" two hours ahead, which the API takes as given
    logical = datetime.now(UTC) + timedelta(seconds=30)
    window = (window_start, window_start + timedelta(minutes=15))
    run = live_airflow.api("POST", f"/dags/{DAG_ID}/dagRuns", json={
        "logical_date": logical.isoformat(), "data_interval_start": window[0].isoformat(),
        "data_interval_end": window[1].isoformat(), "conf": {}})
    assert (datetime.fromisoformat(run["data_interval_start"]), datetime.fromisoformat(run["data_interval_end"])) \
        == window, run
    state = live_airflow.wait_runs(DAG_ID, [run["dag_run_id"]], timeout=420)[run["dag_run_id"]]

    released = sink_contents(site, ln)
    assert datetime.now(UTC) < min(ln.releases.values()), "the test ran so long that the releases came due"
    assert (state, released) == ("failed", []), f"a run asking for exposures still under embargo: {state}, " \
                                                f"in the sinks: {released}"
