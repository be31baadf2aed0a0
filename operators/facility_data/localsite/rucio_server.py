"""A real Rucio server (41.5.1) on the site's PostgreSQL, in its own virtual environment.

The server pins SQLAlchemy 2.0.x, which Airflow's environment cannot share, so it lives in a cached venv built from
include/local_site/rucio-server.lock. It is bootstrapped with what the Rubin pipeline needs: scope ``raw`` and the
non-deterministic RSE ``SLAC_RAW_DISK`` (file protocol, prefix = the site's main storage), and the RSE standing for
FrDF, ``FRDF_RAW_DISK``, where the archival rules point (no daemons run here: the rules stay REPLICATING).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from facility_data.localsite.procs import SiteError, alive, http_ok, port_in_use, start_healthy, stop

RUCIO_VERSION = "41.5.1"
SCOPE = "raw"
RSE = "SLAC_RAW_DISK"
ARCHIVE_RSE = "FRDF_RAW_DISK"
MARKER = "rucio.web.rest.flaskapi.v1.main"


def ensure_archive_rse(client, name: str = ARCHIVE_RSE) -> None:
    """The archive RSE (deterministic, unlimited quota for root), idempotent."""
    from rucio.common.exception import Duplicate

    try:
        client.add_rse(name)
    except Duplicate:
        pass
    client.set_local_account_limit("root", name, -1)


def cache_dir() -> Path:
    return Path(os.environ.get("FACILITY_CACHE", Path.home() / ".cache" / "facility-data"))


def server_venv(lock: Path) -> Path:
    """The server's venv, created from the lock once per machine (~30 s with pip, ~3 s with uv)."""
    venv = cache_dir() / f"rucio-{RUCIO_VERSION}"
    python = venv / "bin" / "python"
    stamp = venv / ".lock-installed"
    if python.exists() and stamp.exists() and stamp.read_text() == lock.read_text():
        return venv
    venv.parent.mkdir(parents=True, exist_ok=True)
    uv = shutil.which("uv")
    if uv:
        cmds = [[uv, "venv", "-q", "--allow-existing", "-p", sys.executable, str(venv)],
                [uv, "pip", "sync", "-q", "-p", str(python), str(lock)]]
    else:
        cmds = [[sys.executable, "-m", "venv", str(venv)],
                [str(python), "-m", "pip", "install", "-q", "--no-deps", "-r", str(lock)]]
    for cmd in cmds:
        res = subprocess.run(cmd, capture_output=True, text=True)
        if res.returncode:
            raise SiteError(f"could not build the Rucio server venv {venv}: {res.stderr.strip()[-2000:]}")
    stamp.write_text(lock.read_text())
    return venv


class RucioServer:
    def __init__(self, root: Path, port: int, *, db_url: str, password: str, rse_prefix: Path):
        self.root = root
        self.port = port
        self.db_url = db_url
        self.password = password
        self.rse_prefix = rse_prefix
        self.config = root / "rucio.cfg"
        self.log = root / "server.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def healthy(self) -> bool:
        return http_ok(f"{self.url}/ping")

    def write_config(self, venv: Path) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        migrate = next(venv.glob("lib/python*/site-packages/rucio/db/sqla/migrate_repo"))
        (self.root / "alembic.ini").write_text(
            f"[alembic]\nscript_location = {migrate}\nsqlalchemy.url = {self.db_url}\n"
            # alembic's env.py configures logging from this file, so it needs the minimal logging sections
            "[loggers]\nkeys = root\n[handlers]\nkeys = console\n[formatters]\nkeys = plain\n"
            "[logger_root]\nlevel = WARNING\nhandlers = console\n"
            "[handler_console]\nclass = StreamHandler\nargs = (sys.stderr,)\nformatter = plain\n"
            "[formatter_plain]\nformat = %%(levelname)s %%(message)s\n")
        self.config.write_text(f"""[common]
logdir = {self.root}
loglevel = WARNING
[client]
rucio_host = {self.url}
auth_host = {self.url}
auth_type = userpass
username = root
password = {self.password}
account = root
auth_token_file_path = {self.root / 'client-token'}
request_retries = 3
[database]
default = {self.db_url}
[bootstrap]
userpass_identity = root
userpass_pwd = {self.password}
userpass_email = root@localhost
[alembic]
cfg = {self.root / 'alembic.ini'}
[policy]
permission = generic
schema = generic
lfn2pfn_algorithm_default = identity
support = local site
""")
        os.chmod(self.config, 0o600)

    def bootstrap_db(self, venv: Path) -> None:
        code = ("from rucio.db.sqla.util import build_database, create_base_vo, create_root_account\n"
                "build_database(); create_base_vo(); create_root_account()\n")
        res = subprocess.run([str(venv / "bin" / "python"), "-c", code], capture_output=True, text=True,
                             env={**os.environ, "RUCIO_CONFIG": str(self.config)})
        if res.returncode:
            raise SiteError(f"Rucio database bootstrap failed: {res.stderr.strip()[-2000:]}")

    def start(self, venv: Path) -> int:
        if port_in_use(self.port):
            raise SiteError(f"port {self.port} for the Rucio server is taken: set FACILITY_RUCIO_PORT")
        # importing rucio in two workers takes seconds when idle and over a minute on a loaded 2-core machine
        return start_healthy([str(venv / "bin" / "gunicorn"), "-b", f"127.0.0.1:{self.port}", "-w", "2",
                              "--threads", "4", "--timeout", "120",
                              # gunicorn's control socket defaults to one per-user path (~/.gunicorn/gunicorn.ctl)
                              # that every site on the machine would share; nothing here uses it
                              "--no-control-socket", MARKER + ":application"],
                             marker=MARKER, check=self.healthy, what=f"Rucio server on {self.url}", timeout=180,
                             log=self.log, env={**os.environ, "RUCIO_CONFIG": str(self.config)})

    def bootstrap_content(self) -> None:
        """Scope, RSE and account limit the Rubin pipeline needs (idempotent)."""
        from rucio.common.exception import Duplicate, RSEProtocolPriorityError

        client = self.client()
        try:
            client.add_scope("root", SCOPE)
        except Duplicate:
            pass
        try:
            client.add_rse(RSE, deterministic=False)
        except Duplicate:
            pass
        self.rse_prefix.mkdir(parents=True, exist_ok=True)
        try:
            client.add_protocol(RSE, {
                "scheme": "file", "hostname": "", "port": 0, "prefix": f"{self.rse_prefix}/",
                "impl": "rucio.rse.protocols.posix.Default",
                "domains": {"lan": {"read": 1, "write": 1, "delete": 1},
                            "wan": {"read": 1, "write": 1, "delete": 1, "third_party_copy_read": 1,
                                    "third_party_copy_write": 1}},
            })
        except (Duplicate, RSEProtocolPriorityError):
            pass
        client.set_local_account_limit("root", RSE, -1)
        ensure_archive_rse(client)

    def client(self):
        from rucio.client import Client

        os.environ.setdefault("RUCIO_CONFIG", str(self.config))
        return Client(rucio_host=self.url, auth_host=self.url, account="root", auth_type="userpass",
                      creds={"username": "root", "password": self.password})

    def stop(self, pid: int | None) -> bool:
        return bool(pid) and stop(pid, MARKER)

    def running(self, pid: int | None) -> bool:
        return alive(pid, MARKER) and self.healthy()
