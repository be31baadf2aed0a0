"""rubin_unembargo_prompt: release Rubin prompt products from the embargo Butler, every 15 minutes.

Same shape as rubin_unembargo_raw: each run owns its data interval [start, end) (catchup on, so a backfill covers a
range) and transfers exactly the datasets whose release (visit/exposure end, or ingest date, + the row's
embargo_hours; policy in include/prompt_policy.yaml) falls in it, and never one the wall clock has not passed. A
manual run with Params day_obs (and optionally rows) reprocesses that observing day. One mapped ``transfer`` per
policy row (rows are isolated): Butler.transfer_from with dimension records into every destination, idempotent
(datasets already there are verified, not duplicated; a differing one is refused as inconsistent). ``summary``
fails the run when anything due was held, refused, inconsistent or not verified, or a row did not finish.
"""

from __future__ import annotations

from airflow.sdk import DAG, Param, task
from airflow.sdk.definitions.timetables.interval import CronDataIntervalTimetable

from facility_data.dag_defaults import default_args
from facility_data.placement import place
from facility_data.rubin.policy import schedule_start
from facility_data.rubin.windows import day_obs_param

with DAG(
    dag_id="rubin_unembargo_prompt",
    description="Unembargo Rubin prompt products: Butler transfer_from into the destination Butlers",
    schedule=CronDataIntervalTimetable("*/15 * * * *", timezone="UTC"),
    start_date=schedule_start(),  # $FACILITY_RUBIN_START, as the raw DAG
    catchup=True,
    max_active_runs=4,
    is_paused_upon_creation=True,
    default_args=default_args(retries=3),
    tags=["rubin", "embargo", "usdf"],
    params={
        "day_obs": day_obs_param("Reprocess this observing day (YYYYMMDD); manual runs only"),
        "rows": Param([], type="array", items={"type": "string", "pattern": r"^[A-Za-z][A-Za-z0-9_]*$"},
                      description="Only these policy rows (manual runs); empty: every row"),
        "dry_run": Param(False, type="boolean", description="Report what would be transferred; change nothing"),
    },
    render_template_as_native_obj=True,
    doc_md=__doc__,
) as dag:

    @task(show_return_value_in_logs=False)
    def plan(**context) -> list[dict]:
        """One unit per policy row, validated before any side effect."""
        from airflow.sdk.exceptions import AirflowFailException

        from facility_data.rubin.prompt import plan as plan_run
        from facility_data.rubin.prompt_policy import load_prompt_policy
        from facility_data.rubin.runs import BadRequest

        start, end = context.get("data_interval_start"), context.get("data_interval_end")
        try:
            return plan_run(context["params"], context["dag_run"].conf, run_type=context["dag_run"].run_type,
                            data_interval=(start, end) if start and end else None, policy=load_prompt_policy())
        except BadRequest as exc:
            raise AirflowFailException(f"bad request, nothing done: {exc}") from None

    @task(map_index_template="{{ row_name }}", show_return_value_in_logs=False)
    def transfer(unit: dict) -> dict:
        """One policy row: select, compare, transfer_from, verify. Fails (after recording its summary under
        XCom key row_summary) when anything due was not transferred and verified."""
        from airflow.sdk import get_current_context
        from airflow.sdk.exceptions import AirflowFailException

        from facility_data.rubin.prompt import PromptContext, run_unit
        from facility_data.rubin.prompt_policy import load_prompt_policy

        context = get_current_context()  # the map index template reads this context, not a **kwargs copy
        context["row_name"] = unit["row"]
        out = run_unit(PromptContext(load_prompt_policy(), dry_run=unit["dry_run"]), unit)
        context["ti"].xcom_push(key="row_summary", value=out)
        if not out["ok"]:
            raise AirflowFailException(f"row {unit['row']}: {out['problem_count']} problem(s), e.g. "
                                       f"{out['problems'][:3]}")
        return out

    @task(trigger_rule="all_done", show_return_value_in_logs=False)
    def summary(**context) -> dict:
        """The run's verdict from this run's task states and each row's recorded summary: green only if plan
        succeeded and every row finished with nothing held, refused, inconsistent or unverified."""
        import logging

        from airflow.sdk.exceptions import AirflowFailException

        from facility_data.rubin.prompt import summarize, verdict_lines

        ti = context["ti"]
        states = ti.get_task_states(dag_id=ti.dag_id, task_ids=["plan", "transfer"],
                                    run_ids=[ti.run_id]).get(ti.run_id, {})
        if states.get("plan") != "success":
            raise AirflowFailException(f"plan {states.get('plan') or 'did not run'}: nothing was transferred by "
                                       f"this run (see the plan task)")
        units = ti.xcom_pull(task_ids="plan") or []
        indexes = list(range(len(units)))
        recorded = ti.xcom_pull(task_ids="transfer", key="row_summary", map_indexes=indexes) if indexes else []
        if not isinstance(recorded, list):
            recorded = [recorded]
        # matched by row name (unique in the policy), not by position: a row that pushed nothing leaves no gap
        by_row = {r["row"]: r for r in recorded if isinstance(r, dict) and "row" in r}
        results, missing = [], []
        for i, unit in enumerate(units):
            got = by_row.get(unit["row"])
            # a green summary counts only if its task succeeded in this run
            if got is None or (got.get("ok") and states.get(f"transfer_{i}") != "success"):
                missing.append(unit["row"])
            else:
                results.append(got)
        out = summarize(results, dry_run=bool(units and units[0]["dry_run"]), missing=missing)
        logging.getLogger("rubin_unembargo_prompt").info(
            "summary: %d row(s), %d selected, %d transferred, %d already present, %d would transfer, %d problem(s)",
            len(units), out["selected"], out["transferred"], out["already_present"], out["would_transfer"],
            out["problem_count"])
        if units and not out["ok"]:
            lines = verdict_lines(out)
            raise AirflowFailException(f"{len(lines)} thing(s) asked for and not done (a rerun resumes what can "
                                       f"be resumed):\n" + "\n".join(lines[:50]))
        return out

    units = plan()
    transfer.expand(unit=units) >> summary()

place(dag)
