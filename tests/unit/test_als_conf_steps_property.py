"""Property tests of the manual-conf steps with real files and a real ledger (fast, so many examples): random confs
never let an export-controlled scan (by name, alias or content) pass the export-control rule, and a refused conf
writes nothing. The DAG-level twin is tests/dags/test_als_conf_property.py."""

from __future__ import annotations

import os
from collections import Counter

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from facility_data.als.beamline import load_beamline
from facility_data.als.ledger import Ledger
from facility_data.als.paths import HDF5_SIGNATURE
from facility_data.als.steps import ConfError, nersc_copy_decision, recon_requests, validate_new_scan
from facility_data.safety import SafetyError
from facility_data.transfer import load_endpoints

FOLDER = "ALS-11111_user"
CONTROLLED, FREE = HDF5_SIGNATURE + b"controlled scan", HDF5_SIGNATURE + b"free scan"
ON = {"local": True, "nersc": True, "alcf": True}
COUNTS: Counter = Counter()


@pytest.fixture
def env(monkeypatch, tmp_path):
    monkeypatch.setenv("FACILITY_SITE", str(tmp_path))
    eps, bl = load_endpoints(), load_beamline("bl832")
    ledger = Ledger(tmp_path / "ledger.sqlite")
    for ep, sub in (("spot832", "raw/"), ("data832_raw", "")):
        root = eps[ep].local_path("")
        folder = root / f"{sub}{FOLDER}"
        folder.mkdir(parents=True)
        (folder / "20240101_120000_ctrl.h5").write_bytes(CONTROLLED)
        (folder / "20240101_130000_free.h5").write_bytes(FREE)
        other = root / f"{sub}ALS-33333_other"
        other.mkdir()
        (other / "20240202_080000_renamed.h5").write_bytes(CONTROLLED)
        (root / f"{sub}ALS-22222_alias").symlink_to(folder, target_is_directory=True)
        (folder / "20240101_140000_link.h5").symlink_to(folder / "20240101_120000_ctrl.h5")
        (tmp_path / "outside.h5").write_bytes(CONTROLLED)
        (folder / "20240101_140000_out.h5").symlink_to(tmp_path / "outside.h5")
        (folder / "20240101_140000_fake.h5").write_bytes(b"no signature")
        (folder / "20240101_140000_dir.h5").mkdir()
        os.mkfifo(folder / "20240101_140000_fifo.h5")
    validate_new_scan(bl, eps, ledger, {"file_path": f"/global/raw/{FOLDER}/20240101_120000_ctrl.h5",
                                        "is_export_control": True})
    return bl, eps, ledger


PATHS = [f"/global/raw/{FOLDER}/20240101_120000_ctrl.h5", f"raw/{FOLDER}/20240101_120000_ctrl.h5",
         "/global/raw/ALS-22222_alias/20240101_120000_ctrl.h5", "/global/raw/ALS-33333_other/20240202_080000_renamed.h5",
         f"/global/raw/{FOLDER}/20240101_140000_link.h5", f"/global/raw/{FOLDER}/20240101_140000_out.h5",
         f"/global/raw/{FOLDER}/20240101_140000_fake.h5", f"/global/raw/{FOLDER}/20240101_140000_dir.h5",
         f"/global/raw/{FOLDER}/20240101_140000_fifo.h5", f"/global/raw/{FOLDER}/20240101_150000_missing.h5",
         f"/global/raw/{FOLDER}/20240101_130000_free.h5", "../../etc/passwd", f"/global/raw/{FOLDER}/x.h5\n",
         "/global/raw/ALS-١١_u/20240101_120000_a.h5", "", " ", "raw/ALS-1_u/20240101_120000_a.h5\x00"]
VALUES = st.one_of(st.none(), st.booleans(), st.integers(-1, 2), st.text(max_size=4), st.sampled_from(PATHS),
                   st.lists(st.booleans(), max_size=1))
KEYS = st.sampled_from(["file_path", "is_export_control", "send_to_nersc", "is_export_controlled", "File_path",
                        "export_control", "", "file_path "])
CONFS = st.one_of(st.dictionaries(KEYS, VALUES, max_size=4),
                  st.fixed_dictionaries({"file_path": st.sampled_from(PATHS)},
                                        optional={"is_export_control": st.sampled_from([None, True, False])}))


def _refused(fn, ledger, bl, *args, **kwargs):
    before = ledger.events(bl.id)
    try:
        return fn(*args, **kwargs), None
    except (ConfError, SafetyError) as exc:
        assert _clear(str(exc), args[-1] if "conf" not in kwargs else kwargs["conf"]), exc
        assert ledger.events(bl.id) == before, "a refused conf wrote to the ledger"
        COUNTS["refused with a clear message"] += 1
        return None, exc


def _clear(message: str, conf) -> bool:
    """Names the unknown keys, or the field, the scan or the export-control reason."""
    unknown = [k for k in conf if k not in ("file_path", "is_export_control", "send_to_nersc")]
    if unknown:
        return all(repr(k) in message for k in unknown)
    return any(w in message for w in ("file_path", "is_export_control", "send_to_nersc", "scan", "export-control",
                                      "alias"))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(conf=CONFS, target=st.sampled_from(["nersc", "alcf"]))
@example(conf={"file_path": PATHS[10], "is_export_control": False}, target="nersc")  # the one that may go
def test_property_recon_confs_pass_only_free_known_scans(env, conf, target):
    bl, eps, ledger = env
    scans, exc = _refused(recon_requests, ledger, bl, bl, eps, ledger, target, event_extras=[], conf=conf,
                          decision_override=ON)
    COUNTS["recon tried"] += 1
    if exc is not None:
        COUNTS["recon refused"] += 1
        return
    COUNTS["recon allowed"] += 1
    assert conf == {"file_path": PATHS[10], "is_export_control": False}, conf  # the one free, declared scan
    assert [s["relative"] for s in scans] == [PATHS[10].removeprefix("/global/")]


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(conf=CONFS)
def test_property_new_file_confs_never_free_a_controlled_scan(env, conf):
    bl, eps, ledger = env
    record, exc = _refused(validate_new_scan, ledger, bl, bl, eps, ledger, conf)
    COUNTS["new_file tried"] += 1
    if exc is not None:
        COUNTS["new_file refused"] += 1
        return
    go, _ = nersc_copy_decision(bl, eps, ledger, record)
    if record["relative"] != PATHS[10].removeprefix("/global/"):  # every other real scan has controlled bytes
        assert record["export_controlled"] is True and go is False, (conf, record)
        COUNTS["new_file accepted, stays at ALS"] += 1
    else:
        COUNTS["new_file accepted, free"] += 1


def test_counts():
    """Printed for the notes (run with -s); the properties above already asserted each case."""
    print(f"\nstep-level counts: {dict(COUNTS)}")
