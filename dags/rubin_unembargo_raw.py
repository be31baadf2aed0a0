"""rubin_unembargo_raw: release Rubin raw exposures from the USDF embargo store, every 15 minutes.

Each run owns its data interval [start, end) (catchup on): it unembargoes exactly the exposures whose release time
(exposure end + embargo + settle, policy in include/embargo_policy.yaml) falls in it, so a backfill over any range
unembargoes exactly the exposures released in that range. A manual run with Params day_obs and/or obs_ids
reprocesses exactly those exposures (never one still under embargo). Each exposure is one mapped unit:
gate -> zip -> dimensions -> butler ingest -> rucio, every step idempotent (check, act only if missing, verify).
The run is green only if every exposure it was asked for (window or Params) ended its last step in this run and is
verified in the sinks; anything skipped (still embargoed, incomplete, unknown) fails ``summary`` with its reason.
Scheduled and backfill runs refuse the manual-only Params day_obs/obs_ids.
"""

from __future__ import annotations

from airflow.sdk import DAG, Param, task, task_group
from airflow.sdk.definitions.timetables.interval import CronDataIntervalTimetable

from facility_data.dag_defaults import default_args
from facility_data.operators.embargo import EmbargoZipOperator, RubinStepOperator
from facility_data.placement import place
from facility_data.rubin.policy import schedule_start
from facility_data.rubin.runs import PER_RUN_PARALLELISM
from facility_data.rubin.windows import day_obs_param

#: the per-exposure tasks in chain order; the last one's success (in this run) ends an exposure's unit
STEP_TASKS = ("exposure.gate", "exposure.zip", "exposure.dimensions", "exposure.butler_ingest", "exposure.rucio")

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
        "day_obs": day_obs_param("Reprocess this observing day (YYYYMMDD)"),
        "obs_ids": Param([], type="array", items={"type": "string", "pattern": r"^[A-Z]{2}_[A-Z]_[0-9]{8}_[0-9]{6}$"},
                         description="Reprocess exactly these exposures, e.g. MC_O_20251231_000010"),
        "dry_run": Param(False, type="boolean", description="Report what would be done; change nothing"),
    },
    render_template_as_native_obj=True,
    doc_md=__doc__,
) as dag:

    @task(show_return_value_in_logs=False)
    def select(**context) -> list[dict]:
        """Exposures of this run (window or Params), validated before any side effect. XCom: the exposures to
        process (return value, mapped over) and, under key "skipped", those not processed and why."""
        from airflow.sdk.exceptions import AirflowFailException

        from facility_data.rubin.runs import BadRequest, check_run_conf, refuse_manual_params_in_window_runs
        from facility_data.rubin.runs import select as select_exposures

        start, end = context.get("data_interval_start"), context.get("data_interval_end")
        try:
            check_run_conf(context["dag_run"].conf)
            refuse_manual_params_in_window_runs(context["params"], context["dag_run"].run_type)
            out = select_exposures(context["params"], data_interval=(start, end) if start and end else None,
                                   run_after=context["dag_run"].run_after)
        except BadRequest as exc:  # an expected refusal: its message is the whole story (no chained traceback)
            raise AirflowFailException(f"bad request, nothing done: {exc}") from None
        context["ti"].xcom_push(key="skipped", value=out["skipped"])
        return out["ready"]

    @task(show_return_value_in_logs=False)
    def report_not_processed(skipped: list[dict]) -> list[dict]:
        """Warn about every exposure this run will not unembargo (incomplete, embargoed, unknown)."""
        import logging

        for s in skipped:
            logging.getLogger("rubin_unembargo_raw").warning("NOT unembargoed: %s: %s", s["obs_id"], s["reason"])
        return skipped

    @task_group(group_id="exposure")
    def unembargo(exposure: dict):
        # every step is idempotent; each mapped instance is named by its obs_id and logs one line of its own
        each = {"exposure": exposure, "max_active_tis_per_dagrun": PER_RUN_PARALLELISM}
        gate = RubinStepOperator(task_id="gate", step="gate", **each)
        zipped = EmbargoZipOperator(task_id="zip", **each)
        dimensions = RubinStepOperator(task_id="dimensions", step="dimensions", **each)
        butler_ingest = RubinStepOperator(task_id="butler_ingest", step="butler", **each)
        registered = RubinStepOperator(task_id="rucio", step="rucio", zip_result=zipped.output, **each)
        gate >> zipped >> dimensions >> butler_ingest >> registered

    @task(trigger_rule="all_done", show_return_value_in_logs=False)
    def summary(**context) -> dict:
        """The run's verdict from this run's task-instance states and the sinks (never from XCom an earlier run
        or try left): green only if select succeeded, nothing asked for was skipped, and every selected exposure's
        last step succeeded in this run and is verified in the sinks."""
        import logging

        from airflow.sdk.exceptions import AirflowFailException

        from facility_data.rubin.runs import summarize, unverified_in_sinks, verdict_lines

        ti = context["ti"]
        states = ti.get_task_states(dag_id=ti.dag_id, task_ids=["select", *STEP_TASKS],
                                    run_ids=[ti.run_id]).get(ti.run_id, {})
        if states.get("select") != "success":
            raise AirflowFailException(f"select {states.get('select') or 'did not run'}: nothing was unembargoed "
                                       f"by this run (see the select task)")
        selected = ti.xcom_pull(task_ids="select") or []
        skipped = ti.xcom_pull(task_ids="select", key="skipped") or []
        succeeded = [i for i in range(len(selected)) if states.get(f"{STEP_TASKS[-1]}_{i}") == "success"]
        results = dict(zip(succeeded, ti.xcom_pull(task_ids=STEP_TASKS[-1], map_indexes=succeeded)
                           if succeeded else [], strict=True))
        unverified = {} if context["params"]["dry_run"] else unverified_in_sinks([selected[i] for i in succeeded])
        out = summarize(selected, skipped, states, list(STEP_TASKS), results, unverified)
        log = logging.getLogger("rubin_unembargo_raw")
        log.info("summary: %d selected, %d acted, %d already done, %d dry run; %d not completed, %d not "
                 "processed", out["selected"], out["acted"], out["already_done"], out["dry_run"],
                 len(out["not_completed"]), len(out["not_processed"]))
        if not out["ok"]:
            lines = verdict_lines(out)
            raise AirflowFailException(f"{len(lines)} exposure(s) asked for and not unembargoed (a rerun or "
                                       f"reconciliation resumes what can be resumed):\n" + "\n".join(lines[:50]))
        return out

    selected = select()
    per_exposure = unembargo.expand(exposure=selected)
    verdict = summary()
    per_exposure >> verdict
    report_not_processed(selected["skipped"]) >> verdict

place(dag)
