"""docker-compose.yaml: a production-like Airflow 3 deployment of the bundle."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
COMPOSE = REPO / "docker-compose.yaml"


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def test_has_the_airflow3_components(compose):
    services = set(compose["services"])
    assert {"postgres", "airflow-apiserver", "airflow-scheduler", "airflow-dag-processor", "airflow-triggerer",
            "airflow-init"} <= services
    commands = {c for s in services if isinstance(c := compose["services"][s].get("command"), str)}
    assert {"api-server", "scheduler", "dag-processor", "triggerer"} <= commands


def test_bundle_is_mounted_and_package_installed(compose):
    common = compose["x-airflow-common"]
    mounts = [v.split(":")[0] for v in common["volumes"]]
    assert {"./dags", "./include", "./plugins"} <= set(mounts)
    assert common["environment"]["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].startswith("postgresql")
    dockerfile = (REPO / "Dockerfile").read_text()
    assert "requirements.lock" in dockerfile and "pip install --no-cache-dir --no-deps /opt/facility" in dockerfile


def test_remote_waits_defer_by_default(compose):
    assert compose["x-airflow-common"]["environment"]["AIRFLOW__OPERATORS__DEFAULT_DEFERRABLE"] == "true"
    assert "airflow-triggerer" in compose["services"]


def test_no_secret_is_hard_coded(compose):
    env = compose["x-airflow-common"]["environment"]
    assert env["AIRFLOW__API_AUTH__JWT_SECRET"].startswith("${"), "the JWT secret must come from the environment"


def _compose_cli() -> list[str] | None:
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "compose", "version"], capture_output=True).returncode == 0:
        return [docker, "compose"]
    return None


def test_compose_cli_validates_the_file():
    cli = _compose_cli()
    if cli is None:
        pytest.skip("no `docker compose` CLI plugin on this machine (only the docker client): "
                    "the structural checks above still ran")
    res = subprocess.run([*cli, "-f", str(COMPOSE), "config", "-q"], capture_output=True, text=True,
                         env={"AIRFLOW_JWT_SECRET": "x" * 32, "PATH": "/usr/bin:/bin"})
    assert res.returncode == 0, res.stderr
