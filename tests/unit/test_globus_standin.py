"""The real GlobusTransferOperator / GlobusDeleteOperator / GlobusTaskTrigger (real globus-sdk) against the Globus
Transfer stand-in, a local HTTP server that really copies files between collection directories.

The endpoints are the shipped ``include/endpoints.facility.yaml``: its placeholder collection UUIDs are mapped to
directories here, so a broken shipped file fails these tests.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from datetime import timedelta

import pytest
from airflow.sdk.exceptions import AirflowException, TaskDeferred
from globus_site import FACILITY_ENDPOINTS, PAYLOAD, ctx, globus_site, put  # tests/unit is on sys.path

from facility_data.operators.globus import GlobusDeleteOperator, GlobusTransferOperator


@pytest.fixture
def site(monkeypatch, tmp_path):
    yield from globus_site(monkeypatch, tmp_path)


def copy_op(**kw):
    args = dict(task_id="copy", source_endpoint="spot832", source_path="raw/p1/scan.h5",
                destination_endpoint="nersc832", destination_path="raw/p1/scan.h5",
                endpoints_file=str(FACILITY_ENDPOINTS), deferrable=False, poll_interval=0.02, label="bl832 scan",
                export_controlled=False)
    args.update(kw)
    return GlobusTransferOperator(**args)


def tasks(site, kind="TRANSFER"):
    return [t.doc for t in site.standin.tasks.values() if t.doc["type"] == kind]


def run_trigger(trigger) -> dict:
    async def first():
        async for ev in trigger.run():
            return ev.payload
    return asyncio.run(first())


# ---- transfers ---------------------------------------------------------------------------------------------
def test_transfer_really_copies_and_globus_verifies_the_given_checksum(site):
    put(site, "spot832", "raw/p1/scan.h5")
    sha = hashlib.sha256(PAYLOAD).hexdigest()
    result = copy_op(source_checksum=f"sha256:{sha}").execute(ctx())
    assert site.local("nersc832", "raw/p1/scan.h5").read_bytes() == PAYLOAD
    assert result["files"] == 1 and result["bytes"] == len(PAYLOAD) and result["task_id"]
    assert result["verify_checksum"] is True and result["checksum_algorithm"] == "SHA256"
    item = site.standin.tasks[result["task_id"]].items[0]
    assert item["external_checksum"] == sha and item["checksum_algorithm"] == "SHA256"
    assert site.standin.tasks[result["task_id"]].doc["bytes_checksummed"] == len(PAYLOAD)


def test_a_wrong_source_checksum_fails_the_task_and_copies_nothing(site):
    put(site, "spot832", "raw/p1/scan.h5")
    with pytest.raises(AirflowException, match="VERIFY_CHECKSUM"):
        copy_op(source_checksum="sha256:" + "0" * 64).execute(ctx())
    assert not site.local("nersc832", "raw/p1/scan.h5").exists()


def test_deferred_transfer_resumes_from_the_trigger_with_a_directory_copied(site):
    put(site, "spot832", "raw/p1/rec/a.tiff", b"a")
    put(site, "spot832", "raw/p1/rec/sub/b.tiff", b"bb")
    op = copy_op(source_path="raw/p1/rec", destination_path="raw/p1/rec", recursive=True, deferrable=True)
    with pytest.raises(TaskDeferred) as info:
        op.execute(ctx())
    event = run_trigger(info.value.trigger)
    result = op.execute_complete(ctx(), event)
    assert result["files"] == 2 and event["globus_status"] == "SUCCEEDED"
    assert site.local("nersc832", "raw/p1/rec/sub/b.tiff").read_bytes() == b"bb"


def test_failed_task_fails_the_operator_with_the_event_text(site):
    put(site, "spot832", "raw/p1/scan.h5")
    site.standin.fail_next("PERMISSION_DENIED", "Permission denied", "open /raw/p1/scan.h5: EACCES")
    with pytest.raises(AirflowException, match=r"FAILED: PERMISSION_DENIED.*EACCES"):
        copy_op().execute(ctx())
    assert not site.local("nersc832", "raw/p1/scan.h5").exists()


def test_inactive_task_fails_with_its_detail_and_is_cancelled(site):
    put(site, "spot832", "raw/p1/scan.h5")
    site.standin.inactive_next("consent for collection nersc832 expired")
    op = copy_op(deferrable=True)
    with pytest.raises(TaskDeferred) as info:
        op.execute(ctx())
    event = run_trigger(info.value.trigger)
    assert event["status"] == "failed" and "INACTIVE" in event["message"]
    assert "consent for collection nersc832 expired" in event["message"] and "(task cancelled)" in event["message"]
    with pytest.raises(AirflowException, match="INACTIVE"):
        op.execute_complete(ctx(), event)
    (doc,) = tasks(site)
    assert doc["status"] == "FAILED" and doc["fatal_error"]["code"] == "CANCELED"


def test_missing_source_is_a_fault_the_operator_does_not_wait_out(site):
    with pytest.raises(AirflowException, match="FILE_NOT_FOUND"):
        copy_op().execute(ctx())
    (doc,) = tasks(site)
    assert doc["status"] == "FAILED" and doc["fatal_error"]["code"] == "CANCELED"  # cancelled, not left running


def test_deadline_cancels_a_task_that_does_not_finish(site):
    put(site, "spot832", "raw/p1/scan.h5")
    site.standin.hold()  # the task stays ACTIVE, as a slow transfer would
    # whichever comes first ends it: Globus at the deadline it was given, or our wait cancelling it
    with pytest.raises(AirflowException, match="DEADLINE|not finished after"):
        copy_op(deadline=timedelta(seconds=0.3)).execute(ctx())
    (doc,) = tasks(site)
    assert doc["status"] == "FAILED" and doc["fatal_error"]["code"] in ("CANCELED", "DEADLINE")
    assert doc["deadline"]  # Globus was told the deadline too
    assert not site.local("nersc832", "raw/p1/scan.h5").exists()


def test_retry_adopts_the_task_with_its_label_instead_of_submitting_again(site):
    put(site, "spot832", "raw/p1/scan.h5")
    first = copy_op().execute(ctx())
    again = copy_op().execute(ctx())  # the same Airflow task instance, retried
    assert again["task_id"] == first["task_id"] and len(tasks(site)) == 1
    other = copy_op().execute(ctx(run_id="manual__2"))  # another run submits its own
    assert other["task_id"] != first["task_id"] and len(tasks(site)) == 2


def test_transient_5xx_is_retried_by_the_sdk(site):
    put(site, "spot832", "raw/p1/scan.h5")
    site.standin.http_error("/v0.10/task/", 503, count=1)
    assert copy_op().execute(ctx())["files"] == 1
    assert site.standin._http_errors[0]["count"] == 0  # the fault was served


def test_wrong_client_secret_is_refused(site, monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONN_GLOBUS_DEFAULT", json.dumps(
        {"conn_type": "globus", "login": "cid", "password": "wrong"}))
    put(site, "spot832", "raw/p1/scan.h5")
    with pytest.raises(Exception, match="401"):
        copy_op().execute(ctx())
    assert tasks(site) == []


# ---- deletes -----------------------------------------------------------------------------------------------
def test_delete_operator_deletes_a_directory_and_refuses_one_without_recursive(site):
    put(site, "nersc832", "raw/p1/rec/a.tiff", b"a")
    op = GlobusDeleteOperator(task_id="rm", endpoint="nersc832", path="raw/p1/rec",
                              endpoints_file=str(FACILITY_ENDPOINTS), deferrable=False, poll_interval=0.02)
    with pytest.raises(AirflowException, match="IS_A_DIRECTORY"):
        op.execute(ctx("rm"))
    assert site.local("nersc832", "raw/p1/rec/a.tiff").exists()
    op.recursive = True
    result = op.execute(ctx("rm", run_id="manual__2"))
    assert result["task_id"] and not site.local("nersc832", "raw/p1/rec").exists()


def test_ls_and_stat_report_symlinks_and_refuse_paths_outside_the_collection(site):
    from facility_data.hooks.globus import GlobusHook

    put(site, "nersc832", "raw/p1/scan.h5")
    link = site.local("nersc832", "raw/p1/link.h5")
    link.symlink_to(site.local("nersc832", "raw/p1/scan.h5"))
    backend = GlobusHook().get_transfer_backend()
    listed = {e.path: e for e in backend.list(site.eps["nersc832"], "raw/p1")}
    assert listed["raw/p1/link.h5"].is_symlink and not listed["raw/p1/scan.h5"].is_symlink
    assert listed["raw/p1/scan.h5"].size == len(PAYLOAD)
    assert backend.stat(site.eps["nersc832"], "raw/p1/nothing.h5") is None
    import globus_sdk

    with pytest.raises(globus_sdk.TransferAPIError) as info:
        GlobusHook().get_transfer_client().operation_ls(site.eps["nersc832"].uuid, path="/../../etc")
    assert info.value.http_status == 400


def test_standin_runs_as_its_own_process_and_takes_faults_over_http(tmp_path, monkeypatch):
    """What a local site or a live test uses: ``python -m ...globus_standin``, faults armed through its control
    route; the real hook (connection test, transfer backend) against it."""
    import sys

    import requests

    from facility_data.hooks.globus import GlobusHook
    from facility_data.localsite.procs import free_port, port_in_use, start, stop, wait_until
    from facility_data.transfer import TransferError

    marker = "facility_data.localsite.globus_standin"
    port = free_port()
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "a" / "f.h5").write_bytes(b"x")
    pid = start([sys.executable, "-m", marker, "--port", str(port), "--collection", f"aaaa={tmp_path / 'a'}",
                 "--collection", f"bbbb={tmp_path / 'b'}"], log=tmp_path / "standin.log",
                env={"GLOBUS_STANDIN_CLIENT_SECRET": "s3"})
    try:
        wait_until(lambda: port_in_use(port), what="Globus stand-in", timeout=60, log=tmp_path / "standin.log")
        url = f"http://127.0.0.1:{port}/"
        monkeypatch.setenv("GLOBUS_SDK_SERVICE_URL_TRANSFER", url)
        monkeypatch.setenv("GLOBUS_SDK_SERVICE_URL_AUTH", url)
        monkeypatch.setenv("AIRFLOW_CONN_GLOBUS_DEFAULT", json.dumps(
            {"conn_type": "globus", "login": "standin-client", "password": "s3"}))
        ok, message = GlobusHook().test_connection()
        assert ok, message
        armed = requests.post(f"{url}_standin/fault", json={"kind": "fail", "code": "QUOTA_EXCEEDED",
                                                              "description": "quota exceeded"}, timeout=10)
        assert armed.status_code == 200
        assert requests.post(f"{url}_standin/fault", json={"kind": "nope"}, timeout=10).status_code == 400
        from facility_data.transfer.endpoints import Endpoint

        src = Endpoint(name="a", kind="globus", site="als", uuid="aaaa", root_path="/")
        dst = Endpoint(name="b", kind="globus", site="als", uuid="bbbb", root_path="/")
        backend = GlobusHook().get_transfer_backend(poll_interval=0.02)
        with pytest.raises(TransferError, match="QUOTA_EXCEEDED: quota exceeded"):
            backend.transfer(src, "f.h5", dst, "f.h5")
        assert backend.transfer(src, "f.h5", dst, "g.h5").files == 1  # the fault was for one task only
        assert (tmp_path / "b" / "g.h5").read_bytes() == b"x"
    finally:
        assert stop(pid, marker)


def test_unsupported_checksum_algorithm_is_refused_at_submission(site):
    put(site, "spot832", "raw/p1/scan.h5")
    with pytest.raises(Exception, match="Unsupported checksum_algorithm 'WHIRLPOOL'"):
        copy_op(checksum_algorithm="WHIRLPOOL").execute(ctx())
    assert tasks(site) == [] and not site.local("nersc832", "raw/p1/scan.h5").exists()
