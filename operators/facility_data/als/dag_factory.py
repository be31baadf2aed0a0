"""Build every ALS beamline's DAGs from its configuration (``include/beamlines/<id>.yaml``); no DAG code is copied.

Per beamline:

* ``<id>_new_file``: triggered by the acquisition side's file watcher (REST API) or by hand. Validates the conf,
  copies spot -> data (if the beamline has a spot location), then data -> NERSC unless export-controlled or
  ``send_to_nersc`` is false, verifies and records each copy in the ledger, ingests into SciCat (a failure is a
  warning plus an alert, never a blocker), and emits one asset event per enabled reconstruction target.
* ``<id>_recon_<target>`` for each configured target (local, nersc, alcf): asset-triggered (or manual with a conf).
* ``<id>_reconcile``: the daily check that every scan went through its chain; repairs missing raw copies.
* ``<id>_prune``: the daily retention sweep; deletes only where a location has ``delete: true`` (manual runs default
  to a dry run). ``<id>_prune_preview``: the same sweep as a dry run, unscheduled and never paused.

Only ``airflow.sdk`` and light project modules are imported here; the steps import heavy libraries when they run.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta

from airflow.sdk import DAG, Asset, Param, task, task_group

from facility_data.als.beamline import Beamline, load_beamlines
from facility_data.als.paths import form_pattern
from facility_data.dag_defaults import default_args

log = logging.getLogger(__name__)

START = datetime(2025, 1, 1)


def _context():
    from airflow.sdk import get_current_context

    return get_current_context()


def _env(bl: Beamline):
    """(endpoints, ledger) for a running task (never at parse time)."""
    from facility_data.als.ledger import Ledger
    from facility_data.transfer import load_endpoints

    return load_endpoints(), Ledger(bl.ledger_file())


def _decision_override(bl: Beamline):
    from airflow.sdk import Variable

    return Variable.get(bl.decision_variable, default=None)


def _run_id() -> str | None:
    ctx = _context()
    return getattr(ctx.get("dag_run"), "run_id", None)


def _run_conf() -> dict:
    """The conf exactly as the run was given it. Airflow merges unknown keys into ``params``, where a misspelt
    safety flag would pass unseen; the closed-schema checks read this instead."""
    conf = getattr(_context().get("dag_run"), "conf", None)
    return dict(conf) if isinstance(conf, dict) else ({} if conf is None else conf)


def _warn_and_alert(what: str, exc: BaseException) -> None:
    """A non-blocking failure: a WARNING in the task log and an alert through the project's notifier."""
    from facility_data.notify import FacilityAlertNotifier

    log.warning("%s failed (data movement continues): %s: %s", what, type(exc).__name__, exc)
    try:
        FacilityAlertNotifier().notify({**_context(), "exception": exc})
    except Exception as alert_exc:  # alerting must never turn a warning into a failure
        log.warning("could not send the alert for %s: %s", what, alert_exc)


@contextmanager
def _permanent():
    """Bad input and safety refusals fail the task at once: retrying cannot fix them."""
    from airflow.sdk.exceptions import AirflowFailException

    from facility_data.conf import ConfError
    from facility_data.config import ConfigError
    from facility_data.safety import SafetyError

    try:
        yield
    except (ConfError, ConfigError, SafetyError) as exc:
        log.error("%s: %s", type(exc).__name__, exc)
        raise AirflowFailException(f"{type(exc).__name__}: {exc}") from exc


def recon_asset(bl: Beamline, target: str) -> Asset:
    return Asset(name=bl.asset_name(target), uri=bl.asset_uri(target), group="als",
                 extra={"beamline": bl.id, "target": target})


def _flat(scan: dict) -> dict:
    """A scan record plus flat ``<role>_<what>`` keys, so operators can take ``xcom["data_raw"]`` arguments."""
    out = dict(scan)
    for role, paths in scan["paths"].items():
        for what, path in paths.items():
            out[f"{role}_{what}"] = path
    return out


# ---------------------------------------------------------------------------------------------- new file
def build_new_file_dag(bl: Beamline) -> DAG:
    from facility_data.operators.globus import GlobusTransferOperator

    deadline = timedelta(minutes=bl.transfer_deadline_minutes)
    assets = {t: recon_asset(bl, t) for t in bl.recon_targets}
    doc = f"""
### {bl.id}_new_file: a new BL {bl.beamline} scan
Triggered by the file watcher (`POST /api/v2/dags/{bl.id}_new_file/dagRuns` with `conf.file_path`) or by hand.
Validates the conf, copies {'spot -> data -> NERSC' if bl.source_role == 'spot' else 'data -> NERSC'}
(never off site when export-controlled), records each verified copy in the ledger, ingests into SciCat (a failure
is a warning and an alert, never a blocker), then announces the scan to the reconstruction targets enabled by
the decision settings (Variable `{bl.decision_variable}`, defaults in `include/beamlines/{bl.id}.yaml`).
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

        @task(multiple_outputs=True)
        def validate() -> dict:
            """Check the conf and that the scan exists at the source; nothing moves before this succeeds."""
            from facility_data.als.steps import validate_new_scan

            endpoints, ledger = _env(bl)
            with _permanent():
                return _flat(validate_new_scan(bl, endpoints, ledger, _run_conf()))

        scan = validate()

        @task(multiple_outputs=True)
        def record_copy(record: dict, source: str, destination: str) -> dict:
            """Verify the destination equals the source (size, checksum) and record both in the ledger."""
            from facility_data.als.steps import record_copy as _record

            endpoints, ledger = _env(bl)
            return _record(bl, endpoints, ledger, record, source=source, destination=destination,
                           run_id=_run_id())

        if bl.source_role == "spot":
            spot_to_data = GlobusTransferOperator(
                task_id="copy_spot_to_data", source_endpoint=bl.location("spot").endpoint,
                source_path=scan["spot_raw"], destination_endpoint=bl.location("data").endpoint,
                destination_path=scan["data_raw"], export_controlled=scan["export_controlled"],
                label=f"{bl.id} spot->data", deadline=deadline, verify_checksum=True)
            data_ok = record_copy.override(task_id="verify_data_copy")(scan, "spot", "data")
            spot_to_data >> data_ok
        else:
            @task
            def record_arrival(record: dict) -> dict:
                """The scan arrives directly on the data server: record it (size, checksum, arrival time)."""
                from facility_data.als.steps import record_present

                endpoints, ledger = _env(bl)
                return record_present(bl, endpoints, ledger, record, "data", run_id=_run_id())

            data_ok = record_arrival(scan)

        @task
        def ingest_scicat(record: dict) -> dict:
            """Catalogue the scan in SciCat; a failure is a visible warning + alert, never a blocker."""
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
                    endpoints, _ = _env(bl)
                    h5 = endpoints_for(bl, endpoints)["data"].local_path(record["data_raw"])
                pid = ingest_scan(SciCatHook(bl.scicat.conn_id), h5, source_path=record["file_path"],
                                  source_root=bl.scicat.source_root, storage_root=bl.scicat.storage_root,
                                  owner_group_fallback=bl.scicat.owner_group_fallback or bl.beamline)
            except Exception as exc:
                _warn_and_alert(f"SciCat ingest of {record['relative']}", exc)
                return {"status": "failed", "error": f"{type(exc).__name__}: {exc}"}
            log.info("SciCat dataset %s for %s", pid, record["relative"])
            return {"status": "ingested", "pid": pid}

        data_ok >> ingest_scicat(scan)

        nersc_ok = None
        if "nersc" in bl.locations:
            @task.short_circuit(ignore_downstream_trigger_rules=False)
            def nersc_gate(record: dict) -> bool:
                """data -> NERSC only when not export-controlled (safety policy) and send_to_nersc is true."""
                from facility_data.als.steps import nersc_copy_decision

                endpoints, ledger = _env(bl)
                with _permanent():
                    go, reason = nersc_copy_decision(bl, endpoints, ledger, record)
                log.info("NERSC copy of %s: %s (%s)", record["relative"], "yes" if go else "skipped", reason)
                return go

            gate = nersc_gate(scan)
            data_to_nersc = GlobusTransferOperator(
                task_id="copy_data_to_nersc", source_endpoint=bl.location("data").endpoint,
                source_path=scan["data_raw"], destination_endpoint=bl.location("nersc").endpoint,
                destination_path=scan["nersc_raw"], export_controlled=scan["export_controlled"],
                label=f"{bl.id} data->nersc", deadline=deadline, verify_checksum=True)
            nersc_ok = record_copy.override(task_id="verify_nersc_copy")(scan, "data", "nersc")
            data_ok >> gate >> data_to_nersc >> nersc_ok

        if not assets:
            return dag

        @task(trigger_rule="none_failed")
        def raw_copies(record: dict) -> dict:
            """Where the raw scan now is (size, checksum per location), read back from the ledger."""
            _, ledger = _env(bl)
            out = {}
            for role in ("spot", "data", "nersc"):
                rec = ledger.copy(bl.id, role, record["key"])
                if rec is not None and rec.state == "present":
                    out[role] = {"size": rec.size, "checksum": rec.checksum}
            return out

        copies = raw_copies(scan)
        data_ok >> copies
        if nersc_ok is not None:
            nersc_ok >> copies

        for target, asset in assets.items():
            @task(task_id=f"announce_{target}", outlets=[asset])
            def announce(record: dict, where: dict, target: str = target, asset: Asset = asset) -> dict:
                """Emit the asset event that starts <bl>_recon_<target>, if enabled and allowed."""
                from airflow.sdk.exceptions import AirflowSkipException

                from facility_data.als.steps import leave_site_decision, send_to_nersc_refusal

                decisions = bl.effective_decisions(_decision_override(bl))
                if not getattr(decisions, target):
                    raise AirflowSkipException(f"{target} reconstruction disabled by the decision settings")
                refusal = target == "nersc" and send_to_nersc_refusal(bl, record["relative"], record["send_to_nersc"])
                if refusal:
                    log.warning("not announcing %s to nersc reconstruction: %s", record["relative"], refusal)
                    raise AirflowSkipException(refusal)
                if target != "local":
                    endpoints, ledger = _env(bl)
                    with _permanent():
                        decision = leave_site_decision(bl, endpoints, ledger, record, target)
                    if not decision.allowed:
                        log.warning("not announcing %s to %s reconstruction: %s", record["relative"], target,
                                    decision.reason)
                        raise AirflowSkipException(decision.reason)
                extra = {"file_path": record["file_path"], "relative": record["relative"],
                         "export_controlled": record["export_controlled"], "send_to_nersc": record["send_to_nersc"],
                         "sizes": {role: c["size"] for role, c in where.items()},
                         "checksum": next((c["checksum"] for c in where.values() if c.get("checksum")), None)}
                _context()["outlet_events"][asset].extra = extra
                log.info("announced %s to %s reconstruction: %s", record["relative"], target, extra)
                return extra

            announce(scan, copies)

    return dag


# ---------------------------------------------------------------------------------------------- reconstruction
def _recon_params(bl: Beamline) -> dict:
    return {
        "file_path": Param(None, type=["null", "string"], pattern=form_pattern(bl.rules),
                           description="Manual reprocessing: watcher or raw-relative path (asset runs ignore this)"),
        "is_export_control": Param(None, type=["null", "boolean"],
                                   description="Leave empty unless you know: a scan the ledger does not know, with "
                                               "no answer here, never leaves ALS"),
        "send_to_nersc": Param(None, type=["null", "boolean"],
                               description="NERSC reconstruction of a scan whose send_to_nersc is false is refused; "
                                           "empty: the beamline's default"),
    }


def _collect_task(bl: Beamline, target: str, asset: Asset):
    @task
    def collect() -> list[dict]:
        """The scans to reconstruct (from the asset events, or the manual conf), after every check."""
        from airflow.sdk.exceptions import AirflowSkipException

        from facility_data.als.steps import recon_requests

        ctx = _context()
        from facility_data.als.steps import event_extras

        extras = event_extras(ctx.get("triggering_asset_events"))
        endpoints, ledger = _env(bl)
        with _permanent():
            scans = recon_requests(bl, endpoints, ledger, target, event_extras=extras, conf=_run_conf(),
                                   decision_override=_decision_override(bl))
        if not scans:
            raise AirflowSkipException(f"{target} reconstruction disabled by the decision settings")
        log.info("%s reconstruction of %s", target, [s["relative"] for s in scans])
        return [_flat(s) for s in scans]

    return collect()


def _publish_task(bl: Beamline, role: str = "data_scratch"):
    @task
    def publish(record: dict) -> dict:
        """Make the outputs at data832 group-writable (local endpoints) and record them in the ledger."""
        from facility_data.als.permissions import DIR_MODE, make_group_writable
        from facility_data.als.steps import endpoints_for, record_output

        endpoints, ledger = _env(bl)
        eps = endpoints_for(bl, endpoints)
        if eps[role].kind == "local":
            for what in ("tiff", "zarr"):
                make_group_writable(eps[role].local_path(record[f"{role}_{what}"]))
            # deleting rec<stem>/ later needs write permission on the scan folder itself
            eps[role].local_path(record[f"{role}_folder"]).chmod(DIR_MODE)
        out = {what: record_output(bl, endpoints, ledger, record, role, what, run_id=_run_id())
               for what in ("tiff", "zarr")}
        log.info("reconstruction of %s published at %s: %s", record["relative"], eps[role].name, out)
        return {"relative": record["relative"], **out}

    return publish


def _recon_dag(bl: Beamline, target: str, description: str) -> tuple[DAG, Asset]:
    """The DAG of one reconstruction target and the asset that starts it. Never paused at creation: a paused
    asset-triggered DAG misses events (Airflow #49857)."""
    asset = recon_asset(bl, target)
    dag = DAG(dag_id=f"{bl.id}_recon_{target}", schedule=[asset], start_date=START, catchup=False,
              is_paused_upon_creation=False, description=f"BL {bl.beamline}: {description}",
              default_args=default_args(), tags=["als", bl.id, "reconstruction", target],
              params=_recon_params(bl), doc_md=f"Asset-triggered by `{bl.id}_new_file` (asset `{asset.uri}`).")
    return dag, asset


def build_recon_local_dag(bl: Beamline) -> DAG:
    dag, asset = _recon_dag(bl, "local", "reconstruct on this machine (FBP -> TIFF stack -> OME-Zarr)")
    with dag:
        scans = _collect_task(bl, "local", asset)

        @task
        def reconstruct(record: dict) -> dict:
            """Filtered back-projection of the raw scan into data832 scratch: <folder>/rec<stem>/."""
            from facility_data.als.recon import reconstruct as _reconstruct
            from facility_data.als.steps import local_paths

            endpoints, _ = _env(bl)
            h5, folder, tiff, _zarr = local_paths(bl, endpoints, record)
            result = _reconstruct(h5, folder)
            log.info("reconstructed %s -> %s", h5, tiff)
            return {**record, "recon": result.to_dict()}

        @task
        def multiscale(record: dict) -> dict:
            """The TIFF stack as a multiscale OME-Zarr: <folder>/rec<stem>.zarr/."""
            from facility_data.als.multiscale import build_multiscale, pixel_size_from_scan
            from facility_data.als.steps import local_paths

            endpoints, _ = _env(bl)
            h5, _folder, tiff, zarr = local_paths(bl, endpoints, record)
            try:
                pixel = pixel_size_from_scan(h5)
            except Exception as exc:
                pixel = bl.recon.pixel_size_um_fallback
                log.warning("no pixel size in %s (%s); using the configured %.3f um", h5, exc, pixel)
            result = build_multiscale(tiff, zarr, pixel)
            log.info("multiscale %s -> %s", tiff, zarr)
            return {**record, "multiscale": result.to_dict()}

        _publish_task(bl).expand(record=multiscale.expand(record=reconstruct.expand(record=scans)))
    return dag


def _fs_path(ep, rel: str) -> str:
    """Where ``rel`` on endpoint ``ep`` is on the filesystem a job sees (this machine for local endpoints)."""
    return str(ep.local_path(rel)) if ep.kind == "local" else ep.remote_path(rel)


def _copy_back(bl: Beamline, record, source: str, destination: str, what: str, deadline: timedelta):
    from facility_data.operators.globus import GlobusTransferOperator

    return GlobusTransferOperator(
        task_id=f"copy_{what}_{source}_to_{destination}", source_endpoint=bl.location(source).endpoint,
        source_path=record[f"{source}_{what}"], destination_endpoint=bl.location(destination).endpoint,
        destination_path=record[f"{destination}_{what}"], recursive=True,
        export_controlled=record["export_controlled"], label=f"{bl.id} {what} {source}->{destination}",
        deadline=deadline, verify_checksum=True)


def _verify_outputs_task(bl: Beamline, source: str, extra_copies: tuple[str, ...] = ()):
    @task
    def verify_and_record(record: dict) -> dict:
        """Check the copies at data832 equal the remote outputs, make them group-writable, record them."""
        from facility_data.als.permissions import DIR_MODE, make_group_writable
        from facility_data.als.steps import endpoints_for, record_copy

        endpoints, ledger = _env(bl)
        eps = endpoints_for(bl, endpoints)
        out = {}
        for what in ("tiff", "zarr"):
            if eps["data_scratch"].kind == "local":
                make_group_writable(eps["data_scratch"].local_path(record[f"data_scratch_{what}"]))
                eps["data_scratch"].local_path(record["data_scratch_folder"]).chmod(DIR_MODE)
            for dest in ("data_scratch", *extra_copies):
                out[f"{what}@{dest}"] = record_copy(bl, endpoints, ledger, record, source=source, destination=dest,
                                                    what=what, run_id=_run_id())
        log.info("reconstruction of %s verified at %s: %s", record["relative"], eps["data_scratch"].name, out)
        return out

    return verify_and_record


def _stage_raw(bl: Beamline, record, target: str, deadline: timedelta):
    from facility_data.operators.globus import GlobusTransferOperator

    return GlobusTransferOperator(
        task_id=f"stage_raw_to_{target}", source_endpoint=bl.location("data").endpoint,
        source_path=record["data_raw"], destination_endpoint=bl.location(target).endpoint,
        destination_path=record[f"{target}_raw"], export_controlled=record["export_controlled"],
        label=f"{bl.id} raw data->{target}", deadline=deadline, verify_checksum=True)


def build_recon_nersc_dag(bl: Beamline) -> DAG:
    """NERSC: stage the raw scan on CFS, Slurm jobs through the SFAPI (reconstruct, then OME-Zarr) writing to
    pscratch, then Globus copies back to data832 (and to CFS scratch). Any failure stops the later steps."""
    from facility_data.operators.sfapi import SFAPISubmitJobOperator
    from facility_data.sensors.sfapi import SFAPIJobSensor

    cfg = bl.recon.nersc
    deadline = timedelta(minutes=bl.transfer_deadline_minutes)
    extra = ("nersc_scratch",) if "nersc_scratch" in bl.locations else ()
    dag, asset = _recon_dag(bl, "nersc", "reconstruct at NERSC (SFAPI/Slurm) and copy results back")
    with dag:
        scans = _collect_task(bl, "nersc", asset)

        @task(multiple_outputs=True)
        def prepare(record: dict) -> dict:
            """Job parameters: paths as the NERSC jobs see them."""
            import shlex

            from facility_data.als.steps import endpoints_for

            endpoints, _ = _env(bl)
            eps = endpoints_for(bl, endpoints)
            pscratch = bl.location("nersc_pscratch")
            scratch_dir = _fs_path(eps["nersc_pscratch"], pscratch.subdir)
            raw_file = _fs_path(eps["nersc"], record["nersc_raw"])
            staged = f"{scratch_dir}/{record['folder']}/{record['stem']}.h5"
            tiff = _fs_path(eps["nersc_pscratch"], record["nersc_pscratch_tiff"])
            zarr = _fs_path(eps["nersc_pscratch"], record["nersc_pscratch_zarr"])
            q = shlex.quote
            common = cfg.job_params()
            return {**record,
                    "recon_job": {**common, "scratch_dir": scratch_dir, "folder": record["folder"],
                                  "raw_file": raw_file, "output_dir": tiff,
                                  "command": f"python -m facility_data.als.recon {q(staged)} "
                                             f"{q(scratch_dir + '/' + record['folder'])}"},
                    "multires_job": {**common,
                                     "command": f"python -m facility_data.als.multiscale {q(tiff)} --zarr-dir "
                                                f"{q(zarr)} --raw-file {q(staged)} && chmod -R 2775 {q(zarr)}"}}

        @task_group(group_id="scan")
        def per_scan(record):
            job = prepare(record)
            stage = _stage_raw(bl, job, "nersc", deadline)
            submit_recon = SFAPISubmitJobOperator(task_id="submit_recon", template=cfg.recon_template,
                                                  job_params=job["recon_job"], job_name=f"{bl.id}_recon",
                                                  machine=cfg.machine, conn_id=cfg.conn_id)
            wait_recon = SFAPIJobSensor(task_id="wait_recon", jobid=submit_recon.output, machine=cfg.machine,
                                        conn_id=cfg.conn_id, timeout=cfg.timeout_minutes * 60, poke_interval=30)
            submit_multires = SFAPISubmitJobOperator(task_id="submit_multires", template=cfg.multires_template,
                                                     job_params=job["multires_job"], job_name=f"{bl.id}_multires",
                                                     machine=cfg.machine, conn_id=cfg.conn_id)
            wait_multires = SFAPIJobSensor(task_id="wait_multires", jobid=submit_multires.output,
                                           machine=cfg.machine, conn_id=cfg.conn_id,
                                           timeout=cfg.timeout_minutes * 60, poke_interval=30)
            copies = [_copy_back(bl, job, "nersc_pscratch", dest, what, deadline)
                      for what in ("tiff", "zarr") for dest in ("data_scratch", *extra)]
            verify = _verify_outputs_task(bl, "nersc_pscratch", extra)(job)
            stage >> submit_recon >> wait_recon >> submit_multires >> wait_multires >> copies
            copies >> verify

        per_scan.expand(record=scans)
    return dag


def build_recon_alcf_dag(bl: Beamline) -> DAG:
    """ALCF: copy the raw scan to Eagle, reconstruct and build the OME-Zarr through Globus Compute, copy back."""
    from facility_data.als import remote
    from facility_data.operators.globus_compute import GlobusComputeOperator

    cfg = bl.recon.alcf
    deadline = timedelta(minutes=bl.transfer_deadline_minutes)
    dag, asset = _recon_dag(bl, "alcf", "reconstruct at ALCF (Globus Compute) and copy results back")
    with dag:
        scans = _collect_task(bl, "alcf", asset)

        @task(multiple_outputs=True)
        def prepare(record: dict) -> dict:
            """Function arguments: paths as the ALCF endpoint sees them."""
            from facility_data.als.steps import endpoints_for

            endpoints, _ = _env(bl)
            eps = endpoints_for(bl, endpoints)
            h5 = _fs_path(eps["alcf"], record["alcf_raw"])
            folder = _fs_path(eps["alcf_scratch"], record["alcf_scratch_folder"])
            tiff = _fs_path(eps["alcf_scratch"], record["alcf_scratch_tiff"])
            zarr = _fs_path(eps["alcf_scratch"], record["alcf_scratch_zarr"])
            return {**record, "recon_args": [h5, folder],
                    "multires_args": [tiff, zarr, h5, bl.recon.pixel_size_um_fallback]}

        @task_group(group_id="scan")
        def per_scan(record):
            job = prepare(record)
            stage = _stage_raw(bl, job, "alcf", deadline)
            recon = GlobusComputeOperator(task_id="reconstruct", function=remote.reconstruct_scan,
                                          function_args=job["recon_args"], conn_id=cfg.compute_conn_id,
                                          deadline=timedelta(minutes=cfg.timeout_minutes))
            multires = GlobusComputeOperator(task_id="multiscale", function=remote.multiscale_scan,
                                             function_args=job["multires_args"], conn_id=cfg.compute_conn_id,
                                             deadline=timedelta(minutes=cfg.timeout_minutes))
            copies = [_copy_back(bl, job, "alcf_scratch", "data_scratch", what, deadline) for what in ("tiff", "zarr")]
            verify = _verify_outputs_task(bl, "alcf_scratch")(job)
            stage >> recon >> multires >> copies
            copies >> verify

        per_scan.expand(record=scans)
    return dag


# ---------------------------------------------------------------------------------------------- prune
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

        @task
        def sweep() -> dict:
            from airflow.sdk.exceptions import AirflowFailException

            from facility_data.als.beamline import check_endpoints
            from facility_data.als.prune import Sweep, write_report
            from facility_data.conf import check_conf

            ctx = _context()
            run = ctx.get("dag_run")
            if preview:
                if getattr(run, "conf", None):
                    raise AirflowFailException(f"{bl.id}_prune_preview takes no conf (got {sorted(run.conf)}): it "
                                               f"is always a dry run; {bl.id}_prune is the sweep that deletes")
                dry_run = True
            else:
                with _permanent():  # a misspelt key is refused, never ignored
                    check_conf(getattr(run, "conf", None), {"dry_run": (bool,)}, what=f"{bl.id}_prune")
                manual = str(getattr(run, "run_type", "manual")).lower().endswith("manual")
                dry_run = bool(ctx["params"]["dry_run"]) if manual else False
            endpoints, ledger = _env(bl)
            with _permanent():
                check_endpoints(bl, endpoints)
            report = write_report(Sweep(bl, endpoints, ledger, dry_run=dry_run, run_id=_run_id()).run(),
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


# ---------------------------------------------------------------------------------------------- reconcile
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

        @task(multiple_outputs=True)
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

            with _permanent():
                request = check_request(bl, _run_conf(), today=datetime.now(UTC).date())
                endpoints, ledger = _env(bl)
                run = Reconcile(bl, endpoints, ledger, request, decision_override=_decision_override(bl),
                                run_id=_run_id(),
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

            @task(task_id=f"announce_{target}", outlets=[asset])
            def announce(extra: dict, asset: Asset = asset) -> dict:
                """One scan's asset event for <bl>_recon_<target>, as <bl>_new_file emits it."""
                _context()["outlet_events"][asset].extra = extra
                log.info("re-announced %s to %s: %s", extra["relative"], asset.name, extra)
                return extra

            @task(task_id=f"to_announce_{target}")
            def to_announce(extras: list[dict]) -> list[dict]:
                """The scans to announce (Airflow maps only over a task's return value)."""
                return extras

            announced.append(announce.expand(extra=to_announce(result[f"announce_{target}"])))

        @task(trigger_rule="none_failed")
        def verdict(summary: dict, problems: list[str]) -> dict:
            """Green only when every scan is done or held; otherwise fail (the alert) naming them."""
            from airflow.sdk.exceptions import AirflowFailException

            if problems:
                raise AirflowFailException(f"reconcile {bl.id}: {len(problems)} scan(s) not done: "
                                           + "; ".join(problems[:5]) + ("; ..." if len(problems) > 5 else ""))
            return summary

        announced >> verdict(result["summary"], result["problems"])
    return dag


# ---------------------------------------------------------------------------------------------- all
def build_beamline_dags(bl: Beamline) -> dict[str, DAG]:
    dags = [build_new_file_dag(bl)]
    builders = {"local": build_recon_local_dag, "nersc": build_recon_nersc_dag, "alcf": build_recon_alcf_dag}
    dags += [builders[t](bl) for t in bl.recon_targets]
    if bl.prune.enabled and any(loc.retention_days is not None for loc in bl.locations.values()):
        dags += [build_prune_dag(bl), build_prune_dag(bl, preview=True)]
    dags += [build_reconcile_dag(bl)] if bl.reconcile.enabled else []
    return {d.dag_id: d for d in dags}


def build_all() -> dict[str, DAG]:
    """Every beamline's DAGs, keyed by DAG id (the DAG file puts them in its globals)."""
    out: dict[str, DAG] = {}
    for bl in load_beamlines():
        out.update(build_beamline_dags(bl))
    return out


__all__ = ["build_all", "build_beamline_dags", "recon_asset"]
