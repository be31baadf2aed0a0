"""The Globus Transfer stand-in serving the shipped facility endpoints, for tests: a fixture body and helpers."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

from facility_data.localsite.globus_standin import GlobusTransferStandin
from facility_data.transfer import load_endpoints

REPO = Path(__file__).resolve().parents[2]
FACILITY_ENDPOINTS = REPO / "include" / "endpoints.facility.yaml"
PAYLOAD = b"scan bytes " * 4096


def globus_site(monkeypatch, tmp_path):
    """The stand-in serving every collection of the shipped facility endpoints, globus-sdk pointed at it, and a
    ``globus_default`` connection holding the stand-in's client credentials."""
    uuids = sorted({ep.uuid for ep in load_endpoints(FACILITY_ENDPOINTS).values()})
    dirs = {u: tmp_path / f"collection-{u[-2:]}" for u in uuids}
    for d in dirs.values():
        d.mkdir()
    standin = GlobusTransferStandin(dirs, client_id="cid", client_secret="not-logged-secret").start()
    for k, v in standin.env().items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("AIRFLOW_CONN_GLOBUS_DEFAULT", json.dumps(
        {"conn_type": "globus", "login": "cid", "password": "not-logged-secret"}))
    eps = load_endpoints(FACILITY_ENDPOINTS)

    def local(endpoint: str, path: str) -> Path:
        """The file on this machine behind ``path`` of a facility endpoint."""
        ep = eps[endpoint]
        return dirs[ep.uuid] / ep.remote_path(path).lstrip("/")

    try:
        yield SimpleNamespace(standin=standin, eps=eps, local=local, dirs=dirs)
    finally:
        standin.stop()


def put(site, endpoint: str, path: str, data: bytes = PAYLOAD) -> Path:
    p = site.local(endpoint, path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(data)
    return p


def ctx(task_id="copy", run_id="manual__1"):
    return {"ti": SimpleNamespace(dag_id="dag", run_id=run_id, task_id=task_id, map_index=-1)}
