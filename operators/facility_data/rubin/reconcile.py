"""Reconciliation: which exposures past release are not fully unembargoed, where each stopped, and repair.

The request (the Params of ``rubin_unembargo_reconcile``, validated here) names an instrument and nights. For
each night the sinks are read in bulk (facility_data.rubin.sinks), every exposure is classified
(facility_data.rubin.classify: done, not started, partial, incomplete or inconsistent at source, inconsistent,
pruned, error), repairable ones are resumed from their first missing step and pruning is guarded
(facility_data.rubin.repair), and the result is written as reports (facility_data.rubin.report). :func:`run` does
it all in one process; the DAG does the same across tasks, ending with :func:`finish`.
"""

from __future__ import annotations

import logging
import re
from dataclasses import asdict, dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

from facility_data.rubin import report, steps
from facility_data.rubin.classify import (
    DONE,
    REPAIRABLE,
    UNREPAIRABLE,
    NightResult,
    check_night,
)
from facility_data.rubin.policy import EmbargoPolicy
from facility_data.rubin.repair import prune_exposure, repair_exposure
from facility_data.rubin.sinks import temporary_files
from facility_data.rubin.windows import ExposureRef

log = logging.getLogger(__name__)

PRUNE_MODES = ("off", "dry_run", "delete")
MAX_NIGHTS = 62
_DAY = re.compile(r"^\d{8}$")


class BadParams(ValueError):
    """Reconcile Params that cannot be honoured; raised before any side effect."""


@dataclass(frozen=True)
class Request:
    instrument: str
    nights: tuple[int, ...]
    repair: bool
    dry_run: bool
    deep: bool
    prune_embargo: str  # off | dry_run | delete

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Request:
        return cls(**{**d, "nights": tuple(d["nights"])})


def _day(value, name: str) -> date:
    text = str(value)
    if not _DAY.match(text):
        raise BadParams(f"{name} must be YYYYMMDD, got {value!r}")
    try:
        return date(int(text[:4]), int(text[4:6]), int(text[6:]))
    except ValueError:
        raise BadParams(f"{name} {value!r} is not a calendar date") from None


def day_obs_of(t: datetime) -> int:
    """Rubin's observing day: the UTC-12h calendar date."""
    return int((t.astimezone(UTC) - timedelta(hours=12)).strftime("%Y%m%d"))


#: rubin_unembargo_reconcile's conf, a closed schema (see facility_data.conf)
RECONCILE_CONF = {"instrument": (str,), "day_obs_first": (str, type(None)), "day_obs_last": (str, type(None)),
                  "lookback_nights": (int,), "repair": (bool,), "dry_run": (bool,), "deep": (bool,),
                  "prune_embargo": (str,)}


def check_run_conf(conf: object) -> None:
    """Refuse unknown keys and wrong types in the run's own conf (BadParams), before anything is read."""
    from facility_data.conf import ConfError, check_conf

    try:
        check_conf(conf, RECONCILE_CONF, what="rubin_unembargo_reconcile")
    except ConfError as exc:
        raise BadParams(str(exc)) from None


def parse_request(params: dict, policy: EmbargoPolicy, *, now: datetime, lookback_days: int = 7) -> Request:
    """Validate Params against the policy (clear BadParams, no side effect).

    ``day_obs_first``/``day_obs_last`` select nights by day_obs (both or neither); without them (the scheduled
    run) every night that may hold an exposure released in the last ``lookback_days`` days is checked: from
    ``lookback_days`` nights before the night of (now - the longest embargo of the instrument) up to today's."""
    params = dict(params or {})
    instrument = params.get("instrument") or (policy.instruments[0] if len(policy.instruments) == 1 else None)
    if not isinstance(instrument, str) or instrument not in policy.instruments:
        raise BadParams(f"unknown instrument {instrument!r}: the policy knows {policy.instruments}")
    first, last = params.get("day_obs_first"), params.get("day_obs_last")
    default_range = first in ("", None) and last in ("", None)
    if default_range:
        # every night with an exposure released in the last lookback_days, under the longest embargo too
        longest = max(r.embargo_hours for r in policy.rows_for(instrument)) + policy.settle_minutes / 60
        day = lambda t: datetime.strptime(str(day_obs_of(t)), "%Y%m%d").date()  # noqa: E731
        a = day(now - timedelta(hours=longest)) - timedelta(days=lookback_days - 1)
        b = day(now)
    elif first in ("", None) or last in ("", None):
        raise BadParams("give both day_obs_first and day_obs_last (the same value for one night), or neither")
    else:
        a, b = _day(first, "day_obs_first"), _day(last, "day_obs_last")
    if b < a:
        raise BadParams(f"day_obs_last {b:%Y%m%d} is before day_obs_first {a:%Y%m%d}")
    if not default_range and (b - a).days + 1 > MAX_NIGHTS:
        raise BadParams(f"at most {MAX_NIGHTS} nights per run, asked for {(b - a).days + 1}")
    flags = {}
    for name, default in (("repair", True), ("dry_run", False), ("deep", False)):
        value = params.get(name, default)
        if not isinstance(value, bool):
            raise BadParams(f"{name} must be true or false, got {value!r}")
        flags[name] = value
    prune = params.get("prune_embargo", "off")
    if prune is False or prune is None:
        prune = "off"
    if prune not in PRUNE_MODES:
        raise BadParams(f"prune_embargo must be one of {PRUNE_MODES}, got {prune!r}")
    nights = tuple(int(f"{a + timedelta(days=i):%Y%m%d}") for i in range((b - a).days + 1))
    return Request(instrument, nights, flags["repair"], flags["dry_run"], flags["deep"], prune)



def repair_list(nights: list[NightResult]) -> list[dict]:
    """The exposures a repair run maps over (one isolated task each)."""
    return [e.to_dict() for n in nights for e in n.exposures if e.state in REPAIRABLE]


def unrepairable(nights: list[NightResult]) -> list[dict]:
    return [{"day_obs": n.day_obs, "obs_id": e.obs_id, "state": e.state, "problems": e.problems}
            for n in nights for e in n.exposures if e.state in UNREPAIRABLE]


def counts_per_night(nights: list[NightResult]) -> dict[str, dict[str, int]]:
    return {str(n.day_obs): n.counts for n in nights}


def summary(result: dict) -> str:
    """Text summary of a reconcile run's result (the DAG's XCom/asset extra, or :func:`run`'s return value)."""
    lines = [f"reconcile {result.get('instrument', '')} nights {result.get('first')}..{result.get('last')} "
             f"(mode {result.get('mode')}, repair {result.get('repair')}, dry_run {result.get('dry_run')})"]
    def parts(c: dict) -> str:
        return ", ".join(f"{k} {v}" for k, v in c.items() if v and k != "total") or "none"

    for day, c in sorted((result.get("counts") or {}).items()):
        before = (result.get("found") or {}).get(day)
        if before and before != c:
            lines.append(f"  {day}: found {parts(before)}")
        lines.append(f"  {day}: {c.get('total', 0)} exposures past release, now: {parts(c)}")
    for r in result.get("repaired") or []:
        lines.append(f"  repaired {r['obs_id']} from step {r['from']}: {r['state']}")
    for f in result.get("failed") or []:
        lines.append(f"  NOT repaired {f['obs_id']}: {f.get('error')}")
    for u in result.get("unrepairable") or []:
        lines.append(f"  NEEDS AN OPERATOR {u['obs_id']} ({u['day_obs']}): {u['state']}: {'; '.join(u['problems'])}")
    for p in result.get("prune") or []:
        lines.append(f"  prune {p['obs_id']}: {'allowed' if p['allowed'] else 'refused'}, deleted {p['deleted']}: "
                     f"{p['reason']}")
    temps = result.get("temporary") or []
    if temps:
        lines.append(f"  temporary files: {len(temps)}, {sum(t['bytes'] for t in temps)} bytes "
                     f"({sum(t['owner_dead'] for t in temps)} of dead owners, removed at the exposure's next attempt)")
    if "prompt" in result:
        from facility_data.rubin.prompt_reconcile import verdict_lines

        bad = verdict_lines(result["prompt"])
        lines += [f"  PROMPT {b}" for b in bad] or [f"  prompt products: ok "
                                                     f"({len(result['prompt'].get('rows', []))} row(s))"]
    for path in result.get("reports") or []:
        lines.append(f"  report: {path}")
    return "\n".join(lines)


def run(ctx: steps.Context, request: Request, *, now: datetime, reports_dir: str | Path | None = None) -> dict:
    """The whole reconciliation in one process (what the DAG does across tasks): check, repair, re-check, prune,
    report. Used by scripts and the demo; returns the same result dict as the DAG's summary task."""
    nights = [check_night(ctx, request.instrument, d, now=now, deep=request.deep) for d in request.nights]
    found = counts_per_night(nights)
    repaired, failed = [], []
    if request.repair:
        for item in repair_list(nights):
            try:
                repaired.append(repair_exposure(ctx, item))
            except Exception as exc:  # noqa: BLE001 - one exposure's failure never stops the others
                log.error("%s: repair failed: %s: %s", item["obs_id"], type(exc).__name__, exc)
                failed.append({"obs_id": item["obs_id"], "error": f"{type(exc).__name__}: {exc}"})
        if repaired and not request.dry_run:
            ctx = steps.Context(ctx.policy, store=ctx._store, rucio=ctx._rucio, butler_factory=ctx._butler_factory)
            nights = [check_night(ctx, request.instrument, d, now=now, deep=request.deep) for d in request.nights]
    return finish(ctx, request, nights, repaired, failed, found=found, reports_dir=reports_dir)


def finish(ctx: steps.Context, request: Request, nights: list[NightResult], repaired: list[dict],
           failed: list[dict], *, found: dict | None = None, reports_dir=None, prompt: dict | None = None) -> dict:
    """Prune (if asked), write the reports, and assemble the result dict (``found``: counts before repair,
    ``counts``: after; ``prompt``: facility_data.rubin.prompt_reconcile.check's result, when checked)."""
    pruned = []
    if request.prune_embargo != "off":
        for n in nights:
            for e in n.exposures:
                if e.state == DONE and e.exposure:
                    pruned.append(prune_exposure(ctx, ExposureRef.from_dict(e.exposure),
                                                 delete=request.prune_embargo == "delete" and not request.dry_run))
    result = {"instrument": request.instrument, "first": request.nights[0], "last": request.nights[-1],
              "mode": "deep" if request.deep else "fast", "repair": request.repair, "dry_run": request.dry_run,
              "found": found or {}, "counts": counts_per_night(nights), "repaired": repaired, "failed": failed,
              "unrepairable": unrepairable(nights), "prune": pruned,
              "temporary": [t for d in request.nights for t in temporary_files(ctx.policy, request.instrument, d)]}
    if prompt is not None:
        result["prompt"] = prompt
    result["reports"] = [str(p) for p in report.write_reports(nights, result, reports_dir=reports_dir)]
    return result
