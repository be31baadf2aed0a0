"""Shared helpers for the ALS DAG tests: a private local site, tiny synthetic scans, running DAGs with dag.test()."""

from __future__ import annotations

from pathlib import Path

from airflow.dag_processing.dagbag import DagBag

REPO = Path(__file__).resolve().parents[2]
FOLDER = "ALS-11111_synthetic"
SIZE, SLICES, ANGLES = 48, 4, 61

def dag(dag_id: str):
    """A freshly parsed DAG (dag.test() resolves Params in place, so a reused DAG object would carry the previous
    run's conf), with retries off: failures in these tests are permanent by construction."""
    bag = DagBag(dag_folder=str(REPO / "dags" / "als_beamlines.py"))
    assert not bag.import_errors, bag.import_errors
    d = bag.get_dag(dag_id)
    for t in d.tasks:
        t.retries = 0
    return d


def dag_ids() -> set[str]:
    return set(DagBag(dag_folder=str(REPO / "dags" / "als_beamlines.py")).dag_ids)


def private_site(tmp_path: Path, monkeypatch) -> Path:
    """An empty local-site directory for one test, made the process's FACILITY_SITE."""
    root = tmp_path / "site"
    root.mkdir()
    monkeypatch.setenv("FACILITY_SITE", str(root))
    return root


def enable_deletion(tmp_path: Path, monkeypatch, roles: tuple[str, ...]) -> Path:
    """A private copy of include/ whose bl832.yaml switches deletion on for ``roles``, made the process's
    FACILITY_INCLUDE; returns it."""
    import re
    import shutil

    include = tmp_path / "include"
    shutil.copytree(REPO / "include", include)
    text = (include / "beamlines" / "bl832.yaml").read_text()
    for role in roles:
        text, n = re.subn(rf"^(  {role}: +\{{.*?)delete: false", r"\1delete: true", text, count=1, flags=re.M)
        assert n == 1, role
    (include / "beamlines" / "bl832.yaml").write_text(text)
    monkeypatch.setenv("FACILITY_INCLUDE", str(include))
    return include


def endpoint_dir(site: Path, endpoint: str) -> Path:
    from facility_data.transfer import load_endpoints

    return load_endpoints()[endpoint].local_path("")


def write_scan(site: Path, name: str = "20240101_120000_shell", *, endpoint: str = "spot832",
               subdir: str = "raw") -> str:
    """A tiny synthetic scan where the watcher would see it; returns the watcher path."""
    from facility_data.demo import als_synthetic as synthetic

    root = endpoint_dir(site, endpoint)
    synthetic.write_scan(root / subdir / FOLDER / f"{name}.h5", n_angles=ANGLES, size=SIZE, n_slices=SLICES, seed=3)
    return f"/global/raw/{FOLDER}/{name}.h5"


def states(dr) -> dict[str, str]:
    """task_id[map_index] -> state of a finished dag.test() run."""
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session

    with create_session() as s:
        tis = s.query(TaskInstance).filter(TaskInstance.dag_id == dr.dag_id, TaskInstance.run_id == dr.run_id).all()
        return {(t.task_id if t.map_index < 0 else f"{t.task_id}[{t.map_index}]"): str(t.state) for t in tis}


def asset_events(uri: str) -> list[dict]:
    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.utils.session import create_session

    with create_session() as s:
        rows = (s.query(AssetEvent).join(AssetModel, AssetEvent.asset_id == AssetModel.id)
                .filter(AssetModel.uri == uri).order_by(AssetEvent.id).all())
        return [dict(r.extra or {}) for r in rows]


def ledger(site: Path):
    from facility_data.als.ledger import Ledger

    return Ledger(site / "als" / "ledger.sqlite")


def tree(root: Path) -> list[str]:
    """Every file under ``root`` (relative paths), for "nothing moved" checks."""
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()) if root.exists() else []


class FakeNERSC:
    """A local SFAPI server (tests/unit/fake_sfapi.py) that the real sfapi_client reaches through the
    ``sfapi_default`` connection. A submitted batch script is run with bash on this machine (as the LOCAL controller
    would) unless ``fail`` names a job (by template marker) to report FAILED instead; Slurm accounting (sacct) then
    reports the outcome."""

    def __init__(self, fail: str | None = None):
        self.fail = fail
        self.server = None

    def install(self, monkeypatch):
        import sys

        from joserfc.jwk import RSAKey

        unit_tests = str(REPO / "tests" / "unit")
        if unit_tests not in sys.path:
            sys.path.insert(0, unit_tests)
        from fake_sfapi import FakeSFAPI

        key = RSAKey.generate_key(2048)
        self.server = FakeSFAPI(RSAKey.import_key(key.as_dict(private=False)), on_submit=self.run)
        monkeypatch.setenv("AIRFLOW_CONN_SFAPI_DEFAULT", self.server.connection_json(key.as_dict(private=True)))
        return self

    @property
    def scripts(self) -> list[str]:
        return self.server.submitted

    def run(self, script: str) -> list[str]:
        import os
        import subprocess
        import sys
        import tempfile

        assert script.startswith("#!"), script
        if self.fail and self.fail in script:
            return ["FAILED"]
        with tempfile.NamedTemporaryFile("w", suffix=".sh") as fh:
            fh.write(script)
            fh.flush()
            env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}"}
            res = subprocess.run(["bash", fh.name], capture_output=True, text=True, env=env)
        return ["COMPLETED" if res.returncode == 0 else "FAILED"]


def compute_connection(monkeypatch) -> None:
    """globus_default with Compute endpoint 'local' (the local process pool behind GlobusComputeOperator)."""
    import json

    monkeypatch.setenv("AIRFLOW_CONN_GLOBUS_DEFAULT", json.dumps(
        {"conn_type": "globus", "login": "test-client", "password": "test-secret",
         "extra": {"compute_endpoint": "local"}}))
