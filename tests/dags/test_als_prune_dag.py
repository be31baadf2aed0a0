"""bl832_prune as a DAG: a manual run is a dry run unless told otherwise; a real run deletes only verified copies,
only in locations whose configuration switches deletion on, and writes its audit report under the site's reports
directory. bl832_prune_preview is always a dry run. A skipped location or a symlink fails the run, after the report."""

from __future__ import annotations

import json
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import _als_support as s
import pytest

pytestmark = pytest.mark.dagtest


REPO = Path(__file__).resolve().parents[2]


def spot_scan_two_days_old(tmp_path, monkeypatch, *, delete: tuple[str, ...] = ()) -> tuple[Path, Path, Path]:
    """A private site with one scan on spot832 and its verified twin on data832, both recorded two days ago; with
    ``delete``, a private include/ whose bl832.yaml switches deletion on for those locations. Returns (site,
    spot file, data file)."""
    from facility_data.als.beamline import load_beamline
    from facility_data.als.steps import record_copy, validate_new_scan
    from facility_data.transfer import load_endpoints

    if delete:
        s.enable_deletion(tmp_path, monkeypatch, delete)
    site = s.private_site(tmp_path, monkeypatch)
    watcher_path = s.write_scan(site)
    bl, eps, ledger = load_beamline("bl832"), load_endpoints(), s.ledger(site)
    assert [r for r, loc in bl.locations.items() if loc.delete] == list(delete)
    rec = validate_new_scan(bl, eps, ledger, {"file_path": watcher_path})
    spot = s.endpoint_dir(site, "spot832") / rec["relative"]
    data = s.endpoint_dir(site, "data832") / rec["relative"]
    data.parent.mkdir(parents=True)
    data.write_bytes(spot.read_bytes())
    record_copy(bl, eps, ledger, rec, source="spot", destination="data")
    two_days_ago = (datetime.now(UTC) - timedelta(days=2)).isoformat()
    with sqlite3.connect(site / "als" / "ledger.sqlite") as db:
        db.execute("UPDATE copies SET arrived_at=?", (two_days_ago,))
    return site, spot, data


def reports(site: Path, pattern: str = "prune-*.json") -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((site / "reports" / "als" / "bl832").glob(pattern))]


def test_prune_dag_dry_run_then_real_run(airflow_db, tmp_path, monkeypatch):
    site, spot, data = spot_scan_two_days_old(tmp_path, monkeypatch, delete=("spot",))
    dr = s.dag("bl832_prune").test()
    assert str(dr.state) == "success"
    (dry,) = reports(site, "prune-*-dry-run.json")
    assert dry["counts"]["would_delete"] == 1 and spot.exists()

    dr = s.dag("bl832_prune").test(run_conf={"dry_run": False})
    assert str(dr.state) == "success"
    (real,) = [p for p in (site / "reports" / "als" / "bl832").glob("prune-*.json")
               if not p.name.endswith("dry-run.json")]
    doc = json.loads(real.read_text())
    assert doc["counts"]["deleted"] == 1 and doc["decisions"][0]["location"] == "spot"
    assert doc["deletion_enabled"] == ["spot"]
    assert not spot.exists() and data.exists()  # the data832 copy has no verified NERSC twin: kept
    assert any(d["location"] == "data" and d["action"] == "kept" for d in doc["decisions"])
    assert Path(str(real).removesuffix(".json") + ".txt").read_text().count("DELETED") == 1


def test_shipped_configuration_never_deletes_and_says_how_to_enable(airflow_db, tmp_path, monkeypatch):
    """What an unpaused bl832_prune does on a fresh deployment: a real (non-dry) sweep that only reports."""
    site, spot, data = spot_scan_two_days_old(tmp_path, monkeypatch)
    dr = s.dag("bl832_prune").test(run_conf={"dry_run": False})
    assert str(dr.state) == "success"
    (doc,) = reports(site)
    assert doc["dry_run"] is False and doc["deletion_enabled"] == []
    assert doc["counts"]["deleted"] == 0 and doc["counts"]["would_delete"] == 1
    (spot_d,) = [d for d in doc["decisions"] if d["location"] == "spot"]
    assert "deletion is off" in spot_d["reason"]
    assert any("delete: true" in n and "locations.spot" in n and "bl832.yaml" in n for n in doc["notes"])
    assert spot.read_bytes() == data.read_bytes()


def test_preview_dag_is_unpaused_unscheduled_and_always_a_dry_run(airflow_db, tmp_path, monkeypatch):
    site, spot, data = spot_scan_two_days_old(tmp_path, monkeypatch, delete=("spot",))
    preview = s.dag("bl832_prune_preview")
    assert preview.is_paused_upon_creation is False and preview.schedule is None
    assert s.dag("bl832_prune").dag_id == "bl832_prune"  # the sweep keeps its id
    dr = preview.test()
    assert str(dr.state) == "success"
    (doc,) = reports(site, "prune-*-dry-run.json")
    assert doc["dry_run"] is True and doc["counts"]["would_delete"] == 1 and spot.exists()
    # A conf cannot turn the preview into a deletion: it is refused, and nothing is deleted.
    dr = s.dag("bl832_prune_preview").test(run_conf={"dry_run": False})
    assert str(dr.state) == "failed" and spot.exists()
    assert len(reports(site)) == 1


def test_a_stray_symlink_fails_the_run_after_the_report(airflow_db, tmp_path, monkeypatch):
    """Issue 10: one dangling symlink skipped the whole spot832 location and the sweep ended green."""
    site, spot, data = spot_scan_two_days_old(tmp_path, monkeypatch, delete=("spot",))
    (spot.parent / "20240101_000000_stray.h5").symlink_to(tmp_path / "gone.h5")
    dr = s.dag("bl832_prune").test(run_conf={"dry_run": False})
    assert str(dr.state) == "failed"
    assert s.states(dr) == {"sweep": "failed"}
    (doc,) = reports(site)
    assert doc["counts"]["deleted"] == 1 and not spot.exists()  # the location was processed
    (link,) = [d for d in doc["decisions"] if d["action"] == "anomaly"]
    assert link["key"].endswith("20240101_000000_stray.h5") and "symlink" in link["reason"]
    assert (spot.parent / "20240101_000000_stray.h5").is_symlink()


def test_a_misspelt_prune_conf_key_is_refused_and_nothing_is_deleted(airflow_db, tmp_path, monkeypatch):
    site, spot, data = spot_scan_two_days_old(tmp_path, monkeypatch, delete=("spot",))
    dr = s.dag("bl832_prune").test(run_conf={"dry_run": False, "dryrun": True})
    assert str(dr.state) == "failed" and spot.exists()
    assert reports(site) == []  # refused before the sweep ran
