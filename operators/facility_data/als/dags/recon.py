"""``<id>_recon_<target>``: asset-triggered by ``<id>_new_file`` (or manual with a conf) for each configured target.

``local`` reconstructs on this machine. ``nersc`` and ``alcf`` are one remote builder (:func:`_build_remote_recon_dag`):
stage the raw scan at the site, run the site's two jobs (reconstruct, then OME-Zarr), copy the outputs back to
data832 and verify them; only the jobs and their arguments differ per site.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import timedelta

from airflow.sdk import DAG, Asset, Param, chain, task, task_group

from facility_data.als.beamline import Beamline
from facility_data.als.dags.common import (
    START,
    conf_item,
    context,
    decision_override,
    env,
    flat,
    outputs_line,
    recon_asset,
    run_conf,
    run_id,
)
from facility_data.als.paths import form_pattern
from facility_data.dag_defaults import default_args
from facility_data.refusal import permanent

log = logging.getLogger(__name__)


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
    @task(show_return_value_in_logs=False)  # logs the scans it selected
    def collect() -> list[dict]:
        """The scans to reconstruct (from the asset events, or the manual conf), after every check."""
        from airflow.sdk.exceptions import AirflowSkipException

        from facility_data.als.steps import recon_requests

        ctx = context()
        from facility_data.als.steps import event_extras

        extras = event_extras(ctx.get("triggering_asset_events"))
        conf = run_conf()
        asked = (", ".join(repr(e.get("file_path")) if isinstance(e, dict) else repr(e) for e in extras)
                 if extras else conf_item(conf))
        endpoints, ledger = env(bl)
        with permanent(f"{target} reconstruction of {asked}"):
            scans = recon_requests(bl, endpoints, ledger, target, event_extras=extras, conf=conf,
                                   decision_override=decision_override(bl))
        if not scans:
            raise AirflowSkipException(f"{target} reconstruction disabled by the decision settings")
        log.info("%s reconstruction of %s", target, [s["relative"] for s in scans])
        return [flat(s) for s in scans]

    return collect()


def _publish_task(bl: Beamline, role: str = "data_scratch"):
    @task(show_return_value_in_logs=False)
    def publish(record: dict) -> dict:
        """Make the outputs at data832 group-writable (local endpoints) and record them in the ledger."""
        from facility_data.als.permissions import DIR_MODE, make_group_writable
        from facility_data.als.steps import endpoints_for, record_output

        endpoints, ledger = env(bl)
        eps = endpoints_for(bl, endpoints)
        if eps[role].kind == "local":
            for what in ("tiff", "zarr"):
                make_group_writable(eps[role].local_path(record[f"{role}_{what}"]))
            # deleting rec<stem>/ later needs write permission on the scan folder itself
            eps[role].local_path(record[f"{role}_folder"]).chmod(DIR_MODE)
        out = {what: record_output(bl, endpoints, ledger, record, role, what, run_id=run_id())
               for what in ("tiff", "zarr")}
        log.info("reconstruction of %s published at %s: %s", record["relative"], eps[role].name, outputs_line(out))
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

        @task(show_return_value_in_logs=False)
        def reconstruct(record: dict) -> dict:
            """Filtered back-projection of the raw scan into data832 scratch: <folder>/rec<stem>/."""
            from facility_data.als.recon import reconstruct as _reconstruct
            from facility_data.als.steps import local_paths

            endpoints, _ = env(bl)
            with permanent(record["relative"]):
                h5, folder, tiff, _zarr = local_paths(bl, endpoints, record)
            result = _reconstruct(h5, folder)
            log.info("reconstructed %s -> %s: %d slices %s in %.2f s", record["relative"], tiff, result.n_slices,
                     "x".join(map(str, result.shape)), result.seconds)
            return {**record, "recon": result.to_dict()}

        @task(show_return_value_in_logs=False)
        def multiscale(record: dict) -> dict:
            """The TIFF stack as a multiscale OME-Zarr: <folder>/rec<stem>.zarr/."""
            from facility_data.als.multiscale import build_multiscale, pixel_size_from_scan
            from facility_data.als.steps import local_paths

            endpoints, _ = env(bl)
            with permanent(record["relative"]):
                h5, _folder, tiff, zarr = local_paths(bl, endpoints, record)
            try:
                pixel = pixel_size_from_scan(h5)
            except Exception as exc:
                pixel = bl.recon.pixel_size_um_fallback
                log.warning("no pixel size in %s (%s); using the configured %.3f um", h5, exc, pixel)
            result = build_multiscale(tiff, zarr, pixel)
            log.info("multiscale %s -> %s: %d levels, full resolution %s", record["relative"], zarr,
                     len(result.shapes), "x".join(map(str, result.shapes[0])) if result.shapes else "none")
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
    @task(show_return_value_in_logs=False)
    def verify_and_record(record: dict) -> dict:
        """Check the copies at data832 equal the remote outputs, make them group-writable, record them."""
        from facility_data.als.permissions import DIR_MODE, make_group_writable
        from facility_data.als.steps import endpoints_for, record_copy

        endpoints, ledger = env(bl)
        eps = endpoints_for(bl, endpoints)
        out = {}
        for what in ("tiff", "zarr"):
            if eps["data_scratch"].kind == "local":
                make_group_writable(eps["data_scratch"].local_path(record[f"data_scratch_{what}"]))
                eps["data_scratch"].local_path(record["data_scratch_folder"]).chmod(DIR_MODE)
            for dest in ("data_scratch", *extra_copies):
                out[f"{what}@{dest}"] = record_copy(bl, endpoints, ledger, record, source=source, destination=dest,
                                                    what=what, run_id=run_id())
        log.info("reconstruction of %s verified: %s", record["relative"], outputs_line(out))
        return out

    return verify_and_record


def _stage_raw(bl: Beamline, record, target: str, deadline: timedelta):
    from facility_data.operators.globus import GlobusTransferOperator

    return GlobusTransferOperator(
        task_id=f"stage_raw_to_{target}", source_endpoint=bl.location("data").endpoint,
        source_path=record["data_raw"], destination_endpoint=bl.location(target).endpoint,
        destination_path=record[f"{target}_raw"], export_controlled=record["export_controlled"],
        label=f"{bl.id} raw data->{target}", deadline=deadline, verify_checksum=True)


def _build_remote_recon_dag(bl: Beamline, target: str, description: str, *, outputs_at: str,
                            prepare: Callable[[dict], dict], jobs: Callable[[object], list],
                            extra_copies: tuple[str, ...] = ()) -> DAG:
    """One remote site's DAG, per scan: ``prepare`` (a task: the jobs' arguments as the site sees the paths) ->
    stage the raw scan at ``target`` -> ``jobs(job)`` (the site's operators, in order) -> copy the TIFF stack and
    the OME-Zarr from ``outputs_at`` back to data832 (and to ``extra_copies``) -> verify and record them. Any
    failure stops the later steps."""
    deadline = timedelta(minutes=bl.transfer_deadline_minutes)
    dag, asset = _recon_dag(bl, target, description)
    with dag:
        scans = _collect_task(bl, target, asset)

        @task_group(group_id="scan")
        def per_scan(record):
            job = prepare(record)
            copies = [_copy_back(bl, job, outputs_at, dest, what, deadline)
                      for what in ("tiff", "zarr") for dest in ("data_scratch", *extra_copies)]
            chain(_stage_raw(bl, job, target, deadline), *jobs(job), copies)
            copies >> _verify_outputs_task(bl, outputs_at, extra_copies)(job)

        per_scan.expand(record=scans)
    return dag


def build_recon_nersc_dag(bl: Beamline) -> DAG:
    """NERSC: stage the raw scan on CFS, Slurm jobs through the SFAPI (reconstruct, then OME-Zarr) writing to
    pscratch, then Globus copies back to data832 (and to CFS scratch)."""
    from facility_data.operators.sfapi import SFAPISubmitJobOperator
    from facility_data.sensors.sfapi import SFAPIJobSensor

    cfg = bl.recon.nersc

    @task(multiple_outputs=True, show_return_value_in_logs=False)
    def prepare(record: dict) -> dict:
        """Job parameters: paths as the NERSC jobs see them."""
        import shlex

        from facility_data.als.steps import endpoints_for

        endpoints, _ = env(bl)
        eps = endpoints_for(bl, endpoints)
        pscratch = bl.location("nersc_pscratch")
        scratch_dir = _fs_path(eps["nersc_pscratch"], pscratch.subdir)
        raw_file = _fs_path(eps["nersc"], record["nersc_raw"])
        staged = f"{scratch_dir}/{record['folder']}/{record['stem']}.h5"
        tiff = _fs_path(eps["nersc_pscratch"], record["nersc_pscratch_tiff"])
        zarr = _fs_path(eps["nersc_pscratch"], record["nersc_pscratch_zarr"])
        q = shlex.quote
        common = cfg.job_params()
        log.info("%s: NERSC jobs read %s and write %s", record["relative"], staged, tiff)
        return {**record,
                "recon_job": {**common, "scratch_dir": scratch_dir, "folder": record["folder"],
                              "raw_file": raw_file, "output_dir": tiff,
                              "command": f"python -m facility_data.als.recon {q(staged)} "
                                         f"{q(scratch_dir + '/' + record['folder'])}"},
                "multires_job": {**common,
                                 "command": f"python -m facility_data.als.multiscale {q(tiff)} --zarr-dir "
                                            f"{q(zarr)} --raw-file {q(staged)} && chmod -R 2775 {q(zarr)}"}}

    def jobs(job) -> list:
        out = []
        for step, params in (("recon", job["recon_job"]), ("multires", job["multires_job"])):
            submit = SFAPISubmitJobOperator(task_id=f"submit_{step}", template=getattr(cfg, f"{step}_template"),
                                            job_params=params, job_name=f"{bl.id}_{step}", machine=cfg.machine,
                                            conn_id=cfg.conn_id)
            wait = SFAPIJobSensor(task_id=f"wait_{step}", jobid=submit.output, machine=cfg.machine,
                                  conn_id=cfg.conn_id, timeout=cfg.timeout_minutes * 60, poke_interval=30)
            out += [submit, wait]
        return out

    return _build_remote_recon_dag(bl, "nersc", "reconstruct at NERSC (SFAPI/Slurm) and copy results back",
                                   outputs_at="nersc_pscratch", prepare=prepare, jobs=jobs,
                                   extra_copies=("nersc_scratch",) if "nersc_scratch" in bl.locations else ())


def build_recon_alcf_dag(bl: Beamline) -> DAG:
    """ALCF: copy the raw scan to Eagle, reconstruct and build the OME-Zarr through Globus Compute, copy back."""
    from facility_data.als import remote
    from facility_data.operators.globus_compute import GlobusComputeOperator

    cfg = bl.recon.alcf

    @task(multiple_outputs=True, show_return_value_in_logs=False)
    def prepare(record: dict) -> dict:
        """Function arguments: paths as the ALCF endpoint sees them."""
        from facility_data.als.steps import endpoints_for

        endpoints, _ = env(bl)
        eps = endpoints_for(bl, endpoints)
        h5 = _fs_path(eps["alcf"], record["alcf_raw"])
        folder = _fs_path(eps["alcf_scratch"], record["alcf_scratch_folder"])
        tiff = _fs_path(eps["alcf_scratch"], record["alcf_scratch_tiff"])
        zarr = _fs_path(eps["alcf_scratch"], record["alcf_scratch_zarr"])
        log.info("%s: ALCF functions read %s and write %s", record["relative"], h5, tiff)
        return {**record, "recon_args": [h5, folder],
                "multires_args": [tiff, zarr, h5, bl.recon.pixel_size_um_fallback]}

    def jobs(job) -> list:
        return [GlobusComputeOperator(task_id=task_id, function=function, function_args=job[args],
                                      conn_id=cfg.compute_conn_id, deadline=timedelta(minutes=cfg.timeout_minutes))
                for task_id, function, args in (("reconstruct", remote.reconstruct_scan, "recon_args"),
                                                ("multiscale", remote.multiscale_scan, "multires_args"))]

    return _build_remote_recon_dag(bl, "alcf", "reconstruct at ALCF (Globus Compute) and copy results back",
                                   outputs_at="alcf_scratch", prepare=prepare, jobs=jobs)


RECON_BUILDERS: dict[str, Callable[[Beamline], DAG]] = {
    "local": build_recon_local_dag, "nersc": build_recon_nersc_dag, "alcf": build_recon_alcf_dag}
