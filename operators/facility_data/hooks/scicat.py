"""SciCatHook: a logged-in SciCat API client from one Airflow connection (type ``scicat``).

The connection: host = the API base URL (``https://scicat.example.org/api/v3``), login/password = the ingest
(functional) account. :class:`SciCatClient` is plain ``requests`` and needs no Airflow, so domain code and tests
can use it directly.

Plain ``requests`` rather than pyscicat: we need only seven endpoints, and doing them ourselves gives what
pyscicat 0.4 lacks - retries on 5xx, a token that is never put in URLs or logs, both login shapes, and errors
that name the request that failed.

Behaviour:

* Login: ``POST {url}/auth/login`` (SciCat v4, answers ``{"access_token": ...}``); if that endpoint does not exist
  (404/405), the older ``POST {url}/Users/login`` (LoopBack, answers ``{"id": ...}``). The token goes in the
  ``Authorization: Bearer`` header only. A 401 on a later call logs in again once (tokens expire).
* Retries: reads (GET) and logins are retried on 5xx and connection errors with exponential backoff. Creations
  (POST) are *not* retried blindly - a 500 can come after the server stored the record; the caller looks the
  record up first (see :mod:`facility_data.als.scicat_ingest`), which is what makes ingest idempotent.
* Errors: :class:`SciCatAuthError` (login refused), :class:`SciCatHTTPError` (non-2xx, with ``status``),
  :class:`SciCatResponseError` (not JSON / missing fields). Messages carry method, path, status and a short body
  excerpt - never the password or the token.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any
from urllib.parse import quote

from airflow.sdk import BaseHook

from facility_data.masking import mask_url

log = logging.getLogger(__name__)


class SciCatError(RuntimeError):
    """Any failure talking to SciCat."""


class SciCatAuthError(SciCatError):
    """The login was refused (wrong user/password, or the account lacks rights)."""


class SciCatHTTPError(SciCatError):
    def __init__(self, message: str, *, status: int):
        super().__init__(message)
        self.status = status

    @property
    def is_server_error(self) -> bool:
        return self.status >= 500


class SciCatResponseError(SciCatError):
    """The server answered 2xx with something that is not what the API promises."""


def _excerpt(response, limit: int = 300) -> str:
    text = (response.text or "").strip().replace("\n", " ")
    return text[:limit] + ("..." if len(text) > limit else "")


class SciCatClient:
    """Minimal SciCat API client (datasets, origdatablocks, attachments). Call :meth:`login` first."""

    def __init__(self, base_url: str, username: str, password: str, *, timeout: float = 30.0,
                 max_retries: int = 3, backoff: float = 1.0, session=None):
        import requests

        if not base_url or "://" not in base_url:
            raise ValueError(f"SciCat base URL must be an http(s) URL, got {base_url!r}")
        self.base_url = base_url.rstrip("/")
        self.username = username
        self._password = password
        self._token: str | None = None
        self.timeout = timeout
        self.max_retries = max_retries
        self.backoff = backoff
        self.session = session or requests.Session()

    def __repr__(self) -> str:  # never show credentials
        return f"SciCatClient({self.base_url!r}, user={self.username!r}, logged_in={self._token is not None})"

    # -- transport --------------------------------------------------------------------------------------------
    def _url(self, path: str) -> str:
        return f"{self.base_url}/{path.lstrip('/')}"

    def _send(self, method: str, path: str, *, retry: bool, auth: bool = True, **kwargs):
        """One logical request: retried on 5xx/connection errors when ``retry``; returns the Response."""
        import requests

        headers = {"Accept": "application/json"}
        if auth and self._token:
            headers["Authorization"] = f"Bearer {self._token}"
        attempts = self.max_retries + 1 if retry else 1
        for attempt in range(attempts):
            try:
                response = self.session.request(method, self._url(path), headers=headers, timeout=self.timeout,
                                                **kwargs)
            except (requests.ConnectionError, requests.Timeout) as exc:
                if attempt + 1 < attempts:
                    log.warning("SciCat %s %s: %s; retry %d/%d", method, path, type(exc).__name__, attempt + 1,
                                attempts - 1)
                    time.sleep(self.backoff * 2**attempt)
                    continue
                raise SciCatError(f"SciCat {method} {path}: {type(exc).__name__}: {exc}") from exc
            if response.status_code >= 500 and attempt + 1 < attempts:
                log.warning("SciCat %s %s answered %d; retry %d/%d", method, path, response.status_code,
                            attempt + 1, attempts - 1)
                time.sleep(self.backoff * 2**attempt)
                continue
            return response
        raise AssertionError("unreachable")

    def _call(self, method: str, path: str, *, retry: bool | None = None, allow_404: bool = False, **kwargs):
        """Authenticated call returning parsed JSON (``None`` for an allowed 404)."""
        if self._token is None:
            self.login()
        retry = method.upper() == "GET" if retry is None else retry
        response = self._send(method, path, retry=retry, **kwargs)
        if response.status_code == 401:  # expired token: log in again, once
            log.info("SciCat %s %s answered 401; logging in again", method, path)
            self.login()
            response = self._send(method, path, retry=retry, **kwargs)
        if allow_404 and response.status_code == 404:
            return None
        if not response.ok:
            raise SciCatHTTPError(f"SciCat {method} {path} failed with {response.status_code}: "
                                  f"{_excerpt(response)}", status=response.status_code)
        if not response.content:
            return None
        try:
            return response.json()
        except ValueError as exc:
            raise SciCatResponseError(f"SciCat {method} {path} answered {response.status_code} with non-JSON "
                                      f"content: {_excerpt(response, 120)!r}") from exc

    # -- auth -------------------------------------------------------------------------------------------------
    def login(self) -> None:
        """Get a token: ``auth/login`` (v4), falling back to ``Users/login`` (v3) when the former is absent."""
        body = {"username": self.username, "password": self._password}
        used = "auth/login"
        response = self._send("POST", used, retry=True, auth=False, json=body)
        if response.status_code in (404, 405):
            used = "Users/login"
            response = self._send("POST", used, retry=True, auth=False, json=body)
        if response.status_code in (400, 401, 403):
            raise SciCatAuthError(f"SciCat login as {self.username!r} at {self._url(used)} was refused "
                                  f"({response.status_code})")
        if not response.ok:
            raise SciCatHTTPError(f"SciCat login at {self._url(used)} failed with {response.status_code}: "
                                  f"{_excerpt(response)}", status=response.status_code)
        try:
            data = response.json()
        except ValueError:
            data = None
        token = (data.get("access_token") or data.get("id")) if isinstance(data, dict) else None
        if not isinstance(token, str) or not token:
            keys = sorted(data) if isinstance(data, dict) else type(data).__name__
            raise SciCatResponseError(f"SciCat login at {self._url(used)} answered {response.status_code} "
                                      f"without a token (access_token/id); got {keys}")
        self._token = token
        log.info("logged in to SciCat %s as %s (%s)", self.base_url, self.username, used)

    # -- datasets ---------------------------------------------------------------------------------------------
    def get_dataset(self, pid: str) -> dict | None:
        return self._call("GET", f"Datasets/{quote(pid, safe='')}", allow_404=True)

    def find_datasets(self, where: dict[str, Any], *, limit: int = 10) -> list[dict]:
        result = self._call("GET", "Datasets", params={"filter": json.dumps({"where": where, "limit": limit})})
        if not isinstance(result, list):
            raise SciCatResponseError(f"SciCat GET Datasets answered a {type(result).__name__}, expected a list")
        return result

    def create_dataset(self, dataset: dict[str, Any]) -> str:
        result = self._call("POST", "Datasets", json=dataset)
        pid = result.get("pid") if isinstance(result, dict) else None
        if not isinstance(pid, str) or not pid:
            raise SciCatResponseError("SciCat POST Datasets answered without a dataset pid")
        return pid

    def get_origdatablocks(self, pid: str) -> list[dict]:
        return self._call("GET", f"Datasets/{quote(pid, safe='')}/origdatablocks", allow_404=True) or []

    def create_origdatablock(self, pid: str, block: dict[str, Any]) -> dict:
        return self._call("POST", f"Datasets/{quote(pid, safe='')}/origdatablocks", json=block) or {}

    def get_attachments(self, pid: str) -> list[dict]:
        return self._call("GET", f"Datasets/{quote(pid, safe='')}/attachments", allow_404=True) or []

    def create_attachment(self, pid: str, attachment: dict[str, Any]) -> dict:
        return self._call("POST", f"Datasets/{quote(pid, safe='')}/attachments", json=attachment) or {}


class SciCatHook(BaseHook):
    """Builds a logged-in :class:`SciCatClient` from an Airflow connection of type ``scicat``."""

    conn_name_attr = "scicat_conn_id"
    default_conn_name = "scicat_default"
    conn_type = "scicat"
    hook_name = "SciCat"

    def __init__(self, scicat_conn_id: str = default_conn_name, *, timeout: float = 30.0, max_retries: int = 3,
                 backoff: float = 1.0, **kwargs) -> None:
        super().__init__(**kwargs)
        self.scicat_conn_id = scicat_conn_id
        self.timeout = timeout
        self.max_retries = max_retries
        self.backoff = backoff
        self._client: SciCatClient | None = None

    def _base_url(self, conn) -> str:
        host = (conn.host or "").strip()
        mask_url(host)  # a token in the URL must not reach the logs
        if not host:
            raise ValueError(f"SciCat connection {self.scicat_conn_id!r} needs host = the API URL")
        if "://" in host:
            return host
        port = f":{conn.port}" if conn.port else ""
        path = f"/{conn.schema.strip('/')}" if conn.schema else ""
        return f"https://{host}{port}{path}"

    def get_conn(self) -> SciCatClient:
        if self._client is None:
            conn = self.get_connection(self.scicat_conn_id)
            if not conn.login or not conn.password:
                raise ValueError(f"SciCat connection {self.scicat_conn_id!r} needs login (ingest user) and password")
            client = SciCatClient(self._base_url(conn), conn.login, conn.password, timeout=self.timeout,
                                  max_retries=self.max_retries, backoff=self.backoff)
            client.login()
            self._client = client
        return self._client

    def test_connection(self) -> tuple[bool, str]:
        try:
            client = self.get_conn()
        except Exception as exc:  # the UI shows the message
            return False, str(exc)
        return True, f"logged in to {client.base_url} as {client.username}"
