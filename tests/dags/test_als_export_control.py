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

