"""als_transfer_healthcheck: every 12 hours, prove the BL 8.3.2 transfer path works end to end.

A small unique probe file is written on spot832, transferred spot832 -> data832 -> nersc832 with the same operator
the beamline DAGs use, verified at the last hop (size, and checksum where the backend reports one), and the probe
directory is removed from all three endpoints whatever happened. The run fails if any hop or the verification
failed, so the failure alert fires before a real scan is affected. Endpoint names are Params: point it at other
beamlines' endpoints by hand (the source endpoint must be mounted on the worker, i.e. have a local_root).
"""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import Param, dag, task

from facility_data.dag_defaults import default_args
from facility_data.operators.globus import GlobusDeleteOperator, GlobusTransferOperator
from facility_data.placement import place

PROBE = "{{ ti.xcom_pull(task_ids='write_probe')['path'] }}"
# Empty when no probe was written: the delete operator then refuses the (empty) path before touching anything.
PROBE_DIR = "{{ (ti.xcom_pull(task_ids='write_probe') or {}).get('dir', '') }}"


@dag(
    dag_id="als_transfer_healthcheck",
    schedule="0 */12 * * *",
    start_date=datetime(2025, 1, 1),
    catchup=False,
    max_active_runs=1,
    default_args=default_args(retries=1, retry_delay=timedelta(seconds=30)),
    tags=["als", "bl832", "transfer", "healthcheck"],
    params={
        "source": Param("spot832", type="string", description="endpoint the probe is written to"),
        "middle": Param("data832", type="string", description="first hop"),
        "destination": Param("nersc832", type="string", description="second hop (verified)"),
        "size_bytes": Param(4096, type="integer", minimum=1, maximum=64 << 20),
    },
    doc_md=__doc__,
)
def als_transfer_healthcheck():
    @task
    def write_probe(params=None, run_id=None, dag_run=None) -> dict:
        """Write a unique probe file on the source endpoint (through its mount on this worker)."""
        import hashlib
        import os
        import re
        import uuid

        from airflow.sdk.exceptions import AirflowFailException

        from facility_data.conf import ConfError, check_conf
        from facility_data.transfer import get_endpoint

        try:  # a misspelt endpoint key must not silently probe the defaults
            check_conf(getattr(dag_run, "conf", None), {"source": (str,), "middle": (str,), "destination": (str,),
                                                        "size_bytes": (int,)}, what="als_transfer_healthcheck")
        except ConfError as exc:
            raise AirflowFailException(str(exc)) from None

        ep = get_endpoint(params["source"])
        if ep.local_root is None:
            raise ValueError(f"endpoint {ep.name} has no local_root: the probe must be written through a mount "
                             "of it on this worker")
        probe_dir = f"healthcheck/{re.sub(r'[^A-Za-z0-9_.-]', '_', run_id)}-{uuid.uuid4().hex[:8]}"
        path = f"{probe_dir}/probe.bin"
        data = os.urandom(int(params["size_bytes"]))
        target = ep.local_path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        return {"dir": probe_dir, "path": path, "size": len(data),
                "checksum": f"sha256:{hashlib.sha256(data).hexdigest()}"}

    probe = write_probe()
    first = GlobusTransferOperator(
        task_id="transfer_source_to_middle", source_endpoint="{{ params.source }}", source_path=PROBE,
        destination_endpoint="{{ params.middle }}", destination_path=PROBE, label="healthcheck hop 1",
        export_controlled=False,  # the probe is bytes this DAG wrote, not a scan
        deadline=timedelta(minutes=30))
    second = GlobusTransferOperator(
        task_id="transfer_middle_to_destination", source_endpoint="{{ params.middle }}", source_path=PROBE,
        destination_endpoint="{{ params.destination }}", destination_path=PROBE, label="healthcheck hop 2",
        export_controlled=False,
        deadline=timedelta(minutes=30))

    @task
    def verify(probe: dict, params=None) -> dict:
        """The probe at the destination has the size (and, where known, the checksum) it was written with."""
        from facility_data.transfer import get_endpoint
        from facility_data.transfer.local import LocalTransfer

        ep = get_endpoint(params["destination"])
        if ep.kind == "local":
            backend = LocalTransfer()
        else:
            from facility_data.hooks.globus import GlobusHook

            backend = GlobusHook().get_transfer_backend()
        found = backend.stat(ep, probe["path"])
        if found is None:
            raise RuntimeError(f"probe {probe['path']} missing at {ep.name} after a 'successful' transfer")
        if found.size != probe["size"]:
            raise RuntimeError(f"probe at {ep.name} has {found.size} B, wrote {probe['size']} B")
        if found.checksum is not None and found.checksum != probe["checksum"]:
            raise RuntimeError(f"probe at {ep.name} checksum {found.checksum} != written {probe['checksum']}")
        return {"endpoint": ep.name, "path": probe["path"], "size": found.size,
                "checksum_verified": found.checksum is not None}

    checked = verify(probe)
    cleanups = [
        GlobusDeleteOperator(task_id=f"cleanup_{role}", endpoint=f"{{{{ params.{role} }}}}", path=PROBE_DIR,
                             recursive=True, missing_ok=True, label="healthcheck cleanup", trigger_rule="all_done",
                             deadline=timedelta(minutes=15))
        for role in ("source", "middle", "destination")
    ]

    @task
    def healthcheck_passed(result: dict) -> dict:
        """Leaf task: succeeds only if verification did, so a failed hop fails the run even after cleanup."""
        return result

    probe >> first >> second >> checked
    checked >> cleanups
    [checked, *cleanups] >> healthcheck_passed(checked)


place(als_transfer_healthcheck())
