"""Reconcile Params: validated against the policy, clear errors, nights selected by day_obs."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from facility_data.rubin.policy import ButlerRef, EmbargoPolicy, PolicyRow, RucioTarget, Storage
from facility_data.rubin.reconcile import BadParams, Request, day_obs_of, parse_request

NOW = datetime(2025, 3, 10, 15, 0, tzinfo=UTC)


@pytest.fixture
def policy(tmp_path):
    return EmbargoPolicy(rows=[PolicyRow(instrument="LSSTCam", embargo_hours=720),
                               PolicyRow(instrument="LATISS", embargo_hours=0)],
                         source=ButlerRef(uri="/repo/embargo"), storage=Storage(kind="local", root=str(tmp_path)),
                         destination_prefix="/data/main", destinations=[ButlerRef(uri="/repo/main")],
                         rucio=RucioTarget(rse="SLAC_RAW_DISK", scope="raw"))


def test_a_range_selects_every_night_in_it(policy):
    req = parse_request({"instrument": "LSSTCam", "day_obs_first": "20250227", "day_obs_last": "20250302"},
                        policy, now=NOW)
    assert req.nights == (20250227, 20250228, 20250301, 20250302)
    assert (req.repair, req.dry_run, req.deep, req.prune_embargo) == (True, False, False, "off")
    assert Request.from_dict(req.to_dict()) == req


def test_without_a_range_the_last_nights_up_to_today_are_checked(policy):
    req = parse_request({"instrument": "LATISS"}, policy, now=NOW, lookback_days=3)
    assert req.nights == (20250308, 20250309, 20250310)
    # under a 720 h embargo the scheduled run reaches back to the nights released in the last 3 days
    long = parse_request({"instrument": "LSSTCam"}, policy, now=NOW, lookback_days=3)
    assert (long.nights[0], long.nights[-1], len(long.nights)) == (20250206, 20250310, 33)
    # before 12:00 UTC it is still the previous observing day
    assert day_obs_of(datetime(2025, 3, 10, 11, 59, tzinfo=UTC)) == 20250309


@pytest.mark.parametrize("params, message", [
    ({"instrument": "NoCam"}, "unknown instrument"),
    ({"instrument": "../LSSTCam"}, "unknown instrument"),
    ({"instrument": "LSSTCam", "day_obs_first": "2025-03-01", "day_obs_last": "20250301"}, "YYYYMMDD"),
    ({"instrument": "LSSTCam", "day_obs_first": "20250230", "day_obs_last": "20250301"}, "calendar date"),
    ({"instrument": "LSSTCam", "day_obs_first": "20250301"}, "both day_obs_first and day_obs_last"),
    ({"instrument": "LSSTCam", "day_obs_first": "20250302", "day_obs_last": "20250301"}, "before"),
    ({"instrument": "LSSTCam", "day_obs_first": "20240101", "day_obs_last": "20250301"}, "at most"),
    ({"instrument": "LSSTCam", "repair": "yes"}, "repair must be true or false"),
    ({"instrument": "LSSTCam", "dry_run": 1}, "dry_run must be true or false"),
    ({"instrument": "LSSTCam", "prune_embargo": "always"}, "prune_embargo must be one of"),
])
def test_bad_params_give_a_clear_error(policy, params, message):
    with pytest.raises(BadParams, match=message):
        parse_request(params, policy, now=NOW)
