"""A private PostgreSQL cluster for the local site (Rucio's database; optionally Airflow's metadata DB)."""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
from pathlib import Path

from facility_data.localsite.procs import SiteError, port_in_use, wait_until

INSTALL_HINT = "install the PostgreSQL server: `apt-get install -y postgresql` (Debian/Ubuntu)"


def bindir() -> Path:
    """Directory with initdb/pg_ctl: $FACILITY_PG_BINDIR, else PATH, else Debian's versioned lib directory."""
    if os.environ.get("FACILITY_PG_BINDIR"):
        configured = Path(os.environ["FACILITY_PG_BINDIR"])
        if not (configured / "pg_ctl").exists():
            raise SiteError(f"FACILITY_PG_BINDIR={configured} has no pg_ctl: {INSTALL_HINT}")
        return configured
    found = shutil.which("pg_ctl")
    if found:
        return Path(found).resolve().parent
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), reverse=True)
    if candidates:
        return Path(candidates[0]).parent
    raise SiteError(f"PostgreSQL server binaries (initdb, pg_ctl) not found: {INSTALL_HINT}")


def _as_db_user(cmd: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root: run its tools as the `postgres` user when we are root."""
    if os.geteuid() != 0:
        return cmd
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        raise SiteError(f"running as root but there is no `postgres` user: {INSTALL_HINT}") from None
    return ["runuser", "-u", "postgres", "--", *cmd]


def _chown_for_db(path: Path) -> None:
    if os.geteuid() == 0:
        shutil.chown(path, "postgres", "postgres")


class Postgres:
    def __init__(self, root: Path, port: int):
        self.root = root
        self.port = port
        self.data = root / "data"
        self.sock = root / "run"
        self.log = root / "postgres.log"

    @property
    def dsn_base(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}"

    def healthy(self) -> bool:
        res = subprocess.run([str(bindir() / "pg_isready"), "-h", "127.0.0.1", "-p", str(self.port), "-q"],
                             capture_output=True)
        return res.returncode == 0

    def running(self) -> bool:
        return (self.data / "postmaster.pid").exists() and self.healthy()

    def start(self) -> None:
        bins = bindir()
        self.root.mkdir(parents=True, exist_ok=True)
        os.chmod(self.root, 0o755)
        if subprocess.run(_as_db_user(["test", "-x", str(self.root)])).returncode:
            raise SiteError(f"the postgres user cannot reach {self.root}: put the site under a directory "
                            "every user may traverse (chmod o+x on its parents) or set FACILITY_SITE")
        if not (self.data / "PG_VERSION").exists():
            self.data.mkdir(parents=True, exist_ok=True)
            _chown_for_db(self.data)
            res = subprocess.run(_as_db_user([str(bins / "initdb"), "-D", str(self.data), "-U", "postgres",
                                              "--auth=trust", "-E", "UTF8", "--no-instructions"]),
                                 capture_output=True, text=True)
            if res.returncode:
                raise SiteError(f"initdb failed in {self.data}: {res.stderr.strip() or res.stdout.strip()}")
        if port_in_use(self.port):
            raise SiteError(f"port {self.port} for PostgreSQL is taken by another program: set FACILITY_PG_PORT")
        self.sock.mkdir(exist_ok=True)
        _chown_for_db(self.sock)
        for f in (self.log,):
            f.touch()
            _chown_for_db(f)
        opts = f"-p {self.port} -k {self.sock} -c listen_addresses=127.0.0.1"
        res = subprocess.run(_as_db_user([str(bins / "pg_ctl"), "-D", str(self.data), "-l", str(self.log),
                                          "-o", opts, "-w", "-t", "60", "start"]), capture_output=True, text=True)
        if res.returncode:
            raise SiteError(f"PostgreSQL did not start (log: {self.log}): {res.stderr.strip() or res.stdout.strip()}")
        wait_until(self.healthy, what="PostgreSQL", timeout=30, log=self.log)

    def stop(self) -> None:
        if (self.data / "postmaster.pid").exists():
            subprocess.run(_as_db_user([str(bindir() / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w",
                                        "stop"]), capture_output=True)

    def psql(self, sql: str, db: str = "postgres") -> str:
        res = subprocess.run([str(bindir() / "psql"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres",
                              "-d", db, "-v", "ON_ERROR_STOP=1", "-Atc", sql], capture_output=True, text=True)
        if res.returncode:
            raise SiteError(f"psql failed ({sql!r}): {res.stderr.strip()}")
        return res.stdout

    def ensure_database(self, name: str, *, fresh: bool = False) -> str:
        exists = self.psql(f"SELECT 1 FROM pg_database WHERE datname = '{name}'").strip() == "1"
        if exists and fresh:
            self.psql(f'DROP DATABASE "{name}" WITH (FORCE)')
            exists = False
        if not exists:
            self.psql(f'CREATE DATABASE "{name}"')
        return f"{self.dsn_base}/{name}"
