"""Helpers of the live tests: the running Airflow (``Live``) and small synthetic Rubin nights it can see."""

from __future__ import annotations

import json
import secrets
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

CHROMIUM = "/usr/bin/chromium"
FACILITY_ENDPOINTS = Path(__file__).resolve().parents[2] / "include" / "endpoints.facility.yaml"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@dataclass
class Live:
    """The running Airflow, its private site directory and the policy file its tasks read."""

    server: object  # facility_data.localsite.airflow_home.AirflowServer
    site_dir: Path
    policy: Path
    nights: Path  # where the tests' synthetic nights live (their Butler repos must outlive pytest's tmp dirs)
    globus: object = None  # facility_data.localsite.globus_standin.GlobusTransferStandin serving the facility UUIDs

    def globus_file(self, endpoint: str, path: str) -> Path:
        """The stand-in's file behind ``path`` on a facility endpoint."""
        from facility_data.transfer import load_endpoints

        ep = load_endpoints(FACILITY_ENDPOINTS)[endpoint]
        return self.globus.collections[ep.uuid] / ep.remote_path(path).lstrip("/")

    @property
    def url(self) -> str:
        return self.server.url

    def api(self, method: str, path: str, **kwargs) -> dict:
        return self.server.api(method, path, **kwargs)

    def unpause(self, dag_id: str, timeout: float = 90) -> None:
        """Wait until the dag-processor has parsed ``dag_id``, then unpause it (paused DAGs start no runs)."""
        assert self.server.wait_for_dag(dag_id, timeout=timeout), f"{dag_id} not parsed within {timeout:.0f} s"
        self.api("PATCH", f"/dags/{dag_id}", json={"is_paused": False})

    def wait_runs(self, dag_id: str, run_ids: list[str], timeout: float = 240) -> dict[str, str]:
        """Bounded wait until every run in ``run_ids`` has finished; returns run_id -> state."""
        deadline = time.monotonic() + timeout
        states = {r: self.server.wait_run(dag_id, r, timeout=max(1.0, deadline - time.monotonic())) for r in run_ids}
        assert all(s in ("success", "failed") for s in states.values()), f"{dag_id} runs not finished: {states}"
        return states

    def task_log(self, dag_id: str, run_id: str, task_id: str, map_index: int = -1) -> str:
        ti = self.api("GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}"
                      + (f"/{map_index}" if map_index >= 0 else ""))
        log = self.api("GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/logs/{ti['try_number']}",
                       params={"map_index": map_index, "full_content": True})
        content = log.get("content")
        if isinstance(content, list):  # structured log lines
            return "\n".join(c.get("event", "") if isinstance(c, dict) else str(c) for c in content)
        return str(content)

    def admin_password(self) -> str:
        pw_file = Path(self.server.env["AIRFLOW_HOME"]) / "simple_auth_manager_passwords.json.generated"
        return json.loads(pw_file.read_text())["admin"]


def floor15(t: datetime) -> datetime:
    return t.replace(minute=t.minute - t.minute % 15, second=0, microsecond=0)


# --- Rubin nights for the live Airflow ------------------------------------------------------------------------
EMBARGO = timedelta(hours=80, minutes=5)  # the synthetic policy's embargo + settle


@dataclass
class LiveNight:
    night: object  # facility_data.demo.rubin_synthetic.Night
    policy: object  # facility_data.rubin.policy.EmbargoPolicy
    releases: dict[str, datetime]

    def refs(self):
        from facility_data.rubin.windows import ExposureRef

        n = self.night
        return [ExposureRef(n.instrument, n.day_obs, o, n.exposure_ids[o], "", "", 80) for o in n.obs_ids]


def rubin_night(live: Live, site, *, first_release: datetime, n_exposures: int = 2) -> LiveNight:
    """A small synthetic night (4 detectors) whose on-sky exposures are released 4 minutes apart from
    ``first_release``, and the live Airflow's policy pointed at it (its tasks read that file at run time)."""
    from facility_data.demo.rubin_synthetic import build_night, write_policy

    begin = first_release - EMBARGO - timedelta(seconds=30)  # release = begin + 30 s exposure + embargo + settle
    day_obs = int((begin - timedelta(hours=12)).strftime("%Y%m%d"))
    # one Rucio server for the session: a random sequence range keeps DIDs of nights on the same day apart
    night = build_night(live.nights / uuid.uuid4().hex[:8], day_obs=day_obs, n_exposures=n_exposures, detectors=4, cadence_s=240,
                        start=begin, first_seq=1000 + secrets.randbelow(900_000))
    prefix = site.root / "main" / f"live-{uuid.uuid4().hex[:8]}"  # under the Rucio RSE's prefix
    policy = night.policy(destination_prefix=prefix)
    write_policy(policy, live.policy)
    releases = {o: night.ends[o] + EMBARGO for o in night.obs_ids}
    return LiveNight(night, policy, releases)


def sink_contents(site, ln: LiveNight) -> list[str]:
    """Everything of this night in any sink: files under the destination prefix, raw datasets in the destination
    Butler, DIDs in Rucio."""
    from lsst.daf.butler import Butler

    prefix = Path(ln.policy.destination_prefix)
    found = [f"file {p}" for p in prefix.rglob("*") if p.is_file()] if prefix.exists() else []
    for repo in ln.night.destination_repos:
        butler = Butler.from_config(str(repo))
        try:
            refs = butler.query_datasets("raw", collections="*", find_first=False, explain=False)
        finally:
            butler.close()
        found += [f"dataset {r.dataId} in {repo}" for r in refs]
    client = site.rucio_client()
    for obs_id in ln.night.obs_ids:  # the Obs dataset and the zip and yaml files all carry the obs_id
        found += [f"rucio {d}" for d in client.list_dids(ln.policy.rucio.scope, {"name": f"*{obs_id}*"},
                                                          did_type="all")]
    return found
