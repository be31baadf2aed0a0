"""rubin_unembargo_reconcile under dag.test(): repairs what a crash left, reports, alerts, refuses bad Params."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest

from facility_data.demo.rubin_synthetic import add_prompt_products, build_night, unique_day_obs, write_policy
from facility_data.rubin import steps, windows

warnings.filterwarnings("ignore", module="erfa")
REPO = Path(__file__).resolve().parents[2]
ASSET_URI = "x-rubin://unembargo/reconcile"


@pytest.fixture(scope="module")
def dag():
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(REPO / "dags" / "rubin_unembargo_reconcile.py"))
    assert not bag.import_errors, bag.import_errors
    d = bag.dags["rubin_unembargo_reconcile"]
    for t in d.tasks:  # failures here are permanent by construction: do not wait for retries
        t.retries = 0
    return d


def _prompt_policy(night, tmp_path, monkeypatch):
    """The shipped prompt policy over this night's source and first destination Butler (by URI)."""
    import yaml

    data = yaml.safe_load((REPO / "include" / "prompt_policy.yaml").read_text())
    data.update(source={"uri": str(night.source_repo)}, destinations=[{"uri": str(night.destination_repos[0])}])
    path = tmp_path / "prompt_policy.yaml"
    path.write_text(yaml.safe_dump(data))
    monkeypatch.setenv("FACILITY_RUBIN_PROMPT_POLICY", str(path))


@pytest.fixture
def configured(site, tmp_path, monkeypatch):
    night = build_night(tmp_path / "night", day_obs=unique_day_obs(), n_exposures=4, detectors=4, incomplete=(4,))
    policy = night.policy(destination_prefix=site.root / "main" / f"reconcile-dag-{night.day_obs}")
    _prompt_policy(night, tmp_path, monkeypatch)  # no prompt products in this night: the prompt check finds none
    monkeypatch.setenv("AIRFLOW_CONN_RUCIO_DEFAULT", json.dumps({
        "conn_type": "rucio", "host": site.rucio_url, "login": site.rucio_account, "password": site.rucio_password}))
    monkeypatch.setenv("FACILITY_RUBIN_POLICY", str(write_policy(policy, tmp_path / "policy.yaml")))
    monkeypatch.setenv("FACILITY_SITE", str(tmp_path / "site"))
    (tmp_path / "site").mkdir()
    return night, policy, tmp_path / "site"


def _states(dr):
    return {(ti.task_id, ti.map_index): ti.state for ti in dr.get_task_instances()}


def _xcom(dr, task_id):
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as s:
        row = s.query(XComModel).filter_by(dag_id=dr.dag_id, run_id=dr.run_id, task_id=task_id,
                                           key="return_value").one()
        return row.value if not isinstance(row.value, str) else json.loads(row.value)


def test_reconcile_run_repairs_reports_and_alerts(dag, airflow_db, configured, site):
    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.utils.session import create_session

    night, policy, site_dir = configured
    ctx = steps.Context(policy, rucio=site.rucio_client())
    req = windows.ManualRequest("LSSTCam", night.day_obs, (), False)
    exps = {e.obs_id: e for e in windows.select_manual(ctx.source, policy, req, max(night.ends.values()) +
                                                       __import__("datetime").timedelta(hours=90))[0]}
    done, partial, fresh, incomplete = night.obs_ids
    steps.run_exposure(ctx, exps[done])
    for name in steps.step_names(policy)[:3]:  # crashed after the yaml: no Butler ingest, no Rucio
        steps.run_step(ctx, exps[partial], name)

    conf = {"instrument": "LSSTCam", "day_obs_first": str(night.day_obs), "day_obs_last": str(night.day_obs)}
    dr = dag.test(run_conf=conf)
    states = _states(dr)
    assert states[("plan", -1)] == states[("check", -1)] == states[("finish", -1)] == "success"
    assert sorted(m for (t, m), s in states.items() if t == "repair" and s == "success") == [0, 1]
    assert states[("alert", -1)] == "failed"  # the incomplete exposure cannot be repaired: an operator must know
    result = _xcom(dr, "finish")
    counts = result["counts"][str(night.day_obs)]
    assert counts["done"] == 3 and counts["incomplete_at_source"] == 1 and counts["total"] == 4
    assert sorted(r["obs_id"] for r in result["repaired"]) == [partial, fresh]
    assert {r["obs_id"]: r["from"] for r in result["repaired"]} == {partial: f"butler:{policy.destinations[0].label}",
                                                                    fresh: "zip"}
    for obs_id in (partial, fresh):
        assert steps.exposure_status(steps.Context(policy, rucio=site.rucio_client()), exps[obs_id]).complete
    reports = [Path(p) for p in result["reports"]]
    assert all(p.exists() and str(p).startswith(str(site_dir / "reports")) for p in reports)
    assert incomplete in next(p for p in reports if p.suffix == ".html").read_text()
    alerts = [json.loads(line) for line in (site_dir / "alerts.jsonl").read_text().splitlines()]
    assert any(a["task_id"] == "alert" and incomplete in a["error"] for a in alerts)
    with create_session() as s:
        events = (s.query(AssetEvent).join(AssetModel, AssetEvent.asset_id == AssetModel.id)
                  .filter(AssetModel.uri == ASSET_URI).order_by(AssetEvent.id).all())
        extra = dict(events[-1].extra)
    assert extra["counts"][str(night.day_obs)]["done"] == 3 and extra["repaired"] == 2
    assert extra["prompt"] == {"present": 0, "missing": 0, "held": 0, "inconsistent": 0, "refused": 0, "error": 0}
    assert states[("prompt", -1)] == "success" and "prompt" not in alerts[-1]["error"]


@pytest.mark.parametrize("conf, message", [
    ({"instrument": "NoCam"}, "unknown instrument"),
    ({"day_obs_first": "20250302", "day_obs_last": "20250301"}, "before"),
    ({"dryrun": True}, "unknown conf key(s) ['dryrun']"),  # a misspelt dry_run must never repair for real
])
def test_bad_params_fail_before_any_side_effect(dag, airflow_db, configured, conf, message, caplog):
    night, policy, site_dir = configured
    # every Param named: dag.test() keeps Param values of earlier runs of the same DAG object
    base = {"instrument": "LSSTCam", "day_obs_first": None, "day_obs_last": None}
    dr = dag.test(run_conf={**base, **conf})
    states = _states(dr)
    assert states[("plan", -1)] == "failed"
    assert states[("check", -1)] == "upstream_failed"
    assert states[("finish", -1)] == "failed" and dr.state == "failed"  # a refused run never ends green
    assert message in caplog.text
    alerts = [json.loads(line) for line in (site_dir / "alerts.jsonl").read_text().splitlines()]
    assert any(a["task_id"] == "finish" and "plan refused the Params" in a["error"] and message in a["error"]
               for a in alerts)
    assert not Path(policy.destination_prefix).exists() and not (site_dir / "reports").exists()


def test_schema_invalid_params_are_refused(dag, airflow_db, configured):
    from airflow.sdk.exceptions import ParamValidationError

    _, policy, _ = configured
    with pytest.raises(ParamValidationError):
        dag.test(run_conf={"day_obs_first": "2025-03-01", "day_obs_last": "20250301"})
    assert not Path(policy.destination_prefix).exists()


@pytest.mark.parametrize("mode", ["dry_run", "delete"])
def test_prune_guard_refusal_on_a_corrupt_exposure_fails_the_alert_task(dag, airflow_db, configured, site, mode):
    """An exposure that looks done (shallow) but whose embargo object no longer matches its zip: the guard keeps
    the embargo copy, and the run says so loudly (alert task failed with the reason)."""
    from datetime import timedelta

    night, policy, site_dir = configured
    ctx = steps.Context(policy, rucio=site.rucio_client())
    req = windows.ManualRequest("LSSTCam", night.day_obs, (), False)
    exps = {e.obs_id: e for e in windows.select_manual(ctx.source, policy, req, max(night.ends.values()) +
                                                       timedelta(hours=90))[0]}
    corrupt = night.obs_ids[0]
    for obs_id in night.obs_ids[:3]:
        steps.run_exposure(ctx, exps[obs_id])
    obj = next(o for o in ctx.objects(exps[corrupt]) if o.name.endswith(".fits"))
    path = Path(night.store.root) / obj.key
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF  # same size: the shallow check still sees it done
    path.write_bytes(bytes(data))

    conf = {"instrument": "LSSTCam", "day_obs_first": str(night.day_obs), "day_obs_last": str(night.day_obs),
            "prune_embargo": mode, "repair": False}
    dr = dag.test(run_conf=conf)
    states = _states(dr)
    assert states[("finish", -1)] == "success" and states[("alert", -1)] == "failed"
    result = _xcom(dr, "finish")
    refused = {p["obs_id"]: p for p in result["prune"] if not p["allowed"]}
    assert corrupt in refused and refused[corrupt]["deleted"] == 0
    assert path.exists()  # the embargo copy is kept
    alerts = [json.loads(line) for line in (site_dir / "alerts.jsonl").read_text().splitlines()]
    [error] = [a["error"] for a in alerts if a["task_id"] == "alert"]
    assert f"{corrupt}: prune refused: " in error and refused[corrupt]["reason"] in error


@pytest.fixture
def prompt_night(site, tmp_path, monkeypatch):
    """A complete night (no incomplete exposure) with prompt products in the source, none transferred."""
    night = build_night(tmp_path / "night", day_obs=unique_day_obs(), n_exposures=3, detectors=4)
    add_prompt_products(night, detectors=1)  # 3 visits x (1 calexp + 1 sourceTable_visit)
    policy = night.policy(destination_prefix=site.root / "main" / f"reconcile-prompt-{night.day_obs}")
    monkeypatch.setenv("AIRFLOW_CONN_RUCIO_DEFAULT", json.dumps({
        "conn_type": "rucio", "host": site.rucio_url, "login": site.rucio_account, "password": site.rucio_password}))
    monkeypatch.setenv("FACILITY_RUBIN_POLICY", str(write_policy(policy, tmp_path / "policy.yaml")))
    monkeypatch.setenv("FACILITY_SITE", str(tmp_path / "site"))
    (tmp_path / "site").mkdir()
    _prompt_policy(night, tmp_path, monkeypatch)
    return night, tmp_path / "site"


def test_missing_prompt_products_fail_the_reconcile_until_repaired(dag, airflow_db, prompt_night):
    night, site_dir = prompt_night
    day = str(night.day_obs)
    conf = {"instrument": "LSSTCam", "day_obs_first": day, "day_obs_last": day, "prune_embargo": "off"}
    dr = dag.test(run_conf={**conf, "repair": False})
    states = _states(dr)
    assert states[("prompt", -1)] == states[("finish", -1)] == "success" and states[("alert", -1)] == "failed"
    result = _xcom(dr, "finish")
    assert result["prompt"]["nights"][day]["rows"]["lsstcam_prompt"]["missing"] == 6
    html = next(Path(p) for p in result["reports"] if p.endswith(".html")).read_text()
    assert "Prompt products" in html and "lsstcam_prompt" in html
    alerts = [json.loads(line) for line in (site_dir / "alerts.jsonl").read_text().splitlines()]
    assert f"prompt {day} row lsstcam_prompt: missing 6" in alerts[-1]["error"]

    dr = dag.test(run_conf={**conf, "repair": True})  # repairs the raw exposures and the prompt products
    result = _xcom(dr, "finish")
    n = result["prompt"]["nights"][day]
    assert n["found"]["lsstcam_prompt"]["missing"] == 6 and n["repaired"] == {"lsstcam_prompt": 6}
    assert n["rows"]["lsstcam_prompt"]["present"] == 6 and n["rows"]["lsstcam_prompt"]["missing"] == 0
    assert _states(dr)[("alert", -1)] == "success"

    dr = dag.test(run_conf={**conf, "repair": False})  # the rerun is green and changes nothing
    states = _states(dr)
    assert states[("alert", -1)] == "success" and dr.state == "success"
    assert _xcom(dr, "finish")["prompt"]["nights"][day]["repaired"] == {}


def test_a_prompt_check_that_cannot_run_fails_the_alert(dag, airflow_db, configured, tmp_path, monkeypatch):
    night, _, site_dir = configured
    monkeypatch.setenv("FACILITY_RUBIN_PROMPT_POLICY", str(tmp_path / "no_such_policy.yaml"))
    day = str(night.day_obs)
    dr = dag.test(run_conf={"instrument": "LSSTCam", "day_obs_first": day, "day_obs_last": day, "repair": False,
                            "prune_embargo": "off"})
    states = _states(dr)
    assert states[("prompt", -1)] == "failed" and states[("finish", -1)] == "success"
    assert states[("alert", -1)] == "failed"  # the raw report is still written, and the run is not green
    result = _xcom(dr, "finish")
    assert "did not finish" in result["prompt"]["error"] and result["reports"]
    alerts = [json.loads(line) for line in (site_dir / "alerts.jsonl").read_text().splitlines()]
    assert any(a["task_id"] == "alert" and "prompt products: not checked" in a["error"] for a in alerts)
