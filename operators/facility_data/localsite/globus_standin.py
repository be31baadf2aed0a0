"""A local stand-in for Globus Auth (client credentials) and the Globus Transfer API v0.10, moving real files.

Why here and not under tests/: the facility profile (issue 11) and the local site must be able to run the
production-shaped configuration (Globus collections) on one machine, so the stand-in is part of the installed
package; tests start it in-process, a site can run it as ``python -m facility_data.localsite.globus_standin``.

The real ``globus_sdk`` talks to it unchanged, pointed at it by the SDK's own configuration:
``GLOBUS_SDK_SERVICE_URL_TRANSFER`` and ``GLOBUS_SDK_SERVICE_URL_AUTH`` (see :meth:`GlobusTransferStandin.env`).

What it does (the routes our code and globus-sdk use):
* ``POST /v2/oauth2/token`` (client credentials, HTTP basic auth): a bearer token for transfer.api.globus.org;
  every Transfer route requires one of the tokens it issued (401 ``AuthenticationFailed`` otherwise).
* ``GET /v0.10/submission_id``; ``POST /v0.10/transfer`` and ``/v0.10/delete`` (a repeated submission_id returns the
  same task, code ``Duplicate``); ``GET /v0.10/task/<id>``, ``.../event_list``, ``.../successful_transfers``;
  ``POST /v0.10/task/<id>/cancel``; ``GET /v0.10/task_list`` (``filter=label:..,../status:..``, newest first);
  ``GET /v0.10/operation/endpoint/<id>/ls`` and ``/stat``.
* Collections map a UUID to a local directory playing the collection's ``/``. A task really copies (or deletes)
  in a thread: ACTIVE, then SUCCEEDED or FAILED. ``sync_level=checksum`` skips files already identical;
  ``verify_checksum`` (or an ``external_checksum``) recomputes source and destination checksums with the item's
  ``checksum_algorithm`` (MD5 by default, as Globus) and fails the task on a mismatch; an unsupported algorithm is
  refused at submission (400). ``deadline`` ends an unfinished task FAILED (``DEADLINE``). A missing source makes
  the task stay ACTIVE with ``nice_status=FILE_NOT_FOUND`` (Globus retries such faults until the deadline).
* Faults on request (:meth:`fail_next`, :meth:`inactive_next`, :meth:`http_error`, :meth:`hold`), in-process or
  through ``POST /_standin/fault`` for a stand-in running as its own process.

What it does NOT model: permissions, sharing and ACLs, identities and consents (any client id/secret pair given
to the constructor is the only valid one; scopes are not checked), collection activation, HA/retries inside the
service, rate limits, pause rules, notifications (email), encryption, performance (files are copied serially),
checksums computed by remote storage (it hashes local files), the real fault taxonomy (only the faults above),
``filter_rules``, ``preserve_timestamp``, ``skip_source_errors`` and other submission options it ignores.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import secrets
import shutil
import threading
import uuid
import zlib
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path, PurePosixPath
from urllib.parse import parse_qs, urlparse

RESOURCE_SERVER = "transfer.api.globus.org"


def _crc32(data_iter) -> str:
    value = 0
    for chunk in data_iter:
        value = zlib.crc32(chunk, value)
    return f"{value:08x}"


def _adler32(data_iter) -> str:
    value = 1
    for chunk in data_iter:
        value = zlib.adler32(chunk, value)
    return f"{value:08x}"


_HASHLIB = {"MD5": "md5", "SHA1": "sha1", "SHA256": "sha256", "SHA512": "sha512"}
ALGORITHMS = frozenset(_HASHLIB) | {"ADLER32", "CRC32"}


def file_checksum(path: Path, algorithm: str) -> str:
    """Hex checksum of a local file with a Globus algorithm name (MD5, SHA1, SHA256, SHA512, ADLER32, CRC32)."""

    def chunks():
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                yield chunk

    algorithm = algorithm.upper()
    if algorithm in _HASHLIB:
        h = hashlib.new(_HASHLIB[algorithm])
        for chunk in chunks():
            h.update(chunk)
        return h.hexdigest()
    if algorithm == "CRC32":
        return _crc32(chunks())
    if algorithm == "ADLER32":
        return _adler32(chunks())
    raise ValueError(f"unsupported checksum algorithm {algorithm!r}")


def _stamp(t: datetime | None = None) -> str:
    return (t or datetime.now(UTC)).strftime("%Y-%m-%d %H:%M:%S+00:00")


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


class Fault(Exception):
    """A task-level failure: ends the task FAILED with this fatal error (or INACTIVE when ``inactive``)."""

    def __init__(self, code: str, description: str, details: str = "", *, inactive: bool = False):
        super().__init__(description)
        self.code, self.description, self.details, self.inactive = code, description, details, inactive


@dataclass
class Task:
    doc: dict
    items: list[dict]
    events: list[dict] = field(default_factory=list)
    successful: list[dict] = field(default_factory=list)
    cancelled: threading.Event = field(default_factory=threading.Event)
    done: threading.Event = field(default_factory=threading.Event)

    def event(self, code: str, description: str, details: str = "", *, is_error: bool = False) -> None:
        self.events.insert(0, {"DATA_TYPE": "event", "code": code, "description": description, "details": details,
                               "is_error": is_error, "time": _stamp()})


class GlobusTransferStandin:
    """The server; ``collections`` maps collection UUID -> local directory (the collection's ``/``)."""

    def __init__(self, collections: dict[str, str | Path], *, client_id: str = "standin-client",
                 client_secret: str = "standin-secret", host: str = "127.0.0.1", port: int | None = None):
        from facility_data.localsite.procs import free_port

        self.collections = {str(k): Path(v).resolve() for k, v in collections.items()}
        self.client_id, self.client_secret = client_id, client_secret
        self.host, self.port = host, port or free_port()
        self.tokens: set[str] = set()
        self.tasks: dict[str, Task] = {}
        self.submissions: dict[str, str] = {}  # submission_id -> task_id
        self.requests: list[tuple[str, str]] = []  # (method, path) of every request, for tests
        self.lock = threading.Lock()
        self._faults: list[dict] = []  # task faults for the next submissions, in order
        self._http_errors: list[dict] = []  # {"prefix", "status", "count"}
        self._hold = threading.Event()
        self._hold.set()  # set = tasks run; cleared by hold()
        self._server: ThreadingHTTPServer | None = None

    # ---- lifecycle ------------------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/"

    def env(self) -> dict[str, str]:
        """The environment that points globus-sdk (Auth and Transfer) at this stand-in."""
        return {"GLOBUS_SDK_SERVICE_URL_TRANSFER": self.url, "GLOBUS_SDK_SERVICE_URL_AUTH": self.url}

    def start(self) -> GlobusTransferStandin:
        standin = self

        class Handler(_Handler):
            server_standin = standin

        self._server = ThreadingHTTPServer((self.host, self.port), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, name="globus-standin", daemon=True).start()
        return self

    def stop(self) -> None:
        self._hold.set()
        for task in list(self.tasks.values()):
            task.cancelled.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> GlobusTransferStandin:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ---- faults on request ----------------------------------------------------------------------------------
    def fail_next(self, code: str = "PERMISSION_DENIED", description: str = "permission denied",
                  details: str = "") -> None:
        """The next submitted task ends FAILED with this fatal error (and an error event)."""
        self._faults.append({"kind": "fail", "code": code, "description": description, "details": details})

    def inactive_next(self, details: str = "consent required") -> None:
        """The next submitted task goes INACTIVE (credentials or consent expired) and stays so."""
        self._faults.append({"kind": "inactive", "code": "CONSENT_REQUIRED", "description": "task is inactive",
                             "details": details})

    def http_error(self, prefix: str, status: int = 503, count: int = 1) -> None:
        """The next ``count`` requests whose path starts with ``prefix`` get an HTTP ``status`` error."""
        self._http_errors.append({"prefix": prefix, "status": status, "count": count})

    def hold(self) -> None:
        """Submitted tasks stay ACTIVE (nothing copied) until :meth:`release`."""
        self._hold.clear()

    def release(self) -> None:
        self._hold.set()

    def control(self, body: dict) -> dict:
        kind = body.get("kind")
        args = {k: v for k, v in body.items() if k != "kind"}
        actions = {"fail": self.fail_next, "inactive": self.inactive_next, "http_error": self.http_error,
                   "hold": self.hold, "release": self.release}
        if kind not in actions:
            raise ApiError(400, "BadRequest", f"unknown fault kind {kind!r}; known: {sorted(actions)}")
        actions[kind](**args)
        return {"DATA_TYPE": "result", "code": "Accepted", "message": f"fault {kind} armed"}

    def wait_task(self, task_id: str, timeout: float = 30) -> dict:
        """Block until the task has reached a terminal state (tests); returns its document."""
        if not self.tasks[task_id].done.wait(timeout):
            raise TimeoutError(f"stand-in task {task_id} still {self.tasks[task_id].doc['status']}")
        return dict(self.tasks[task_id].doc)

    # ---- paths ----------------------------------------------------------------------------------------------
    def local_path(self, endpoint_id: str, path: str) -> Path:
        """The local file for ``path`` on a collection; ``..`` and links leading outside the collection refused."""
        root = self.collections.get(str(endpoint_id))
        if root is None:
            raise ApiError(404, "EndpointNotFound", f"No such endpoint or collection '{endpoint_id}'")
        pure = PurePosixPath("/") / path
        if ".." in pure.parts:
            raise ApiError(400, "ClientError.BadRequest", f"Invalid path '{path}'")
        local = root.joinpath(*pure.parts[1:])
        parent = local.parent.resolve()
        if parent != root and root not in parent.parents:
            raise ApiError(403, "ClientError.PermissionDenied", f"Path '{path}' is outside the collection")
        return local

    def _entry(self, local: Path) -> dict:
        st = local.lstat()
        doc = {"DATA_TYPE": "file", "name": local.name, "type": "file", "link_target": None, "size": st.st_size,
               "last_modified": _stamp(datetime.fromtimestamp(st.st_mtime, UTC)),
               "permissions": oct(st.st_mode & 0o777)[2:].rjust(4, "0"), "user": None, "group": None}
        if local.is_symlink():
            doc["link_target"] = os.readlink(local)
            doc["type"] = "dir" if local.is_dir() else "file" if local.exists() else "invalid_symlink"
        elif local.is_dir():
            doc["type"] = "dir"
        return doc

    def ls(self, endpoint_id: str, path: str) -> dict:
        local = self.local_path(endpoint_id, path or "/~/")
        if not local.is_dir():
            kind = "not a directory" if local.exists() else "not found"
            raise ApiError(404 if not local.exists() else 400, "ClientError.NotFound",
                           f"Directory '{path}' {kind} on endpoint '{endpoint_id}'")
        data = [self._entry(child) for child in sorted(local.iterdir())]
        return {"DATA_TYPE": "file_list", "DATA": data, "path": path, "endpoint": endpoint_id, "length": len(data),
                "total": len(data), "rename_supported": True, "symlink_supported": False}

    def stat(self, endpoint_id: str, path: str) -> dict:
        local = self.local_path(endpoint_id, path)
        if not local.exists() and not local.is_symlink():
            raise ApiError(404, "ClientError.NotFound", f"Path '{path}' not found on endpoint '{endpoint_id}'")
        return self._entry(local)

    # ---- submissions ----------------------------------------------------------------------------------------
    def _new_task(self, body: dict, kind: str, items: list[dict]) -> dict:
        submission_id = body.get("submission_id")
        if not submission_id:
            raise ApiError(400, "ClientError.BadRequest", "submission_id is required")
        with self.lock:
            if submission_id in self.submissions:
                task_id = self.submissions[submission_id]
                return {"DATA_TYPE": f"{kind.lower()}_result", "task_id": task_id, "submission_id": submission_id,
                        "code": "Duplicate", "message": "A transfer with identical submission_id already exists",
                        "request_id": secrets.token_hex(4), "resource": f"/{kind.lower()}"}
            task_id = str(uuid.uuid4())
            doc = {"DATA_TYPE": "task", "task_id": task_id, "type": kind, "status": "ACTIVE", "nice_status": "Queued",
                   "nice_status_details": None, "label": body.get("label"), "request_time": _stamp(),
                   "completion_time": None, "deadline": body.get("deadline"), "fatal_error": None,
                   "files": 0, "files_transferred": 0, "files_skipped": 0, "directories": 0,
                   "bytes_transferred": 0, "bytes_checksummed": 0, "effective_bytes_per_second": 0,
                   "subtasks_failed": 0, "is_ok": True, "faults": 0,
                   "verify_checksum": bool(body.get("verify_checksum", False)), "sync_level": body.get("sync_level"),
                   "source_endpoint_id": body.get("source_endpoint") or body.get("endpoint"),
                   "destination_endpoint_id": body.get("destination_endpoint")}
            task = Task(doc=doc, items=items)
            self.tasks[task_id] = task
            self.submissions[submission_id] = task_id
            fault = self._faults.pop(0) if self._faults else None
        task.event("SUBMITTED", f"{kind.lower()} task submitted")
        threading.Thread(target=self._run, args=(task, body, fault), name=f"standin-{task_id[:8]}",
                         daemon=True).start()
        return {"DATA_TYPE": f"{kind.lower()}_result", "task_id": task_id, "submission_id": submission_id,
                "code": "Accepted", "message": f"The {kind.lower()} has been accepted and a task has been created "
                                               "and queued for execution", "request_id": secrets.token_hex(4),
                "resource": f"/{kind.lower()}"}

    def submit_transfer(self, body: dict) -> dict:
        for ep in (body.get("source_endpoint"), body.get("destination_endpoint")):
            if str(ep) not in self.collections:
                raise ApiError(404, "EndpointNotFound", f"No such endpoint or collection '{ep}'")
        items = [i for i in body.get("DATA", []) if i.get("DATA_TYPE") == "transfer_item"]
        if not items:
            raise ApiError(400, "ClientError.BadRequest", "a transfer needs at least one transfer_item")
        for item in items:
            algo = item.get("checksum_algorithm")
            if algo is not None and str(algo).upper() not in ALGORITHMS:
                raise ApiError(400, "ClientError.BadRequest", f"Unsupported checksum_algorithm '{algo}'")
        return self._new_task(body, "TRANSFER", items)

    def submit_delete(self, body: dict) -> dict:
        if str(body.get("endpoint")) not in self.collections:
            raise ApiError(404, "EndpointNotFound", f"No such endpoint or collection '{body.get('endpoint')}'")
        items = [i for i in body.get("DATA", []) if i.get("DATA_TYPE") == "delete_item"]
        if not items:
            raise ApiError(400, "ClientError.BadRequest", "a delete needs at least one delete_item")
        return self._new_task(body, "DELETE", items)

    # ---- task execution -------------------------------------------------------------------------------------
    def _check_alive(self, task: Task, deadline: datetime | None) -> None:
        if task.cancelled.is_set():
            raise Fault("CANCELED", "The task was canceled by the user")
        if deadline is not None and datetime.now(UTC) >= deadline:
            raise Fault("DEADLINE", "The task deadline passed before the task completed")

    def _wait_runnable(self, task: Task, deadline: datetime | None) -> None:
        while not self._hold.wait(0.05):  # poll: the deadline or a cancel must end a held task too
            self._check_alive(task, deadline)
        self._check_alive(task, deadline)

    def _run(self, task: Task, body: dict, fault: dict | None) -> None:
        doc = task.doc
        deadline = _parse_deadline(body.get("deadline"))
        started = datetime.now(UTC)
        try:
            if fault and fault["kind"] == "inactive":
                raise Fault(fault["code"], fault["description"], fault["details"], inactive=True)
            self._wait_runnable(task, deadline)
            if fault:
                raise Fault(fault["code"], fault["description"], fault["details"])
            doc["nice_status"] = None
            for item in task.items:
                if doc["type"] == "TRANSFER":
                    self._transfer_item(task, body, item, deadline)
                else:
                    self._delete_item(task, body, item, deadline)
            seconds = max((datetime.now(UTC) - started).total_seconds(), 1e-3)
            doc.update(status="SUCCEEDED", nice_status=None, completion_time=_stamp(),
                       effective_bytes_per_second=int(doc["bytes_transferred"] / seconds))
            task.event("SUCCEEDED", "task succeeded")
        except Fault as f:
            if f.inactive:
                doc.update(status="INACTIVE", nice_status=f.code, nice_status_details=f.details)
                task.event(f.code, f.description, f.details, is_error=True)
            else:
                doc.update(status="FAILED", nice_status=None, completion_time=_stamp(), is_ok=False,
                           fatal_error={"code": f.code, "description": f.description})
                task.event(f.code, f.description, f.details, is_error=True)
        except Exception as exc:  # a bug or an OS error: the task fails with it, like a service-side error
            doc.update(status="FAILED", completion_time=_stamp(), is_ok=False,
                       fatal_error={"code": "ENDPOINT_ERROR", "description": f"{type(exc).__name__}: {exc}"})
            task.event("ENDPOINT_ERROR", "error on the endpoint", f"{type(exc).__name__}: {exc}", is_error=True)
        finally:
            task.done.set()

    def _missing(self, task: Task, path: str, deadline: datetime | None) -> None:
        """A missing source: like Globus, the task stays ACTIVE with the fault until the deadline or a cancel."""
        task.doc.update(nice_status="FILE_NOT_FOUND", nice_status_details=f"No such file or directory: {path}",
                        faults=task.doc["faults"] + 1, is_ok=False)
        task.event("FILE_NOT_FOUND", "Error (file not found)", f"No such file or directory: {path}", is_error=True)
        while not task.cancelled.wait(0.05):
            self._check_alive(task, deadline)
        self._check_alive(task, deadline)

    def _transfer_item(self, task: Task, body: dict, item: dict, deadline: datetime | None) -> None:
        doc = task.doc
        src_root = self.local_path(doc["source_endpoint_id"], item["source_path"])
        dst_root = self.local_path(doc["destination_endpoint_id"], item["destination_path"])
        if not src_root.exists() or src_root.is_symlink():
            self._missing(task, item["source_path"], deadline)
        if src_root.is_dir() and not item.get("recursive"):
            raise Fault("IS_A_DIRECTORY", "source is a directory; recursive transfer required", item["source_path"])
        if src_root.is_dir():
            pairs = [(p, dst_root / p.relative_to(src_root)) for p in sorted(src_root.rglob("*"))
                     if p.is_file() and not p.is_symlink()]
            doc["directories"] += 1 + sum(1 for p in src_root.rglob("*") if p.is_dir())
            dst_root.mkdir(parents=True, exist_ok=True)
        else:
            pairs = [(src_root, dst_root)]
        algo = str(item.get("checksum_algorithm") or "MD5").upper()
        external = item.get("external_checksum")
        verify = doc["verify_checksum"] or external is not None
        doc["files"] += len(pairs)
        for src, dst in pairs:
            self._check_alive(task, deadline)
            if external is not None and file_checksum(src, algo) != str(external).lower():
                raise Fault("VERIFY_CHECKSUM", "source checksum does not match the external checksum",
                            f"{src.name}: {algo} of the source differs from external_checksum")
            if body.get("sync_level") in ("checksum", 3) and dst.is_file() and \
                    dst.stat().st_size == src.stat().st_size and file_checksum(dst, algo) == file_checksum(src, algo):
                doc["files_skipped"] += 1
                continue
            dst.parent.mkdir(parents=True, exist_ok=True)
            tmp = dst.with_name(f".{dst.name}.standin-{doc['task_id'][:8]}")
            shutil.copyfile(src, tmp)
            os.replace(tmp, dst)
            if verify:
                if file_checksum(src, algo) != file_checksum(dst, algo):
                    raise Fault("VERIFY_CHECKSUM", "checksum verification failed", f"{dst.name}: {algo} differs")
                doc["bytes_checksummed"] += dst.stat().st_size
            doc["files_transferred"] += 1
            doc["bytes_transferred"] += dst.stat().st_size
            src_rel = PurePosixPath(item["source_path"]) / src.relative_to(src_root) if src != src_root \
                else PurePosixPath(item["source_path"])
            dst_rel = PurePosixPath(item["destination_path"]) / dst.relative_to(dst_root) if dst != dst_root \
                else PurePosixPath(item["destination_path"])
            task.successful.append({"DATA_TYPE": "successful_transfer", "source_path": str(src_rel),
                                    "destination_path": str(dst_rel)})

    def _delete_item(self, task: Task, body: dict, item: dict, deadline: datetime | None) -> None:
        self._check_alive(task, deadline)
        local = self.local_path(task.doc["source_endpoint_id"], item["path"])
        if local.is_symlink() or local.is_file():
            local.unlink()
        elif local.is_dir():
            if not body.get("recursive"):
                raise Fault("IS_A_DIRECTORY", "path is a directory; recursive delete required", item["path"])
            shutil.rmtree(local)
        elif not body.get("ignore_missing"):
            self._missing(task, item["path"], deadline)
        task.doc["files"] += 1

    def cancel(self, task_id: str) -> dict:
        task = self._task(task_id)
        if task.doc["status"] in ("SUCCEEDED", "FAILED"):
            return {"DATA_TYPE": "result", "code": "TaskComplete", "message": "Can't cancel a task that is complete",
                    "resource": f"/task/{task_id}/cancel", "request_id": secrets.token_hex(4)}
        task.cancelled.set()
        if task.doc["status"] == "INACTIVE":  # nothing runs for an inactive task: end it here
            task.doc.update(status="FAILED", completion_time=_stamp(), is_ok=False,
                            fatal_error={"code": "CANCELED", "description": "The task was canceled by the user"})
            task.event("CANCELED", "The task was canceled by the user", is_error=True)
        task.done.wait(10)
        return {"DATA_TYPE": "result", "code": "Canceled", "message": "The task has been cancelled successfully.",
                "resource": f"/task/{task_id}/cancel", "request_id": secrets.token_hex(4)}

    def _task(self, task_id: str) -> Task:
        task = self.tasks.get(task_id)
        if task is None:
            raise ApiError(404, "TaskNotFound", f"Task ID '{task_id}' not found")
        return task

    def task_list(self, query: dict) -> dict:
        filters = {}
        for part in (query.get("filter") or [""])[0].split("/"):
            key, _, values = part.partition(":")
            if key:
                filters[key] = set(values.split(","))
        docs = [dict(t.doc) for t in self.tasks.values()
                if all(str(t.doc.get(k)) in vs for k, vs in filters.items())]
        docs.sort(key=lambda d: d["request_time"], reverse="DESC" in (query.get("orderby") or ["DESC"])[0])
        offset, limit = int((query.get("offset") or [0])[0]), int((query.get("limit") or [10])[0])
        page = docs[offset:offset + limit]
        return {"DATA_TYPE": "task_list", "DATA": page, "length": len(page), "limit": limit, "offset": offset,
                "total": len(docs)}

    def issue_token(self, headers, form: dict) -> dict:
        expected = base64.b64encode(f"{self.client_id}:{self.client_secret}".encode()).decode()
        if headers.get("Authorization", "") != f"Basic {expected}":
            raise ApiError(401, "invalid_client", "client authentication failed")
        if (form.get("grant_type") or [""])[0] != "client_credentials":
            raise ApiError(400, "unsupported_grant_type", "only client_credentials is served here")
        token = secrets.token_urlsafe(24)
        self.tokens.add(token)
        return {"access_token": token, "scope": (form.get("scope") or [""])[0], "expires_in": 172800,
                "token_type": "Bearer", "resource_server": RESOURCE_SERVER, "other_tokens": []}


def _parse_deadline(value) -> datetime | None:
    if not value:
        return None
    text = str(value).replace("Z", "+00:00")
    parsed = datetime.fromisoformat(text)
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


class _Handler(BaseHTTPRequestHandler):
    server_standin: GlobusTransferStandin
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:  # quiet: tests read the stand-in's state, not its access log
        pass

    def _send(self, status: int, body: dict) -> None:
        raw = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    def _body(self) -> bytes:
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def _dispatch(self, method: str) -> None:
        s = self.server_standin
        url = urlparse(self.path)
        path, query = url.path, parse_qs(url.query)
        body = self._body()
        s.requests.append((method, path))
        try:
            for err in s._http_errors:
                if err["count"] > 0 and path.startswith(err["prefix"]):
                    err["count"] -= 1
                    raise ApiError(err["status"], "ServiceUnavailable", "stand-in fault on request")
            if path == "/v2/oauth2/token" and method == "POST":
                return self._send(200, s.issue_token(self.headers, parse_qs(body.decode())))
            if path == "/_standin/fault" and method == "POST":
                return self._send(200, s.control(json.loads(body or b"{}")))
            if not path.startswith("/v0.10/"):
                raise ApiError(404, "ClientError.NotFound", f"no route {path}")
            auth = self.headers.get("Authorization", "")
            if not auth.startswith("Bearer ") or auth.removeprefix("Bearer ") not in s.tokens:
                raise ApiError(401, "AuthenticationFailed", "No valid bearer token given")
            self._send(*self._transfer(method, path.removeprefix("/v0.10"), query, body))
        except ApiError as e:
            self._send(e.status, {"code": e.code, "message": e.message, "request_id": secrets.token_hex(4),
                                  "resource": path, "error": e.code, "error_description": e.message})

    def _transfer(self, method: str, route: str, query: dict, body: bytes) -> tuple[int, dict]:
        s = self.server_standin
        parts = route.strip("/").split("/")
        q = {k: v[0] for k, v in query.items()}
        if method == "GET" and route == "/submission_id":
            return 200, {"DATA_TYPE": "submission_id", "value": str(uuid.uuid4())}
        if method == "POST" and route == "/transfer":
            return 202, s.submit_transfer(json.loads(body))
        if method == "POST" and route == "/delete":
            return 202, s.submit_delete(json.loads(body))
        if method == "GET" and route == "/task_list":
            return 200, s.task_list(query)
        if parts[0] == "task" and len(parts) >= 2:
            task = s._task(parts[1])
            if method == "GET" and len(parts) == 2:
                return 200, dict(task.doc)
            if method == "GET" and parts[2:] == ["event_list"]:
                offset, limit = int(q.get("offset", 0)), int(q.get("limit", 10))
                page = task.events[offset:offset + limit]
                return 200, {"DATA_TYPE": "event_list", "DATA": page, "length": len(page), "limit": limit,
                             "offset": offset, "total": len(task.events)}
            if method == "GET" and parts[2:] == ["successful_transfers"]:
                return 200, {"DATA_TYPE": "successful_transfers", "DATA": list(task.successful), "marker": 0,
                             "next_marker": None}
            if method == "POST" and parts[2:] == ["cancel"]:
                return 200, s.cancel(parts[1])
        if method == "GET" and len(parts) == 4 and parts[:2] == ["operation", "endpoint"]:
            if parts[3] == "ls":
                return 200, s.ls(parts[2], q.get("path", "/"))
            if parts[3] == "stat":
                return 200, s.stat(parts[2], q.get("path", ""))
        raise ApiError(404, "ClientError.NotFound", f"no route {method} /v0.10{route}")


def main(argv: list[str] | None = None) -> None:
    """Run the stand-in until interrupted: ``--collection UUID=DIR`` (repeatable), ``--port``, credentials."""
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--collection", action="append", default=[], metavar="UUID=DIR", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--client-id", default=os.environ.get("GLOBUS_STANDIN_CLIENT_ID", "standin-client"))
    parser.add_argument("--client-secret", default=os.environ.get("GLOBUS_STANDIN_CLIENT_SECRET", "standin-secret"))
    args = parser.parse_args(argv)
    collections = dict(c.split("=", 1) for c in args.collection)
    standin = GlobusTransferStandin(collections, client_id=args.client_id, client_secret=args.client_secret,
                                    port=args.port).start()
    print(f"Globus Transfer stand-in on {standin.url} for {len(collections)} collection(s)", flush=True)
    threading.Event().wait()


if __name__ == "__main__":
    main()
