"""The unembargo steps against the real local services: Rucio server on PostgreSQL, S3 API server, SQLite Butlers.

Every test uses its own day_obs and destination directory, so tests sharing the site's Rucio server do not collide.
"""

from __future__ import annotations

import json
import threading
import uuid
import warnings
import zipfile
from datetime import timedelta

import pytest

from facility_data import retry
from facility_data.demo.rubin_synthetic import build_night, unique_day_obs
from facility_data.rubin import rucioreg, steps, windows
from facility_data.rubin.policy import Storage
from facility_data.rubin.storage import S3Store
from facility_data.rubin.zipbuild import file_hashes

pytestmark = pytest.mark.integration
warnings.filterwarnings("ignore", module="erfa")


@pytest.fixture
def conns(site, monkeypatch):
    """Airflow connections the default Context opens: Rucio (RucioHook) and the embargo S3 store (S3Hook)."""
    monkeypatch.setenv("AIRFLOW_CONN_RUCIO_DEFAULT", json.dumps({
        "conn_type": "rucio", "host": site.rucio_url, "login": site.rucio_account,
        "password": site.rucio_password}))
    monkeypatch.setenv("AIRFLOW_CONN_AWS_EMBARGO_TEST", json.dumps({
        "conn_type": "aws", "login": "testing", "password": "testing",
        "extra": {"endpoint_url": site.s3_url, "region_name": "us-east-1"}}))
    monkeypatch.setattr(retry, "BASE_DELAY", 0.01)


def s3_client(site):
    import boto3

    return boto3.client("s3", endpoint_url=site.s3_url, aws_access_key_id="testing",
                        aws_secret_access_key="testing", region_name="us-east-1")


@pytest.fixture
def s3_night(site, conns, tmp_path):
    bucket = f"rubin-summit-{uuid.uuid4().hex[:8]}"
    s3_client(site).create_bucket(Bucket=bucket)
    store = S3Store(s3_client(site), bucket)
    night = build_night(tmp_path, day_obs=unique_day_obs(), n_exposures=4, detectors=12, destinations=2,
                        store=store, incomplete=(2,), without_guider=(3,), calibs=(4,))
    policy = night.policy(storage=Storage(kind="s3", root=f"s3://{bucket}", aws_conn_id="aws_embargo_test"),
                          destination_prefix=site.root / "main" / f"test-{uuid.uuid4().hex[:8]}")
    return night, policy


@pytest.fixture
def local_night(site, conns, tmp_path):
    night = build_night(tmp_path, day_obs=unique_day_obs(), n_exposures=3, detectors=6, without_guider=(3,))
    return night, night.policy(destination_prefix=site.root / "main" / f"test-{uuid.uuid4().hex[:8]}")


def released(night, policy):
    ctx = steps.Context(policy)
    req = windows.parse_manual(policy, {"instrument": "LSSTCam", "day_obs": str(night.day_obs)})
    refs, problems = windows.select_manual(ctx.source, policy, req, night.ends[night.obs_ids[-1]] + timedelta(days=5))
    assert problems == []
    return {r.obs_id: r for r in refs}


def rucio_snapshot(client, policy, exp):
    """The exposure's Rucio state with its obs_id/day_obs replaced, comparable across exposures."""
    p = steps.paths(policy, exp)
    _, obs = rucioreg.did_names(exp.instrument, exp.day_obs, exp.obs_id, [])

    def norm(s):
        return s.replace(exp.obs_id, "OBS").replace(str(exp.day_obs), "DAY")

    snap = {"obs_open": client.get_did("raw", obs)["open"],
            "obs_content": sorted(norm(c["name"]) for c in client.list_content("raw", obs)),
            "obs_meta": {k: v for k, v in client.get_metadata("raw", obs, plugin="ALL").items()
                         if k in ("arcBackup", "SafeCopies")}}
    for f in (p.zip, p.yaml):
        name = f"{exp.instrument}/{exp.day_obs}/{f.name}"
        did = client.get_did("raw", name)
        h = file_hashes(f)
        snap[norm(name)] = {
            "hashes_match": (did["bytes"], did["md5"], did["adler32"]) == (h.bytes, h.md5, h.adler32),
            "meta": client.get_metadata("raw", name, plugin="ALL").get("rubin_butler"),
            "parents": sorted(norm(x["name"]) for x in client.list_parent_dids("raw", name)),
            "pfns": [norm(pfn) for r in client.list_replicas([{"scope": "raw", "name": name}])
                     for pfn in r["rses"].get("SLAC_RAW_DISK", [])]}
    return snap


def test_night_from_s3_unembargoed_end_to_end(site, s3_night):
    from lsst.daf.butler import Butler

    night, policy = s3_night
    client = site.rucio_client()
    exps = released(night, policy)
    ctx = steps.Context(policy)  # store through S3Hook, Rucio through RucioHook: the DAG's code path
    for obs_id, exp in exps.items():
        if obs_id in night.incomplete:
            with pytest.raises(steps.IncompleteExposure):
                steps.run_exposure(ctx, exp)
            continue
        outcomes = steps.run_exposure(ctx, exp)
        assert [o.state for o in outcomes][1:] == ["done"] * (len(outcomes) - 1)

    for obs_id, exp in exps.items():
        status = steps.exposure_status(steps.Context(policy), exp, deep=True)
        if obs_id in night.incomplete:
            assert status.first_missing == steps.GATE and not steps.paths(policy, exp).zip.exists()
            continue
        assert status.complete, status.details
        p = steps.paths(policy, exp)
        objs = night.store.list_folder("LSSTCam", night.day_obs, obs_id)
        with zipfile.ZipFile(p.zip) as zf:
            for o in objs:
                assert zf.read(o.name) == night.store.read(o.key), o.key
        for repo in night.destination_repos:
            b = Butler.from_config(str(repo))
            refs = b.query_datasets("raw", collections="LSSTCam/raw/all", instrument="LSSTCam",
                                    exposure=exp.exposure, explain=False)
            assert refs and all(b.get(r)["size"] > 0 for r in refs)
        snap = rucio_snapshot(client, policy, exp)
        assert snap["obs_open"] is False
        assert snap["obs_content"] == ["LSSTCam/DAY/OBS.zip", "LSSTCam/DAY/OBS_dimensions.yaml"]
        assert snap["obs_meta"] == {"arcBackup": "SLAC_RAW_DISK_BKUP:need", "SafeCopies": ""}
        assert snap["LSSTCam/DAY/OBS.zip"]["meta"] == "zip_file"
        assert snap["LSSTCam/DAY/OBS_dimensions.yaml"]["meta"] == "dim_file"
        for f in ("LSSTCam/DAY/OBS.zip", "LSSTCam/DAY/OBS_dimensions.yaml"):
            assert snap[f]["hashes_match"]
            assert snap[f]["pfns"] and snap[f]["pfns"][0].startswith(f"file://{site.root}/main/")
            tract_sets = [x for x in snap[f]["parents"] if "/Obs/" not in x]
            if obs_id in night.calibs:  # a bias has no visit: NoTract
                assert tract_sets == ["Dataset/LSSTCam/raw/NoTract/DAY"]
            else:
                assert tract_sets == ["Dataset/LSSTCam/raw/Tract100/DAY"]
    no_guider = exps[next(iter(night.without_guider))]
    with zipfile.ZipFile(steps.paths(policy, no_guider).zip) as zf:
        assert not [n for n in zf.namelist() if "_SG" in n]


class CrashAfter:
    """A Rucio client that dies after ``n`` state-changing calls (a pod killed mid-registration)."""

    MUTATING = {"add_replicas", "add_dataset", "attach_dids", "close", "set_metadata"}

    def __init__(self, client, n):
        self.client, self.n, self.calls = client, n, 0

    def __getattr__(self, name):
        fn = getattr(self.client, name)
        if name not in self.MUTATING:
            return fn

        def call(*a, **kw):
            if self.calls >= self.n:
                raise SystemExit(f"crash before {name}")
            self.calls += 1
            return fn(*a, **kw)
        return call


def test_crash_during_rucio_registration_then_rerun_converges(site, local_night):
    night, policy = local_night
    client = site.rucio_client()
    exps = list(released(night, policy).values())
    reference = exps[0]
    steps.run_exposure(steps.Context(policy), reference)
    expected = rucio_snapshot(client, policy, reference)
    # registration makes 7 state changes here (2 replicas, 2 datasets created, 4 attachments ...); crash after 1..7
    for n, exp in zip((1, 4, 7), exps[1:] + [None], strict=False):
        if exp is None:
            break
        ctx = steps.Context(policy, rucio=CrashAfter(site.rucio_client(), n))
        with pytest.raises(SystemExit):
            steps.run_exposure(ctx, exp)
        status = steps.exposure_status(steps.Context(policy), exp)
        assert status.first_missing == steps.RUCIO
        outcomes = steps.run_exposure(steps.Context(policy), exp)  # the rerun
        assert outcomes[-1].state == "done" and [o.state for o in outcomes[:-1]] == ["verified"] * 4
        assert rucio_snapshot(client, policy, exp) == expected


def test_rerun_after_completion_changes_nothing(site, local_night):
    night, policy = local_night
    exp = next(iter(released(night, policy).values()))
    steps.run_exposure(steps.Context(policy), exp)
    zip_before = steps.paths(policy, exp).zip.stat()
    outcomes = steps.run_exposure(steps.Context(policy), exp)
    assert [o.state for o in outcomes] == ["verified"] * 5
    after = steps.paths(policy, exp).zip.stat()
    assert (after.st_ino, after.st_mtime_ns) == (zip_before.st_ino, zip_before.st_mtime_ns)


def test_the_rucio_step_operator_takes_the_zip_hashes_from_the_zip_result(site, local_night, tmp_path, monkeypatch):
    """RubinStepOperator(step="rucio", zip_result=...) as the DAG chains it: the zip task's hashes reach the step,
    so the zip is not read again; without them it is read (once) and the registration is the same."""
    from facility_data.demo.rubin_synthetic import write_policy
    from facility_data.operators.embargo import RubinStepOperator

    night, policy = local_night
    policy_path = str(write_policy(policy, tmp_path / "policy.yaml"))
    first, second = list(released(night, policy).values())[:2]
    reads = []
    monkeypatch.setattr(steps, "file_hashes", lambda path: reads.append(path.name) or file_hashes(path))

    def run(step, exp, **kw):
        return RubinStepOperator(task_id=step, step=step, exposure=exp.to_dict(), policy_path=policy_path,
                                 **kw).execute({"params": {"dry_run": False}})

    for exp, with_result in ((first, True), (second, False)):
        for step in ("gate", "dimensions", "butler"):
            if step == "dimensions":
                zipped = run("zip", exp)
            run(step, exp)
        reads.clear()
        out = run("rucio", exp, **({"zip_result": zipped} if with_result else {}))
        assert out["step"] == "rucio" and out["state"] == "done" and out["obs_id"] == exp.obs_id
        zip_name = steps.paths(policy, exp).zip.name
        assert reads.count(zip_name) == (0 if with_result else 1), reads
    client = site.rucio_client()
    snaps = [rucio_snapshot(client, policy, exp) for exp in (first, second)]
    assert snaps[0] == snaps[1] and all(v["hashes_match"] for k, v in snaps[0].items() if k.startswith("LSSTCam/"))


def test_two_overlapping_runs_do_each_exposure_once(site, local_night):
    night, policy = local_night
    exps = list(released(night, policy).values())
    errors: list[BaseException] = []
    results: list[list] = []

    def run():
        ctx = steps.Context(policy)
        try:
            results.append([steps.run_exposure(ctx, e) for e in exps])
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # a run may lose a race on a SQLite lock; Airflow retries it. Retry here the same way, then compare.
    for _ in errors:
        run()
    client = site.rucio_client()
    for e in exps:
        p = steps.paths(policy, e)
        assert not list(p.zip.parent.glob(".*.tmp"))
        assert steps.exposure_status(steps.Context(policy), e, deep=True).complete
        _, obs = rucioreg.did_names(e.instrument, e.day_obs, e.obs_id, [])
        assert len(list(client.list_content("raw", obs))) == 2
    # per exposure, the zip was built ("done") by exactly one of the runs
    zip_done = [o.state for r in results for outs in r for o in outs if o.step == steps.ZIP]
    assert zip_done.count("done") <= len(exps)


class Flaky:
    """Wraps a client; ``method`` raises ``exc()`` for its first ``fail`` calls (forever if fail is None)."""

    def __init__(self, client, method, exc, fail):
        self.client, self.method, self.exc, self.fail, self.calls = client, method, exc, fail, 0

    def __getattr__(self, name):
        fn = getattr(self.client, name)
        if name != self.method:
            return fn

        def call(*a, **kw):
            self.calls += 1
            if self.fail is None or self.calls <= self.fail:
                raise self.exc()
            return fn(*a, **kw)
        return call


def test_transient_s3_faults_are_retried_and_bounded(site, s3_night):
    from botocore.exceptions import EndpointConnectionError

    night, policy = s3_night
    exp = released(night, policy)[night.obs_ids[0]]

    def endpoint_down():
        return EndpointConnectionError(endpoint_url=site.s3_url)

    flaky = Flaky(s3_client(site), "get_object", endpoint_down, fail=2)
    ctx = steps.Context(policy, store=S3Store(flaky, night.store.bucket))
    assert steps.run_step(ctx, exp, steps.ZIP).state == "done"
    assert flaky.calls > 2

    down = Flaky(s3_client(site), "list_objects_v2", endpoint_down, fail=None)
    ctx = steps.Context(policy, store=S3Store(down, night.store.bucket))
    with pytest.raises(EndpointConnectionError):
        steps.run_step(ctx, exp, steps.GATE)
    assert down.calls == retry.ATTEMPTS  # bounded: no endless loop


def test_transient_rucio_faults_are_retried_and_bounded(site, local_night):
    from rucio.common.exception import DatabaseException, DataIdentifierNotFound

    night, policy = local_night
    exps = list(released(night, policy).values())
    flaky = Flaky(site.rucio_client(), "add_replicas", lambda: DatabaseException("deadlock"), fail=2)
    assert steps.run_exposure(steps.Context(policy, rucio=flaky), exps[0])[-1].state == "done"
    assert flaky.calls == 3 + 1  # zip: 2 failures then success; yaml: first try

    down = Flaky(site.rucio_client(), "add_replicas", lambda: DatabaseException("db down"), fail=None)
    with pytest.raises(DatabaseException):
        steps.run_exposure(steps.Context(policy, rucio=down), exps[1])
    assert down.calls == retry.ATTEMPTS
    # a logical answer is not retried
    lookups = Flaky(site.rucio_client(), "get_did", lambda: DataIdentifierNotFound("gone"), fail=None)
    ctx = steps.Context(policy, rucio=lookups)
    steps.check_rucio(ctx, exps[1], deep=False)
    assert lookups.calls == 3  # zip, yaml, Obs: once each
    assert steps.run_exposure(steps.Context(policy), exps[1])[-1].state == "done"


def test_rucio_hook_builds_a_client_from_the_connection(site, conns, monkeypatch):
    from facility_data.hooks.rucio import RucioHook

    ok, msg = RucioHook().test_connection()
    assert ok and "root" in msg
    monkeypatch.setenv("AIRFLOW_CONN_RUCIO_BAD", json.dumps({
        "conn_type": "rucio", "host": site.rucio_url, "login": "root", "password": "wrong"}))
    ok, msg = RucioHook(rucio_conn_id="rucio_bad").test_connection()
    assert not ok and "wrong" not in msg


def test_s3_gate_compares_sizes_with_the_butler_and_judges_quiet_from_last_modified(site, s3_night):
    """On S3 as on a directory: a truncated upload is inconsistent_at_source, and the no-manifest fallback reads the
    objects' LastModified (an exposure without manifest waits for the quiet period, then is released)."""
    from datetime import UTC, datetime

    from facility_data.demo.rubin_synthetic import CALIB_WHERE
    from facility_data.rubin.policy import PolicyRow, WithoutManifest

    night, policy = s3_night
    exps = released(night, policy)
    truncated, no_manifest = night.obs_ids[0], night.obs_ids[2]
    objs = night.store.list_folder("LSSTCam", night.day_obs, truncated)
    now = datetime.now(UTC)
    assert all(o.mtime is not None and abs(now.timestamp() - o.mtime) < 3600 for o in objs)
    fits = next(o for o in objs if o.name.endswith(".fits"))
    night.store.put(fits.key, night.store.read(fits.key)[:-2880])
    night.store.client.delete_object(Bucket=night.store.bucket,
                                     Key=f"LSSTCam/{night.day_obs}/{no_manifest}/{steps.manifest_name(no_manifest)}")

    ok, detail = steps.check_gate(steps.Context(policy), exps[truncated])
    assert not ok and detail["state"] == "inconsistent_at_source" and fits.name in detail["reason"]
    with pytest.raises(steps.InconsistentAtSource):
        steps.run_zip(steps.Context(policy), exps[truncated])
    assert not steps.paths(policy, exps[truncated]).zip.exists()

    assert steps.check_gate(steps.Context(policy), exps[no_manifest]) == (False, {
        "state": "incomplete_at_source", "reason": "no manifest", "missing": [steps.manifest_name(no_manifest)]})
    fallback = WithoutManifest(release_after_quiet_hours=1)
    lenient = policy.model_copy(update={"rows": [
        PolicyRow(instrument="LSSTCam", where=CALIB_WHERE, embargo_hours=0, without_manifest=fallback),
        PolicyRow(instrument="LSSTCam", embargo_hours=80, without_manifest=fallback)]})
    ok, detail = steps.check_gate(steps.Context(lenient), exps[no_manifest])
    assert not ok and "less than 1 h ago" in detail["reason"]
    later = steps.Context(lenient, clock=lambda: now + timedelta(hours=2))
    ok, detail = steps.check_gate(later, exps[no_manifest])
    assert ok and "without_manifest fallback" in detail["fallback"]
