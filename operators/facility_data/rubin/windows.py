"""Which exposures a run unembargoes.

A scheduled run owns the data interval ``[start, end)``. An exposure is released at
``exposure end + embargo(row) + settle``; it belongs to exactly the run whose interval contains that instant, so
consecutive intervals partition time and a backfill over any range selects exactly the exposures released in it
(unlike today's 35-minute sliding window, which drops exposures when a run is missed). Each exposure's embargo
comes from the first policy row whose ``where`` clause matches it.

A manual run names exposures (day_obs and/or obs_ids); it reprocesses exactly those, but never one whose release
time is still in the future (that would leak embargoed data). Whatever the run, every exposure's release is also
compared with the wall clock (runs.select), and the acting steps re-derive it from the source Butler and the
current policy (:func:`current_release`) before they put anything into main storage.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from datetime import UTC, date, datetime, timedelta

from facility_data.rubin.policy import EmbargoPolicy, PolicyRow

OBS_ID = re.compile(r"[A-Z]{2}_[A-Z]_([0-9]{8})_([0-9]{6})", re.ASCII)
#: widening of the Butler OVERLAPS query (exact filtering on the end time happens in Python)
_PAD = timedelta(minutes=1)
#: states of an exposure a run does not process (runs.select's ``skipped`` entries)
STILL_EMBARGOED, INCOMPLETE_AT_SOURCE, INCONSISTENT_AT_SOURCE, UNKNOWN, NO_POLICY_ROW = (
    "still_embargoed", "incomplete_at_source", "inconsistent_at_source", "unknown", "no_policy_row")
SKIP_STATES = (STILL_EMBARGOED, INCOMPLETE_AT_SOURCE, INCONSISTENT_AT_SOURCE, UNKNOWN, NO_POLICY_ROW)
#: ids per "IN (...)" clause: SQLite refuses an expression tree of ~1000 terms, and a night holds more exposures
_IN_CHUNK = 250


def _chunks(items: list, size: int = _IN_CHUNK):
    for i in range(0, len(items), size):
        yield items[i:i + size]


def _query_exposures(butler, *, instrument: str, where: str, bind: dict | None = None):
    """Every matching exposure record: ``limit=None``, since daf_butler silently truncates at 20000 rows."""
    return butler.query_dimension_records("exposure", where=where, bind=bind or {}, instrument=instrument,
                                          explain=False, limit=None)


@dataclass(frozen=True)
class ExposureRef:
    """The small, JSON-serializable handle on one exposure that the DAG passes between tasks."""

    instrument: str
    day_obs: int
    obs_id: str
    exposure: int
    end: str  # ISO UTC
    release: str  # ISO UTC
    embargo_hours: float

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> ExposureRef:
        return cls(**d)


def release_time(end: datetime, row: PolicyRow, settle_minutes: float) -> datetime:
    return end + timedelta(hours=row.embargo_hours, minutes=settle_minutes)


def end_interval(start: datetime, end: datetime, row: PolicyRow, settle_minutes: float) -> tuple[datetime, datetime]:
    """Exposure end times whose release falls in ``[start, end)``."""
    lag = timedelta(hours=row.embargo_hours, minutes=settle_minutes)
    return start - lag, end - lag


def _aware(dt: datetime) -> datetime:
    if dt.tzinfo is None:
        raise ValueError(f"naive datetime {dt!r}: windows are in UTC and must carry a timezone")
    u = dt.astimezone(UTC)  # a plain datetime: pendulum's (Airflow's) do not compare with astropy's
    return datetime(u.year, u.month, u.day, u.hour, u.minute, u.second, u.microsecond, tzinfo=UTC)


def _tai(dt: datetime):
    from astropy.time import Time

    return Time(dt.astimezone(UTC).replace(tzinfo=None), scale="utc")


def _end_utc(record) -> datetime:
    return record.timespan.end.utc.to_datetime(timezone=UTC)


def _and(*clauses: str) -> str:
    return " AND ".join(f"({c})" for c in clauses if c)


def _governing_rows(butler, policy: EmbargoPolicy, instrument: str, records) -> dict[int, PolicyRow]:
    """Exposure id -> first policy row whose where clause matches it (exposures matching none are absent)."""
    pending = {r.id for r in records}
    out: dict[int, PolicyRow] = {}
    for row in policy.rows_for(instrument):
        if not pending:
            break
        for chunk in _chunks(sorted(pending)):
            ids = ",".join(str(i) for i in chunk)
            for rec in _query_exposures(butler, instrument=instrument,
                                        where=_and(row.where, f"exposure.id IN ({ids})")):
                out[rec.id] = row
                pending.discard(rec.id)
    return out


def _ref(instrument: str, rec, row: PolicyRow, settle: float) -> ExposureRef:
    end = _end_utc(rec)
    return ExposureRef(instrument, int(rec.day_obs), rec.obs_id, int(rec.id), end.isoformat(),
                       release_time(end, row, settle).isoformat(), row.embargo_hours)


def select_released(butler, policy: EmbargoPolicy, instrument: str, start: datetime,
                    end: datetime) -> list[ExposureRef]:
    """Exposures of ``instrument`` whose release time is in ``[start, end)``, sorted by release time."""
    from lsst.daf.butler import Timespan

    start, end = _aware(start), _aware(end)
    if end <= start:
        raise ValueError(f"empty window [{start}, {end})")
    found: dict[int, ExposureRef] = {}
    for row in policy.rows_for(instrument):
        a, b = end_interval(start, end, row, policy.settle_minutes)
        recs = _query_exposures(butler, instrument=instrument,
                                where=_and(row.where, "exposure.timespan OVERLAPS :ok_timespan"),
                                bind={"ok_timespan": Timespan(_tai(a - _PAD), _tai(b))})
        recs = [r for r in recs if a <= _end_utc(r) < b and r.id not in found]
        governing = _governing_rows(butler, policy, instrument, recs)
        for rec in recs:
            if governing.get(rec.id) is row:  # released under this row, not an earlier one
                found[rec.id] = _ref(instrument, rec, row, policy.settle_minutes)
    return sorted(found.values(), key=lambda r: (r.release, r.obs_id))


@dataclass(frozen=True)
class ManualRequest:
    instrument: str
    day_obs: int | None
    obs_ids: tuple[str, ...]
    dry_run: bool


def day_obs_param(description: str):
    """The ``day_obs`` Param of the Rubin DAGs: YYYYMMDD as a string or, as a JSON conf ``{"day_obs": 20261201}``
    and Butler data ids write it, an integer (the pattern applies to strings, the bounds to integers; JSON Schema's
    integer is never a bool)."""
    from airflow.sdk import Param

    return Param(None, type=["null", "string", "integer"], pattern=r"^[0-9]{8}$", minimum=10000101,
                 maximum=99991231, description=description)


def parse_day_obs(value: object) -> tuple[int | None, str | None]:
    """(day_obs, problem): a manual run's day_obs as an int (None when not given), or the reason it is refused.
    Whole-string and ASCII-only: a trailing newline, non-ASCII digits, a bool or a non-date are refused."""
    if value in ("", None):
        return None, None
    if isinstance(value, bool) or not isinstance(value, str | int):  # True is an int: never a night
        return None, f"day_obs: must be YYYYMMDD (a string or an integer), got {value!r}"
    text = str(value)  # an integer 20261201 (a JSON conf) is the same night as "20261201"
    if not re.fullmatch(r"[0-9]{8}", text):
        return None, f"day_obs: must be YYYYMMDD, got {value!r}"
    try:
        date(int(text[:4]), int(text[4:6]), int(text[6:]))
    except ValueError:
        return None, f"day_obs: {value!r} is not a calendar date"
    return int(text), None


def parse_manual(policy: EmbargoPolicy, params: dict) -> ManualRequest:
    """Validate a manual run's Params against the policy; raise ValueError naming every bad field (no side effect).

    Airflow's own Param validation stops at the first bad field; this second line names them all. Matching is
    whole-string and ASCII-only: a trailing newline or non-ASCII digits are refused, not normalised."""
    problems: list[str] = []
    instrument = params.get("instrument")
    if not isinstance(instrument, str) or instrument not in policy.instruments:
        problems.append(f"instrument: unknown instrument {instrument!r}: the policy knows {policy.instruments}")
    day_obs, problem = parse_day_obs(params.get("day_obs"))
    if problem:
        problems.append(problem)
    obs_ids = params.get("obs_ids") or []
    if isinstance(obs_ids, str) or not isinstance(obs_ids, list):
        problems.append(f"obs_ids: must be a list of observation ids, got {obs_ids!r}")
        obs_ids = []
    for o in obs_ids:
        m = OBS_ID.fullmatch(o) if isinstance(o, str) else None
        if not m:
            problems.append(f"obs_ids: malformed obs_id {o!r}: expected e.g. MC_O_20251231_000010")
        elif day_obs is not None and int(m.group(1)) != day_obs:
            problems.append(f"obs_ids: obs_id {o} is not from day_obs {day_obs}")
    if not problems and day_obs is None and not obs_ids:
        problems.append("day_obs/obs_ids: a manual run needs day_obs and/or obs_ids")
    dry_run = params.get("dry_run", False)
    if not isinstance(dry_run, bool):
        problems.append(f"dry_run: must be true or false, got {dry_run!r}")
    if problems:
        raise ValueError("; ".join(problems))
    return ManualRequest(instrument, day_obs, tuple(dict.fromkeys(obs_ids)), dry_run)


def select_manual(butler, policy: EmbargoPolicy, request: ManualRequest,
                  now: datetime) -> tuple[list[ExposureRef], list[dict]]:
    """Exactly the requested exposures past release; the rest come back as problems (unknown, still embargoed,
    matched by no policy row), each a dict with obs_id and reason."""
    clauses, bind = [], {}
    if request.day_obs is not None:
        clauses.append("exposure.day_obs = :day_obs")
        bind["day_obs"] = request.day_obs
    if request.obs_ids:
        recs = [rec for chunk in _chunks(list(request.obs_ids))
                for rec in _query_exposures(butler, instrument=request.instrument, bind=bind, where=_and(
                    *clauses, "exposure.obs_id IN (" + ",".join(f"'{o}'" for o in chunk) + ")"))]
    else:
        recs = list(_query_exposures(butler, instrument=request.instrument, where=_and(*clauses), bind=bind))
    problems = [{"obs_id": o, "reason": "no such exposure in the source Butler", "state": UNKNOWN}
                for o in sorted(set(request.obs_ids) - {r.obs_id for r in recs})]
    governing = _governing_rows(butler, policy, request.instrument, recs)
    out = []
    for rec in recs:
        row = governing.get(rec.id)
        if row is None:
            problems.append({"obs_id": rec.obs_id, "reason": "matches no policy row (never released)",
                             "state": NO_POLICY_ROW})
            continue
        ref = _ref(request.instrument, rec, row, policy.settle_minutes)
        if datetime.fromisoformat(ref.release) > _aware(now):
            problems.append({"obs_id": rec.obs_id, "reason": f"still embargoed until {ref.release}",
                             "state": STILL_EMBARGOED})
            continue
        out.append(ref)
    return sorted(out, key=lambda r: (r.release, r.obs_id)), problems


def governing_row(butler, policy: EmbargoPolicy, instrument: str, exposure: int) -> tuple[object | None,
                                                                                       PolicyRow | None]:
    """The exposure's record in ``butler`` and the first row of ``policy`` that matches it (None where absent)."""
    recs = list(_query_exposures(butler, instrument=instrument, where=f"exposure.id = {int(exposure)}"))
    if not recs:
        return None, None
    return recs[0], _governing_rows(butler, policy, instrument, recs).get(recs[0].id)


def current_release(butler, policy: EmbargoPolicy, exp: ExposureRef) -> tuple[datetime | None, str]:
    """When ``exp`` may be released, re-derived from the source Butler's exposure record (its end time) and the
    current policy's governing row, and never earlier than the ref says: run-time inputs (a stale XCom, a hand-made
    ref, a shortened policy) can only lengthen an embargo. None (with why) if it may never be released."""
    rec, row = governing_row(butler, policy, exp.instrument, exp.exposure)
    if rec is None:
        return None, f"exposure {exp.exposure} is not in the source Butler"
    if rec.obs_id != exp.obs_id:
        return None, f"exposure {exp.exposure} is {rec.obs_id} in the source Butler, not {exp.obs_id}"
    if row is None:
        return None, "matches no policy row (never released)"
    derived = release_time(_end_utc(rec), row, policy.settle_minutes)
    return max(derived, _aware(datetime.fromisoformat(exp.release))), "release"
