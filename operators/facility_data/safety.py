"""The project's single data-safety policy.

Two questions decide whether data can be lost or leaked, and they are answered only here:

* may this data leave its site? (export control: export-controlled ALS data never leaves ALS, whatever a
  beamline's configuration asks for; a scan leaves only when it is known, by name and by content, to be free to);
* may this copy be deleted? (only when a verified twin - same size and same checksum - exists at every location
  the caller's policy names, and that twin is not the copy itself).

Call sites ask and obey; they never re-implement these rules. Both functions are pure, so every rule is tested
without Airflow or services.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field


class SafetyError(PermissionError):
    """An action was refused by the data-safety policy."""


@dataclass(frozen=True)
class Decision:
    allowed: bool
    reason: str

    def require(self) -> None:
        """Raise :class:`SafetyError` unless the action is allowed."""
        if not self.allowed:
            raise SafetyError(self.reason)


@dataclass(frozen=True)
class Copy:
    """What is known of one copy of a file: where it is, its size and its checksum ("algorithm:hex")."""

    location: str
    path: str
    size: int | None
    checksum: str | None


def may_leave_site(*, export_controlled: bool | None, from_site: str, to_site: str, what: str = "data",
                   unknown_because: str = "status unknown") -> Decision:
    """May ``what`` move from ``from_site`` to ``to_site``? Export-controlled data, and data whose status is not
    known (``export_controlled=None``), stays on its site."""
    if from_site == to_site:
        return Decision(True, f"{what} stays on site {from_site}")
    if export_controlled is None:
        return Decision(False, f"export-control status of {what} is not known ({unknown_because}), so it may not "
                               f"leave {from_site} (requested: {to_site})")
    if export_controlled:
        return Decision(False, f"{what} is export-controlled and may not leave {from_site} (requested: {to_site})")
    return Decision(True, f"{what} is not export-controlled; {from_site} -> {to_site} allowed")


@dataclass(frozen=True)
class ExportEvidence:
    """Everything known about whether one scan is export-controlled.

    ``declared``: what the run's conf or asset event states (None: not stated). ``recorded``: the ledger's status
    of the scan by its (symlink-resolved) name (None: never recorded). ``same_content``: the status of every
    recorded scan with the same bytes (size + sha256), so a renamed or copied scan keeps its status.
    ``fingerprinted``: whether the scan's content fingerprint could be computed at all.
    """

    declared: bool | None = None
    recorded: bool | None = None
    same_content: Mapping[str, bool] = field(default_factory=dict)
    fingerprinted: bool = False


def export_status(evidence: ExportEvidence) -> tuple[bool | None, str]:
    """(status, why): True when any source says export-controlled; False only when the scan is known (declared or
    recorded), its content was fingerprinted and nothing says controlled; None (unknown) otherwise."""
    controlled_twins = sorted(name for name, ec in evidence.same_content.items() if ec)
    if evidence.declared or evidence.recorded or controlled_twins:
        sources = [s for s, ec in (("declared", evidence.declared), ("recorded", evidence.recorded)) if ec]
        sources += [f"same content as export-controlled {name}" for name in controlled_twins]
        return True, "; ".join(sources)
    if evidence.declared is None and evidence.recorded is None:
        return None, "neither recorded by the new-file DAG nor declared in the conf"
    if not evidence.fingerprinted:
        return None, "its content fingerprint (size + sha256) could not be computed, so a renamed copy of an " \
                     "export-controlled scan cannot be ruled out"
    return False, "declared or recorded as not export-controlled, and no export-controlled scan has its content"


def may_scan_leave_site(evidence: ExportEvidence, *, from_site: str, to_site: str, what: str) -> Decision:
    """The export-control rule for one scan: it leaves ``from_site`` only when known not to be export-controlled."""
    status, why = export_status(evidence)
    decision = may_leave_site(export_controlled=status, from_site=from_site, to_site=to_site, what=what,
                              unknown_because=why)
    if status and not decision.allowed:
        return Decision(False, f"{decision.reason} ({why})")
    return decision


def _same(a: Copy, b: Copy) -> str | None:
    """None if ``b`` verifiably equals ``a``, else why not."""
    if a.size is None or a.checksum is None:
        return f"size/checksum of {a.location}:{a.path} unknown"
    if b.size is None or b.checksum is None:
        return f"size/checksum of the copy at {b.location}:{b.path} unknown"
    if a.size != b.size:
        return f"size differs at {b.location}:{b.path} ({b.size} != {a.size})"
    algo_a, _, _ = a.checksum.partition(":")
    algo_b, _, _ = b.checksum.partition(":")
    if algo_a != algo_b:
        return f"checksums not comparable at {b.location}:{b.path} ({algo_b} vs {algo_a})"
    if a.checksum != b.checksum:
        return f"checksum differs at {b.location}:{b.path}"
    return None


def may_delete(target: Copy, copies: Sequence[Copy | None], *, required_locations: Sequence[str]) -> Decision:
    """May ``target`` be deleted?

    Every location in ``required_locations`` must hold a copy with the same size and checksum as ``target``.
    ``copies`` holds what was observed (``None`` or absence means "not found"). A copy at the target's own
    location never counts: deleting the last copy is the failure this function exists to prevent.
    """
    if not required_locations:
        return Decision(False, f"no check location configured for {target.location}:{target.path}; keeping it")
    by_location = {c.location: c for c in copies if c is not None}
    for location in required_locations:
        if location == target.location:
            return Decision(False, f"check location {location} is the target's own location; keeping it")
        twin = by_location.get(location)
        if twin is None:
            return Decision(False, f"no copy of {target.path} found at {location}; keeping it")
        problem = _same(target, twin)
        if problem:
            return Decision(False, f"{problem}; keeping {target.location}:{target.path}")
    where = ", ".join(required_locations)
    return Decision(True, f"verified copy (size {target.size}, {target.checksum}) at {where}")


def may_delete_site_bound(target: Copy, copies: Sequence[Copy | None], *, required_locations: Sequence[str],
                          site_of: Mapping[str, str], home_site: str) -> Decision:
    """May ``target``, data that may not leave ``home_site`` (export-controlled, or of unknown status), be deleted?

    Only a verified twin *at home_site* counts: a copy elsewhere either should not exist or cannot be relied on to
    keep it, so deleting the last home copy on its strength would lose (or leak) the data. The configured check
    locations are narrowed to those at ``home_site``; if none remain the target is kept.
    """
    at_home = [loc for loc in required_locations if site_of.get(loc) == home_site]
    if not at_home:
        where = ", ".join(required_locations) or "none"
        return Decision(False, f"{target.location}:{target.path} must stay at {home_site} (export-controlled or "
                               f"status unknown) and none of its check locations ({where}) is at {home_site}; keeping it")
    return may_delete(target, copies, required_locations=at_home)


@dataclass(frozen=True)
class SinkCheck:
    """The verification result of one sink that holds (or records) a copy of an embargoed exposure."""

    sink: str
    verified: bool
    deep: bool  # verified against the source's bytes (member CRCs, hashes), not only existence and sizes
    detail: str = ""


def may_delete_unembargoed(target: str, checks: Sequence[SinkCheck], *, required_sinks: Sequence[str]) -> Decision:
    """May the embargo copy ``target`` (an exposure's embargo objects) be deleted?

    Only when every sink in ``required_sinks`` has a check that is verified *deeply* (byte-level against the
    source): a sink that is missing, unverified, only checked for existence/size, or unknown keeps the embargo copy.
    """
    if not required_sinks:
        return Decision(False, f"no sinks configured for {target}; keeping its embargo copy")
    by_sink: dict[str, SinkCheck] = {}
    for c in checks:
        if c.sink in by_sink and by_sink[c.sink] != c:  # two different answers for one sink: trust neither
            return Decision(False, f"conflicting checks for sink {c.sink} of {target}; keeping its embargo copy")
        by_sink[c.sink] = c
    for sink in required_sinks:
        c = by_sink.get(sink)
        if c is None:
            return Decision(False, f"sink {sink} of {target} was not checked; keeping its embargo copy")
        if not c.verified:
            return Decision(False, f"sink {sink} of {target} is not verified ({c.detail or 'no detail'}); "
                                   f"keeping its embargo copy")
        if not c.deep:
            return Decision(False, f"sink {sink} of {target} was checked only shallowly (existence/size); "
                                   f"keeping its embargo copy until a deep verification")
    return Decision(True, f"every sink of {target} verified against the source: {', '.join(required_sinks)}")
