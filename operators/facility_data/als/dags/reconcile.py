"""``<id>_reconcile``: the daily check that every scan went through its chain; repairs missing raw copies and
re-announces missing reconstructions."""

from __future__ import annotations

import logging
from datetime import UTC, datetime

from airflow.sdk import DAG, Asset, Param, task

from facility_data.als.beamline import Beamline
from facility_data.als.dags.common import (
    START,
    announced_line,
    conf_item,
    context,
    decision_override,
    env,
    recon_asset,
    run_conf,
    run_id,
)
from facility_data.dag_defaults import default_args
from facility_data.refusal import permanent

log = logging.getLogger(__name__)


def build_reconcile_dag(bl: Beamline) -> DAG:
    """``<id>_reconcile``: find every scan whose chain stopped (lost trigger, a copy missing or corrupt), repair the
    raw copies with the chain's own steps, write a per-day report; anything left not done fails the run."""
    raw = [r for r in ("spot", "data", "nersc") if r in bl.locations]
    params = {
        "first_day": Param(None, type=["null", "string"], format="date",
                           description="First acquisition day (YYYY-MM-DD, from the file name); empty: "
                                       f"{bl.reconcile.lookback_days - 1} days before last_day"),
        "last_day": Param(None, type=["null", "string"], format="date",
                          description="Last acquisition day (YYYY-MM-DD); empty: today (UTC); never in the future"),
        "dry_run": Param(False, type="boolean", description="Report what would be repaired; copy and record nothing"),
        "repair": Param(True, type="boolean", description="Repair not_started/partial scans (off: classify only)"),
    }
    with DAG(dag_id=f"{bl.id}_reconcile", schedule=bl.reconcile.schedule, start_date=START, catchup=False,
             max_active_runs=1, default_args=default_args(), params=params,
             description=f"BL {bl.beamline}: find and repair scans whose chain stopped ({', '.join(raw)}, ledger)",
             tags=["als", bl.id, "reconcile"],
             doc_md=f"Lists every scan at {', '.join(raw)} and in the ledger, classifies each (done, not_started, "
                    "partial with the first missing step, export_controlled_held, inconsistent, error), repairs the "
                    f"missing raw copies with {bl.id}_new_file's steps (export control decided exactly as there), "
                    "retries the SciCat ingest (idempotent), and writes one report per acquisition day (JSON + "
                    "text), re-announces missing reconstructions (asset events, as the new-file DAG emits them). Any "
                    "scan not done or held fails the run (`verdict`), after the announcements.") as dag:

        @task(multiple_outputs=True, show_return_value_in_logs=False)  # logs its summary line
        def reconcile() -> dict:
            """Classify, repair the raw copies, retry SciCat, write the reports; what to announce and what failed."""
            from facility_data.als.reconcile import (
                Reconcile,
                announcements,
                check_request,
                reports_dir,
                scicat_ingester,
                write_report,
            )
            from facility_data.hooks.scicat import SciCatHook

            conf = run_conf()
            with permanent(conf_item(conf)):
                request = check_request(bl, conf, today=datetime.now(UTC).date())
                endpoints, ledger = env(bl)
                run = Reconcile(bl, endpoints, ledger, request, decision_override=decision_override(bl),
                                run_id=run_id(),
                                ingest=scicat_ingester(bl, endpoints, SciCatHook(bl.scicat.conn_id)))
            report = write_report(run.run(), reports_dir(bl))
            summary = {"first_day": report.first_day, "last_day": report.last_day, "dry_run": report.dry_run,
                       "repaired": sum(1 for s in report.scans if s.repaired and not report.dry_run),
                       **{st: report.count(st) for st in ("done", "not_started", "partial", "export_controlled_held",
                                                          "inconsistent", "error")}}
            log.info("reconcile %s: %s; reports %s", bl.id, summary, report.files)
            return {"summary": summary, "problems": report.problems(),
                    **{f"announce_{t}": extras for t, extras in announcements(bl, report).items()}}

        result = reconcile()
        announced = []
        for target in bl.recon_targets:
            asset = recon_asset(bl, target)

            @task(task_id=f"announce_{target}", outlets=[asset], show_return_value_in_logs=False)
            def announce(extra: dict, asset: Asset = asset) -> dict:
                """One scan's asset event for <bl>_recon_<target>, as <bl>_new_file emits it."""
                context()["outlet_events"][asset].extra = extra
                log.info("re-announced %s to %s (%s)", extra["relative"], asset.name, announced_line(extra))
                return extra

            @task(task_id=f"to_announce_{target}", show_return_value_in_logs=False)
            def to_announce(extras: list[dict], target: str = target) -> list[dict]:
                """The scans to announce (Airflow maps only over a task's return value)."""
                log.info("%d scan(s) to re-announce to the %s reconstruction: %s", len(extras), target,
                         ", ".join(e.get("relative", "?") for e in extras) or "none")
                return extras

            announced.append(announce.expand(extra=to_announce(result[f"announce_{target}"])))

        @task(trigger_rule="none_failed", show_return_value_in_logs=False)
        def verdict(summary: dict, problems: list[str]) -> dict:
            """Green only when every scan is done or held; otherwise fail (the alert) naming them."""
            from airflow.sdk.exceptions import AirflowFailException

            if problems:
                raise AirflowFailException(f"reconcile {bl.id}: {len(problems)} scan(s) not done: "
                                           + "; ".join(problems[:5]) + ("; ..." if len(problems) > 5 else ""))
            log.info("reconcile %s: every scan done or held (%s)", bl.id,
                     ", ".join(f"{k}={v}" for k, v in summary.items()))
            return summary

        announced >> verdict(result["summary"], result["problems"])
    return dag
