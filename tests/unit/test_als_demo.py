"""The demo helpers: a scan where the watcher would see it, and a summary that reads the site back."""

from __future__ import annotations

from facility_data.als.beamline import load_beamline
from facility_data.als.paths import parse_scan_path
from facility_data.demo import als as demo


def test_prepare_writes_a_valid_scan_and_summary_reads_the_site(site_root, monkeypatch):
    monkeypatch.setenv("FACILITY_SITE", str(site_root))
    conf = demo.prepare(site_root)
    scan = parse_scan_path(conf["file_path"], load_beamline("bl832").rules)
    assert (site_root / "endpoints" / "spot832" / scan.relative).stat().st_size > 0
    assert conf["is_export_control"] is False
    text = demo.summary(site_root)
    assert "copies recorded in the ledger" in text and "(none yet)" in text
    assert "prune dry run (nothing deleted)" in text
    assert list((site_root / "reports" / "als" / "bl832").glob("prune-*-dry-run.txt"))


def test_summary_lists_the_datasets_in_the_sites_scicat_records(site_root, monkeypatch):
    from facility_data.localsite.scicat_standin import SciCatStandIn

    monkeypatch.setenv("FACILITY_SITE", str(site_root))
    assert "datasets catalogued in the local SciCat stand-in" in demo.summary(site_root)
    records = site_root / "scicat" / "records.json"
    records.parent.mkdir()
    standin = SciCatStandIn(state_file=records)
    standin.datasets["20.500.12269/demo"] = {"sourceFolder": "/data/raw/ALS-1_x", "datasetName": "20240101_1_x"}
    standin._persist()  # as the stand-in does after every creation
    assert "20.500.12269/demo  /data/raw/ALS-1_x/20240101_1_x" in demo.summary(site_root)
