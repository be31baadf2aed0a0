"""Release windows: every exposure belongs to exactly the run whose data interval holds its release time."""

from __future__ import annotations

import warnings
from datetime import UTC, datetime, timedelta

import pytest

from facility_data.demo.rubin_synthetic import build_night, unique_day_obs
from facility_data.rubin import windows

warnings.filterwarnings("ignore", module="erfa")


@pytest.fixture(scope="module")
def night(tmp_path_factory):
    root = tmp_path_factory.mktemp("rubin-windows")
    return build_night(root, day_obs=unique_day_obs(), n_exposures=30, detectors=3, calibs=(5, 6), cadence_s=61)


@pytest.fixture(scope="module")
def source(night):
    from lsst.daf.butler import Butler

    return Butler.from_config(str(night.source_repo))


def _release(night, obs_id):
    hours = 0 if obs_id in night.calibs else 80
    return night.ends[obs_id] + timedelta(hours=hours, minutes=5)


def _floor15(dt):
    return dt.replace(minute=dt.minute - dt.minute % 15, second=0, microsecond=0)


def test_consecutive_windows_partition_the_night(night, source):
    policy = night.policy()
    releases = {o: _release(night, o) for o in night.obs_ids}
    # cover both release clusters (calibs at +5 min, on-sky at +80 h 5 min) with 15-minute windows
    seen: dict[str, int] = {}
    for first, last in ((min(releases.values()), night.ends[night.obs_ids[-1]] + timedelta(minutes=6)),
                        (night.ends[night.obs_ids[0]] + timedelta(hours=80), max(releases.values()))):
        t = _floor15(first)
        while t <= last:
            got = windows.select_released(source, policy, "LSSTCam", t, t + timedelta(minutes=15))
            for ref in got:
                assert t <= datetime.fromisoformat(ref.release) < t + timedelta(minutes=15)
                assert ref.release == releases[ref.obs_id].isoformat()
                seen[ref.obs_id] = seen.get(ref.obs_id, 0) + 1
            t += timedelta(minutes=15)
    assert seen == {o: 1 for o in night.obs_ids}


def test_calibs_follow_the_first_matching_row(night, source):
    policy = night.policy()
    calib = sorted(night.calibs)[0]
    rel = _release(night, calib)
    got = windows.select_released(source, policy, "LSSTCam", rel, rel + timedelta(seconds=1))
    assert [r.obs_id for r in got] == [calib]
    assert got[0].embargo_hours == 0
    # 80 h later (when the catch-all row would release it) it is not selected a second time
    later = windows.select_released(source, policy, "LSSTCam", rel + timedelta(hours=80) - timedelta(minutes=30),
                                    rel + timedelta(hours=80, minutes=30))
    assert calib not in {r.obs_id for r in later}


def test_window_is_half_open(night, source):
    policy = night.policy()
    obs = night.obs_ids[0]
    rel = _release(night, obs)
    assert obs in {r.obs_id for r in windows.select_released(source, policy, "LSSTCam", rel, rel + timedelta(1))}
    assert obs not in {r.obs_id for r in windows.select_released(source, policy, "LSSTCam", rel - timedelta(1), rel)}


def test_naive_or_empty_windows_are_refused(night, source):
    policy = night.policy()
    with pytest.raises(ValueError, match="naive"):
        windows.select_released(source, policy, "LSSTCam", datetime(2025, 1, 1), datetime(2025, 1, 2))
    t = datetime(2025, 1, 1, tzinfo=UTC)
    with pytest.raises(ValueError, match="empty window"):
        windows.select_released(source, policy, "LSSTCam", t, t)


@pytest.mark.parametrize("params, message", [
    ({"instrument": "HSC", "day_obs": "20250101"}, "unknown instrument"),
    ({"instrument": "../LSSTCam", "day_obs": "20250101"}, "unknown instrument"),
    ({"instrument": "LSSTCam", "day_obs": "2025-01-01"}, "YYYYMMDD"),
    ({"instrument": "LSSTCam", "day_obs": "20251340"}, "not a calendar date"),
    ({"instrument": "LSSTCam", "obs_ids": ["../../etc/passwd"]}, "malformed obs_id"),
    ({"instrument": "LSSTCam", "obs_ids": ["MC_O_20250101_000001/x"]}, "malformed obs_id"),
    ({"instrument": "LSSTCam", "obs_ids": "MC_O_20250101_000001"}, "must be a list"),
    ({"instrument": "LSSTCam", "day_obs": "20250102", "obs_ids": ["MC_O_20250101_000001"]}, "not from day_obs"),
    ({"instrument": "LSSTCam"}, "needs day_obs and/or obs_ids"),
    ({"instrument": "LSSTCam", "day_obs": "20250101", "dry_run": "yes"}, "dry_run"),
    ({"instrument": "LSSTCam", "day_obs": "20250101\n"}, "YYYYMMDD"),  # a trailing newline
    ({"instrument": "LSSTCam", "day_obs": "\u0662\u0660\u0662\u0665\u0660\u0661\u0660\u0661"}, "YYYYMMDD"),
    ({"instrument": "LSSTCam", "day_obs": True}, "a string or an integer"),  # a bool is an int to Python
    ({"instrument": "LSSTCam", "day_obs": 20250101.0}, "a string or an integer"),
    ({"instrument": "LSSTCam", "day_obs": 2025010}, "YYYYMMDD"),
    ({"instrument": "LSSTCam", "day_obs": -2025010}, "YYYYMMDD"),
    ({"instrument": "LSSTCam", "day_obs": 20251340}, "not a calendar date"),
    ({"instrument": "LSSTCam", "obs_ids": ["MC_O_20250101_000001\n"]}, "malformed obs_id"),
    ({"instrument": "LSSTCam", "obs_ids": ["MC_O_2025010\u0661_000001"]}, "malformed obs_id"),  # Arabic-Indic 1
])
def test_bad_manual_params_are_rejected(night, params, message):
    with pytest.raises(ValueError, match=message):
        windows.parse_manual(night.policy(), params)


def test_day_obs_as_an_integer_is_the_same_request_as_the_string(night):
    policy = night.policy()
    as_text = windows.parse_manual(policy, {"instrument": "LSSTCam", "day_obs": "20250101",
                                            "obs_ids": ["MC_O_20250101_000001"]})
    as_int = windows.parse_manual(policy, {"instrument": "LSSTCam", "day_obs": 20250101,
                                           "obs_ids": ["MC_O_20250101_000001"]})
    assert as_int == as_text and as_int.day_obs == 20250101
    with pytest.raises(ValueError, match="not from day_obs 20250102"):  # the integer is checked like the string
        windows.parse_manual(policy, {"instrument": "LSSTCam", "day_obs": 20250102,
                                      "obs_ids": ["MC_O_20250101_000001"]})


@pytest.mark.parametrize(("day_obs", "ok"), [("20250101", True), (20250101, True), (None, True), (True, False),
                                             (False, False), (20250101.0, False), ([20250101], False)])
def test_the_raw_conf_schema_takes_day_obs_as_a_string_or_an_integer_never_a_bool(day_obs, ok):
    from facility_data.rubin.runs import BadRequest, check_run_conf

    if ok:
        check_run_conf({"day_obs": day_obs})
    else:
        with pytest.raises(BadRequest, match="conf key day_obs must be a string or an integer or null"):
            check_run_conf({"day_obs": day_obs})


def test_every_bad_manual_field_is_named_at_once(night):
    """Airflow's form stops at the first bad Param; the domain check names each one, so one fix cycle is enough."""
    with pytest.raises(ValueError) as err:
        windows.parse_manual(night.policy(), {"instrument": "NoCam", "day_obs": "2025-12-31", "obs_ids": ["x/y"],
                                              "dry_run": "no"})
    for field in ("instrument:", "day_obs:", "obs_ids:", "dry_run:"):
        assert field in str(err.value), err.value


def test_manual_selection_is_exact_and_refuses_embargoed(night, source):
    policy = night.policy()
    wanted = night.obs_ids[10:12]
    req = windows.parse_manual(policy, {"instrument": "LSSTCam", "obs_ids": [*wanted, "MC_O_19000101_000001"]})
    now = _release(night, wanted[0]) + timedelta(seconds=1)  # first released, second still embargoed
    got, problems = windows.select_manual(source, policy, req, now)
    assert [r.obs_id for r in got] == [wanted[0]]
    reasons = {p["obs_id"]: p["reason"] for p in problems}
    assert reasons[wanted[1]].startswith("still embargoed")
    assert "no such exposure" in reasons["MC_O_19000101_000001"]
    day_req = windows.parse_manual(policy, {"instrument": "LSSTCam", "day_obs": str(night.day_obs)})
    got, problems = windows.select_manual(source, policy, day_req, now + timedelta(days=10))
    assert sorted(r.obs_id for r in got) == sorted(night.obs_ids) and problems == []
