"""rubin_unembargo_raw under dag.test() with a logical date in the future (what the trigger dialog and the REST API
offer): nothing whose release is later than the wall clock leaves the embargo store, whatever the data interval."""

from __future__ import annotations

import uuid
import warnings
from datetime import UTC, datetime, timedelta

from test_rubin_unembargo_dag import _conf, _configure, _ti_states, dag  # noqa: F401 - the module's DAG fixture

from facility_data.demo.rubin_synthetic import build_night
from facility_data.rubin import rucioreg, steps

warnings.filterwarnings("ignore", module="erfa")


def _xcom(dr, task_id, key):
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        row = session.scalars(XComModel.get_many(run_id=dr.run_id, key=key, dag_ids=dr.dag_id,
                                                 task_ids=task_id)).first()
        return XComModel.deserialize_value(row) if row is not None else None


def _recent_night(tmp_path):
    """Three exposures that ended an hour ago: the calib (the first) is due, the on-sky ones are ~79 h from release."""
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1, minutes=10)
    day_obs = int((start - timedelta(hours=12)).strftime("%Y%m%d"))
    first = 1 + uuid.uuid4().int % 90000  # the site's Rucio server is shared with other tests of this day
    return build_night(tmp_path, day_obs=day_obs, n_exposures=3, detectors=3, start=start, cadence_s=60,
                       calibs=(first,), first_seq=first)


def _nothing_released(night, policy, site, obs_ids):
    from lsst.daf.butler import Butler

    client = site.rucio_client()
    dest = Butler.from_config(str(night.destination_repos[0]))
    for obs_id in obs_ids:
        exp = steps.ExposureRef("LSSTCam", night.day_obs, obs_id, night.exposure_ids[obs_id], "", "", 80)
        p = steps.paths(policy, exp)
        assert not p.zip.exists() and not p.yaml.exists(), obs_id
        try:
            refs = dest.query_datasets("raw", collections="LSSTCam/raw/all", instrument="LSSTCam",
                                       exposure=exp.exposure, explain=False)
        except Exception:  # noqa: BLE001 - no raw collection in the destination yet: nothing ingested
            refs = []
        assert not refs, obs_id
        _, obs = rucioreg.did_names("LSSTCam", night.day_obs, obs_id, [])
        assert not list(client.list_dids("raw", {"name": obs}, did_type="dataset")), obs_id


def test_future_logical_date_releases_nothing_early(dag, airflow_db, site, tmp_path, monkeypatch):  # noqa: F811
    night = _recent_night(tmp_path)
    prefix = site.root / "main" / f"dagtest-{uuid.uuid4().hex[:8]}"
    policy = _configure(monkeypatch, tmp_path, night, prefix, site)
    on_sky = [o for o in night.obs_ids if o not in night.calibs]
    release = night.ends[on_sky[0]] + timedelta(hours=80, minutes=5)
    # the run whose data interval holds the on-sky releases, ~80 h ahead of the wall clock
    end = release.replace(minute=release.minute - release.minute % 15, second=0) + timedelta(minutes=15)
    dr = dag.test(logical_date=end, run_conf=_conf())
    assert dr.data_interval_end == end and dr.data_interval_start > datetime.now(UTC)
    states = _ti_states(dr)
    assert states[("select", -1)] == "success"
    assert not [k for k in states if k[0].startswith("exposure.") and k[1] >= 0]
    skipped = _xcom(dr, "select", "skipped")
    in_window = [o for o in on_sky if dr.data_interval_start <= night.ends[o] + timedelta(hours=80, minutes=5) < end]
    assert in_window and sorted(s["obs_id"] for s in skipped) == sorted(in_window)
    assert {s["state"] for s in skipped} == {"still_embargoed"}
    assert states[("summary", -1)] == "failed" and dr.state == "failed"  # not done is never green
    _nothing_released(night, policy, site, night.obs_ids)


def test_manual_run_with_future_logical_date_releases_only_what_is_due(dag, airflow_db, site, tmp_path,  # noqa: F811
                                                                       monkeypatch):
    night = _recent_night(tmp_path)
    prefix = site.root / "main" / f"dagtest-{uuid.uuid4().hex[:8]}"
    policy = _configure(monkeypatch, tmp_path, night, prefix, site)
    future = datetime.now(UTC).replace(second=0, microsecond=0) + timedelta(days=10)
    dr = dag.test(logical_date=future, run_conf=_conf(day_obs=str(night.day_obs)))
    (calib,) = night.calibs
    on_sky = [o for o in night.obs_ids if o != calib]
    skipped = _xcom(dr, "select", "skipped")
    assert sorted(s["obs_id"] for s in skipped) == sorted(on_sky)
    assert {s["state"] for s in skipped} == {"still_embargoed"}
    exp = steps.ExposureRef("LSSTCam", night.day_obs, calib, night.exposure_ids[calib], "", "", 0)
    assert steps.paths(policy, exp).zip.exists()  # the calibration exposure was due: released
    assert _ti_states(dr)[("summary", -1)] == "failed" and dr.state == "failed"
    _nothing_released(night, policy, site, on_sky)
