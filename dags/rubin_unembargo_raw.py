"""rubin_unembargo_raw: release Rubin raw exposures from the USDF embargo store, every 15 minutes.

Each run owns its data interval [start, end) (catchup on): it unembargoes exactly the exposures whose release time
(exposure end + embargo + settle, policy in include/embargo_policy.yaml) falls in it, so a backfill over any range
unembargoes exactly the exposures released in that range. A manual run with Params day_obs and/or obs_ids
reprocesses exactly those exposures (never one still under embargo). Each exposure is one mapped unit:
gate -> zip -> dimensions -> butler ingest -> rucio, every step idempotent (check, act only if missing, verify).
"""

from __future__ import annotations

from airflow.sdk import DAG, Param, get_current_context, task, task_group
from airflow.sdk.definitions.timetables.interval import CronDataIntervalTimetable

from facility_data.dag_defaults import default_args
from facility_data.operators.embargo import EmbargoZipOperator
from facility_data.operators.rucio import RucioRegisterOperator
from facility_data.rubin.policy import schedule_start
from facility_data.rubin.runs import PER_RUN_PARALLELISM

with DAG(
    dag_id="rubin_unembargo_raw",
    description="Unembargo Rubin raw exposures: zip, dimensions yaml, Butler ingest, Rucio registration",
    schedule=CronDataIntervalTimetable("*/15 * * * *", timezone="UTC"),
    start_date=schedule_start(),  # $FACILITY_RUBIN_START: where catchup begins once unpaused
    catchup=True,
    max_active_runs=4,
    is_paused_upon_creation=True,
    default_args=default_args(retries=3),
    tags=["rubin", "embargo", "usdf"],
    params={
        "instrument": Param("LSSTCam", type="string", pattern=r"^[A-Za-z][A-Za-z0-9_]*$",
                            description="Instrument (manual runs); scheduled runs cover every policy instrument"),
        "day_obs": Param(None, type=["null", "string"], pattern=r"^[0-9]{8}$",
                         description="Reprocess this observing day (YYYYMMDD)"),
        "obs_ids": Param([], type="array", items={"type": "string", "pattern": r"^[A-Z]{2}_[A-Z]_[0-9]{8}_[0-9]{6}$"},
                         description="Reprocess exactly these exposures, e.g. MC_O_20251231_000010"),
        "dry_run": Param(False, type="boolean", description="Report what would be done; change nothing"),
    },
    render_template_as_native_obj=True,
    doc_md=__doc__,
) as dag:

    @task
    def select(**context) -> list[dict]:
        """Exposures of this run (window or Params), validated before any side effect. XCom: the exposures to
        process (return value, mapped over) and, under key "skipped", those not processed and why."""
        from airflow.sdk.exceptions import AirflowFailException

        from facility_data.rubin.runs import BadRequest
        from facility_data.rubin.runs import select as select_exposures

        start, end = context.get("data_interval_start"), context.get("data_interval_end")
        try:
            out = select_exposures(context["params"], data_interval=(start, end) if start and end else None,
                                   run_after=context["dag_run"].run_after)
        except BadRequest as exc:
            raise AirflowFailException(f"bad request, nothing done: {exc}") from exc
        context["ti"].xcom_push(key="skipped", value=out["skipped"])
        return out["ready"]

    @task
    def report_not_processed(skipped: list[dict]) -> list[dict]:
        """Warn about every exposure this run will not unembargo (incomplete, embargoed, unknown)."""
        import logging

        for s in skipped:
            logging.getLogger("rubin_unembargo_raw").warning("NOT unembargoed: %s: %s", s["obs_id"], s["reason"])
        return skipped

    @task_group(group_id="exposure")
    def unembargo(exposure: dict):
        @task(map_index_template="{{ obs_id }}", max_active_tis_per_dagrun=PER_RUN_PARALLELISM)
        def gate(exposure: dict) -> dict:
            from facility_data.operators.embargo import run_rubin_step

            ctx = get_current_context()
            return run_rubin_step("gate", exposure, ctx["params"]["dry_run"], None, ctx)

        @task(map_index_template="{{ obs_id }}", max_active_tis_per_dagrun=PER_RUN_PARALLELISM)
        def dimensions(exposure: dict) -> dict:
            from facility_data.operators.embargo import run_rubin_step

            ctx = get_current_context()
            return run_rubin_step("dimensions", exposure, ctx["params"]["dry_run"], None, ctx)

        @task(map_index_template="{{ obs_id }}", max_active_tis_per_dagrun=PER_RUN_PARALLELISM)
        def butler_ingest(exposure: dict) -> dict:
            from facility_data.operators.embargo import run_rubin_step

            ctx = get_current_context()
            return run_rubin_step("butler", exposure, ctx["params"]["dry_run"], None, ctx)

        zipped = EmbargoZipOperator(task_id="zip", exposure=exposure, max_active_tis_per_dagrun=PER_RUN_PARALLELISM)
        registered = RucioRegisterOperator(task_id="rucio", exposure=exposure, zip_result=zipped.output,
                                           max_active_tis_per_dagrun=PER_RUN_PARALLELISM)
        gate(exposure) >> zipped >> dimensions(exposure) >> butler_ingest(exposure) >> registered

    @task(trigger_rule="all_done")
    def summary(results, skipped: list[dict] | None, selected: list[dict] | None) -> dict:
        """What this run did; fails the run if select failed or any selected exposure did not complete."""
        import logging

        from airflow.sdk.exceptions import AirflowFailException

        from facility_data.rubin.runs import summarize

        out = summarize(results, skipped, selected)
        logging.getLogger("rubin_unembargo_raw").info("summary: %s", out)
        if out["select_failed"]:
            raise AirflowFailException("select failed: nothing was unembargoed by this run")
        if out["not_completed"]:
            raise AirflowFailException(f"{len(out['not_completed'])} exposure(s) not completed (see their "
                                       f"tasks; rerun or reconciliation resumes them): {out['not_completed']}")
        return out

    selected = select()
    per_exposure = unembargo.expand(exposure=selected)
    rucio_results = dag.get_task("exposure.rucio").output  # one result per exposure, gathered (reduce)
    per_exposure >> summary(rucio_results, report_not_processed(selected["skipped"]), selected)
