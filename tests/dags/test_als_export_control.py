"""Export control: an export-controlled scan never produces a transfer or a job outside ALS, whatever the
decision settings say; a reconstruction DAG asked to take one off site refuses loudly and moves nothing."""

from __future__ import annotations

import json

import _als_support as s
import pytest

pytestmark = pytest.mark.dagtest
OFF_SITE = ("nersc832", "nersc832_alsdev_scratch", "nersc832_alsdev_pscratch_scratch", "alcf832_raw",
            "alcf832_scratch")


@pytest.fixture
def site(airflow_db, tmp_path, monkeypatch):
    root = s.private_site(tmp_path, monkeypatch)
    # every target switched on: export control must win over the configuration
    monkeypatch.setenv("AIRFLOW_VAR_BL832_DECISION_SETTINGS",
                       json.dumps({"local": True, "nersc": True, "alcf": True}))
    return root


def _nothing_off_site(site):
    for endpoint in OFF_SITE:
        assert s.tree(s.endpoint_dir(site, endpoint)) == [], endpoint


def test_export_controlled_scan_stays_at_als(site, monkeypatch, caplog):
    nersc = s.FakeNERSC().install(monkeypatch)
    s.compute_connection(monkeypatch)
    before = {t: len(s.asset_events(f"x-als://bl832/recon/{t}")) for t in ("local", "nersc", "alcf")}
    watcher_path = s.write_scan(site)

    dr = s.dag("bl832_new_file").test(run_conf={"file_path": watcher_path, "is_export_control": True,
                                                "send_to_nersc": True})
    st = s.states(dr)
    assert str(dr.state) == "success", st
    assert st["copy_spot_to_data"] == "success"
    assert st["copy_data_to_nersc"] == st["verify_nersc_copy"] == "skipped"
    assert st["announce_local"] == "success"
    assert st["announce_nersc"] == st["announce_alcf"] == "skipped"
    assert "export-controlled and may not leave" in caplog.text
    after = {t: len(s.asset_events(f"x-als://bl832/recon/{t}")) for t in ("local", "nersc", "alcf")}
    assert after == {"local": before["local"] + 1, "nersc": before["nersc"], "alcf": before["alcf"]}
    assert s.ledger(site).export_controlled("bl832", watcher_path.removeprefix("/global/")) is True
    _nothing_off_site(site)

    # Asked directly (a misrouted event or a manual run), NERSC and ALCF refuse before any transfer or job,
    # even when the request itself does not say "export-controlled": the ledger remembers.
    for target in ("nersc", "alcf"):
        for claimed in (True, False):
            caplog.clear()
            dr = s.dag(f"bl832_recon_{target}").test(run_conf={"file_path": watcher_path,
                                                              "is_export_control": claimed})
            st = s.states(dr)
            assert str(dr.state) == "failed"
            assert st["collect"] == "failed"
            assert all(v in ("upstream_failed", "removed") for k, v in st.items() if k != "collect"), st
            assert "REFUSED" in caplog.text and "export-controlled" in caplog.text
    assert nersc.scripts == []  # no Slurm job was ever submitted
    _nothing_off_site(site)



# ---- identity is the data, not the name ---------------------------------------------------------------------
def _controlled_scan_through_new_file(site) -> str:
    watcher_path = s.write_scan(site)
    dr = s.dag("bl832_new_file").test(run_conf={"file_path": watcher_path, "is_export_control": True})
    assert str(dr.state) == "success"
    return watcher_path


def _refused(site, nersc, caplog, conf: dict, reason: str, *, safety: bool = True):
    """Both off-site targets fail `collect` with ``reason`` (and an alert); no job, nothing off site."""
    for target in ("nersc", "alcf"):
        caplog.clear()
        dr = s.dag(f"bl832_recon_{target}").test(run_conf=conf)
        st = s.states(dr)
        assert str(dr.state) == "failed" and st["collect"] == "failed", (target, st)
        assert all(v in ("upstream_failed", "removed") for k, v in st.items() if k != "collect"), st
        assert reason in caplog.text and ("REFUSED" in caplog.text or not safety), caplog.text[-2000:]
        assert f"ALERT bl832_recon_{target}.collect" in caplog.text
    assert nersc.scripts == []
    _nothing_off_site(site)


def test_symlinked_alias_folder_of_a_controlled_scan_is_refused(site, monkeypatch, caplog):
    nersc = s.FakeNERSC().install(monkeypatch)
    s.compute_connection(monkeypatch)
    watcher_path = _controlled_scan_through_new_file(site)
    data = s.endpoint_dir(site, "data832_raw")
    (data / "ALS-22222_alias").symlink_to(data / s.FOLDER, target_is_directory=True)
    alias = watcher_path.replace(s.FOLDER, "ALS-22222_alias")
    _refused(site, nersc, caplog, {"file_path": alias, "is_export_control": False}, "export-controlled")


def test_renamed_copy_of_a_controlled_scan_is_still_controlled(site, monkeypatch, caplog):
    nersc = s.FakeNERSC().install(monkeypatch)
    s.compute_connection(monkeypatch)
    watcher_path = _controlled_scan_through_new_file(site)
    data = s.endpoint_dir(site, "data832_raw")
    copy = data / "ALS-33333_other" / "20240202_080000_renamed.h5"
    copy.parent.mkdir()
    copy.write_bytes((data / s.FOLDER / "20240101_120000_shell.h5").read_bytes())
    renamed = "/global/raw/ALS-33333_other/20240202_080000_renamed.h5"
    _refused(site, nersc, caplog, {"file_path": renamed, "is_export_control": False},
             f"same content as export-controlled bl832:{watcher_path.removeprefix('/global/')}")

    # the renamed copy arriving through the watcher as "not controlled" is recorded as controlled and stays
    spot = s.endpoint_dir(site, "spot832") / "raw" / "ALS-33333_other"
    spot.mkdir()
    (spot / copy.name).write_bytes(copy.read_bytes())
    caplog.clear()
    dr = s.dag("bl832_new_file").test(run_conf={"file_path": renamed, "is_export_control": False})
    st = s.states(dr)
    assert st["copy_data_to_nersc"] == "skipped" and st["announce_nersc"] == st["announce_alcf"] == "skipped", st
    assert "same content as" in caplog.text
    assert s.ledger(site).export_controlled("bl832", renamed.removeprefix("/global/")) is True
    _nothing_off_site(site)


def test_unknown_scan_without_a_declaration_stays_at_als(site, monkeypatch, caplog):
    nersc = s.FakeNERSC().install(monkeypatch)
    s.compute_connection(monkeypatch)
    watcher_path = s.write_scan(site, endpoint="data832_raw", subdir="")
    _refused(site, nersc, caplog, {"file_path": watcher_path}, "neither recorded by the new-file DAG nor declared")


def test_alias_outside_the_raw_root_is_refused(site, monkeypatch, caplog):
    nersc = s.FakeNERSC().install(monkeypatch)
    s.compute_connection(monkeypatch)
    outside = site / "outside" / "20240101_120000_x.h5"
    outside.parent.mkdir()
    outside.write_bytes(b"\x89HDF\r\n\x1a\n secret")
    folder = s.endpoint_dir(site, "data832_raw") / "ALS-44444_out"
    folder.mkdir(parents=True)
    (folder / outside.name).symlink_to(outside)
    _refused(site, nersc, caplog, {"file_path": f"/global/raw/ALS-44444_out/{outside.name}",
                                   "is_export_control": False}, "alias")


@pytest.mark.parametrize("conf", [{"is_export_controlled": False}, {"is_export_control": "no"}],
                         ids=["unknown-key", "wrong-type"])
def test_recon_conf_is_a_closed_schema(site, monkeypatch, caplog, conf):
    from airflow.sdk.exceptions import ParamValidationError

    nersc = s.FakeNERSC().install(monkeypatch)
    s.compute_connection(monkeypatch)
    watcher_path = s.write_scan(site, endpoint="data832_raw", subdir="")
    run_conf = {"file_path": watcher_path, "is_export_control": False, **conf}
    if "is_export_controlled" in conf:
        _refused(site, nersc, caplog, run_conf, "unknown conf key(s) ['is_export_controlled']", safety=False)
    else:
        for target in ("nersc", "alcf"):
            with pytest.raises(ParamValidationError, match="is_export_control"):
                s.dag(f"bl832_recon_{target}").test(run_conf=run_conf)
        _nothing_off_site(site)
