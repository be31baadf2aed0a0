"""An Airflow home for the local site: SQLite metadata DB by default (PostgreSQL with FACILITY_AIRFLOW_DB=postgres),
the bundle's dags/ and plugins/, the site's connections imported, and every port configurable."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from facility_data.config import include_dir
from facility_data.localsite.procs import SiteError


def airflow_env(site) -> dict[str, str]:
    home = site.root / "airflow"
    bundle = include_dir().parent
    port = site.state["ports"]["airflow"]
    if os.environ.get("FACILITY_AIRFLOW_DB") == "postgres":
        db = site.postgres.ensure_database("airflow")
    else:
        db = f"sqlite:///{home / 'airflow.db'}"
    return {
        **os.environ,
        **site.env(),
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(bundle / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(bundle / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": db,
        "AIRFLOW__API__PORT": str(port),
        "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{port}",
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{port}/execution/",
        "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(site.state["ports"].setdefault("airflow_logs", _port())),
        "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(site.state["ports"].setdefault("airflow_tlogs", _port())),
        "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
        "AIRFLOW__SCHEDULER__DAG_DIR_LIST_INTERVAL": "5",
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
        "AIRFLOW__CORE__MAX_ACTIVE_TASKS_PER_DAG": "8",
        "AIRFLOW__CORE__PARALLELISM": "4",
    }


def _port() -> int:
    from facility_data.localsite.procs import free_port

    return free_port()


def airflow(site, *args: str, check: bool = True, capture: bool = True) -> subprocess.CompletedProcess:
    res = subprocess.run([sys.executable, "-m", "airflow", *args], env=airflow_env(site), text=True,
                         capture_output=capture)
    if check and res.returncode:
        raise SiteError(f"`airflow {' '.join(args)}` failed: {(res.stderr or '')[-2000:]}")
    return res


def init(site) -> Path:
    """Migrate the metadata DB and import the site's connections (idempotent)."""
    home = site.root / "airflow"
    home.mkdir(parents=True, exist_ok=True)
    airflow(site, "db", "migrate")
    conns = site.connections()
    if conns:
        path = home / "connections.json"
        path.write_text(json.dumps(conns, indent=2))
        os.chmod(path, 0o600)
        airflow(site, "connections", "import", "--overwrite", str(path))
    site._save()
    return home
