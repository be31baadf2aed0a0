"""The operator dashboard (issue 16) as the reports app serves it, on real data: a synthetic Rubin night in a SQLite
Butler and the local embargo store (read by the reconcile's own check), ALS scans copied between the local
endpoints and recorded in a real ledger, a reconcile report written by the ALS reconcile, and task instances and
runs that Airflow's ``dag.test()`` put into the session's metadata DB. Rucio is a stand-in with nothing registered
(tests/live has the real server): every exposure's Rucio sink reads "missing".
"""

from __future__ import annotations

import importlib.util
import io
import os
import re
import warnings
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from no_rucio import NoRucio  # tests/unit is on sys.path

from facility_data.ui.app import create_app
from facility_data.ui.dashboard import scrub

warnings.filterwarnings("ignore", module="erfa")
REPO = Path(__file__).resolve().parents[2]
FOLDER = "ALS-11111_synthetic"
DAY = date(2024, 1, 1)
DONE_SCAN, LOST_SCAN = "20240101_120000_done", "20240101_130000_lost"


PROBE_DAG = """
from datetime import datetime
from airflow.sdk import DAG, get_current_context, task

with DAG({dag_id!r}, schedule=None, start_date=datetime(2025, 1, 1), catchup=False) as dag:
    @task(map_index_template="{{{{ obs_id }}}}", retries=0)
    def gate(obs_id: str) -> str:
        get_current_context()["obs_id"] = obs_id
        return obs_id

    gate.expand(obs_id={obs_ids!r})
"""


def _probe_run(folder: Path, dag_id: str, obs_ids: list[str]):
    """A real run of a small DAG whose mapped task is named by obs_id, as the Rubin DAGs name theirs (parsed from a
    file and serialised to the DB, as dag.test() needs)."""
    from airflow.dag_processing.bundles.manager import DagBundlesManager
    from airflow.dag_processing.dagbag import DagBag, sync_bag_to_db

    path = folder / f"{dag_id}.py"
    path.write_text(PROBE_DAG.format(dag_id=dag_id, obs_ids=obs_ids))
    bag = DagBag(dag_folder=str(path))
    assert not bag.import_errors, bag.import_errors
    DagBundlesManager().sync_bundles_to_db()
    sync_bag_to_db(bag, "dags-folder", None)
    dr = bag.get_dag(dag_id).test()
    assert str(dr.state) == "success"
    return dr


@pytest.fixture(scope="module")
def world(airflow_db, tmp_path_factory):
    """Everything the dashboard reads, set up once: site dir, Rubin night and policy, ALS scans, ledger, report."""
    from facility_data.als.beamline import load_beamline
    from facility_data.als.ledger import Ledger
    from facility_data.als.reconcile import Reconcile, Request, reports_dir, write_report
    from facility_data.als.steps import record_copy, validate_new_scan
    from facility_data.demo import als_synthetic
    from facility_data.demo.rubin_synthetic import build_night, unique_day_obs, write_policy
    from facility_data.rubin import steps
    from facility_data.transfer import LocalTransfer, load_endpoints

    site = tmp_path_factory.mktemp("dash") / "site"
    mp = pytest.MonkeyPatch()
    mp.setenv("FACILITY_SITE", str(site))
    mp.delenv("FACILITY_REPORTS", raising=False)
    night = build_night(site / "rubin", day_obs=unique_day_obs(), n_exposures=3, detectors=2)
    policy = night.policy()
    mp.setenv("FACILITY_RUBIN_POLICY", str(write_policy(policy, site / "policy.yaml")))
    # one exposure's manifest gone: the sinks say incomplete_at_source for it, not_started for the others
    (night.store.root / night.instrument / str(night.day_obs) / night.obs_ids[0]
     / steps.manifest_name(night.obs_ids[0])).unlink()
    rubin_run = _probe_run(site.parent, "rubin_dashboard_probe", night.obs_ids[1:])

    bl, eps = load_beamline("bl832"), load_endpoints()
    ledger = Ledger(bl.ledger_file())
    als_run = _probe_run(site.parent, "bl832_dashboard_probe", ["x"])
    for name in (DONE_SCAN, LOST_SCAN):
        loc = bl.location("spot")
        als_synthetic.write_scan(eps[loc.endpoint].local_path(loc.path_of(f"{FOLDER}/{name}.h5")), n_angles=31,
                                 size=32, n_slices=2, seed=3 if name == DONE_SCAN else 4)
    rec = validate_new_scan(bl, eps, ledger, {"file_path": f"/global/raw/{FOLDER}/{DONE_SCAN}.h5",
                                              "is_export_control": False})
    for src, dst in (("spot", "data"), ("data", "nersc")):
        LocalTransfer().transfer(eps[bl.location(src).endpoint], rec["paths"][src]["raw"],
                                 eps[bl.location(dst).endpoint], rec["paths"][dst]["raw"], export_controlled=False)
        record_copy(bl, eps, ledger, rec, source=src, destination=dst, run_id=als_run.run_id)
    report = Reconcile(bl, eps, ledger, Request(DAY, DAY, dry_run=True, repair=False),
                       decision_override='{"local": false, "nersc": false, "alcf": false}',
                       now=datetime.now(UTC) + timedelta(hours=3)).run()
    write_report(report, reports_dir(bl))
    yield {"site": site, "night": night, "policy": policy, "rubin_run": rubin_run, "als_run": als_run,
           "reports": site / "reports"}
    mp.undo()


@pytest.fixture
def env(world, monkeypatch):
    monkeypatch.setenv("FACILITY_SITE", str(world["site"]))
    monkeypatch.setenv("FACILITY_RUBIN_POLICY", str(world["site"] / "policy.yaml"))
    monkeypatch.delenv("FACILITY_REPORTS", raising=False)
    monkeypatch.delenv("AIRFLOW__API__BASE_URL", raising=False)
    return world


@pytest.fixture(scope="module")
def token(airflow_db) -> str:
    """A real JWT of Airflow's simple auth manager for the admin (the api-server's own check accepts it)."""
    from airflow.api_fastapi.app import get_auth_manager, init_auth_manager
    from airflow.api_fastapi.auth.managers.simple.user import SimpleAuthManagerUser
    from fastapi import FastAPI

    init_auth_manager(FastAPI())
    return get_auth_manager().generate_jwt(SimpleAuthManagerUser(username="admin", role="admin"))


def client(world, token, context=None, **kw) -> TestClient:
    from facility_data.rubin import steps

    policy = world["policy"]
    factory = context or (lambda: steps.Context(policy, rucio=NoRucio(), dry_run=True))
    return TestClient(create_app(world["reports"], rubin_context=factory),
                      headers={"Authorization": f"Bearer {token}"}, **kw)


def night_url(world) -> str:
    n = world["night"]
    return f"/dashboard/rubin/{n.instrument}/{n.day_obs}"


def rows(page: str) -> list[str]:
    return re.findall(r"<tr>(.*?)</tr>", page)


def test_every_dashboard_page_is_refused_without_a_login(env, token):
    anonymous = TestClient(create_app(env["reports"]), follow_redirects=False)
    for url in ("/dashboard/", night_url(env), "/dashboard/als/bl832/2024-01-01", "/dashboard/als/bl832/chart.png",
                f"/dashboard/search?q={env['night'].obs_ids[1]}", "/dashboard/rubin?instrument=x&day_obs=1"):
        r = anonymous.get(url)
        assert r.status_code == 401 and env["night"].obs_ids[1] not in r.text and "raw/" not in r.text, url
        assert anonymous.get(url, headers={"Authorization": "Bearer forged"}).status_code == 403, url


def test_rubin_night_shows_each_exposure_by_state_and_sink_as_the_sinks_say(env, token):
    n = env["night"]
    page = client(env, token).get(night_url(env)).text
    assert "Read live from the sinks" in page
    by_obs = {o: next(r for r in rows(page) if f">{o}</a>" in r) for o in n.obs_ids}
    assert "incomplete_at_source" in by_obs[n.obs_ids[0]]
    for o in n.obs_ids[1:]:
        assert "<td>not_started</td>" in by_obs[o] and "<td>missing</td>" in by_obs[o], by_obs[o]
    counts = dict(re.findall(r"<tr><td>(\w+)</td><td>(\d+)</td></tr>", page))
    assert counts["not_started"] == "2" and counts["incomplete_at_source"] == "1" and counts["done"] == "0"


def test_every_rubin_row_links_to_the_run_that_handled_it(env, token):
    n, run = env["night"], env["rubin_run"]
    page = client(env, token).get(night_url(env)).text
    for k, o in enumerate(n.obs_ids[1:]):
        row = next(r for r in rows(page) if f">{o}</a>" in r)
        assert f'href="/dags/rubin_dashboard_probe/runs/{run.run_id.replace(":", "%3A").replace("+", "%2B")}' \
               f'/tasks/gate/mapped/{k}"' in row, row
    assert "no run yet" in next(r for r in rows(page) if f">{n.obs_ids[0]}</a>" in r)


def test_rubin_night_shows_the_newest_reconcile_chart_covering_it(env, token, tmp_path):
    from facility_data.rubin import reconcile, report, steps

    n = env["night"]
    c = client(env, token)
    assert "No reconcile chart covers this night yet" in c.get(night_url(env)).text
    ctx = steps.Context(env["policy"], rucio=NoRucio(), dry_run=True)
    night = reconcile.check_night(ctx, n.instrument, n.day_obs, now=datetime.now(UTC))
    written = report.write_reports([night], {"found": {}}, reports_dir=env["reports"] / "rubin_reconcile")
    try:
        page = c.get(night_url(env)).text
        chart = next(p for p in written if p.suffix == ".png")
        src = f"/file/rubin_reconcile/{n.instrument}/{chart.name}"
        assert f"src='{src}'" in page and c.get(src).content.startswith(b"\x89PNG")
        assert f"/dashboard/rubin/{n.instrument}/{n.day_obs}" in c.get("/dashboard/").text
    finally:
        for p in written:
            p.unlink()


def test_a_night_whose_sinks_cannot_be_read_is_refused_not_shown_empty(env, token):
    def broken():
        raise OSError(f"cannot open {env['site']}/butler/embargo/butler.yaml")

    r = client(env, token, context=broken).get(night_url(env))
    assert r.status_code == 503 and "cannot be read" in r.text and str(env["site"]) not in r.text


def test_bad_or_unknown_nights_days_and_beamlines_are_refused(env, token):
    c = client(env, token)
    n = env["night"]
    assert c.get(f"/dashboard/rubin/{n.instrument}/2026111x").status_code == 400
    assert c.get(f"/dashboard/rubin/{n.instrument}/20260231").status_code == 400
    r = c.get(f"/dashboard/rubin/NoSuchCam/{n.day_obs}")
    assert r.status_code == 404 and "unknown instrument" in r.text
    assert c.get("/dashboard/als/bl999/2024-01-01").status_code == 404
    assert c.get("/dashboard/als/bl832/2024-1-1").status_code == 400
    assert c.get("/dashboard/als/bl832/chart.png?last=soon").status_code == 400
    form = c.get(f"/dashboard/rubin?instrument={n.instrument}&day_obs={n.day_obs}", follow_redirects=False)
    assert form.status_code == 303 and form.headers["location"] == night_url(env)
    assert c.get("/dashboard/rubin?instrument=../x&day_obs=20240101").status_code == 400


def test_als_day_shows_scans_by_state_where_each_copy_is_and_the_run(env, token):
    run = env["als_run"]
    page = client(env, token).get("/dashboard/als/bl832/2024-01-01").text
    assert "newest reconcile report of this day" in page and "(a dry run)" in page
    done = next(r for r in rows(page) if f"{DONE_SCAN}.h5</a>" in r)
    lost = next(r for r in rows(page) if f"{LOST_SCAN}.h5</a>" in r)
    assert "<td>done</td>" in done and done.count("present at ") == 3  # spot, data and NERSC
    assert f'href="/dags/bl832_dashboard_probe/runs/{run.run_id.replace(":", "%3A").replace("+", "%2B")}"' in done
    assert "<td>not_started</td>" in lost and "no run recorded" in lost and "present at" not in lost
    counts = dict(re.findall(r"<tr><td>(\w+)</td><td>(\d+)</td></tr>", page))
    assert counts["done"] == "1" and counts["not_started"] == "1"
    empty = client(env, token).get("/dashboard/als/bl832/2024-01-02").text
    assert "No reconcile report of this day yet" in empty and "no scan of this day" in empty


def test_als_day_links_its_report_s_own_chart_while_it_exists(env, token):
    c = client(env, token)
    (png,) = (env["reports"] / "als_reconcile" / "bl832").glob("states_20240101_*-dry-run.png")
    href = f"/file/als_reconcile/bl832/{png.name}"
    page = c.get("/dashboard/als/bl832/2024-01-01").text
    assert f'<a href="{href}">chart</a>' in page and c.get(href).content.startswith(b"\x89PNG")
    kept = png.read_bytes()
    png.unlink()  # as retention would: the link goes with the file, the page still shows the day
    try:
        page = c.get("/dashboard/als/bl832/2024-01-01").text
        assert ">chart</a>" not in page and "newest reconcile report of this day" in page
    finally:
        png.write_bytes(kept)


def test_als_chart_draws_each_day_s_states(env, token):
    from PIL import Image

    c = client(env, token)
    r = c.get("/dashboard/als/bl832/chart.png?last=2024-01-01")
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    colours = {px[:3] for px in Image.open(io.BytesIO(r.content)).convert("RGB").getdata()}
    assert (0x2E, 0x7D, 0x32) in colours and (0x90, 0xA4, 0xAE) in colours  # done and not_started bars
    before = {px[:3] for px in Image.open(io.BytesIO(c.get("/dashboard/als/bl832/chart.png?last=2023-12-01")
                                                     .content)).convert("RGB").getdata()}
    assert (0x2E, 0x7D, 0x32) not in before  # a range without scans draws no bar
    assert 'src="/dashboard/als/bl832/chart.png?last=2024-01-01"' in c.get("/dashboard/als/bl832/2024-01-01").text


@pytest.mark.parametrize("q", [f"raw/{FOLDER}/{DONE_SCAN}.h5", f"/global/raw/{FOLDER}/{DONE_SCAN}.h5",
                               f"{DONE_SCAN}.h5"])
def test_search_by_scan_path_shows_its_journey_with_run_links(env, token, q):
    run = env["als_run"]
    page = client(env, token).get("/dashboard/search", params={"q": q}).text
    assert f"ALS bl832 scan raw/{FOLDER}/{DONE_SCAN}.h5" in page
    steps = [r for r in rows(page) if "verified copy at" in r]
    # each transfer records both ends: spot and data, then data and NERSC, each with the run that verified it
    assert [re.search(r"verified copy at (\w+)", s).group(1) for s in steps] == ["spot", "data", "data", "nersc"]
    assert all("/dags/bl832_dashboard_probe/runs/" in s and run.run_id[:10] in s for s in steps)
    assert "recorded by the new-file run (not export-controlled)" in page and "State: <b>done</b>" in page


def test_search_finds_a_lost_scan_only_the_reconcile_saw(env, token):
    page = client(env, token).get("/dashboard/search", params={"q": f"{LOST_SCAN}.h5"}).text
    assert f"scan raw/{FOLDER}/{LOST_SCAN}.h5" in page and "State: <b>not_started</b>" in page
    assert "no ledger event" in page


def test_search_by_obs_id_shows_each_step_and_links_to_its_task_log(env, token):
    n, run = env["night"], env["rubin_run"]
    page = client(env, token).get("/dashboard/search", params={"q": n.obs_ids[2]}).text
    assert f"Rubin exposure {n.obs_ids[2]}" in page
    step = next(r for r in rows(page) if "<td>gate</td>" in r)
    assert "<td>success</td>" in step and "/tasks/gate/mapped/1" in step and "rubin_dashboard_probe" in step
    assert run.run_id[:10] in step
    assert f"/dashboard/rubin/{n.instrument}/{n.day_obs}" in page  # on to its night


def test_search_refuses_bad_queries_and_says_when_nothing_matches(env, token):
    c = client(env, token)
    for q in ("", "../../etc/passwd", "a b", "x" * 301, "raw/<script>"):
        assert c.get("/dashboard/search", params={"q": q}).status_code == 400, q
    page = c.get("/dashboard/search", params={"q": "MC_O_20990101_000001"}).text
    assert "No scan or exposure matches MC_O_20990101_000001" in page


def test_links_honour_a_base_url_with_a_path_prefix(env, token, monkeypatch):
    monkeypatch.setenv("AIRFLOW__API__BASE_URL", "https://facility.example/airflow/")
    n = env["night"]
    # mounted as the api-server mounts it under that base_url: its root path is /airflow/facility-reports
    c = client(env, token, root_path="/airflow/facility-reports")
    night = c.get(night_url(env)).text
    assert "/airflow/dags/rubin_dashboard_probe/runs/" in night
    assert not re.search(r'href="/dags/', night)
    assert 'action="/airflow/facility-reports/dashboard/search"' in night
    day = c.get("/dashboard/als/bl832/2024-01-01").text
    assert "/airflow/dags/bl832_dashboard_probe/runs/" in day and 'href="/dags/' not in day
    assert f'href="/airflow/facility-reports/dashboard/search?q={n.obs_ids[1]}"' in night
    spec = importlib.util.spec_from_file_location("facility_reports_prefixed", REPO / "plugins" / "facility_reports.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    hrefs = [v["href"] for v in module.FacilityReportsPlugin.external_views]
    assert hrefs == ["/airflow/facility-reports/", "/airflow/facility-reports/dashboard/"]


def test_no_dashboard_page_shows_a_server_path(env, token):
    n = env["night"]
    c = client(env, token)
    seen = []
    for url in ("/dashboard/", night_url(env), "/dashboard/als/bl832/2024-01-01", "/dashboard/als/bl832/2024-01-02",
                f"/dashboard/search?q={n.obs_ids[1]}", f"/dashboard/search?q={DONE_SCAN}.h5",
                f"/dashboard/search?q={LOST_SCAN}.h5", "/dashboard/als/bl999/2024-01-01", "/dashboard/nope"):
        r = c.get(url)
        seen.append(r.text + repr(dict(r.headers)))
    assert sum("<table>" in s for s in seen) >= 5
    site = env["site"]
    for path in {str(site), str(site.resolve()), os.environ["AIRFLOW_HOME"], "/global/"}:
        assert not any(path in s for s in seen), path


def test_scrub_replaces_absolute_paths_and_keeps_relative_names():
    assert scrub("copy at /data/raw/x/y.h5 differs (size 3)") == "copy at <path> differs (size 3)"
    assert scrub("raw/ALS-1/20240101_x.h5 at data832") == "raw/ALS-1/20240101_x.h5 at data832"
    assert scrub("see https://scicat.example/api/v3 for it") == "see https://scicat.example/api/v3 for it"
    assert scrub("butler:/site/butler/main: 0/2 datasets") == "butler:<path>: 0/2 datasets"


def test_a_fresh_site_gets_no_ledger_from_the_dashboard(token, tmp_path, monkeypatch):
    """The dashboard only reads: a site whose ledger does not exist yet shows nothing recorded, creates nothing."""
    site = tmp_path / "fresh"
    monkeypatch.setenv("FACILITY_SITE", str(site))
    monkeypatch.delenv("FACILITY_REPORTS", raising=False)
    c = TestClient(create_app(site / "reports"), headers={"Authorization": f"Bearer {token}"})
    assert "No scan or exposure matches" in c.get("/dashboard/search", params={"q": f"{DONE_SCAN}.h5"}).text
    assert "no scan of this day" in c.get("/dashboard/als/bl832/2024-01-01").text
    assert not site.exists()
