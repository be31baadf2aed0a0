"""What the operator dashboard shows, as plain data (the pages are in ``dashboard_pages``).

* A Rubin night: every exposure's state and sinks, read live from the sinks by the reconcile's own read-only check
  (:func:`facility_data.rubin.reconcile.check_night`, fast mode, nothing written), with the newest reconcile chart.
* An ALS day: every scan's state from the newest reconcile report of that day, and where each copy is from the
  beamline's ledger (the ledger is what the chain and the reconcile record after verifying a copy).
* One item's journey: an obs_id's task instances (the Rubin DAGs map their tasks by obs_id), or a scan's ledger
  events (each copy names the run that made it).
* Links into the Airflow UI under ``[api] base_url``'s path, so a UI served under a prefix keeps working.

No value shown comes with a server filesystem path: free text (reasons, problems) goes through :func:`scrub`.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from urllib.parse import quote, urlsplit

from facility_data.reports import ReportFile, catalogue

ALS_STATES = ("done", "not_started", "partial", "export_controlled_held", "inconsistent", "error")
# two or more /segments, also right after a colon (butler:/repo), never a URL's //host/...: a server path
_ABS_PATH = re.compile(r"(?<![\w./])(?:/[^\s/'\"()\[\],;:]+){2,}/?")
_REPORT_DAY = re.compile(r"^([0-9]{8})_")
_CHART = re.compile(r"states_[0-9]{8}_[0-9A-Za-z.]+(?:-dry-run)?\.png")


def scrub(text: str) -> str:
    """``text`` with every absolute path (``/a/b...``) replaced by ``<path>``: reasons name what, never where."""
    return _ABS_PATH.sub("<path>", text)


# ------------------------------------------------------------------------------------------- Airflow UI links
def ui_root() -> str:
    """The path the Airflow UI is served under: ``[api] base_url``'s path with one trailing slash (``/`` if none),
    read at call time (the api-server derives its own root path from the same option)."""
    from airflow.configuration import conf

    return urlsplit(conf.get("api", "base_url", fallback="") or "").path.rstrip("/") + "/"


def run_url(dag_id: str, run_id: str, task_id: str | None = None, map_index: int = -1) -> str:
    """The UI page of a run, or of one of its task instances (whose first tab is its log)."""
    url = f"{ui_root()}dags/{quote(dag_id, safe='')}/runs/{quote(run_id, safe='')}"
    if task_id:
        url += f"/tasks/{quote(task_id, safe='')}" + (f"/mapped/{map_index}" if map_index >= 0 else "")
    return url


@dataclass(frozen=True)
class Step:
    """One task instance of an item's journey."""

    dag_id: str
    run_id: str
    task_id: str
    map_index: int
    state: str | None
    start: datetime | None
    end: datetime | None
    try_number: int

    @property
    def url(self) -> str:
        return run_url(self.dag_id, self.run_id, self.task_id, self.map_index)


def task_steps(map_values: list[str], dag_prefix: str) -> dict[str, list[Step]]:
    """map value (an obs_id) -> its task instances in the DAGs whose id starts with ``dag_prefix``, oldest first,
    from Airflow's metadata DB (the current try of each; earlier tries are in the task's log page)."""
    from airflow.models.taskinstance import TaskInstance as TI
    from airflow.utils.session import create_session
    from sqlalchemy import select

    out: dict[str, list[Step]] = {v: [] for v in map_values}
    if not map_values:
        return out
    with create_session() as session:
        for i in range(0, len(map_values), 500):
            rows = session.execute(
                select(TI.rendered_map_index, TI.dag_id, TI.run_id, TI.task_id, TI.map_index, TI.state,
                       TI.start_date, TI.end_date, TI.try_number)
                .where(TI.rendered_map_index.in_(map_values[i:i + 500]), TI.dag_id.startswith(dag_prefix))).all()
            for value, *rest in rows:
                out[value].append(Step(*rest[:4], None if rest[4] is None else str(rest[4]), *rest[5:]))
    for steps in out.values():
        steps.sort(key=lambda s: (s.start or datetime.max.replace(tzinfo=UTC), s.dag_id, s.task_id))
    return out


def dag_of_runs(run_ids: set[str], dag_prefix: str) -> dict[str, str]:
    """run_id -> dag_id for the runs of DAGs starting with ``dag_prefix`` (the ledger records only the run_id)."""
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session
    from sqlalchemy import select

    if not run_ids:
        return {}
    with create_session() as session:
        rows = session.execute(select(DagRun.run_id, DagRun.dag_id).where(
            DagRun.run_id.in_(sorted(run_ids)), DagRun.dag_id.startswith(dag_prefix))).all()
    return {r: d for r, d in rows}


# -------------------------------------------------------------------------------------------------- reports
def newest(reports: list[ReportFile], kind: str, prefix: str, suffix: str) -> dict[str, ReportFile]:
    """Per day (the leading ``YYYYMMDD`` of the file name), the newest report of ``kind`` under ``prefix`` ending
    in ``suffix``: the catalogue is newest first, so the first seen wins."""
    out: dict[str, ReportFile] = {}
    for r in reports:
        name = r.relative.rsplit("/", 1)[-1]
        m = _REPORT_DAY.match(name)
        if r.kind == kind and r.relative.startswith(prefix) and name.endswith(suffix) and m:
            out.setdefault(m.group(1), r)
    return out


def rubin_chart(reports: list[ReportFile], instrument: str, day_obs: int) -> ReportFile | None:
    """The newest reconcile chart whose nights include ``day_obs``."""
    night = str(day_obs)
    return next((r for r in reports if r.kind == "rubin_reconcile" and r.relative.endswith(".png")
                 and r.relative.startswith(f"rubin_reconcile/{instrument}/")
                 and r.nights and r.nights[0] <= night <= r.nights[1]), None)


# ---------------------------------------------------------------------------------------------------- Rubin
def rubin_night(instrument: str, day_obs: int, *, context_factory=None, now: datetime | None = None):
    """The reconcile's fast, read-only check of one night, read from the sinks now (a NightResult)."""
    from facility_data.rubin import reconcile, steps
    from facility_data.rubin.policy import load_policy

    ctx = context_factory() if context_factory else steps.Context(load_policy(), dry_run=True)
    return reconcile.check_night(ctx, instrument, day_obs, now=now or datetime.now(UTC))


def rubin_instruments() -> list[str]:
    from facility_data.rubin.policy import load_policy

    return sorted({row.instrument for row in load_policy().rows})


# ------------------------------------------------------------------------------------------------------ ALS
@dataclass
class ScanRow:
    scan: str  # raw/<folder>/<file>.h5, relative to the beamline's raw root
    state: str  # a reconcile state, or "not reconciled" (in the ledger, in no report yet)
    step: str | None = None
    reason: str = ""
    copies: dict[str, str] = field(default_factory=dict)  # location -> "present at <endpoint>" / "deleted"
    run_id: str | None = None  # the run that made the newest copy
    dag_id: str | None = None


@dataclass
class AlsDay:
    beamline: str
    day: str  # YYYY-MM-DD
    report: ReportFile | None  # the newest reconcile report of the day (json)
    report_written: datetime | None
    dry_run: bool | None
    scans: list[ScanRow]
    chart: str | None = None  # the report's own chart (states_<day>_<stamp>.png), relative to the reports root

    @property
    def counts(self) -> dict[str, int]:
        states = list(ALS_STATES) + sorted({s.state for s in self.scans} - set(ALS_STATES))
        return {st: sum(1 for s in self.scans if s.state == st) for st in states}


def als_beamlines() -> dict:
    from facility_data.als.beamline import load_beamlines

    return {bl.id: bl for bl in load_beamlines()}


def _scan_day(scan: str) -> str | None:
    m = re.match(r"([0-9]{4})([0-9]{2})([0-9]{2})", scan.rsplit("/", 1)[-1])
    return f"{m.group(1)}-{m.group(2)}-{m.group(3)}" if m else None


class _NoLedger:
    """A beamline whose ledger file does not exist yet: nothing recorded (the dashboard never creates one)."""

    def copies(self, *a, **k):
        return []

    def events(self, *a, **k):
        return []


def _ledger(bl):
    from facility_data.als.ledger import Ledger

    return Ledger(bl.ledger_file()) if bl.ledger_file().is_file() else _NoLedger()


def als_report_days(reports: list[ReportFile], beamline: str) -> dict[str, ReportFile]:
    """YYYYMMDD -> the newest reconcile report (json) of that acquisition day."""
    return newest(reports, "als_reconcile", f"als_reconcile/{beamline}/", ".json")


def als_day(bl, day: date, root: Path, reports: list[ReportFile] | None = None) -> AlsDay:
    """The scans of one acquisition day: states from the newest reconcile report, copies from the ledger."""
    reports = catalogue(root) if reports is None else reports
    report = als_report_days(reports, bl.id).get(f"{day:%Y%m%d}")
    rows: dict[str, ScanRow] = {}
    dry_run = chart = None
    if report is not None:
        data = json.loads((root / report.relative).read_text())
        dry_run = bool(data.get("dry_run"))
        name = data.get("chart")  # a bare file name beside the report, and only if retention has not removed it
        if isinstance(name, str) and _CHART.fullmatch(name) and (root / report.relative).with_name(name).is_file():
            chart = f"{report.relative.rsplit('/', 1)[0]}/{name}"
        for s in data.get("scans", []):
            if s.get("day") in (day.isoformat(), "unknown"):
                rows[s["scan"]] = ScanRow(s["scan"], s["state"], s.get("step"), scrub(s.get("reason", "")))
    ledger = _ledger(bl)
    copies = [c for c in ledger.copies(bl.id, state=None) if _scan_day(c.scan) == day.isoformat()]
    newest_run: dict[str, tuple[str, str]] = {}
    for e in ledger.events(bl.id):
        if e["action"] == "copy" and e.get("run_id") and _scan_day(e.get("scan") or "") == day.isoformat():
            newest_run[e["scan"]] = (e["time"], e["run_id"])
    for c in copies:
        row = rows.setdefault(c.scan, ScanRow(c.scan, "not reconciled", reason="in the ledger, in no reconcile "
                                                                              "report of this day yet"))
        row.copies[c.location] = f"present at {c.endpoint}" if c.state == "present" else c.state
    dags = dag_of_runs({r for _, r in newest_run.values()}, f"{bl.id}_")
    for scan, (_, run_id) in newest_run.items():
        if scan in rows:
            rows[scan].run_id, rows[scan].dag_id = run_id, dags.get(run_id)
    return AlsDay(bl.id, day.isoformat(), report, report.modified if report else None, dry_run,
                  sorted(rows.values(), key=lambda r: r.scan), chart)


@dataclass
class Event:
    time: str
    what: str
    run_id: str | None = None
    dag_id: str | None = None


def als_journey(bl, q: str, root: Path, reports: list[ReportFile]) -> tuple[str, list[Event], ScanRow | None] | None:
    """A scan's journey: its ledger events (recorded, each verified copy with its run, each deletion) and its state
    in the newest reconcile report of its day. ``q``: the scan (``raw/<folder>/<file>.h5``), the path the watcher
    reported, or the file name. None when the beamline knows no such scan."""
    ledger = _ledger(bl)
    events = ledger.events(bl.id)
    scans = {e["key"]: e.get("file_path") for e in events if e["action"] == "scan"}
    scans.update({e["scan"]: None for e in events if e["action"] == "copy" and e.get("scan")})
    match = next((s for s, watcher in scans.items()
                  if q in (s, watcher) or q.endswith("/" + s) or s.rsplit("/", 1)[-1] == q), None)
    day = _scan_day(match or q)
    state = None
    if day is not None:
        report = als_report_days(reports, bl.id).get(day.replace("-", ""))
        if report is not None:
            data = json.loads((root / report.relative).read_text())
            for s in data.get("scans", []):
                if s["scan"] == match or (match is None and (q.endswith("/" + s["scan"]) or q == s["scan"]
                                                             or s["scan"].rsplit("/", 1)[-1] == q)):
                    match = s["scan"]
                    written = f"{report.modified:%Y-%m-%d %H:%M} UTC"
                    state = ScanRow(s["scan"], s["state"], s.get("step"),
                                    f"{scrub(s.get('reason', ''))} (reconcile report written {written})")
    if match is None:
        return None
    keys = {e["key"] for e in events if e["action"] == "copy" and e.get("scan") == match}
    out: list[Event] = []
    for e in events:
        if e["action"] == "scan" and e["key"] == match:
            held = "export-controlled" if e.get("export_controlled") else "not export-controlled"
            out.append(Event(e["time"], f"recorded by the new-file run ({held})"))
        elif e["action"] == "copy" and e.get("scan") == match:
            out.append(Event(e["time"], f"verified copy at {e['location']} ({e.get('endpoint')})", e.get("run_id")))
        elif e["action"] == "delete" and e["key"] in keys:
            out.append(Event(e["time"], f"deleted at {e['location']}: {scrub(str(e.get('reason', '')))}"))
    dags = dag_of_runs({e.run_id for e in out if e.run_id}, f"{bl.id}_")
    for e in out:
        e.dag_id = dags.get(e.run_id) if e.run_id else None
    return match, out, state


# ---------------------------------------------------------------------------------------------------- chart
def als_chart_png(beamline: str, days: list[AlsDay]) -> bytes:
    """The ALS reconcile's per-day chart: scans per state on each day, from the newest report of each day."""
    from facility_data.charts import states_chart_png

    states = list(ALS_STATES) + sorted({s for d in days for s in d.counts} - set(ALS_STATES))
    return states_chart_png([(d.day, d.counts) for d in days], states=states,
                            title=f"Reconcile state per acquisition day ({beamline})", ylabel="scans")
