"""Reconcile one beamline: find every scan whose chain stopped, say where it stopped, repair what the chain would.

A run lists every raw scan at the beamline's raw locations (``spot`` if configured, ``data``, ``nersc``) and in the
ledger, keeps those acquired in the run's date range (the ``YYYYMMDD`` that starts the file name), and classifies
each:

* ``done``: every raw copy the chain makes is there and equal (pruned copies, recorded as deleted, count), and the
  reconstruction the decision settings ask for is at data832 scratch.
* ``not_started``: only at the source, nothing in the ledger (a lost trigger).
* ``partial``: the chain stopped; ``step`` is the first missing step (``copy_spot_to_data``,
  ``copy_data_to_nersc``, ``scicat_ingest``, ``reconstruction``).
* ``export_controlled_held``: export-controlled, complete at ALS, and (as it must) never at NERSC.
* ``inconsistent``: a copy whose size or checksum differs from the source or the ledger, or a copy the ledger
  records as present that is gone. Never repaired: somebody has to look.
* ``error``: the scan cannot be judged (symlink, bad name, unreadable, export-controlled data found off site).

Repair runs the normal chain's steps, which are idempotent: the same transfer backends (checked by the safety
policy before any byte moves) and :func:`facility_data.als.steps.record_copy` (verify size + checksum, record in
the ledger). The NERSC copy is decided by :func:`facility_data.als.steps.nersc_copy_decision`, exactly as in
``<id>_new_file``: a scan the new-file DAG never recorded has an unknown export-control status, so it is copied to
data832 (on site) but never off site; the run fails with the reason until someone runs ``<id>_new_file`` for it.

SciCat: a repairing run (not a dry run, ``repair`` on) re-runs the chain's ingest for every scan whose raw copies
are complete; :func:`facility_data.als.scicat_ingest.ingest_scan` is idempotent (it finds the dataset by source
folder and name and completes what is missing), so a failed ingest is retried and a good one only confirmed. A
failure leaves the scan ``partial`` at ``scicat_ingest`` and fails the run. Runs that do not repair do not ask
SciCat: their scans carry ``unchecked: ["scicat_ingest"]``.

A missing reconstruction (one the decision settings enable, not at data832 scratch) is re-announced: the DAG emits
the same asset event ``<id>_new_file`` would (a target off site only when ``leave_site_decision`` allows it), and
the scan stays ``partial`` at ``reconstruction`` (the run fails) until the reconstruction DAG has written it: an
announcement is not a result.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

from facility_data.als.beamline import Beamline
from facility_data.als.inventory import Item, backend_for, inspect
from facility_data.als.ledger import Ledger
from facility_data.als.paths import ScanPath, ScanPathError, scan_from_key
from facility_data.als.prune import discover
from facility_data.als.steps import (
    endpoints_for,
    export_evidence,
    leave_site_decision,
    nersc_copy_decision,
    record_copy,
    scan_record,
)
from facility_data.conf import ConfError, check_conf
from facility_data.safety import SafetyError, export_status
from facility_data.transfer.endpoints import Endpoint

log = logging.getLogger(__name__)

STATES = ("done", "not_started", "partial", "export_controlled_held", "inconsistent", "error")
REPAIRABLE = ("not_started", "partial")
RAW_ROLES = ("spot", "data", "nersc")
#: The manual conf's closed schema (a misspelt ``dry-run`` must never be silently ignored).
RECONCILE_CONF = {"first_day": (str, type(None)), "last_day": (str, type(None)), "dry_run": (bool,),
                  "repair": (bool,)}
MAX_DAYS = 366
_DAY = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}", re.ASCII)


@dataclass(frozen=True)
class Request:
    first_day: date
    last_day: date
    dry_run: bool
    repair: bool


def _day(value: str, key: str) -> date:
    if not _DAY.fullmatch(value):
        raise ConfError(f"conf key {key} must be a date YYYY-MM-DD, got {value!r}")
    try:
        return date.fromisoformat(value)
    except ValueError as exc:
        raise ConfError(f"conf key {key}: {value!r} is not a date ({exc})") from None


def check_request(bl: Beamline, conf: object, *, today: date) -> Request:
    """The run's conf (as given, not Airflow's merged params) as a :class:`Request`; :class:`ConfError` naming the
    field before anything is read or touched. Without dates: the last ``reconcile.lookback_days`` days."""
    conf = check_conf(conf, RECONCILE_CONF, what=f"{bl.id}_reconcile")
    last = _day(conf["last_day"], "last_day") if conf.get("last_day") is not None else today
    if conf.get("first_day") is not None:
        first = _day(conf["first_day"], "first_day")
    else:
        first = last - timedelta(days=bl.reconcile.lookback_days - 1)
    if last > today:
        raise ConfError(f"conf key last_day {last} is in the future (today is {today})")
    if first > last:
        raise ConfError(f"conf key first_day {first} is after last_day {last}")
    if (last - first).days + 1 > MAX_DAYS:
        raise ConfError(f"conf keys first_day..last_day span {(last - first).days + 1} days; at most {MAX_DAYS}")
    return Request(first, last, bool(conf.get("dry_run", False)), bool(conf.get("repair", True)))


@dataclass
class ScanState:
    scan: str  # raw/<folder>/<file>.h5
    key: str
    day: str  # YYYY-MM-DD
    state: str  # one of STATES
    reason: str
    step: str | None = None  # the first missing step (not_started / partial)
    export_controlled: bool | None = None
    copies: dict[str, dict] = field(default_factory=dict)  # role -> {size, checksum} as found live
    repaired: list[str] = field(default_factory=list)  # steps this run did (or, dry run, would do)
    repairable: bool = True  # False: the chain's own rules (or a missing source) forbid repairing it here
    scicat: str | None = None  # the SciCat dataset pid, when this run ingested (or confirmed) it
    announce: list[str] = field(default_factory=list)  # reconstruction targets this run re-announces it to
    unchecked: list[str] = field(default_factory=list)  # steps this run could not check (never shown as done)


@dataclass
class ReconcileReport:
    beamline: str
    started: str
    first_day: str
    last_day: str
    dry_run: bool
    repair: bool
    scans: list[ScanState] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # raw locations that could not be listed
    in_flight: list[str] = field(default_factory=list)  # scans left alone: their chain may still be running
    finished: str = ""
    files: list[str] = field(default_factory=list)

    def count(self, state: str) -> int:
        return sum(1 for s in self.scans if s.state == state)

    def problems(self) -> list[str]:
        """What fails the run: every location not listed and every scan not done or held after this run."""
        return self.skipped + [f"{s.state} {s.scan}" + (f" at {s.step}" if s.step else "") + f": {s.reason}"
                               for s in self.scans if s.state not in ("done", "export_controlled_held")]

    def as_dict(self, scans: list[ScanState] | None = None) -> dict:
        scans = self.scans if scans is None else scans
        head = {k: v for k, v in asdict(self).items() if k not in ("scans", "files")}
        return {**head, "scans": [asdict(s) for s in scans],
                "counts": {st: sum(1 for s in scans if s.state == st) for st in STATES}}

    def text(self, day: str, scans: list[ScanState]) -> str:
        mode = "DRY RUN (nothing copied or recorded)" if self.dry_run else ("repairing" if self.repair else
                                                                            "report only (repair off)")
        lines = [f"Reconcile report for {self.beamline}, acquisition day {day}: {mode}",
                 f"run {self.started} .. {self.finished}, range {self.first_day} .. {self.last_day}",
                 "counts: " + ", ".join(f"{st} {sum(1 for s in scans if s.state == st)}" for st in STATES)]
        lines += [f"SKIPPED {s}" for s in self.skipped]
        lines += [f"IN FLIGHT (left alone) {s}" for s in self.in_flight]
        for s in scans:
            step = f" at {s.step}" if s.step else ""
            fixed = f" [repaired: {', '.join(s.repaired)}]" if s.repaired else ""
            lines.append(f"{s.state.upper():22s} {s.scan}{step}{fixed} - {s.reason}")
        return "\n".join(lines) + "\n"


_HELD = "held"


def scan_day(scan: ScanPath) -> date | None:
    """The acquisition day from the file name's leading YYYYMMDD (None if it is not a date)."""
    head = scan.filename[:8]
    try:
        return datetime.strptime(head, "%Y%m%d").date() if head.isascii() and head.isdigit() else None
    except ValueError:
        return None


class Reconcile:
    """One reconcile pass over one beamline."""

    def __init__(self, bl: Beamline, endpoints: dict[str, Endpoint], ledger: Ledger, request: Request, *,
                 decision_override=None, run_id: str | None = None, backend=backend_for,
                 ingest: Callable[[dict], str] | None = None, now: datetime | None = None):
        """``ingest``: the SciCat ingest of a scan record (see :func:`scicat_ingester`); None when SciCat is off."""
        self.bl, self.endpoints, self.ledger, self.request = bl, endpoints, ledger, request
        self.eps = endpoints_for(bl, endpoints)
        self.roles = [r for r in RAW_ROLES if r in bl.locations]
        self.backend = backend
        self.run_id = run_id
        self.ingest = ingest if bl.scicat.enabled else None
        self.now = now or datetime.now(UTC)
        self.decisions = bl.effective_decisions(decision_override)
        self.report = ReconcileReport(bl.id, datetime.now(UTC).isoformat(), request.first_day.isoformat(),
                                      request.last_day.isoformat(), request.dry_run, request.repair)
        self._events = ledger.events(bl.id)
        self.links: dict[str, set[str]] = {}  # role -> symlink keys (never followed)

    # ---- listing ------------------------------------------------------------------------------------------
    def keys(self) -> list[str]:
        """Every raw scan key at the raw locations and in the ledger (scans and copies)."""
        keys: set[str] = set()
        for role in self.roles:
            ep, loc = self.eps[role], self.bl.location(role)
            try:
                found, links = discover(self.backend(ep), ep, loc)
            except Exception as exc:  # one unreachable location must not hide the others
                self.report.skipped.append(f"location {role}: cannot list {ep.name}: {type(exc).__name__}: {exc}")
                continue
            keys.update(found)
            keys.update(k for k in links if "/" in k)
            self.links[role] = set(links)
        raw = f"{self.bl.paths.raw_dir}/"
        keys.update(e["key"].removeprefix(raw) for e in self._events if e["action"] == "scan")
        keys.update(c.key for role in self.roles for c in self.ledger.copies(self.bl.id, role, state=None))
        return sorted(keys)

    def _in_range(self, key: str) -> tuple[ScanPath | None, date | None]:
        try:
            scan = scan_from_key(key, self.bl.rules)
        except ScanPathError:
            return None, None
        return scan, scan_day(scan)

    def in_flight(self, scan: ScanPath) -> str | None:
        """Why the scan's chain may still be running (a recent ledger event, or a recently written source file
        on a local endpoint), or None. Globus listings give no times: only the ledger guards those."""
        settle = timedelta(minutes=self.bl.reconcile.settle_minutes)
        times = [datetime.fromisoformat(e["time"]) for e in self._events
                 if e["key"] in (scan.relative, scan.key) and e["action"] in ("scan", "copy")]
        if times and self.now - max(times) < settle:
            return f"{scan.relative}: ledger event at {max(times).isoformat()}, less than {settle} ago"
        ep = self.eps[self.bl.source_role]
        if ep.kind == "local":
            local = ep.local_path(self.bl.location(self.bl.source_role).path_of(scan.key))
            try:
                written = datetime.fromtimestamp(local.lstat().st_mtime, UTC)
            except FileNotFoundError:
                return None
            if self.now - written < settle:
                return f"{scan.relative}: written at the source at {written.isoformat()}, less than {settle} ago"
        return None

    # ---- classification -----------------------------------------------------------------------------------
    def _fingerprint(self, relative: str) -> tuple[int | None, str | None]:
        """The content fingerprint the new-file DAG recorded (the first one: the ledger keeps it)."""
        for e in self._events:
            if e["action"] == "scan" and e["key"] == relative and e.get("checksum"):
                return e.get("size"), e["checksum"]
        return None, None

    def _chain(self) -> list[tuple[str, str, str]]:
        steps = [("copy_spot_to_data", "spot", "data")] if self.bl.source_role == "spot" else []
        if "nersc" in self.bl.locations:
            steps.append(("copy_data_to_nersc", "data", "nersc"))
        return steps

    def classify(self, scan: ScanPath) -> ScanState:
        try:
            return self._classify(scan)
        except Exception as exc:  # one scan that cannot be judged must not stop the others
            log.exception("reconcile %s: cannot classify %s", self.bl.id, scan.relative)
            return ScanState(scan.relative, scan.key, str(scan_day(scan)), "error", f"{type(exc).__name__}: {exc}")

    def _classify(self, scan: ScanPath) -> ScanState:
        st = ScanState(scan.relative, scan.key, str(scan_day(scan)), "error", "")
        linked = [r for r in self.roles if scan.key in self.links.get(r, ()) or scan.folder in self.links.get(r, ())]
        if linked:
            st.reason = f"a symlink at {', '.join(linked)}: not followed; replace it by the data or remove it"
            return st
        live: dict[str, Item] = {}
        for role in self.roles:
            ep = self.eps[role]
            item = inspect(self.backend(ep), ep, self.bl.location(role).path_of(scan.key))
            if item is not None:
                if item.is_dir:
                    st.reason = f"{role} holds a directory where the scan file should be"
                    return st
                live[role] = item
                st.copies[role] = {"size": item.size, "checksum": item.checksum}
        recorded = {r: self.ledger.copy(self.bl.id, r, scan.key) for r in self.roles}
        fp_size, fp_sum = self._fingerprint(scan.relative)
        origin = next((live[r] for r in self.roles if r in live), None)
        if origin is None:
            st.reason = "recorded in the ledger but no raw copy is at any location"
            return st
        evidence = export_evidence(self.bl, self.ledger, scan.relative, declared=None, size=origin.size,
                                   checksum=origin.checksum)
        st.export_controlled = export_status(evidence)[0]
        # Same bytes everywhere: each live copy against the origin, the recorded fingerprint and its ledger row.
        for role, item in live.items():
            for what, size, checksum in (("the source copy", origin.size, origin.checksum),
                                         ("the fingerprint recorded at validation", fp_size, fp_sum),
                                         ("its ledger record", *((recorded[role].size, recorded[role].checksum)
                                                                 if recorded[role] and recorded[role].state ==
                                                                 "present" else (None, None)))):
                if size is None:
                    continue
                if item.size != size or (checksum and item.checksum and item.checksum != checksum):
                    st.state = "inconsistent"
                    st.reason = (f"the copy at {role} ({self.eps[role].name}, {item.size} B) differs from {what} "
                                 f"({size} B{', checksum differs' if item.size == size else ''}); not repaired")
                    return st
        for role, rec in recorded.items():
            if rec is not None and rec.state == "present" and role not in live:
                st.state = "inconsistent"
                st.reason = f"the ledger records a verified copy at {role} ({rec.endpoint}:{rec.path}) that is gone"
                return st
        if st.export_controlled and "nersc" in live:
            st.reason = "EXPORT-CONTROLLED data found at NERSC (off site); report it to the export-control officer"
            return st
        known = any(e["action"] == "scan" and e["key"] == scan.relative for e in self._events) or any(recorded.values())
        for step, src, dst in self._chain():
            if dst in live or (recorded[dst] is not None and recorded[dst].state == "deleted"):
                continue  # there, or pruned after it was verified
            if dst == "nersc":
                if not self._send_to_nersc(scan):
                    continue
                refusal = self._nersc_refusal(scan, st, origin)
                if refusal == _HELD:
                    continue
                if refusal is not None:
                    st.state, st.step, st.reason, st.repairable = "partial", step, refusal, False
                    return st
            st.state = "partial" if known or src != self.bl.source_role else "not_started"
            st.step = step
            st.reason = (f"at {src} only: a lost trigger (never seen by {self.bl.id}_new_file)"
                         if st.state == "not_started" else f"no copy at {dst} ({self.eps[dst].name})")
            if src not in live:
                st.reason += f"; and the copy at {src} it is made from is gone: not repairable here"
                st.repairable = False
            return st
        missing = self._missing_reconstruction(scan, st, origin)
        if missing:
            st.state, st.step, st.reason = "partial", "reconstruction", missing
            return st
        if st.export_controlled and "nersc" in self.bl.locations and self._send_to_nersc(scan):
            st.state, st.reason = "export_controlled_held", "complete at ALS; export-controlled, so never at NERSC"
        else:
            st.state, st.reason = "done", "every raw copy is present and verified"
        return st

    def _send_to_nersc(self, scan: ScanPath) -> bool:
        """What the scan's new-file run asked for (the ledger), else the beamline's default."""
        recorded = self.ledger.send_to_nersc(self.bl.id, scan.relative)
        return self.bl.send_to_nersc if recorded is None else recorded

    def _record(self, scan: ScanPath, st: ScanState, origin: Item | None) -> dict:
        record = _flat(scan_record(self.bl, scan, export_controlled=st.export_controlled,
                                   send_to_nersc=self._send_to_nersc(scan)))
        if origin is not None:
            record["fingerprint"] = {"size": origin.size, "checksum": origin.checksum}
        return record

    def _nersc_refusal(self, scan: ScanPath, st: ScanState, origin: Item) -> str | None:
        """Why the NERSC copy must not be made, by the new-file DAG's own decision: ``_HELD`` (export-controlled,
        stays at ALS as it must), another reason (the run fails), or None when it may be made."""
        try:
            go, reason = nersc_copy_decision(self.bl, self.endpoints, self.ledger, self._record(scan, st, origin))
        except SafetyError as exc:
            return f"{exc} Not repairable here: run {self.bl.id}_new_file for it with is_export_control set"
        if go:
            return None
        return _HELD if st.export_controlled else f"{reason}; not repairable here"

    def _missing_reconstruction(self, scan: ScanPath, st: ScanState, origin: Item) -> str | None:
        """Why the reconstruction the decision settings ask for is missing at data832 scratch (None: it is there,
        or none is asked for); sets ``st.announce`` to the targets the new-file DAG would announce it to."""
        targets = []
        for t in self.decisions.enabled():
            try:
                if t == "local" or leave_site_decision(self.bl, self.endpoints, self.ledger,
                                                       self._record(scan, st, origin), t).allowed:
                    targets.append(t)
            except SafetyError:  # unknown export-control status: never announced off site, exactly as the chain
                pass
        if not targets or "data_scratch" not in self.bl.locations:
            return None
        ep, loc = self.eps["data_scratch"], self.bl.location("data_scratch")
        gone = [what for what, key in (("TIFF stack", scan.tiff_dir), ("OME-Zarr", scan.zarr_dir))
                if inspect(self.backend(ep), ep, loc.path_of(key)) is None
                and not ((rec := self.ledger.copy(self.bl.id, "data_scratch", key)) and rec.state == "deleted")]
        if not gone:
            return None
        st.announce = targets
        return f"no {' or '.join(gone)} at {ep.name} although {', '.join(targets)} reconstruction is enabled"

    # ---- repair -------------------------------------------------------------------------------------------
    def _transfer(self, src: Endpoint, src_path: str, dst: Endpoint, dst_path: str, *, export_controlled: bool,
                  label: str) -> None:
        """One copy through the same backends as the chain's GlobusTransferOperator (the safety policy is checked
        by the backend before any byte moves)."""
        from facility_data.transfer import LocalTransfer, backend_kind

        if backend_kind(src, dst) == "local":
            backend = LocalTransfer()
        else:
            from facility_data.hooks.globus import GlobusHook

            backend = GlobusHook().get_transfer_backend()
        backend.transfer(src, src_path, dst, dst_path, export_controlled=export_controlled, verify_checksum=True,
                         label=label, deadline_seconds=self.bl.transfer_deadline_minutes * 60)

    def repair(self, scan: ScanPath, st: ScanState) -> ScanState:
        """Make the missing raw copies, in chain order, each verified and recorded; then classify again."""
        for _ in range(len(self._chain())):
            if st.state not in REPAIRABLE or st.step not in {s for s, _, _ in self._chain()}:
                return st
            if not st.repairable:
                return st
            step, src, dst = next(c for c in self._chain() if c[0] == st.step)
            if self.request.dry_run:
                st.repaired.append(f"{step} (dry run: would copy)")
                return st
            loc_src, loc_dst = self.bl.location(src), self.bl.location(dst)
            origin = inspect(self.backend(self.eps[src]), self.eps[src], loc_src.path_of(scan.key))
            record = self._record(scan, st, origin)
            log.info("reconcile %s: repairing %s (%s)", self.bl.id, scan.relative, step)
            self._transfer(self.eps[src], loc_src.path_of(scan.key), self.eps[dst], loc_dst.path_of(scan.key),
                           export_controlled=st.export_controlled is not False, label=f"{self.bl.id} reconcile {step}")
            record_copy(self.bl, self.endpoints, self.ledger, record, source=src, destination=dst,
                        run_id=self.run_id)
            done = [*st.repaired, step]
            self._events = self.ledger.events(self.bl.id)
            st = self.classify(scan)
            st.repaired = done
        return st

    def catalogue(self, scan: ScanPath, st: ScanState) -> ScanState:
        """The chain's SciCat ingest again, once the raw copies are complete (idempotent: confirms or completes)."""
        raw_complete = st.state in ("done", "export_controlled_held") or st.step == "reconstruction"
        if not self.bl.scicat.enabled or not raw_complete:
            return st
        if self.ingest is None or self.request.dry_run or not self.request.repair:
            st.unchecked.append("scicat_ingest")
            return st
        try:
            st.scicat = self.ingest(self._record(scan, st, None))
        except Exception as exc:  # the chain only warns; here the scan is not done, so the run fails
            st.state, st.step, st.repairable = "partial", "scicat_ingest", False
            st.reason = f"SciCat ingest failed again: {type(exc).__name__}: {exc}"
        return st

    def _reannounce(self, st: ScanState) -> ScanState:
        if st.step != "reconstruction" or not st.announce:
            st.announce = []
            return st
        if self.request.dry_run or not self.request.repair:
            if self.request.dry_run:
                st.repaired.append(f"announce to {', '.join(st.announce)} (dry run: would announce)")
            st.announce = []
            return st
        st.repaired += [f"announce_{t}" for t in st.announce]
        st.reason += (f"; re-announced to {', '.join(st.announce)} by this run: done once "
                      f"{', '.join(f'{self.bl.id}_recon_{t}' for t in st.announce)} has written it")
        return st

    # ---- the pass -----------------------------------------------------------------------------------------
    def run(self) -> ReconcileReport:
        first, last = self.request.first_day, self.request.last_day
        keys = self.keys()
        for role, links in self.links.items():  # a linked folder hides its scans: never followed, always reported
            for folder in sorted(k for k in links if "/" not in k):
                self.report.scans.append(ScanState(f"{self.bl.paths.raw_dir}/{folder}", folder, "unknown", "error",
                                                   f"the folder at {role} is a symlink: not followed, its scans are "
                                                   "not reconciled; replace it by the data or remove it"))
        for key in keys:
            scan, day = self._in_range(key)
            if scan is None:
                self.report.scans.append(ScanState(f"{self.bl.paths.raw_dir}/{key}", key, "unknown", "error",
                                                   "not a scan name of the path contract"))
                continue
            if day is None or not first <= day <= last:
                continue
            busy = self.in_flight(scan)
            if busy:
                log.info("reconcile %s: in flight, left alone: %s", self.bl.id, busy)
                self.report.in_flight.append(busy)
                continue
            st = self.classify(scan)
            if self.request.repair and st.state in REPAIRABLE:
                try:
                    st = self.repair(scan, st)
                except Exception as exc:
                    log.exception("reconcile %s: repair of %s failed", self.bl.id, scan.relative)
                    st.state, st.reason = "error", f"repair at {st.step} failed: {type(exc).__name__}: {exc}"
            st = self.catalogue(scan, st)
            st = self._reannounce(st)
            log.info("reconcile %s %s %s%s: %s", self.bl.id, st.state, st.scan, f" at {st.step}" if st.step else "",
                     st.reason)
            self.report.scans.append(st)
        self.report.finished = datetime.now(UTC).isoformat()
        return self.report


def _flat(record: dict) -> dict:
    """A scan record plus the flat ``<role>_<what>`` keys the chain's tasks read (``data_raw``)."""
    return {**record, **{f"{role}_{what}": p for role, paths in record["paths"].items() for what, p in paths.items()}}


def scicat_ingester(bl: Beamline, endpoints: dict[str, Endpoint], hook) -> Callable[[dict], str]:
    """The chain's SciCat ingest of one scan record (as ``<id>_new_file``'s ``ingest_scicat`` does it), through
    ``hook`` (a SciCatHook or SciCatClient); returns the dataset pid, raises on failure."""
    from facility_data.als.scicat_ingest import ingest_scan

    def ingest(record: dict) -> str:
        if bl.scicat.h5_root:
            h5 = Path(bl.scicat.h5_root) / record["relative"]
        else:
            h5 = endpoints_for(bl, endpoints)["data"].local_path(record["data_raw"])
        return ingest_scan(hook, h5, source_path=record["file_path"], source_root=bl.scicat.source_root,
                           storage_root=bl.scicat.storage_root,
                           owner_group_fallback=bl.scicat.owner_group_fallback or bl.beamline)

    return ingest


def announcements(bl: Beamline, report: ReconcileReport) -> dict[str, list[dict]]:
    """target -> the asset-event extras to emit (as ``<id>_new_file``'s ``announce_<target>`` does), one per scan."""
    out: dict[str, list[dict]] = {t: [] for t in bl.recon_targets}
    for st in report.scans:
        checksum = next((c["checksum"] for c in st.copies.values() if c.get("checksum")), None)
        for target in st.announce:
            out[target].append({"file_path": f"{bl.paths.watcher_prefix.rstrip('/')}/{st.scan}",
                                "relative": st.scan, "export_controlled": st.export_controlled is not False,
                                "sizes": {role: c["size"] for role, c in st.copies.items()}, "checksum": checksum})
    return out


def reports_dir(bl: Beamline) -> Path:
    """``<reports>/als_reconcile/<id>/``: its own directory, so its retention never touches the prune audits."""
    return bl.reports_path().parent.parent / "als_reconcile" / bl.id


def write_report(report: ReconcileReport, directory: Path) -> ReconcileReport:
    """One ``<YYYYMMDD>_<stamp>[-dry-run].json`` and ``.txt`` per acquisition day of the range (a day with no scan
    too: "nothing there" is an answer), and beside them the day's chart of scans per state,
    ``states_<YYYYMMDD>_<stamp>[-dry-run].png``, only for a day with scans (as the Rubin reports skip empty nights:
    a daily reconcile of a quiet week would otherwise draw a blank chart a day); then the ``als_reconcile``
    retention of ``include/reports.yaml``."""
    from facility_data.charts import write_states_chart
    from facility_data.reports import apply_retention

    directory.mkdir(parents=True, exist_ok=True)
    stamp = datetime.fromisoformat(report.started).strftime("%Y%m%dT%H%M%S.%fZ")
    suffix = "-dry-run" if report.dry_run else ""
    day, last = date.fromisoformat(report.first_day), date.fromisoformat(report.last_day)
    empty: list[str] = []
    while day <= last:
        scans = [s for s in report.scans if s.day == day.isoformat()]
        if day == last:  # names the contract cannot place in a day are reported with the last one
            scans += [s for s in report.scans if s.day == "unknown"]
        base = directory / f"{day:%Y%m%d}_{stamp}{suffix}"
        data = {**report.as_dict(scans), "day": day.isoformat(), "chart": None}
        if scans:  # the chart first, so the report can name it (the dashboard links it from there)
            chart = write_states_chart(
                directory / f"states_{day:%Y%m%d}_{stamp}{suffix}.png", [(day.isoformat(), data["counts"])],
                states=STATES, ylabel="scans",
                title=f"Reconcile state, {report.beamline} acquisition day {day}{' (dry run)' if suffix else ''}")
            data["chart"] = chart.name
        else:
            empty.append(day.isoformat())
        Path(f"{base}.json").write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
        Path(f"{base}.txt").write_text(report.text(day.isoformat(), scans))
        report.files += [f"{base}.json", f"{base}.txt"] + ([str(directory / data["chart"])] if data["chart"] else [])
        day += timedelta(days=1)
    if empty:
        log.info("no reconcile chart for %d day(s) without scans: %s", len(empty), ", ".join(empty))
    apply_retention(directory, "als_reconcile")
    return report
