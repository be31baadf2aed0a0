"""rubin_unembargo_reconcile: find every exposure past release that is not fully unembargoed, repair it, report it.

Hourly (no catchup) it checks every night that may hold an exposure released in the last ``lookback_nights`` days
(under the longest embargo of the instrument too); a manual run names a day_obs range. For each night
the exposures come from the embargo side (source Butler + embargo store) and are checked against every sink (zip,
dimensions yaml, each destination Butler, Rucio replicas/attachments/closed Obs/archive metadata), then classified:
done, not started, partial (stopped after a step), incomplete at source, inconsistent, pruned, error. With
``repair`` each not-started/partial exposure is resumed from its first missing step by the same idempotent steps as
``rubin_unembargo_raw`` (one mapped task per exposure). Inconsistent artifacts are never overwritten: they are
reported and alerted, as is anything else that cannot be repaired. Each run writes an HTML report per night and a
PNG chart under the site's reports directory (paths in the ``finish`` task log) and records the counts per night as
an event on the ``rubin_unembargo_reconcile`` asset. ``prune_embargo`` (off by default; dry_run reports only)
deletes an exposure's embargo copy only when the data-safety policy accepts a deep verification of every sink; a
refusal (a sink that fails it) fails ``alert`` with the reason. The ``prompt`` task checks the prompt products
of the same nights (facility_data.rubin.prompt_reconcile: a dry run of every prompt policy row; with ``repair`` the
rows with missing datasets are transferred for that night); missing, inconsistent or refused ones fail ``alert``. A run whose ``plan`` refused the Params fails
``finish`` with the reason too: no refused run ends green.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from airflow.sdk import DAG, Asset, Param, get_current_context, task

from facility_data.dag_defaults import default_args
from facility_data.placement import place

#: at most this many exposures are repaired at once within one run (each repair may rebuild a ~4 GB zip)
REPAIR_PARALLELISM = 4
#: a run maps over at most this many repairs (Airflow's max_map_length is 1024); the rest wait for the next run
MAX_REPAIRS = 1000
RECONCILED = Asset(name="rubin_unembargo_reconcile", uri="x-rubin://unembargo/reconcile", group="rubin")

with DAG(
    dag_id="rubin_unembargo_reconcile",
    description="Check every sink of the Rubin raw unembargo per night, repair what a crash left, report",
    schedule=timedelta(hours=1),
    start_date=datetime(2025, 1, 1, tzinfo=UTC),
    catchup=False,
    max_active_runs=1,
    is_paused_upon_creation=True,
    default_args=default_args(retries=2),
    tags=["rubin", "embargo", "usdf", "reconcile"],
    params={
        "instrument": Param("LSSTCam", type="string", pattern=r"^[A-Za-z][A-Za-z0-9_]*$",
                            description="Instrument (a policy instrument)"),
        "day_obs_first": Param(None, type=["null", "string"], pattern=r"^[0-9]{8}$",
                               description="First night (YYYYMMDD); empty = nights released in the last "
                                           "lookback_nights days"),
        "day_obs_last": Param(None, type=["null", "string"], pattern=r"^[0-9]{8}$",
                              description="Last night (YYYYMMDD), the same as day_obs_first for one night"),
        "lookback_nights": Param(7, type="integer", minimum=1, maximum=62,
                                 description="Days of releases checked when no range is given (scheduled runs)"),
        "repair": Param(True, type="boolean", description="Resume incomplete exposures from their first missing step"),
        "dry_run": Param(False, type="boolean", description="Check and report what would be repaired; change nothing"),
        "deep": Param(False, type="boolean",
                      description="Also re-read and re-hash every artifact against the source (slow)"),
        "prune_embargo": Param("off", type="string", enum=["off", "dry_run", "delete"],
                               description="Embargo pruning guard: off, dry_run (report decisions), delete"),
    },
    render_template_as_native_obj=True,
    doc_md=__doc__,
) as dag:

    @task
    def plan(**context) -> dict:
        """Validate the Params against the policy before anything else (bad Params: clear error, nothing done)."""
        from airflow.sdk.exceptions import AirflowFailException

        from facility_data.rubin.policy import load_policy
        from facility_data.rubin.reconcile import BadParams, check_run_conf, parse_request

        params = dict(context["params"])
        # "now" is never later than the wall clock: a run dated in the future must not treat exposures as released
        now = min(context["dag_run"].run_after, datetime.now(UTC))
        try:
            check_run_conf(context["dag_run"].conf)
            request = parse_request(params, load_policy(), now=now,
                                    lookback_days=int(params.get("lookback_nights") or 7))
        except BadParams as exc:  # an expected refusal: the message is the whole story (no chained traceback)
            context["ti"].xcom_push(key="refused", value=str(exc))  # for finish, which fails the run with it
            raise AirflowFailException(f"bad Params, nothing done: {exc}") from None
        return {**request.to_dict(), "now": now.isoformat()}

    @task(show_return_value_in_logs=False)  # logs one line per exposure to repair instead
    def check(request: dict, **context) -> list[dict]:
        """Classify every exposure of the requested nights (read-only); returns what to repair (mapped over)."""
        import logging

        from facility_data.rubin import reconcile, steps
        from facility_data.rubin.policy import load_policy

        log = logging.getLogger("rubin_unembargo_reconcile")
        req = reconcile.Request.from_dict({k: v for k, v in request.items() if k != "now"})
        ctx = steps.Context(load_policy(), dry_run=True)  # checking never writes
        now = datetime.fromisoformat(request["now"])
        nights = [reconcile.check_night(ctx, req.instrument, d, now=now, deep=req.deep) for d in req.nights]
        context["ti"].xcom_push(key="found", value=reconcile.counts_per_night(nights))
        todo = reconcile.repair_list(nights) if req.repair else []
        for item in todo:
            log.info("to repair: %s (%s, first missing step %s)", item["obs_id"], item["state"],
                     item["first_missing"])
        if len(todo) > MAX_REPAIRS:
            log.warning("%d exposures to repair; this run takes %d, the next run the rest", len(todo), MAX_REPAIRS)
        return [{"obs_id": i["obs_id"], "check": i} for i in todo[:MAX_REPAIRS]]

    @task(map_index_template="{{ obs_id }}", max_active_tis_per_dagrun=REPAIR_PARALLELISM, retries=3,
          show_return_value_in_logs=False)
    def repair(item: dict, request: dict) -> dict:
        """Resume one exposure from its first missing step (isolated: its failure does not touch the others)."""
        from facility_data.operators.embargo import rubin_task_outcome
        from facility_data.rubin import reconcile, steps
        from facility_data.rubin.policy import load_policy

        get_current_context()["obs_id"] = item["obs_id"]
        ctx = steps.Context(load_policy(), dry_run=request["dry_run"])
        with rubin_task_outcome():  # inconsistent or embargoed: failed, never overwritten; busy: retried
            return reconcile.repair_exposure(ctx, item["check"])

    @task(show_return_value_in_logs=False)  # finish logs and reports it
    def prompt(request: dict) -> dict:
        """Prompt products of the same nights: a dry run of every prompt policy row of the instrument; with
        repair (and not dry_run) the rows with missing datasets are run for real for that night, then checked
        again. Never fails on what it finds: ``alert`` does, with the reason."""
        from facility_data.rubin import prompt_reconcile
        from facility_data.rubin.prompt_policy import load_prompt_policy

        return prompt_reconcile.check(load_prompt_policy(), request["instrument"], list(request["nights"]),
                                      repair=request["repair"], dry_run=request["dry_run"],
                                      now=datetime.fromisoformat(request["now"]))

    @task(trigger_rule="all_done", outlets=[RECONCILED], show_return_value_in_logs=False)  # logs its summary
    def finish(request: dict, todo: list[dict], repaired, prompted, **context) -> dict:
        """Re-check the nights (state after repairs), prune if asked, write the reports, record the counts."""
        import logging

        from airflow.sdk.exceptions import AirflowFailException

        from facility_data.rubin import prompt_reconcile, reconcile, steps
        from facility_data.rubin.policy import load_policy

        if not request:  # plan refused the Params: nothing was checked, and the run must not end green
            refused = context["ti"].xcom_pull(task_ids="plan", key="refused")
            raise AirflowFailException(f"nothing checked: plan refused the Params: {refused}" if refused else
                                       "nothing checked: the plan task did not succeed (see its log)")
        log = logging.getLogger("rubin_unembargo_reconcile")
        req = reconcile.Request.from_dict({k: v for k, v in request.items() if k != "now"})
        done = [r for r in (repaired or []) if r]
        failed = [{"obs_id": t["obs_id"], "error": "repair task failed (see its log)"}
                  for t in (todo or []) if t["obs_id"] not in {r["obs_id"] for r in done}]
        ctx = steps.Context(load_policy(), dry_run=req.dry_run)
        now = datetime.fromisoformat(request["now"])
        nights = [reconcile.check_night(ctx, req.instrument, d, now=now, deep=req.deep) for d in req.nights]
        found = context["ti"].xcom_pull(task_ids="check", key="found")
        # a prompt task that failed leaves None: reported, and alert fails on it
        prompted = prompted or {"error": "the prompt task did not finish (see its log)"}
        result = reconcile.finish(ctx, req, nights, done, failed, found=found, prompt=prompted)
        log.info("%s", reconcile.summary(result))
        for path in result["reports"]:
            log.info("REPORT %s", path)
        context["outlet_events"][RECONCILED].extra = {
            "instrument": req.instrument, "counts": result["counts"], "repaired": len(done), "failed": len(failed),
            "unrepairable": len(result["unrepairable"]), "dry_run": req.dry_run,
            "prompt": prompt_reconcile.totals(prompted)}
        return result

    @task
    def alert(result: dict) -> None:
        """Fail (and so alert, through the DAG's failure callback) on anything this run could not repair."""
        from airflow.sdk.exceptions import AirflowFailException

        from facility_data.rubin.prompt_reconcile import verdict_lines

        bad = result["unrepairable"] + result["failed"]
        lines = [f"{b['obs_id']}: {b.get('state', 'repair failed')}: "
                 f"{'; '.join(b.get('problems', [])) or b.get('error', '')}" for b in bad]
        # the prune guard refusing a fully reconciled exposure means a sink failed its deep verification
        refused = [p for p in result["prune"] if p.get("error") or not p.get("allowed")]
        lines += [f"{p['obs_id']}: prune refused: {p.get('error') or p.get('reason')}" for p in refused]
        lines += verdict_lines(result.get("prompt"))  # missing, inconsistent, refused prompt products
        if lines:
            raise AirflowFailException(f"{len(lines)} problem(s) need an operator:\n" + "\n".join(lines[:20]))

    request = plan()
    todo = check(request)
    repaired = repair.partial(request=request).expand(item=todo)
    prompted = prompt(request)
    todo >> prompted  # after the raw checks, so it does not compete with them
    alert(finish(request, todo, repaired, prompted))

place(dag)
