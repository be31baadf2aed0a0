"""SciCatHook: a logged-in pyscicat ``ScicatClient`` from one Airflow connection (type ``scicat``).

The connection: host = the API base URL (``https://scicat.example.org/api/v3``), login/password = the ingest
(functional) account.

:class:`SciCatClient` *is* a pyscicat :class:`pyscicat.client.ScicatClient` (the client the ALS uses): every call
goes through pyscicat's own methods and models (``datasets_create(RawDataset)``, ``datasets_get_many``,
``datasets_origdatablock_create``, ``datasets_attachment_create``...). It replaces only pyscicat's transport and
login, for what pyscicat 0.4 lacks:

* Token only in the ``Authorization: Bearer`` header. pyscicat also sends it as ``?access_token=`` on every
  request, where server access logs, proxies and requests/urllib3 error messages (which print URLs) would show it.
  The token is also registered with Airflow's secrets masker.
* Login: ``POST {url}/auth/login`` (SciCat v4, answers ``{"access_token": ...}``); if that endpoint does not exist
  (404/405), the older ``POST {url}/Users/login`` (LoopBack, answers ``{"id": ...}``). pyscicat tries only the
  first. A 401 on a later call logs in again once (tokens expire).
* Retries: reads (GET) and logins are retried on 5xx and connection errors, ``max_retries`` times with exponential
  backoff, each retry logged. Creations (POST) are *not* retried blindly - a 500 can come after the server stored
  the record; the caller looks the record up first (see :mod:`facility_data.als.scicat_ingest`), which is what makes
  ingest idempotent.
* Errors: :class:`SciCatAuthError` (login refused), :class:`SciCatHTTPError` (non-2xx, with ``status``),
  :class:`SciCatResponseError` (not JSON / missing fields), :class:`SciCatError` (connection). Messages carry the
  operation, method, path, status and a short excerpt of the server's answer - never the password or the token.
  (pyscicat raises ``ScicatCommError`` without the status, and fails with a JSON error on an HTML error page.)
* A timeout on every request, the login included (pyscicat's login has none).
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any
from urllib.parse import quote, quote_plus

from airflow.sdk import BaseHook
from pyscicat.client import ScicatClient

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


def _route(endpoint: str) -> str:
    """The endpoint without its query (filters can be long; the route says what failed)."""
    return endpoint.split("?", 1)[0].strip("/")


class SciCatClient(ScicatClient):
    """pyscicat's client with a bounded-retry, header-only-token transport. Call :meth:`login` first (the hook
    does)."""

    def __init__(self, base_url: str, username: str, password: str, *, timeout: float = 30.0,
                 max_retries: int = 3, backoff: float = 1.0, session=None):
        import requests

        if not base_url or "://" not in base_url:
            raise ValueError(f"SciCat base URL must be an http(s) URL, got {base_url!r}")
        self.max_retries = max_retries
        self.backoff = backoff
        self.session = session or requests.Session()
        super().__init__(base_url.rstrip("/"), username=username, password=password, timeout_seconds=timeout,
                         auto_login=False)

    @property
    def base_url(self) -> str:
        return self._base_url

    @property
    def username(self) -> str:
        return self._username

    def __repr__(self) -> str:  # never show credentials
        return f"SciCatClient({self.base_url!r}, user={self.username!r}, logged_in={self._token is not None})"

    # -- transport (replaces pyscicat's) ---------------------------------------------------------------------
    def _url(self, endpoint: str) -> str:
        return f"{self._base_url}/{endpoint.lstrip('/')}"

    def _send(self, method: str, endpoint: str, *, retry: bool, auth: bool = True, body: Any = None):
        """One logical request: retried on 5xx/connection errors when ``retry``; returns the Response."""
        import requests

        headers = {"Accept": "application/json"}
        if auth and self._token:
            headers["Authorization"] = f"Bearer {self._token}"
        attempts = self.max_retries + 1 if retry else 1
        route = _route(endpoint)
        for attempt in range(attempts):
            try:
                response = self.session.request(method, self._url(endpoint), headers=headers, json=body,
                                                timeout=self._timeout_seconds)
            except (requests.ConnectionError, requests.Timeout) as exc:
                if attempt + 1 < attempts:
                    log.warning("SciCat %s %s: %s; retry %d/%d", method, route, type(exc).__name__, attempt + 1,
                                attempts - 1)
                    time.sleep(self.backoff * 2**attempt)
                    continue
                raise SciCatError(f"SciCat {method} {self._url(route)} unreachable after {attempt + 1} "
                                  f"attempt(s): {type(exc).__name__}: {exc}") from exc
            if response.status_code >= 500 and attempt + 1 < attempts:
                log.warning("SciCat %s %s answered %d; retry %d/%d", method, route, response.status_code,
                            attempt + 1, attempts - 1)
                time.sleep(self.backoff * 2**attempt)
                continue
            return response
        raise AssertionError("unreachable")

    def _send_to_scicat(self, cmd: str, endpoint: str, data=None):
        """pyscicat's transport hook: JSON body from its pydantic model; GETs retried, POSTs not."""
        body = data.model_dump(mode="json", exclude_none=True) if data is not None else None
        return self._send(cmd.upper(), endpoint, retry=cmd.lower() == "get", body=body)

    def _call_endpoint(self, cmd: str, endpoint: str, data=None, operation: str = "") -> Any:
        """Every pyscicat operation ends here: parsed JSON (``None`` for an empty body), or one of our errors."""
        if self._token is None:
            self.login()
        method, route = cmd.upper(), _route(endpoint)
        response = self._send_to_scicat(cmd, endpoint, data)
        if response.status_code == 401:  # expired token: log in again, once
            log.info("SciCat %s %s answered 401; logging in again", method, route)
            self.login()
            response = self._send_to_scicat(cmd, endpoint, data)
        what = f"SciCat {operation or method} ({method} {route})"
        if not response.ok:
            raise SciCatHTTPError(f"{what} failed with {response.status_code}: {_excerpt(response)}",
                                  status=response.status_code)
        if not response.content:
            return None
        try:
            return response.json()
        except ValueError as exc:
            raise SciCatResponseError(f"{what} answered {response.status_code} with non-JSON content: "
                                      f"{_excerpt(response, 120)!r}") from exc

    # -- auth -------------------------------------------------------------------------------------------------
    def login(self) -> None:
        """Get a token: ``auth/login`` (v4), falling back to ``Users/login`` (v3) when the former is absent."""
        from airflow.sdk.log import mask_secret

        body = {"username": self._username, "password": self._password}
        used = "auth/login"
        response = self._send("POST", used, retry=True, auth=False, body=body)
        if response.status_code in (404, 405):
            used = "Users/login"
            response = self._send("POST", used, retry=True, auth=False, body=body)
        if response.status_code in (400, 401, 403):
            raise SciCatAuthError(f"SciCat login as {self._username!r} at {self._url(used)} was refused "
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
        mask_secret(token)
        self._token = token
        self._headers["Authorization"] = f"Bearer {token}"  # pyscicat's own header dict, kept consistent
        log.info("logged in to SciCat %s as %s (%s)", self.base_url, self.username, used)

    # -- pyscicat operations whose answer it checks with ``assert`` (gone under -O) ---------------------------
    def datasets_create(self, dataset) -> str:
        try:
            pid = super().datasets_create(dataset)
        except (AssertionError, KeyError, TypeError):
            pid = None
        if not isinstance(pid, str) or not pid:
            raise SciCatResponseError("SciCat datasets_create (POST Datasets) answered without a dataset pid")
        return pid

    def datasets_origdatablock_create(self, dataset_id: str, datablockDto) -> dict:  # noqa: N803 (pyscicat's name)
        return self._created(super().datasets_origdatablock_create, dataset_id, datablockDto,
                             what="datasets_origdatablock_create")

    def datasets_attachment_create(self, attachment, datasetType: str = "Datasets") -> dict:  # noqa: N803
        return self._created(super().datasets_attachment_create, attachment, datasetType,
                             what="datasets_attachment_create")

    @staticmethod
    def _created(create, *args, what: str) -> dict:
        try:
            result = create(*args)
        except AssertionError:
            result = None
        if not isinstance(result, dict):
            raise SciCatResponseError(f"SciCat {what} answered without the created record")
        return result

    # pyscicat's older names are class attributes bound to its own functions: point them at ours.
    upload_new_dataset = create_dataset = datasets_create
    upload_dataset_origdatablock = create_dataset_origdatablock = datasets_origdatablock_create
    upload_attachment = create_dataset_attachment = datasets_attachment_create

    def datasets_get_many(self, filter_fields: dict | None = None) -> list[dict]:
        """pyscicat's simple-filter lookup, with the filter percent-encoded: pyscicat 0.4 puts the JSON in the URL
        as is, and a ``+`` (allowed in ALS folder and file names) reaches the server as a space - the lookup then
        misses and a rerun would create the dataset twice."""
        query = quote(json.dumps({"where": filter_fields or {}}), safe="")
        return records(self._call_endpoint(cmd="get", endpoint=f"Datasets?filter={query}",
                                           operation="datasets_get_many"), "datasets_get_many")

    get_datasets = find_datasets = datasets_get_many

    # -- a route pyscicat 0.4 does not wrap -----------------------------------------------------------------
    def datasets_attachments_get(self, pid: str) -> list[dict]:
        """The attachments of a dataset (``GET Datasets/{pid}/attachments``), through pyscicat's endpoint call."""
        result = self._call_endpoint(cmd="get", endpoint=f"Datasets/{quote_plus(pid)}/attachments",
                                     operation="datasets_attachments_get")
        return records(result, "datasets_attachments_get")


def records(result: Any, operation: str) -> list[dict]:
    """A list answer (``None``, an empty body, counts as empty); anything else is a malformed answer."""
    if result is None:
        return []
    if not isinstance(result, list) or not all(isinstance(x, dict) for x in result):
        raise SciCatResponseError(f"SciCat {operation} answered a {type(result).__name__}, expected a list of "
                                  "records")
    return result


class SciCatHook(BaseHook):
    """Builds a logged-in :class:`SciCatClient` (a pyscicat ``ScicatClient``) from a connection of type ``scicat``.

    The connection's extra may set ``max_retries`` (int >= 0), ``backoff`` and ``timeout`` (seconds, >= 0; timeout
    > 0); they override the hook's arguments. Any other extra key is refused (a typo must not pass silently).
    """

    EXTRA_KEYS = {"max_retries": int, "backoff": float, "timeout": float}

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
            settings = {"timeout": self.timeout, "max_retries": self.max_retries, "backoff": self.backoff,
                        **self._extra(conn)}
            client = SciCatClient(self._base_url(conn), conn.login, conn.password, **settings)
            client.login()
            self._client = client
        return self._client

    def _extra(self, conn) -> dict[str, Any]:
        extra = conn.extra_dejson or {}
        unknown = sorted(set(extra) - set(self.EXTRA_KEYS))
        if unknown:
            raise ValueError(f"SciCat connection {self.scicat_conn_id!r}: unknown extra key(s) {unknown}; "
                             f"expected some of {sorted(self.EXTRA_KEYS)}")
        out = {}
        for key, value in extra.items():
            kind = self.EXTRA_KEYS[key]
            ok = isinstance(value, int | float) and not isinstance(value, bool) and value >= 0
            if not ok or (kind is int and not isinstance(value, int)) or (key == "timeout" and value == 0):
                raise ValueError(f"SciCat connection {self.scicat_conn_id!r}: extra {key}={value!r} must be a "
                                 f"{'non-negative integer' if kind is int else 'number of seconds'}"
                                 f"{' > 0' if key == 'timeout' else ' >= 0'}")
            out[key] = kind(value)
        return out

    def test_connection(self) -> tuple[bool, str]:
        try:
            client = self.get_conn()
        except Exception as exc:  # the UI shows the message
            return False, str(exc)
        return True, f"logged in to {client.base_url} as {client.username}"
