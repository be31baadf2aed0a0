"""bl832_prune as a DAG: a manual run is a dry run unless told otherwise; a real run deletes only verified copies
and writes its audit report under the site's reports directory."""

from __future__ import annotations

import json
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import _als_support as s
import pytest

pytestmark = pytest.mark.dagtest


def test_prune_dag_dry_run_then_real_run(airflow_db, tmp_path, monkeypatch):
    from facility_data.als.beamline import load_beamline
    from facility_data.als.steps import record_copy, validate_new_scan
    from facility_data.transfer import load_endpoints

    site = tmp_path / "site"
    site.mkdir()
    monkeypatch.setenv("FACILITY_SITE", str(site))
    watcher_path = s.write_scan(site)
    bl, eps, ledger = load_beamline("bl832"), load_endpoints(), s.ledger(site)
    rec = validate_new_scan(bl, eps, ledger, {"file_path": watcher_path})
    spot = s.endpoint_dir(site, "spot832") / rec["relative"]
    data = s.endpoint_dir(site, "data832") / rec["relative"]
    data.parent.mkdir(parents=True)
    data.write_bytes(spot.read_bytes())
    record_copy(bl, eps, ledger, rec, source="spot", destination="data")
    two_days_ago = (datetime.now(UTC) - timedelta(days=2)).isoformat()
    with sqlite3.connect(site / "als" / "ledger.sqlite") as db:
        db.execute("UPDATE copies SET arrived_at=?", (two_days_ago,))

    reports = site / "reports" / "als" / "bl832"
    dr = s.dag("bl832_prune").test()
    assert str(dr.state) == "success"
    (dry,) = reports.glob("prune-*-dry-run.json")
    assert json.loads(dry.read_text())["counts"]["would_delete"] == 1 and spot.exists()

    dr = s.dag("bl832_prune").test(run_conf={"dry_run": False})
    assert str(dr.state) == "success"
    (real,) = [p for p in reports.glob("prune-*.json") if not p.name.endswith("dry-run.json")]
    doc = json.loads(real.read_text())
    assert doc["counts"]["deleted"] == 1 and doc["decisions"][0]["location"] == "spot"
    assert not spot.exists() and data.exists()  # the data832 copy has no verified NERSC twin: kept
    assert any(d["location"] == "data" and d["action"] == "kept" for d in doc["decisions"])
    assert Path(str(real).removesuffix(".json") + ".txt").read_text().count("DELETED") == 1
