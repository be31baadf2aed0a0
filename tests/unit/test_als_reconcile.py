"""The ALS reconcile as plain functions, on real files at the local endpoints: each injected loss (lost trigger, a
chain stopped after each step, a corrupted copy) is found, classified and repaired with the chain's own steps, or
reported so the run fails; export control is decided exactly as in the new-file DAG; bad Params touch nothing."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest

from facility_data.als.beamline import load_beamline
from facility_data.als.ledger import Ledger
from facility_data.als.reconcile import Reconcile, Request, check_request, reports_dir, write_report
from facility_data.als.steps import ConfError, record_copy, validate_new_scan
from facility_data.demo import als_synthetic as synthetic
from facility_data.transfer import LocalTransfer, load_endpoints

FOLDER = "ALS-11111_synthetic"
DAY = date(2024, 1, 1)
ALL_DAYS = Request(DAY, DAY, dry_run=False, repair=True)
NO_RECON = '{"local": false, "nersc": false, "alcf": false}'
LATER = timedelta(hours=3)  # past the 120-minute settle time: the chains set up here are not in flight


@pytest.fixture
def env(monkeypatch, tmp_path):
    monkeypatch.setenv("FACILITY_SITE", str(tmp_path))
    return load_beamline("bl832"), load_endpoints(), Ledger(tmp_path / "als" / "ledger.sqlite")


def path(env, role: str, name: str = "20240101_120000_shell") -> Path:
    bl, eps, _ = env
    loc = bl.location(role)
    return eps[loc.endpoint].local_path(loc.path_of(f"{FOLDER}/{name}.h5"))


def acquire(env, name: str = "20240101_120000_shell", *, seed: int = 3) -> str:
    """A new scan on spot832, as the detector writes it; returns the watcher path."""
    synthetic.write_scan(path(env, "spot", name), n_angles=31, size=32, n_slices=2, seed=seed)
    return f"/global/raw/{FOLDER}/{name}.h5"


def chain(env, watcher_path: str, *, until: str, export_controlled: bool = False, **conf) -> dict:
    """The new-file DAG's steps up to and including ``until`` (validate, spot_to_data, data_to_nersc)."""
    bl, eps, ledger = env
    rec = validate_new_scan(bl, eps, ledger, {"file_path": watcher_path, "is_export_control": export_controlled,
                                              **conf})
    for step, src, dst in (("validate", None, None), ("spot_to_data", "spot", "data"),
                           ("data_to_nersc", "data", "nersc")):
        if src is not None:
            LocalTransfer().transfer(eps[bl.location(src).endpoint], rec["paths"][src]["raw"],
                                     eps[bl.location(dst).endpoint], rec["paths"][dst]["raw"],
                                     export_controlled=export_controlled)
            record_copy(bl, eps, ledger, rec, source=src, destination=dst)
        if step == until:
            return rec
    raise AssertionError(until)


def run(env, request: Request = ALL_DAYS, decisions: str | None = NO_RECON):
    bl, eps, ledger = env
    return Reconcile(bl, eps, ledger, request, decision_override=decisions, now=datetime.now(UTC) + LATER).run()


def only(report):
    assert len(report.scans) == 1, report.scans
    return report.scans[0]


def test_lost_trigger_is_copied_to_data832_but_never_off_site_with_an_unknown_status(env):
    """Nobody ever declared the scan's export-control status: on site it is repaired, off site it is refused and
    the scan stays partial (the run fails) until someone runs bl832_new_file for it."""
    acquire(env)
    report = run(env, Request(DAY, DAY, dry_run=False, repair=False))
    st = only(report)
    assert (st.state, st.step) == ("not_started", "copy_spot_to_data")
    assert not path(env, "data").exists()

    st = only(run(env))
    assert st.repaired == ["copy_spot_to_data"]
    assert path(env, "data").read_bytes() == path(env, "spot").read_bytes()
    assert env[2].copy("bl832", "data", f"{FOLDER}/20240101_120000_shell.h5").state == "present"
    assert (st.state, st.step, st.repairable) == ("partial", "copy_data_to_nersc", False)
    assert "bl832_new_file" in st.reason and "is_export_control" in st.reason
    assert not path(env, "nersc").exists()


@pytest.mark.parametrize("until", [None, "validate", "spot_to_data"])
def test_a_chain_that_may_still_be_running_is_left_alone(env, until):
    """Within the settle time (a fresh source file, or a recent ledger event) the new-file DAG may still be at
    work: the reconcile lists the scan as in flight, does not race it, and does not alert."""
    watcher_path = acquire(env)
    if until:
        chain(env, watcher_path, until=until)
    events = len(env[2].events("bl832"))
    bl, eps, ledger = env
    report = Reconcile(bl, eps, ledger, ALL_DAYS, decision_override=NO_RECON).run()
    assert report.scans == [] and len(report.in_flight) == 1 and not report.problems()
    assert len(env[2].events("bl832")) == events
    assert not path(env, "nersc").exists()


def test_stopped_after_validation_is_repaired_to_done(env):
    chain(env, acquire(env), until="validate")
    before = only(run(env, Request(DAY, DAY, dry_run=False, repair=False)))
    assert (before.state, before.step) == ("partial", "copy_spot_to_data")
    st = only(run(env))
    assert st.repaired == ["copy_spot_to_data", "copy_data_to_nersc"]
    assert st.state == "done", st.reason
    assert path(env, "nersc").read_bytes() == path(env, "spot").read_bytes()
    assert env[2].copy("bl832", "nersc", f"{FOLDER}/20240101_120000_shell.h5").state == "present"


def test_stopped_after_the_data832_copy_gets_its_nersc_copy(env):
    chain(env, acquire(env), until="spot_to_data")
    st = only(run(env))
    assert st.repaired == ["copy_data_to_nersc"] and st.state == "done"
    assert path(env, "nersc").read_bytes() == path(env, "data").read_bytes()


def test_a_scan_whose_new_file_run_said_send_to_nersc_false_never_gets_a_nersc_copy(env):
    chain(env, acquire(env), until="spot_to_data", send_to_nersc=False)
    st = only(run(env))
    assert st.state == "done" and st.repaired == [], st.reason
    assert not path(env, "nersc").exists()


def test_a_complete_chain_is_done_and_untouched(env):
    chain(env, acquire(env), until="data_to_nersc")
    events = len(env[2].events("bl832"))
    st = only(run(env))
    assert (st.state, st.repaired) == ("done", [])
    assert st.unchecked == ["scicat_ingest"]  # no SciCat given: said, never implied done
    assert len(env[2].events("bl832")) == events


API = "http://scicat.test/api/v3"
PID = "20.500.12269/reconcile-1"


def scicat(rsps):
    """Canned SciCat answers for a scan it does not hold yet (the chain's ingest failed): the dataset is created."""
    quoted = PID.replace("/", "%2F")
    rsps.post(f"{API}/auth/login", json={"access_token": "tok", "userId": "ingestor"})
    rsps.get(f"{API}/Datasets", json=[])
    created = rsps.post(f"{API}/Datasets", json={"pid": PID})
    rsps.get(f"{API}/Datasets/{quoted}/origdatablocks", json=[])
    rsps.post(f"{API}/Datasets/{quoted}/origdatablocks", json={"id": "odb"})
    rsps.get(f"{API}/Datasets/{quoted}/attachments", json=[])
    rsps.post(f"{API}/Datasets/{quoted}/attachments", json={"id": "att"})
    return created


def run_with_scicat(env, request: Request = ALL_DAYS):
    from facility_data.als.reconcile import scicat_ingester
    from facility_data.hooks.scicat import SciCatClient

    bl, eps, ledger = env
    client = SciCatClient(API, "ingestor", "canned-password")
    return Reconcile(bl, eps, ledger, request, decision_override=NO_RECON, ingest=scicat_ingester(bl, eps, client),
                     now=datetime.now(UTC) + LATER).run()


def test_a_failed_scicat_ingest_is_retried_with_the_chain_s_idempotent_ingest(env):
    import responses

    chain(env, acquire(env), until="data_to_nersc")
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        created = scicat(rsps)
        st = only(run_with_scicat(env))
    assert (st.state, st.scicat, st.unchecked) == ("done", PID, [])
    assert len(created.calls) == 1
    sent = json.loads(created.calls[0].request.body)
    assert sent["datasetName"] == "20240101_120000_shell"


def test_a_scicat_ingest_that_fails_again_leaves_the_scan_partial(env, caplog):
    import responses

    chain(env, acquire(env), until="data_to_nersc")
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        rsps.post(f"{API}/auth/login", status=401, json={"error": "Unauthorized"})
        report = run_with_scicat(env)
    st = only(report)
    assert (st.state, st.step, st.scicat) == ("partial", "scicat_ingest", None)
    assert "401" in st.reason and report.problems()
    assert "canned-password" not in st.reason + caplog.text


def test_a_dry_run_never_asks_scicat(env):
    import responses

    chain(env, acquire(env), until="data_to_nersc")
    with responses.RequestsMock() as rsps:  # any request would fail the test
        st = only(run_with_scicat(env, Request(DAY, DAY, dry_run=True, repair=True)))
        assert not rsps.calls
    assert (st.state, st.unchecked) == ("done", ["scicat_ingest"])


def test_spot_pruned_after_verification_is_still_done(env):
    chain(env, acquire(env), until="data_to_nersc")
    path(env, "spot").unlink()
    env[2].mark_deleted("bl832", "spot", f"{FOLDER}/20240101_120000_shell.h5", reason="test prune")
    assert only(run(env)).state == "done"


def test_a_corrupted_copy_is_inconsistent_and_never_propagated(env):
    chain(env, acquire(env), until="spot_to_data")
    data = path(env, "data")
    raw = bytearray(data.read_bytes())
    raw[-1] ^= 0xFF  # same size, other bytes
    data.write_bytes(bytes(raw))
    st = only(run(env))
    assert st.state == "inconsistent" and "data" in st.reason and st.repaired == []
    assert not path(env, "nersc").exists()


def test_a_lost_copy_the_ledger_says_is_present_is_inconsistent(env):
    chain(env, acquire(env), until="data_to_nersc")
    path(env, "nersc").unlink()
    st = only(run(env))
    assert st.state == "inconsistent" and "nersc" in st.reason
    assert not path(env, "nersc").exists()


def test_export_controlled_scan_is_held_at_als(env):
    chain(env, acquire(env), until="spot_to_data", export_controlled=True)
    st = only(run(env))
    assert st.state == "export_controlled_held" and st.export_controlled is True
    assert not path(env, "nersc").exists()


def test_renamed_copy_of_an_export_controlled_scan_is_held_not_not_started(env):
    """The same bytes under another name with no trigger: the ledger knows them by content, so they stay."""
    chain(env, acquire(env), until="spot_to_data", export_controlled=True)
    other = path(env, "spot", "20240101_130000_copy")
    other.write_bytes(path(env, "spot").read_bytes())
    states = {s.key.rsplit("/", 1)[1]: s for s in run(env).scans}
    copy = states["20240101_130000_copy.h5"]
    assert copy.export_controlled is True and copy.repaired == ["copy_spot_to_data"]
    assert copy.state == "export_controlled_held"
    assert not path(env, "nersc", "20240101_130000_copy").exists()


def test_export_controlled_data_found_at_nersc_is_an_error(env):
    chain(env, acquire(env), until="spot_to_data", export_controlled=True)
    nersc = path(env, "nersc")
    nersc.parent.mkdir(parents=True)
    nersc.write_bytes(path(env, "data").read_bytes())
    st = only(run(env))
    assert st.state == "error" and "EXPORT-CONTROLLED" in st.reason


def test_dry_run_copies_and_records_nothing(env):
    chain(env, acquire(env), until="validate")
    events = len(env[2].events("bl832"))
    st = only(run(env, Request(DAY, DAY, dry_run=True, repair=True)))
    assert st.state == "partial" and st.repaired == ["copy_spot_to_data (dry run: would copy)"]
    assert not path(env, "data").exists() and len(env[2].events("bl832")) == events


def test_a_missing_reconstruction_is_re_announced_but_never_done(env):
    from facility_data.als.reconcile import announcements

    chain(env, acquire(env), until="data_to_nersc")
    report = run(env, decisions=None)  # bl832.yaml enables the local reconstruction
    st = only(report)
    assert (st.state, st.step, st.announce, st.repaired) == ("partial", "reconstruction", ["local"],
                                                             ["announce_local"])
    assert report.problems()  # announced is not reconstructed
    (extra,) = announcements(env[0], report)["local"]
    assert extra["file_path"] == f"/global/raw/{FOLDER}/20240101_120000_shell.h5" and not extra["export_controlled"]

    bl, eps, _ = env
    scratch = eps["data832_scratch"].local_path(f"{FOLDER}/rec20240101_120000_shell")
    for d in (scratch, scratch.with_name(scratch.name + ".zarr")):
        d.mkdir(parents=True)
        (d / "0").write_bytes(b"x")
    assert only(run(env, decisions=None)).state == "done"


@pytest.mark.parametrize("export_controlled", [True, None], ids=["export-controlled", "status-unknown"])
def test_a_reconstruction_off_site_is_announced_only_as_the_chain_would(env, export_controlled):
    """NERSC reconstruction enabled: an export-controlled scan, or one of unknown status (a lost trigger), is
    announced to the local target only."""
    if export_controlled:
        chain(env, acquire(env), until="spot_to_data", export_controlled=True)
    else:
        acquire(env)
    st = only(run(env, decisions='{"local": true, "nersc": true}'))
    assert "announce_nersc" not in st.repaired
    assert st.announce == (["local"] if export_controlled else [])


def test_a_symlink_is_an_error_never_followed(env):
    chain(env, acquire(env), until="data_to_nersc")
    link = path(env, "spot", "20240101_140000_link")
    link.symlink_to(path(env, "spot"))
    states = {s.key.rsplit("/", 1)[1]: s for s in run(env).scans}
    assert states["20240101_140000_link.h5"].state == "error"
    assert "symlink" in states["20240101_140000_link.h5"].reason
    assert not path(env, "data", "20240101_140000_link").exists()


def test_a_symlinked_folder_is_reported_never_followed(env, tmp_path):
    elsewhere = tmp_path / "elsewhere" / "20240101_150000_hidden.h5"
    elsewhere.parent.mkdir()
    synthetic.write_scan(elsewhere, n_angles=31, size=32, n_slices=2, seed=5)
    link = path(env, "spot").parent.parent / "ALS-22222_linked"
    link.parent.mkdir(parents=True)
    link.symlink_to(elsewhere.parent, target_is_directory=True)
    report = run(env)
    (st,) = [x for x in report.scans if x.key == "ALS-22222_linked"]
    assert st.state == "error" and "symlink" in st.reason and report.problems()
    assert not (path(env, "data").parent.parent / "ALS-22222_linked").exists()


def test_only_the_date_range_is_reconciled(env):
    acquire(env, "20240102_120000_next")
    acquire(env)
    report = run(env, Request(DAY + timedelta(days=1), DAY + timedelta(days=1), dry_run=False, repair=False))
    assert [s.key for s in report.scans] == [f"{FOLDER}/20240102_120000_next.h5"]


def test_one_report_per_day_in_its_own_directory(env):
    chain(env, acquire(env), until="data_to_nersc")
    bl = env[0]
    report = write_report(run(env, Request(DAY, DAY + timedelta(days=1), dry_run=False, repair=True)),
                          reports_dir(bl))
    assert reports_dir(bl).name == "bl832" and reports_dir(bl).parent.name == "als_reconcile"
    jsons = sorted(p for p in report.files if p.endswith(".json"))
    assert [Path(p).name[:8] for p in jsons] == ["20240101", "20240102"]
    first, second = (json.loads(Path(p).read_text()) for p in jsons)
    assert first["counts"]["done"] == 1 and second["scans"] == []
    text = Path(jsons[0].removesuffix(".json") + ".txt").read_text()
    assert f"DONE                   raw/{FOLDER}/20240101_120000_shell.h5" in text
    assert not report.problems()


def test_a_chart_beside_the_report_of_each_day_with_scans_and_none_for_an_empty_day(env):
    from PIL import Image

    chain(env, acquire(env), until="data_to_nersc")  # 2024-01-01: done
    acquire(env, "20240103_120000_lost")  # 2024-01-03: a lost trigger, not repaired (repair off); 01-02: no scan
    bl = env[0]
    report = write_report(run(env, Request(DAY, DAY + timedelta(days=2), dry_run=False, repair=False)),
                          reports_dir(bl))
    pngs = sorted(reports_dir(bl).glob("*.png"))
    assert [p.name[:16] for p in pngs] == ["states_20240101_", "states_20240103_"]
    assert sorted(str(p) for p in pngs) == sorted(p for p in report.files if p.endswith(".png"))
    stamp = datetime.fromisoformat(report.started).strftime("%Y%m%dT%H%M%S.%fZ")
    assert pngs[0].name == f"states_20240101_{stamp}.png"  # the stamp of the day's report beside it
    days = {d["day"]: d for d in (json.loads(Path(p).read_text()) for p in report.files if p.endswith(".json"))}
    assert days["2024-01-01"]["chart"] == pngs[0].name and days["2024-01-03"]["chart"] == pngs[1].name
    assert days["2024-01-02"]["chart"] is None and days["2024-01-02"]["scans"] == []  # its report, but no chart
    done, lost = ({px[:3] for px in Image.open(p).convert("RGB").getdata()} for p in pngs)
    assert (0x2E, 0x7D, 0x32) in done and (0x90, 0xA4, 0xAE) not in done  # done, no not_started
    assert (0x90, 0xA4, 0xAE) in lost and (0x2E, 0x7D, 0x32) not in lost
    assert not [p for p in reports_dir(bl).iterdir() if p.name.startswith(".")]  # no temporary file left


def test_a_dry_run_s_chart_is_named_like_its_report(env):
    acquire(env)
    bl = env[0]
    report = write_report(run(env, Request(DAY, DAY, dry_run=True, repair=True)), reports_dir(bl))
    (png,) = [Path(p) for p in report.files if p.endswith(".png")]
    assert png.name.startswith("states_20240101_") and png.name.endswith("-dry-run.png") and png.is_file()
    assert Path(next(p for p in report.files if p.endswith(".json"))).name.removesuffix(".json") == \
        png.name.removeprefix("states_").removesuffix(".png")


@pytest.mark.parametrize("conf, field", [
    ({"dry-run": True}, "dry-run"),
    ({"first_day": "2024-1-1"}, "first_day"),
    ({"last_day": "2024-01-01\n"}, "last_day"),
    ({"last_day": "٢٠٢٤-٠١-٠١"}, "last_day"),
    ({"last_day": "2024-02-30"}, "last_day"),
    ({"last_day": "2999-01-01"}, "last_day"),
    ({"first_day": "2024-01-02", "last_day": "2024-01-01"}, "first_day"),
    ({"first_day": "2020-01-01", "last_day": "2024-01-01"}, "first_day"),
    ({"dry_run": "false"}, "dry_run"),
    ({"repair": 1}, "repair"),
])
def test_bad_params_are_refused_naming_the_field(env, conf, field):
    with pytest.raises(ConfError, match=field):
        check_request(env[0], conf, today=date(2024, 6, 1))


def test_default_range_is_the_lookback_ending_today(env):
    req = check_request(env[0], {}, today=date(2024, 6, 10))
    assert (req.first_day, req.last_day, req.dry_run, req.repair) == (date(2024, 6, 4), date(2024, 6, 10), False,
                                                                      True)


def test_report_retention_ages_out_old_reconcile_reports_never_prune_audits(env):
    import os
    import time

    bl = env[0]
    old = time.time() - 100 * 86400  # past als_reconcile's 90 days, well within prune's 730
    stale, audit = reports_dir(bl) / "20231001_old.json", bl.reports_path() / "prune-20231001.json"
    for p in (stale, audit):
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text("{}")
        os.utime(p, (old, old))
    write_report(run(env), reports_dir(bl))
    assert not stale.exists() and audit.exists()


def test_any_date_text_is_a_valid_request_or_a_conf_error_naming_the_field(env):
    from hypothesis import given, settings
    from hypothesis import strategies as hst

    today = date(2024, 6, 1)

    @settings(max_examples=150, deadline=None)
    @given(hst.one_of(hst.text(max_size=12), hst.dates().map(date.isoformat),
                      hst.dates().map(lambda d: d.isoformat() + "\n")))
    def check(value):
        try:
            req = check_request(env[0], {"last_day": value}, today=today)
        except ConfError as exc:
            assert "last_day" in str(exc) or "first_day" in str(exc)
            return
        assert value.isascii() and len(value) == 10 and req.last_day == date.fromisoformat(value) <= today
        assert (req.last_day - req.first_day).days == env[0].reconcile.lookback_days - 1

    check()
