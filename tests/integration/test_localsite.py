"""The local site comes up with real, healthy services, is idempotent, and stops only what it started."""

from __future__ import annotations

import json
import os
import pwd
import stat
import subprocess
import sys

import pytest

from facility_data.localsite import Site, SiteError
from facility_data.localsite.postgres import CLUSTER_PARENT, OWNER_FILE
from facility_data.localsite.procs import alive, free_port, port_in_use

pytestmark = pytest.mark.integration


def test_services_are_real_and_usable(site):
    assert site.status() == {"postgres": True, "rucio": True, "s3": True, "scicat": True}
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


@pytest.fixture
def scicat_site(tmp_path, monkeypatch):
    """A site running SciCat alone (on a port fixed by FACILITY_SCICAT_PORT), stopped afterwards."""
    port = free_port()
    monkeypatch.setenv("FACILITY_SCICAT_PORT", str(port))
    s = Site(tmp_path / "site")
    assert s.up(["scicat"]) == ["scicat"] and s.scicat_url == f"http://127.0.0.1:{port}/api/v3"
    yield s
    s.down()


def test_site_serves_scicat_and_pyscicat_logs_in_with_the_sites_connection(scicat_site, monkeypatch):
    from pyscicat.client import ScicatClient

    from facility_data.hooks.scicat import SciCatAuthError, SciCatHook

    site = scicat_site
    conn = site.connections()["scicat_default"]
    assert (conn["conn_type"], conn["host"], conn["login"]) == ("scicat", site.scicat_url, "ingestor")
    monkeypatch.setenv("AIRFLOW_CONN_SCICAT_DEFAULT", json.dumps(conn))
    client = SciCatHook().get_conn()
    assert isinstance(client, ScicatClient) and client.datasets_get_many({}) == []
    monkeypatch.setenv("AIRFLOW_CONN_SCICAT_DEFAULT", json.dumps({**conn, "password": "not-the-sites"}))
    with pytest.raises(SciCatAuthError, match=r"refused \(401\)"):
        SciCatHook(backoff=0).get_conn()
    # the password reaches the stand-in through its environment, never its command line
    assert site.scicat_password not in open(f"/proc/{site.state['pids']['scicat']}/cmdline").read()


def test_scicat_site_keeps_its_catalogue_across_down_and_up(scicat_site, tmp_path, monkeypatch):
    from facility_data.als.scicat_ingest import ingest_scan
    from facility_data.demo import als_synthetic as synthetic
    from facility_data.hooks.scicat import SciCatHook
    from facility_data.localsite.scicat_standin import MARKER

    s, port = scicat_site, scicat_site.state["ports"]["scicat"]
    assert s.status()["scicat"] and not s.status()["postgres"]
    monkeypatch.setenv("AIRFLOW_CONN_SCICAT_DEFAULT", json.dumps(s.connections()["scicat_default"]))
    scan = synthetic.write_scan(tmp_path / "20240101_120000_kept.h5", n_angles=5, size=16, n_slices=1)
    dataset = ingest_scan(SciCatHook(backoff=0), scan)
    pid = s.state["pids"]["scicat"]
    assert s.down() == ["scicat"] and not alive(pid, MARKER) and not port_in_use(port)
    assert s.up(["scicat"]) == ["scicat"]
    found = SciCatHook(backoff=0).get_conn().datasets_get_many({"datasetName": "20240101_120000_kept"})
    assert [d["pid"] for d in found] == [dataset]


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
    assert "postgres_dir" not in json.loads((tmp_path / "site" / "site.json").read_text()), "made a cluster dir"


def _needs_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("only root runs PostgreSQL as another user (postgres), who cannot enter a mode-700 directory; "
                    "as an ordinary user the cluster is the user's own, inside the site")


def test_site_in_a_private_directory_runs_postgres_where_postgres_can_reach(tmp_path):
    """Root in a mode-700 home (a new user's clone): the cluster lives outside it, the home stays private."""
    _needs_root()
    home = tmp_path / "home"
    home.mkdir()
    home.chmod(0o700)
    first, second = Site(home / "site"), Site(home / "other")
    try:
        assert first.up(["postgres"]) == ["postgres"]
        first.postgres.ensure_database("probe")
        first.postgres.psql("CREATE TABLE kept (v int); INSERT INTO kept VALUES (42)", db="probe")
        cluster = first.postgres.root
        assert cluster.parent == CLUSTER_PARENT and not cluster.is_relative_to(home)
        assert pwd.getpwuid(cluster.stat().st_uid).pw_name == "postgres"
        assert stat.S_IMODE(cluster.stat().st_mode) == 0o700
        assert json.loads(first.state_file.read_text())["postgres_dir"] == str(cluster)
        assert stat.S_IMODE(home.stat().st_mode) == 0o700, "the user's directory was chmodded"
        # two sites never share a cluster
        assert second.up(["postgres"]) == ["postgres"]
        assert second.postgres.root != cluster and second.postgres.psql("SELECT 1").strip() == "1"
        # a new handle (the next `make` command) finds the recorded cluster; down keeps the databases
        assert Site(first.root).up(["postgres"]) == []
        assert first.down() == ["postgres"] and not first.status()["postgres"]
        again = Site(first.root)
        assert again.up(["postgres"]) == ["postgres"] and again.postgres.root == cluster
        assert again.postgres.psql("SELECT v FROM kept", db="probe").strip() == "42"
        # `make clean` removes the cluster with the site
        again.remove()
        assert not cluster.exists() and not first.root.exists()
    finally:
        for s in (first, second):
            if s.root.exists():
                s.remove()


def test_cluster_made_inside_an_unreachable_site_is_explained_not_chmodded(tmp_path):
    """A site whose cluster predates the move out (inside the site) keeps it; unreachable, it says why."""
    _needs_root()
    home = tmp_path / "home"
    (home / "site" / "postgres" / "data").mkdir(parents=True)
    (home / "site" / "postgres" / "data" / "PG_VERSION").write_text("15\n")
    home.chmod(0o700)
    with pytest.raises(SiteError, match="postgres user cannot reach PostgreSQL's directory .*make clean"):
        Site(home / "site").up(["postgres"])
    assert stat.S_IMODE(home.stat().st_mode) == 0o700
    assert "postgres_dir" not in json.loads((home / "site" / "site.json").read_text())


def test_clean_refuses_a_postgres_directory_made_for_another_site(tmp_path):
    """A copied site.json must not make `make clean` delete a directory this site did not make."""
    foreign = tmp_path / "foreign-cluster"
    foreign.mkdir()
    (foreign / OWNER_FILE).write_text(f"{tmp_path / 'original'}\n")
    s = Site(tmp_path / "copy")
    s.state["postgres_dir"] = str(foreign)
    s.layout()
    s._save()
    with pytest.raises(SiteError, match="not made for this site"):
        s.remove()
    assert foreign.exists() and s.root.exists()


def test_clean_refuses_a_directory_that_is_not_a_site(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(SiteError, match="not a local site"):
        Site(tmp_path).remove()
    assert (tmp_path / "notes.txt").exists()


def test_airflow_start_that_times_out_leaves_nothing_running(tmp_path):
    """`make demo` under load: a start that does not become healthy in time stops what it started."""
    from facility_data.localsite.airflow_home import AirflowServer

    s = Site(tmp_path / "site")
    s.layout()
    server = AirflowServer(s)
    try:
        with pytest.raises(SiteError, match="did not become healthy within 1 s"):
            server.start(timeout=1)
        assert server.pid and not alive(server.pid, AirflowServer.MARKER)
    finally:
        server.stop()
