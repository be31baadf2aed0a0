"""The EdgeExecutor (issue 13): a central Airflow whose tasks are pulled over HTTP by edge workers at the sites.

A separate Airflow for this module only (own home, PostgreSQL DB and free ports), started with
FACILITY_EXECUTOR's edge settings, and three `airflow edge worker` processes, each with its own working directory,
no metadata DB, and an endpoints file holding only the endpoints its site mounts:

* ``als-beamline-worker`` serves the ``als-beamline`` queue and sees spot832 and data832 (the copy off spot runs
  there);
* ``als-data-worker`` serves ``als-data`` and ``nersc`` and sees data832 and nersc832 (with the local transfer
  backend a copy runs in the worker that pushes it, so the hop to NERSC needs both; with Globus it needs neither).

* ``usdf-worker`` serves ``usdf`` (every Rubin task) and knows no ALS endpoint.

The transfer health check then runs through the two ALS workers; the test reads from the task instances (``hostname``, which the
edge worker sets to its name, and ``queue``) and from edge3's job table that every task ran on the worker serving
the queue include/placement.yaml gives it, and that its results are the ones the LocalExecutor run under
``dag.test()`` gives (tests/dags/test_operators_healthcheck.py). A released Rubin window then runs on the usdf
worker and releases its night into every sink. About 6 minutes with the site up, on a busy 2-core machine.
"""

from __future__ import annotations

import ast
import json
import os
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml
from _live_support import Live, floor15, rubin_night, sink_contents

pytestmark = [pytest.mark.live, pytest.mark.integration, pytest.mark.timeout(900)]
REPO = Path(__file__).resolve().parents[2]
DAG_ID = "als_transfer_healthcheck"
WORKERS = {  # name -> (queues, the endpoints its site mounts)
    "als-beamline-worker": (["als-beamline"], ["spot832", "data832"]),
    "als-data-worker": (["als-data", "nersc"], ["data832", "nersc832"]),
    "usdf-worker": (["usdf"], []),  # Rubin: the embargo store, Butler repos and Rucio, no ALS endpoint
}
RUBIN_DAG = "rubin_unembargo_raw"
RUBIN_START = floor15(datetime.now(UTC)) - timedelta(minutes=30)


def _endpoints_file(path: Path, names: list[str]) -> Path:
    """include/endpoints.yaml cut down to ``names``: any other endpoint is unknown to the worker using it."""
    full = yaml.safe_load((REPO / "include" / "endpoints.yaml").read_text())
    path.write_text(yaml.safe_dump({"endpoints": {n: full["endpoints"][n] for n in names}}))
    return path


def _db(server):
    import sqlalchemy

    return sqlalchemy.create_engine(server.env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"])


def _registered(engine) -> dict[str, dict]:
    import sqlalchemy

    with engine.connect() as c:
        try:
            rows = c.execute(sqlalchemy.text("SELECT worker_name, state, queues FROM edge_worker")).all()
        except sqlalchemy.exc.ProgrammingError:  # the api-server creates the edge tables on its start
            return {}
    # edge3 stores a worker's queues as the repr of a Python list
    return {r.worker_name: {"state": r.state, "queues": ast.literal_eval(r.queues or "None")} for r in rows}


def _all_alive(workers) -> None:
    dead = [n for n, w in workers.items() if not w.alive()]
    assert not dead, f"edge workers exited: {dead}; log tail: " + " | ".join(
        workers[n].log.read_text(errors="replace")[-1500:] for n in dead)


@pytest.fixture(scope="module")
def edge(site):
    from facility_data.localsite import DIRECTORIES
    from facility_data.localsite.airflow_home import AirflowServer, EdgeWorker, edge_env, jwt_secret
    from facility_data.localsite.procs import free_port

    root = Path(os.environ["AIRFLOW_HOME"]).parent / "edge-airflow"  # the session's temp dir (see conftest)
    home, site_dir = root / "airflow", root / "site"
    for d in DIRECTORIES:
        (site_dir / d).mkdir(parents=True, exist_ok=True)
    home.mkdir(parents=True, exist_ok=True)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {
        "AIRFLOW_HOME": str(home),
        "FACILITY_SITE": str(site_dir),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": site.postgres.ensure_database("airflow_edge", fresh=True),
        "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",
        "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(home / "logs"),
        "AIRFLOW__WORKERS__EXECUTION_API_TIMEOUT": "60",  # a busy api-server must not fail innocent tasks
        "AIRFLOW__API__PORT": str(port),
        "AIRFLOW__API__BASE_URL": base,
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{base}/execution/",
        "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port()),
        "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(free_port()),
        "FACILITY_RUBIN_POLICY": str(root / "embargo_policy.yaml"),
        # catchup starts half an hour ago: unpausing runs two or three windows, the first releasing the test's night
        "FACILITY_RUBIN_START": RUBIN_START.isoformat(),
        **{f"AIRFLOW_CONN_{cid.upper()}": json.dumps(c) for cid, c in site.connections().items()},
        **edge_env(base, jwt_secret(home)),
    }
    server = AirflowServer(site, env=env)
    assert server.edge, "the edge settings did not reach the server's environment"
    workers = {}
    for name, (queues, endpoints) in WORKERS.items():  # a worker without endpoints knows none
        workdir = root / "workers" / name
        workdir.mkdir(parents=True, exist_ok=True)
        workers[name] = EdgeWorker(server.env, name, queues, workdir, env={
            "FACILITY_ENDPOINTS_FILE": str(_endpoints_file(workdir / "endpoints.yaml", endpoints))})
    try:
        server.start(timeout=420)
        for w in workers.values():
            w.start()
        engine = _db(server)
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            seen = _registered(engine)
            if all(seen.get(n, {}).get("state") in ("idle", "running") for n in workers):
                break
            _all_alive(workers)
            time.sleep(2)
        else:
            pytest.fail(f"edge workers not registered within 180 s: {_registered(engine)}")
        yield server, workers, engine, site_dir, root
    finally:
        for w in workers.values():
            w.stop()
        server.stop()


def test_workers_register_with_their_queues_only(edge):
    _, workers, engine, _, _ = edge
    seen = _registered(engine)
    assert {n: sorted(seen[n]["queues"]) for n in workers} == {n: sorted(q) for n, (q, _) in WORKERS.items()}
    for w in workers.values():  # a worker holds no copy of the metadata DB
        assert "sqlite" in w.env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]
        assert w.env["AIRFLOW_HOME"].startswith(str(w.workdir))


@pytest.fixture(scope="module")
def healthcheck(edge):
    server, workers, _, _, _ = edge
    assert server.wait_for_dag(DAG_ID, timeout=180), f"{DAG_ID} not parsed"
    server.api("PATCH", f"/dags/{DAG_ID}", json={"is_paused": False})
    run_id = server.trigger(DAG_ID, {})
    deadline = time.monotonic() + 600
    state = "queued"
    while time.monotonic() < deadline and state not in ("success", "failed"):
        _all_alive(workers)  # a dead worker would leave its tasks queued until the deadline
        time.sleep(3)
        state = server.api("GET", f"/dags/{DAG_ID}/dagRuns/{run_id}")["state"]
    return run_id, state, server.task_states(DAG_ID, run_id)


def test_healthcheck_runs_each_task_on_the_worker_of_its_queue(edge, healthcheck):
    import sqlalchemy

    from facility_data.placement import load_placement

    _, _, engine, _, _ = edge
    run_id, state, tis = healthcheck
    assert state == "success", {t["task_id"]: t["state"] for t in tis}
    placement = load_placement()
    worker_of = {q: n for n, (queues, _) in WORKERS.items() for q in queues}
    expected, ran = {}, {}
    for ti in tis:
        queue = placement.roles[placement.rule_for(DAG_ID, ti["task_id"]).role].queue
        expected[ti["task_id"]] = (queue, worker_of[queue])
        ran[ti["task_id"]] = (ti["queue"], ti["hostname"])
    assert ran == expected
    assert {q for q, _ in ran.values()} == {"als-beamline", "als-data", "nersc"}  # both ALS workers were used
    # a worker reports its job's end to the edge API after the task reported to the execution API: wait for it
    deadline = time.monotonic() + 90
    while True:
        with engine.connect() as c:
            jobs = c.execute(sqlalchemy.text("SELECT task_id, queue, edge_worker, state FROM edge_job "
                                             "WHERE dag_id = :d AND run_id = :r"), {"d": DAG_ID, "r": run_id}).all()
        if {j.state for j in jobs} != {"success"} and time.monotonic() < deadline:
            time.sleep(3)
            continue
        break
    assert {j.task_id: (j.queue, j.edge_worker) for j in jobs} == expected
    assert {j.task_id: j.state for j in jobs} == dict.fromkeys(expected, "success")


def test_healthcheck_results_equal_the_local_executor_run(edge, healthcheck):
    server, _, _, site_dir, _ = edge
    run_id, state, _ = healthcheck
    assert state == "success"

    def xcom(task_id):
        value = server.api("GET", f"/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances/{task_id}/xcomEntries/"
                           "return_value", params={"deserialize": True})["value"]
        return json.loads(value) if isinstance(value, str) else value

    verified = xcom("verify")
    # the values tests/dags/test_operators_healthcheck.py asserts for the LocalExecutor (dag.test()) run
    assert verified["endpoint"] == "nersc832" and verified["size"] == 4096 and verified["checksum_verified"]
    hop = xcom("transfer_middle_to_destination")
    assert hop["files"] == 1 and hop["bytes"] == 4096
    for ep in ("spot832", "data832", "nersc832"):  # probe directories removed everywhere
        assert list((site_dir / "endpoints" / ep / "healthcheck").iterdir()) == []


def test_a_worker_does_not_know_another_sites_endpoints(edge):
    """The endpoints a task asks for exist only on the workers of its site: spot832 is unknown on the data
    worker, nersc832 at the beamline (so a task placed on the wrong queue would fail, not silently work)."""
    import subprocess
    import sys

    _, workers, _, _, _ = edge
    probe = ("from facility_data.transfer import get_endpoint\n"
             "import sys\n"
             "for n in sys.argv[1:]:\n"
             "    try:\n        get_endpoint(n); print(n, 'known')\n"
             "    except Exception as e:\n        print(n, 'unknown', type(e).__name__)\n")
    for name, other in (("als-data-worker", "spot832"), ("als-beamline-worker", "nersc832")):
        w = workers[name]
        own = WORKERS[name][1]
        out = subprocess.run([sys.executable, "-c", probe, *own, other], env=w.env, cwd=w.workdir,
                             capture_output=True, text=True, timeout=120)
        lines = dict(line.split(" ", 1) for line in out.stdout.splitlines())
        assert all(lines[n] == "known" for n in own), (out.stdout, out.stderr)
        assert lines[other].startswith("unknown"), (out.stdout, out.stderr)


def test_rubin_window_runs_on_the_usdf_worker_and_releases_the_night(edge, site):
    """One released 15-minute window of a small synthetic night (1 exposure, 4 detectors) through
    rubin_unembargo_raw: every task on the usdf worker, and in the sinks what the LocalExecutor's live runs
    release (tests/live/test_live_backfill.py): the zip and yaml, the raws in the destination Butler, the DIDs."""
    server, workers, _, _, root = edge
    live = Live(server, root / "site", root / "embargo_policy.yaml", root / "nights")
    start = RUBIN_START  # the DAG's start date: Airflow creates no task instance for a run before it
    ln = rubin_night(live, site, first_release=start + timedelta(minutes=1), n_exposures=1)
    assert server.wait_for_dag(RUBIN_DAG, timeout=180), f"{RUBIN_DAG} not parsed"
    server.api("PATCH", f"/dags/{RUBIN_DAG}", json={"is_paused": False})  # catchup creates the window's run
    deadline = time.monotonic() + 600
    run, state = None, "queued"
    while time.monotonic() < deadline and state not in ("success", "failed"):
        _all_alive(workers)
        time.sleep(3)
        if run is None:
            run = next((r for r in server.runs(RUBIN_DAG)
                        if datetime.fromisoformat(r["data_interval_start"]) == start), None)
        else:
            state = server.api("GET", f"/dags/{RUBIN_DAG}/dagRuns/{run['dag_run_id']}")["state"]
    assert run is not None, f"no run of the window {start} within 600 s: {server.runs(RUBIN_DAG)}"
    tis = server.task_states(RUBIN_DAG, run["dag_run_id"])
    assert state == "success", {(t["task_id"], t["map_index"]): t["state"] for t in tis}
    ran = {(t["queue"], t["hostname"]) for t in tis if t["state"] not in ("skipped", "removed")}
    assert ran == {("usdf", "usdf-worker")}, ran
    assert any(t["task_id"] == "exposure.zip" and t["state"] == "success" for t in tis), tis
    found = sink_contents(site, ln)
    kinds = {f.split(" ", 1)[0] for f in found}
    assert kinds == {"file", "dataset", "rucio"}, found
    assert sum(f.startswith("dataset") for f in found) == 4, found  # one raw per detector
