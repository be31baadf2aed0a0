"""``<id>_new_file``: triggered by the acquisition side's file watcher (REST API) or by hand. Validates the conf,
copies spot -> data (if the beamline has a spot location), then data -> NERSC unless export-controlled or
``send_to_nersc`` is false, verifies and records each copy in the ledger, ingests into SciCat (a leaf: a failure
fails the run and alerts, but never blocks the copies or the announcements), and emits one asset event per enabled
reconstruction target.
"""

from __future__ import annotations

import logging
from datetime import timedelta

from airflow.sdk import DAG, Asset, Param, task

from facility_data.als.beamline import Beamline
from facility_data.als.dags.common import (
    START,
    announced_line,
    conf_item,
    context,
    decision_override,
    env,
    flat,
    leaf_failure,
    recon_asset,
    run_conf,
    run_id,
)
from facility_data.als.paths import form_pattern
from facility_data.dag_defaults import default_args
from facility_data.refusal import permanent

log = logging.getLogger(__name__)


def build_new_file_dag(bl: Beamline) -> DAG:
    from facility_data.operators.globus import GlobusTransferOperator

    deadline = timedelta(minutes=bl.transfer_deadline_minutes)
    assets = {t: recon_asset(bl, t) for t in bl.recon_targets}
    doc = f"""
### {bl.id}_new_file: a new BL {bl.beamline} scan
Triggered by the file watcher (`POST /api/v2/dags/{bl.id}_new_file/dagRuns` with `conf.file_path`) or by hand.
Validates the conf, copies {'spot -> data -> NERSC' if bl.source_role == 'spot' else 'data -> NERSC'}
(never off site when export-controlled), records each verified copy in the ledger, ingests into SciCat (a failure
fails the run with an alert, but the copies and announcements do not wait for it), then announces the scan to the
reconstruction targets enabled by the decision settings (Variable `{bl.decision_variable}`, defaults in `include/beamlines/{bl.id}.yaml`).
"""
    with DAG(
        dag_id=f"{bl.id}_new_file",
        description=f"BL {bl.beamline}: move a new scan, catalogue it, start its reconstructions",
        schedule=None,
        start_date=START,
        catchup=False,
        is_paused_upon_creation=False,  # the watcher's trigger must never land on a paused DAG
        default_args=default_args(),
        tags=["als", bl.id, "transfer", "scicat"],
        doc_md=doc,
        params={
            "file_path": Param(
                type="string", pattern=form_pattern(bl.rules), minLength=1,
                description=f"Watcher path: {bl.rules.raw_root}/<PROPOSAL>-<digits>_<user>/<YYYYMMDD_HHMMSS_name>.h5"),
            "is_export_control": Param(False, type="boolean",
                                       description="Export-controlled scans never leave ALS"),
            "send_to_nersc": Param(bl.send_to_nersc, type="boolean",
                                   description="Copy the raw scan to NERSC (ignored when export-controlled)"),
        },
        render_template_as_native_obj=False,
    ) as dag:

        @task(multiple_outputs=True, show_return_value_in_logs=False)  # validate_new_scan logs one line
        def validate() -> dict:
            """Check the conf and that the scan exists at the source; nothing moves before this succeeds."""
            from facility_data.als.steps import validate_new_scan

            conf = run_conf()
            endpoints, ledger = env(bl)
            with permanent(conf_item(conf)):
                return flat(validate_new_scan(bl, endpoints, ledger, conf))

        scan = validate()

        @task(multiple_outputs=True, show_return_value_in_logs=False)  # steps.record_copy logs one line
        def record_copy(record: dict, source: str, destination: str, transfer: dict | None = None) -> dict:
            """Verify the destination equals the source (size, checksum) and record both in the ledger, with the
            copy task's result as the evidence a Globus destination needs (see steps.record_copy)."""
            from facility_data.als.steps import record_copy as _record

            endpoints, ledger = env(bl)
            return _record(bl, endpoints, ledger, record, source=source, destination=destination,
                           run_id=run_id(), transfer=transfer)

        def copy_and_verify(source: str, destination: str):
            """copy_<source>_to_<destination> >> verify_<destination>_copy (the copy's result is its evidence)."""
            copy = GlobusTransferOperator(
                task_id=f"copy_{source}_to_{destination}", source_endpoint=bl.location(source).endpoint,
                source_path=scan[f"{source}_raw"], destination_endpoint=bl.location(destination).endpoint,
                destination_path=scan[f"{destination}_raw"], export_controlled=scan["export_controlled"],
                label=f"{bl.id} {source}->{destination}", deadline=deadline, verify_checksum=True)
            verified = record_copy.override(task_id=f"verify_{destination}_copy")(
                scan, source, destination, copy.output)
            copy >> verified
            return copy, verified

        if bl.source_role == "spot":
            _, data_ok = copy_and_verify("spot", "data")
        else:
            @task(show_return_value_in_logs=False)  # record_present logs one line
            def record_arrival(record: dict) -> dict:
                """The scan arrives directly on the data server: record it (size, checksum, arrival time)."""
                from facility_data.als.steps import record_present

                endpoints, ledger = env(bl)
                return record_present(bl, endpoints, ledger, record, "data", run_id=run_id())

            data_ok = record_arrival(scan)

        @task(show_return_value_in_logs=False)
        def ingest_scicat(record: dict) -> dict:
            """Catalogue the scan in SciCat. A leaf (nothing waits for it, so the data still moves), but a scan not
            catalogued fails the task: after the DAG's retries when SciCat may come back (unreachable, 5xx), at once
            when a retry cannot help (login refused, 4xx, bad scan or connection). The failure alert names why."""
            if not bl.scicat.enabled:
                log.info("SciCat ingest is disabled for %s", bl.id)
                return {"status": "disabled"}
            try:
                from pathlib import Path

                from facility_data.als.scicat_ingest import ingest_scan
                from facility_data.als.steps import endpoints_for
                from facility_data.hooks.scicat import SciCatHook

                if bl.scicat.h5_root:
                    h5 = Path(bl.scicat.h5_root) / record["relative"]
                else:
                    endpoints, _ = env(bl)
                    h5 = endpoints_for(bl, endpoints)["data"].local_path(record["data_raw"])
                pid = ingest_scan(SciCatHook(bl.scicat.conn_id), h5, source_path=record["file_path"],
                                  source_root=bl.scicat.source_root, storage_root=bl.scicat.storage_root,
                                  owner_group_fallback=bl.scicat.owner_group_fallback or bl.beamline)
            except Exception as exc:
                from facility_data.als.scicat_ingest import retryable

                raise leaf_failure(f"SciCat ingest of {record['relative']}", exc, retryable=retryable(exc)) from None
            log.info("SciCat dataset %s for %s", pid, record["relative"])
            return {"status": "ingested", "pid": pid}

        data_ok >> ingest_scicat(scan)  # a leaf: nothing may depend on it (tests/dags/test_als_scicat_in_dag.py)

        nersc_ok = None
        if "nersc" in bl.locations:
            @task.short_circuit(ignore_downstream_trigger_rules=False)
            def nersc_gate(record: dict) -> bool:
                """data -> NERSC only when not export-controlled (safety policy) and send_to_nersc is true."""
                from facility_data.als.steps import nersc_copy_decision

                endpoints, ledger = env(bl)
                with permanent(record["relative"]):
                    go, reason = nersc_copy_decision(bl, endpoints, ledger, record)
                log.info("NERSC copy of %s: %s (%s)", record["relative"], "yes" if go else "skipped", reason)
                return go

            data_to_nersc, nersc_ok = copy_and_verify("data", "nersc")
            data_ok >> nersc_gate(scan) >> data_to_nersc

        if not assets:
            return dag

        @task(trigger_rule="none_failed", show_return_value_in_logs=False)
        def raw_copies(record: dict) -> dict:
            """Where the raw scan now is (size, checksum per location), read back from the ledger."""
            _, ledger = env(bl)
            out = {}
            for role in ("spot", "data", "nersc"):
                rec = ledger.copy(bl.id, role, record["key"])
                if rec is not None and rec.state == "present":
                    out[role] = {"size": rec.size, "checksum": rec.checksum}
            log.info("%s: raw copies verified at %s", record["relative"],
                     ", ".join(f"{role} ({c['size']} B)" for role, c in out.items()) or "no location")
            return out

        copies = raw_copies(scan)
        data_ok >> copies
        if nersc_ok is not None:
            nersc_ok >> copies

        for target, asset in assets.items():
            @task(task_id=f"announce_{target}", outlets=[asset], show_return_value_in_logs=False)
            def announce(record: dict, where: dict, target: str = target, asset: Asset = asset) -> dict:
                """Emit the asset event that starts <bl>_recon_<target>, if enabled and allowed."""
                from airflow.sdk.exceptions import AirflowSkipException

                from facility_data.als.steps import leave_site_decision, send_to_nersc_refusal

                decisions = bl.effective_decisions(decision_override(bl))
                if not getattr(decisions, target):
                    raise AirflowSkipException(f"{target} reconstruction disabled by the decision settings")
                refusal = target == "nersc" and send_to_nersc_refusal(bl, record["relative"], record["send_to_nersc"])
                if refusal:
                    log.warning("not announcing %s to nersc reconstruction: %s", record["relative"], refusal)
                    raise AirflowSkipException(refusal)
                if target != "local":
                    endpoints, ledger = env(bl)
                    with permanent(record["relative"]):
                        decision = leave_site_decision(bl, endpoints, ledger, record, target)
                    if not decision.allowed:
                        log.warning("not announcing %s to %s reconstruction: %s", record["relative"], target,
                                    decision.reason)
                        raise AirflowSkipException(decision.reason)
                extra = {"file_path": record["file_path"], "relative": record["relative"],
                         "export_controlled": record["export_controlled"], "send_to_nersc": record["send_to_nersc"],
                         "sizes": {role: c["size"] for role, c in where.items()},
                         "checksum": next((c["checksum"] for c in where.values() if c.get("checksum")), None)}
                context()["outlet_events"][asset].extra = extra
                log.info("announced %s to %s reconstruction (%s)", record["relative"], target, announced_line(extra))
                return extra

            announce(scan, copies)

    return dag
