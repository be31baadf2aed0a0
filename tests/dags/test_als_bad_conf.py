"""Bad confs for bl832_new_file get a clear error before anything moves (no copy, no ledger row)."""

from __future__ import annotations

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


@pytest.mark.parametrize(
    ("make_path", "message"),
    [
        (lambda p: "/etc/passwd.h5", "not under the beamline's raw root"),
        (lambda p: p.replace("/global/raw/", "/global/raw/../raw/"), "traversal"),
        (lambda p: p.replace("shell.h5", "missing.h5"), "does not exist at the acquisition endpoint"),
    ],
    ids=["outside-raw-root", "traversal", "missing-file"],
)
def test_bad_path_fails_validate_and_moves_nothing(site, caplog, make_path, message):
    good = s.write_scan(site)
    dr = s.dag("bl832_new_file").test(run_conf={"file_path": make_path(good)})
    st = s.states(dr)
    assert str(dr.state) == "failed"
    assert st["validate"] == "failed"
    assert st["copy_spot_to_data"] == "upstream_failed"
    assert message in caplog.text
    _nothing_moved(site)


def test_wrong_type_is_rejected_before_the_run(site):
    from airflow.sdk.exceptions import ParamValidationError

    good = s.write_scan(site)
    with pytest.raises(ParamValidationError, match="is_export_control"):
        s.dag("bl832_new_file").test(run_conf={"file_path": good, "is_export_control": "yes"})
    _nothing_moved(site)
