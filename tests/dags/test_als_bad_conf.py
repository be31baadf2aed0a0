"""Bad confs for bl832_new_file get a clear error before anything moves (no copy, no ledger row).

Two lines of defence: the trigger form's Params (pattern and required fields derived from the beamline's path
rules) refuse a bad path before a run exists; the `validate` task's domain checks (closed conf schema read from
`dag_run.conf`, existence, file kind, HDF5 signature) refuse the rest before the first copy."""

from __future__ import annotations

import os

import _als_support as s
import pytest

pytestmark = pytest.mark.dagtest


@pytest.fixture
def site(airflow_db, tmp_path, monkeypatch):
    root = s.private_site(tmp_path, monkeypatch)
    return root


def _nothing_moved(site):
    for endpoint in ("data832", "nersc832", "alcf832_raw"):
        assert s.tree(s.endpoint_dir(site, endpoint)) == [], endpoint
    assert s.ledger(site).events("bl832") == []


def _spot(site):
    return s.endpoint_dir(site, "spot832") / "raw" / s.FOLDER


@pytest.mark.parametrize(
    "make_path",
    [
        lambda p: "/etc/passwd.h5",
        lambda p: "../../etc/passwd",
        lambda p: p.replace("/global/raw/", "/global/raw/../raw/"),
        lambda p: p + "\n",
        lambda p: p.replace("11111", "١١١١١"),  # non-ASCII digits
        lambda p: p.replace("shell.h5", "shell.txt"),
    ],
    ids=["outside-raw-root", "passwd", "traversal", "trailing-newline", "non-ascii-digits", "not-h5"],
)
def test_the_form_refuses_a_bad_path_before_a_run_exists(site, make_path):
    from airflow.sdk.exceptions import ParamValidationError

    good = s.write_scan(site)
    with pytest.raises(ParamValidationError, match="file_path"):
        s.dag("bl832_new_file").test(run_conf={"file_path": make_path(good)})
    _nothing_moved(site)


def test_file_path_is_required_by_the_form(site):
    from airflow.sdk.exceptions import ParamValidationError

    with pytest.raises(ParamValidationError, match="file_path"):
        s.dag("bl832_new_file").test(run_conf={"is_export_control": False})
    _nothing_moved(site)


def _not_hdf5(site, good):
    (_spot(site) / "20240101_120000_fake.h5").write_bytes(b"GIF89a: a picture, not a scan")
    return good.replace("shell", "fake")


def _directory(site, good):
    (_spot(site) / "20240101_120000_dir.h5").mkdir()
    return good.replace("shell", "dir")


def _fifo(site, good):
    os.mkfifo(_spot(site) / "20240101_120000_fifo.h5")
    return good.replace("shell", "fifo")


def _symlink(site, good):
    (_spot(site) / "20240101_120000_link.h5").symlink_to(_spot(site) / "20240101_120000_shell.h5")
    return good.replace("shell", "link")


def _outside(site, good):
    outside = site / "elsewhere.h5"
    outside.write_bytes((_spot(site) / "20240101_120000_shell.h5").read_bytes())
    (_spot(site) / "20240101_120000_out.h5").symlink_to(outside)
    return good.replace("shell", "out")


@pytest.mark.parametrize(
    ("make_path", "message"),
    [
        (lambda site, p: p.replace("shell.h5", "missing.h5"), "does not exist at the acquisition endpoint"),
        (_not_hdf5, "is not an HDF5 file (no HDF5 signature"),
        (_directory, "is a directory, not an HDF5 file"),
        (_fifo, "is a FIFO (named pipe), not an HDF5 file"),
        (_symlink, "is a symbolic link alias of raw/ALS-11111_synthetic/20240101_120000_shell.h5"),
        (_outside, "outside endpoint spot832"),
    ],
    ids=["missing-file", "not-hdf5", "directory", "fifo", "symlink-alias", "symlink-outside"],
)
def test_bad_source_fails_validate_and_moves_nothing(site, caplog, make_path, message):
    good = s.write_scan(site)
    dr = s.dag("bl832_new_file").test(run_conf={"file_path": make_path(site, good)})
    st = s.states(dr)
    assert str(dr.state) == "failed"
    assert st["validate"] == "failed"
    assert st["copy_spot_to_data"] == "upstream_failed"
    assert message in caplog.text
    assert "ALERT bl832_new_file.validate" in caplog.text
    _nothing_moved(site)


def test_wrong_type_is_rejected_before_the_run(site):
    from airflow.sdk.exceptions import ParamValidationError

    good = s.write_scan(site)
    with pytest.raises(ParamValidationError, match="is_export_control"):
        s.dag("bl832_new_file").test(run_conf={"file_path": good, "is_export_control": "yes"})
    _nothing_moved(site)


@pytest.mark.parametrize("conf", [{"is_export_controlled": True}, {"send_to_NERSC": False}, {"export_control": 1}],
                         ids=["misspelt-export-flag", "wrong-case", "unknown-key"])
def test_unknown_conf_key_fails_validate_and_nothing_leaves(site, caplog, conf):
    """Airflow merges unknown conf keys into params; a misspelt export-control flag must not be ignored."""
    good = s.write_scan(site)
    dr = s.dag("bl832_new_file").test(run_conf={"file_path": good, **conf})
    st = s.states(dr)
    assert str(dr.state) == "failed" and st["validate"] == "failed", st
    assert st["copy_spot_to_data"] == "upstream_failed"
    assert f"unknown conf key(s) ['{next(iter(conf))}']" in caplog.text
    _nothing_moved(site)
