"""A local stand-in for the NERSC Superfacility API (token endpoint + the routes sfapi_client uses), answering
with the response shapes of SFAPI v1.2. Used by the SFAPI unit tests and the SFAPI DAG test."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

CLIENT_ID = "abcdefghijklm"


def sacct_record(jobid: str, state: str, **extra) -> dict:
    return {"jobid": jobid, "jobname": "recon-af1234", "state": state, "exitcode": "0:0" if state == "COMPLETED"
            else "1:0", "elapsed": "00:03:12", "timelimit": "00:15:00", "submit": "2026-11-21T08:58:30",
            "start": "2026-11-21T09:00:00",
            "end": "2026-11-21T09:03:12", "nodelist": "nid001234", "account": "als", "qos": "realtime",
            "partition": "regular_milan_ss11", "user": "alsdev", **extra}


class FakeSFAPI:
    """Token endpoint + the SFAPI routes sfapi_client uses. ``states[jobid]`` is the sequence of sacct states
    successive polls see (None = not in accounting yet); the last one repeats. ``on_submit(script)``, if given,
    returns that sequence for each submitted job (e.g. after running the script)."""

    def __init__(self, public_key, on_submit=None):
        self.public_key = public_key
        self.on_submit = on_submit
        self.states: dict[str, list] = {}
        self.tokens: list[str] = []
        self.valid_tokens: set[str] = set()
        self.submitted: list[str] = []
        self.cancelled: list[str] = []
        self.squeue: list[dict] = []
        self.next_jobid = 4242001
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _send(self, code, body):
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _authorized(self) -> bool:
                token = self.headers.get("Authorization", "").removeprefix("Bearer ")
                if token not in fake.valid_tokens:
                    self._send(401, {"detail": "Token expired or invalid"})
                    return False
                return True

            def do_POST(self):  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length", 0))).decode()
                form = parse_qs(body)
                if self.path == "/token":
                    from joserfc import jwt

                    try:  # verifies the client assertion's signature with the registered public key
                        claims = jwt.decode(form["client_assertion"][0], fake.public_key).claims
                    except Exception:
                        return self._send(401, {"error": "invalid_client"})
                    if claims["iss"] != CLIENT_ID or form["grant_type"] != ["client_credentials"]:
                        return self._send(401, {"error": "invalid_client"})
                    token = f"tok-{len(fake.tokens) + 1}"
                    fake.tokens.append(token)
                    fake.valid_tokens.add(token)
                    return self._send(200, {"access_token": token, "token_type": "Bearer", "expires_in": 600})
                if not self._authorized():
                    return None
                if self.path == "/api/compute/jobs/perlmutter":
                    jobid = str(fake.next_jobid)
                    fake.next_jobid += 1
                    fake.submitted.append(form["job"][0])
                    fake.states.setdefault(jobid, fake.on_submit(form["job"][0]) if fake.on_submit
                                           else [None, "PENDING", "RUNNING", "COMPLETED"])
                    fake.task_jobs = getattr(fake, "task_jobs", {})
                    fake.task_jobs[f"task-{jobid}"] = jobid
                    return self._send(200, {"task_id": f"task-{jobid}", "status": "OK", "error": None})
                return self._send(404, {"detail": "no route"})

            def do_GET(self):  # noqa: N802
                if not self._authorized():
                    return None
                url = urlparse(self.path)
                query = parse_qs(url.query)
                if url.path == "/api/status/perlmutter":
                    return self._send(200, {"name": "perlmutter", "full_name": "Perlmutter", "status": "active",
                                            "system_type": "compute", "notes": [], "description": "System"})
                if url.path == "/api/account/":
                    return self._send(200, {"uid": 1001, "name": "alsdev"})
                if url.path.startswith("/api/tasks/"):
                    task_id = url.path.rsplit("/", 1)[1]
                    result = json.dumps({"status": "ok", "jobid": fake.task_jobs[task_id], "error": None})
                    return self._send(200, {"id": task_id, "status": "completed", "result": result})
                if url.path == "/api/compute/jobs/perlmutter":
                    kwargs = dict(kv.split("=", 1) for kv in query.get("kwargs", []))
                    if query.get("sacct") == ["true"]:
                        jobid = kwargs["jobid"]
                        seq = fake.states.get(jobid, [None])
                        state = seq.pop(0) if len(seq) > 1 else seq[0]
                        output = [] if state is None else [sacct_record(jobid, state)]
                        return self._send(200, {"status": "OK", "output": output, "error": None})
                    return self._send(200, {"status": "OK", "output": fake.squeue, "error": None})
                return self._send(404, {"detail": "no route"})

            def do_DELETE(self):  # noqa: N802
                if not self._authorized():
                    return None
                jobid = self.path.rsplit("/", 1)[1]
                fake.cancelled.append(jobid)
                fake.states[jobid] = ["CANCELLED by 1001"]
                return self._send(200, {"status": "OK", "output": [], "error": None})

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()

    def expire_tokens(self):
        self.valid_tokens.clear()

    def connection_json(self, private_jwk: dict) -> str:
        """An Airflow connection (AIRFLOW_CONN_* JSON) pointing sfapi_client at this server."""
        return json.dumps({"conn_type": "sfapi", "login": CLIENT_ID, "password": json.dumps(private_jwk),
                           "host": f"{self.url}/api", "extra": {"token_url": f"{self.url}/token"}})
