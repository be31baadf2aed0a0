"""``<id>_prune``: the daily retention sweep; deletes only where a location has ``delete: true`` (manual runs
default to a dry run). ``<id>_prune_preview``: the same sweep as a dry run, unscheduled and never paused."""

from __future__ import annotations

import logging

from airflow.sdk import DAG, Param, task

from facility_data.als.beamline import Beamline
from facility_data.als.dags.common import START, context, env, run_id
from facility_data.dag_defaults import default_args
from facility_data.refusal import permanent

log = logging.getLogger(__name__)


def build_prune_dag(bl: Beamline, *, preview: bool = False) -> DAG:
    """``<id>_prune`` (scheduled; deletes only where a location has ``delete: true``; manual runs default to a dry
    run) or, with ``preview``, ``<id>_prune_preview``: unscheduled, unpaused at creation, always a dry run, so a
    preview never waits for (or unpauses) the sweep."""
    enabled = [r for r, loc in bl.locations.items() if loc.retention_days is not None and loc.delete]
    where = f"deletes only in {', '.join(enabled)}" if enabled else "deletion is off in every location (reports only)"
    params = {} if preview else {"dry_run": Param(True, type="boolean", description=(
        "Manual runs: report only. Scheduled runs, and manual runs with this off, delete only where "
        f"include/beamlines/{bl.id}.yaml sets delete: true ({where})"))}
    description = (f"BL {bl.beamline}: what {bl.id}_prune would delete now (always a dry run)" if preview else
                   f"BL {bl.beamline}: retention sweep (verified-twin guarded; {where})")
    with DAG(dag_id=f"{bl.id}_prune_preview" if preview else f"{bl.id}_prune",
             schedule=None if preview else bl.prune.schedule, is_paused_upon_creation=False if preview else None,
             start_date=START, catchup=False, max_active_runs=1, default_args=default_args(), params=params,
             description=description,
             tags=["als", bl.id, "prune"],
             doc_md="Deletes items older than each location's retention only where the location has `delete: true` "
                    "and a verified twin (size and checksum) exists at its check location; writes an audit report "
                    "(JSON + text). Symlinks are reported, never followed or deleted. A skipped location or any "
                    "anomaly or error fails the run once the report is written.") as dag:

        @task(show_return_value_in_logs=False)  # logs its summary line
        def sweep() -> dict:
            from airflow.sdk.exceptions import AirflowFailException

            from facility_data.als.beamline import check_endpoints
            from facility_data.als.prune import Sweep, write_report
            from facility_data.conf import check_conf

            ctx = context()
            run = ctx.get("dag_run")
            if preview:
                if getattr(run, "conf", None):
                    reason = (f"{bl.id}_prune_preview takes no conf (got {sorted(run.conf)}): it is always a dry "
                              f"run; {bl.id}_prune is the sweep that deletes")
                    log.error("refused conf %r (bad conf): %s", run.conf, reason)
                    raise AirflowFailException(reason)
                dry_run = True
            else:
                with permanent(f"conf {getattr(run, 'conf', None)!r}"):  # a misspelt key is refused, never ignored
                    check_conf(getattr(run, "conf", None), {"dry_run": (bool,)}, what=f"{bl.id}_prune")
                manual = str(getattr(run, "run_type", "manual")).lower().endswith("manual")
                dry_run = bool(ctx["params"]["dry_run"]) if manual else False
            endpoints, ledger = env(bl)
            with permanent(f"the {bl.id} prune sweep"):
                check_endpoints(bl, endpoints)
            report = write_report(Sweep(bl, endpoints, ledger, dry_run=dry_run, run_id=run_id()).run(),
                                  bl.reports_path())
            summary = {"dry_run": dry_run, "deletion_enabled": report.deletion_enabled, "report": report.json_path,
                       "text": report.text_path, **report.as_dict()["counts"]}
            log.info("prune %s: %s", bl.id, summary)
            problems = report.problems()
            if problems:
                raise AirflowFailException(f"prune {bl.id}: {len(problems)} problem(s), see {report.text_path}: "
                                           + "; ".join(problems[:5]) + ("; ..." if len(problems) > 5 else ""))
            return summary

        sweep()
    return dag
