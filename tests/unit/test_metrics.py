"""Transfer and job metrics reach a real StatsD receiver (a UDP socket on this machine) through Airflow's Stats,
configured as a deployment would: [metrics] statsd_on / statsd_host / statsd_port."""

from __future__ import annotations

import socket
import time
from types import SimpleNamespace

import pytest
from airflow.sdk.exceptions import AirflowException
from fake_sfapi import FakeSFAPI  # tests/unit is on sys.path while pytest imports this module

from facility_data.metrics import slurm_seconds


@pytest.fixture
def statsd(monkeypatch):
    """A UDP StatsD receiver; Airflow's Stats pointed at it for this test, then back to off."""
    from airflow.sdk._shared.observability.metrics.base_stats_logger import NoStatsLogger
    from airflow.sdk.observability import stats
    from airflow.sdk.observability.metrics.stats_utils import get_stats_factory

    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(0.2)
    monkeypatch.setenv("AIRFLOW__METRICS__STATSD_ON", "True")
    monkeypatch.setenv("AIRFLOW__METRICS__STATSD_HOST", "127.0.0.1")
    monkeypatch.setenv("AIRFLOW__METRICS__STATSD_PORT", str(sock.getsockname()[1]))
    monkeypatch.setenv("AIRFLOW__METRICS__STATSD_PREFIX", "airflow")
    stats.initialize(factory=get_stats_factory(), export_legacy_names=False)

    def received() -> dict[str, tuple[float, str]]:
        """name -> (value, type) of every packet received so far (the last value of each name)."""
        out, deadline = {}, time.monotonic() + 1.0
        while time.monotonic() < deadline:
            try:
                data = sock.recv(65536).decode()
            except TimeoutError:
                break
            for line in data.splitlines():
                name, _, rest = line.partition(":")
                value, _, kind = rest.partition("|")
                out[name] = (float(value), kind.split("|")[0])
        return out

    yield received
    stats.initialize(factory=NoStatsLogger, export_legacy_names=False)
    sock.close()


def ctx(task_id):
    return {"ti": SimpleNamespace(dag_id="bl832", run_id="manual__1", task_id=task_id, map_index=-1)}


def test_transfer_emits_bytes_files_seconds_and_rate_per_hop(statsd, monkeypatch, tmp_path):
    from facility_data.operators.globus import GlobusTransferOperator
    from facility_data.transfer import load_endpoints

    monkeypatch.setenv("FACILITY_SITE", str(tmp_path))
    src = load_endpoints()["spot832"].local_path("raw/P-1_u/20240101_000000_a.h5")
    src.parent.mkdir(parents=True)
    src.write_bytes(b"x" * 300_000)
    op = GlobusTransferOperator(task_id="copy", source_endpoint="spot832", source_path="raw/P-1_u/20240101_000000_a.h5",
                                destination_endpoint="data832_raw", destination_path="P-1_u/20240101_000000_a.h5",
                                deferrable=False)
    result = op.execute(ctx("copy"))
    got = statsd()
    hop = "airflow.facility_data.transfer.spot832_to_data832_raw"
    assert got[f"{hop}.bytes"] == (300_000, "g") and got[f"{hop}.files"] == (1, "g")
    assert got[f"{hop}.count"] == (1, "c")
    assert got[f"{hop}.seconds"][1] == "ms"
    assert got[f"{hop}.seconds"][0] == pytest.approx(result["seconds"] * 1000, abs=1)
    rate = result["bytes_per_second"] or 300_000 / result["seconds"]
    assert got[f"{hop}.bytes_per_second"][0] == pytest.approx(rate, rel=1e-3)


@pytest.fixture
def sfapi(monkeypatch):
    from joserfc.jwk import RSAKey

    key = RSAKey.generate_key(2048)
    fake = FakeSFAPI(RSAKey.import_key(key.as_dict(private=False)))
    monkeypatch.setenv("AIRFLOW_CONN_SFAPI_TEST", fake.connection_json(key.as_dict(private=True)))
    yield fake
    fake.server.shutdown()


@pytest.mark.parametrize("state", ["COMPLETED", "FAILED"])
def test_finished_job_emits_queue_and_run_time_and_outcome(statsd, sfapi, state):
    from facility_data.sensors.sfapi import SFAPIJobSensor

    sfapi.states["4242"] = ["RUNNING", state]
    sensor = SFAPIJobSensor(task_id="wait", jobid="4242", conn_id="sfapi_test", deferrable=False, poke_interval=0.01,
                            timeout=30)
    if state == "COMPLETED":
        sensor.execute(ctx("wait"))
    else:
        with pytest.raises(AirflowException, match="state=FAILED"):
            sensor.execute(ctx("wait"))
    got = statsd()
    outcome = "success" if state == "COMPLETED" else "failed"
    # the stand-in's accounting: submitted 08:58:30, started 09:00:00, elapsed 00:03:12
    assert got["airflow.facility_data.job.perlmutter.queue_seconds"] == (90_000, "ms")
    assert got["airflow.facility_data.job.perlmutter.run_seconds"] == (192_000, "ms")
    assert got[f"airflow.facility_data.job.perlmutter.{outcome}"] == (1, "c")
    assert not any(k.endswith(".pending") for k in got)


def test_deferred_job_emits_on_the_trigger_event(statsd):
    from facility_data.sensors.sfapi import SFAPIJobSensor

    sensor = SFAPIJobSensor(task_id="wait", jobid="7", machine="perlmutter", deferrable=True)
    event = {"status": "timeout", "jobid": "7", "job": {"state": "RUNNING", "submit": "2026-01-01T00:00:00",
                                                        "start": "Unknown"}, "message": "not finished"}
    with pytest.raises(AirflowException, match="timeout"):
        sensor.execute_complete(ctx("wait"), event)
    got = statsd()
    assert got["airflow.facility_data.job.perlmutter.timeout"] == (1, "c")
    assert "airflow.facility_data.job.perlmutter.queue_seconds" not in got  # never started: no queue time


def test_local_job_emits_its_run_time_and_failures_count(statsd, monkeypatch, tmp_path):
    from facility_data.operators.hpc import HPCJobOperator

    monkeypatch.setenv("FACILITY_SITE", str(tmp_path))
    ok = HPCJobOperator(task_id="job", template="batch.slurm.j2", job_params={"command": "sleep 0.2"}, hpc="local")
    result = ok.execute(ctx("job"))
    bad = HPCJobOperator(task_id="bad", template="batch.slurm.j2", job_params={"command": "exit 3"}, hpc="local")
    with pytest.raises(AirflowException):
        bad.execute(ctx("bad"))
    got = statsd()
    name = f"airflow.facility_data.job.{result['hpc']}"
    assert got[f"{name}.run_seconds"][0] == pytest.approx(result["seconds"] * 1000, abs=2)
    assert got[f"{name}.run_seconds"][0] >= 200
    assert got[f"{name}.success"] == got[f"{name}.failed"] == (1, "c")


@pytest.mark.parametrize(("text", "seconds"), [("00:03:12", 192), ("3:12", 192), ("1-02:03:04", 93784),
                                               ("12:00:00", 43200), ("00:00:01.5", 1), ("", None), (None, None),
                                               ("Unknown", None), ("١٢:٠٠", None)])
def test_slurm_seconds(text, seconds):
    assert slurm_seconds(text) == seconds
