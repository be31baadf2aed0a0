"""The retention sweep deletes only with a verified twin, keeps everything else, and reports every decision."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from facility_data.als.beamline import load_beamline
from facility_data.als.inventory import inspect
from facility_data.als.ledger import Ledger
from facility_data.als.prune import Sweep, write_report
from facility_data.transfer import LocalTransfer, load_endpoints

KEY = "ALS-11111_user/20240101_120000_sample.h5"
SCAN = f"raw/{KEY}"


def deleting(bl, *roles: str, everywhere: bool = False):
    """``bl`` with deletion switched on (``delete: true``) at exactly ``roles``, or at every pruned location."""
    if everywhere:
        roles = tuple(r for r, loc in bl.locations.items() if loc.retention_days is not None)
    return bl.model_copy(update={"locations": {r: loc.model_copy(update={"delete": r in roles})
                                               for r, loc in bl.locations.items()}})


@pytest.fixture
def env(monkeypatch, tmp_path):
    monkeypatch.setenv("FACILITY_SITE", str(tmp_path))
    bl = deleting(load_beamline("bl832"), everywhere=True)
    return bl, load_endpoints(), Ledger(tmp_path / "ledger.sqlite"), tmp_path


def put(env, role: str, key: str, content: bytes | dict, *, record: bool = True) -> Path:
    """Write an item (file, or a directory from a {name: bytes} dict) at a location and record it in the ledger."""
    bl, eps, ledger, _ = env
    loc = bl.location(role)
    ep = eps[loc.endpoint]
    path = ep.local_path(loc.path_of(key))
    if isinstance(content, dict):
        for name, data in content.items():
            (path / name).parent.mkdir(parents=True, exist_ok=True)
            (path / name).write_bytes(data)
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
    if record:
        item = inspect(LocalTransfer(), ep, loc.path_of(key))
        ledger.record_copy(bl.id, role, key, scan=SCAN, endpoint=ep.name, path=loc.path_of(key), size=item.size,
                           checksum=item.checksum, checksum_algorithm="sha256", verified_by="inspect")
    return path


def sweep(env, *, days: float = 40, dry_run: bool = False):
    bl, eps, ledger, _ = env
    return Sweep(bl, eps, ledger, now=datetime.now(UTC) + timedelta(days=days), dry_run=dry_run).run()


def decision(report, location, key=KEY):
    (d,) = [d for d in report.decisions if d.location == location and d.key == key]
    return d


def test_deletes_only_with_a_verified_twin(env):
    env[2].record_scan("bl832", SCAN, export_controlled=False, file_path="/global/" + SCAN)
    spot = put(env, "spot", KEY, b"projection data")
    put(env, "data", KEY, b"projection data")
    report = sweep(env, days=2)
    d = decision(report, "spot")
    assert d.action == "deleted" and "verified copy" in d.reason
    assert not spot.exists()
    assert env[2].copy("bl832", "spot", KEY).state == "deleted"
    # data's check location (nersc) holds nothing: the data832 copy stays even past its own retention.
    report = sweep(env, days=40)
    d = decision(report, "data")
    assert d.action == "kept" and "no copy" in d.reason and "nersc" in d.reason


@pytest.mark.parametrize("twin", [b"projection dat", b"projection daTa"], ids=["size-differs", "checksum-differs"])
def test_a_twin_with_different_size_or_checksum_keeps_the_file(env, twin):
    env[2].record_scan("bl832", SCAN, export_controlled=False, file_path="/global/" + SCAN)
    spot = put(env, "spot", KEY, b"projection data")
    put(env, "data", KEY, twin)
    d = decision(sweep(env, days=2), "spot")
    assert d.action == "kept"
    assert ("size differs" if len(twin) != 15 else "checksum differs") in d.reason
    assert spot.read_bytes() == b"projection data"


def test_dry_run_deletes_nothing_and_stays_faithful(env):
    env[2].record_scan("bl832", SCAN, export_controlled=False, file_path="/global/" + SCAN)
    spot = put(env, "spot", KEY, b"x" * 100)
    data = put(env, "data", KEY, b"x" * 100)
    nersc = put(env, "nersc", KEY, b"x" * 100)
    report = sweep(env, days=40, dry_run=True)
    assert decision(report, "spot").action == "would_delete"
    assert decision(report, "data").action == "would_delete"
    assert spot.exists() and data.exists() and nersc.exists()
    assert env[2].copy("bl832", "spot", KEY).state == "present"
    # The real sweep agrees: spot goes first (twin at data), then data (twin at nersc); nersc is never pruned.
    report = sweep(env, days=40)
    assert [d.action for d in report.decisions] == ["deleted", "deleted"]
    assert not spot.exists() and not data.exists() and nersc.exists()


def test_dry_run_treats_its_own_would_be_deletions_as_gone(env):
    """alcf checks data; if data would be deleted in this sweep, alcf must not count on it."""
    env[2].record_scan("bl832", SCAN, export_controlled=False, file_path="/global/" + SCAN)
    for role in ("data", "nersc", "alcf"):
        put(env, role, KEY, b"abc")
    report = sweep(env, days=40, dry_run=True)
    assert decision(report, "data").action == "would_delete"
    alcf = decision(report, "alcf")
    assert alcf.action == "kept" and "no copy" in alcf.reason


def test_export_controlled_raw_is_kept_without_a_verified_als_copy(env):
    env[2].record_scan("bl832", SCAN, export_controlled=True, file_path="/global/" + SCAN)
    spot = put(env, "spot", KEY, b"secret")
    data = put(env, "data", KEY, b"secret")
    put(env, "nersc", KEY, b"secret")  # should never exist; even if it does, it does not count
    report = sweep(env, days=40)
    d = decision(report, "data")
    assert d.action == "kept" and "must stay at als" in d.reason and d.export_controlled is True
    assert data.exists()
    # spot832's twin is data832, at ALS, verified: spot832 may go.
    assert decision(report, "spot").action == "deleted" and not spot.exists()


def test_export_controlled_spot_kept_when_als_copy_differs(env):
    env[2].record_scan("bl832", SCAN, export_controlled=True, file_path="/global/" + SCAN)
    spot = put(env, "spot", KEY, b"secret")
    put(env, "data", KEY, b"secreT")
    assert decision(sweep(env, days=2), "spot").action == "kept"
    assert spot.exists()


def test_unknown_scan_and_young_files_are_kept(env):
    unknown = put(env, "spot", "ALS-2_u/20240101_000000_other.h5", b"zz", record=False)
    put(env, "data", "ALS-2_u/20240101_000000_other.h5", b"zz", record=False)
    env[2].record_scan("bl832", SCAN, export_controlled=False, file_path="/global/" + SCAN)
    young = put(env, "spot", KEY, b"a")
    put(env, "data", KEY, b"a")
    report = sweep(env, days=0.5)
    assert "arrival time unknown" in decision(report, "spot", "ALS-2_u/20240101_000000_other.h5").reason
    assert "younger than the 1-day retention" in decision(report, "spot").reason
    assert unknown.exists() and young.exists() and report.count("deleted") == 0


def test_reconstruction_directories_need_an_identical_tree(env):
    env[2].record_scan("bl832", SCAN, export_controlled=False, file_path="/global/" + SCAN)
    rec = "ALS-11111_user/rec20240101_120000_sample"
    tree = {"a.tiff": b"1" * 10, "sub/b.tiff": b"2" * 10}
    put(env, "alcf_scratch", rec, tree)
    put(env, "data_scratch", rec, {**tree, "sub/b.tiff": b"3" * 10})
    report = sweep(env, days=2)
    d = decision(report, "alcf_scratch", rec)
    assert d.action == "kept" and "checksum differs" in d.reason
    put(env, "data_scratch", rec, tree)
    report = sweep(env, days=2)
    assert decision(report, "alcf_scratch", rec).action == "deleted"
    assert not env[1]["alcf832_scratch"].local_path(rec).exists()


def test_ledger_checksum_is_used_only_while_the_live_size_matches(env):
    """A backend that cannot checksum (like a Globus listing) falls back to the ledger, guarded by live size."""
    bl, eps, ledger, _ = env
    ledger.record_scan("bl832", SCAN, export_controlled=False, file_path="/global/" + SCAN)
    put(env, "spot", KEY, b"payload")
    data = put(env, "data", KEY, b"payload")

    class NoChecksums(LocalTransfer):
        def stat(self, endpoint, path):
            st = super().stat(endpoint, path)
            return None if st is None else type(st)(path=st.path, is_dir=st.is_dir, size=st.size, checksum=None)

    def run():
        return Sweep(bl, eps, ledger, now=datetime.now(UTC) + timedelta(days=2), dry_run=True,
                     backend=lambda ep: NoChecksums()).run()

    assert decision(run(), "spot").action == "would_delete"
    data.write_bytes(b"payload, then changed")
    d = decision(run(), "spot")
    assert d.action == "kept" and "unknown" in d.reason


def test_report_is_written_as_json_and_text(env):
    bl, eps, ledger, root = env
    ledger.record_scan("bl832", SCAN, export_controlled=False, file_path="/global/" + SCAN)
    put(env, "spot", KEY, b"q")
    put(env, "data", KEY, b"q")
    report = write_report(sweep(env, days=2, dry_run=True), root / "reports")
    doc = json.loads(Path(report.json_path).read_text())
    assert doc["dry_run"] is True and doc["counts"]["would_delete"] == 1
    assert doc["decisions"][0]["key"] == KEY
    text = Path(report.text_path).read_text()
    assert "DRY RUN" in text and f"WOULD_DELETE  spot:{KEY}" in text
    assert report.json_path.endswith("-dry-run.json")


def test_a_failing_delete_is_reported_and_others_continue(env):
    bl, eps, ledger, _ = env
    ledger.record_scan("bl832", SCAN, export_controlled=False, file_path="/global/" + SCAN)
    put(env, "spot", KEY, b"q")
    put(env, "data", KEY, b"q")

    class Broken(LocalTransfer):
        def delete(self, endpoint, path, **kw):
            raise PermissionError("PERMISSION_DENIED")

    report = Sweep(bl, eps, ledger, now=datetime.now(UTC) + timedelta(days=2), dry_run=False,
                   backend=lambda ep: Broken()).run()
    d = decision(report, "spot")
    assert d.action == "error" and "PERMISSION_DENIED" in d.reason
    assert ledger.copy("bl832", "spot", KEY).state == "present"


def test_a_stray_symlink_is_reported_and_does_not_stop_the_location(env, tmp_path):
    """One dangling symlink used to make the whole location unlistable: skipped, nothing pruned, run green."""
    bl, eps, ledger, _ = env
    ledger.record_scan("bl832", SCAN, export_controlled=False, file_path="/global/" + SCAN)
    spot = put(env, "spot", KEY, b"q")
    put(env, "data", KEY, b"q")
    folder = spot.parent
    (folder / "20240101_000000_dangling.h5").symlink_to(tmp_path / "nowhere.h5")
    outside = tmp_path / "outside.h5"
    outside.write_bytes(b"q")  # same bytes as a twin would have: a followed link would look deletable
    (folder / "20240101_000000_alias.h5").symlink_to(outside)
    put(env, "data", "ALS-11111_user/20240101_000000_alias.h5", b"q", record=False)
    (folder.parent / "ALS-3_linked").symlink_to(folder, target_is_directory=True)
    report = sweep(env, days=2)
    assert decision(report, "spot").action == "deleted" and not spot.exists()
    links = {d.key: d for d in report.decisions if d.action == "anomaly"}
    assert set(links) == {"ALS-11111_user/20240101_000000_dangling.h5", "ALS-11111_user/20240101_000000_alias.h5",
                          "ALS-3_linked"}
    assert all("symlink" in d.reason and "not followed" in d.reason for d in links.values())
    assert os.path.lexists(folder / "20240101_000000_dangling.h5") and (folder / "20240101_000000_alias.h5").exists()
    assert outside.read_bytes() == b"q" and (folder.parent / "ALS-3_linked").is_symlink()
    assert len(report.problems()) == 3 and "symlink" in report.problems()[0]


def test_a_symlink_inside_a_reconstruction_keeps_it(env, tmp_path):
    bl, eps, ledger, _ = env
    ledger.record_scan("bl832", SCAN, export_controlled=False, file_path="/global/" + SCAN)
    rec = "ALS-11111_user/rec20240101_120000_sample"
    tree = {"a.tiff": b"1" * 10}
    root = put(env, "alcf_scratch", rec, tree)
    put(env, "data_scratch", rec, {**tree, "b.tiff": b"2"})
    (tmp_path / "b.tiff").write_bytes(b"2")
    (root / "b.tiff").symlink_to(tmp_path / "b.tiff")  # the tree now "matches" its twin only through the link
    d = decision(sweep(env, days=2), "alcf_scratch", rec)
    assert d.action == "anomaly", d.reason
    assert "symlink" in d.reason and "b.tiff" in d.reason
    assert (root / "b.tiff").is_symlink() and (tmp_path / "b.tiff").exists()


def test_a_location_that_cannot_be_listed_or_reached_is_a_problem(env):
    bl, eps, ledger, _ = env
    ledger.record_scan("bl832", SCAN, export_controlled=False, file_path="/global/" + SCAN)
    put(env, "spot", KEY, b"q")
    put(env, "data", KEY, b"q")
    spot_root = eps["spot832"].local_path("raw")
    eps["data832_scratch"].local_path("").mkdir(parents=True)
    no_alcf = {k: v for k, v in eps.items() if k != "alcf832_raw"}

    class Unlistable(LocalTransfer):
        def list(self, endpoint, path=""):
            if endpoint.name == "data832_scratch":
                raise PermissionError("PERMISSION_DENIED")
            return super().list(endpoint, path)

    report = Sweep(bl, no_alcf, ledger, now=datetime.now(UTC) + timedelta(days=2), dry_run=False,
                   backend=lambda ep: Unlistable()).run()
    assert report.skipped == ["location alcf: endpoint 'alcf832_raw' is not configured",
                              "location data_scratch: cannot list data832_scratch:/: PermissionError: "
                              "PERMISSION_DENIED"]
    assert decision(report, "spot").action == "deleted"  # the other locations were processed
    assert report.problems() == report.skipped and spot_root.is_dir()


def test_a_twin_that_is_a_symlink_to_the_item_itself_does_not_count(env):
    """data832's "copy" is a link to the spot832 file: deleting spot832 would leave no copy at all."""
    bl, eps, ledger, _ = env
    ledger.record_scan("bl832", SCAN, export_controlled=False, file_path="/global/" + SCAN)
    spot = put(env, "spot", KEY, b"only copy")
    twin = eps["data832_raw"].local_path(KEY)
    twin.parent.mkdir(parents=True)
    twin.symlink_to(spot)
    d = decision(sweep(env, days=2), "spot")
    assert d.action == "anomaly" and "data: ALS-11111_user/20240101_120000_sample.h5 is a symlink" in d.reason
    assert spot.read_bytes() == b"only copy" and twin.is_symlink()


def test_delete_true_needs_a_retention():
    from facility_data.als.beamline import Beamline

    doc = load_beamline("bl832").model_dump()
    doc["locations"]["nersc"]["delete"] = True
    with pytest.raises(ValueError, match="location 'nersc' has delete: true but no retention_days"):
        Beamline.model_validate(doc)
    doc["locations"]["nersc"]["delete"] = "yes please"
    with pytest.raises(ValueError, match="delete"):
        Beamline.model_validate(doc)


FOLDER = "ALS-11111_user"
NAMES = [f"20240101_00000{i}_s.h5" for i in range(4)]


@settings(max_examples=60, deadline=None)
@given(items=st.lists(st.tuples(st.sampled_from(NAMES), st.sampled_from(["spot", "data"]),
                                st.sampled_from([b"a", b"b"]), st.booleans()), max_size=8),
       delete=st.sets(st.sampled_from(["spot", "data"])), dry_run=st.booleans())
@example(items=[(NAMES[0], "spot", b"a", False), (NAMES[0], "data", b"a", False)], delete=set(), dry_run=False)
def test_property_links_are_never_touched_and_only_enabled_locations_lose_verified_items(items, delete, dry_run):
    """Random files and links (links to real files elsewhere) at spot832 and data832, random delete switches: a
    link is never removed or followed, a location without delete loses nothing, and whatever is deleted still has
    an identical twin at its check location."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp, pytest.MonkeyPatch.context() as mp:
        root = Path(tmp)
        mp.setenv("FACILITY_SITE", str(root))
        bl, eps, ledger = deleting(load_beamline("bl832"), *delete), load_endpoints(), Ledger(root / "l.sqlite")
        env = (bl, eps, ledger, root)
        outside = root / "outside"
        outside.mkdir()
        placed = {}
        for name, role, content, link in items:
            key = f"{FOLDER}/{name}"
            scan = f"raw/{key}"
            if (role, name) in placed:
                continue
            ledger.record_scan("bl832", scan, export_controlled=False, file_path="/global/" + scan)
            if link:
                target = outside / f"{role}-{name}"
                target.write_bytes(content)
                path = eps[bl.location(role).endpoint].local_path(bl.location(role).path_of(key))
                path.parent.mkdir(parents=True, exist_ok=True)
                path.symlink_to(target)
            else:
                put(env, role, key, content)
            placed[role, name] = (content, link)
        before = {p: p.read_bytes() for p in outside.iterdir()}
        report = Sweep(bl, eps, ledger, now=datetime.now(UTC) + timedelta(days=40), dry_run=dry_run).run()
        assert {p: p.read_bytes() for p in outside.iterdir()} == before
        for (role, name), (content, link) in placed.items():
            loc = bl.location(role)
            path = eps[loc.endpoint].local_path("") / loc.path_of(f"{FOLDER}/{name}")  # never resolved
            if link:
                assert path.is_symlink()
                assert decision(report, role, f"{FOLDER}/{name}").action == "anomaly"
            elif not path.exists():
                assert role in delete and not dry_run
                twin_loc = bl.location(loc.check[0])
                twin = eps[twin_loc.endpoint].local_path(twin_loc.path_of(f"{FOLDER}/{name}"))
                assert role == "spot" and not twin.is_symlink() and twin.read_bytes() == content
        assert report.count("deleted") == 0 or not dry_run
