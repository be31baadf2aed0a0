"""RucioHook: a rucio ``Client`` built from an Airflow connection (type ``rucio``), never from a global rucio.cfg.

Connection: host = server URL (``https://rucio.example.org``), login = account, password = the userpass password,
extra ``auth_host`` (defaults to host), ``auth_type`` (``userpass`` default; ``x509`` with extra ``client_cert`` and
``client_key``), ``username`` (userpass identity, defaults to the account), ``vo``, ``ca_cert``, ``timeout``.
Tokens are cached in a directory private to this server+account (the client's default cache is shared by every
client of the machine user, whatever the server).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import Any

from airflow.sdk import BaseHook

from facility_data.masking import mask_url


class RucioHook(BaseHook):
    conn_name_attr = "rucio_conn_id"
    default_conn_name = "rucio_default"
    conn_type = "rucio"
    hook_name = "Rucio"

    def __init__(self, rucio_conn_id: str = default_conn_name, **kwargs) -> None:
        super().__init__(**kwargs)
        self.rucio_conn_id = rucio_conn_id
        self._client = None

    def client_kwargs(self) -> dict[str, Any]:
        """Arguments for ``rucio.client.Client`` (contains the secret: never log it)."""
        conn = self.get_connection(self.rucio_conn_id)
        extra = conn.extra_dejson
        for url in (conn.host, extra.get("auth_host")):  # a token in a URL must not reach the logs
            mask_url(url)
        host = (conn.host or "").rstrip("/")
        if not host.startswith(("http://", "https://")):
            raise ValueError(f"Rucio connection {self.rucio_conn_id!r}: host must be the server URL "
                             f"(http[s]://...), got {conn.host!r}")
        if conn.port and host.count(":") == 1:
            host = f"{host}:{conn.port}"
        if not conn.login:
            raise ValueError(f"Rucio connection {self.rucio_conn_id!r}: login (the Rucio account) is required")
        auth_type = extra.get("auth_type", "userpass")
        if auth_type == "userpass":
            if not conn.password:
                raise ValueError(f"Rucio connection {self.rucio_conn_id!r}: userpass needs a password")
            creds = {"username": extra.get("username", conn.login), "password": conn.password}
        elif auth_type == "x509":
            creds = {"client_cert": extra.get("client_cert"), "client_key": extra.get("client_key")}
        else:
            creds = dict(extra.get("creds", {}))
        return {"rucio_host": host, "auth_host": extra.get("auth_host", host), "account": conn.login,
                "auth_type": auth_type, "creds": creds, "vo": extra.get("vo"), "ca_cert": extra.get("ca_cert"),
                "timeout": int(extra.get("timeout", 120))}

    @staticmethod
    def token_dir(host: str, account: str, vo: str | None, creds: dict) -> Path:
        # the credentials are part of the key: a token obtained with old credentials is never reused
        key = hashlib.sha256(f"{host}|{account}|{vo}|{sorted(creds.items())}".encode()).hexdigest()[:16]
        path = Path(tempfile.gettempdir()) / f"facility-rucio-{os.getuid()}" / key
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
        return path

    def get_conn(self):
        if self._client is None:
            from rucio.client import Client

            kwargs = self.client_kwargs()
            token_dir = str(self.token_dir(kwargs["rucio_host"], kwargs["account"], kwargs["vo"], kwargs["creds"]))

            def _get_auth_tokens(client):
                # rucio-clients 41: (auth_token_file_path, token_exp_epoch_file, token_file, token_path). The
                # default reads auth_token_file_path from whatever rucio.cfg is around; ours is per connection.
                return (None, f"{token_dir}/{client.TOKEN_EXP_PREFIX}{client.account}",
                        f"{token_dir}/{client.TOKEN_PREFIX}{client.account}", token_dir)

            client_cls = type("FacilityRucioClient", (Client,), {"_get_auth_tokens": _get_auth_tokens})
            self._client = client_cls(**kwargs)
        return self._client

    def test_connection(self) -> tuple[bool, str]:
        try:
            who = self.get_conn().whoami()
            return True, f"authenticated as Rucio account {who.get('account')}"
        except Exception as exc:
            return False, f"{type(exc).__name__}: {exc}"
