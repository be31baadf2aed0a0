"""The local site's edge settings (FACILITY_EXECUTOR=edge) and edge worker environment, without starting anything
(tests/live/test_live_edge.py runs them)."""

from __future__ import annotations

import stat

import pytest

from facility_data.localsite.airflow_home import (
    EDGE_EXECUTOR,
    EdgeWorker,
    edge_env,
    edge_worker_env,
    executor_kind,
    jwt_secret,
)
from facility_data.localsite.procs import SiteError


def test_executor_kind_defaults_to_local_and_refuses_a_typo(monkeypatch):
    monkeypatch.delenv("FACILITY_EXECUTOR", raising=False)
    assert executor_kind() == "local"
    monkeypatch.setenv("FACILITY_EXECUTOR", "edge")
    assert executor_kind() == "edge"
    monkeypatch.setenv("FACILITY_EXECUTOR", "egde")
    with pytest.raises(SiteError, match="egde.*local, edge"):
        executor_kind()


def test_jwt_secret_is_private_and_stable(tmp_path):
    first = jwt_secret(tmp_path / "home")
    assert len(first) >= 32 and jwt_secret(tmp_path / "home") == first
    mode = stat.S_IMODE((tmp_path / "home" / "edge_jwt_secret").stat().st_mode)
    assert mode == 0o600
    assert jwt_secret(tmp_path / "other") != first


def test_edge_env_points_workers_at_the_api_server():
    env = edge_env("http://127.0.0.1:8123", "s3cret")
    assert env["AIRFLOW__CORE__EXECUTOR"] == EDGE_EXECUTOR
    assert env["AIRFLOW__EDGE__API_ENABLED"] == "True"
    assert env["AIRFLOW__EDGE__API_URL"] == "http://127.0.0.1:8123/edge_worker/v1/rpcapi"
    assert env["AIRFLOW__API_AUTH__JWT_SECRET"] == "s3cret"


def _central(tmp_path) -> dict[str, str]:
    return {"AIRFLOW_HOME": str(tmp_path / "central"), "FACILITY_SITE": str(tmp_path / "site"),
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": "postgresql+psycopg://postgres@127.0.0.1:5/airflow",
            "AIRFLOW__API__PORT": "8123", "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": "8124",
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": "http://127.0.0.1:8123/execution/",
            **edge_env("http://127.0.0.1:8123", "s3cret")}


def test_worker_env_has_its_own_home_and_no_metadata_db(tmp_path):
    env = edge_worker_env(_central(tmp_path), tmp_path / "w", {"FACILITY_ENDPOINTS_FILE": "/x.yaml"})
    assert env["AIRFLOW_HOME"] == str(tmp_path / "w" / "airflow")
    assert env["AIRFLOW__LOGGING__BASE_LOG_FOLDER"] == str(tmp_path / "w" / "logs")
    assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].startswith(f"sqlite:///{tmp_path / 'w'}")
    assert "postgres" not in " ".join(env.values())
    assert "AIRFLOW__API__PORT" not in env and "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT" not in env
    assert env["FACILITY_ENDPOINTS_FILE"] == "/x.yaml" and env["FACILITY_SITE"] == str(tmp_path / "site")


@pytest.mark.parametrize("missing", ["AIRFLOW__EDGE__API_URL", "AIRFLOW__API_AUTH__JWT_SECRET",
                                     "AIRFLOW__CORE__EXECUTION_API_SERVER_URL"])
def test_worker_env_refuses_a_central_env_without_the_edge_settings(tmp_path, missing):
    central = _central(tmp_path)
    del central[missing]
    with pytest.raises(SiteError, match=missing):
        edge_worker_env(central, tmp_path / "w")


def test_worker_needs_queues_and_names_them_on_its_command_line(tmp_path):
    with pytest.raises(SiteError, match="no queues"):
        EdgeWorker(_central(tmp_path), "w1", [], tmp_path / "w1")
    w = EdgeWorker(_central(tmp_path), "w1", ["als-data", "nersc"], tmp_path / "w1")
    cmd = w.command()
    assert cmd[1:5] == ["-m", "airflow", "edge", "worker"]
    assert cmd[cmd.index("--queues") + 1] == "als-data,nersc"
    assert cmd[cmd.index("--edge-hostname") + 1] == "w1"
    assert not w.alive()  # not started


def test_cli_edge_worker_refuses_without_its_site_or_the_edge_executor(monkeypatch, capsys, tmp_path):
    from facility_data.localsite.cli import main

    monkeypatch.setenv("FACILITY_SITE", str(tmp_path / "site"))
    monkeypatch.delenv("FACILITY_EXECUTOR", raising=False)
    assert main(["edge-worker", "--name", "w1"]) == 2
    assert "needs --name, --queues and --workdir" in capsys.readouterr().err
    assert main(["edge-worker", "--name", "w1", "--queues", "als-data", "--workdir", str(tmp_path / "w")]) == 2
    assert "FACILITY_EXECUTOR=edge" in capsys.readouterr().err
    monkeypatch.setenv("FACILITY_EXECUTOR", "celery")
    assert main(["edge-worker", "--name", "w1", "--queues", "als-data", "--workdir", str(tmp_path / "w")]) == 2
    assert "FACILITY_EXECUTOR='celery'" in capsys.readouterr().err
