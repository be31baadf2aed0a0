"""Reconciliation against real components: SQLite Butler repos, the local embargo store, the site's Rucio server.

One synthetic night carries an exposure crashed at every point of the unembargo (between any two steps, and after
every single Rucio call of the registration), plus an incomplete one, an inconsistent one, an uninterrupted reference
and a folder without an exposure record. The reconcile check must name each one's state and first missing step
(ground truth = what the test injected, and the steps' own exposure_status), and repair must bring every
repairable exposure to the same end state as the uninterrupted one, without touching the inconsistent zip.
"""

from __future__ import annotations

import hashlib
import re
import warnings
import zipfile
from datetime import timedelta

import pytest

from facility_data.demo.rubin_synthetic import INSTRUMENT, build_night, fits_bytes, unique_day_obs
from facility_data.rubin import classify, reconcile, repair, sinks, steps, windows

pytestmark = pytest.mark.integration
warnings.filterwarnings("ignore", module="erfa")

DETECTORS = 6
RUCIO_CALLS = ("add_replicas", "add_dataset", "attach_dids", "close", "set_metadata")


class Crash(BaseException):
    """A process dying in the middle of a step (BaseException: no step code catches it)."""


class CrashingRucio:
    """A rucio client that dies before its ``n``-th mutating call."""

    def __init__(self, client, n: int):
        self._client, self.left = client, n

    def __getattr__(self, name):
        fn = getattr(self._client, name)
        if name not in RUCIO_CALLS:
            return fn

        def call(*args, **kwargs):
            if self.left <= 0:
                raise Crash(name)
            self.left -= 1
            return fn(*args, **kwargs)
        return call


def _exposures(policy, ctx, night, now):
    req = windows.ManualRequest(INSTRUMENT, night.day_obs, (), False)
    refs, _ = windows.select_manual(ctx.source, policy, req, now)
    return {r.obs_id: r for r in refs}


def _fingerprint(site, policy, exp) -> dict:
    """The end state of one exposure in every sink, with its obs_id abstracted away."""
    from lsst.daf.butler import Butler

    p = steps.paths(policy, exp)
    client = site.rucio_client()
    scope = policy.rucio.scope
    def norm(name: str) -> str:  # obs_id and the pointing-dependent tract abstracted away
        return re.sub(r"/(Tract\d+|NoTract)/", "/<tract>/", name.replace(exp.obs_id, "<obs>"))

    with zipfile.ZipFile(p.zip) as zf:
        members = sorted(norm(n) for n in zf.namelist())
    out = {"members": members, "yaml": p.yaml.exists()}
    zip_md5 = hashlib.md5(p.zip.read_bytes()).hexdigest()
    for d in policy.destinations:
        b = Butler.from_config(d.uri)
        refs = b.query_datasets("raw", collections="*", instrument=INSTRUMENT, exposure=exp.exposure,
                                find_first=False, explain=False)
        out[f"butler {d.uri[-6:]}"] = (len(refs), sum(b.stored_many(refs).values()),
                                       len(b.query_dimension_records("visit", instrument=INSTRUMENT,
                                                                     visit=exp.exposure, explain=False)))
    for f in (p.zip, p.yaml):
        name = f"{INSTRUMENT}/{exp.day_obs}/{f.name}"
        did = client.get_did(scope, name)
        # (which tracts depends on the pointing; attachment to each is part of the steps' own check)
        parents = sorted({norm(x["name"]) for x in client.list_parent_dids(scope, name)})
        out[norm(f.name)] = {"parents": parents, "meta": client.get_metadata(scope, name, plugin="JSON"),
                             "md5_matches": did["md5"] == (zip_md5 if f == p.zip else
                                                           hashlib.md5(p.yaml.read_bytes()).hexdigest())}
    obs = f"Dataset/{INSTRUMENT}/raw/Obs/{exp.day_obs}/{exp.obs_id}"
    meta = client.get_metadata(scope, obs, plugin="ALL")
    out["obs"] = {"open": meta["is_open"], "arcBackup": meta.get("arcBackup"), "SafeCopies": meta.get("SafeCopies")}
    return out


LOCAL_CRASHES = {  # crash after these local steps -> first missing step
    "nothing": 0, "after gate": 1, "after zip": 2, "after dimensions": 3, "after butler 1": 4, "before rucio": 5}


@pytest.fixture(scope="module")
def crashed(site, tmp_path_factory):
    """A night with one exposure per crash point; returns (night, policy, exposures, expected first missing)."""
    root = tmp_path_factory.mktemp("reconcile")
    day = unique_day_obs()
    n_local = len(LOCAL_CRASHES)
    n = n_local + 1 + 12 + 4  # local crashes, butler 2 records only, Rucio crashes, ref, 2 inconsistent, incomplete
    night = build_night(root, day_obs=day, n_exposures=n, detectors=DETECTORS, destinations=2, incomplete=(n,))
    policy = night.policy(destination_prefix=site.root / "main" / f"reconcile-{day}")
    now = night.ends[night.obs_ids[-1]] + timedelta(hours=100)
    ctx = steps.Context(policy, rucio=site.rucio_client())
    exps = _exposures(policy, ctx, night, now)
    ids = night.obs_ids
    names = steps.step_names(policy)
    expected: dict[str, tuple[str, str | None]] = {}
    reference = ids[-4]
    steps.run_exposure(ctx, exps[reference])
    expected[reference] = (classify.DONE, None)
    for i, upto in enumerate(LOCAL_CRASHES.values()):
        for name in names[:upto]:
            steps.run_step(ctx, exps[ids[i]], name)
        state = classify.NOT_STARTED if upto <= 1 else classify.PARTIAL
        expected[ids[i]] = (state, names[max(upto, 1)])
    # inside the second ingest: dimension records transferred, zip not ingested
    e = exps[ids[n_local]]
    for name in names[:4]:
        steps.run_step(ctx, e, name)
    dest = ctx.butler(policy.destinations[1], writeable=True)
    dest.transfer_dimension_records_from(ctx.source, [r.dataId for r in ctx.refs(e)])
    expected[e.obs_id] = (classify.PARTIAL, names[4])
    # Rucio: a crash before every single mutating call of the registration
    rucio_ids = ids[n_local + 1: n_local + 1 + 12]
    for k, obs_id in enumerate(rucio_ids):
        exp = exps[obs_id]
        for name in names[:-1]:
            steps.run_step(ctx, exp, name)
        crashing = steps.Context(policy, rucio=CrashingRucio(site.rucio_client(), k))
        try:
            steps.run_step(crashing, exp, steps.RUCIO)
            expected[obs_id] = (classify.DONE, None)  # k >= the number of calls: it completed
        except Crash:
            expected[obs_id] = (classify.PARTIAL, steps.RUCIO)
    expected[ids[-1]] = (classify.INCOMPLETE, steps.GATE)
    # inconsistent: a zip whose member differs from its embargo object (same size, one byte flipped)
    bad = exps[ids[-2]]
    steps.run_exposure(ctx, bad)
    p = steps.paths(policy, bad)
    tampered = p.zip.with_suffix(".tmp")
    with zipfile.ZipFile(p.zip) as src, zipfile.ZipFile(tampered, "w") as dst:
        for info in src.infolist():
            data = src.read(info)
            if info.filename.endswith("_R01_S00.fits"):
                data = data[:-1] + bytes([data[-1] ^ 0xFF])
            dst.writestr(info, data)
    tampered.replace(p.zip)
    expected[bad.obs_id] = (classify.INCONSISTENT, steps.ZIP)
    # inconsistent at the source side: an embargo object changed after its zip was made (same size)
    bad_src = exps[ids[-3]]
    steps.run_exposure(ctx, bad_src)
    key = f"{INSTRUMENT}/{day}/{bad_src.obs_id}/{bad_src.obs_id}_R01_S00.fits"
    data = bytearray(ctx.store.read(key))
    data[-1] ^= 0xFF
    ctx.store.put(key, bytes(data))
    expected[bad_src.obs_id] = (classify.INCONSISTENT, steps.ZIP)
    # a folder the summit wrote but the embargo Butler never got an exposure record for
    orphan = f"MC_O_{day}_{900:06d}"
    ctx.store.put(f"{INSTRUMENT}/{day}/{orphan}/{orphan}_R01_S00.fits", b"x" * 80)
    expected[orphan] = (classify.INCOMPLETE, steps.GATE)
    return {"night": night, "policy": policy, "exps": exps, "expected": expected, "now": now,
            "reference": reference, "bad": bad, "bad_src": bad_src}


def _expected_fast(crashed) -> dict:
    expected = dict(crashed["expected"])
    # the rewritten zip keeps its members' sizes but not its own: the fast check sees it against Rucio's bytes;
    # a same-size change of an embargo object is visible only to the deep check
    expected[crashed["bad"].obs_id] = (classify.INCONSISTENT, steps.RUCIO)
    expected[crashed["bad_src"].obs_id] = (classify.DONE, None)
    return expected


def test_fast_check_matches_ground_truth_and_the_steps(site, crashed):
    policy, now = crashed["policy"], crashed["now"]
    ctx = steps.Context(policy, rucio=site.rucio_client(), dry_run=True)
    result = reconcile.check_night(ctx, INSTRUMENT, crashed["night"].day_obs, now=now)
    got = {e.obs_id: (e.state, e.first_missing) for e in result.exposures}
    expected = _expected_fast(crashed)
    assert got == expected
    assert sum(1 for s, _ in expected.values() if s == classify.PARTIAL) >= 10
    # the first missing step agrees with the unembargo steps' own read-only check
    for obs_id, exp in crashed["exps"].items():
        if obs_id in (crashed["bad"].obs_id, crashed["bad_src"].obs_id):
            continue  # the steps' shallow check does not compare sizes with Rucio; the fast check does
        status = steps.exposure_status(steps.Context(policy, rucio=site.rucio_client(), dry_run=True), exp)
        assert status.first_missing == got[obs_id][1], obs_id
    counts = result.counts
    assert counts["total"] == len(expected) and counts["partial"] == sum(
        1 for s, _ in expected.values() if s == classify.PARTIAL)


def test_deep_check_finds_the_inconsistent_zip(site, crashed):
    ctx = steps.Context(crashed["policy"], rucio=site.rucio_client(), dry_run=True)
    result = reconcile.check_night(ctx, INSTRUMENT, crashed["night"].day_obs, now=crashed["now"], deep=True)
    got = {e.obs_id: e for e in result.exposures}
    for which in ("bad", "bad_src"):
        bad = got[crashed[which].obs_id]
        assert bad.state == classify.INCONSISTENT and bad.first_missing == steps.ZIP
        assert any("differs from embargo object" in p for p in bad.problems), bad.problems
    assert {o: (e.state, e.first_missing) for o, e in got.items()} == crashed["expected"]


def test_repair_brings_every_crash_to_the_uninterrupted_end_state(site, crashed, tmp_path):
    policy, now, night = crashed["policy"], crashed["now"], crashed["night"]
    bad_zip = steps.paths(policy, crashed["bad"]).zip
    before = bad_zip.read_bytes()
    request = reconcile.Request(INSTRUMENT, (night.day_obs,), repair=True, dry_run=False, deep=False,
                                prune_embargo="off")
    ctx = steps.Context(policy, rucio=site.rucio_client())
    result = reconcile.run(ctx, request, now=now, reports_dir=tmp_path)
    expected = _expected_fast(crashed)
    repairable = [o for o, (s, _) in expected.items() if s in classify.REPAIRABLE]
    assert sorted(r["obs_id"] for r in result["repaired"]) == sorted(repairable)
    assert result["failed"] == []
    counts = result["counts"][str(night.day_obs)]
    assert counts["done"] == sum(1 for s, _ in expected.values() if s == classify.DONE) + len(repairable)
    assert {u["obs_id"]: u["state"] for u in result["unrepairable"]} == {
        o: s for o, (s, _) in expected.items() if s in classify.UNREPAIRABLE}
    assert bad_zip.read_bytes() == before  # reported, never overwritten
    reference = _fingerprint(site, policy, crashed["exps"][crashed["reference"]])
    assert reference["obs"] == {"open": False, "arcBackup": "SLAC_RAW_DISK_BKUP:need", "SafeCopies": ""}
    for obs_id in repairable:
        assert _fingerprint(site, policy, crashed["exps"][obs_id]) == reference, obs_id
    html = [p for p in result["reports"] if p.endswith(".html")]
    assert len(html) == 1 and crashed["bad"].obs_id in open(html[0]).read()
    text = reconcile.summary(result)
    assert "NEEDS AN OPERATOR" in text and crashed["bad"].obs_id in text


def test_exposure_completed_at_source_after_its_window_is_picked_up(site, tmp_path):
    from lsst.daf.butler import Butler, DatasetRef, FileDataset

    from facility_data.demo.rubin_synthetic import FORMATTER, detector_layout

    night = build_night(tmp_path, day_obs=unique_day_obs(), n_exposures=2, detectors=DETECTORS, incomplete=(2,))
    policy = night.policy(destination_prefix=site.root / "main" / f"late-{night.day_obs}")
    late = sorted(night.incomplete)[0]
    now = night.ends[late] + timedelta(hours=200)  # long past its release window
    ctx = lambda: steps.Context(policy, rucio=site.rucio_client())  # noqa: E731
    first = {e.obs_id: e.state for e in reconcile.check_night(ctx(), INSTRUMENT, night.day_obs, now=now).exposures}
    assert first[late] == classify.INCOMPLETE
    # the last science file arrives (object + dataset), as a late summit transfer would
    det = [d for d in detector_layout(DETECTORS) if d.purpose == "SCIENCE"][-1]
    key = f"{INSTRUMENT}/{night.day_obs}/{late}/{late}_{det.name}.fits"
    night.store.put(key, fits_bytes(late, det, 8640))
    src = Butler.from_config(str(night.source_repo), writeable=True)
    ref = DatasetRef(src.get_dataset_type("raw"), {"instrument": INSTRUMENT, "exposure": night.exposure_ids[late],
                                                   "detector": det.id}, run=f"{INSTRUMENT}/raw/all")
    src.ingest(FileDataset(path=night.store.uri(key), refs=[ref], formatter=FORMATTER), transfer="direct")
    request = reconcile.Request(INSTRUMENT, (night.day_obs,), True, False, False, "off")
    result = reconcile.run(ctx(), request, now=now, reports_dir=tmp_path / "reports")
    assert late in [r["obs_id"] for r in result["repaired"]]
    assert result["counts"][str(night.day_obs)]["done"] == 2


def test_catch_up_by_night_ignores_embargo_length_and_respects_release(site, tmp_path):
    night = build_night(tmp_path, day_obs=unique_day_obs(), n_exposures=3, detectors=3, calibs=(1,))
    policy = night.policy(embargo_hours=720, destination_prefix=site.root / "main" / f"long-{night.day_obs}")
    ctx = steps.Context(policy, rucio=site.rucio_client(), dry_run=True)
    end = max(night.ends.values())
    soon = reconcile.check_night(ctx, INSTRUMENT, night.day_obs, now=end + timedelta(hours=25))
    # the 0 h calib is released (and checked on its own: datasets and folder of that exposure only), 720 h ones not
    assert [(e.obs_id, e.state) for e in soon.exposures] == [(c, classify.NOT_STARTED) for c in sorted(night.calibs)]
    assert soon.counts["still_embargoed"] == 2
    later = reconcile.check_night(ctx, INSTRUMENT, night.day_obs, now=end + timedelta(hours=721))
    assert later.counts["total"] == 3 and later.counts["not_started"] == 3


def test_prune_guard_needs_deep_verification_of_every_sink(site, tmp_path):
    night = build_night(tmp_path, day_obs=unique_day_obs(), n_exposures=2, detectors=3)
    policy = night.policy(destination_prefix=site.root / "main" / f"prune-{night.day_obs}")
    now = max(night.ends.values()) + timedelta(hours=100)
    ctx = steps.Context(policy, rucio=site.rucio_client())
    exps = _exposures(policy, ctx, night, now)
    done, partial = (exps[o] for o in night.obs_ids)
    steps.run_exposure(ctx, done)
    for name in steps.step_names(policy)[:-1]:
        steps.run_step(ctx, partial, name)
    dry = reconcile.Request(INSTRUMENT, (night.day_obs,), repair=False, dry_run=False, deep=False,
                            prune_embargo="dry_run")
    result = reconcile.run(steps.Context(policy, rucio=site.rucio_client()), dry, now=now,
                           reports_dir=tmp_path / "r")
    assert [(p["obs_id"], p["allowed"], p["deleted"]) for p in result["prune"]] == [(done.obs_id, True, 0)]
    assert ctx.store.list_folder(INSTRUMENT, night.day_obs, done.obs_id)
    # the partial exposure is refused by the policy itself (its Rucio sink is not verified)
    refused = repair.prune_exposure(steps.Context(policy, rucio=site.rucio_client()), partial, delete=True)
    assert not refused["allowed"] and "rucio" in refused["reason"] and refused["deleted"] == 0
    assert ctx.store.list_folder(INSTRUMENT, night.day_obs, partial.obs_id)
    delete = reconcile.Request(INSTRUMENT, (night.day_obs,), False, False, False, "delete")
    result = reconcile.run(steps.Context(policy, rucio=site.rucio_client()), delete, now=now,
                           reports_dir=tmp_path / "r")
    pruned = {p["obs_id"]: p for p in result["prune"]}
    assert list(pruned) == [done.obs_id] and pruned[done.obs_id]["deleted"] == pruned[done.obs_id]["objects"] > 0
    assert not ctx.store.list_folder(INSTRUMENT, night.day_obs, done.obs_id)
    after = reconcile.check_night(steps.Context(policy, rucio=site.rucio_client()), INSTRUMENT, night.day_obs,
                                  now=now)
    assert {e.obs_id: e.state for e in after.exposures} == {done.obs_id: classify.PRUNED,
                                                            partial.obs_id: classify.PARTIAL}
    assert steps.paths(policy, done).zip.exists()


def test_demo_breakage_is_found_at_the_right_step_and_repaired(site, tmp_path):
    from facility_data.demo import rubin_breakage
    from facility_data.demo.rubin_synthetic import write_policy

    night = build_night(tmp_path, day_obs=unique_day_obs(), n_exposures=4, detectors=3)
    policy = night.policy(destination_prefix=site.root / "main" / f"demo-{night.day_obs}")
    path = write_policy(policy, tmp_path / "policy.yaml")
    now = max(night.ends.values()) + timedelta(hours=100)
    ctx = steps.Context(policy, rucio=site.rucio_client())
    for exp in _exposures(policy, ctx, night, now).values():
        steps.run_exposure(ctx, exp)
    did = rubin_breakage.break_exposures(site.root, path, night.day_obs, now=now)
    assert len(did) == 3 and [d.split(":")[0] for d in did] == night.obs_ids[:3]
    found = reconcile.check_night(steps.Context(policy, rucio=site.rucio_client()), INSTRUMENT, night.day_obs,
                                  now=now)
    assert [(e.state, e.first_missing) for e in found.exposures] == [
        (classify.PARTIAL, steps.RUCIO), (classify.PARTIAL, steps.butler_step(policy.destinations[0])),
        (classify.PARTIAL, steps.DIMENSIONS), (classify.DONE, None)]
    request = reconcile.Request(INSTRUMENT, (night.day_obs,), True, False, False, "off")
    result = reconcile.run(steps.Context(policy, rucio=site.rucio_client()), request, now=now,
                           reports_dir=tmp_path / "r")
    assert result["found"][str(night.day_obs)]["partial"] == 3
    assert result["counts"][str(night.day_obs)]["done"] == 4
    text = rubin_breakage.summary(result)
    assert "found done 1, partial 3" in text and text.count("repaired MC_O_") == 3


def test_night_listing_from_s3_matches_per_folder_listing(site):
    import uuid

    import boto3

    from facility_data.rubin.storage import S3Store

    client = boto3.client("s3", endpoint_url=site.s3_url, aws_access_key_id="testing",
                          aws_secret_access_key="testing", region_name="us-east-1")
    bucket = f"reconcile-{uuid.uuid4().hex[:8]}"
    client.create_bucket(Bucket=bucket)
    store = S3Store(client, bucket, "rubin-summit")
    day = unique_day_obs()
    for seq in (1, 2):
        for name in ("a.fits", "a.json", "x_expectedSensors.json"):
            store.put(f"{INSTRUMENT}/{day}/MC_O_{day}_{seq:06d}/{name}", b"y" * (seq * 10 + len(name)))
    store.put(f"{INSTRUMENT}/{day + 1}/MC_O_{day + 1}_000001/a.fits", b"other night")
    listed = sinks.list_day_objects(store, INSTRUMENT, day)
    assert listed == {o: store.list_folder(INSTRUMENT, day, o) for o in store.list_day(INSTRUMENT, day)}
    assert sorted(listed) == [f"MC_O_{day}_000001", f"MC_O_{day}_000002"] and all(len(v) == 3 for v in listed.values())
