"""A token in the facility_alerts webhook URL (or any hook's URL) never reaches logs or the alert record."""

from __future__ import annotations

import json
import logging
import socket
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from types import SimpleNamespace

import pytest

from facility_data.masking import url_secrets
from facility_data.notify import FacilityAlertNotifier  # imports (and configures) Airflow before any capture

TOKEN = "xoxbSECRET0123456789abcdef"
WEBHOOK_PATH = f"/services/T0ABC1234/B0DEF5678/{TOKEN}"


class _Answer500(BaseHTTPRequestHandler):
    def do_POST(self):  # noqa: N802 - http.server's name
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.send_response(500)
        self.end_headers()
        self.wfile.write(b"internal error")

    def log_message(self, *args):  # keep the test output about our own logs
        pass


@pytest.fixture
def server_500():
    server = HTTPServer(("127.0.0.1", 0), _Answer500)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    server.server_close()


@pytest.fixture
def closed_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"  # nothing listens there any more: connection refused


def test_url_secrets_cover_path_tokens_query_values_and_user_info():
    secrets = url_secrets(f"https://hooks.example.org{WEBHOOK_PATH}", whole_path=True)
    assert WEBHOOK_PATH in secrets and TOKEN in secrets and "T0ABC1234" in secrets
    assert "services" not in secrets and "hooks.example.org" not in secrets
    api = url_secrets("https://bob:pa55word@scicat.example/api/v3?access_token=abcdef123456&x=")
    assert {"bob", "pa55word", "abcdef123456"} <= set(api) and "api" not in api and "v3" not in api
    assert url_secrets(f"https://rucio.example/{TOKEN}") [-1] == TOKEN  # a long segment is a possible token
    assert url_secrets("https://rucio.example:443") == ["https://rucio.example:443"]
    assert url_secrets(None) == url_secrets("") == []


@pytest.mark.parametrize("endpoint", ["server_500", "closed_port"])
def test_failed_webhook_post_leaks_no_token(endpoint, request, tmp_path, monkeypatch, caplog, capfd):
    from airflow.sdk.log import redact

    base = request.getfixturevalue(endpoint)
    url = f"{base}{WEBHOOK_PATH}"
    monkeypatch.setenv("AIRFLOW_CONN_FACILITY_ALERTS", json.dumps({"conn_type": "http", "host": url}))
    monkeypatch.setenv("FACILITY_SITE", str(tmp_path))
    ti = SimpleNamespace(dag_id="d", task_id="t", map_index=-1, run_id="r", try_number=1)
    # a task whose error message quotes the URL (as a client error would) must not carry it into the alert
    context = {"ti": ti, "exception": RuntimeError(f"POST {url} failed")}
    caplog.set_level(logging.DEBUG)

    FacilityAlertNotifier().notify(context)

    out, err = capfd.readouterr()
    record = (tmp_path / "alerts.jsonl").read_text()
    assert "could not POST" in caplog.text or "answered HTTP 500" in caplog.text
    ours = "\n".join(r.getMessage() for r in caplog.records if r.name.startswith("facility_data"))
    # other libraries' lines (urllib3 logs the path at DEBUG) pass Airflow's log redaction in a task's log
    task_log = redact(caplog.text)
    for where, text in {"our log lines": ours, "task log": task_log, "stdout": out, "stderr": err,
                        "alerts.jsonl": record}.items():
        assert TOKEN not in text and WEBHOOK_PATH not in text, where
    assert json.loads(record)["error"].startswith("RuntimeError: POST ")
    assert TOKEN not in redact(f"urllib3: Max retries exceeded with url: {WEBHOOK_PATH}")


def test_hooks_register_their_urls_with_the_masker(monkeypatch):
    from airflow.sdk.log import redact

    from facility_data.hooks.rucio import RucioHook
    from facility_data.hooks.scicat import SciCatHook

    monkeypatch.setenv("AIRFLOW_CONN_RUCIO_TOKENED", json.dumps({
        "conn_type": "rucio", "host": "https://rucio.example/?token=rucioTOKEN123", "login": "acct",
        "password": "pw-123456"}))
    RucioHook(rucio_conn_id="rucio_tokened").client_kwargs()
    hook = SciCatHook("scicat_tokened")
    monkeypatch.setenv("AIRFLOW_CONN_SCICAT_TOKENED", json.dumps({
        "conn_type": "scicat", "host": "https://scicat.example/api/v3?access_token=scicatTOKEN456"}))
    hook._base_url(hook.get_connection("scicat_tokened"))
    from facility_data.hooks.butler import ButlerHook
    from facility_data.hooks.sfapi import SFAPIHook

    monkeypatch.setenv("AIRFLOW_CONN_SFAPI_TOKENED", json.dumps({
        "conn_type": "sfapi", "host": "https://api.example/v1.2", "login": "client", "password": "-----PEM-----",
        "extra": {"token_url": "https://oidc.example/token?secret=sfapiTOKEN789"}}))
    SFAPIHook(sfapi_conn_id="sfapi_tokened")._client_kwargs()
    monkeypatch.setenv("AIRFLOW_CONN_BUTLER_TOKENED", json.dumps({
        "conn_type": "butler", "host": "https://reader:butlerPASS42@butler.example/repo"}))
    ButlerHook(butler_conn_id="butler_tokened").repo_uri()
    text = redact("GET https://rucio.example/?token=rucioTOKEN123 then ?access_token=scicatTOKEN456, "
                  "token_url secret=sfapiTOKEN789, repo reader:butlerPASS42")
    for secret in ("rucioTOKEN123", "scicatTOKEN456", "sfapiTOKEN789", "butlerPASS42"):
        assert secret not in text, secret
