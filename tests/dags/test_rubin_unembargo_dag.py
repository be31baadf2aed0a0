"""rubin_unembargo_raw under dag.test(): windows, manual reprocessing, bad Params; and the schedule's partition."""

from __future__ import annotations

import json
import uuid
import warnings
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from facility_data.demo.rubin_synthetic import build_night, unique_day_obs, write_policy
from facility_data.rubin import rucioreg, steps
from facility_data.rubin.policy import ButlerRef
from facility_data.rubin.runs import select

warnings.filterwarnings("ignore", module="erfa")
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def dag():
    from airflow.dag_processing.dagbag import DagBag

    # the synthetic nights are in 2025: the schedule must start before them, as a deployment's would
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FACILITY_RUBIN_START", "2024-01-01T00:00:00+00:00")
        bag = DagBag(dag_folder=str(REPO / "dags" / "rubin_unembargo_raw.py"))
    assert not bag.import_errors, bag.import_errors
    dag = bag.dags["rubin_unembargo_raw"]
    for t in dag.tasks:  # dag.test() waits out retry delays inline; a failure here should show at once
        t.retries = 0
    return dag



def test_each_exposure_step_is_one_rubin_step_operator(dag):
    """The DAG composes operators: every per-exposure step is a RubinStepOperator naming its step, chained in
    order, named by obs_id in the UI and bounded per run."""
    from airflow.sdk.definitions.xcom_arg import XComArg

    from facility_data.operators.embargo import RubinStepOperator
    from facility_data.rubin.runs import PER_RUN_PARALLELISM

    chain = ["exposure.gate", "exposure.zip", "exposure.dimensions", "exposure.butler_ingest", "exposure.rucio"]
    tasks = [dag.get_task(t) for t in chain]
    assert all(isinstance(t, RubinStepOperator) for t in tasks)
    assert [t.step for t in tasks] == ["gate", "zip", "dimensions", "butler", "rucio"]
    rucio = tasks[-1]  # takes the zip's hashes too, so it need not re-read the zip
    assert isinstance(rucio.zip_result, XComArg) and rucio.zip_result.operator is tasks[1]
    assert "zip_result" in rucio.template_fields
    assert all(t.map_index_template == "{{ obs_id }}" and t.max_active_tis_per_dagrun == PER_RUN_PARALLELISM
               for t in tasks)
    assert all(nxt in t.downstream_task_ids for t, nxt in zip(tasks, chain[1:], strict=False))
    assert dag.default_args["retries"] == 3  # the fixture zeroes the tasks' own copy


def test_a_rubin_step_operator_refuses_an_unknown_step():
    from facility_data.operators.embargo import RubinStepOperator

    with pytest.raises(ValueError, match="unknown Rubin step 'ingest'"):
        RubinStepOperator(task_id="x", step="ingest", exposure={})
    with pytest.raises(ValueError, match="zip_result is for the rucio step only, not 'butler'"):
        RubinStepOperator(task_id="x", step="butler", exposure={}, zip_result={"detail": {}})


def _night(tmp_path, **kw):
    day = unique_day_obs(2025, 2025)
    return build_night(tmp_path, day_obs=day, detectors=4, cadence_s=240, **kw)


def _release(night, obs_id):
    return night.ends[obs_id] + timedelta(hours=0 if obs_id in night.calibs else 80, minutes=5)


def _configure(monkeypatch, tmp_path, night, prefix, site=None):
    """Policy through Airflow connections (ButlerHook, RucioHook), as the shipped include/ policy does."""
    tag = uuid.uuid4().hex[:6]
    policy = night.policy(destination_prefix=prefix).model_copy(update={
        "source": ButlerRef(conn_id=f"butler_embargo_{tag}"),
        "destinations": [ButlerRef(conn_id=f"butler_main_{tag}")]})
    monkeypatch.setenv(f"AIRFLOW_CONN_BUTLER_EMBARGO_{tag.upper()}",
                       json.dumps({"conn_type": "butler", "host": str(night.source_repo)}))
    monkeypatch.setenv(f"AIRFLOW_CONN_BUTLER_MAIN_{tag.upper()}",
                       json.dumps({"conn_type": "butler", "host": str(night.destination_repos[0])}))
    if site is not None:
        monkeypatch.setenv("AIRFLOW_CONN_RUCIO_DEFAULT", json.dumps({
            "conn_type": "rucio", "host": site.rucio_url, "login": site.rucio_account,
            "password": site.rucio_password}))
    monkeypatch.setenv("FACILITY_RUBIN_POLICY", str(write_policy(policy, tmp_path / "policy.yaml")))
    return policy


def _conf(**kw):
    """A complete conf: dag.test() keeps earlier runs' values in the in-memory DAG's params otherwise."""
    return {"instrument": "LSSTCam", "day_obs": None, "obs_ids": [], "dry_run": False, **kw}


def _ti_states(dr):
    return {(ti.task_id, ti.map_index): ti.state for ti in dr.get_task_instances()}


def test_scheduled_run_unembargoes_exactly_its_window(dag, airflow_db, site, tmp_path, monkeypatch):
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    night = _night(tmp_path, n_exposures=5, incomplete=(2,), without_guider=(1,))
    prefix = site.root / "main" / f"dagtest-{uuid.uuid4().hex[:8]}"
    policy = _configure(monkeypatch, tmp_path, night, prefix, site)
    # releases 5 minutes apart; the 15-minute window [T, T+15) holds exposures 1-3 (2 incomplete), not 4-5
    t0 = _release(night, night.obs_ids[0]).replace(minute=0, second=0, microsecond=0)
    window = (t0, t0 + timedelta(minutes=15))
    inside = [o for o in night.obs_ids if window[0] <= _release(night, o) < window[1]]
    assert inside == night.obs_ids[:3]

    dr = dag.test(logical_date=window[1], run_conf=_conf())  # infers the interval that ends there: [t0, t0 + 15 min)
    assert (dr.data_interval_start, dr.data_interval_end) == window
    states = _ti_states(dr)
    assert states[("select", -1)] == "success"
    assert states[("summary", -1)] == "failed"  # the incomplete exposure was asked for (its window) and not done
    assert sorted(m for (t, m) in states if t == "exposure.rucio") == [0, 1]
    client = site.rucio_client()
    for obs_id in night.obs_ids:
        p = steps.paths(policy, next(e for e in [_ref(night, policy, obs_id)]))
        done = obs_id in inside and obs_id not in night.incomplete
        assert p.zip.exists() == done and p.yaml.exists() == done, obs_id
        _, obs = rucioreg.did_names("LSSTCam", night.day_obs, obs_id, [])
        names = [d for d in client.list_dids("raw", {"name": obs}, did_type="dataset")]
        assert bool(names) == done, obs_id
    def xcom(task_id, key):
        with create_session() as session:
            row = session.scalars(XComModel.get_many(run_id=dr.run_id, key=key, dag_ids=dag.dag_id,
                                                     task_ids=task_id)).first()
            return XComModel.deserialize_value(row)

    reported = xcom("select", "skipped")
    assert [s["obs_id"] for s in reported] == [night.obs_ids[1]] and "incomplete" in reported[0]["reason"]
    assert xcom("report_not_processed", "return_value") == reported


def _ref(night, policy, obs_id):
    from facility_data.rubin.windows import ExposureRef

    return ExposureRef("LSSTCam", night.day_obs, obs_id, night.exposure_ids[obs_id], "", "", 80)


def test_manual_run_reprocesses_exactly_the_named_exposures(dag, airflow_db, site, tmp_path, monkeypatch):
    night = _night(tmp_path, n_exposures=3)
    prefix = site.root / "main" / f"dagtest-{uuid.uuid4().hex[:8]}"
    policy = _configure(monkeypatch, tmp_path, night, prefix, site)
    wanted = night.obs_ids[1]
    dr = dag.test(logical_date=None, run_after=_release(night, night.obs_ids[-1]) + timedelta(hours=1),
                  run_conf=_conf(obs_ids=[wanted]))
    assert dr.state == "success"
    assert [o for o in night.obs_ids if steps.paths(policy, _ref(night, policy, o)).zip.exists()] == [wanted]
    status = steps.exposure_status(steps.Context(policy), _ref(night, policy, wanted))
    assert status.complete, status.details


@pytest.mark.parametrize("as_int", [False, True], ids=["day_obs_string", "day_obs_integer"])
def test_dry_run_changes_nothing(dag, airflow_db, tmp_path, monkeypatch, as_int):
    night = _night(tmp_path, n_exposures=2)
    prefix = tmp_path / "dest"
    _configure(monkeypatch, tmp_path, night, prefix)
    # a JSON conf may give day_obs as an integer ({"day_obs": 20261201}): the same night as the string
    day_obs = int(night.day_obs) if as_int else str(night.day_obs)
    dr = dag.test(logical_date=None, run_after=_release(night, night.obs_ids[-1]) + timedelta(hours=1),
                  run_conf=_conf(day_obs=day_obs, dry_run=True))
    states = _ti_states(dr)
    assert states[("exposure.zip", 0)] == "success" and states[("exposure.butler_ingest", 1)] == "success"
    assert len({k for k in states if k[0] == "exposure.zip"}) == 2  # both exposures of the night, either form
    assert not prefix.exists()


@pytest.mark.parametrize("conf, message", [
    ({"instrument": "HSC", "day_obs": "20250101"}, "unknown instrument"),
    ({"instrument": "LSSTCam", "day_obs": "20251340"}, "not a calendar date"),
    ({"instrument": "LSSTCam", "day_obs": "20250102", "obs_ids": ["MC_O_20250101_000001"]}, "not from day_obs"),
    # a misspelt dry_run must not turn a preview into a real release: unknown conf keys are refused, not ignored
    ({"day_obs": "20250101", "dryrun": True}, "unknown conf key(s) ['dryrun']"),
])
def test_bad_params_fail_before_any_side_effect(dag, airflow_db, tmp_path, monkeypatch, conf, message, caplog):
    night = _night(tmp_path, n_exposures=1)
    prefix = tmp_path / "dest"
    _configure(monkeypatch, tmp_path, night, prefix)
    dr = dag.test(logical_date=None, run_conf=_conf(**conf))
    states = _ti_states(dr)
    assert dr.state == "failed" and states[("select", -1)] == "failed"
    assert not [k for k, s in states.items() if k[0].startswith("exposure.") and s == "success"]
    assert not prefix.exists()
    assert message in caplog.text


@pytest.mark.parametrize("conf", [{"obs_ids": ["../../etc/passwd"]}, {"day_obs": "2025-01-01"},
                                  {"day_obs": True}, {"day_obs": 2025010}, {"day_obs": 202501011},
                                  {"day_obs": "\u0662\u0660\u0662\u0665\u0660\u0661\u0660\u0661"},
                                  {"instrument": "LSST Cam/.."}, {"dry_run": "yes"}])
def test_params_schema_rejects_malformed_values(dag, conf):
    from airflow.sdk.definitions.param import ParamsDict

    params = ParamsDict(dag.params)
    with pytest.raises(Exception, match="(?i)invalid input"):
        params.update(conf)
        params.validate()


@pytest.mark.parametrize("day_obs", ["20250101", 20250101, None])
def test_params_schema_accepts_day_obs_as_a_string_or_an_integer(dag, day_obs):
    from airflow.sdk.definitions.param import ParamsDict

    params = ParamsDict(dag.params)
    params.update({"day_obs": day_obs})
    assert params.validate()["day_obs"] == day_obs


def test_backfill_over_a_range_selects_exactly_the_exposures_released_in_it(dag, tmp_path):
    """Walk the DAG's own timetable over a range as a backfill does; every exposure released in the range is
    selected by exactly one run, none outside it."""
    from airflow.timetables.base import DataInterval, TimeRestriction
    from airflow.timetables.interval import CronDataIntervalTimetable

    night = _night(tmp_path, n_exposures=14, calibs=(3, 9))
    policy = night.policy()
    path = write_policy(policy, tmp_path / "policy.yaml")
    sdk = dag.timetable
    assert dag.catchup and sdk.expression == "*/15 * * * *"
    timetable = CronDataIntervalTimetable(sdk.expression, sdk.timezone)
    releases = {o: _release(night, o) for o in night.obs_ids}
    on_sky = sorted(r for o, r in releases.items() if o not in night.calibs)
    lo = on_sky[2].replace(minute=on_sky[2].minute - on_sky[2].minute % 15, second=0, microsecond=0)
    hi = lo + timedelta(minutes=45)
    import pendulum

    restriction = TimeRestriction(earliest=pendulum.instance(lo), latest=pendulum.instance(hi - timedelta(minutes=15)),
                                  catchup=True)
    picked: list[str] = []
    last = None
    while (info := timetable.next_dagrun_info(last_automated_data_interval=last, restriction=restriction)):
        interval = info.data_interval
        assert interval.end - interval.start == timedelta(minutes=15)
        out = select({}, data_interval=(interval.start, interval.end), run_after=interval.end, policy_path=path)
        picked += [e["obs_id"] for e in out["ready"]]
        last = DataInterval(interval.start, interval.end)
    expected = sorted(o for o, r in releases.items() if lo <= r < hi)
    assert 0 < len(expected) < len(night.obs_ids)
    assert sorted(picked) == expected and len(picked) == len(set(picked))


def test_window_run_without_interval_must_name_exposures(tmp_path):
    night = _night(tmp_path, n_exposures=1)
    path = write_policy(night.policy(), tmp_path / "policy.yaml")
    with pytest.raises(ValueError, match="must name exposures"):
        select({}, data_interval=None, run_after=datetime.now(UTC), policy_path=path)
