"""An Airflow home for the local site: SQLite metadata DB by default (PostgreSQL with FACILITY_AIRFLOW_DB=postgres),
the bundle's dags/ and plugins/ (or, with FACILITY_DAG_BUNDLE=git, dags/ from a git repository as a versioned DAG
bundle), the site's connections imported, and every port configurable.

FACILITY_EXECUTOR=edge runs it with the EdgeExecutor (apache-airflow-providers-edge3) instead of `airflow
standalone`'s LocalExecutor: the api-server then also serves the edge worker API, and :class:`EdgeWorker` starts
`airflow edge worker` processes (one per site, each with its queues, its own working directory and no access to
the metadata DB) that pull their tasks over HTTP(S)."""

from __future__ import annotations

import json
import os
import re
import secrets
import subprocess
import sys
from pathlib import Path

from facility_data.config import include_dir
from facility_data.localsite.procs import SiteError

EDGE_EXECUTOR = "airflow.providers.edge3.executors.EdgeExecutor"
EXECUTORS = ("local", "edge")


def executor_kind() -> str:
    """FACILITY_EXECUTOR: ``local`` (default, `airflow standalone`) or ``edge``; anything else is refused."""
    kind = os.environ.get("FACILITY_EXECUTOR") or "local"
    if kind not in EXECUTORS:
        raise SiteError(f"FACILITY_EXECUTOR={kind!r}: expected one of {', '.join(EXECUTORS)}")
    return kind


def jwt_secret(home: Path) -> str:
    """The api-server and every edge worker sign and check worker tokens with one shared secret (``[api_auth]
    jwt_secret``); without it each process would make up its own and every worker call would be refused."""
    path = home / "edge_jwt_secret"
    if not path.exists():
        home.mkdir(parents=True, exist_ok=True)
        path.touch(mode=0o600)
        path.write_text(secrets.token_urlsafe(64))  # >= 64 bytes: the HS512 minimum PyJWT warns about
    return path.read_text().strip()


def edge_env(base_url: str, secret: str) -> dict[str, str]:
    """The central site's settings for the EdgeExecutor (and the ones its workers share)."""
    return {
        "AIRFLOW__CORE__EXECUTOR": EDGE_EXECUTOR,
        "AIRFLOW__EDGE__API_ENABLED": "True",
        "AIRFLOW__EDGE__API_URL": f"{base_url}/edge_worker/v1/rpcapi",
        "AIRFLOW__API_AUTH__JWT_SECRET": secret,
        # a worker's token is valid for jwt_leeway s (+ as much leeway): on a busy api-server a request can wait
        # longer than the default 30 s, and a refused heartbeat ends the worker
        "AIRFLOW__API_AUTH__JWT_LEEWAY": "300",
        "AIRFLOW__EDGE__JOB_POLL_INTERVAL": "1",  # the default 5 s per task adds up over a chain of 10
        "AIRFLOW__EDGE__HEARTBEAT_INTERVAL": "5",
        # keep finished jobs a day (default 5 min): the job table says which worker ran what
        "AIRFLOW__EDGE__JOB_SUCCESS_PURGE": "1440",
        "AIRFLOW__EDGE__JOB_FAIL_PURGE": "1440",
    }


def airflow_env(site) -> dict[str, str]:
    home = site.root / "airflow"
    bundle = include_dir().parent
    port = site.state["ports"]["airflow"]
    # edge mode: the edge API and the scheduler write the DB concurrently, which SQLite serialises badly
    if os.environ.get("FACILITY_AIRFLOW_DB") == "postgres" or executor_kind() == "edge":
        db = site.postgres.ensure_database("airflow")
    else:
        db = f"sqlite:///{home / 'airflow.db'}"
    edge = edge_env(f"http://127.0.0.1:{port}", jwt_secret(home)) if executor_kind() == "edge" else {}
    return {
        **os.environ,
        **site.env(),
        # `airflow standalone` starts its components as `airflow ...`: make it this environment's airflow
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(bundle / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(bundle / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": db,
        "AIRFLOW__API__HOST": "127.0.0.1",
        "AIRFLOW__API__PORT": str(port),
        "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{port}",
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{port}/execution/",
        "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(site.state["ports"].setdefault("airflow_logs", _port())),
        "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(site.state["ports"].setdefault("airflow_tlogs", _port())),
        "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
        "AIRFLOW__SCHEDULER__DAG_DIR_LIST_INTERVAL": "5",
        "AIRFLOW__CORE__MAX_ACTIVE_TASKS_PER_DAG": "8",
        "AIRFLOW__CORE__PARALLELISM": "4",
        "AIRFLOW__OPERATORS__DEFAULT_DEFERRABLE": "True",  # remote waits free their worker slot (the triggerer polls)
        **dag_bundle_env(home),
        **edge,
    }


#: the GitDagBundle deployment of dags/ (README, "Deploying as a DAG bundle"), relative to include/
DAG_BUNDLES_FILE = "airflow/dag_bundles.json"
GIT_BUNDLE_CLASS = "airflow.providers.git.bundles.git.GitDagBundle"


def dag_bundle_env(home: Path, environ: dict[str, str] | None = None) -> dict[str, str]:
    """Where this Airflow reads its DAGs from. FACILITY_DAG_BUNDLE unset or ``local``: Airflow's default
    dags-folder LocalDagBundle (this checkout's dags/, an edit is seen at the next parse, runs are not versioned).
    ``git``: the GitDagBundle of include/airflow/dag_bundles.json, cloned from FACILITY_DAG_BUNDLE_REPO (a URL or a
    path, given as the host of the bundle's git connection, as in production) at FACILITY_DAG_BUNDLE_REF (default:
    the file's tracking_ref), so each DAG run records the commit it started on and all its tasks run that commit.
    Anything else is refused."""
    environ = os.environ if environ is None else environ
    mode = (environ.get("FACILITY_DAG_BUNDLE") or "local").strip().lower()
    if mode == "local":
        return {}
    if mode != "git":
        raise SiteError(f"FACILITY_DAG_BUNDLE={mode!r}: expected 'local' (the default) or 'git'")
    repo = (environ.get("FACILITY_DAG_BUNDLE_REPO") or "").strip()
    if not repo:
        raise SiteError("FACILITY_DAG_BUNDLE=git needs FACILITY_DAG_BUNDLE_REPO: the URL or path of the git "
                        "repository whose dags/ to deploy")
    bundles = git_bundle_config(tracking_ref=(environ.get("FACILITY_DAG_BUNDLE_REF") or "").strip())
    conn_id = bundles[0]["kwargs"]["git_conn_id"]
    return {
        "AIRFLOW__DAG_PROCESSOR__DAG_BUNDLE_CONFIG_LIST": json.dumps(bundles),
        # an environment connection, not repo_url: without a connection the provider logs a traceback at every
        # bundle it builds, and a local repository needs no credentials
        f"AIRFLOW_CONN_{conn_id.upper()}": json.dumps({"conn_type": "git", "host": repo}),
        # the bare clone and one checkout per version in use live in the site, not in the system's /tmp
        "AIRFLOW__DAG_PROCESSOR__DAG_BUNDLE_STORAGE_PATH": str(home / "dag_bundles"),
    }


def git_bundle_config(*, tracking_ref: str = "", path: Path | None = None) -> list[dict]:
    """include/airflow/dag_bundles.json as ``[dag_processor] dag_bundle_config_list``, checked to be the one
    GitDagBundle of this project (with a git connection), its ``tracking_ref`` replaced when given."""
    path = path or include_dir() / DAG_BUNDLES_FILE
    try:
        bundles = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise SiteError(f"{path}: cannot read the DAG bundle config: {exc}") from None
    if not (isinstance(bundles, list) and len(bundles) == 1 and isinstance(bundles[0], dict)
            and bundles[0].get("classpath") == GIT_BUNDLE_CLASS and isinstance(bundles[0].get("kwargs"), dict)
            and bundles[0].get("name") and bundles[0]["kwargs"].get("git_conn_id")):
        raise SiteError(f"{path}: expected a list of one {{name, classpath: {GIT_BUNDLE_CLASS}, kwargs with "
                        f"git_conn_id}} entry")
    kwargs = bundles[0]["kwargs"]
    if tracking_ref:
        kwargs["tracking_ref"] = tracking_ref
    if not kwargs.get("tracking_ref"):
        raise SiteError(f"{path}: the bundle has no tracking_ref (the branch, tag or commit to deploy)")
    return bundles


def check_dag_bundle(env: dict[str, str]) -> str | None:
    """With a git DAG bundle, that its repository answers and has the tracked branch or tag, before Airflow starts:
    the dag-processor would only log the failure and show no DAGs. Returns what was checked (None: no git bundle).
    A tracking_ref that is a full commit SHA is left to the bundle (ls-remote lists refs, not commits)."""
    raw = env.get("AIRFLOW__DAG_PROCESSOR__DAG_BUNDLE_CONFIG_LIST")
    if not raw:
        return None
    [bundle] = json.loads(raw)
    kwargs = bundle["kwargs"]
    repo = json.loads(env[f"AIRFLOW_CONN_{kwargs['git_conn_id'].upper()}"])["host"]
    ref = kwargs["tracking_ref"]
    if re.fullmatch(r"[0-9a-fA-F]{40}", ref):
        return f"{repo} (commit {ref}: checked when the bundle is initialised)"
    try:
        res = subprocess.run(["git", "ls-remote", "--heads", "--tags", repo, ref], capture_output=True, text=True,
                             timeout=120, env={**env, "GIT_TERMINAL_PROMPT": "0"})
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise SiteError(f"DAG bundle {bundle['name']}: cannot query {repo}: {exc}") from None
    if res.returncode:
        raise SiteError(f"DAG bundle {bundle['name']}: {repo} is not a git repository this host can read: "
                        f"{res.stderr.strip()[-500:]}")
    if not res.stdout.strip():
        raise SiteError(f"DAG bundle {bundle['name']}: {repo} has no branch or tag {ref!r} (FACILITY_DAG_BUNDLE_REF)")
    return f"{repo} at {ref}"


def _port() -> int:
    from facility_data.localsite.procs import free_port

    return free_port()


def airflow(site, *args: str, check: bool = True, capture: bool = True) -> subprocess.CompletedProcess:
    res = subprocess.run([sys.executable, "-m", "airflow", *args], env=airflow_env(site), text=True,
                         capture_output=capture)
    if check and res.returncode:
        raise SiteError(f"`airflow {' '.join(args)}` failed: {(res.stderr or '')[-2000:]}")
    return res


def init(site) -> Path:
    """Migrate the metadata DB and import the site's connections (idempotent)."""
    home = site.root / "airflow"
    home.mkdir(parents=True, exist_ok=True)
    check_dag_bundle(airflow_env(site))  # before anything starts: a bundle that cannot load would show no DAGs
    airflow(site, "db", "migrate")
    conns = site.connections()
    if conns:
        path = home / "connections.json"
        path.write_text(json.dumps(conns, indent=2))
        os.chmod(path, 0o600)
        airflow(site, "connections", "import", "--overwrite", str(path))
    site._save()
    return home


class AirflowServer:
    """`airflow standalone` (api-server, scheduler, dag-processor, triggerer) in the background, and a small REST
    client for it. Used by `make demo`; `make airflow` runs the same thing in the foreground."""

    MARKER = "airflow standalone"

    def __init__(self, site, *, env: dict[str, str] | None = None):
        """``env`` overrides the site's Airflow environment: the live tests give it a home, metadata DB and ports
        of its own, so it never touches a developer's Airflow."""
        self.site = site
        self.env = {**airflow_env(site), **(env or {})}
        self.url = self.env["AIRFLOW__API__BASE_URL"]
        self.log = (Path(self.env["AIRFLOW_HOME"]) / "standalone.log" if env
                    else site.root / "logs" / "airflow-standalone.log")
        self.pid: int | None = None
        self.components: dict[str, int] = {}  # edge mode: component -> pid
        self._token: str | None = None

    def start(self, timeout: float = 360) -> None:  # ~15 s when idle; over 3 min seen on 2 busy cores
        from facility_data.localsite.procs import http_ok, port_in_use, start, wait_until

        port = int(self.env["AIRFLOW__API__PORT"])
        if port_in_use(port):
            raise SiteError(f"port {port} for the Airflow api-server is taken: set FACILITY_AIRFLOW_PORT")
        if self.edge:
            self._start_components()
        else:
            self.pid = start([sys.executable, "-m", "airflow", "standalone"], log=self.log, env=self.env)
        try:
            wait_until(lambda: http_ok(f"{self.url}/api/v2/monitor/health") and self._all_healthy(),
                       what=f"Airflow on {self.url}", timeout=timeout, log=self.log)
        except SiteError:
            self.stop()  # a start that failed must not leave Airflow's components running
            raise

    @property
    def edge(self) -> bool:
        return self.env.get("AIRFLOW__CORE__EXECUTOR") == EDGE_EXECUTOR

    def _start_components(self) -> None:
        """What `airflow standalone` does, which would replace the (non-local) EdgeExecutor by LocalExecutor:
        migrate the DB, then the four components, each in its own session, all logging to one file."""
        from facility_data.localsite.procs import start

        res = subprocess.run([sys.executable, "-m", "airflow", "db", "migrate"], env=self.env, text=True,
                             capture_output=True)
        if res.returncode:
            raise SiteError(f"`airflow db migrate` failed: {(res.stderr or '')[-2000:]}")
        for name in self.COMPONENTS:
            self.components[name] = start([sys.executable, "-m", "airflow", name], log=self.log, env=self.env)

    # component -> what its command line contains while it runs (the api-server retitles itself "airflow api_server")
    COMPONENTS = {"api-server": "airflow api", "scheduler": "airflow scheduler",
                  "dag-processor": "airflow dag-processor", "triggerer": "airflow triggerer"}

    def _all_healthy(self) -> bool:
        import requests

        try:
            health = requests.get(f"{self.url}/api/v2/monitor/health", timeout=5).json()
        except (requests.RequestException, ValueError):
            return False
        return all(health.get(k, {}).get("status") == "healthy" for k in ("scheduler", "triggerer", "dag_processor"))

    def stop(self) -> None:
        from facility_data.localsite.procs import stop

        if self.pid:
            stop(self.pid, self.MARKER, timeout=30)
        for name, pid in list(self.components.items()):
            stop(pid, self.COMPONENTS[name], timeout=30)
            del self.components[name]

    def _headers(self) -> dict:
        import requests

        if self._token is None:
            pw_file = Path(self.env["AIRFLOW_HOME"]) / "simple_auth_manager_passwords.json.generated"
            password = json.loads(pw_file.read_text())["admin"]
            resp = requests.post(f"{self.url}/auth/token", json={"username": "admin", "password": password},
                                 timeout=30)
            resp.raise_for_status()
            self._token = resp.json()["access_token"]
        return {"Authorization": f"Bearer {self._token}"}

    def api(self, method: str, path: str, **kwargs) -> dict:
        import time

        import requests

        for attempt in range(4):  # a busy metadata DB can fail a request transiently (HTTP 5xx)
            resp = requests.request(method, f"{self.url}/api/v2{path}", headers=self._headers(), timeout=60,
                                    **kwargs)
            if resp.status_code < 500:
                break
            time.sleep(2 * (attempt + 1))
        if resp.status_code >= 400:
            raise SiteError(f"{method} {path}: HTTP {resp.status_code}: {resp.text[:500]}")
        return resp.json() if resp.content else {}

    def wait_for_dag(self, dag_id: str, timeout: float = 120) -> bool:
        import time

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                self.api("GET", f"/dags/{dag_id}")
                return True
            except SiteError:
                time.sleep(2)
        return False

    def trigger(self, dag_id: str, conf: dict) -> str:
        run = self.api("POST", f"/dags/{dag_id}/dagRuns", json={"logical_date": None, "conf": conf})
        return run["dag_run_id"]

    def wait_run(self, dag_id: str, run_id: str, timeout: float = 900) -> str:
        import time

        deadline = time.monotonic() + timeout
        state = "queued"
        while time.monotonic() < deadline:
            state = self.api("GET", f"/dags/{dag_id}/dagRuns/{run_id}")["state"]
            if state in ("success", "failed"):
                return state
            time.sleep(2)
        return f"still {state} after {timeout:.0f} s"

    def runs(self, dag_id: str) -> list[dict]:
        return self.api("GET", f"/dags/{dag_id}/dagRuns", params={"order_by": "-run_after", "limit": 100})["dag_runs"]

    def task_states(self, dag_id: str, run_id: str) -> list[dict]:
        return self.api("GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances", params={"limit": 1000})[
            "task_instances"]


def edge_worker_env(central: dict[str, str], workdir: Path, env: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of an edge worker at a remote site, from the central site's: the same bundle, edge API
    and token secret, but its own AIRFLOW_HOME, logs and working directory, and no metadata DB (a worker only
    talks HTTP to the api-server: a SQLite file of its own in its working directory has no Airflow tables, so
    anything that tried the DB would fail loudly). ``env`` adds the site's own settings (its endpoints file, ...)."""
    worker = {k: v for k, v in central.items()
              if not k.startswith(("AIRFLOW__DATABASE__", "AIRFLOW__API__", "AIRFLOW__LOGGING__"))}
    worker.update({
        "AIRFLOW_HOME": str(workdir / "airflow"),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{workdir / 'no-metadata-db.sqlite'}",
        "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(workdir / "logs"),
        **(env or {}),
    })
    for key in ("AIRFLOW__EDGE__API_URL", "AIRFLOW__API_AUTH__JWT_SECRET", "AIRFLOW__CORE__EXECUTION_API_SERVER_URL"):
        if not worker.get(key):
            raise SiteError(f"an edge worker needs {key} from the central site's environment (FACILITY_EXECUTOR=edge)")
    return worker


class EdgeWorker:
    """One `airflow edge worker` process: a site's worker serving ``queues``, in its own working directory."""

    MARKER = "airflow edge worker"  # its command line, and the title the worker sets itself

    def __init__(self, central_env: dict[str, str], name: str, queues: list[str], workdir: Path, *,
                 env: dict[str, str] | None = None, concurrency: int = 2):
        if not queues:
            raise SiteError(f"edge worker {name}: no queues (a worker without -q would serve every queue)")
        self.name, self.queues, self.workdir = name, list(queues), Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.env = edge_worker_env(central_env, self.workdir, env)
        self.concurrency = concurrency
        self.log = self.workdir / "edge-worker.log"
        self.pid: int | None = None

    def command(self) -> list[str]:
        return [sys.executable, "-m", "airflow", "edge", "worker", "--edge-hostname", self.name,
                "--queues", ",".join(self.queues), "--concurrency", str(self.concurrency)]

    def start(self) -> int:
        from facility_data.localsite.procs import start

        self.pid = start(self.command(), log=self.log, env=self.env, cwd=self.workdir)
        return self.pid

    def alive(self) -> bool:
        from facility_data.localsite.procs import alive

        return alive(self.pid, self.MARKER)

    def stop(self) -> None:
        from facility_data.localsite.procs import stop

        if self.pid:
            stop(self.pid, self.MARKER, timeout=30)
            self.pid = None
