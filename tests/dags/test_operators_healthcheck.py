"""als_transfer_healthcheck under dag.test(): the transfer and delete operators on the local endpoints."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.dagtest


@pytest.fixture(scope="module")
def dag(airflow_db):
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(REPO / "dags" / "als_transfer_healthcheck.py"))
    assert bag.import_errors == {}
    return bag.get_dag("als_transfer_healthcheck")


def states(run) -> dict:
    return {ti.task_id: ti.state for ti in run.get_task_instances()}


def test_healthcheck_transfers_verifies_and_cleans_up(dag):
    site = Path(os.environ["FACILITY_SITE"])
    run = dag.test()
    assert run.state == "success", states(run)
    verified = run.get_task_instance("healthcheck_passed").xcom_pull(task_ids="verify")
    assert verified["endpoint"] == "nersc832" and verified["size"] == 4096 and verified["checksum_verified"]
    hop = run.get_task_instance("transfer_middle_to_destination").xcom_pull(
        task_ids="transfer_middle_to_destination")
    assert hop["files"] == 1 and hop["bytes"] == 4096
    for ep in ("spot832", "data832", "nersc832"):  # probe directories removed everywhere
        assert list((site / "endpoints" / ep / "healthcheck").iterdir()) == []


def test_healthcheck_fails_when_a_hop_fails_but_still_cleans_up(dag, tmp_path, monkeypatch):
    site = Path(os.environ["FACILITY_SITE"])
    broken = tmp_path / "endpoints.yaml"
    # nersc832's root is a regular file: the second hop cannot create anything under it
    (tmp_path / "not_a_dir").write_text("x")
    broken.write_text((REPO / "include" / "endpoints.yaml").read_text().replace(
        '"${FACILITY_SITE}/endpoints/nersc832"', f'"{tmp_path / "not_a_dir"}"'))
    monkeypatch.setenv("FACILITY_ENDPOINTS_FILE", str(broken))
    for t in dag.tasks:  # fail on the first try: the retry (30 s later) would fail the same way
        monkeypatch.setattr(t, "retries", 0)
    run = dag.test()
    s = states(run)
    assert run.state == "failed", s
    assert s["transfer_middle_to_destination"] == "failed"
    assert s["verify"] == "upstream_failed" and s["healthcheck_passed"] == "upstream_failed"
    assert s["cleanup_source"] == s["cleanup_middle"] == "success"
    for ep in ("spot832", "data832"):
        assert list((site / "endpoints" / ep / "healthcheck").iterdir()) == []


def test_healthcheck_refuses_an_unknown_conf_key_before_writing_anything(dag, monkeypatch):
    site = Path(os.environ["FACILITY_SITE"])
    before = {ep: sorted((site / "endpoints" / ep).rglob("*")) for ep in ("spot832", "data832", "nersc832")}
    for t in dag.tasks:
        monkeypatch.setattr(t, "retries", 0)
    run = dag.test(run_conf={"destination": "nersc832", "destinaton": "alcf832"})  # misspelt key
    s = states(run)
    assert run.state == "failed" and s["write_probe"] == "failed", s
    assert {ep: sorted((site / "endpoints" / ep).rglob("*")) for ep in before} == before
