"""rubin_unembargo_prompt under dag.test(): a manual day_obs, a scheduled window, the real wall clock holding a
night not yet released, row isolation, and Params refused before any side effect. Butlers through Airflow
connections (ButlerHook), as the shipped include/prompt_policy.yaml addresses them."""

from __future__ import annotations

import json
import uuid
import warnings
from datetime import timedelta
from pathlib import Path

import pytest
import yaml

from facility_data.demo.rubin_synthetic import add_prompt_products, build_night, unique_day_obs

warnings.filterwarnings("ignore", module="erfa")
REPO = Path(__file__).resolve().parents[2]
TYPES = ("calexp", "sourceTable_visit")


@pytest.fixture(scope="module")
def dag():
    from airflow.dag_processing.dagbag import DagBag

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FACILITY_RUBIN_START", "1990-01-01T00:00:00+00:00")  # before every synthetic night
        bag = DagBag(dag_folder=str(REPO / "dags" / "rubin_unembargo_prompt.py"))
    assert not bag.import_errors, bag.import_errors
    dag = bag.dags["rubin_unembargo_prompt"]
    for t in dag.tasks:  # dag.test() waits out retry delays inline
        t.retries = 0
    return dag


def _night(tmp_path, year=None):
    day = unique_day_obs(year, year) if year else unique_day_obs()
    night = build_night(tmp_path, day_obs=day, n_exposures=3, detectors=6)
    add_prompt_products(night, detectors=1)
    return night


def _configure(monkeypatch, tmp_path, night, rows=None):
    tag = uuid.uuid4().hex[:6]
    for name, repo in ((f"butler_embargo_{tag}", night.source_repo), (f"butler_main_{tag}",
                                                                      night.destination_repos[0])):
        monkeypatch.setenv(f"AIRFLOW_CONN_{name.upper()}", json.dumps({"conn_type": "butler", "host": str(repo)}))
    data = yaml.safe_load((REPO / "include" / "prompt_policy.yaml").read_text())
    data.update(source={"conn_id": f"butler_embargo_{tag}"}, destinations=[{"conn_id": f"butler_main_{tag}"}])
    if rows:
        data["rows"] = rows
    path = tmp_path / "prompt_policy.yaml"
    path.write_text(yaml.safe_dump(data))
    monkeypatch.setenv("FACILITY_RUBIN_PROMPT_POLICY", str(path))
    return data


def _conf(**kw):
    return {"day_obs": None, "rows": [], "dry_run": False, **kw}


def _states(dr):
    return {(ti.task_id, ti.map_index): ti.state for ti in dr.get_task_instances()}


def _visits(night) -> dict[str, set[int]]:
    from lsst.daf.butler import Butler, MissingDatasetTypeError

    b = Butler.from_config(str(night.destination_repos[0]))
    out = {}
    for t in TYPES:
        try:
            out[t] = {r.dataId["visit"] for r in b.query_datasets(t, "LSSTCam/prompt/*", find_first=False,
                                                                   explain=False)}
        except MissingDatasetTypeError:
            out[t] = set()
    return out


def test_manual_day_obs_run_transfers_the_night_and_a_rerun_is_green(dag, airflow_db, tmp_path, monkeypatch):
    night = _night(tmp_path)
    _configure(monkeypatch, tmp_path, night)
    for _ in range(2):  # the rerun verifies what is there and duplicates nothing
        dr = dag.test(logical_date=None, run_conf=_conf(day_obs=str(night.day_obs)))
        assert dr.state == "success", _states(dr)
        assert _visits(night) == {t: set(night.exposure_ids.values()) for t in TYPES}


def test_scheduled_window_moves_only_its_products(dag, airflow_db, tmp_path, monkeypatch):
    night = _night(tmp_path)
    _configure(monkeypatch, tmp_path, night)
    first = night.ends[night.obs_ids[0]] + timedelta(hours=80)  # releases 36 s apart
    t0 = first.replace(second=0, microsecond=0, minute=first.minute - first.minute % 15)
    inside = {night.exposure_ids[o] for o in night.obs_ids
              if t0 <= night.ends[o] + timedelta(hours=80) < t0 + timedelta(minutes=15)}
    assert inside
    dr = dag.test(logical_date=t0 + timedelta(minutes=15), run_conf=_conf())
    assert (dr.data_interval_start, dr.data_interval_end) == (t0, t0 + timedelta(minutes=15))
    assert dr.state == "success", _states(dr)
    assert _visits(night) == {t: inside for t in TYPES}


def test_the_wall_clock_holds_a_night_still_under_embargo(dag, airflow_db, tmp_path, monkeypatch, caplog):
    night = _night(tmp_path, year=2099)  # ends in 2099: released in 2099 + 80 h, whatever the run says
    _configure(monkeypatch, tmp_path, night)
    dr = dag.test(logical_date=None, run_conf=_conf(day_obs=str(night.day_obs)))
    states = _states(dr)
    assert dr.state == "failed" and states[("transfer", 0)] == "failed" and states[("summary", -1)] == "failed"
    assert _visits(night) == {t: set() for t in TYPES}
    assert "still embargoed until 2099" in caplog.text


def test_a_failing_row_fails_the_run_and_the_other_row_still_transfers(dag, airflow_db, tmp_path, monkeypatch):
    night = _night(tmp_path)
    base = yaml.safe_load((REPO / "include" / "prompt_policy.yaml").read_text())["rows"][0]
    rows = [{**base, "name": "broken", "where": "visit.no_such_field = 1"},
            {**base, "name": "calexps", "dataset_types": ["calexp"]}]
    _configure(monkeypatch, tmp_path, night, rows=rows)
    dr = dag.test(logical_date=None, run_conf=_conf(day_obs=str(night.day_obs)))
    states = _states(dr)
    assert states[("transfer", 0)] == "failed" and states[("transfer", 1)] == "success"
    named = {ti.map_index: ti.rendered_map_index for ti in dr.get_task_instances() if ti.task_id == "transfer"}
    assert named[1] == "calexps"  # each mapped instance is named by its policy row in the UI
    assert dr.state == "failed" and states[("summary", -1)] == "failed"
    assert _visits(night) == {"calexp": set(night.exposure_ids.values()), "sourceTable_visit": set()}


@pytest.mark.parametrize("conf, message", [
    ({"rows": ["nope"], "day_obs": "20250101"}, "unknown row(s) ['nope']"),
    ({"day_obs": "20250101", "dryrun": True}, "unknown conf key(s) ['dryrun']"),
])
def test_bad_params_fail_plan_before_any_side_effect(dag, airflow_db, tmp_path, monkeypatch, caplog, conf, message):
    night = _night(tmp_path)
    _configure(monkeypatch, tmp_path, night)
    dr = dag.test(logical_date=None, run_conf={**_conf(), **conf})
    states = _states(dr)
    assert dr.state == "failed" and states[("plan", -1)] == "failed"
    assert not [k for k, s in states.items() if k[0] == "transfer" and s == "success"]
    assert message in caplog.text
    assert _visits(night) == {t: set() for t in TYPES}
