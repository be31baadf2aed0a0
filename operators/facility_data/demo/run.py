"""`make demo`: the main jobs on the embedded default, end to end, under the real Airflow scheduler.

1. brings up the local site (PostgreSQL, Rucio, S3 API) and an Airflow home, then `airflow standalone` on free ports;
2. ALS BL 8.3.2: triggers ``bl832_new_file`` through the REST API for a synthetic scan, as the file watcher would,
   follows the asset-triggered ``bl832_recon_local`` run, then a ``bl832_prune`` dry run;
3. Rubin: writes a synthetic night into the local embargo store and source Butler, backfills
   ``rubin_unembargo_raw`` over the night's release windows (the way an operator does from the UI), then breaks a few
   exposures on purpose and lets ``rubin_unembargo_reconcile`` find and repair them;
4. prints what happened and where to look, stops the Airflow processes it started and leaves the site up
   (``make site-down`` stops it).

Sections whose DAGs are not in the bundle yet are reported as such, not faked.
"""

from __future__ import annotations

import io
import json
import os
import signal
import sys
import time
import traceback
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from facility_data.localsite import Site
from facility_data.localsite.airflow_home import AirflowServer, init

RULE = "=" * 100


class Skip(Exception):
    """A demo section that cannot run yet (its DAG or helper is not in the bundle)."""


def say(msg: str = "") -> None:
    print(msg, flush=True)


def export_connections(site: Site) -> None:
    """Make the site's connections visible to hooks used in this process (the summaries read the sinks)."""
    for conn_id, conn in site.connections().items():
        os.environ[f"AIRFLOW_CONN_{conn_id.upper()}"] = json.dumps(conn)
    os.environ.update(site.env())


def wait_new_run(server: AirflowServer, dag_id: str, after: set[str], timeout: float = 300) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for run in server.runs(dag_id):
            if run["dag_run_id"] not in after:
                return run["dag_run_id"]
        time.sleep(2)
    raise Skip(f"no {dag_id} run appeared within {timeout:.0f} s")


def unpause(server: AirflowServer, dag_id: str) -> None:
    """Wait until the DAG is parsed (else the section is skipped, not faked) and unpause it: in Airflow 3.3 neither
    manual runs nor backfills start on a paused DAG."""
    if not server.wait_for_dag(dag_id, timeout=60):
        raise Skip(f"DAG {dag_id} is not in the bundle yet")
    server.api("PATCH", f"/dags/{dag_id}", json={"is_paused": False})


def run_and_wait(server: AirflowServer, dag_id: str, conf: dict, timeout: float = 900) -> tuple[str, str]:
    unpause(server, dag_id)
    run_id = server.trigger(dag_id, conf)
    say(f"  triggered {dag_id} run {run_id} through POST /api/v2/dags/{dag_id}/dagRuns")
    state = server.wait_run(dag_id, run_id, timeout=timeout)
    say(f"  {dag_id} {run_id}: {state}")
    return run_id, state


def failed_tasks(server: AirflowServer, dag_id: str, run_id: str) -> list[str]:
    return [f"{t['task_id']}[{t.get('map_index', -1)}]={t['state']}" for t in server.task_states(dag_id, run_id)
            if t["state"] not in ("success", "skipped")]


# --- ALS ---------------------------------------------------------------------------------------------------------
def als_section(site: Site, server: AirflowServer) -> str:
    try:
        from facility_data.demo import als as als_demo
    except ImportError as exc:
        raise Skip(f"facility_data.demo.als not available: {exc}") from None
    conf = als_demo.prepare(site.root)
    say(f"  synthetic scan written where the file watcher sees it: {conf.get('file_path')}")
    unpause(server, "bl832_recon_local")
    known = {r["dag_run_id"] for r in server.runs("bl832_recon_local")}
    run_id, state = run_and_wait(server, "bl832_new_file", conf)
    lines = [f"bl832_new_file {run_id}: {state}"]
    if state != "success":
        lines.append("  not successful: " + ", ".join(failed_tasks(server, "bl832_new_file", run_id)))
        return "\n".join(lines)
    recon_run = wait_new_run(server, "bl832_recon_local", known)
    say(f"  asset event started bl832_recon_local run {recon_run}")
    recon_state = server.wait_run("bl832_recon_local", recon_run, timeout=900)
    lines.append(f"bl832_recon_local {recon_run} (asset-triggered): {recon_state}")
    prune_run, prune_state = run_and_wait(server, "bl832_prune", {"dry_run": True})
    lines.append(f"bl832_prune {prune_run} (dry run): {prune_state}")
    lines.append(als_demo.summary(site.root))
    return "\n".join(lines)


# --- Rubin -------------------------------------------------------------------------------------------------------
def _floor15(t: datetime) -> datetime:
    return t.replace(minute=t.minute - t.minute % 15, second=0, microsecond=0)


def rubin_section(site: Site, server: AirflowServer, *, n_exposures: int, detectors: int) -> str:
    try:
        from facility_data.demo.rubin_synthetic import build_night
        from facility_data.rubin.nightsummary import print_night_summary
        from facility_data.rubin.policy import load_policy
        from facility_data.rubin.windows import release_time
    except ImportError as exc:
        raise Skip(f"Rubin pipeline not available: {exc}") from None
    dag_id = "rubin_unembargo_raw"
    unpause(server, dag_id)  # the server's FACILITY_RUBIN_START keeps its catchup to the current windows
    policy = load_policy()
    row = next(r for r in policy.rows if not r.where)
    # a night whose exposures were released during the last hour or so (80 h embargo + settle ago)
    embargo = timedelta(hours=row.embargo_hours, minutes=policy.settle_minutes)
    now = datetime.now(UTC)
    start = now - embargo - timedelta(seconds=36 * n_exposures) - timedelta(minutes=20)
    day_obs = int((start - timedelta(hours=12)).strftime("%Y%m%d"))
    t0 = time.monotonic()
    night = build_night(site.root, day_obs=day_obs, n_exposures=n_exposures, detectors=detectors, start=start)
    say(f"  synthetic night {day_obs}: {len(night.obs_ids)} exposures, {night.files} files, "
        f"{night.bytes / 1e6:.1f} MB in {night.store} ({time.monotonic() - t0:.1f} s)")
    releases = [release_time(end, row, policy.settle_minutes) for end in night.ends.values()]
    first, last = _floor15(min(releases)), _floor15(max(releases)) + timedelta(minutes=15)
    say(f"  release times {min(releases):%H:%M:%S}..{max(releases):%H:%M:%S} UTC; backfilling "
        f"[{first:%Y-%m-%d %H:%M}, {last:%H:%M}) as an operator would from the UI")
    known = {r["dag_run_id"] for r in server.runs(dag_id)}
    backfill = server.api("POST", "/backfills", json={
        "dag_id": dag_id, "from_date": first.isoformat(), "to_date": (last - timedelta(minutes=15)).isoformat(),
        "run_backwards": False, "dag_run_conf": {}, "reprocess_behavior": "none", "max_active_runs": 2})
    say(f"  backfill {backfill.get('id')} created through POST /api/v2/backfills")
    expected = int((last - first) / timedelta(minutes=15))
    deadline = time.monotonic() + 1800
    runs: list[dict] = []
    while time.monotonic() < deadline:
        runs = [r for r in server.runs(dag_id) if r["dag_run_id"] not in known]
        if len(runs) >= expected and all(r["state"] in ("success", "failed") for r in runs):
            break
        time.sleep(3)
    lines = [f"rubin_unembargo_raw backfill over {expected} windows: " +
             ", ".join(f"{r['dag_run_id']}={r['state']}" for r in sorted(runs, key=lambda r: r["dag_run_id"]))]
    table = io.StringIO()
    print_night_summary(night.day_obs, instrument=night.instrument, out=table)
    lines.append("per exposure and sink:\n" + table.getvalue())
    return "\n".join(lines), night


def reconcile_section(site: Site, server: AirflowServer, night) -> str:
    try:
        from facility_data.demo import rubin_breakage
    except ImportError as exc:
        raise Skip(f"reconciliation not available: {exc}") from None
    from facility_data.rubin.policy import policy_path

    # Unpausing lets the scheduler start the current hourly check at once; let it finish first, or it would
    # repair the damage before the demo's own run gets to show it.
    dag_id = "rubin_unembargo_reconcile"
    unpause(server, dag_id)
    deadline = time.monotonic() + 600
    time.sleep(10)
    while time.monotonic() < deadline and any(r["state"] not in ("success", "failed") for r in server.runs(dag_id)):
        time.sleep(3)
    broken = rubin_breakage.break_exposures(site.root, policy_path(), night.day_obs)
    say("  broke on purpose: " + "; ".join(broken))
    conf = {"instrument": night.instrument, "day_obs_first": str(night.day_obs),
            "day_obs_last": str(night.day_obs), "repair": True, "dry_run": False}
    run_id, state = run_and_wait(server, "rubin_unembargo_reconcile", conf)
    lines = [f"rubin_unembargo_reconcile {run_id} (repair): {state}", "broken on purpose: " + "; ".join(broken)]
    try:
        entry = server.api("GET", f"/dags/rubin_unembargo_reconcile/dagRuns/{run_id}/taskInstances/finish/"
                                  "xcomEntries/return_value", params={"deserialize": True})
        value = entry.get("value")
        lines.append(rubin_breakage.summary(json.loads(value) if isinstance(value, str) else value))
    except Exception as exc:  # the summary is a convenience; the run's state above is the result
        lines.append(f"(no reconcile summary: {exc})")
    return "\n".join(lines)


# --- main --------------------------------------------------------------------------------------------------------
def section(title: str, fn: Callable, results: list) -> object:
    say(f"\n== {title}")
    t0 = time.monotonic()
    try:
        out = fn()
    except Skip as exc:
        results.append((title, f"NOT YET IMPLEMENTED: {exc}"))
        say(f"  skipped: {exc}")
        return None
    except Exception as exc:
        results.append((title, f"FAILED: {type(exc).__name__}: {exc}"))
        traceback.print_exc()
        return None
    text, extra = out if isinstance(out, tuple) else (out, None)
    results.append((f"{title} ({time.monotonic() - t0:.0f} s)", text))
    return extra


def main() -> int:
    # stop what we started even when interrupted (`timeout`, CI cancel): SIGTERM unwinds through `finally`
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    n_exposures = int(os.environ.get("DEMO_EXPOSURES", "20"))
    detectors = int(os.environ.get("DEMO_DETECTORS", "205"))
    t0 = time.monotonic()
    # the scheduler, api-server and triggerer write concurrently: PostgreSQL, not SQLite, under the demo
    os.environ.setdefault("FACILITY_AIRFLOW_DB", "postgres")
    site = Site.from_env()
    say(RULE + f"\nfacility-data demo on the local site {site.root}")
    started = site.up()
    say(f"  site services: {', '.join(started) or 'already up'}; Rucio {site.rucio_url}, S3 {site.s3_url}")
    init(site)
    export_connections(site)
    server = AirflowServer(site)
    # scheduled unembargo windows start now; the demo night's earlier windows are reached by the backfill
    server.env["FACILITY_RUBIN_START"] = _floor15(datetime.now(UTC)).isoformat()
    say(f"  starting Airflow (api-server, scheduler, dag-processor, triggerer) on {server.url} ...")
    server.start()
    say(f"  Airflow up after {time.monotonic() - t0:.0f} s; log: {server.log}")
    results: list[tuple[str, str]] = []
    try:
        section("ALS BL 8.3.2: new file -> recon (asset) -> prune dry run", lambda: als_section(site, server),
                results)
        night = section("Rubin: unembargo a synthetic night by backfill",
                        lambda: rubin_section(site, server, n_exposures=n_exposures, detectors=detectors), results)
        if night is not None:
            section("Rubin: reconcile finds and repairs exposures broken on purpose",
                    lambda: reconcile_section(site, server, night), results)
    finally:
        server.stop()
    say("\n" + RULE + "\nSUMMARY")
    for title, text in results:
        say(f"\n## {title}\n{text}")
    alerts = site.root / "alerts.jsonl"
    say("\nWhere to look:")
    say(f"  site directory        {site.root}  (endpoints/, embargo/, main/, butler/, reports/)")
    say(f"  Airflow task logs     {site.root / 'airflow' / 'logs'}")
    say(f"  failure alerts        {alerts} ({len(alerts.read_text().splitlines()) if alerts.exists() else 0} lines)")
    say("  the UI                make airflow   (then open the printed URL)")
    say("  stop the services     make site-down")
    say(f"\ndemo finished in {time.monotonic() - t0:.0f} s")
    bad = [t for t, text in results if text.startswith("FAILED")]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
