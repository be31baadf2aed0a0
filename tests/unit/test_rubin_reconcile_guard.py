"""The embargo pruning guard (facility_data.safety.may_delete_unembargoed), classification rules, reports."""

from __future__ import annotations

import pytest

from facility_data.rubin import classify, reconcile
from facility_data.rubin.classify import ExposureCheck, NightResult
from facility_data.safety import SafetyError, SinkCheck, may_delete_unembargoed

SINKS = ["zip", "dimensions", "butler:main", "rucio"]


def _checks(**override):
    out = {s: SinkCheck(s, verified=True, deep=True) for s in SINKS}
    out.update(override)
    return list(out.values())


def test_prune_allowed_only_when_every_sink_is_deeply_verified():
    d = may_delete_unembargoed("LSSTCam/20250101/MC_O_20250101_000001", _checks(), required_sinks=SINKS)
    assert d.allowed and "every sink" in d.reason
    d.require()


@pytest.mark.parametrize("override, why", [
    ({"rucio": SinkCheck("rucio", verified=False, deep=True, detail="close missing")}, "not verified"),
    ({"zip": SinkCheck("zip", verified=True, deep=False)}, "only shallowly"),
])
def test_prune_refused_for_an_unverified_or_shallow_sink(override, why):
    d = may_delete_unembargoed("x", _checks(**override), required_sinks=SINKS)
    assert not d.allowed and why in d.reason and "keeping" in d.reason
    with pytest.raises(SafetyError):
        d.require()


def test_prune_refused_for_an_unchecked_sink_or_no_sinks_or_conflicting_answers():
    assert "not checked" in may_delete_unembargoed("x", _checks()[:-1], required_sinks=SINKS).reason
    assert not may_delete_unembargoed("x", _checks(), required_sinks=[]).allowed
    conflicting = [*_checks(), SinkCheck("zip", verified=False, deep=True)]
    assert "conflicting" in may_delete_unembargoed("x", conflicting, required_sinks=SINKS).reason


NAMES = ["gate", "zip", "dimensions", "butler:main", "rucio"]


@pytest.mark.parametrize("sinks, state, first, after", [
    (dict.fromkeys(NAMES, "ok"), "done", None, None),
    ({"gate": "ok"}, "not_started", "zip", "gate"),
    ({"gate": "ok", "zip": "ok"}, "partial", "dimensions", "zip"),
    ({"gate": "ok", "zip": "ok", "dimensions": "ok", "butler:main": "ok"}, "partial", "rucio", "butler:main"),
    ({"gate": "ok", "rucio": "ok"}, "partial", "zip", "gate"),  # zip lost after registration: not "not started"
    ({"gate": "missing", "zip": "ok"}, "incomplete_at_source", "gate", None),
    ({"gate": "error"}, "error", "gate", None),
    ({"gate": "ok", "zip": "ok", "dimensions": "ok", "butler:main": "ok", "rucio": "inconsistent"},
     "inconsistent", "rucio", None),
    ({"gate": "ok", "zip": "ok", "dimensions": "error"}, "error", "dimensions", None),
])
def test_classification_from_sink_states(sinks, state, first, after):
    check = classify.judge(ExposureCheck("MC_O_20250101_000001", "?", sinks=dict(sinks)), NAMES)
    assert (check.state, check.first_missing, check.stopped_after) == (state, first, after)


def test_rucio_parts_done_but_later_parts_missing_is_partial_not_not_started():
    sinks = {"gate": "ok", "rucio": "missing", "_partial_rucio": "yes"}
    check = classify.judge(ExposureCheck("o", "?", sinks=sinks), NAMES)
    assert check.state == "partial" and "_partial_rucio" not in check.sinks


def _night(day, states):
    return NightResult("LSSTCam", day, "fast", "2025-01-05T00:00:00+00:00",
                       [ExposureCheck(f"MC_O_{day}_{i:06d}", s, problems=[f"p{i}"] if s != "done" else [])
                        for i, s in enumerate(states)], embargoed=[{"obs_id": "later", "reason": "still embargoed"}])


def test_reports_and_chart_are_written_and_name_every_exposure_not_done(tmp_path):
    from facility_data.rubin import report

    nights = [_night(20250101, ["done", "partial", "inconsistent"]), _night(20250102, ["done", "done"])]
    result = {"instrument": "LSSTCam", "first": 20250101, "last": 20250102, "mode": "fast", "repair": True,
              "dry_run": False, "counts": reconcile.counts_per_night(nights), "repaired": [], "failed": [],
              "unrepairable": reconcile.unrepairable(nights), "prune": []}
    paths = report.write_reports(nights, result, reports_dir=tmp_path)
    png = [p for p in paths if p.suffix == ".png"]
    html = sorted(p for p in paths if p.suffix == ".html")
    assert len(png) == 1 and png[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name[:8] for p in html] == ["20250101", "20250102"]
    first = html[0].read_text()
    assert "MC_O_20250101_000001" in first and "MC_O_20250101_000002" in first and "p2" in first
    assert "MC_O_20250101_000000" not in first  # done exposures are counted, not listed
    assert result["counts"]["20250101"]["partial"] == 1 and result["counts"]["20250101"]["still_embargoed"] == 1
    result["reports"] = [str(p) for p in paths]
    text = reconcile.summary(result)
    assert "NEEDS AN OPERATOR MC_O_20250101_000002" in text and str(html[0]) in text
