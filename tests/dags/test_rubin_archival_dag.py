"""rubin_unembargo_raw under dag.test() with archival on: the rule is made by the real DAG, and a rule that cannot be
made fails the run loudly."""

from __future__ import annotations

import json
import uuid
import warnings
from datetime import timedelta
from pathlib import Path

import pytest

from facility_data.demo.rubin_synthetic import build_night, unique_day_obs, write_policy
from facility_data.localsite.rucio_server import ensure_archive_rse
from facility_data.rubin import rucioreg
from facility_data.rubin.policy import ArchiveRule

warnings.filterwarnings("ignore", module="erfa")
REPO = Path(__file__).resolve().parents[2]
ARCHIVE = "FRDF_RAW_DISK"


@pytest.fixture(scope="module")
def dag():
    from airflow.dag_processing.dagbag import DagBag

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FACILITY_RUBIN_START", "2024-01-01T00:00:00+00:00")
        bag = DagBag(dag_folder=str(REPO / "dags" / "rubin_unembargo_raw.py"))
    assert not bag.import_errors, bag.import_errors
    dag = bag.dags["rubin_unembargo_raw"]
    for t in dag.tasks:  # dag.test() waits out retry delays inline; a failure here should show at once
        t.retries = 0
    return dag


def _run(dag, site, tmp_path, monkeypatch, expression: str):
    night = build_night(tmp_path, day_obs=unique_day_obs(2025, 2025), n_exposures=2, detectors=4, cadence_s=240)
    policy = night.policy(destination_prefix=site.root / "main" / f"archdag-{uuid.uuid4().hex[:8]}")
    policy = policy.model_copy(update={"rucio": policy.rucio.model_copy(
        update={"archive": ArchiveRule(rse_expression=expression)})})
    ensure_archive_rse(site.rucio_client())
    monkeypatch.setenv("AIRFLOW_CONN_RUCIO_DEFAULT", json.dumps({
        "conn_type": "rucio", "host": site.rucio_url, "login": site.rucio_account, "password": site.rucio_password}))
    monkeypatch.setenv("FACILITY_RUBIN_POLICY", str(write_policy(policy, tmp_path / "policy.yaml")))
    run_after = night.ends[night.obs_ids[-1]] + timedelta(hours=81)
    dr = dag.test(logical_date=None, run_after=run_after, run_conf={
        "instrument": "LSSTCam", "day_obs": str(night.day_obs), "obs_ids": [], "dry_run": False})
    states = {(ti.task_id, ti.map_index): ti.state for ti in dr.get_task_instances()}
    return night, dr, states


def _xcom(dr, task_id, map_index):
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        row = session.scalars(XComModel.get_many(run_id=dr.run_id, key="return_value", dag_ids=dr.dag_id,
                                                 task_ids=task_id, map_indexes=map_index)).first()
        return XComModel.deserialize_value(row)


def test_dag_makes_one_archival_rule_per_exposure(dag, airflow_db, site, tmp_path, monkeypatch):
    night, dr, states = _run(dag, site, tmp_path, monkeypatch, ARCHIVE)
    assert dr.state == "success", states
    client = site.rucio_client()
    for obs_id in night.obs_ids:
        obs = rucioreg.did_names("LSSTCam", night.day_obs, obs_id, [])[1]
        rules = [r for r in client.list_did_rules("raw", obs) if r["rse_expression"] == ARCHIVE]
        assert len(rules) == 1, obs_id
    reported = [_xcom(dr, "exposure.rucio", i) for i in range(len(night.obs_ids))]
    assert all(r["detail"]["archive"]["state"] in ("REPLICATING", "OK") for r in reported), reported


def test_dag_fails_loudly_when_the_archive_rse_expression_is_unknown(dag, airflow_db, site, tmp_path, monkeypatch):
    night, dr, states = _run(dag, site, tmp_path, monkeypatch, "NO_SUCH_ARCHIVE_RSE")
    assert dr.state == "failed"
    assert {states[("exposure.rucio", i)] for i in range(len(night.obs_ids))} == {"failed"}
    assert states[("summary", -1)] == "failed"
