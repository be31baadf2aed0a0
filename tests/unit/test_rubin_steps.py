"""Per-exposure steps against real SQLite Butler repos and a local embargo store (Rucio: tests/integration)."""

from __future__ import annotations

import hashlib
import warnings
import zipfile
from datetime import timedelta

import pytest

from facility_data.demo.rubin_synthetic import build_night, detector_layout, ensure_repo, unique_day_obs
from facility_data.rubin import steps, windows
from facility_data.rubin.zipbuild import InconsistentArtifact

warnings.filterwarnings("ignore", module="erfa")


@pytest.fixture
def night(tmp_path):
    return build_night(tmp_path, day_obs=unique_day_obs(), n_exposures=4, detectors=12, destinations=2,
                       incomplete=(2,), without_guider=(3,), calibs=(4,))


def exposures(night):
    policy = night.policy()
    ctx = steps.Context(policy)
    req = windows.parse_manual(policy, {"instrument": "LSSTCam", "day_obs": str(night.day_obs)})
    refs, problems = windows.select_manual(ctx.source, policy, req, night.ends[night.obs_ids[-1]] + timedelta(days=5))
    assert problems == []
    return {r.obs_id: r for r in refs}


def local_steps(policy):
    return [s for s in steps.step_names(policy) if s != steps.RUCIO]


def run_local(ctx, exp):
    return [steps.run_step(ctx, exp, name) for name in local_steps(ctx.policy)]


def sink_state(night, policy, exp):
    """Everything the local steps leave behind for one exposure, for end-state comparison."""
    from lsst.daf.butler import Butler

    p = steps.paths(policy, exp)
    state = {"zip": hashlib.md5(p.zip.read_bytes()).hexdigest(), "yaml": p.yaml.read_bytes()}
    for repo in night.destination_repos:
        b = Butler.from_config(str(repo))
        refs = b.query_datasets("raw", collections="LSSTCam/raw/all", instrument="LSSTCam", exposure=exp.exposure,
                                explain=False)
        state[str(repo)] = sorted(str(r.id) for r in refs)
        state[f"{repo}:visits"] = len(b.query_dimension_records("visit", instrument="LSSTCam",
                                                                 visit=exp.exposure, explain=False))
    return state


def test_local_steps_fill_every_sink(night, tmp_path):
    from lsst.daf.butler import Butler

    policy = night.policy()
    ctx = steps.Context(policy)
    exps = exposures(night)
    complete = [o for o in night.obs_ids if o not in night.incomplete]
    for obs_id in complete:
        outcomes = run_local(ctx, exps[obs_id])
        assert [o.state for o in outcomes] == ["verified", "done", "done", "done", "done"]
    for obs_id in complete:
        exp = exps[obs_id]
        p = steps.paths(policy, exp)
        objs = ctx.store.list_folder("LSSTCam", night.day_obs, obs_id)
        with zipfile.ZipFile(p.zip) as zf:  # every object of the folder, byte-identical
            assert {o.name for o in objs} | {"_butler_zip_index.json", "_metadata_index.json"} == set(zf.namelist())
            for o in objs:
                assert zf.read(o.name) == ctx.store.read(o.key)
        for repo in night.destination_repos:  # readable, identical to the embargo object
            b = Butler.from_config(str(repo))
            refs = b.query_datasets("raw", collections="LSSTCam/raw/all", instrument="LSSTCam",
                                    exposure=exp.exposure, with_dimension_records=True, explain=False)
            assert len(refs) == len(ctx.refs(exp)) - sum(r.datasetType.name == "guider_raw" for r in ctx.refs(exp))
            for ref in refs[:3]:
                got = b.get(ref)
                key = f"LSSTCam/{night.day_obs}/{obs_id}/{obs_id}_{ref.dataId.records['detector'].full_name}.fits"
                assert got["md5"] == hashlib.md5(ctx.store.read(key)).hexdigest()
            uri = b.getURI(refs[0])
            assert str(p.zip) in str(uri)  # direct: the destination points into our zip
    # the exposure without guider data has no guider member and still passed the gate
    no_guider = next(iter(night.without_guider))
    with zipfile.ZipFile(steps.paths(policy, exps[no_guider]).zip) as zf:
        assert not [n for n in zf.namelist() if "_SG" in n]


def test_dimensions_yaml_imports_into_a_fresh_repo(night, tmp_path):
    from lsst.daf.butler import Butler

    policy = night.policy()
    ctx = steps.Context(policy)
    exp = exposures(night)[night.obs_ids[0]]
    steps.run_step(ctx, exp, steps.DIMENSIONS)
    fresh = ensure_repo(tmp_path / "remote-site", detector_layout(12))
    fresh.import_(filename=str(steps.paths(policy, exp).yaml))
    fresh = Butler.from_config(str(tmp_path / "remote-site"))
    for element in ("exposure", "visit", "visit_definition", "visit_system_membership", "visit_detector_region"):
        assert fresh.query_dimension_records(element, instrument="LSSTCam", exposure=exp.exposure, explain=False) \
            if element == "exposure" else fresh.query_dimension_records(element, instrument="LSSTCam",
                                                                        visit=exp.exposure, explain=False), element


def test_incomplete_exposure_is_refused_and_reported(night):
    policy = night.policy()
    ctx = steps.Context(policy)
    exp = exposures(night)[next(iter(night.incomplete))]
    with pytest.raises(steps.IncompleteExposure, match="R01_S"):
        steps.run_step(ctx, exp, steps.GATE)
    status = steps.exposure_status(steps.Context(policy), exp, only=local_steps(policy))
    assert status.steps[steps.GATE] == "incomplete" and status.first_missing == steps.GATE
    assert not steps.paths(policy, exp).zip.exists()


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted run, the end state every crash-and-rerun must reach."""
    ref = build_night(tmp_path_factory.mktemp("reference"), day_obs=unique_day_obs(), n_exposures=1, detectors=6,
                      destinations=2)
    exp = next(iter(exposures(ref).values()))
    run_local(steps.Context(ref.policy()), exp)
    return ref, exp


@pytest.mark.parametrize("crash_after", ["gate", "zip", "dimensions", "butler:1", "butler:2-dims-only"])
def test_crash_after_each_local_step_then_rerun_gives_the_same_end_state(tmp_path, reference, crash_after):
    reference, ref_exp = reference
    crashed = build_night(tmp_path / "crash", day_obs=reference.day_obs, n_exposures=1, detectors=6,
                          destinations=2)
    exp = next(iter(exposures(crashed).values()))

    policy = crashed.policy()
    ctx = steps.Context(policy)
    names = local_steps(policy)
    if crash_after == "butler:2-dims-only":
        for name in names[:4]:
            steps.run_step(ctx, exp, name)
        # crash inside the second ingest: records transferred, zip not ingested
        dest = ctx.butler(policy.destinations[1], writeable=True)
        dest.transfer_dimension_records_from(ctx.source, [r.dataId for r in ctx.refs(exp)])
    else:
        upto = {"gate": 1, "zip": 2, "dimensions": 3, "butler:1": 4}[crash_after]
        for name in names[:upto]:
            steps.run_step(ctx, exp, name)
    before = steps.exposure_status(steps.Context(policy), exp, only=local_steps(policy))
    assert before.first_missing is not None
    outcomes = run_local(steps.Context(policy), exp)  # the rerun, in a fresh context (a new process)
    assert all(o.state in ("verified", "done") for o in outcomes)
    assert [o.step for o in outcomes if o.state == "done"] == names[names.index(before.first_missing):]
    a, b = sink_state(reference, reference.policy(), ref_exp), sink_state(crashed, policy, exp)
    assert a["zip"] == b["zip"] and a["yaml"] == b["yaml"]
    for ra, rb in zip(reference.destination_repos, crashed.destination_repos, strict=True):
        assert a[str(ra)] == b[str(rb)] and a[f"{ra}:visits"] == b[f"{rb}:visits"] == 1


def test_status_is_read_only_and_names_the_first_missing_step(night):
    policy = night.policy()
    exp = exposures(night)[night.obs_ids[0]]
    status = steps.exposure_status(steps.Context(policy), exp, only=local_steps(policy))
    assert status.steps[steps.GATE] == "done" and status.first_missing == steps.ZIP
    assert not steps.paths(policy, exp).zip.parent.exists()
    ctx = steps.Context(policy)
    steps.run_step(ctx, exp, steps.ZIP)
    status = steps.exposure_status(steps.Context(policy), exp, only=local_steps(policy))
    assert status.steps[steps.ZIP] == "done" and status.first_missing == steps.DIMENSIONS
    assert not steps.paths(policy, exp).yaml.exists()


def test_dry_run_changes_nothing(night):
    from lsst.daf.butler import Butler

    policy = night.policy()
    exp = exposures(night)[night.obs_ids[0]]
    outcomes = run_local(steps.Context(policy, dry_run=True), exp)
    assert [o.state for o in outcomes] == ["verified"] + ["would-act"] * 4
    assert not steps.paths(policy, exp).zip.parent.exists()
    for repo in night.destination_repos:
        assert not Butler.from_config(str(repo)).query_datasets("raw", collections="*", find_first=False,
                                                                explain=False)


def test_inconsistent_artifacts_are_reported_not_overwritten(night):
    policy = night.policy()
    exp = exposures(night)[night.obs_ids[0]]
    run_local(steps.Context(policy), exp)
    p = steps.paths(policy, exp)
    p.yaml.write_bytes(p.yaml.read_bytes().replace(b"synthetic", b"tampered!"))
    tampered = p.yaml.read_bytes()
    with pytest.raises(InconsistentArtifact, match="differs"):
        steps.run_step(steps.Context(policy), exp, steps.DIMENSIONS)
    assert p.yaml.read_bytes() == tampered
    key = f"LSSTCam/{night.day_obs}/{exp.obs_id}/{exp.obs_id}_R01_S00.fits"
    store = steps.Context(policy).store
    data = bytearray(store.read(key))
    data[-1] ^= 0xFF
    store.put(key, bytes(data))
    zip_before = p.zip.read_bytes()
    with pytest.raises(InconsistentArtifact, match="differs from embargo object"):
        steps.run_step(steps.Context(policy), exp, steps.ZIP)
    assert p.zip.read_bytes() == zip_before
    status = steps.exposure_status(steps.Context(policy), exp, deep=True, only=local_steps(policy))
    assert status.steps[steps.ZIP] == "inconsistent" and status.first_missing == steps.ZIP


def test_temp_zip_left_by_a_killed_run_is_cleaned_and_a_live_one_kept(night):
    import os
    import time

    policy = night.policy()
    exp = exposures(night)[night.obs_ids[0]]
    p = steps.paths(policy, exp).zip
    p.parent.mkdir(parents=True)
    stale, live = p.parent / f".{p.name}.dead.tmp", p.parent / f".{p.name}.live.tmp"
    stale.write_bytes(b"half a zip")
    live.write_bytes(b"being written")
    old = time.time() - steps.STALE_TEMP_S - 60
    os.utime(stale, (old, old))
    assert steps.run_step(steps.Context(policy), exp, steps.ZIP).state == "done"
    assert not stale.exists() and live.exists() and p.exists()


# ---- a destination Butler in another dimension universe is refused up front -------------------------------------
def _repo_in_another_universe(root, what: str):
    from lsst.daf.butler import Butler, DimensionConfig

    config = DimensionConfig()
    if what == "version":
        config["version"] = config["version"] - 1
    else:
        config["namespace"] = "other_namespace"
    Butler.makeRepo(str(root), dimensionConfig=config)
    return Butler.from_config(str(root)).dimensions


@pytest.mark.parametrize("what", ["version", "namespace"])
def test_a_destination_in_another_dimension_universe_is_refused_before_any_side_effect(tmp_path, what):
    from airflow.sdk.exceptions import AirflowFailException
    from lsst.daf.butler import Butler

    from facility_data.demo.rubin_synthetic import write_policy
    from facility_data.operators.embargo import RubinStepOperator
    from facility_data.rubin.butlerops import UniverseMismatch
    from facility_data.rubin.policy import ButlerRef
    from facility_data.rubin.runs import BadRequest, select

    night = build_night(tmp_path, day_obs=unique_day_obs(), n_exposures=2, detectors=6)
    other = tmp_path / "other-universe"
    universe = _repo_in_another_universe(other, what)
    source = Butler.from_config(str(night.source_repo)).dimensions
    assert (universe.namespace, universe.version) != (source.namespace, source.version)
    good = night.policy()
    policy = good.model_copy(update={"destinations": [*good.destinations, ButlerRef(uri=str(other))]})
    policy_path = write_policy(policy, tmp_path / "policy.yaml")
    exp = next(iter(exposures(night).values()))
    now = night.ends[night.obs_ids[-1]] + timedelta(days=5)
    expected = (f"destination Butler {other} has dimension universe {universe.namespace} version {universe.version}, "
                f"the source Butler {night.source_repo} {source.namespace} version {source.version}")

    # the run's select refuses before any exposure's step (the first destination is fine: still nothing done)
    with pytest.raises(BadRequest) as err:
        select({"instrument": "LSSTCam", "day_obs": str(night.day_obs)}, data_interval=None, run_after=now,
               policy_path=policy_path, now=now)
    assert str(err.value).startswith(expected)
    # a step asked directly (a hand call, a repair) refuses too, before its lease or any write
    with pytest.raises(UniverseMismatch, match="refused, nothing ingested"):
        steps.run_step(steps.Context(policy), exp, steps.butler_step(policy.destinations[1]))
    # and the operator fails the task at once (never retried)
    op = RubinStepOperator(task_id="butler_ingest", step="butler", exposure=exp.to_dict(),
                           policy_path=str(policy_path))
    with pytest.raises(AirflowFailException, match="REFUSED: destination Butler"):
        op.execute({"params": {"dry_run": False}})
    assert not steps.paths(policy, exp).zip.parent.exists()  # no zip, no yaml, no lease
    for repo in (*night.destination_repos, other):
        assert not Butler.from_config(str(repo)).query_dimension_records("exposure", explain=False)


def test_destinations_in_the_source_universe_pass_the_check(night):
    policy = night.policy()
    ctx = steps.Context(policy)
    assert all(ctx.butler(d) is not None for d in policy.destinations)  # two destinations, same universe
