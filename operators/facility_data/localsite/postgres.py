"""A private PostgreSQL cluster for the local site (Rucio's database; optionally Airflow's metadata DB).

PostgreSQL refuses to run as root, so under root its tools run as the ``postgres`` user, which cannot reach a site
inside a private (mode 700) home. There the cluster (data, socket, log) lives in a directory of its own under
/var/tmp, owned by ``postgres`` and recorded in the site's state; the rest of the site stays where the user put it.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
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


# Traversable by every user (mode 1777) and, unlike /tmp, not emptied at boot. Not the system temp dir: TMPDIR
# may point into the very private home that the postgres user cannot reach.
CLUSTER_PARENT = Path("/var/tmp")
OWNER_FILE = "facility-site"  # names the site a cluster directory belongs to, so it is found and removed safely


def new_cluster_dir(site_root: Path) -> Path:
    """A directory for a site's cluster: inside the site, or as root a fresh one the postgres user owns."""
    bindir(), _as_db_user([])  # a missing server or postgres user fails before anything is recorded or made
    if os.geteuid() != 0:
        return site_root / "postgres"
    path = Path(tempfile.mkdtemp(prefix="facility-pg-", dir=CLUSTER_PARENT))  # unique: two sites never share
    (path / OWNER_FILE).write_text(f"{site_root}\n")
    _chown_for_db(path)
    return path


def owned_by(path: Path, site_root: Path) -> bool:
    """Is ``path`` a cluster directory made by new_cluster_dir for ``site_root``?"""
    try:
        return (path / OWNER_FILE).read_text() == f"{site_root}\n"
    except OSError:
        return False


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
        if subprocess.run(_as_db_user(["test", "-x", str(self.root)])).returncode:
            raise SiteError(f"the postgres user cannot reach PostgreSQL's directory {self.root} (a cluster made "
                            "inside the site by an earlier version?): `make clean` removes the site and its "
                            "databases; the next start puts the cluster where the postgres user can reach it")
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
