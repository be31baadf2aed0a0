"""The embargo invariant, enforced twice: no exposure is released whose release time is later than the clock.

``select`` compares every exposure's release with the (injected) wall clock whatever the run asks for, and every
acting step re-derives the release from the source Butler and the current policy before it puts anything into main
storage, so a stale XCom, a hand-made ref or a policy edited to lengthen the embargo cannot release early.

One small synthetic night (real SQLite Butlers, real local store) is built once for the module; the properties
never act successfully on it, so its sinks stay empty and every example can check that nothing was released.
"""

from __future__ import annotations

import uuid
import warnings
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from facility_data.demo.rubin_synthetic import CALIB_WHERE, build_night, write_policy
from facility_data.rubin import classify, repair, steps, windows
from facility_data.rubin.policy import ButlerRef, PolicyRow
from facility_data.rubin.runs import select

warnings.filterwarnings("ignore", module="erfa")

DAY = 20250531
T0 = datetime(2025, 6, 1, 2, 0, tzinfo=UTC)  # first exposure begins; the clock is injected, never the real one
N = 6
CALIB_SEQ = 3
SETTLE = 5.0
QUARTER = timedelta(minutes=15)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("embargo")
    night = build_night(root, day_obs=DAY, n_exposures=N, detectors=3, start=T0, cadence_s=600, calibs=(CALIB_SEQ,))
    return night, root


def _policy(night, hours: float, calib_hours: float = 0.0):
    return night.policy(embargo_hours=hours, settle_minutes=SETTLE).model_copy(update={"rows": [
        PolicyRow(instrument=night.instrument, where=CALIB_WHERE, embargo_hours=calib_hours),
        PolicyRow(instrument=night.instrument, embargo_hours=hours)]})


def _true_release(night, obs_id: str, hours: float, calib_hours: float) -> datetime:
    """Computed here from the night's own end times, independently of the code under test."""
    h = calib_hours if obs_id in night.calibs else hours
    return night.ends[obs_id] + timedelta(hours=h, minutes=SETTLE)


_BUTLERS: dict = {}


def _butler(ref, *, writeable=False):
    """The real Butler of ``ref``, opened once per module (opening a repo costs more than the checks)."""
    from facility_data.rubin.butlerops import open_butler

    key = (ref.label, writeable)
    if key not in _BUTLERS:
        _BUTLERS[key] = open_butler(ref, writeable=writeable)
    return _BUTLERS[key]


def _ctx(policy, **kw):
    return steps.Context(policy, butler_factory=_butler, **kw)


class RecordingRucio:
    """Stands in for the Rucio server (tests/integration has the real one): records any use at all."""

    def __init__(self):
        self.calls: list[str] = []

    def __getattr__(self, name):
        self.calls.append(name)
        raise RuntimeError(f"Rucio used ({name}) for an exposure that must not be released")


def _released_anything(night, policy, exp, rucio: RecordingRucio) -> list[str]:
    """Every trace of a release of ``exp``: zip, yaml, datasets in any destination Butler, any Rucio use."""
    p = steps.paths(policy, exp)
    found = [str(f) for f in (p.zip, p.yaml) if f.exists()]
    found += [str(f) for f in p.zip.parent.glob(f".{p.zip.name}.*.tmp")] if p.zip.parent.exists() else []
    for repo in night.destination_repos:
        b = _butler(ButlerRef(uri=str(repo)))
        try:
            refs = b.query_datasets("raw", collections="LSSTCam/raw/all", instrument="LSSTCam",
                                    exposure=exp.exposure, explain=False)
        except Exception:  # noqa: BLE001 - an empty repo has no such collection: nothing ingested
            refs = []
        found += [f"{repo}: {len(refs)} datasets"] if refs else []
    return found + [f"rucio.{c}" for c in rucio.calls]


def _ref(night, policy, obs_id, now):
    req = windows.parse_manual(policy, {"instrument": night.instrument, "obs_ids": [obs_id]})
    ctx = _ctx(policy)
    refs, _ = windows.select_manual(ctx.source, policy, req, now)
    if refs:
        return refs[0]
    rec, row = windows.governing_row(ctx.source, policy, night.instrument, night.exposure_ids[obs_id])
    return windows._ref(night.instrument, rec, row, policy.settle_minutes)


def _align(t: datetime) -> datetime:
    return t.replace(minute=t.minute - t.minute % 15, second=0, microsecond=0)


# ------------------------------------------------------------------------------------------------ select
RUN_KINDS = ("scheduled", "backfill", "manual_day", "manual_obs_ids", "manual_future_logical_date", "reconcile")


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(kind=st.sampled_from(RUN_KINDS),
       hours=st.sampled_from([0.0, 0.5, 1.0, 12.0, 80.0, 720.0]) | st.floats(0, 200, allow_nan=False),
       calib_hours=st.sampled_from([0.0, 0.25, 24.0]),
       clock_h=st.floats(-2, 250, allow_nan=False),
       window_h=st.floats(-2, 260, allow_nan=False),
       runs=st.integers(1, 6),
       pick=st.lists(st.integers(0, N - 1), min_size=1, max_size=3, unique=True))
def test_no_run_kind_selects_an_exposure_before_its_release(world, kind, hours, calib_hours, clock_h, window_h,
                                                           runs, pick):
    night, root = world
    policy = _policy(night, hours, calib_hours)
    path = write_policy(policy, root / f"policy-{uuid.uuid4().hex}.yaml")
    now = T0 + timedelta(hours=clock_h)
    ctx = _ctx(policy, clock=lambda: now)
    params = {"instrument": night.instrument}
    ready, skipped = [], []
    if kind == "reconcile":
        exps, problems = classify.select_night(ctx, night.instrument, DAY, now)
        ready, skipped = [e.to_dict() for e in exps], problems
    else:
        if kind in ("scheduled", "backfill", "manual_future_logical_date"):
            start = _align(T0 + timedelta(hours=window_h))
            if kind == "manual_future_logical_date":  # a trigger whose logical date lies after the clock
                start = max(start, _align(now) + QUARTER)
            intervals = [(start + i * QUARTER, start + (i + 1) * QUARTER)
                         for i in range(runs if kind == "backfill" else 1)]
        else:
            intervals = [None]
            if kind == "manual_day":
                params["day_obs"] = str(DAY)
            else:
                params["obs_ids"] = [night.obs_ids[i] for i in pick]
        for interval in intervals:
            out = select(params, data_interval=interval, run_after=interval[1] if interval else now,
                         policy_path=path, context=ctx)
            ready += out["ready"]
            skipped += out["skipped"]
    for e in ready:
        assert _true_release(night, e["obs_id"], hours, calib_hours) <= now, (kind, e)
        assert datetime.fromisoformat(e["release"]) <= now
    for s in skipped:
        assert {"obs_id", "reason", "state"} <= set(s) and s["state"] in windows.SKIP_STATES, s
        if s["state"] == windows.STILL_EMBARGOED:
            assert _true_release(night, s["obs_id"], hours, calib_hours) > now
    if kind in ("manual_day", "reconcile"):  # every exposure of the night is accounted for, one way or the other
        assert {e["obs_id"] for e in ready} | {s["obs_id"] for s in skipped} == set(night.obs_ids)
        due = {o for o in night.obs_ids if _true_release(night, o, hours, calib_hours) <= now}
        assert {e["obs_id"] for e in ready} == due


# ------------------------------------------------------------------------------------------------ steps
ACTING = (steps.ZIP, steps.DIMENSIONS, "butler", steps.RUCIO)


def _act(ctx, exp, name):
    if name == "butler":
        return [steps.run_butler(ctx, exp, d) for d in ctx.policy.destinations]
    return steps.run_step(ctx, exp, name)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ref_hours=st.floats(0, 200, allow_nan=False),
       policy_hours=st.floats(0, 200, allow_nan=False),
       calib_hours=st.sampled_from([0.0, 24.0]),
       lie_h=st.just(0.0) | st.floats(0, 500, allow_nan=False),
       clock_h=st.floats(-2, 250, allow_nan=False),
       index=st.integers(0, N - 1),
       step=st.sampled_from(ACTING),
       dry_run=st.booleans())
def test_acting_steps_refuse_before_the_rederived_release(world, ref_hours, policy_hours, calib_hours, lie_h,
                                                          clock_h, index, step, dry_run):
    """The ref comes from a run under one policy (``ref_hours``), possibly forged to claim an earlier release (a
    stale or hand-made XCom); the step runs under the current policy (``policy_hours``, longer or shorter). It may
    act only once the clock is past the later of both releases; otherwise it refuses and leaves no trace."""
    night, root = world
    obs_id = night.obs_ids[index]
    then = _policy(night, ref_hours, calib_hours)
    current = _policy(night, policy_hours, calib_hours)
    now = T0 + timedelta(hours=clock_h)
    ref = _ref(night, then, obs_id, now)
    forged = datetime.fromisoformat(ref.release) - timedelta(hours=lie_h)
    ref = replace(ref, release=forged.isoformat(), embargo_hours=0.0)
    # the ref's own release only ever lengthens the embargo the current policy gives
    effective = max(_true_release(night, obs_id, policy_hours, calib_hours),
                    _true_release(night, obs_id, ref_hours, calib_hours) - timedelta(hours=lie_h))
    allowed = now >= effective
    rucio = RecordingRucio()
    ctx = _ctx(current, clock=lambda: now, rucio=rucio, dry_run=dry_run)
    if allowed:
        assert steps.ensure_released(ctx, ref) <= now
        return  # acting is legitimate here (tests/unit/test_rubin_steps.py); the sinks stay empty for the others
    with pytest.raises(steps.EmbargoViolation, match="still embargoed until"):
        _act(ctx, ref, step)
    assert _released_anything(night, current, ref, rucio) == []


def test_a_shortened_policy_cannot_release_a_ref_early(world):
    """Run-time inputs only lengthen: a ref selected under 80 h keeps its 80 h even if the policy now says 1 h."""
    night, _ = world
    obs_id = night.obs_ids[0]
    ref = _ref(night, _policy(night, 80), obs_id, T0)
    now = night.ends[obs_id] + timedelta(hours=2)
    ctx = _ctx(_policy(night, 1), clock=lambda: now, rucio=RecordingRucio())
    with pytest.raises(steps.EmbargoViolation):
        steps.run_zip(ctx, ref)
    later = _ctx(_policy(night, 1), clock=lambda: night.ends[obs_id] + timedelta(hours=81))
    assert steps.ensure_released(later, ref) == datetime.fromisoformat(ref.release)


def test_a_lengthened_policy_stops_a_ref_selected_under_the_old_one(world):
    night, _ = world
    obs_id = night.obs_ids[1]
    ref = _ref(night, _policy(night, 1), obs_id, T0)
    now = night.ends[obs_id] + timedelta(hours=2)  # past the old 1 h, not the new 80 h
    rucio = RecordingRucio()
    ctx = _ctx(_policy(night, 80), clock=lambda: now, rucio=rucio)
    for name in ACTING:
        with pytest.raises(steps.EmbargoViolation, match="still embargoed"):
            _act(ctx, ref, name)
    assert _released_anything(night, ctx.policy, ref, rucio) == []


@pytest.mark.parametrize("change, message", [
    ({"exposure": 1}, "not in the source Butler"),
    ({"obs_id": "MC_O_20250531_000099"}, "is MC_O_20250531_000002 in the source Butler"),
])
def test_a_ref_that_does_not_match_the_source_butler_is_refused(world, change, message):
    night, _ = world
    ref = replace(_ref(night, _policy(night, 0), night.obs_ids[1], T0), **change)
    ctx = _ctx(_policy(night, 0), clock=lambda: T0 + timedelta(days=365), rucio=RecordingRucio())
    with pytest.raises(steps.EmbargoViolation, match=message):
        steps.run_zip(ctx, ref)


def test_an_exposure_matching_no_policy_row_is_never_released(world):
    night, _ = world
    obs_id = night.obs_ids[0]  # on sky: only the calib row is left
    ref = _ref(night, _policy(night, 0), obs_id, T0)
    calibs_only = _policy(night, 0).model_copy(update={"rows": [
        PolicyRow(instrument=night.instrument, where=CALIB_WHERE, embargo_hours=0)]})
    ctx = _ctx(calibs_only, clock=lambda: T0 + timedelta(days=3650), rucio=RecordingRucio())
    with pytest.raises(steps.EmbargoViolation, match="matches no policy row"):
        steps.run_dimensions(ctx, ref)
    assert _released_anything(night, calibs_only, ref, RecordingRucio()) == []


def test_reconcile_repair_never_releases_early(world):
    """A repair item (e.g. a stale check result) for an exposure still under embargo: refused, nothing written."""
    night, _ = world
    obs_id = night.obs_ids[3]
    policy = _policy(night, 80)
    ref = _ref(night, policy, obs_id, T0)
    check = classify.ExposureCheck(obs_id, classify.NOT_STARTED, steps.ZIP, exposure=ref.to_dict())
    rucio = RecordingRucio()
    ctx = _ctx(policy, clock=lambda: night.ends[obs_id] + timedelta(hours=79), rucio=rucio)
    with pytest.raises(steps.EmbargoViolation):
        repair.repair_exposure(ctx, check)
    assert _released_anything(night, policy, ref, rucio) == []


def test_run_rubin_step_maps_an_embargo_violation_to_a_failed_task(world, tmp_path):
    from airflow.sdk.exceptions import AirflowFailException

    from facility_data.operators.embargo import run_rubin_step

    night, _ = world
    policy = _policy(night, 24 * 365 * 30)  # the real clock is decades before its release
    path = write_policy(policy, tmp_path / "policy.yaml")
    ref = _ref(night, policy, night.obs_ids[4], T0)
    with pytest.raises(AirflowFailException, match="EMBARGO, nothing released"):
        run_rubin_step("zip", ref.to_dict(), False, str(path), {})
    assert not steps.paths(policy, ref).zip.exists()


def test_select_refuses_a_naive_clock(world):
    night, root = world
    path = write_policy(_policy(night, 0), root / "naive.yaml")
    with pytest.raises(ValueError, match="naive"):
        select({}, data_interval=(T0, T0 + QUARTER), run_after=T0, policy_path=path, now=datetime(2030, 1, 1))
