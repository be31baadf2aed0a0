"""GlobusHook: Globus Transfer and Globus Compute clients from one Airflow connection (type ``globus``).

The connection holds a confidential client: login = client id, password = client secret, extra
``compute_endpoint`` = the default Globus Compute endpoint UUID (or ``local`` to run Compute functions in a local
process pool, the embedded default). Credentials are read when a client is asked for, never at import time, and
tokens come from ``ClientCredentialsAuthorizer`` (refreshed automatically).

The service URLs are globus-sdk's own configuration: ``GLOBUS_SDK_SERVICE_URL_AUTH`` and
``GLOBUS_SDK_SERVICE_URL_TRANSFER`` point the clients at the local stand-in
(:mod:`facility_data.localsite.globus_standin`); unset, they reach the hosted Globus services.
"""

from __future__ import annotations

from concurrent.futures import Executor
from typing import Any

from airflow.sdk import BaseHook

LOCAL_COMPUTE = "local"


class GlobusHook(BaseHook):
    conn_name_attr = "globus_conn_id"
    default_conn_name = "globus_default"
    conn_type = "globus"
    hook_name = "Globus (confidential client)"

    def __init__(self, globus_conn_id: str = default_conn_name, *, retry_config: Any = None, **kwargs) -> None:
        super().__init__(**kwargs)
        self.globus_conn_id = globus_conn_id
        self.retry_config = retry_config  # globus_sdk.RetryConfig; tests shorten the backoff

    # -- credentials ----------------------------------------------------------------------------------------
    def _connection(self):
        conn = self.get_connection(self.globus_conn_id)
        if not conn.login or not conn.password:
            raise ValueError(f"Globus connection {self.globus_conn_id!r} needs login (client id) and password "
                             "(client secret)")
        return conn

    @property
    def extras(self) -> dict:
        return self.get_connection(self.globus_conn_id).extra_dejson

    def get_auth_client(self):
        import globus_sdk

        conn = self._connection()
        return globus_sdk.ConfidentialAppAuthClient(conn.login, conn.password)

    def get_authorizer(self, scopes):
        import globus_sdk

        return globus_sdk.ClientCredentialsAuthorizer(self.get_auth_client(), scopes)

    # -- Transfer -------------------------------------------------------------------------------------------
    def get_transfer_client(self):
        import globus_sdk
        from globus_sdk.scopes import TransferScopes

        from facility_data.retry import globus_retry_config

        # transient statuses, budget and logged backoff come from the one classification (facility_data/retry.py)
        return globus_sdk.TransferClient(authorizer=self.get_authorizer(TransferScopes.all),
                                         retry_config=self.retry_config or globus_retry_config())

    def get_transfer_backend(self, *, poll_interval: float = 10.0):
        from facility_data.transfer.globus import GlobusTransfer

        return GlobusTransfer(self.get_transfer_client(), poll_interval=poll_interval)

    # -- Compute --------------------------------------------------------------------------------------------
    def compute_endpoint(self, endpoint_id: str | None = None) -> str:
        """The endpoint to run on: the argument, else the connection's ``compute_endpoint`` extra."""
        endpoint = endpoint_id or self.extras.get("compute_endpoint")
        if not endpoint:
            raise ValueError(f"no Globus Compute endpoint: pass endpoint_id or set extra compute_endpoint on "
                             f"connection {self.globus_conn_id!r} ('local' runs functions on this machine)")
        return str(endpoint)

    def get_compute_client(self):
        from globus_compute_sdk import Client
        from globus_compute_sdk.serialize import CombinedCode

        # The Compute scope is the service's own (Client.FUNCX_SCOPE), requested for this confidential client.
        return Client(authorizer=self.get_authorizer(Client.FUNCX_SCOPE), do_version_check=False,
                      code_serialization_strategy=CombinedCode())

    def get_compute_executor(self, endpoint_id: str | None = None) -> Executor:
        """A ``concurrent.futures`` executor for ``endpoint_id``: a local process pool for ``local``, otherwise a
        ``globus_compute_sdk.Executor`` on the endpoint."""
        endpoint = self.compute_endpoint(endpoint_id)
        if endpoint == LOCAL_COMPUTE:
            from facility_data.compute import LocalProcessExecutor

            return LocalProcessExecutor()
        from globus_compute_sdk import Executor as ComputeExecutor

        return ComputeExecutor(endpoint_id=endpoint, client=self.get_compute_client())

    # -- connection test (the UI's "Test" button) -----------------------------------------------------------
    def test_connection(self) -> tuple[bool, str]:
        try:
            from globus_sdk.scopes import TransferScopes

            tokens = self.get_auth_client().oauth2_client_credentials_tokens(requested_scopes=TransferScopes.all)
            tokens.by_resource_server  # noqa: B018 - parses the response, raising on a malformed one
            return True, "Globus Auth issued a Transfer token for this client"
        except Exception as exc:
            return False, f"{type(exc).__name__}: {exc}"
