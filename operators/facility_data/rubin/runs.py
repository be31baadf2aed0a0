"""What each task of ``rubin_unembargo_raw`` does, as plain functions of plain values (testable without Airflow).

``select`` turns a run (its data interval, or a manual run's Params) into the list of exposure refs to unembargo,
plus the exposures it will not process and why (incomplete at source, still embargoed, unknown): those are
reported, never dropped silently. The other functions run one step for one exposure.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from datetime import datetime
from pathlib import Path

from facility_data.rubin.policy import EmbargoPolicy, load_policy
from facility_data.rubin.windows import (
    STILL_EMBARGOED,
    UNKNOWN,
    ExposureRef,
    ManualRequest,
    parse_manual,
    select_manual,
    select_released,
)

log = logging.getLogger(__name__)

#: at most this many exposures per step run at once within one DAG run (memory/I/O bound; ~4 GB per exposure)
PER_RUN_PARALLELISM = 4


class BadRequest(ValueError):
    """Params or run metadata that cannot be honoured; raised before any side effect."""


def validate(params: dict, policy: EmbargoPolicy) -> ManualRequest | None:
    """A ManualRequest if the Params name exposures, None for a window run; BadRequest on bad Params."""
    params = dict(params or {})
    named = params.get("day_obs") not in (None, "") or bool(params.get("obs_ids"))
    if not named:
        dry = params.get("dry_run", False)
        if not isinstance(dry, bool):
            raise BadRequest(f"dry_run must be true or false, got {dry!r}")
        return None
    try:
        return parse_manual(policy, params)
    except ValueError as exc:
        raise BadRequest(str(exc)) from None


def select(params: dict, *, data_interval: tuple[datetime, datetime] | None, run_after: datetime,
           policy_path: str | Path | None = None, context=None, now: datetime | None = None) -> dict:
    """``{"ready": [exposure dicts], "skipped": [{"obs_id", "reason", "state"[, "exposure"]}], "dry_run": bool,
    "window": ...}``; ``state`` is one of windows.SKIP_STATES.

    Whatever the run (scheduled, backfill, manual with or without a logical date), nothing whose release is later
    than the wall clock ``now`` (default: the current time) is ready: a window lying (partly) in the future releases
    only what is due, the rest is skipped as still embargoed. ``run_after`` does not decide it: a manual run's
    run_after follows its logical date, which may lie in the future."""
    from facility_data.rubin.steps import Context, check_gate

    policy = load_policy(policy_path)
    request = validate(params, policy)
    dry_run = bool((params or {}).get("dry_run", False))
    ctx = context or Context(policy, dry_run=dry_run)
    now = now or ctx.clock()
    if now.tzinfo is None:
        raise BadRequest(f"naive clock time {now!r}: the embargo is compared in UTC")
    skipped: list[dict] = []
    if request is not None:
        exposures, skipped = select_manual(ctx.source, policy, request, now)
        if not exposures and not skipped:  # asked for a night and found nothing: never a quiet green run
            raise BadRequest(f"no exposure of {request.instrument} on day_obs {request.day_obs} in the source "
                             "Butler; nothing done")
        window = None
        log.info("manual run: %d exposure(s) of %s requested (day_obs=%s, obs_ids=%s)", len(exposures),
                 request.instrument, request.day_obs, list(request.obs_ids))
    else:
        if data_interval is None or data_interval[0] is None or data_interval[1] is None:
            raise BadRequest("a run without a data interval must name exposures (Params day_obs and/or obs_ids)")
        start, end = data_interval
        window = [start.isoformat(), end.isoformat()]
        exposures = []
        for instrument in policy.instruments:
            exposures += select_released(ctx.source, policy, instrument, start, end)
        log.info("window [%s, %s): %d exposure(s) released in it", start, end, len(exposures))
    ready = []
    for exp in exposures:
        if datetime.fromisoformat(exp.release) > now:  # the window (or its end) lies in the future
            skipped.append({"obs_id": exp.obs_id, "reason": f"still embargoed until {exp.release}",
                            "state": STILL_EMBARGOED, "exposure": exp.to_dict()})
            continue
        try:
            ok, detail = check_gate(ctx, exp)
        except Exception as exc:  # noqa: BLE001 - one unreadable exposure is reported, not released
            ok, detail = False, {"state": UNKNOWN, "reason": f"gate not checkable: {type(exc).__name__}: {exc}"}
        if ok:
            ready.append(exp.to_dict())
        else:
            skipped.append({"obs_id": exp.obs_id, "reason": detail["reason"], "state": detail["state"],
                            "exposure": exp.to_dict()})
    if ready:  # up front, before any exposure's step: every destination must share the source's universe
        from facility_data.rubin.butlerops import UniverseMismatch

        try:
            for dest in policy.destinations:
                ctx.butler(dest)
        except UniverseMismatch as exc:
            raise BadRequest(str(exc)) from None
    for s in skipped:
        log.warning("NOT unembargoed now: %s: %s: %s", s["obs_id"], s["state"], s["reason"])
    return {"ready": ready, "skipped": skipped, "dry_run": dry_run, "window": window}


def context_for(dry_run: bool, policy_path: str | Path | None = None):
    from facility_data.rubin.steps import Context

    return Context(load_policy(policy_path), dry_run=dry_run)


def run_named_step(name: str, exposure: dict, *, dry_run: bool, policy_path: str | Path | None = None,
                   **kwargs) -> dict:
    """Run one step (or, for ``butler``, every destination) for one exposure; returns the outcome(s)."""
    from facility_data.rubin import steps

    ctx = context_for(dry_run, policy_path)
    exp = ExposureRef.from_dict(exposure)

    def timed(step: str, **kw) -> dict:
        t0 = time.monotonic()
        out = steps.run_step(ctx, exp, step, **kw).to_dict()
        log.info("%s", step_line(exp.obs_id, out, time.monotonic() - t0))
        return out

    if name == "butler":
        for d in ctx.policy.destinations:  # every destination's universe is checked before the first ingest
            ctx.butler(d, writeable=not dry_run)
        outs = [timed(steps.butler_step(d)) for d in ctx.policy.destinations]
        return {"step": "butler", "destinations": outs, "obs_id": exp.obs_id}
    return {**timed(name, **kwargs), "obs_id": exp.obs_id}


def step_line(obs_id: str, outcome: dict, seconds: float) -> str:
    """One log line per step: state, seconds and, for a step that wrote bytes, the rate; the detail abridged."""
    detail = outcome.get("detail") or {}
    size = detail.get("bytes")
    rate = ""
    if outcome.get("state") == "done" and isinstance(size, int) and seconds > 0:
        rate = f", {size} B at {size / seconds / 1e6:.1f} MB/s"
    text = str(detail)
    return (f"{obs_id} {outcome.get('step')}: {outcome.get('state')} in {seconds:.2f} s{rate}; "
            f"{text if len(text) <= 300 else text[:300] + '...'}")


def summarize(selected: list[dict] | None, skipped: list[dict] | None, task_states: dict[str, str],
              step_tasks: list[str], results: dict[int, dict] | None = None,
              unverified: dict[str, str] | None = None) -> dict:
    """The run's verdict, from this run's task-instance states and the sinks, never from XCom alone.

    ``selected``: what this run's select chose (None if select did not succeed in this run); ``task_states``:
    ``{"<task_id>_<map_index>": state}`` of this run (RuntimeTaskInstance.get_task_states); ``step_tasks``: the
    per-exposure tasks in chain order; ``results``: the last step's return value per map index whose task
    instance succeeded; ``unverified``: obs_id -> why the sinks do not show it done. An exposure counts as done
    only if its last step succeeded in this run, for this exposure, and the sinks verify it. ``ok`` is True only
    if select succeeded, nothing asked for was skipped and every selected exposure is done."""
    results, unverified = results or {}, unverified or {}
    not_completed, counted = [], []
    for i, exp in enumerate(selected or []):
        obs_id = exp["obs_id"]
        last = task_states.get(f"{step_tasks[-1]}_{i}")
        result = results.get(i) or {}
        if last != "success":
            step, state = next(((t, task_states.get(f"{t}_{i}")) for t in step_tasks
                                if task_states.get(f"{t}_{i}") != "success"), (step_tasks[-1], last))
            reason = f"{step} {state or 'did not run'} in this run"
        elif result.get("obs_id") != obs_id:  # the mapped instance's value is not this exposure's: do not trust it
            reason = f"{step_tasks[-1]} result names {result.get('obs_id')!r}, not this exposure"
        elif obs_id in unverified:
            reason = f"not verified in the sinks: {unverified[obs_id]}"
        else:
            counted.append(result.get("state"))
            continue
        not_completed.append({"obs_id": obs_id, "reason": reason})
    not_processed = [{"obs_id": s.get("obs_id"), "state": s.get("state") or "not_processed",
                      "reason": s.get("reason") or "no reason given"} for s in skipped or []]
    summary = {
        "selected": len(selected or []),
        "acted": counted.count("done"),
        "already_done": counted.count("verified"),
        "dry_run": counted.count("would-act"),
        "not_completed": not_completed,
        "not_processed": not_processed,
        "select_failed": selected is None,
    }
    summary["ok"] = not summary["select_failed"] and not not_completed and not not_processed
    return summary


def verdict_lines(summary: dict) -> list[str]:
    """One line per exposure asked for and not done, for the failure message (and so the alert)."""
    return ([f"{n['obs_id']}: not completed: {n['reason']}" for n in summary["not_completed"]]
            + [f"{n['obs_id']}: not processed ({n['state']}): {n['reason']}" for n in summary["not_processed"]])


def unverified_in_sinks(exposures: list[dict], policy_path: str | Path | None = None) -> dict[str, str]:
    """obs_id -> what the sinks lack, for every exposure they do not show done; read-only.

    Per night, each sink is read once for all the exposures (the reconcile's fast check,
    facility_data.rubin.classify.check_exposures), not once per exposure; each dimensions yaml is also compared
    with the source Butler's records (read for the whole night at once), which the fast check does not do: an
    altered yaml is inconsistent."""
    from facility_data.rubin import classify, steps
    from facility_data.rubin.sinks import night_records
    from facility_data.rubin.zipbuild import InconsistentArtifact

    ctx = context_for(True, policy_path)  # dry_run: checking never writes
    nights: dict[tuple[str, int], list[ExposureRef]] = defaultdict(list)
    for exposure in exposures:
        exp = ExposureRef.from_dict(exposure)
        nights[(exp.instrument, exp.day_obs)].append(exp)
    out = {}
    for (instrument, day_obs), exps in sorted(nights.items()):
        done = []
        for exp, check in zip(exps, classify.check_exposures(ctx, instrument, day_obs, exps), strict=True):
            if check.state == classify.DONE:
                done.append(exp)
            else:
                where = f"{check.first_missing} {check.state}" if check.first_missing else check.state
                out[exp.obs_id] = f"{where}: {'; '.join(check.problems)}"[:500]
        try:
            records = night_records(ctx.source, instrument, day_obs, [e.exposure for e in done]) if done else {}
        except Exception as exc:  # noqa: BLE001 - an unreadable source leaves each yaml unverified
            out.update({e.obs_id: f"{steps.DIMENSIONS} error: {type(exc).__name__}: {exc}"[:500] for e in done})
            continue
        for exp in done:
            # the records the yaml check compares with, read for the night above
            ctx.cached(exp, "records", lambda exp=exp, records=records: records[exp.exposure])
            try:
                ok, detail = steps.check_dimensions(ctx, exp)
                state = "done" if ok else "missing"
            except InconsistentArtifact as exc:
                state, detail = "inconsistent", str(exc)
            except Exception as exc:  # noqa: BLE001 - an unreadable sink is not a verified one
                state, detail = "error", f"{type(exc).__name__}: {exc}"
            if state != "done":
                out[exp.obs_id] = f"{steps.DIMENSIONS} {state}: {detail}"[:500]
    return out


#: rubin_unembargo_raw's conf, a closed schema (types are also checked by the Params' JSON schema at trigger time)
#: day_obs may be an integer too (``{"day_obs": 20261201}``, as Butler data ids write it); never a bool
RAW_CONF = {"instrument": (str,), "day_obs": (str, int, type(None)), "obs_ids": (list,), "dry_run": (bool,)}


def check_run_conf(conf: object) -> None:
    """Refuse unknown keys and wrong types in the run's own conf (BadRequest), before anything is read."""
    from facility_data.conf import ConfError, check_conf

    try:
        check_conf(conf, RAW_CONF, what="rubin_unembargo_raw")
    except ConfError as exc:
        raise BadRequest(str(exc)) from None


def refuse_manual_params_in_window_runs(params: dict, run_type: str | None) -> None:
    """Scheduled and backfill runs own their data interval: day_obs/obs_ids (which the backfill dialog offers)
    mean nothing there and are refused rather than ignored."""
    kind = str(getattr(run_type, "value", run_type) or "").lower()
    if kind not in ("scheduled", "backfill"):
        return
    named = [k for k in ("day_obs", "obs_ids") if (params or {}).get(k) not in (None, "", [], ())]
    if named:
        raise BadRequest(f"{kind} runs unembargo exactly their data interval; Params {', '.join(named)} are for "
                         f"manual runs only (trigger the DAG by hand to reprocess exposures)")
