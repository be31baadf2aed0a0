"""Backfill and "clear and re-run" of rubin_unembargo_raw as the UI does them, through the REST API (issue 17).

One backfill over a 1-hour range of a small night released two hours ago serves both tests: the first checks the
windows it creates, the second breaks a sink and re-runs the window that released the night.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import pytest
from _live_support import floor15, rubin_night

# the timeout includes starting the site and Airflow (minutes on a busy 2-core machine)
pytestmark = [pytest.mark.live, pytest.mark.integration, pytest.mark.timeout(1500)]
DAG_ID = "rubin_unembargo_raw"
STEP = timedelta(minutes=15)


def _dt(s: str) -> datetime:
    return datetime.fromisoformat(s)


@pytest.fixture(scope="module")
def backfill(live_airflow, site):
    """The UI's backfill dialog for a 1-hour range (From W, To W + 1 h), waited for until every run finished."""
    start = floor15(datetime.now(UTC)) - timedelta(hours=2)
    ln = rubin_night(live_airflow, site, first_release=start + timedelta(minutes=1),
                     n_exposures=1)
    live_airflow.unpause(DAG_ID)
    body = {"dag_id": DAG_ID, "from_date": start.isoformat(), "to_date": (start + timedelta(hours=1)).isoformat(),
            "run_backwards": False, "dag_run_conf": {}, "reprocess_behavior": "none", "max_active_runs": 5}
    created = live_airflow.api("POST", "/backfills", json=body)
    runs = [r for r in live_airflow.api("GET", f"/dags/{DAG_ID}/dagRuns", params={"limit": 100})["dag_runs"]
            if r["run_type"] == "backfill" and start <= _dt(r["data_interval_start"]) <= start + timedelta(hours=1)]
    states = live_airflow.wait_runs(DAG_ID, [r["dag_run_id"] for r in runs], timeout=600)
    return {"start": start, "night": ln, "created": created, "runs": runs, "states": states}


def test_backfill_of_one_hour_creates_five_windows_to_inclusive(backfill):
    start = backfill["start"]
    windows = sorted((_dt(r["data_interval_start"]), _dt(r["data_interval_end"])) for r in backfill["runs"])
    # "To" is inclusive: every window whose start (the logical date) lies in [From, To], i.e. 75 minutes
    assert windows == [(start + k * STEP, start + (k + 1) * STEP) for k in range(5)]
    assert (_dt(backfill["created"]["from_date"]), _dt(backfill["created"]["to_date"])) == \
        (start, start + timedelta(hours=1))
    assert set(backfill["states"].values()) == {"success"}, backfill["states"]


def test_clear_and_rerun_after_a_sink_changed_fails_and_names_the_exposure(backfill, live_airflow):
    ln = backfill["night"]
    run = next(r for r in backfill["runs"] if _dt(r["data_interval_start"]) == backfill["start"])
    assert backfill["states"][run["dag_run_id"]] == "success"
    from facility_data.rubin import steps

    broken = ln.refs()[0]
    yaml_path = steps.paths(ln.policy, broken).yaml
    text = yaml_path.read_text()
    altered = text.replace(broken.obs_id, broken.obs_id[:-1] + ("8" if broken.obs_id[-1] != "8" else "7"))
    assert altered != text
    yaml_path.write_text(altered)

    # the UI's "Clear Run" (all task instances, not only failed ones): the scheduler re-runs the whole window
    live_airflow.api("POST", f"/dags/{DAG_ID}/dagRuns/{run['dag_run_id']}/clear",
                     json={"dry_run": False, "only_failed": False})
    time.sleep(1)
    state = live_airflow.wait_runs(DAG_ID, [run["dag_run_id"]], timeout=420)[run["dag_run_id"]]
    tis = {(t["task_id"], t["map_index"]): t for t in live_airflow.server.task_states(DAG_ID, run["dag_run_id"])}
    dims = {t["rendered_map_index"]: t["state"] for (tid, _), t in tis.items() if tid == "exposure.dimensions"}
    assert dims.get(broken.obs_id) == "failed", dims  # the step refuses to overwrite the altered yaml
    summary_log = live_airflow.task_log(DAG_ID, run["dag_run_id"], "summary")
    assert (state, tis[("summary", -1)]["state"]) == ("failed", "failed"), summary_log[-2000:]
    assert broken.obs_id in summary_log, summary_log[-2000:]
