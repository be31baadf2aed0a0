"""The retention sweep: one pass over every location of a beamline, replacing thousands of scheduled deletions.

For each location with a ``retention_days``, every item (raw ``<folder>/<file>.h5``, or a reconstruction
``<folder>/rec<stem>/`` / ``<folder>/rec<stem>.zarr/``) older than the retention is deleted only when
:mod:`facility_data.safety` allows it: a twin with the same size and checksum exists at each configured check
location. Data of an export-controlled scan (or of a scan the ledger does not know) must keep a verified copy at
ALS. Every decision is logged per item and written to an audit report (JSON + text). ``dry_run`` deletes nothing
and reports what a real sweep would do, treating its would-be deletions as gone so later decisions stay faithful.

Deletion is switched on per location (``delete: true`` in the beamline file); elsewhere even a real sweep only
reports. Symbolic links are never followed or deleted: each is reported as an ``anomaly``, and the rest of its
location is swept. A location that is skipped (endpoint not configured, cannot be listed) and every anomaly or
error is a *problem*: the DAG fails the run with them once the report is written, so the failure callback alerts.

On a Globus collection (whose listings carry no checksum) a copy's checksum comes from the ledger only with its
evidence - a Globus task that SUCCEEDED with verify_checksum and an accepted algorithm - and only while the size
Globus reports now still matches the recorded one; otherwise the item is kept with that reason. A Globus deletion
runs as a Globus delete task with a deadline (``delete_deadline_seconds``), and the item is marked deleted only once
the endpoint no longer has it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from facility_data.als.beamline import Beamline, Location
from facility_data.als.inventory import Item, backend_for, inspect, recorded_evidence
from facility_data.als.ledger import Ledger
from facility_data.safety import Copy, Decision, may_delete, may_delete_site_bound
from facility_data.transfer.base import FileStat, TransferBackend, TransferError
from facility_data.transfer.endpoints import Endpoint
from facility_data.transfer.globus import task_label

log = logging.getLogger(__name__)

ACTIONS = ("deleted", "would_delete", "kept", "anomaly", "error")


@dataclass
class ItemDecision:
    location: str
    key: str
    endpoint: str
    path: str
    action: str  # one of ACTIONS
    reason: str
    age_days: float | None = None
    size: int | None = None
    checksum: str | None = None
    export_controlled: bool | None = None


@dataclass
class PruneReport:
    beamline: str
    started: str
    dry_run: bool
    decisions: list[ItemDecision] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    deletion_enabled: list[str] = field(default_factory=list)  # locations where this sweep may delete
    skipped: list[str] = field(default_factory=list)  # locations not swept, with the reason
    finished: str = ""
    json_path: str = ""
    text_path: str = ""

    def count(self, action: str) -> int:
        return sum(1 for d in self.decisions if d.action == action)

    def problems(self) -> list[str]:
        """What must fail the run: skipped locations, then each anomaly and error (one line each)."""
        return self.skipped + [f"{d.action} {d.location}:{d.key}: {d.reason}" for d in self.decisions
                               if d.action in ("anomaly", "error")]

    def as_dict(self) -> dict:
        return {**asdict(self), "counts": {a: self.count(a) for a in ACTIONS}, "problems": self.problems()}

    def text(self) -> str:
        if self.dry_run:
            mode = "DRY RUN (nothing deleted)"
        elif self.deletion_enabled:
            mode = "deleting in " + ", ".join(self.deletion_enabled)
        else:
            mode = "REPORT ONLY (deletion is off in every location)"
        lines = [f"Prune report for {self.beamline}: {mode}", f"started {self.started}, finished {self.finished}",
                 "counts: " + ", ".join(f"{a} {self.count(a)}" for a in ACTIONS)]
        lines += [f"SKIPPED {s}" for s in self.skipped]
        lines += [f"note: {n}" for n in self.notes]
        for d in self.decisions:
            age = "age ?" if d.age_days is None else f"age {d.age_days:.1f} d"
            lines.append(f"{d.action.upper():13s} {d.location}:{d.key} ({age}) - {d.reason}")
        return "\n".join(lines) + "\n"


def scan_of(location: Location, key: str, raw_dir: str) -> str:
    """The raw scan (``raw/<folder>/<file>.h5``) an item at ``location`` belongs to."""
    if location.kind == "raw":
        return f"{raw_dir}/{key}"
    folder, _, name = key.partition("/")
    stem = name.removeprefix("rec").removesuffix(".zarr")
    return f"{raw_dir}/{folder}/{stem}.h5"


def discover(backend: TransferBackend, endpoint: Endpoint, location: Location) -> tuple[list[str], list[str]]:
    """(items, symlinks) at a location: item keys are ``<folder>/<file>.h5`` (raw) or ``<folder>/rec<stem>[.zarr]``
    (recon); symlinks are the keys of links found where items are looked for (never followed)."""
    if backend.stat(endpoint, location.subdir) is None:
        return [], []  # nothing ever arrived here
    keys, links = [], []
    for folder in backend.list(endpoint, location.subdir):
        name = folder.path.rsplit("/", 1)[-1]
        if folder.is_symlink:
            links.append(name)
            continue
        if not folder.is_dir:
            continue
        for entry in backend.list(endpoint, folder.path):
            leaf = entry.path.rsplit("/", 1)[-1]
            if entry.is_symlink:
                links.append(f"{name}/{leaf}")
            elif location.kind == "raw" and not entry.is_dir and leaf.endswith(".h5"):
                keys.append(f"{name}/{leaf}")
            elif location.kind == "recon" and entry.is_dir and leaf.startswith("rec"):
                keys.append(f"{name}/{leaf}")
    return sorted(keys), sorted(links)


def links_under(backend: TransferBackend, endpoint: Endpoint, path: str) -> list[str]:
    """Paths (relative to ``path``) of the symlinks anywhere in the directory tree at ``path``."""
    out = []
    for entry in backend.list(endpoint, path):
        rel = entry.path.removeprefix(f"{path}/")
        if entry.is_symlink:
            out.append(rel)
        elif entry.is_dir:
            out += [f"{rel}/{sub}" for sub in links_under(backend, endpoint, entry.path)]
    return out


SYMLINK = "symlink: not followed, not deleted; replace it by the data or remove it by hand"


class SymlinkFound(Exception):
    """An item, or the twin it would be checked against, is or contains a symlink: never followed or counted."""


class Sweep:
    """One retention sweep of one beamline."""

    def __init__(self, beamline: Beamline, endpoints: dict[str, Endpoint], ledger: Ledger, *,
                 now: datetime | None = None, dry_run: bool = True,
                 backend: Callable[[Endpoint], TransferBackend] = backend_for, run_id: str | None = None,
                 delete_deadline_seconds: float = 3600.0):
        self.bl = beamline
        self.endpoints = endpoints
        self.ledger = ledger
        self.now = now or datetime.now(UTC)
        self.dry_run = dry_run
        self.backend = backend
        self.run_id = run_id
        self.delete_deadline_seconds = delete_deadline_seconds
        self.unverified: dict[tuple[str, str], str] = {}  # (location, key) -> why its checksum is not trusted
        self.gone: set[tuple[str, str]] = set()  # (location, key) deleted (or would be) during this sweep
        self._listings: dict[tuple[str, str], dict[str, FileStat]] = {}  # (endpoint, dir) -> entries by name
        self.report = PruneReport(beamline=beamline.id, started=self.now.isoformat(), dry_run=dry_run)

    def _endpoint(self, location: Location) -> Endpoint:
        return self.endpoints[location.endpoint]

    def _entry(self, ep: Endpoint, path: str) -> FileStat | None:
        """The listing entry of ``path`` in its parent directory (cached per directory), None if not there."""
        parent, _, leaf = path.rpartition("/")
        if (ep.name, parent) not in self._listings:
            try:
                entries = self.backend(ep).list(ep, parent)
            except TransferError:  # no such directory
                entries = []
            self._listings[ep.name, parent] = {e.path.rsplit("/", 1)[-1]: e for e in entries}
        return self._listings[ep.name, parent].get(leaf)

    def _check_links(self, name: str, ep: Endpoint, path: str) -> None:
        """Raise SymlinkFound if any component of ``path`` (below the endpoint root) or anything in its tree is a
        symlink: a linked twin may be this very item, and a linked file would count as a tree's content."""
        parts = path.split("/")
        entry = None
        for i in range(1, len(parts) + 1):
            entry = self._entry(ep, "/".join(parts[:i]))
            if entry is None:
                return  # not there: nothing to follow
            if entry.is_symlink:
                raise SymlinkFound(f"{name}: {'/'.join(parts[:i])} is a {SYMLINK}")
        if entry is not None and entry.is_dir:
            links = links_under(self.backend(ep), ep, path)
            if links:
                raise SymlinkFound(f"{name}: {path} contains {', '.join(links)}: {SYMLINK}")

    def _copy(self, name: str, key: str) -> tuple[Copy | None, Item | None]:
        """What is at location ``name`` for ``key``: live size (and checksum when knowable), else the ledger's."""
        if (name, key) in self.gone:
            return None, None
        loc = self.bl.locations[name]
        ep = self._endpoint(loc)
        self._check_links(name, ep, loc.path_of(key))
        item = inspect(self.backend(ep), ep, loc.path_of(key))
        if item is None:
            return None, None
        checksum = item.checksum
        if checksum is None:
            # The ledger's checksum is trusted only with its evidence and while the live size still matches.
            evidence, why = recorded_evidence(self.ledger, self.bl.id, name, key, item.size)
            checksum = evidence.checksum if evidence else None
            if evidence is None:
                self.unverified[name, key] = why
        return Copy(location=name, path=key, size=item.size, checksum=checksum), item

    def _age_days(self, name: str, key: str) -> float | None:
        rec = self.ledger.copy(self.bl.id, name, key)
        if rec is not None and rec.state == "present":
            return (self.now - rec.arrived_at).total_seconds() / 86400
        return None

    def _decide(self, name: str, loc: Location, key: str, target: Copy, export_controlled: bool | None) -> Decision:
        twins = [self._copy(other, key)[0] for other in loc.check]
        if export_controlled is False:
            decision = may_delete(target, twins, required_locations=loc.check)
        else:
            site_of = {n: self.endpoints[loc_.endpoint].site.lower() for n, loc_ in self.bl.locations.items()}
            decision = may_delete_site_bound(target, twins, required_locations=loc.check, site_of=site_of,
                                             home_site=self.bl.home_site.lower())
        why = [self.unverified[n, key] for n in (name, *loc.check) if (n, key) in self.unverified]
        if not decision.allowed and why:  # say why a checksum was not known, for the audit
            return Decision(False, f"{decision.reason} ({'; '.join(why)})")
        return decision

    def _one(self, name: str, loc: Location, key: str) -> ItemDecision:
        ep = self._endpoint(loc)
        path = loc.path_of(key)
        scan = scan_of(loc, key, self.bl.paths.raw_dir)
        ec = self.ledger.export_controlled(self.bl.id, scan)
        d = ItemDecision(location=name, key=key, endpoint=ep.name, path=path, action="kept", reason="",
                         export_controlled=ec)
        d.age_days = self._age_days(name, key)
        if d.age_days is None:
            d.reason = "arrival time unknown (not recorded in the ledger); keeping it"
            return d
        if d.age_days < loc.retention_days:
            d.reason = f"younger than the {loc.retention_days:g}-day retention"
            return d
        target, item = self._copy(name, key)
        if target is None:
            d.reason = "listed but vanished before it could be inspected"
            return d
        d.size, d.checksum = target.size, target.checksum
        decision = self._decide(name, loc, key, target, ec)
        d.reason = decision.reason
        if not decision.allowed:
            return d
        if self.dry_run:
            d.action = "would_delete"
        elif not loc.delete:
            d.action = "would_delete"
            d.reason += "; deletion is off for this location (delete: false)"
        else:
            backend = self.backend(ep)
            # One label per item and run: a Globus retry adopts this item's own delete task, never another's.
            backend.delete(ep, path, recursive=bool(item and item.is_dir),
                           label=task_label(f"prune {self.bl.id} {name}", f"{self.run_id}:{ep.name}:{path}"),
                           deadline_seconds=self.delete_deadline_seconds)
            if backend.stat(ep, path) is not None:
                raise TransferError(f"{ep.name}:{path} is still there after its delete reported success")
            self.ledger.mark_deleted(self.bl.id, name, key, reason=decision.reason)
            d.action = "deleted"
        self.gone.add((name, key))
        return d

    def _skip(self, reason: str) -> None:
        self.report.skipped.append(reason)
        log.error("prune %s: %s; skipped", self.bl.id, reason)

    def run(self) -> PruneReport:
        for name, loc in self.bl.locations.items():
            if loc.retention_days is None:
                continue
            if loc.delete and not self.dry_run:
                self.report.deletion_enabled.append(name)
            elif not self.dry_run:
                self.report.notes.append(
                    f"location {name}: deletion is off, so this sweep only reports what it would delete; to switch "
                    f"it on, set `delete: true` on locations.{name} in include/beamlines/{self.bl.id}.yaml")
            ep = self.endpoints.get(loc.endpoint)
            if ep is None:
                self._skip(f"location {name}: endpoint {loc.endpoint!r} is not configured")
                continue
            try:
                keys, links = discover(self.backend(ep), ep, loc)
            except Exception as exc:  # one unreachable location must not stop the others
                self._skip(f"location {name}: cannot list {ep.name}:{loc.subdir or '/'}: {type(exc).__name__}: {exc}")
                continue
            for key in links:
                d = ItemDecision(location=name, key=key, endpoint=ep.name, path=loc.path_of(key), action="anomaly",
                                 reason=SYMLINK)
                self.report.decisions.append(d)
                log.warning("prune %s anomaly %s:%s (%s): %s", self.bl.id, name, key, d.path, d.reason)
            for key in keys:
                try:
                    d = self._one(name, loc, key)
                except SymlinkFound as exc:
                    d = ItemDecision(location=name, key=key, endpoint=ep.name, path=loc.path_of(key),
                                     action="anomaly", reason=str(exc))
                except Exception as exc:
                    d = ItemDecision(location=name, key=key, endpoint=ep.name, path=loc.path_of(key),
                                     action="error", reason=f"{type(exc).__name__}: {exc}")
                self.report.decisions.append(d)
                log.info("prune %s %s %s:%s (%s): %s", self.bl.id, d.action, name, key, d.path, d.reason)
        self.report.finished = datetime.now(UTC).isoformat()
        return self.report


def write_report(report: PruneReport, directory: Path) -> PruneReport:
    """Write ``prune-<time>[-dry-run].json`` and ``.txt`` into ``directory``, then apply the ``prune`` retention of
    ``include/reports.yaml`` there; returns the report with the paths written."""
    from facility_data.reports import apply_retention

    directory.mkdir(parents=True, exist_ok=True)
    stamp = datetime.fromisoformat(report.started).strftime("%Y%m%dT%H%M%S.%fZ")  # audits are never overwritten
    base = directory / f"prune-{stamp}{'-dry-run' if report.dry_run else ''}"
    report.json_path, report.text_path = f"{base}.json", f"{base}.txt"
    Path(report.json_path).write_text(json.dumps(report.as_dict(), indent=2, sort_keys=True) + "\n")
    Path(report.text_path).write_text(report.text())
    apply_retention(directory, "prune")
    return report
