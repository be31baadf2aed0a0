"""The project's single data-safety policy.

Two questions decide whether data can be lost or leaked, and they are answered only here:

* may this data leave its site? (export control: export-controlled ALS data never leaves ALS, whatever a
  beamline's configuration asks for);
* may this copy be deleted? (only when a verified twin - same size and same checksum - exists at every location
  the caller's policy names, and that twin is not the copy itself).

Call sites ask and obey; they never re-implement these rules. Both functions are pure, so every rule is tested
without Airflow or services.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass


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


def may_leave_site(*, export_controlled: bool, from_site: str, to_site: str, what: str = "data") -> Decision:
    """May ``what`` move from ``from_site`` to ``to_site``? Export-controlled data stays on its site."""
    if from_site == to_site:
        return Decision(True, f"{what} stays on site {from_site}")
    if export_controlled:
        return Decision(False, f"{what} is export-controlled and may not leave {from_site} (requested: {to_site})")
    return Decision(True, f"{what} is not export-controlled; {from_site} -> {to_site} allowed")


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
