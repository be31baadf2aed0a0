"""The operator dashboard in a real browser (Debian's chromium, Playwright) on the live Airflow (issue 16).

A synthetic night released an hour ago is unembargoed by a manual run of rubin_unembargo_raw (the real scheduler,
Butler, Rucio server). Without a login the dashboard shows nothing and sends the browser to Airflow's login page;
logged in, the operator opens the night from the dashboard's form (its states read live from the sinks), searches
the obs_id, and follows the link of one step to its task page in the Airflow UI. No page shows a server path.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from urllib.parse import unquote

import pytest
from _live_support import CHROMIUM, CHROMIUM_ARGS, floor15, rubin_night

# the timeout includes starting the site and Airflow (minutes on a busy 2-core machine)
pytestmark = [pytest.mark.live, pytest.mark.integration, pytest.mark.timeout(1200)]
DAG_ID = "rubin_unembargo_raw"
STEP_TASKS = ("exposure.gate", "exposure.zip", "exposure.dimensions", "exposure.butler_ingest", "exposure.rucio")


@pytest.fixture(scope="module")
def released(live_airflow, site):
    """One exposure released an hour ago, unembargoed by a manual run; returns (night, obs_id, run_id)."""
    ln = rubin_night(live_airflow, site, first_release=floor15(datetime.now(UTC)) - timedelta(hours=1),
                     n_exposures=1)
    obs_id = ln.night.obs_ids[0]
    live_airflow.unpause(DAG_ID)
    run_id = live_airflow.server.trigger(DAG_ID, {"instrument": ln.night.instrument,
                                                  "day_obs": str(ln.night.day_obs), "obs_ids": [obs_id],
                                                  "dry_run": False})
    assert live_airflow.wait_runs(DAG_ID, [run_id], timeout=600)[run_id] == "success"
    return ln, obs_id, run_id


def _no_server_path(text: str, live) -> None:
    for path in (str(live.site_dir), str(live.nights), str(live.policy.parent)):
        assert path not in text, f"a page shows the server path {path}"


def test_dashboard_without_a_login_shows_nothing(live_airflow, released):
    from playwright.sync_api import sync_playwright

    ln, obs_id, _ = released
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            for path in ("/facility-reports/dashboard/", f"/facility-reports/dashboard/search?q={obs_id}",
                         f"/facility-reports/dashboard/rubin/{ln.night.instrument}/{ln.night.day_obs}",
                         "/facility-reports/docs", "/facility-reports/openapi.json"):
                page.goto(live_airflow.url + path)
                text = page.content()
                assert obs_id not in text and "Read live from the sinks" not in text, path
                assert "openapi" not in text.lower() and "swagger" not in text.lower(), path
                _no_server_path(text, live_airflow)
                if "docs" not in path and "openapi" not in path:
                    assert "/auth/login" in page.url, (path, page.url)  # sent to Airflow's own login
        finally:
            browser.close()


def test_operator_opens_the_night_searches_the_obs_id_and_follows_it_to_its_run(browser_page, live_airflow,
                                                                                 released):
    ln, obs_id, run_id = released
    page = browser_page
    page.goto(f"{live_airflow.url}/facility-reports/dashboard/")
    page.get_by_role("heading", name="Facility dashboard").wait_for()
    _no_server_path(page.content(), live_airflow)

    page.locator("input[name=instrument]").fill(ln.night.instrument)
    page.locator("input[name=day_obs]").fill(str(ln.night.day_obs))
    page.get_by_role("button", name="open").click()
    page.get_by_text("Read live from the sinks").wait_for(timeout=60_000)
    row = page.locator("tr", has_text=obs_id)
    assert row.locator("td").nth(1).inner_text() == "done", row.inner_text()
    assert row.get_by_role("link", name=f"{DAG_ID} {run_id}").count() == 1, row.inner_text()
    _no_server_path(page.content(), live_airflow)

    page.get_by_label("search").fill(obs_id)
    page.get_by_role("button", name="search").click()
    page.get_by_role("heading", name=f"Rubin exposure {obs_id}").wait_for()
    steps = {cells[1]: cells[2] for cells in (r.split("\t") for r in
                                              page.locator("tr", has_text="exposure.").all_inner_texts())}
    assert steps == dict.fromkeys(STEP_TASKS, "success"), steps  # each step of its run, with its state
    _no_server_path(page.content(), live_airflow)

    page.locator("tr", has_text="exposure.gate").get_by_role("link").click()
    page.wait_for_url(lambda u: f"/dags/{DAG_ID}/runs/{run_id}/tasks/exposure.gate/mapped/0" in unquote(u),
                      timeout=30_000)
    # the UI's own task page for that run (it names the run, or the mapped instance by its obs_id)
    page.get_by_text(run_id).or_(page.get_by_text(obs_id)).first.wait_for(timeout=30_000)
