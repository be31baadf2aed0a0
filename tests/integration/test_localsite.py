"""The local site comes up with real, healthy services, is idempotent, and stops only what it started."""

from __future__ import annotations

import subprocess
import sys

import pytest

from facility_data.localsite import Site, SiteError
from facility_data.localsite.procs import alive, free_port, port_in_use

pytestmark = pytest.mark.integration


def test_services_are_real_and_usable(site):
    assert site.status() == {"postgres": True, "rucio": True, "s3": True}
    # Rucio: bootstrapped for the Rubin pipeline
    client = site.rucio_client()
    assert client.whoami()["account"] == "root"
    assert "raw" in list(client.list_scopes())
    assert "SLAC_RAW_DISK" in [r["rse"] for r in client.list_rses()]
    # PostgreSQL: answers SQL
    assert site.postgres.psql("SELECT 40 + 2").strip() == "42"
    # S3 API: a bucket round trip through boto3
    import boto3

    s3 = boto3.client("s3", endpoint_url=site.s3_url, aws_access_key_id="k", aws_secret_access_key="s",
                      region_name="us-east-1")
    s3.create_bucket(Bucket="site-check")
    s3.put_object(Bucket="site-check", Key="a/b.txt", Body=b"hello")
    assert s3.get_object(Bucket="site-check", Key="a/b.txt")["Body"].read() == b"hello"


def test_up_is_idempotent(site):
    assert site.up() == []
    assert Site(site.root).up() == []  # a second handle on the same site reuses what runs


def test_layout_and_connections_for_airflow(site):
    for name in ("endpoints", "embargo", "main", "butler", "reports", "airflow"):
        assert (site.root / name).is_dir()
    env = site.env()
    assert env["FACILITY_SITE"] == str(site.root) and env["RUCIO_URL"] == site.rucio_url


def test_s3_only_site_up_down_and_foreign_processes_untouched(tmp_path):
    s = Site(tmp_path / "site")
    assert s.up(["s3"]) == ["s3"]
    assert s.status()["s3"] and not s.status()["postgres"]
    # a foreign process whose pid the state file claims must not be killed by down()
    foreign = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        real_pid = s.state["pids"]["s3"]
        assert s.down() == ["s3"]
        assert not alive(real_pid, "moto.server")
        s.state["pids"]["s3"] = foreign.pid
        assert s.down() == []
        assert foreign.poll() is None, "down() killed a process it did not start"
    finally:
        foreign.kill()


def test_taken_port_gives_a_clear_error(tmp_path, monkeypatch):
    import socket

    port = free_port()
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", port))
        blocker.listen()
        assert port_in_use(port)
        monkeypatch.setenv("FACILITY_S3_PORT", str(port))
        with pytest.raises(SiteError, match=f"port {port} for the S3 server is taken"):
            Site(tmp_path / "site").up(["s3"])


def test_missing_postgres_binaries_say_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setenv("FACILITY_PG_BINDIR", str(tmp_path / "nowhere"))
    with pytest.raises(SiteError, match="apt-get install -y postgresql"):
        Site(tmp_path / "site").up(["postgres"])


def test_unreachable_site_directory_is_explained(tmp_path):
    import os

    if os.geteuid() != 0:
        pytest.skip("only root runs PostgreSQL as another user; as a normal user the directory is our own")
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    with pytest.raises(SiteError, match="postgres user cannot reach"):
        Site(private / "site").up(["postgres"])
