"""A full LSSTCam night (~1000 exposures and more) must be selectable: no query may hit SQLite's expression limit
(an IN clause of ~1000 terms) or daf_butler's silent 20000-row default limit."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

from facility_data.rubin.policy import PolicyRow
from facility_data.rubin.windows import ManualRequest, select_manual


class RecordingButler:
    """Answers exposure queries from a list of records the way daf_butler would, and records each call."""

    def __init__(self, records):
        self.records, self.calls = records, []

    def query_dimension_records(self, element, *, where="", bind=None, instrument=None, explain=True, limit=-20000):
        self.calls.append({"where": where, "limit": limit})
        ids = re.search(r"exposure\.id IN \(([^)]*)\)", where)
        obs = re.search(r"exposure\.obs_id IN \(([^)]*)\)", where)
        out = self.records
        if ids:
            wanted = {int(i) for i in ids.group(1).split(",")}
            out = [r for r in out if r.id in wanted]
        if obs:
            wanted = {o.strip("'") for o in obs.group(1).split(",")}
            out = [r for r in out if r.obs_id in wanted]
        return out


def night(n: int, day_obs: int = 20251231):
    end = datetime(2026, 1, 1, 3, tzinfo=UTC)
    span = SimpleNamespace(end=SimpleNamespace(utc=SimpleNamespace(to_datetime=lambda timezone: end)))
    return [SimpleNamespace(id=day_obs * 100000 + i, obs_id=f"MC_O_{day_obs}_{i:06d}", day_obs=day_obs,
                            timespan=span) for i in range(1, n + 1)]


def policy():
    row = PolicyRow(instrument="LSSTCam", where="", embargo_hours=80)
    return SimpleNamespace(rows_for=lambda instrument: [row], settle_minutes=5)


def _in_terms(where: str) -> int:
    m = re.search(r"IN \(([^)]*)\)", where)
    return len(m.group(1).split(",")) if m else 0


def test_a_night_of_1200_exposures_by_day_obs():
    butler = RecordingButler(night(1200))
    now = datetime(2026, 1, 1, 3, tzinfo=UTC) + timedelta(hours=81)
    refs, problems = select_manual(butler, policy(), ManualRequest("LSSTCam", 20251231, (), False), now)
    assert len(refs) == 1200 and problems == []
    assert all(c["limit"] is None for c in butler.calls), "a query used daf_butler's 20000-row default"
    assert max(_in_terms(c["where"]) for c in butler.calls) <= 250


def test_many_obs_ids_are_queried_in_chunks():
    records = night(600)
    butler = RecordingButler(records)
    now = datetime(2026, 1, 1, 3, tzinfo=UTC) + timedelta(hours=81)
    wanted = tuple(r.obs_id for r in records[:550])
    refs, problems = select_manual(butler, policy(), ManualRequest("LSSTCam", None, wanted, False), now)
    assert sorted(r.obs_id for r in refs) == sorted(wanted) and problems == []
    assert max(_in_terms(c["where"]) for c in butler.calls) <= 250
