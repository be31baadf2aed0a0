"""Per exposure and per sink, what is done for one observing night (read-only; used by ``make demo``)."""

from __future__ import annotations

import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

from facility_data.rubin import steps, windows
from facility_data.rubin.policy import load_policy


def night_summary(day_obs: int, *, instrument: str = "LSSTCam", policy_path: str | Path | None = None,
                  context: steps.Context | None = None, deep: bool = False) -> list[dict]:
    """One row per exposure of the night: obs_id, release, each step's state, first missing step."""
    ctx = context or steps.Context(load_policy(policy_path))
    request = windows.ManualRequest(instrument, int(day_obs), (), False)
    far_future = datetime.now(UTC) + timedelta(days=3650)  # list the whole night, released or not
    exposures, problems = windows.select_manual(ctx.source, ctx.policy, request, far_future)
    now = datetime.now(UTC)
    rows = []
    for exp in exposures:
        status = steps.exposure_status(ctx, exp, deep=deep)
        released = datetime.fromisoformat(exp.release) <= now
        rows.append({"obs_id": exp.obs_id, "release": exp.release, "released": released, **status.steps,
                     "first_missing": status.first_missing})
    rows += [{"obs_id": p["obs_id"], "problem": p["reason"]} for p in problems]
    return rows


def print_night_summary(day_obs: int, *, instrument: str = "LSSTCam", policy_path: str | Path | None = None,
                        context: steps.Context | None = None, out=sys.stdout) -> list[dict]:
    """Print the table (one line per exposure, one column per sink) and a count per state; returns the rows."""
    rows = night_summary(day_obs, instrument=instrument, policy_path=policy_path, context=context)
    ctx = context or steps.Context(load_policy(policy_path))
    names = steps.step_names(ctx.policy)
    short = {n: (n.split(":", 1)[0] if n.startswith("butler:") and len(ctx.policy.destinations) == 1 else n)
             for n in names}
    width = max([len(r["obs_id"]) for r in rows] + [8])
    print(f"{'exposure':<{width}}  " + "  ".join(f"{short[n][:14]:<14}" for n in names) + "  first missing",
          file=out)
    totals: dict[str, int] = {}
    for r in rows:
        if "problem" in r:
            print(f"{r['obs_id']:<{width}}  {r['problem']}", file=out)
            continue
        print(f"{r['obs_id']:<{width}}  " + "  ".join(f"{r[n]:<14}" for n in names)
              + f"  {r['first_missing'] or '-'}", file=out)
        key = "complete" if r["first_missing"] is None else f"stopped before {r['first_missing']}"
        totals[key] = totals.get(key, 0) + 1
    print("totals: " + ", ".join(f"{k}: {v}" for k, v in sorted(totals.items())), file=out)
    return rows
