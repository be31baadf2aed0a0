"""The real Airflow for the live tests: api-server, scheduler, dag-processor and triggerer (LocalExecutor) of
``airflow standalone``, driven through its REST API and a real browser.

* ``live_airflow``: one Airflow per test session, started only when a live test is selected. It shares the
  ``site`` fixture's services (PostgreSQL, Rucio, S3), runs this checkout's dags/ and plugins/, and has its own
  AIRFLOW_HOME, FACILITY_SITE, PostgreSQL metadata DB (SQLite hits a known 3.3.2 deferral race) and free ports.
  Its processes read the Rubin policy from one file, ``live_airflow.policy``, that each test rewrites for its night.
* ``browser_page``: Debian's chromium driven by Playwright, logged in; a failing test leaves a screenshot in its
  tmp dir.
"""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path

import pytest
from _live_support import CHROMIUM, CHROMIUM_ARGS, FACILITY_ENDPOINTS, Live, floor15


def pytest_configure(config):
    config.addinivalue_line("markers", "live: drives the real Airflow (REST API or browser), one per session, started on first use")


@pytest.fixture(scope="session")
def live_airflow(site):
    from facility_data.localsite import DIRECTORIES
    from facility_data.localsite.airflow_home import AirflowServer
    from facility_data.localsite.procs import free_port

    # under the session's own temp dir (tests/conftest.py), not pytest's basetemp: concurrent pytest sessions of
    # the same user prune each other's older basetemps, which would delete this home under a running Airflow
    root = Path(os.environ["AIRFLOW_HOME"]).parent / "live-airflow"
    home, site_dir = root / "airflow", root / "site"
    for d in DIRECTORIES:
        (site_dir / d).mkdir(parents=True, exist_ok=True)
    home.mkdir(exist_ok=True)
    policy = root / "embargo_policy.yaml"
    port = free_port()
    env = {
        "AIRFLOW_HOME": str(home),
        "FACILITY_SITE": str(site_dir),  # alerts, ledgers, reports of the live runs: never the developer's
        "FACILITY_RUBIN_POLICY": str(policy),
        # catchup of the unembargo schedule starts now: unpausing it runs only the current (empty) windows
        "FACILITY_RUBIN_START": floor15(datetime.now(UTC)).isoformat(),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": site.postgres.ensure_database("airflow_live", fresh=True),
        "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",
        "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(home / "logs"),
        # on 2 busy cores the api-server can take tens of seconds to answer a task process: the default 5 s
        # execution-API timeout would fail tasks that did nothing wrong
        "AIRFLOW__WORKERS__EXECUTION_API_TIMEOUT": "60",
        "AIRFLOW__API__PORT": str(port),
        "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{port}",
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{port}/execution/",
        "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port()),
        "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(free_port()),
        # the site's connections (Rucio, Butler, S3) as the env vars every Airflow process reads
        **{f"AIRFLOW_CONN_{cid.upper()}": json.dumps(c) for cid, c in site.connections().items()},
    }
    # A Globus stand-in serving the shipped facility collections, so a remote wait really defers to the triggerer
    globus = _globus_standin(root / "globus")
    env.update({**globus.env(), "AIRFLOW_CONN_GLOBUS_DEFAULT": json.dumps(
        {"conn_type": "globus", "login": globus.client_id, "password": globus.client_secret})})
    # this checkout's dags/ and, as a second bundle, the live tests' own DAGs (never shipped)
    env["AIRFLOW__DAG_PROCESSOR__DAG_BUNDLE_CONFIG_LIST"] = json.dumps([
        {"name": "dags-folder", "classpath": "airflow.dag_processing.bundles.local.LocalDagBundle", "kwargs": {}},
        {"name": "live-tests", "classpath": "airflow.dag_processing.bundles.local.LocalDagBundle",
         "kwargs": {"path": str(Path(__file__).parent / "dagfiles"), "refresh_interval": 5}}])
    server = AirflowServer(site, env=env)
    try:  # stop it also when it does not become healthy in time: start() has launched it by then
        server.start(timeout=420)  # `airflow standalone` migrates the fresh DB first
        yield Live(server, site_dir, policy, root / "nights", globus)
    finally:
        server.stop()
        globus.stop()


def _globus_standin(root: Path):
    from facility_data.localsite.globus_standin import GlobusTransferStandin
    from facility_data.transfer import load_endpoints

    dirs = {ep.uuid: root / ep.uuid for ep in load_endpoints(FACILITY_ENDPOINTS).values()}
    for d in dirs.values():
        d.mkdir(parents=True, exist_ok=True)
    return GlobusTransferStandin(dirs, client_id="live-client", client_secret="live-secret").start()


_failed = pytest.StashKey[bool]()


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    """Remember whether the test body failed, for ``browser_page``'s screenshot at teardown."""
    report = yield
    if report.when == "call":
        item.stash[_failed] = report.failed
    return report


@pytest.fixture
def browser_page(live_airflow, tmp_path, request):
    """A logged-in chromium page on the live Airflow UI; a screenshot in ``tmp_path`` if the test fails."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(20_000)
            _login(page, live_airflow)
            yield page
            if request.node.stash.get(_failed, False):
                shot = tmp_path / "failure.png"
                page.screenshot(path=str(shot), full_page=True)
                print(f"screenshot of the failure: {shot}")
        finally:
            browser.close()


def _login(page, live: Live) -> None:
    page.goto(f"{live.url}/auth/login")
    page.locator("input:not([type=password])").first.fill("admin")
    page.locator("input[type=password]").fill(live.admin_password())
    page.keyboard.press("Enter")
    page.wait_for_url(lambda u: "/login" not in u, timeout=30_000)



