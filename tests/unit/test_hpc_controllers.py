"""HPC abstraction: the same rendered job script runs LOCAL (bash) and on ALCF's stand-in (local Compute
executor); failures carry the job's own output; deadlines kill the job; OLCF is refused clearly."""

from __future__ import annotations

import json
import time

import pytest

from facility_data.config import ConfigError
from facility_data.hpc import HPC, JobFailed, get_controller, render_job


def test_local_runs_the_healthcheck_template(tmp_path):
    script = render_job("healthcheck.slurm.j2", job_name="hc-1")
    result = get_controller(HPC.LOCAL, workdir=tmp_path).run_job(script, job_name="hc-1", deadline_seconds=30)
    assert result.state == "COMPLETED" and result.info["exitcode"] == 0
    assert "healthcheck hc-1 ok" in (tmp_path / "hc-1.log").read_text()


def test_local_failure_reports_exit_code_and_log_tail(tmp_path):
    script = render_job("batch.slurm.j2", job_name="bad", command="echo 'reading scan.h5'; exit 3")
    with pytest.raises(JobFailed, match=r"(?s)exit code 3.*reading scan.h5"):
        get_controller("local", workdir=tmp_path).run_job(script, job_name="bad", deadline_seconds=30)


def test_local_deadline_kills_the_whole_job(tmp_path):
    marker = tmp_path / "marker"
    script = render_job("batch.slurm.j2", job_name="slow", command=f"sleep 1 && touch {marker}")
    start = time.monotonic()
    with pytest.raises(JobFailed, match="killed at its deadline"):
        get_controller("local", workdir=tmp_path).run_job(script, job_name="slow", deadline_seconds=0.2)
    assert time.monotonic() - start < 1
    time.sleep(1.2)
    assert not marker.exists()


def test_recon_template_stages_and_sets_group_permissions(tmp_path):
    raw = tmp_path / "raw dir" / "scan 1.h5"
    raw.parent.mkdir()
    raw.write_bytes(b"h5")
    out = tmp_path / "scratch" / "p1" / "recscan"
    script = render_job("tomo_recon.slurm.j2", job_name="recon-1", raw_file=str(raw), folder="p1",
                        scratch_dir=str(tmp_path / "scratch"), output_dir=str(out),
                        command=f"mkdir -p '{out}' && cp \"$0\" /dev/null")
    get_controller("local", workdir=tmp_path / "job").run_job(script, job_name="recon-1", deadline_seconds=30)
    assert (tmp_path / "scratch" / "p1" / "scan 1.h5").read_bytes() == b"h5"  # path with a space survived
    assert oct(out.stat().st_mode & 0o7777) == "0o2775"


def test_template_errors_are_clear():
    with pytest.raises(ConfigError, match="'raw_file' is undefined"):
        render_job("tomo_recon.slurm.j2", job_name="r", folder="f", scratch_dir="/s", output_dir="/o", command="x")
    with pytest.raises(ConfigError, match="job template not found"):
        render_job("nope.j2", job_name="r")
    with pytest.raises(ConfigError, match="job_name"):
        render_job("healthcheck.slurm.j2", job_name="a; rm -rf /")


def test_alcf_runs_the_same_script_on_the_local_compute_stand_in(monkeypatch, tmp_path):
    monkeypatch.setenv("AIRFLOW_CONN_GLOBUS_ALCF", json.dumps(
        {"conn_type": "globus", "login": "id", "password": "secret", "extra": {"compute_endpoint": "local"}}))
    alcf = get_controller(HPC.ALCF, conn_id="globus_alcf")
    ok = alcf.run_job(render_job("healthcheck.slurm.j2", job_name="hc"), job_name="hc", deadline_seconds=30)
    assert ok.state == "COMPLETED" and "healthcheck hc ok" in ok.info["output"]
    with pytest.raises(JobFailed, match=r"(?s)exit code 5.*boom"):
        alcf.run_job(render_job("batch.slurm.j2", job_name="b", command="echo boom; exit 5"), job_name="b",
                     deadline_seconds=30)


def test_olcf_is_not_supported_and_unknown_is_refused():
    with pytest.raises(NotImplementedError, match="OLCF is not supported"):
        get_controller(HPC.OLCF)
    with pytest.raises(ValueError, match="unknown HPC 'summit'"):
        get_controller("summit")


def test_hpc_job_operator_runs_locally_and_fails_with_job_output(tmp_path):
    from types import SimpleNamespace

    from airflow.sdk.exceptions import AirflowException

    from facility_data.operators.hpc import HPCJobOperator

    context = {"ti": SimpleNamespace(dag_id="d", run_id="r", task_id="recon", map_index=-1)}
    ok = HPCJobOperator(task_id="recon", template="healthcheck.slurm.j2",
                        controller_kwargs={"workdir": str(tmp_path)}).execute(context)
    assert ok["hpc"] == "local" and ok["state"] == "COMPLETED" and ok["exitcode"] == 0
    bad = HPCJobOperator(task_id="recon2", template="batch.slurm.j2", job_params={"command": "echo no GPU >&2; exit 2"},
                         controller_kwargs={"workdir": str(tmp_path)})
    with pytest.raises(AirflowException, match=r"(?s)exit code 2.*no GPU"):
        bad.execute(context)
