"""The Rubin run verdict (runs.summarize) and the window-run Params refusal, as plain functions."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from facility_data.rubin.runs import BadRequest, refuse_manual_params_in_window_runs, summarize, verdict_lines

STEPS = ["exposure.gate", "exposure.zip", "exposure.dimensions", "exposure.butler_ingest", "exposure.rucio"]


def _states(per_index: dict[int, dict[str, str]]) -> dict[str, str]:
    return {f"{t}_{i}": s for i, steps in per_index.items() for t, s in steps.items()}


def _all(state="success"):
    return dict.fromkeys(STEPS, state)


def test_green_only_when_every_exposure_ended_its_last_step_in_this_run_and_is_verified():
    selected = [{"obs_id": "A"}, {"obs_id": "B"}]
    results = {0: {"obs_id": "A", "state": "done"}, 1: {"obs_id": "B", "state": "verified"}}
    out = summarize(selected, [], _states({0: _all(), 1: _all()}), STEPS, results, {})
    assert out["ok"] and out["acted"] == 1 and out["already_done"] == 1 and out["not_completed"] == []


def test_a_stale_result_of_a_step_that_did_not_run_in_this_run_is_not_done():
    """Issue 17: the Rucio value left by a first run must not count when its task did not run this time."""
    selected = [{"obs_id": "A"}, {"obs_id": "B"}]
    states = _states({0: _all(), 1: {**_all(), "exposure.dimensions": "failed", "exposure.butler_ingest":
                                     "upstream_failed", "exposure.rucio": "upstream_failed"}})
    out = summarize(selected, [], states, STEPS, {0: {"obs_id": "A", "state": "verified"}}, {})
    assert not out["ok"]
    assert out["not_completed"] == [{"obs_id": "B", "reason": "exposure.dimensions failed in this run"}]


def test_a_step_that_never_ran_and_a_result_for_another_exposure_are_not_done():
    selected = [{"obs_id": "A"}, {"obs_id": "B"}]
    states = _states({0: {}, 1: _all()})
    out = summarize(selected, [], states, STEPS, {1: {"obs_id": "Z", "state": "done"}}, {})
    reasons = {n["obs_id"]: n["reason"] for n in out["not_completed"]}
    assert reasons["A"] == "exposure.gate did not run in this run"
    assert "names 'Z'" in reasons["B"]


def test_an_exposure_the_sinks_do_not_verify_is_not_done():
    out = summarize([{"obs_id": "A"}], [], _states({0: _all()}), STEPS, {0: {"obs_id": "A", "state": "verified"}},
                    {"A": "dimensions inconsistent: {...}"})
    assert not out["ok"] and "not verified in the sinks: dimensions inconsistent" in out["not_completed"][0]["reason"]


def test_anything_asked_for_and_skipped_fails_with_its_reason():
    skipped = [{"obs_id": "U", "reason": "unknown exposure", "state": "unknown"},
               {"obs_id": "E", "reason": "still under embargo until 2026-01-02T00:00:00+00:00"}]
    out = summarize([], skipped, {}, STEPS)
    assert not out["ok"] and out["selected"] == 0
    assert verdict_lines(out) == ["U: not processed (unknown): unknown exposure",
                                  "E: not processed (not_processed): still under embargo until "
                                  "2026-01-02T00:00:00+00:00"]


def test_select_that_did_not_succeed_is_never_green():
    out = summarize(None, None, {}, STEPS)
    assert out["select_failed"] and not out["ok"]


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.lists(st.sampled_from(["success", "failed", "upstream_failed", "skipped", None]),
                                   min_size=5, max_size=5), st.booleans(), st.booleans()), max_size=6))
def test_ok_exactly_when_every_exposure_succeeded_matches_and_is_verified(units):
    selected = [{"obs_id": f"X{i}"} for i in range(len(units))]
    states, results, unverified = {}, {}, {}
    for i, (step_states, matches, verified) in enumerate(units):
        states.update({f"{t}_{i}": s for t, s in zip(STEPS, step_states, strict=True) if s is not None})
        results[i] = {"obs_id": f"X{i}" if matches else "other", "state": "done"}
        if not verified:
            unverified[f"X{i}"] = "missing"
    out = summarize(selected, [], states, STEPS, results, unverified)
    expected = all(s[-1] == "success" and m and v for s, m, v in units)
    assert out["ok"] == expected
    assert len(out["not_completed"]) == sum(not (s[-1] == "success" and m and v) for s, m, v in units)


@pytest.mark.parametrize("run_type", ["scheduled", "backfill"])
@pytest.mark.parametrize("params, named", [({"day_obs": "20250101"}, "day_obs"),
                                           ({"obs_ids": ["MC_O_20250101_000001"]}, "obs_ids"),
                                           ({"day_obs": "20250101", "obs_ids": ["X"]}, "day_obs, obs_ids")])
def test_window_runs_refuse_manual_only_params(run_type, params, named):
    with pytest.raises(BadRequest, match=f"{run_type} runs .* Params {named} are for manual runs only"):
        refuse_manual_params_in_window_runs({"instrument": "LSSTCam", **params}, run_type)


def test_window_runs_accept_empty_manual_params_and_manual_runs_may_name_exposures():
    from airflow.utils.types import DagRunType

    for run_type in (DagRunType.SCHEDULED, DagRunType.BACKFILL_JOB, "scheduled"):
        refuse_manual_params_in_window_runs({"day_obs": None, "obs_ids": [], "dry_run": True}, run_type)
        refuse_manual_params_in_window_runs({"day_obs": "", "obs_ids": ()}, run_type)
    with pytest.raises(BadRequest, match="backfill runs"):
        refuse_manual_params_in_window_runs({"obs_ids": ["X"]}, DagRunType.BACKFILL_JOB)
    for run_type in (DagRunType.MANUAL, "manual", None, "asset_triggered"):
        refuse_manual_params_in_window_runs({"day_obs": "20250101", "obs_ids": ["X"]}, run_type)


def test_step_log_line_gives_the_rate_of_a_step_that_wrote_bytes():
    from facility_data.rubin.runs import step_line

    zipped = {"step": "zip", "state": "done", "detail": {"path": "/main/x.zip", "bytes": 4_000_000_000}}
    assert step_line("MC_O_20251231_000010", zipped, 10.0).startswith(
        "MC_O_20251231_000010 zip: done in 10.00 s, 4000000000 B at 400.0 MB/s; ")
    verified = {**zipped, "state": "verified"}  # nothing written: no rate
    assert "MB/s" not in step_line("MC_O_20251231_000010", verified, 2.0)
    huge = {"step": "rucio", "state": "done", "detail": {"missing": ["x" * 50] * 100}}
    line = step_line("MC_O_20251231_000010", huge, 1.0)
    assert len(line) < 400 and line.endswith("...") and "MB/s" not in line
