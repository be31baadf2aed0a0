"""The local site: real services and directories that let the whole mission run on one machine.

``Site(root).up()`` brings up, idempotently and on loopback, PostgreSQL, a Rucio server (PostgreSQL-backed,
bootstrapped for the Rubin pipeline), an S3 API server and a SciCat API stand-in (records kept in
``<root>/scicat/records.json``); it lays out the directories that stand in for remote
endpoints and storage, and records ports, pids and PostgreSQL's directory (outside the site when root runs it,
see facility_data.localsite.postgres) in ``<root>/site.json``. ``down()`` stops only what the site started;
``remove()`` deletes the site and its databases. Ports are taken from FACILITY_{PG,RUCIO,S3,SCICAT,AIRFLOW}_PORT, else kept
from an earlier run, else free ones.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
from datetime import UTC, datetime
from pathlib import Path

from facility_data.config import expand_env, include_dir, temporary_env
from facility_data.localsite.postgres import Postgres, new_cluster_dir, owned_by
from facility_data.localsite.procs import SiteError, free_port
from facility_data.localsite.rucio_server import RucioServer, server_venv
from facility_data.localsite.s3 import S3Server
from facility_data.localsite.scicat_standin import INGEST_USER, SciCatServer

__all__ = ["Site", "SiteError", "SERVICES"]

SERVICES = ("postgres", "rucio", "s3", "scicat")
DIRECTORIES = ("endpoints", "embargo", "main", "butler", "reports", "airflow", "logs")


class Site:
    def __init__(self, root: Path):
        self.root = Path(root).resolve()
        self.state_file = self.root / "site.json"
        self.state = json.loads(self.state_file.read_text()) if self.state_file.exists() else {}
        ports = self.state.setdefault("ports", {})
        for name in (*SERVICES, "airflow"):
            env = os.environ.get(f"FACILITY_{'PG' if name == 'postgres' else name.upper()}_PORT")
            if env:
                ports[name] = int(env)
            elif name not in ports:
                ports[name] = free_port()
        self.state.setdefault("pids", {})
        self.state.setdefault("rucio_password", secrets.token_urlsafe(16))
        self.state.setdefault("scicat_password", secrets.token_urlsafe(16))
        # where rubin_unembargo_raw's catchup starts on this site: its creation, so unpausing it creates a handful
        # of runs rather than one per 15 minutes since the production default (earlier windows: backfill)
        now = datetime.now(UTC)
        self.state.setdefault("rubin_start", now.replace(minute=now.minute - now.minute % 15, second=0,
                                                         microsecond=0).isoformat())

    @classmethod
    def from_env(cls) -> Site:
        root = os.environ.get("FACILITY_SITE") or include_dir().parent / ".site"
        return cls(Path(root))

    # --- services -------------------------------------------------------------------------------------------
    @property
    def postgres(self) -> Postgres:
        # sites made before the directory was recorded keep their cluster inside the site
        return Postgres(Path(self.state.get("postgres_dir") or self.root / "postgres"), self.state["ports"]["postgres"])

    @property
    def rucio(self) -> RucioServer:
        return RucioServer(self.root / "rucio", self.state["ports"]["rucio"],
                           db_url=f"{self.postgres.dsn_base}/rucio", password=self.state["rucio_password"],
                           rse_prefix=self.root / "main")

    @property
    def s3(self) -> S3Server:
        return S3Server(self.root / "s3", self.state["ports"]["s3"])

    @property
    def scicat(self) -> SciCatServer:
        return SciCatServer(self.root / "scicat", self.state["ports"]["scicat"], self.state["scicat_password"])

    @property
    def scicat_url(self) -> str:
        return self.scicat.url

    scicat_user = INGEST_USER

    @property
    def scicat_password(self) -> str:
        return self.state["scicat_password"]

    @property
    def pg_dsn(self) -> str:
        return f"{self.postgres.dsn_base}/postgres"

    @property
    def rucio_url(self) -> str:
        return self.rucio.url

    rucio_account = "root"

    @property
    def rucio_password(self) -> str:
        return self.state["rucio_password"]

    @property
    def s3_url(self) -> str:
        return self.s3.url

    def rucio_client(self):
        return self.rucio.client()

    def _save(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.state_file.write_text(json.dumps(self.state, indent=2))
        os.chmod(self.state_file, 0o600)

    def layout(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        for name in DIRECTORIES:
            (self.root / name).mkdir(exist_ok=True)

    def up(self, services=SERVICES) -> list[str]:
        """Bring up ``services`` (idempotent). Returns the names of the services this call started."""
        self.layout()
        self._save()  # ports are fixed from here on, even if a service fails to start
        started: list[str] = []
        pids = self.state["pids"]
        if "postgres" in services or "rucio" in services:
            if "postgres_dir" not in self.state and not (self.postgres.data / "PG_VERSION").exists():
                self.state["postgres_dir"] = str(new_cluster_dir(self.root))
                self._save()
            pg = self.postgres
            if not pg.running():
                pg.start()
                started.append("postgres")
        if "rucio" in services:
            rucio = self.rucio
            if not rucio.running(pids.get("rucio")):
                venv = server_venv(include_dir() / "local_site" / "rucio-server.lock")
                self.postgres.ensure_database("rucio", fresh=not self.state.get("rucio_bootstrapped"))
                rucio.write_config(venv)
                if not self.state.get("rucio_bootstrapped"):
                    rucio.bootstrap_db(venv)
                pids["rucio"] = rucio.start(venv)
                self._save()
                rucio.bootstrap_content()
                self.state["rucio_bootstrapped"] = True
                started.append("rucio")
        if "s3" in services:
            s3 = self.s3
            if not s3.running(pids.get("s3")):
                pids["s3"] = s3.start()
                started.append("s3")
        if "scicat" in services:
            scicat = self.scicat
            if not scicat.running(pids.get("scicat")):
                pids["scicat"] = scicat.start()
                started.append("scicat")
        self._save()
        return started

    def down(self) -> list[str]:
        """Stop what this site started (never other programs). Returns the names of stopped services."""
        stopped = []
        pids = self.state["pids"]
        if self.scicat.stop(pids.pop("scicat", None)):
            stopped.append("scicat")
        if self.s3.stop(pids.pop("s3", None)):
            stopped.append("s3")
        if self.rucio.stop(pids.pop("rucio", None)):
            stopped.append("rucio")
        if (self.postgres.data / "postmaster.pid").exists():
            self.postgres.stop()
            stopped.append("postgres")
        if self.state_file.exists():
            self._save()
        return stopped

    def remove(self) -> None:
        """Stop the site and delete it: its directory and PostgreSQL's directory, also when that lies outside."""
        if self.root.exists() and not self.state_file.exists():
            raise SiteError(f"{self.root} is not a local site (no site.json): not removing it")
        cluster = self.postgres.root
        if cluster.exists() and not (cluster.is_relative_to(self.root) or owned_by(cluster, self.root)):
            raise SiteError(f"PostgreSQL's directory {cluster} in {self.state_file} was not made for this site "
                            "(a copied or moved site?): not stopping or removing anything")
        self.down()
        for path in (cluster, self.root):
            if path.exists():
                shutil.rmtree(path)

    def status(self) -> dict[str, bool]:
        pids = self.state["pids"]
        return {"postgres": self.postgres.running(), "rucio": self.rucio.running(pids.get("rucio")),
                "s3": self.s3.running(pids.get("s3")), "scicat": self.scicat.running(pids.get("scicat"))}

    # --- what clients need -----------------------------------------------------------------------------------
    def env(self) -> dict[str, str]:
        """Environment for processes that use the site (Airflow components, tests, benchmarks)."""
        return {
            "FACILITY_SITE": str(self.root),
            "FACILITY_INCLUDE": str(include_dir()),
            "RUCIO_URL": self.rucio_url,
            "RUCIO_PASSWORD": self.rucio_password,
            "S3_URL": self.s3_url,
            "SCICAT_URL": self.scicat_url,
            "SCICAT_PASSWORD": self.scicat_password,
            "PG_PORT": str(self.state["ports"]["postgres"]),
            "AIRFLOW_PORT": str(self.state["ports"]["airflow"]),
            "FACILITY_RUBIN_START": self.state["rubin_start"],
        }

    def connections(self) -> dict[str, dict]:
        """The project's Airflow connections for this site, from include/local_site/connections.yaml."""
        import yaml

        path = include_dir() / "local_site" / "connections.yaml"
        raw = yaml.safe_load(path.read_text()) or {}
        with temporary_env(self.env()):
            conns = expand_env(raw.get("connections") or {}, source=str(path))
        return conns
