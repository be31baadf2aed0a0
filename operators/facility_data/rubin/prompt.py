"""Unembargo of prompt products: datasets of the prompt pipelines, copied from the embargo Butler to the
destination Butlers once their embargo has ended (seed 001; the reference is lsst-dm/transfer_embargo's
``transfer_non_raw.py``).

For each policy row (include/prompt_policy.yaml, :mod:`facility_data.rubin.prompt_policy`):

1. *resolve*: the source's dataset types matching the row's patterns that occur in the row's collections, minus
   calibration types, the raw DAG's ``raw``/``guider_raw`` and every type found in an avoid collection;
2. *select*: the datasets of each type whose release falls in the run's window (scheduled/backfill), or of one
   day_obs (manual). Release = end of the dataset's visit (else exposure) timespan + embargo_hours (select_by
   timespan), or its ingest date + embargo_hours (select_by ingest_date). Whatever the run, a dataset whose
   release is later than the wall clock is held (still embargoed), and one whose time is unknown (no timespan, a
   type with neither dimension under select_by timespan) is refused: never transferred, always reported;
3. *compare* each due dataset with every destination: absent -> transfer; present with the same id, type, data
   id, run and artifacts (sha256 or size, ``verify``) -> already present, not duplicated; anything else present
   (other content, or another dataset id for the same type/data id/run) -> INCONSISTENT, refused;
4. *transfer* the absent ones with ``Butler.transfer_from(..., transfer="copy", register_dataset_types=True,
   transfer_dimensions=True)`` after re-checking the clock, then verify each landed as in 3.

Rows are isolated: one row's error is recorded in its summary and the next row runs; ``ok`` is False for a row
(and the run) when anything due was refused, held, inconsistent or not verified. A dry run writes nothing.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from facility_data.rubin import butlerops
from facility_data.rubin.prompt_policy import PromptPolicy, PromptRow, match_any
from facility_data.rubin.windows import _aware, _tai

log = logging.getLogger(__name__)

#: the raw DAG's dataset types: never transferred by this one (a raw is released as a zip with its Rucio rules)
RAW_TYPES = frozenset({"raw", "guider_raw"})
HELD, REFUSED, INCONSISTENT, ERROR = "still_embargoed", "refused", "inconsistent", "error"
#: widening of the Butler OVERLAPS query (exact filtering on the end time is in Python)
_PAD = timedelta(minutes=1)
_BATCH = 1000
#: at most this many entries of each list in a summary (the counts are always complete)
_LIST_MAX = 50


class PromptContext:
    """The policy, the Butlers (opened lazily, once), the clock and the dry-run flag of one run."""

    def __init__(self, policy: PromptPolicy, *, butler_factory: Callable | None = None, dry_run: bool = False,
                 clock: Callable[[], datetime] | None = None):
        self.policy, self.dry_run = policy, dry_run
        self.clock = clock or (lambda: datetime.now(UTC))  # injectable for tests; the embargo is wall-clock time
        self._factory = butler_factory or butlerops.open_butler
        self._butlers: dict = {}

    def butler(self, ref, *, writeable: bool = False):
        key = (ref.label, writeable)
        if key not in self._butlers:
            self._butlers[key] = self._factory(ref, writeable=writeable)
        return self._butlers[key]

    @property
    def source(self):
        return self.butler(self.policy.source)


@dataclass
class Due:
    """A dataset selected for release and when it is released (UTC)."""

    ref: object
    release: datetime


@dataclass
class RowSummary:
    row: str
    dry_run: bool
    dataset_types: list[str] = field(default_factory=list)
    collections: list[str] = field(default_factory=list)
    selected: int = 0
    transferred: int = 0
    already_present: int = 0
    would_transfer: int = 0
    problems: list[dict] = field(default_factory=list)  # {state, reason[, dataset, destination]}
    problem_count: int = 0
    by_state: dict[str, int] = field(default_factory=dict)  # complete, unlike the capped problems list

    def problem(self, state: str, reason: str, **where) -> None:
        self.problem_count += 1
        self.by_state[state] = self.by_state.get(state, 0) + 1
        if len(self.problems) < _LIST_MAX:
            self.problems.append({"state": state, "reason": reason, **where})
        log.warning("prompt row %s: %s: %s %s", self.row, state, reason, where or "")

    @property
    def ok(self) -> bool:
        return self.problem_count == 0

    def to_dict(self) -> dict:
        return {"row": self.row, "ok": self.ok, "dry_run": self.dry_run, "dataset_types": self.dataset_types,
                "collections": self.collections, "selected": self.selected, "transferred": self.transferred,
                "already_present": self.already_present, "would_transfer": self.would_transfer,
                "problem_count": self.problem_count, "by_state": dict(self.by_state), "problems": self.problems}


def describe(ref) -> str:
    return f"{ref.datasetType.name}@{ref.run} {ref.dataId.required} ({ref.id})"


# ---------------------------------------------------------------------------------------------------- resolve
def resolve(source, row: PromptRow) -> tuple[list, list[str], list[str]]:
    """(dataset types to transfer, collections searched, notes): the row's patterns against the source Butler."""
    all_collections = list(source.collections.query("*", include_chains=True))
    collections = match_any(row.collections, all_collections)
    notes = []
    if not collections:
        notes.append(f"no collection of the source matches {row.collections}")
        return [], [], notes
    present: set[str] = set()
    for info in source.collections.query_info(collections, include_summary=True, flatten_chains=True):
        present |= set(info.dataset_types or ())
    avoided: set[str] = set()
    avoid = match_any(row.avoid_collections, all_collections) if row.avoid_collections else []
    if avoid:
        for info in source.collections.query_info(avoid, include_summary=True, flatten_chains=True):
            avoided |= set(info.dataset_types or ())
    by_name = {t.name: t for t in source.registry.queryDatasetTypes("*")}
    wanted = match_any(row.dataset_types, present & set(by_name))
    types = [by_name[n] for n in wanted
             if n not in RAW_TYPES and n not in avoided and not by_name[n].isCalibration()]
    return types, collections, notes


def time_dimension(dataset_type) -> str | None:
    """The dimension whose timespan times a dataset type's embargo: visit, else exposure, else None."""
    names = set(dataset_type.dimensions.names)
    return "visit" if "visit" in names else "exposure" if "exposure" in names else None


# ---------------------------------------------------------------------------------------------------- select
def _and(*clauses: str) -> str:
    return " AND ".join(f"({c})" for c in clauses if c)  # the row's where goes last: it cannot widen the time clause


def _query(source, dataset_type, collections, where, bind, instrument):
    refs = source.query_datasets(dataset_type, collections, find_first=False, where=where, bind=bind,
                                 instrument=instrument, with_dimension_records=True, explain=False, limit=None)
    return list({r.id: r for r in refs}.values())  # a run reached through a chain as well: one ref per dataset


def day_window(day_obs: int) -> tuple[datetime, datetime]:
    """A Rubin observing day in UTC: day_obs is the date at UTC-12h, so [day 12:00, next day 12:00)."""
    d = datetime.strptime(str(day_obs), "%Y%m%d").replace(tzinfo=UTC)
    return d + timedelta(hours=12), d + timedelta(hours=36)


def select(source, row: PromptRow, dataset_type, collections: list[str], summary: RowSummary, *, now: datetime,
           window: tuple[datetime, datetime] | None = None, day_obs: int | None = None) -> list[Due]:
    """The datasets of ``dataset_type`` this run releases (window, else day_obs), each past its release by ``now``;
    the rest (held, unknown time) are recorded in ``summary`` as problems."""
    lag = timedelta(hours=row.embargo_hours)
    name = dataset_type.name
    if row.select_by == "ingest_date":
        return _select_by_ingest(source, row, dataset_type, collections, summary, now=now, lag=lag,
                                 window=window or day_window(day_obs))  # type: ignore[arg-type]
    dim = time_dimension(dataset_type)
    if dim is None:
        summary.problem(REFUSED, f"dataset type {name} has no visit or exposure dimension: its embargo cannot be "
                                 f"timed by timespan (use a select_by: ingest_date row); nothing of it released",
                        dataset=name)
        return []
    if window is not None:
        a, b = window[0] - lag, window[1] - lag  # timespan ends whose release falls in the window
        refs = _query(source, dataset_type, collections, _and(f"{dim}.timespan OVERLAPS :_ok_ts", row.where),
                      {"_ok_ts": _timespan(a - _PAD, b)}, row.instrument)
    else:
        a = b = None
        refs = _query(source, dataset_type, collections, _and(f"{dim}.day_obs = :_day_obs", row.where),
                      {"_day_obs": int(day_obs)}, row.instrument)  # type: ignore[arg-type]
    out = []
    for ref in refs:
        record = ref.dataId.records[dim]
        span = getattr(record, "timespan", None)
        if span is None or span.end is None:
            summary.problem(REFUSED, f"{dim} {record.id} has no timespan end: release time unknown, never "
                                     f"released", dataset=describe(ref))
            continue
        end = span.end.utc.to_datetime(timezone=UTC)
        if a is not None and not (a <= end < b):
            continue  # overlaps the widened window but ends outside it: another run's
        release = end + lag
        if release > now:
            summary.problem(HELD, f"still embargoed until {release.isoformat()}", dataset=describe(ref))
            continue
        out.append(Due(ref, release))
    return out


def _timespan(a: datetime, b: datetime):
    from lsst.daf.butler import Timespan

    return Timespan(_tai(a), _tai(b))


def _select_by_ingest(source, row, dataset_type, collections, summary, *, now, lag, window) -> list[Due]:
    """Released at ingest + lag, all in the query: the ingest date is not on the refs, so the due part of the
    window (release <= now) and the held part (release > now) are asked separately."""
    a, b = window[0] - lag, window[1] - lag
    cut = min(b, now - lag)  # ingested before this: released by now
    where = "ingest_date >= :_a AND ingest_date < :_b"
    due = [] if cut <= a else _query(source, dataset_type, collections, _and(where, row.where),
                                     {"_a": _tai(a), "_b": _tai(cut)}, row.instrument)
    if cut < b:
        for ref in _query(source, dataset_type, collections, _and(where, row.where),
                          {"_a": _tai(max(a, cut)), "_b": _tai(b)}, row.instrument):
            summary.problem(HELD, "still embargoed (ingested less than embargo_hours ago)", dataset=describe(ref))
    return [Due(r, now) for r in due]


# ---------------------------------------------------------------------------------------------------- compare
def _artifacts(butler, ref) -> dict[str, object]:
    """Component (or "") -> ResourcePath of each artifact of ``ref`` in ``butler``."""
    primary, components = butler.getURIs(ref)
    out = {"": primary} if primary is not None else {}
    out.update(components)
    return out


def _fingerprint(uri, how: str):
    if how == "size":
        return uri.size()
    return hashlib.sha256(uri.read()).hexdigest()


def compare(source, dest, ref, how: str) -> tuple[str, str]:
    """("absent"|"present"|"inconsistent", why) for ``ref`` of ``source`` against ``dest``."""
    found = dest.get_dataset(ref.id)
    if found is None:
        from lsst.daf.butler import MissingCollectionError, MissingDatasetTypeError

        try:
            other = dest.find_dataset(ref.datasetType.name, ref.dataId, collections=ref.run)
        except (MissingCollectionError, MissingDatasetTypeError):  # neither the run nor the type is there yet
            other = None
        if other is not None:
            return INCONSISTENT, (f"the destination holds another dataset ({other.id}) for this type, data id "
                                  f"and run")
        return "absent", ""
    if (found.datasetType.name, found.run, found.dataId.required) != (ref.datasetType.name, ref.run,
                                                                      ref.dataId.required):
        return INCONSISTENT, (f"the destination's dataset {ref.id} is {found.datasetType.name}@{found.run} "
                              f"{found.dataId.required}")
    ours, theirs = _artifacts(source, ref), _artifacts(dest, found)
    if set(ours) != set(theirs):
        return INCONSISTENT, f"artifacts differ: source {sorted(ours)}, destination {sorted(theirs)}"
    for comp, uri in ours.items():
        try:
            a, b = _fingerprint(uri, how), _fingerprint(theirs[comp], how)
        except FileNotFoundError as exc:
            return INCONSISTENT, f"artifact {comp or 'primary'} unreadable: {exc}"
        if a != b:
            return INCONSISTENT, f"artifact {comp or 'primary'} differs ({how}: source {a}, destination {b})"
    return "present", ""


# ---------------------------------------------------------------------------------------------------- transfer
def _transfer(ctx: PromptContext, dest_ref, source, due: list[Due], summary: RowSummary) -> None:
    dest = ctx.butler(dest_ref, writeable=not ctx.dry_run)
    label = dest_ref.label
    todo = []
    for d in due:
        state, why = compare(source, dest, d.ref, ctx.policy.verify)
        if state == "present":
            summary.already_present += 1
        elif state == INCONSISTENT:
            summary.problem(INCONSISTENT, f"{why}; refused", dataset=describe(d.ref), destination=label)
        else:
            todo.append(d)
    if ctx.dry_run:
        summary.would_transfer += len(todo)
        return
    now = ctx.clock()  # the embargo again, by the clock, just before anything leaves
    late = [d for d in todo if d.release > now]
    for d in late:
        summary.problem(HELD, f"still embargoed until {d.release.isoformat()} (now {now.isoformat()})",
                        dataset=describe(d.ref), destination=label)
    refs = [d.ref for d in todo if d.release <= now]
    for start in range(0, len(refs), _BATCH):
        batch = refs[start:start + _BATCH]
        butlerops._retrying(lambda batch=batch: dest.transfer_from(
            source, batch, transfer="copy", skip_missing=True, register_dataset_types=True,
            transfer_dimensions=True), f"transfer_from into {label}")
        for ref in batch:  # verify what landed, whatever transfer_from returned (it skips missing artifacts)
            state, why = compare(source, dest, ref, ctx.policy.verify)
            if state == "present":
                summary.transferred += 1
            else:
                summary.problem(ERROR, f"not verified after the transfer: {why or 'absent'}",
                                dataset=describe(ref), destination=label)


def run_row(ctx: PromptContext, row: PromptRow, *, window: tuple[datetime, datetime] | None = None,
            day_obs: int | None = None) -> dict:
    """One row: resolve, select, compare and transfer into every destination; its summary (``ok``)."""
    if (window is None) == (day_obs is None):
        raise ValueError("give exactly one of window or day_obs")
    if window is not None:
        window = (_aware(window[0]), _aware(window[1]))
        if window[1] <= window[0]:
            raise ValueError(f"empty window [{window[0]}, {window[1]})")
    summary = RowSummary(row.name, ctx.dry_run)
    try:
        now = _aware(ctx.clock())
        source = ctx.source
        types, collections, notes = resolve(source, row)
        summary.dataset_types, summary.collections = [t.name for t in types], collections
        for note in notes:
            log.warning("prompt row %s: %s", row.name, note)
        for dataset_type in types:
            due = select(source, row, dataset_type, collections, summary, now=now, window=window, day_obs=day_obs)
            summary.selected += len(due)
            for dest_ref in ctx.policy.destinations:
                _transfer(ctx, dest_ref, source, due, summary)
    except Exception as exc:  # noqa: BLE001 - the row failed; its summary says so and the next row runs
        log.exception("prompt row %s failed", row.name)
        summary.problem(ERROR, f"{type(exc).__name__}: {exc}"[:500])
    out = summary.to_dict()
    log.info("prompt row %s: %d selected, %d transferred, %d already present, %d would transfer, %d problem(s)",
             row.name, out["selected"], out["transferred"], out["already_present"], out["would_transfer"],
             out["problem_count"])
    return out


def run(ctx: PromptContext, *, window: tuple[datetime, datetime] | None = None, day_obs: int | None = None,
        rows: list[str] | None = None) -> dict:
    """Every row (or the named ones), each isolated from the others; the run summary (``ok`` only if all are)."""
    chosen = [ctx.policy.row(n) for n in rows] if rows else list(ctx.policy.rows)
    results = [run_row(ctx, row, window=window, day_obs=day_obs) for row in chosen]
    return summarize(results, dry_run=ctx.dry_run)


def summarize(results: list[dict], *, dry_run: bool, missing: list[str] = ()) -> dict:
    """The run's summary from its rows' summaries; ``missing``: rows that produced none (their task failed)."""
    keys = ("selected", "transferred", "already_present", "would_transfer", "problem_count")
    out = {k: sum(r[k] for r in results) for k in keys}
    out.update(rows=results, dry_run=dry_run, missing_rows=list(missing),
               ok=bool(results) and not missing and all(r["ok"] for r in results))
    return out


def verdict_lines(summary: dict) -> list[str]:
    """One line per thing asked for and not done, for the failure message (and so the alert)."""
    lines = [f"row {n}: no summary (its task failed before it finished)" for n in summary["missing_rows"]]
    for r in summary["rows"]:
        for p in r["problems"]:
            where = " ".join(str(p[k]) for k in ("destination", "dataset") if p.get(k))
            lines.append(f"row {r['row']}: {p['state']}: {where + ': ' if where else ''}{p['reason']}")
        if r["problem_count"] > len(r["problems"]):
            lines.append(f"row {r['row']}: ... and {r['problem_count'] - len(r['problems'])} more")
    return lines


# ---------------------------------------------------------------------------------------------------- the DAG's run
#: rubin_unembargo_prompt's conf, a closed schema (the Params' JSON schema checks types at trigger time too)
PROMPT_CONF = {"day_obs": (str, int, type(None)), "rows": (list,), "dry_run": (bool,)}


def plan(params: dict, conf: object, *, run_type: str | None, data_interval: tuple | None,
         policy: PromptPolicy) -> list[dict]:
    """The run's units, one per policy row: ``{"row", "window": [start, end] | None, "day_obs", "dry_run"}``.

    A scheduled or backfill run owns its data interval and refuses the manual-only Params (day_obs, rows); a
    manual run names a day_obs (and optionally rows), or else uses its data interval if it has one. Raises
    runs.BadRequest, before any side effect, naming what is wrong."""
    from facility_data.conf import ConfError, check_conf
    from facility_data.rubin.runs import BadRequest
    from facility_data.rubin.windows import parse_day_obs

    try:
        check_conf(conf, PROMPT_CONF, what="rubin_unembargo_prompt")
    except ConfError as exc:
        raise BadRequest(str(exc)) from None
    params = dict(params or {})
    problems = []
    day_obs, problem = parse_day_obs(params.get("day_obs"))
    if problem:
        problems.append(problem)
    rows = params.get("rows") or []
    if not isinstance(rows, list) or not all(isinstance(r, str) for r in rows):
        problems.append(f"rows: must be a list of policy row names, got {rows!r}")
        rows = []
    known = [r.name for r in policy.rows]
    unknown = [r for r in rows if r not in known]
    if unknown:
        problems.append(f"rows: unknown row(s) {unknown}: the policy has {known}")
    dry_run = params.get("dry_run", False)
    if not isinstance(dry_run, bool):
        problems.append(f"dry_run: must be true or false, got {dry_run!r}")
    kind = str(getattr(run_type, "value", run_type) or "").lower()
    named = [k for k in ("day_obs", "rows") if params.get(k) not in (None, "", [])]
    if kind in ("scheduled", "backfill") and named:
        problems.append(f"{kind} runs unembargo exactly their data interval; Params {', '.join(named)} are for "
                        f"manual runs only")
    window = None
    if day_obs is None and not problems:
        if not data_interval or data_interval[0] is None or data_interval[1] is None:
            problems.append("day_obs: a run without a data interval must name a day_obs")
        else:
            window = [_aware(data_interval[0]).isoformat(), _aware(data_interval[1]).isoformat()]
    if problems:
        raise BadRequest("; ".join(problems))
    return [{"row": name, "window": window, "day_obs": day_obs, "dry_run": dry_run}
            for name in (list(dict.fromkeys(rows)) or known)]


def run_unit(ctx: PromptContext, unit: dict) -> dict:
    """One unit of :func:`plan` (one row of the policy) in ``ctx``."""
    window = unit.get("window")
    return run_row(ctx, ctx.policy.row(unit["row"]),
                   window=tuple(datetime.fromisoformat(w) for w in window) if window else None,
                   day_obs=unit.get("day_obs"))
