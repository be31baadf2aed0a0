"""The beamline DAG steps as plain functions: new-scan validation, copy verification, recon requests, ledger."""

from __future__ import annotations

import pytest
from airflow.sdk.exceptions import AirflowFailException

from facility_data.als.beamline import load_beamline
from facility_data.als.ledger import Ledger
from facility_data.als.paths import HDF5_SIGNATURE
from facility_data.als.steps import (
    ConfError,
    CopyMismatch,
    nersc_copy_decision,
    recon_requests,
    record_copy,
    send_to_nersc_refusal,
    validate_new_scan,
)
from facility_data.config import ConfigError
from facility_data.refusal import permanent
from facility_data.safety import SafetyError
from facility_data.transfer import PathError, load_endpoints

FOLDER, NAME = "ALS-11111_user", "20240101_120000_a.h5"
WATCHED = f"/global/raw/{FOLDER}/{NAME}"
CONTENT = HDF5_SIGNATURE + b"scan bytes"  # the smallest "HDF5 file" the signature check accepts


@pytest.fixture
def env(monkeypatch, tmp_path):
    monkeypatch.setenv("FACILITY_SITE", str(tmp_path))
    eps = load_endpoints()
    spot = eps["spot832"].local_path(f"raw/{FOLDER}/{NAME}")
    spot.parent.mkdir(parents=True)
    spot.write_bytes(CONTENT)
    return load_beamline("bl832"), eps, Ledger(tmp_path / "ledger.sqlite"), tmp_path


def test_valid_conf_gives_a_scan_record_with_every_location(env):
    bl, eps, ledger, _ = env
    rec = validate_new_scan(bl, eps, ledger, {"file_path": WATCHED, "is_export_control": False})
    assert rec["relative"] == f"raw/{FOLDER}/{NAME}" and rec["send_to_nersc"] is True
    assert rec["paths"]["spot"] == {"endpoint": "spot832", "raw": f"raw/{FOLDER}/{NAME}"}
    assert rec["paths"]["data"] == {"endpoint": "data832_raw", "raw": f"{FOLDER}/{NAME}"}
    assert rec["paths"]["data_scratch"]["zarr"] == f"{FOLDER}/rec20240101_120000_a.zarr"
    assert ledger.export_controlled("bl832", rec["relative"]) is False


@pytest.mark.parametrize(
    ("conf", "message"),
    [
        ({}, "file_path is required"),
        ({"file_path": WATCHED, "is_export_control": "no"}, "is_export_control must be true or false, got str"),
        ({"file_path": WATCHED, "send_to_nersc": 1}, "send_to_nersc must be true or false, got int"),
        ({"file_path": 7}, "file_path must be a string, got int"),
        ({"file_path": WATCHED, "surprise": True}, r"unknown conf key\(s\) \['surprise'\]"),
        ({"file_path": WATCHED, "is_export_controlled": True}, "unknown conf key.*is_export_controlled"),
        ({"file_path": WATCHED + "\n"}, "trailing whitespace"),
        ({"file_path": f"/global/raw/{FOLDER}/../{FOLDER}/{NAME}"}, "traversal"),
        ({"file_path": f"/global/raw/{FOLDER}/20240101_120000_b.h5"}, "does not exist"),
        ({"file_path": f"/data/raw/{FOLDER}/{NAME}"}, "not under the beamline's raw root"),
    ],
)
def test_bad_conf_is_refused_before_any_write(env, conf, message):
    bl, eps, ledger, _ = env
    with pytest.raises(ConfError, match=message):
        validate_new_scan(bl, eps, ledger, conf)
    assert ledger.events("bl832") == []


def test_a_directory_is_not_a_scan(env):
    bl, eps, ledger, _ = env
    eps["spot832"].local_path(f"raw/{FOLDER}/20240101_120000_d.h5").mkdir()
    with pytest.raises(ConfError, match="is a directory, not an HDF5 file"):
        validate_new_scan(bl, eps, ledger, {"file_path": f"/global/raw/{FOLDER}/20240101_120000_d.h5"})
    assert ledger.events("bl832") == []


def test_record_copy_refuses_a_copy_that_differs(env):
    bl, eps, ledger, _ = env
    rec = validate_new_scan(bl, eps, ledger, {"file_path": WATCHED})
    data = eps["data832_raw"].local_path(f"{FOLDER}/{NAME}")
    data.parent.mkdir(parents=True)
    data.write_bytes(HDF5_SIGNATURE + b"scan bytez")
    with pytest.raises(CopyMismatch, match="checksum at data differs"):
        record_copy(bl, eps, ledger, rec, source="spot", destination="data")
    data.write_bytes(b"scan")
    with pytest.raises(CopyMismatch, match="holds 4 B"):
        record_copy(bl, eps, ledger, rec, source="spot", destination="data")
    assert ledger.copy("bl832", "data", f"{FOLDER}/{NAME}") is None
    data.write_bytes(CONTENT)
    out = record_copy(bl, eps, ledger, rec, source="spot", destination="data")
    assert out["size"] == len(CONTENT) and ledger.copy("bl832", "data", f"{FOLDER}/{NAME}").checksum == out["checksum"]


def test_nersc_copy_decision(env):
    bl, eps, ledger, _ = env
    rec = validate_new_scan(bl, eps, ledger, {"file_path": WATCHED})
    assert nersc_copy_decision(bl, eps, ledger, rec)[0] is True
    assert nersc_copy_decision(bl, eps, ledger, {**rec, "send_to_nersc": False}) == (
        False, f"send_to_nersc is false for {rec['relative']}")
    go, reason = nersc_copy_decision(bl, eps, ledger, {**rec, "export_controlled": True, "send_to_nersc": True})
    assert go is False and "export-controlled" in reason
    # without a content fingerprint the status is not known for sure: refused loudly, not skipped
    with pytest.raises(SafetyError, match="REFUSED copy to nersc.*fingerprint"):
        nersc_copy_decision(bl, eps, ledger, {**rec, "fingerprint": {"size": None, "checksum": None}})


def test_recon_requests(env):
    bl, eps, ledger, _ = env
    on = {"local": True, "nersc": True, "alcf": True}
    data = eps["data832_raw"].local_path(f"{FOLDER}/{NAME}")
    data.parent.mkdir(parents=True)
    data.write_bytes(CONTENT)
    extra = {"file_path": WATCHED, "export_controlled": False}
    assert [r["relative"] for r in recon_requests(bl, eps, ledger, "alcf", event_extras=[extra, extra], conf=None,
                                                  decision_override=on)] == [f"raw/{FOLDER}/{NAME}"] * 2
    assert recon_requests(bl, eps, ledger, "alcf", event_extras=[extra], conf=None, decision_override=None) == []
    with pytest.raises(SafetyError, match="REFUSED nersc"):
        recon_requests(bl, eps, ledger, "nersc", event_extras=[{**extra, "export_controlled": True}], conf=None,
                       decision_override=on)
    # an event without the flag is treated as export-controlled (fail closed)
    with pytest.raises(SafetyError):
        recon_requests(bl, eps, ledger, "alcf", event_extras=[{"file_path": WATCHED}], conf=None, decision_override=on)
    # local stays at ALS: allowed even when export-controlled
    assert recon_requests(bl, eps, ledger, "local", event_extras=[], conf={"file_path": WATCHED,
                          "is_export_control": True}, decision_override=on)[0]["export_controlled"] is True
    with pytest.raises(ConfError, match="no triggering asset event"):
        recon_requests(bl, eps, ledger, "local", event_extras=[], conf={"file_path": None}, decision_override=on)
    with pytest.raises(ConfError, match="traversal"):
        recon_requests(bl, eps, ledger, "local", event_extras=[{"file_path": "/global/raw/../x.h5"}], conf=None,
                       decision_override=on)


def test_nersc_recon_honours_send_to_nersc(env):
    """A scan whose send_to_nersc is false (said by the new-file run's event or the manual conf) is refused for NERSC
    reconstruction before anything moves; not said: the beamline's default. ALCF is not affected."""
    bl, eps, ledger, _ = env
    on = {"local": True, "nersc": True, "alcf": True}
    data = eps["data832_raw"].local_path(f"{FOLDER}/{NAME}")
    data.parent.mkdir(parents=True)
    data.write_bytes(CONTENT)
    extra = {"file_path": WATCHED, "export_controlled": False}

    def nersc(extras, conf=None, beamline=bl):
        return recon_requests(beamline, eps, ledger, "nersc", event_extras=extras, conf=conf, decision_override=on)

    with pytest.raises(SafetyError, match=r"REFUSED nersc reconstruction: send_to_nersc is false for "
                                          rf"raw/{FOLDER}/{NAME} \(the new-file run's asset event\)"):
        nersc([{**extra, "send_to_nersc": False}])
    with pytest.raises(SafetyError, match=r"send_to_nersc is false .*\(conf.send_to_nersc\)"):
        nersc([], {"file_path": WATCHED, "is_export_control": False, "send_to_nersc": False})
    assert len(nersc([{**extra, "send_to_nersc": True}])) == len(nersc([extra])) == 1
    no_nersc = bl.model_copy(update={"send_to_nersc": False})
    with pytest.raises(SafetyError, match=r"send_to_nersc is false .*\(the beamline's default\)"):
        nersc([extra], beamline=no_nersc)
    assert len(nersc([{**extra, "send_to_nersc": True}], beamline=no_nersc)) == 1  # said explicitly: honoured
    assert len(recon_requests(bl, eps, ledger, "alcf", event_extras=[{**extra, "send_to_nersc": False}], conf=None,
                              decision_override=on)) == 1
    with pytest.raises(ConfError, match="send_to_nersc must be true or false, got 'no'"):
        nersc([{**extra, "send_to_nersc": "no"}])
    with pytest.raises(ConfError, match="conf key send_to_nersc must be true or false"):
        nersc([], {"file_path": WATCHED, "send_to_nersc": 0})
    assert send_to_nersc_refusal(bl, "x", None) is None


def test_nersc_recon_honours_the_send_to_nersc_recorded_by_the_new_file_run(env):
    """Neither the event nor the conf says: the new-file run's recorded send_to_nersc decides, then the default."""
    bl, eps, ledger, _ = env
    on = {"local": True, "nersc": True, "alcf": True}
    data = eps["data832_raw"].local_path(f"{FOLDER}/{NAME}")
    data.parent.mkdir(parents=True)
    data.write_bytes(CONTENT)
    validate_new_scan(bl, eps, ledger, {"file_path": WATCHED, "is_export_control": False, "send_to_nersc": False})
    assert ledger.send_to_nersc(bl.id, f"raw/{FOLDER}/{NAME}") is False
    with pytest.raises(SafetyError, match=r"send_to_nersc is false .*\(recorded by the new-file run\)"):
        recon_requests(bl, eps, ledger, "nersc", event_extras=[], decision_override=on,
                       conf={"file_path": WATCHED, "is_export_control": False})
    validate_new_scan(bl, eps, ledger, {"file_path": WATCHED, "is_export_control": False, "send_to_nersc": True})
    assert len(recon_requests(bl, eps, ledger, "nersc", event_extras=[], decision_override=on,
                              conf={"file_path": WATCHED, "is_export_control": False})) == 1


def test_ledger_records_the_latest_send_to_nersc_and_upgrades_old_files(tmp_path):
    import sqlite3

    path = tmp_path / "old.sqlite"
    db = sqlite3.connect(path)  # a ledger written before fingerprints and send_to_nersc were recorded
    db.executescript("CREATE TABLE scans (beamline TEXT NOT NULL, scan TEXT NOT NULL, export_controlled INTEGER "
                     "NOT NULL, file_path TEXT, first_seen TEXT NOT NULL, PRIMARY KEY (beamline, scan));"
                     "INSERT INTO scans VALUES ('bl832', 'raw/P-1_u/a.h5', 0, 'x', '2024-01-01T00:00:00+00:00');")
    db.close()
    ledger = Ledger(path)
    assert ledger.send_to_nersc("bl832", "raw/P-1_u/a.h5") is None
    ledger.record_scan("bl832", "raw/P-1_u/a.h5", export_controlled=False, file_path="x", send_to_nersc=False)
    ledger.record_scan("bl832", "raw/P-1_u/a.h5", export_controlled=False, file_path="x")  # not said: kept
    assert ledger.send_to_nersc("bl832", "raw/P-1_u/a.h5") is False
    ledger.record_scan("bl832", "raw/P-1_u/a.h5", export_controlled=False, file_path="x", send_to_nersc=True)
    assert ledger.send_to_nersc("bl832", "raw/P-1_u/a.h5") is True


def test_ledger_never_relaxes_export_control(tmp_path):
    ledger = Ledger(tmp_path / "l.sqlite")
    scan = "raw/P-1_u/20240101_000000_a.h5"
    assert ledger.export_controlled("bl832", scan) is None
    assert ledger.record_scan("bl832", scan, export_controlled=True, file_path="x") is True
    assert ledger.record_scan("bl832", scan, export_controlled=False, file_path="x") is True
    assert ledger.export_controlled("bl832", scan) is True


def test_event_extras_reads_airflow_triggering_asset_events():
    from datetime import UTC, datetime, timedelta

    from airflow.sdk.execution_time.comms import AssetEventDagRunReferenceResult
    from airflow.sdk.execution_time.context import TriggeringAssetEventsAccessor

    from facility_data.als.steps import event_extras

    now = datetime.now(UTC)

    def event(name, age):
        return AssetEventDagRunReferenceResult(
            asset={"name": "bl832_recon_local_request", "uri": "x-als://bl832/recon/local", "extra": {}},
            extra={"file_path": f"/global/raw/{FOLDER}/{name}", "export_controlled": False},
            source_task_id="announce_local", source_dag_id="bl832_new_file", source_run_id="r",
            source_map_index=-1, source_aliases=[], timestamp=now - timedelta(seconds=age))

    accessor = TriggeringAssetEventsAccessor.build([event("b.h5", 1), event("a.h5", 5)])
    assert [e["file_path"].rsplit("/", 1)[1] for e in event_extras(accessor)] == ["a.h5", "b.h5"]
    assert event_extras(None) == [] and event_extras({}) == []


def test_ledger_finds_scans_by_content_and_upgrades_old_files(tmp_path):
    import sqlite3

    path = tmp_path / "old.sqlite"
    db = sqlite3.connect(path)  # a ledger written before fingerprints existed
    db.execute("CREATE TABLE scans (beamline TEXT NOT NULL, scan TEXT NOT NULL, export_controlled INTEGER NOT NULL, "
               "file_path TEXT, first_seen TEXT NOT NULL, PRIMARY KEY (beamline, scan))")
    db.execute("INSERT INTO scans VALUES ('bl832', 'raw/P-1_u/old.h5', 1, 'x', '2025-01-01')")
    db.commit()
    db.close()
    ledger = Ledger(path)
    assert ledger.export_controlled("bl832", "raw/P-1_u/old.h5") is True
    ledger.record_scan("bl832", "raw/P-1_u/a.h5", export_controlled=True, file_path="x", size=5, checksum="sha256:aa")
    ledger.record_scan("bl733", "raw/P-2_u/b.h5", export_controlled=False, file_path="y", size=5, checksum="sha256:aa")
    assert ledger.same_content(5, "sha256:aa") == {"bl832:raw/P-1_u/a.h5": True, "bl733:raw/P-2_u/b.h5": False}
    assert ledger.same_content(6, "sha256:aa") == {}
    # a later, different fingerprint never replaces the first one (it is kept in the event log)
    ledger.record_scan("bl832", "raw/P-1_u/a.h5", export_controlled=False, file_path="x", size=7, checksum="sha256:bb")
    assert ledger.same_content(5, "sha256:aa")["bl832:raw/P-1_u/a.h5"] is True
    assert ledger.events("bl832")[-1]["checksum"] == "sha256:bb"


# ---- the task boundary for refusals (facility_data.refusal.permanent) --------------------------------
@pytest.mark.parametrize(("exc", "rule"), [(ConfError("conf key x is unknown"), "bad conf"),
                                           (SafetyError("REFUSED copy to nersc: controlled"), "data-safety policy"),
                                           (PathError("path '/etc' must be relative"), "bad path"),
                                           (ConfigError("endpoints.yaml: no endpoint named 'x'"),
                                            "bad configuration")])
def test_a_refusal_becomes_one_error_line_and_an_unchained_fail(caplog, exc, rule):
    with pytest.raises(AirflowFailException) as err, permanent("raw/P-1_u/a.h5"):
        raise exc
    assert str(err.value) == f"{type(exc).__name__}: {exc}"
    assert err.value.__cause__ is None and err.value.__suppress_context__  # no "direct cause"/"During handling"
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert errors == [f"refused raw/P-1_u/a.h5 ({rule}): {type(exc).__name__}: {exc}"]


def test_a_real_error_is_not_a_refusal_and_keeps_its_retries(caplog):
    with pytest.raises(CopyMismatch), permanent("raw/P-1_u/a.h5"):
        raise CopyMismatch("size differs")
    assert not [r for r in caplog.records if r.levelname == "ERROR"]
