"""The prompt-products part of the Rubin reconcile: per night, a dry run of every prompt policy row of the
instrument against every destination (facility_data.rubin.prompt), counted per row; with ``repair`` the rows with
missing datasets are run for real for that night only, then that night is checked again.

Counts per row (datasets x destinations): present (released and already there, verified), missing (released, not
there: what a dry run would transfer), held (still embargoed), inconsistent (a destination holds something else;
never overwritten), refused (release time unknown), error (the row could not be checked). Missing, inconsistent,
refused and error fail the reconcile (:func:`verdict_lines`); held does not: it is not released yet.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime

from facility_data.rubin import prompt
from facility_data.rubin.prompt_policy import PromptPolicy

log = logging.getLogger(__name__)

COUNTS = ("present", "missing", "held", "inconsistent", "refused", "error")
FAILING = ("missing", "inconsistent", "refused", "error")


def row_counts(row: dict) -> dict[str, int]:
    """A prompt row summary (a dry run's) as reconcile counts."""
    by_state = row.get("by_state") or {}
    return {"present": row["already_present"], "missing": row["would_transfer"],
            "held": by_state.get(prompt.HELD, 0), "inconsistent": by_state.get(prompt.INCONSISTENT, 0),
            "refused": by_state.get(prompt.REFUSED, 0), "error": by_state.get(prompt.ERROR, 0)}


def _night(summary: dict) -> dict:
    return {"rows": {r["row"]: row_counts(r) for r in summary["rows"]},
            "problems": [{"row": r["row"], **p} for r in summary["rows"] for p in r["problems"]
                         if p["state"] != prompt.HELD][:50]}


def check(policy: PromptPolicy, instrument: str, nights: list[int], *, repair: bool, dry_run: bool,
          now: datetime, butler_factory: Callable | None = None) -> dict:
    """``{"rows", "nights": {day_obs: {"rows": {row: counts}, "found": {row: counts}, "problems", "repaired"}}}``.

    ``now`` (the reconcile's, never later than the wall clock) is the clock of every run, so nothing is released
    here that the raw reconcile would still hold. A fresh read-only context checks again after a repair (Butler
    registries cache collections and dataset types)."""
    rows = [r.name for r in policy.rows if r.instrument == instrument]
    out: dict = {"rows": rows, "nights": {}}
    if not rows:  # nothing to open: the raw check stays as fast as without prompt products
        out["note"] = f"no prompt policy row for {instrument}"
        return out

    def context(dry: bool) -> prompt.PromptContext:
        return prompt.PromptContext(policy, dry_run=dry, clock=lambda: now, butler_factory=butler_factory)

    reader = context(True)
    found = {d: prompt.run(reader, day_obs=d, rows=rows) for d in nights}
    repaired: dict[int, dict] = {}
    if repair and not dry_run:
        writer = None
        for d, summary in found.items():
            todo = [r["row"] for r in summary["rows"] if r["would_transfer"]]
            if todo:
                writer = writer or context(False)
                log.info("prompt products of %s: repairing rows %s", d, todo)
                repaired[d] = prompt.run(writer, day_obs=d, rows=todo)
    after = dict(found)
    if repaired:
        reader = context(True)
        after.update({d: prompt.run(reader, day_obs=d, rows=rows) for d in repaired})
    for d in nights:
        night = _night(after[d])
        night["found"] = _night(found[d])["rows"]
        night["repaired"] = {r["row"]: r["transferred"] for r in repaired[d]["rows"]} if d in repaired else {}
        out["nights"][str(d)] = night
    return out


def verdict_lines(result: dict | None) -> list[str]:
    """One line per night and row with anything failing (after repair), for the alert."""
    if result is None or result.get("error"):
        return [f"prompt products: not checked: {(result or {}).get('error') or 'no result'}"]
    lines = []
    for day, night in sorted(result["nights"].items()):
        for row, c in night["rows"].items():
            bad = [f"{k} {c[k]}" for k in FAILING if c[k]]
            if bad:
                lines.append(f"prompt {day} row {row}: {', '.join(bad)}")
        lines += [f"prompt {day} row {p['row']}: {p['state']}: {p.get('destination', '')} {p.get('dataset', '')}: "
                  f"{p['reason']}" for p in night["problems"][:5]]
    return lines


def totals(result: dict | None) -> dict[str, int]:
    """Counts summed over nights and rows (the asset event's extra)."""
    out = dict.fromkeys(COUNTS, 0)
    for night in (result or {}).get("nights", {}).values():
        for c in night["rows"].values():
            for k in COUNTS:
                out[k] += c[k]
    return out
