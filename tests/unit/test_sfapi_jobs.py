"""SFAPI hook, submit operator, SFAPIJobSensor and SFAPIJobTrigger through the real sfapi_client, pointed at a
local HTTP server that answers with the response shapes the NERSC Superfacility API v1.2 returns."""

from __future__ import annotations

import asyncio
import json
import time
from types import SimpleNamespace

import pytest
from airflow.sdk.exceptions import AirflowException, TaskDeferred
from fake_sfapi import FakeSFAPI  # tests/unit is on sys.path while pytest imports this module
from joserfc.jwk import RSAKey

from facility_data.hooks.sfapi import SFAPIHook, job_outcome
from facility_data.operators.sfapi import SFAPISubmitJobOperator
from facility_data.sensors.sfapi import SFAPIJobSensor
from facility_data.triggers.sfapi import SFAPIJobTrigger


@pytest.fixture(scope="module")
def rsa_key():
    return RSAKey.generate_key(2048)


@pytest.fixture
def sfapi(monkeypatch, rsa_key):
    key = rsa_key
    fake = FakeSFAPI(RSAKey.import_key(key.as_dict(private=False)))
    monkeypatch.setenv("AIRFLOW_CONN_SFAPI_TEST", fake.connection_json(key.as_dict(private=True)))
    yield fake
    fake.server.shutdown()


def ctx(task_id="submit"):
    return {"ti": SimpleNamespace(dag_id="bl832", run_id="manual__1", task_id=task_id, map_index=-1)}


def run_trigger(trigger) -> dict:
    async def first():
        async for ev in trigger.run():
            return ev.payload
    return asyncio.run(first())


def trigger_for(jobid, **kw):
    args = {"jobid": jobid, "conn_id": "sfapi_test", "deadline": time.time() + 30, "poll_interval": 0.01}
    return SFAPIJobTrigger(**{**args, **kw})


@pytest.mark.parametrize(("state", "outcome"), [("COMPLETED", "success"), ("FAILED", "failed"),
                                                ("TIMEOUT", "failed"), ("CANCELLED", "failed"),
                                                ("CANCELLED by 1001", "failed"), ("NODE_FAIL", "failed"),
                                                ("OUT_OF_MEMORY", "failed"), ("PREEMPTED", "failed"),
                                                ("RUNNING", "pending"), ("PENDING", "pending"),
                                                ("COMPLETING", "pending"), (None, "pending")])
def test_job_outcome_table(state, outcome):
    assert job_outcome(state) == outcome


def test_submit_renders_template_and_sensor_waits_until_completed(sfapi):
    op = SFAPISubmitJobOperator(task_id="submit", template="healthcheck.slurm.j2", conn_id="sfapi_test",
                                job_params={"walltime": "0:05:00"})
    jobid = op.execute(ctx())
    script = sfapi.submitted[0]
    assert script.startswith("#!/bin/bash") and "#SBATCH --time=0:05:00" in script
    assert "#SBATCH --job-name=submit-af" in script
    # not in accounting yet -> PENDING -> RUNNING -> COMPLETED
    event = run_trigger(trigger_for(jobid))
    assert event["status"] == "success" and event["job"]["state"] == "COMPLETED"
    sensor = SFAPIJobSensor(task_id="wait", jobid=jobid, conn_id="sfapi_test", deferrable=True)
    assert sensor.execute_complete(ctx("wait"), event)["exitcode"] == "0:0"


@pytest.mark.parametrize("state", ["FAILED", "TIMEOUT", "CANCELLED", "NODE_FAIL", "OUT_OF_MEMORY"])
def test_every_failure_state_fails_with_accounting_info(sfapi, state):
    sfapi.states["777"] = ["RUNNING", state]
    event = run_trigger(trigger_for("777"))
    assert event["status"] == "failed"
    sensor = SFAPIJobSensor(task_id="wait", jobid="777", conn_id="sfapi_test", deferrable=True)
    with pytest.raises(AirflowException, match=rf"Slurm job 777 .*state={state}.*exitcode=1:0.*elapsed=00:03:12"):
        sensor.execute_complete(ctx("wait"), event)
    assert sfapi.cancelled == []


def test_job_never_known_fails_after_grace(sfapi):
    sfapi.states["888"] = [None]
    event = run_trigger(trigger_for("888", not_found_grace=0.05))
    assert event["status"] == "failed" and "unknown to accounting" in event["message"]


def test_deadline_cancels_the_job(sfapi):
    sfapi.states["999"] = ["RUNNING"]
    event = run_trigger(trigger_for("999", deadline=time.time() + 0.05))
    assert event["status"] == "timeout" and "cancelled" in event["message"]
    assert sfapi.cancelled == ["999"]


def test_on_kill_of_deferred_task_cancels_the_job(sfapi):
    sfapi.states["555"] = ["RUNNING"]
    asyncio.run(trigger_for("555").on_kill())
    assert sfapi.cancelled == ["555"]


def test_token_expiry_mid_wait_is_survived(sfapi):
    sfapi.states["321"] = ["RUNNING", "RUNNING", "COMPLETED"]
    hook = SFAPIHook("sfapi_test")
    assert hook.job_info("321")["state"] == "RUNNING"
    sfapi.expire_tokens()  # the server stops honouring the token before its stated expiry
    assert hook.job_info("321")["state"] == "RUNNING"
    assert hook.job_info("321")["state"] == "COMPLETED"
    assert sfapi.tokens == ["tok-1", "tok-2"]


def test_sync_sensor_succeeds_and_times_out_with_cancel(sfapi):
    sfapi.states["111"] = ["RUNNING", "COMPLETED"]
    sensor = SFAPIJobSensor(task_id="wait", jobid="111", conn_id="sfapi_test", deferrable=False, poke_interval=0.01,
                            timeout=30)
    assert sensor.execute(ctx("wait"))["state"] == "COMPLETED"

    from airflow.sdk.exceptions import AirflowSensorTimeout

    sfapi.states["222"] = ["RUNNING"]
    sensor = SFAPIJobSensor(task_id="wait2", jobid="222", conn_id="sfapi_test", deferrable=False, poke_interval=0.01,
                            timeout=0.05)
    with pytest.raises(AirflowSensorTimeout):
        sensor.execute(ctx("wait2"))
    assert sfapi.cancelled == ["222"]


def test_deferrable_sensor_defers_with_serializable_trigger(sfapi):
    sensor = SFAPIJobSensor(task_id="wait", jobid="123", conn_id="sfapi_test", deferrable=True, timeout=600)
    with pytest.raises(TaskDeferred) as info:
        sensor.execute(ctx("wait"))
    classpath, kwargs = info.value.trigger.serialize()
    assert classpath == "facility_data.triggers.sfapi.SFAPIJobTrigger"
    assert set(kwargs) == {"jobid", "machine", "conn_id", "deadline", "poll_interval", "not_found_grace",
                           "first_seen"}
    json.dumps(kwargs)


def test_trigger_serialize_round_trip_is_pinned():
    trigger = SFAPIJobTrigger(jobid="42", machine="perlmutter", conn_id="c", deadline=1.5, poll_interval=2,
                              not_found_grace=3, first_seen=0.5)
    expected = ("facility_data.triggers.sfapi.SFAPIJobTrigger",
                {"jobid": "42", "machine": "perlmutter", "conn_id": "c", "deadline": 1.5, "poll_interval": 2.0,
                 "not_found_grace": 3.0, "first_seen": 0.5})
    assert trigger.serialize() == expected
    assert SFAPIJobTrigger(**expected[1]).serialize() == expected


def test_retried_submit_adopts_the_queued_job(sfapi):
    op = SFAPISubmitJobOperator(task_id="submit", template="healthcheck.slurm.j2", conn_id="sfapi_test")
    jobid = op.execute(ctx())
    name = sfapi.submitted[0].split("--job-name=")[1].split("\n")[0]
    sfapi.squeue = [{"jobid": jobid, "name": name, "state": "RUNNING", "user": "alsdev"}]
    assert op.execute(ctx()) == jobid
    assert len(sfapi.submitted) == 1


def test_missing_template_parameter_fails_before_any_request(sfapi):
    from facility_data.config import ConfigError

    op = SFAPISubmitJobOperator(task_id="submit", template="tomo_recon.slurm.j2", conn_id="sfapi_test",
                                job_params={"raw_file": "/x.h5"})
    with pytest.raises(ConfigError, match="undefined"):
        op.execute(ctx())
    assert sfapi.tokens == [] and sfapi.submitted == []


def test_connection_test_does_not_leak_the_key(sfapi):
    ok, message = SFAPIHook("sfapi_test").test_connection()
    assert ok and "alsdev" in message and "PRIVATE" not in message


def test_nersc_controller_runs_job_to_completed_and_fails_on_oom(sfapi):
    from facility_data.hpc import HPC, JobFailed, get_controller, render_job

    nersc = get_controller(HPC.NERSC, conn_id="sfapi_test", poll_interval=0.01)
    result = nersc.run_job(render_job("healthcheck.slurm.j2", job_name="hc"), job_name="hc", deadline_seconds=30)
    assert result.state == "COMPLETED" and result.info["nodelist"] == "nid001234"
    sfapi.states[str(sfapi.next_jobid)] = ["RUNNING", "OUT_OF_MEMORY"]
    with pytest.raises(JobFailed, match="state=OUT_OF_MEMORY"):
        nersc.run_job(render_job("healthcheck.slurm.j2", job_name="hc"), job_name="hc", deadline_seconds=30)
    sfapi.states[str(sfapi.next_jobid)] = ["RUNNING"]
    with pytest.raises(JobFailed, match="cancelled"):
        nersc.run_job(render_job("healthcheck.slurm.j2", job_name="hc"), job_name="hc", deadline_seconds=0.05)
    assert sfapi.cancelled == [str(sfapi.next_jobid - 1)]


def test_rejected_credentials_fail_the_connection_test_without_leaking_the_key(sfapi, monkeypatch):
    other = RSAKey.generate_key(2048)  # not the key the server trusts
    monkeypatch.setenv("AIRFLOW_CONN_SFAPI_BAD", sfapi.connection_json(other.as_dict(private=True)))
    ok, message = SFAPIHook("sfapi_bad").test_connection()
    assert not ok and "invalid_client" in message and other.as_dict(private=True)["d"] not in message


@pytest.mark.parametrize(("minutes", "walltime"), [(1, "0:01:00"), (45, "0:45:00"), (59, "0:59:00"),
                                                   (60, "1:00:00"), (61, "1:01:00"), (150, "2:30:00"),
                                                   (1440, "24:00:00")])
def test_nersc_walltime_is_the_configured_timeout_without_a_cap(minutes, walltime):
    from facility_data.als.beamline import NERSCRecon

    assert NERSCRecon(timeout_minutes=minutes).walltime == walltime


@pytest.mark.parametrize(("runtime", "line"), [
    ("podman-hpc", "srun podman-hpc run --rm --volume /global/cfs/cdirs/als:/cfs --volume /pscratch/sd/a:/ps "
                   "ghcr.io/als-computing/microct:master python -m facility_data.als.recon /ps/a.h5 /ps/f"),
    ("shifter", "srun shifter --image=ghcr.io/als-computing/microct:master --volume=/global/cfs/cdirs/als:/cfs "
                "--volume=/pscratch/sd/a:/ps python -m facility_data.als.recon /ps/a.h5 /ps/f"),
])
def test_nersc_job_runs_the_beamline_image_with_configured_slurm_settings(sfapi, runtime, line):
    """The shipped recon template, with the beamline's recon.nersc parameters, submitted through the SFAPI."""
    from facility_data.als.beamline import NERSCRecon

    cfg = NERSCRecon(image="ghcr.io/als-computing/microct:master", runtime=runtime, qos="debug", account="m1234",
                     constraint="gpu", timeout_minutes=90,
                     mounts=["/global/cfs/cdirs/als:/cfs", "/pscratch/sd/a:/ps"])
    params = {**cfg.job_params(), "scratch_dir": "/ps", "folder": "f", "raw_file": "/cfs/a.h5", "output_dir": "/ps/o",
              "command": "python -m facility_data.als.recon /ps/a.h5 /ps/f"}
    SFAPISubmitJobOperator(task_id="submit", template=cfg.recon_template, conn_id="sfapi_test",
                           job_params=params).execute(ctx())
    lines = sfapi.submitted[0].splitlines()
    assert {"#SBATCH --time=1:30:00", "#SBATCH --qos=debug", "#SBATCH --account=m1234",
            "#SBATCH --constraint=gpu"} <= set(lines)
    assert line in lines


def test_nersc_runtime_none_runs_the_command_directly_and_bad_container_config_is_refused():
    from pydantic import ValidationError

    from facility_data.als.beamline import NERSCRecon
    from facility_data.config import ConfigError
    from facility_data.hpc.jobs import render_job

    cfg = NERSCRecon(image="ghcr.io/als-computing/microct:master")  # runtime none: the local job runner's default
    script = render_job("batch.slurm.j2", job_name="j", **cfg.job_params(), command="echo hi")
    assert "\necho hi\n" in script and "podman" not in script and "shifter" not in script
    with pytest.raises(ValidationError, match="recon.nersc.runtime is 'podman-hpc' but recon.nersc.image is empty"):
        NERSCRecon(runtime="podman-hpc")
    with pytest.raises(ValidationError, match="runtime"):
        NERSCRecon(runtime="docker", image="x")
    with pytest.raises(ValidationError, match="not an absolute host:container pair"):
        NERSCRecon(runtime="shifter", image="x", mounts=["relative:/in"])
    with pytest.raises(ValidationError, match="qos"):
        NERSCRecon(qos="realtime\n#SBATCH --account=other")
    with pytest.raises(ConfigError, match="runtime_must_be_podman_hpc_shifter_or_none"):
        render_job("batch.slurm.j2", job_name="j", command="echo hi", runtime="docker", image="x")


def test_sensor_default_follows_default_deferrable_when_the_dag_is_parsed(sfapi, monkeypatch):
    """Read when the sensor is built (DAG parse), not when its module was first imported; then it defers to the
    trigger, which runs against the stand-in, and resumes on the trigger's event."""
    monkeypatch.setenv("AIRFLOW__OPERATORS__DEFAULT_DEFERRABLE", "False")
    assert SFAPIJobSensor(task_id="w", jobid="1").deferrable is False
    monkeypatch.setenv("AIRFLOW__OPERATORS__DEFAULT_DEFERRABLE", "True")
    sfapi.states["31"] = ["RUNNING", "COMPLETED"]
    sensor = SFAPIJobSensor(task_id="wait", jobid="31", conn_id="sfapi_test", poke_interval=0.01, timeout=30)
    with pytest.raises(TaskDeferred) as info:
        sensor.execute(ctx("wait"))
    assert info.value.timeout.total_seconds() == 330  # backstop past the trigger's own deadline
    trigger = info.value.trigger
    assert trigger.deadline == pytest.approx(time.time() + 30, abs=5)
    event = run_trigger(SFAPIJobTrigger(**trigger.serialize()[1]))
    assert sensor.execute_complete(ctx("wait"), event)["state"] == "COMPLETED"
