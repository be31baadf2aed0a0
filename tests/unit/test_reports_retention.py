"""Reports stay useful: per-kind retention from include/reports.yaml, applied by the writers, and no reconcile report
for a night without exposures."""

from __future__ import annotations

import os
import re
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from facility_data.config import ConfigError
from facility_data.reports import ReportsConfig, apply_retention, load_config
from facility_data.rubin import reconcile
from facility_data.rubin.classify import ExposureCheck, NightResult


def aged(path: Path, days: float, data: str = "x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(data)
    t = time.time() - days * 86400
    os.utime(path, (t, t), follow_symlinks=False)
    return path


def test_shipped_configuration_keeps_prune_audits_longer_than_reconcile_reports():
    config = load_config()
    assert config.retention_days == {"prune": 730, "rubin_reconcile": 90, "als_reconcile": 90}


@pytest.mark.parametrize("text, key", [("retention_days: {prunes: 3}\n", "unknown report kind(s) ['prunes']"),
                                       ("retention_days: {prune: 0}\n", "more than 0 days"),
                                       ("retention_days: {prune: soon}\n", "retention_days.prune"),
                                       ("retention: {prune: 3}\n", "key retention")])
def test_a_bad_configuration_names_the_key(tmp_path, text, key):
    (tmp_path / "reports.yaml").write_text(text)
    with pytest.raises(ConfigError, match=re.escape(key)):
        load_config(tmp_path / "reports.yaml")


def test_retention_deletes_only_old_report_files_in_that_directory(tmp_path):
    d = tmp_path / "als" / "bl832"
    old, young = aged(d / "prune-old.json", 11), aged(d / "prune-young.json", 9)
    other_type = aged(d / "ledger.sqlite", 400)
    nested = aged(d / "sub" / "prune-nested.json", 400)
    target = aged(tmp_path / "elsewhere.json", 400)
    link = d / "prune-link.json"
    link.symlink_to(target)
    os.utime(link, (time.time() - 400 * 86400,) * 2, follow_symlinks=False)
    deleted = apply_retention(d, "prune", config=ReportsConfig(retention_days={"prune": 10}))
    assert deleted == [old] and not old.exists()
    assert young.exists() and other_type.exists() and nested.exists() and link.is_symlink() and target.exists()
    assert apply_retention(d, "rubin_reconcile", config=ReportsConfig(retention_days={"prune": 10})) == []
    assert apply_retention(d, "prune", config=ReportsConfig()) == []  # not listed: kept forever


def test_the_prune_writer_applies_the_prune_retention(tmp_path, monkeypatch):
    from facility_data.als.prune import PruneReport, write_report

    d = tmp_path / "reports"
    expired, kept = aged(d / "prune-2024.json", 731), aged(d / "prune-2025.txt", 729)
    report = write_report(PruneReport(beamline="bl832", started=datetime.now(UTC).isoformat(), dry_run=True), d)
    assert not expired.exists() and kept.exists()
    assert Path(report.json_path).exists() and Path(report.text_path).exists()


def _night(day: int, states: list[str], embargoed: int = 0) -> NightResult:
    return NightResult("LSSTCam", day, "fast", "2026-11-20T00:00:00+00:00",
                       [ExposureCheck(f"MC_O_{day}_{i:06d}", s) for i, s in enumerate(states)],
                       embargoed=[{"obs_id": f"e{i}", "reason": "still embargoed"} for i in range(embargoed)])


def test_no_reconcile_report_for_a_night_without_exposures_and_old_ones_expire(tmp_path):
    from facility_data.rubin import report

    expired = aged(tmp_path / "LSSTCam" / "20260101_20260102T000000.html", 91)
    kept = aged(tmp_path / "LSSTCam" / "20260301_20260302T000000.html", 89)
    nights = [_night(20261110, []), _night(20261111, ["done", "partial"]), _night(20261112, [], embargoed=2),
              _night(20261113, [])]
    result = {"instrument": "LSSTCam", "repair": False, "dry_run": True,
              "counts": reconcile.counts_per_night(nights), "repaired": []}
    paths = report.write_reports(nights, result, reports_dir=tmp_path)
    assert sorted(p.name[:8] for p in paths if p.suffix == ".html") == ["20261111", "20261112"]
    (chart,) = [p for p in paths if p.suffix == ".png"]
    assert chart.name.startswith("states_20261111-20261112_")
    assert not expired.exists() and kept.exists()
    assert sorted(p.name for p in (tmp_path / "LSSTCam").iterdir()) == sorted(
        [kept.name, *(p.name for p in paths)])
    assert report.write_reports([_night(20261114, [])], result, reports_dir=tmp_path / "quiet") == []
    assert not (tmp_path / "quiet").exists()
