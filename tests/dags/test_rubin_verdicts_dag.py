"""rubin_unembargo_raw's verdict under dag.test(): green only when every exposure asked for is done in THIS run.

Reproduces issue 17's first case: a window run is re-run (cleared, as a backfill's "reprocess" or the UI's Clear
does) after one exposure's ``_dimensions.yaml`` was altered. Its dimensions step fails, its Rucio step never runs
and Airflow keeps that step's XCom from the first run; the run must still fail, naming the exposure. Also: refused
Params of window runs, and manual runs whose obs_ids were not processed.
"""

from __future__ import annotations

import json
import uuid
import warnings
from datetime import timedelta
from pathlib import Path

import pytest
from test_rubin_embargo_dag import _recent_night
from test_rubin_unembargo_dag import _conf, _configure, _night, _ref, _release, _ti_states

from facility_data.rubin import steps

warnings.filterwarnings("ignore", module="erfa")
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def dag():
    from airflow.dag_processing.dagbag import DagBag

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FACILITY_RUBIN_START", "2024-01-01T00:00:00+00:00")
        bag = DagBag(dag_folder=str(REPO / "dags" / "rubin_unembargo_raw.py"))
    assert not bag.import_errors, bag.import_errors
    d = bag.dags["rubin_unembargo_raw"]
    for t in d.tasks:
        t.retries = 0
    return d


def _clear_and_run(dag, run_id: str, *, task_ids=None, map_index: int | None = None, downstream: bool = False,
                   **run_fields):
    """Clear task instances of an existing run as the UI's Clear does (Airflow's clear_task_instances: the run is
    re-queued, XCom stays until a task starts again), then run it to its end the way dag.test() does."""
    from airflow import settings
    from airflow.models.dagrun import DagRun
    from airflow.models.taskinstance import clear_task_instances
    from airflow.sdk.definitions.dag import _run_task
    from airflow.serialization.serialized_objects import DagSerialization
    from airflow.utils.state import DagRunState, TaskInstanceState
    from sqlalchemy import select

    session = settings.Session()
    dr = session.scalar(select(DagRun).where(DagRun.dag_id == dag.dag_id, DagRun.run_id == run_id))
    for name, value in run_fields.items():  # e.g. run_type, conf: what a backfill's run would carry
        setattr(dr, name, value)
    wanted = set(task_ids or dag.task_ids)
    if downstream:
        wanted |= {d for t in list(wanted) for d in dag.get_task(t).get_flat_relative_ids(upstream=False)}
    tis = [ti for ti in dr.get_task_instances(session=session) if ti.task_id in wanted
           and (map_index is None or ti.map_index in (-1, map_index))]
    clear_task_instances(tis, session, dag_run_state=DagRunState.QUEUED)
    dr.state = DagRunState.RUNNING  # what the scheduler does with a queued run
    session.commit()
    dr.dag = DagSerialization.deserialize_dag(DagSerialization.serialize_dag(dag))
    while dr.state == DagRunState.RUNNING:
        session.expire_all()
        schedulable, _ = dr.update_state(session=session)
        for ti in schedulable:
            ti.try_number += 1
            ti.state = TaskInstanceState.SCHEDULED
        session.commit()
        for ti in [t for t in dr.get_task_instances(session=session) if t.state == TaskInstanceState.SCHEDULED]:
            try:
                _run_task(ti=ti, task=dag.task_dict[ti.task_id], run_triggerer=True)
            except Exception:  # noqa: BLE001 - as dag.test(): a failed task is a state, asserted below
                pass
    state = dr.state
    session.close()
    dr = settings.Session().scalar(select(DagRun).where(DagRun.dag_id == dag.dag_id, DagRun.run_id == run_id))
    assert dr.state == state
    return dr


def _alerts(site_dir: Path, task_id: str) -> list[str]:
    path = site_dir / "alerts.jsonl"
    lines = path.read_text().splitlines() if path.exists() else []
    return [a["error"] for a in map(json.loads, lines) if a["task_id"] == task_id]


@pytest.fixture
def window_run(dag, airflow_db, site, tmp_path, monkeypatch):
    """A night of 3 exposures released in one 15-minute window, unembargoed by a (green) window run."""
    night = _night(tmp_path, n_exposures=3)
    prefix = site.root / "main" / f"verdict-{uuid.uuid4().hex[:8]}"
    policy = _configure(monkeypatch, tmp_path, night, prefix, site)
    site_dir = tmp_path / "site"
    site_dir.mkdir()
    monkeypatch.setenv("FACILITY_SITE", str(site_dir))
    t0 = _release(night, night.obs_ids[0]).replace(minute=0, second=0, microsecond=0)
    window = (t0, t0 + timedelta(minutes=15))
    assert all(window[0] <= _release(night, o) < window[1] for o in night.obs_ids)
    dr = dag.test(logical_date=window[1], run_conf=_conf())
    assert dr.state == "success", _ti_states(dr)
    return night, policy, site_dir, dr


def _alter_yaml(night, policy, obs_id):
    path = steps.paths(policy, _ref(night, policy, obs_id)).yaml
    path.write_text(path.read_text().replace(obs_id, obs_id[:-1] + "9", 1))
    return path


def _stale_rucio_xcom(dr, map_index):
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as s:
        return s.query(XComModel).filter_by(dag_id=dr.dag_id, run_id=dr.run_id, task_id="exposure.rucio",
                                            map_index=map_index, key="return_value").one_or_none()


def test_rerun_after_altered_yaml_fails_naming_the_exposure(dag, window_run):
    night, policy, site_dir, first = window_run
    victim = night.obs_ids[1]
    _alter_yaml(night, policy, victim)

    dr = _clear_and_run(dag, first.run_id)  # the whole run cleared, as a backfill's reprocess does
    states = _ti_states(dr)
    assert states[("exposure.dimensions", 1)] == "failed"
    assert states[("exposure.rucio", 1)] == "upstream_failed"
    assert _stale_rucio_xcom(dr, 1) is not None  # the trap: the first run's value is still there
    assert states[("summary", -1)] == "failed" and dr.state == "failed"
    [error] = _alerts(site_dir, "summary")
    assert victim in error and "exposure.dimensions failed" in error
    assert night.obs_ids[0] not in error and night.obs_ids[2] not in error


def test_clearing_only_summary_rechecks_the_sinks(dag, window_run):
    night, policy, site_dir, first = window_run
    victim = night.obs_ids[2]
    _alter_yaml(night, policy, victim)

    dr = _clear_and_run(dag, first.run_id, task_ids=["summary"])
    states = _ti_states(dr)
    assert states[("exposure.rucio", 2)] == "success"  # not re-run: its success is from the first try
    assert states[("summary", -1)] == "failed" and dr.state == "failed"
    [error] = _alerts(site_dir, "summary")
    assert victim in error and "not verified in the sinks" in error and "inconsistent" in error


def test_clearing_one_step_with_downstream_fails_naming_the_exposure(dag, window_run):
    night, policy, site_dir, first = window_run
    victim = night.obs_ids[0]
    _alter_yaml(night, policy, victim)

    dr = _clear_and_run(dag, first.run_id, task_ids=["exposure.dimensions"], map_index=0, downstream=True)
    states = _ti_states(dr)
    assert states[("exposure.dimensions", 0)] == "failed" and states[("exposure.rucio", 0)] == "upstream_failed"
    assert states[("exposure.dimensions", 1)] == "success"  # the other exposures were not cleared
    assert states[("summary", -1)] == "failed" and dr.state == "failed"
    [error] = _alerts(site_dir, "summary")
    assert victim in error and night.obs_ids[1] not in error


def test_clean_rerun_stays_green(dag, window_run, capfd, caplog):
    night, policy, site_dir, first = window_run
    dr = _clear_and_run(dag, first.run_id)
    assert dr.state == "success" and _ti_states(dr)[("summary", -1)] == "success"
    assert not _alerts(site_dir, "summary")
    logs = caplog.text + "".join(capfd.readouterr())
    assert "summary: 3 selected, 0 acted, 3 already done" in logs
    assert "Returned value was" not in logs  # one line of our own per task instead of the whole dict


def test_failed_alert_post_leaks_no_token_into_logs_alerts_or_xcom(dag, airflow_db, tmp_path, monkeypatch,
                                                                   capfd, caplog):
    """A run refused by select alerts through the failure callback; the webhook (a closed port) fails."""
    import socket

    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    token = "whTOKEN0123456789abcdefXYZ"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("AIRFLOW_CONN_FACILITY_ALERTS", json.dumps({
        "conn_type": "http", "host": f"http://127.0.0.1:{port}/hooks/T0/B0/{token}"}))
    site_dir = tmp_path / "site"
    site_dir.mkdir()
    monkeypatch.setenv("FACILITY_SITE", str(site_dir))
    night = _night(tmp_path, n_exposures=1)
    _configure(monkeypatch, tmp_path, night, tmp_path / "dest")
    dr = dag.test(logical_date=None, run_conf=_conf(instrument="HSC", day_obs="20250101"))
    assert _ti_states(dr)[("select", -1)] == "failed"
    logs = caplog.text + "".join(capfd.readouterr())
    assert "could not POST alert to connection facility_alerts" in logs  # the POST was tried and failed
    alerts = (site_dir / "alerts.jsonl").read_text()
    assert "unknown instrument" in alerts
    with create_session() as session:
        xcoms = [str(x.value) for x in session.query(XComModel).filter_by(dag_id=dag.dag_id, run_id=dr.run_id)]
    for where, text in {"logs": logs, "alerts.jsonl": alerts, "xcom": "\n".join(xcoms)}.items():
        assert token not in text, where


def test_backfill_run_refuses_manual_only_params(dag, window_run):
    from airflow.utils.types import DagRunType

    night, policy, site_dir, first = window_run
    dr = _clear_and_run(dag, first.run_id, run_type=DagRunType.BACKFILL_JOB,
                        conf=_conf(obs_ids=[night.obs_ids[0]]))
    states = _ti_states(dr)
    assert states[("select", -1)] == "failed" and dr.state == "failed"
    [error] = _alerts(site_dir, "select")
    assert "backfill runs unembargo exactly their data interval; Params obs_ids are for manual runs only" in error


def test_manual_run_of_unknown_or_embargoed_obs_ids_fails_naming_each(dag, airflow_db, site, tmp_path,
                                                                       monkeypatch):
    night = _recent_night(tmp_path)  # the calibration exposure is due by the wall clock, the on-sky ones are not
    prefix = site.root / "main" / f"verdict-{uuid.uuid4().hex[:8]}"
    policy = _configure(monkeypatch, tmp_path, night, prefix, site)
    site_dir = tmp_path / "site"
    site_dir.mkdir()
    monkeypatch.setenv("FACILITY_SITE", str(site_dir))
    (done,) = night.calibs
    embargoed = next(o for o in night.obs_ids if o != done)
    unknown = f"MC_O_{night.day_obs}_099999"
    dr = dag.test(logical_date=None, run_conf=_conf(obs_ids=[done, embargoed, unknown]))
    states = _ti_states(dr)
    assert states[("exposure.rucio", 0)] == "success"
    assert states[("summary", -1)] == "failed" and dr.state == "failed"
    [error] = _alerts(site_dir, "summary")
    assert embargoed in error and unknown in error and done not in error
    assert "still embargoed" in error and "no such exposure" in error
    assert steps.paths(policy, _ref(night, policy, done)).zip.exists()
    assert not steps.paths(policy, _ref(night, policy, embargoed)).zip.exists()


def test_manual_run_of_a_night_without_exposures_fails(dag, airflow_db, site, tmp_path, monkeypatch):
    night = _night(tmp_path, n_exposures=1)
    _configure(monkeypatch, tmp_path, night, site.root / "main" / f"verdict-{uuid.uuid4().hex[:8]}", site)
    site_dir = tmp_path / "site"
    site_dir.mkdir()
    monkeypatch.setenv("FACILITY_SITE", str(site_dir))
    empty_day = str(night.day_obs + 1 if night.day_obs % 100 < 28 else night.day_obs - 1)
    dr = dag.test(logical_date=None, run_conf=_conf(day_obs=empty_day))
    states = _ti_states(dr)
    assert states[("select", -1)] == "failed" and dr.state == "failed"
    [error] = _alerts(site_dir, "select")
    assert f"no exposure of LSSTCam on day_obs {empty_day}" in error


def test_window_run_with_an_incomplete_exposure_fails_with_the_reason(dag, airflow_db, site, tmp_path,
                                                                      monkeypatch):
    night = _night(tmp_path, n_exposures=3, incomplete=(2,))
    prefix = site.root / "main" / f"verdict-{uuid.uuid4().hex[:8]}"
    _configure(monkeypatch, tmp_path, night, prefix, site)
    site_dir = tmp_path / "site"
    site_dir.mkdir()
    monkeypatch.setenv("FACILITY_SITE", str(site_dir))
    t0 = _release(night, night.obs_ids[0]).replace(minute=0, second=0, microsecond=0)
    dr = dag.test(logical_date=t0 + timedelta(minutes=15), run_conf=_conf())
    assert _ti_states(dr)[("summary", -1)] == "failed" and dr.state == "failed"
    [error] = _alerts(site_dir, "summary")
    assert night.obs_ids[1] in error and "incomplete" in error
    assert night.obs_ids[0] not in error
