"""ButlerHook: an LSST data Butler from an Airflow connection (type ``butler``).

Connection: host = repository URI (a directory, ``.../butler.yaml`` or ``s3://bucket/repo``), extra
``aws_conn_id`` for repositories whose registry config or datastore is in S3: its key, secret and ``endpoint_url``
are handed to lsst-resources, which reads them from the process environment (``AWS_*``, ``S3_ENDPOINT_URL``).
"""

from __future__ import annotations

import os

from airflow.sdk import BaseHook

from facility_data.masking import mask_url


class ButlerHook(BaseHook):
    conn_name_attr = "butler_conn_id"
    default_conn_name = "butler_default"
    conn_type = "butler"
    hook_name = "LSST Data Butler"

    def __init__(self, butler_conn_id: str = default_conn_name, **kwargs) -> None:
        super().__init__(**kwargs)
        self.butler_conn_id = butler_conn_id

    def repo_uri(self) -> str:
        conn = self.get_connection(self.butler_conn_id)
        uri = conn.host or ""
        mask_url(uri)  # a repository URL may carry credentials (user:pass@, ?token=)
        if conn.schema and "://" not in uri:  # URI form butler://... parsed into schema/host by Airflow
            uri = f"{conn.schema}://{uri}"
        if not uri:
            raise ValueError(f"Butler connection {self.butler_conn_id!r}: host (the repository URI) is empty")
        return uri

    def _export_s3_credentials(self, aws_conn_id: str) -> None:
        from airflow.providers.amazon.aws.hooks.base_aws import AwsBaseHook

        hook = AwsBaseHook(aws_conn_id=aws_conn_id, client_type="s3")
        creds = hook.get_credentials()
        os.environ["AWS_ACCESS_KEY_ID"] = creds.access_key
        os.environ["AWS_SECRET_ACCESS_KEY"] = creds.secret_key
        endpoint = hook.conn_config.endpoint_url
        if endpoint:
            os.environ["S3_ENDPOINT_URL"] = endpoint

    def get_butler(self, *, writeable: bool = False):
        from lsst.daf.butler import Butler

        conn = self.get_connection(self.butler_conn_id)
        aws_conn_id = conn.extra_dejson.get("aws_conn_id")
        if aws_conn_id:
            self._export_s3_credentials(aws_conn_id)
        return Butler.from_config(self.repo_uri(), writeable=writeable)

    def get_conn(self):
        return self.get_butler()

    def test_connection(self) -> tuple[bool, str]:
        try:
            butler = self.get_butler()
            return True, f"repository {self.repo_uri()} with {len(butler.collections.query('*'))} collections"
        except Exception as exc:
            return False, f"{type(exc).__name__}: {exc}"
