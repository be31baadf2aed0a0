"""A local SciCat API stand-in: a real HTTP server (threaded ``http.server``) that pyscicat, through
:class:`facility_data.hooks.scicat.SciCatClient`, talks to unchanged.

Why here and not under tests/: the local site (``Site.up``) runs it as its own process
(``python -m facility_data.localsite.scicat_standin``, see :class:`SciCatServer`) so the demo's
``bl832_new_file`` catalogues its scans; tests start it in-process (``with SciCatStandIn() as scicat:``).

It serves, under ``/api/v3``, the routes the ingest uses, with SciCat's shapes:

* ``POST auth/login`` (v4: ``{"access_token", "id", "userId"}``) or, with ``v4_login=False``, only the older
  ``POST Users/login`` (LoopBack: ``{"id", "ttl", "userId"}``); wrong credentials answer 401.
* ``GET Datasets?filter={"where": {...}, "limit": n, "skip": n}`` (exact match on top-level fields),
  ``GET Datasets/{pid}`` (404 when absent, as v3), ``POST Datasets`` (pid given or minted, 409 on a taken pid).
* ``GET/POST Datasets/{pid}/origdatablocks`` and ``GET/POST Datasets/{pid}/attachments`` (404 when the dataset is
  absent; the ownership of a block is copied from its dataset, as v4 does).

Every call other than login needs a valid ``Authorization: Bearer`` token (401 otherwise). Records live in memory
(``datasets``, ``origdatablocks``, ``attachments``) and, given ``state_file``, are also written there (JSON, after
every change) and read back on start, so a restarted site keeps its catalogue; tokens are not kept (after a restart
clients log in again, as they do on any 401). ``calls`` lists ``(method, route, query)`` of every request.

Fault switches: :meth:`down` / :meth:`up` (the port refuses connections, then serves again with the same records),
:meth:`fail` (the next ``times`` matching requests answer ``status`` with a message; ``after_store`` applies the
request first, as a server that stores then times out), :meth:`expire_tokens` (every issued token answers 401).

Not modelled: ACLs and groups (any logged-in user may read and write everything), schema validation beyond the
required fields of a raw dataset, an origdatablock and an attachment, Mongo-style operators in filters (``like``,
``$in``...), ``fullquery``/``fullfacet``, ordering, counts, pagination headers, PATCH/DELETE, samples, proposals,
instruments, published data, jobs, token lifetimes (tokens live until :meth:`expire_tokens`), and v4's lower-case
routes (``datasets``) and ``/api/v4`` prefix.
"""

from __future__ import annotations

import json
import os
import secrets
import sys
import threading
import uuid
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote_plus, urlsplit

from facility_data.localsite.procs import (
    SiteError,
    alive,
    free_port,
    http_ok,
    port_in_use,
    start_healthy,
    stop,
)

API_PATH = "/api/v3"
PID_PREFIX = "20.500.12269/"
RECORDS = ("datasets", "origdatablocks", "attachments")  # what ``state_file`` keeps
RAW_REQUIRED = ("type", "owner", "contactEmail", "sourceFolder", "creationTime", "ownerGroup",
                "principalInvestigator", "creationLocation")


@dataclass
class _Fault:
    method: str
    route: str  # as in :func:`_matches`: "Datasets", "auth/login", "origdatablocks"
    status: int
    times: int
    after_store: bool
    message: str


class SciCatStandIn:
    """``with SciCatStandIn() as scicat:`` serves on a free port; ``scicat.url`` is the API base URL."""

    def __init__(self, users: dict[str, str] | None = None, *, v4_login: bool = True, port: int | None = None,
                 state_file: Path | None = None):
        self.users = dict(users or {"ingestor": "ingest-password"})
        self.v4_login = v4_login
        self.port = port or free_port()
        self.state_file = Path(state_file) if state_file else None
        self.datasets: dict[str, dict] = {}
        self.origdatablocks: dict[str, list[dict]] = {}
        self.attachments: dict[str, list[dict]] = {}
        if self.state_file and self.state_file.exists():
            saved = json.loads(self.state_file.read_text())
            self.datasets, self.origdatablocks, self.attachments = (saved[k] for k in RECORDS)
        self.calls: list[tuple[str, str, str]] = []
        self.tokens: set[str] = set()
        self._faults: list[_Fault] = []
        self._lock = threading.Lock()
        self._persist_lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle -----------------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}{API_PATH}"

    def connection_json(self, login: str = "ingestor", password: str | None = None, **extra) -> str:
        """An ``AIRFLOW_CONN_<ID>`` value of type ``scicat`` for this server (``extra``: the hook's settings)."""
        return json.dumps({"conn_type": "scicat", "host": self.url, "login": login,
                           "password": self.users.get(login, "") if password is None else password,
                           **({"extra": extra} if extra else {})})

    def up(self) -> SciCatStandIn:
        if self._server is None:
            handler = type("Handler", (_Handler,), {"standin": self})
            self._server = ThreadingHTTPServer(("127.0.0.1", self.port), handler)
            self._server.daemon_threads = True
            self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True,
                                            name="scicat-standin")
            self._thread.start()
        return self

    def down(self) -> None:
        """Stop serving: connections to the port are refused (the records are kept for :meth:`up`)."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._thread.join()
            self._server = self._thread = None

    def __enter__(self) -> SciCatStandIn:
        return self.up()

    def __exit__(self, *exc) -> None:
        self.down()

    # -- fault switches ------------------------------------------------------------------------------------
    def fail(self, method: str, route: str, *, status: int = 500, times: int = 1, after_store: bool = False,
             message: str = "stand-in fault") -> None:
        with self._lock:
            self._faults.append(_Fault(method.upper(), route, status, times, after_store, message))

    def expire_tokens(self) -> None:
        with self._lock:
            self.tokens.clear()

    # -- what tests look at --------------------------------------------------------------------------------
    def count(self, method: str, route: str) -> int:
        """How many ``method`` requests hit ``route`` (``Datasets``) or a route ending in it (``attachments``)."""
        return sum(1 for m, r, _ in self.calls if m == method.upper() and _matches(r, route))

    def _take_fault(self, method: str, route: str) -> _Fault | None:
        with self._lock:
            for f in self._faults:
                if f.method == method and _matches(route, f.route) and f.times > 0:
                    f.times -= 1
                    return f
        return None

    # -- the API -------------------------------------------------------------------------------------------
    def handle(self, method: str, route: str, raw_query: str, headers, body: bytes) -> tuple[int, object]:
        with self._lock:
            self.calls.append((method, route, raw_query))
        query = parse_qs(raw_query)
        fault = self._take_fault(method, route)
        if fault and not fault.after_store:
            return fault.status, {"statusCode": fault.status, "message": fault.message}
        status, answer = self._route(method, route, query, headers, body)
        if method == "POST" and status == 201 and self.state_file:
            self._persist()
        if fault:
            return fault.status, {"statusCode": fault.status, "message": fault.message}
        return status, answer

    def _persist(self) -> None:
        """Write the records atomically (a crash mid-write leaves the previous catalogue, not half a file)."""
        with self._persist_lock:
            with self._lock:
                text = json.dumps({k: getattr(self, k) for k in RECORDS})
            tmp = self.state_file.with_suffix(".tmp")
            tmp.write_text(text)
            tmp.replace(self.state_file)

    def _route(self, method, route, query, headers, body) -> tuple[int, object]:
        parts = [unquote_plus(p) for p in route.split("/") if p]
        try:
            data = json.loads(body) if body else None
        except ValueError:
            return 400, {"statusCode": 400, "message": "body is not JSON"}
        if method == "POST" and parts in (["auth", "login"], ["Users", "login"]):
            return self._login(parts[0] == "auth", data)
        auth = headers.get("Authorization", "")
        if not auth.startswith("Bearer ") or auth.removeprefix("Bearer ") not in self.tokens:
            return 401, {"statusCode": 401, "message": "Unauthorized"}
        with self._lock:
            if parts == ["Datasets"] and method == "GET":
                return 200, self._find(query)
            if parts == ["Datasets"] and method == "POST":
                return self._create_dataset(data)
            if len(parts) >= 2 and parts[0] == "Datasets":
                pid = parts[1]
                if pid not in self.datasets:
                    return 404, {"statusCode": 404, "message": f"dataset {pid} not found"}
                if len(parts) == 2 and method == "GET":
                    return 200, self.datasets[pid]
                if len(parts) == 3 and parts[2] in ("origdatablocks", "attachments"):
                    store = self.origdatablocks if parts[2] == "origdatablocks" else self.attachments
                    if method == "GET":
                        return 200, store.get(pid, [])
                    if method == "POST":
                        return self._create_child(store, parts[2], pid, data)
        return 404, {"statusCode": 404, "message": f"Cannot {method} {API_PATH}/{route}"}

    def _login(self, v4: bool, data) -> tuple[int, object]:
        if v4 and not self.v4_login:
            return 404, {"statusCode": 404, "message": "Cannot POST /api/v3/auth/login"}
        user = data.get("username") if isinstance(data, dict) else None
        if user not in self.users or data.get("password") != self.users[user]:
            return 401, {"statusCode": 401, "message": "Unauthorized"}
        token = secrets.token_urlsafe(24)
        with self._lock:
            self.tokens.add(token)
        if v4:
            return 201, {"access_token": token, "id": token, "expires_in": 3600, "userId": user}
        return 200, {"id": token, "ttl": 1209600, "userId": user}

    def _find(self, query: dict) -> list[dict]:
        flt = json.loads(query.get("filter", ["{}"])[0])
        where, skip, limit = flt.get("where") or {}, int(flt.get("skip", 0)), flt.get("limit")
        found = [d for d in self.datasets.values() if all(d.get(k) == v for k, v in where.items())]
        return found[skip:skip + int(limit)] if limit is not None else found[skip:]

    def _create_dataset(self, data) -> tuple[int, object]:
        if not isinstance(data, dict):
            return 400, {"statusCode": 400, "message": "a dataset must be an object"}
        missing = [k for k in RAW_REQUIRED if data.get(k) in (None, "")]
        if missing or data.get("type") != "raw":
            return 400, {"statusCode": 400, "message": [f"{k} should not be empty" for k in missing]
                         or ["type must be raw (the stand-in holds raw datasets only)"]}
        pid = data.get("pid") or PID_PREFIX + str(uuid.uuid4())
        if pid in self.datasets:
            return 409, {"statusCode": 409, "message": f"dataset {pid} already exists"}
        self.datasets[pid] = {**data, "pid": pid}
        return 201, self.datasets[pid]

    def _create_child(self, store: dict, kind: str, pid: str, data) -> tuple[int, object]:
        required = ("dataFileList", "size") if kind == "origdatablocks" else ("thumbnail",)
        missing = [k for k in required if not isinstance(data, dict) or data.get(k) in (None, "", [])]
        if missing:
            return 400, {"statusCode": 400, "message": [f"{k} should not be empty" for k in missing]}
        dataset = self.datasets[pid]
        record = {"ownerGroup": dataset["ownerGroup"], "accessGroups": dataset.get("accessGroups", []), **data,
                  "id": str(uuid.uuid4()), "datasetId": pid}
        store.setdefault(pid, []).append(record)
        return 201, record


def _matches(route: str, wanted: str) -> bool:
    """``wanted`` is the route (``Datasets``) or its last part(s) (``attachments``, ``Datasets/<quoted pid>``)."""
    return route == wanted or route.endswith("/" + wanted)


class _Handler(BaseHTTPRequestHandler):
    standin: SciCatStandIn
    protocol_version = "HTTP/1.0"  # one request per connection: down() really cuts every client off

    def _serve(self) -> None:
        parts = urlsplit(self.path)
        if not parts.path.startswith(API_PATH + "/"):
            self._answer(404, {"statusCode": 404, "message": f"Cannot {self.command} {parts.path}"})
            return
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        status, answer = self.standin.handle(self.command, parts.path.removeprefix(API_PATH + "/"),
                                             parts.query, self.headers, body)
        self._answer(status, answer)

    def _answer(self, status: int, answer: object) -> None:
        data = json.dumps(answer).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_PATCH = do_DELETE = _serve

    def log_message(self, format, *args) -> None:  # quiet: tests read ``calls``
        pass


# -- the local site's SciCat: the stand-in as a process of its own --------------------------------------------------
MARKER = "facility_data.localsite.scicat_standin"
INGEST_USER = "ingestor"
PASSWORD_ENV = "SCICAT_STANDIN_PASSWORD"  # the password travels in the environment, never on the command line


class SciCatServer:
    """The site's SciCat stand-in process (like :class:`facility_data.localsite.s3.S3Server`): one ingest account
    (``ingestor`` with the site's password), records in ``<root>/records.json``, log in ``<root>/scicat.log``."""

    def __init__(self, root: Path, port: int, password: str):
        self.root = root
        self.port = port
        self.password = password
        self.log = root / "scicat.log"
        self.state_file = root / "records.json"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}{API_PATH}"

    def healthy(self) -> bool:
        return http_ok(f"{self.url}/Datasets")  # 401 without a token: serving

    def start(self) -> int:
        if port_in_use(self.port):
            raise SiteError(f"port {self.port} for the SciCat stand-in is taken: set FACILITY_SCICAT_PORT")
        self.root.mkdir(parents=True, exist_ok=True)
        return start_healthy([sys.executable, "-m", MARKER, "--port", str(self.port), "--state", str(self.state_file),
                              "--user", INGEST_USER], marker=MARKER, check=self.healthy,
                             what=f"SciCat stand-in on {self.url}", timeout=60, log=self.log,
                             env={**os.environ, PASSWORD_ENV: self.password})

    def running(self, pid: int | None) -> bool:
        return alive(pid, MARKER) and self.healthy()

    def stop(self, pid: int | None) -> bool:
        return bool(pid) and stop(pid, MARKER)


def main(argv: list[str] | None = None) -> None:
    """Serve until terminated: ``--port``, ``--state`` (the records file), ``--user`` (password from the env)."""
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--state", type=Path, required=True)
    parser.add_argument("--user", default=INGEST_USER)
    args = parser.parse_args(argv)
    password = os.environ.get(PASSWORD_ENV)
    if not password:
        parser.error(f"{PASSWORD_ENV} must hold the password of {args.user!r}")
    standin = SciCatStandIn({args.user: password}, port=args.port, state_file=args.state).up()
    print(f"SciCat stand-in on {standin.url} ({len(standin.datasets)} dataset(s) from {args.state})", flush=True)
    threading.Event().wait()


if __name__ == "__main__":
    main()
