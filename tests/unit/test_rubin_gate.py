"""The completeness gate fails closed: no manifest, a truncated upload or a Butler record that does not match the
embargo store is never released, whoever calls the step (select, the gate task, a hand-called zip, reconciliation).

One synthetic night per module (real SQLite Butler, real local store); each test breaks its own exposure.
"""

from __future__ import annotations

import os
import warnings
from datetime import UTC, datetime, timedelta

import pytest
from no_rucio import NoRucio  # tests/unit is on sys.path

from facility_data.config import ConfigError
from facility_data.demo.rubin_synthetic import CALIB_WHERE, build_night, unique_day_obs, write_policy
from facility_data.rubin import classify, reconcile, steps, windows
from facility_data.rubin.policy import PolicyRow, WithoutManifest, load_policy
from facility_data.rubin.runs import select

warnings.filterwarnings("ignore", module="erfa")
N = 8


@pytest.fixture(scope="module")
def night(tmp_path_factory):
    return build_night(tmp_path_factory.mktemp("gate"), day_obs=unique_day_obs(), n_exposures=N, detectors=3)


def _policy(night, quiet_hours=None):
    fallback = WithoutManifest(release_after_quiet_hours=quiet_hours) if quiet_hours else None
    return night.policy().model_copy(update={"rows": [
        PolicyRow(instrument=night.instrument, where=CALIB_WHERE, embargo_hours=0, without_manifest=fallback),
        PolicyRow(instrument=night.instrument, embargo_hours=80, without_manifest=fallback)]})


def _ref(ctx, night, obs_id):
    req = windows.parse_manual(ctx.policy, {"instrument": night.instrument, "obs_ids": [obs_id]})
    refs, problems = windows.select_manual(ctx.source, ctx.policy, req, datetime.now(UTC))
    assert not problems, problems
    return refs[0]


def _select(night, policy, obs_id, tmp_path, now=None):
    ctx = steps.Context(policy, clock=(lambda: now) if now else None)
    return select({"instrument": night.instrument, "obs_ids": [obs_id]}, data_interval=None,
                  run_after=datetime.now(UTC), policy_path=write_policy(policy, tmp_path / "policy.yaml"),
                  context=ctx)


def _key(night, obs_id, name):
    return f"{night.instrument}/{night.day_obs}/{obs_id}/{name}"


def _file(night, obs_id, name):
    return night.store.root / _key(night, obs_id, name)


def test_exposure_without_manifest_is_not_released(night, tmp_path):
    obs_id = night.obs_ids[0]
    _file(night, obs_id, steps.manifest_name(obs_id)).unlink()
    policy = _policy(night)
    out = _select(night, policy, obs_id, tmp_path)
    assert out["ready"] == []
    assert [(s["obs_id"], s["state"], s["reason"]) for s in out["skipped"]] == [
        (obs_id, "incomplete_at_source", "no manifest")]
    ctx = steps.Context(policy)
    exp = _ref(ctx, night, obs_id)
    with pytest.raises(steps.IncompleteExposure, match="no manifest"):
        steps.run_gate(ctx, exp)
    with pytest.raises(steps.IncompleteExposure):  # a hand-called zip step re-checks the gate
        steps.run_zip(ctx, exp)
    assert not steps.paths(policy, exp).zip.exists()


def test_without_manifest_fallback_waits_for_quiet_hours(night, tmp_path):
    obs_id = night.obs_ids[1]
    _file(night, obs_id, steps.manifest_name(obs_id)).unlink()
    policy = _policy(night, quiet_hours=6)
    folder = _file(night, obs_id, "x").parent
    newest = datetime.now(UTC) - timedelta(hours=2)
    for f in folder.iterdir():
        os.utime(f, (newest.timestamp(), newest.timestamp()))
    out = _select(night, policy, obs_id, tmp_path)  # 2 h quiet < 6 h
    assert out["ready"] == [] and out["skipped"][0]["state"] == "incomplete_at_source"
    assert out["skipped"][0]["reason"].startswith("no manifest; newest object arrived")
    later = datetime.now(UTC) + timedelta(hours=5)  # then 7 h quiet
    out = _select(night, policy, obs_id, tmp_path, now=later)
    assert [e["obs_id"] for e in out["ready"]] == [obs_id] and out["skipped"] == []
    # one new object restarts the quiet period
    (folder / "late_arrival.json").write_text("{}")
    out = _select(night, policy, obs_id, tmp_path, now=later)
    assert out["ready"] == [] and "newest object arrived" in out["skipped"][0]["reason"]


def test_fallback_fails_closed_when_modification_times_are_unknown():
    from facility_data.rubin.storage import StoredObject

    now = datetime.now(UTC)
    assert steps.quiet_enough([StoredObject("a/b", 1, None)], 1, now)[0] is False
    assert steps.quiet_enough([], 1, now)[0] is False
    old = (now - timedelta(hours=3)).timestamp()
    assert steps.quiet_enough([StoredObject("a/b", 1, old)], 2, now)[0] is True
    assert steps.quiet_enough([StoredObject("a/b", 1, old), StoredObject("a/c", 1, None)], 2, now)[0] is False


def _truncate(night, obs_id) -> str:
    name = f"{obs_id}_R00_S00.fits" if _file(night, obs_id, f"{obs_id}_R00_S00.fits").exists() else None
    name = name or next(p.name for p in _file(night, obs_id, "x").parent.iterdir() if p.suffix == ".fits")
    path = _file(night, obs_id, name)
    path.write_bytes(path.read_bytes()[:-2880])  # a truncated upload: the embargo Butler recorded the full size
    return name


def test_truncated_upload_is_inconsistent_at_source_and_never_zipped(night, tmp_path):
    obs_id = night.obs_ids[2]
    name = _truncate(night, obs_id)
    policy = _policy(night)
    out = _select(night, policy, obs_id, tmp_path)
    assert out["ready"] == []
    (s,) = out["skipped"]
    assert s["state"] == "inconsistent_at_source" and name in s["reason"] and s["exposure"]["obs_id"] == obs_id
    ctx = steps.Context(policy)
    exp = _ref(ctx, night, obs_id)
    with pytest.raises(steps.InconsistentAtSource, match="recorded by the embargo Butler"):
        steps.run_gate(ctx, exp)
    with pytest.raises(steps.InconsistentAtSource):
        steps.run_zip(ctx, exp)
    assert not steps.paths(policy, exp).zip.exists()
    status = steps.exposure_status(steps.Context(policy), exp)
    assert status.steps[steps.GATE] == "inconsistent"


def test_butler_artifact_missing_from_the_folder_is_inconsistent_at_source(night, tmp_path):
    obs_id = night.obs_ids[3]
    fits = sorted(p for p in _file(night, obs_id, "x").parent.iterdir() if p.suffix == ".fits")
    fits[0].unlink()
    out = _select(night, _policy(night), obs_id, tmp_path)
    assert out["ready"] == [] and out["skipped"][0]["state"] == "inconsistent_at_source"
    assert "not in the embargo folder" in out["skipped"][0]["reason"]


def test_reconcile_counts_inconsistent_at_source_as_unrepairable(night):
    obs_id = night.obs_ids[4]
    _truncate(night, obs_id)
    ctx = steps.Context(_policy(night), rucio=NoRucio())
    result = reconcile.check_night(ctx, night.instrument, night.day_obs, now=datetime.now(UTC))  # fast
    check = next(e for e in result.exposures if e.obs_id == obs_id)
    assert check.state == "inconsistent_at_source", check
    assert any("inconsistent at source" in p for p in check.problems)
    assert obs_id in {u["obs_id"] for u in reconcile.unrepairable([result])}
    assert obs_id not in {r["obs_id"] for r in reconcile.repair_list([result])}
    assert result.counts["inconsistent_at_source"] == sum(e.state == "inconsistent_at_source"
                                                          for e in result.exposures)
    exp = windows.ExposureRef.from_dict(check.exposure)
    deep = classify.deep_check(ctx, exp, ctx.objects(exp), steps.step_names(ctx.policy))
    assert deep.state == "inconsistent_at_source", deep


def test_no_manifest_fast_reconcile_is_incomplete_at_source(night):
    obs_id = night.obs_ids[5]
    _file(night, obs_id, steps.manifest_name(obs_id)).unlink()
    ctx = steps.Context(_policy(night), rucio=NoRucio())
    result = reconcile.check_night(ctx, night.instrument, night.day_obs, now=datetime.now(UTC))
    check = next(e for e in result.exposures if e.obs_id == obs_id)
    assert check.state == "incomplete_at_source" and "gate: no manifest" in check.problems


@pytest.mark.parametrize("row_extra, message", [
    ({"without_manifest": {"release_after_quiet_hours": -1}}, "rows.1.without_manifest.release_after_quiet_hours"),
    ({"without_manifest": {"release_after_quiet_hours": "soon"}}, "rows.1.without_manifest.release_after_quiet_hours"),
    ({"without_manifest": {"release_after_quiet_hour": 4}}, "rows.1.without_manifest.release_after_quiet_hour"),
    ({"without_manifest": {"release_after_quiet_hours": ".nan"}}, "rows.1.without_manifest"),
    ({"without_manifst": {"release_after_quiet_hours": 4}}, "rows.1.without_manifst"),
    ({"embargo_hours": ".inf"}, "rows.1.embargo_hours"),
])
def test_policy_fallback_field_is_validated_at_load(night, tmp_path, row_extra, message):
    import yaml

    path = write_policy(night.policy(), tmp_path / "policy.yaml")
    data = yaml.safe_load(path.read_text())
    data["rows"][1].update(row_extra)
    text = yaml.safe_dump(data).replace("'.nan'", ".nan").replace("'.inf'", ".inf")
    path.write_text(text)
    with pytest.raises(ConfigError, match=str(path)) as err:
        load_policy(path)
    assert message in str(err.value)


def test_shipped_policy_has_no_fallback_by_default(monkeypatch, tmp_path):
    from facility_data.config import include_dir

    monkeypatch.setenv("FACILITY_SITE", str(tmp_path))
    assert all(r.without_manifest is None for r in load_policy(include_dir() / "embargo_policy.yaml").rows)


def test_size_problems_fail_closed_on_every_disagreement():
    from facility_data.rubin.storage import StoredObject

    objs = [StoredObject("I/1/o/a.fits", 10), StoredObject("I/1/o/b.fits", 20)]
    assert steps.size_problems({"d1": [("a.fits", 10)], "d2": [("b.fits", 20)]}, ["d1", "d2"], objs) == []
    problems = steps.size_problems({"d1": [("a.fits", 9)], "d2": [("b.fits", -1)], "d3": [("c.fits", 5)]},
                                   ["d1", "d2", "d3", "d4"], objs)
    assert problems == ["a.fits: 10 bytes in the store, 9 recorded by the embargo Butler",
                        "b.fits: the embargo Butler recorded no size",
                        "c.fits: in the embargo Butler, not in the embargo folder",
                        "dataset d4 has no stored-file record in the embargo Butler"]


def test_unreadable_manifest_is_reported_unknown_not_released(night, tmp_path):
    obs_id = night.obs_ids[6]
    _file(night, obs_id, steps.manifest_name(obs_id)).write_text('{"expectedSensors": ')
    out = _select(night, _policy(night), obs_id, tmp_path)
    assert out["ready"] == []
    assert out["skipped"][0]["state"] == "unknown" and "gate not checkable" in out["skipped"][0]["reason"]
