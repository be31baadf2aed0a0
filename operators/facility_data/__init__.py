"""Airflow provider for scientific facility data: ALS beamline transfers and reconstruction, Rubin unembargo.

The package is the part of the project that must be *installed* (not loaded from the DAG bundle): the triggerer
imports triggers from it, and the UI learns its connection types through the ``apache_airflow_provider`` entry
point that calls :func:`get_provider_info`. Connection forms are declared here (no hook import needed).
"""

from __future__ import annotations

__version__ = "0.1.0"

_HIDE_HOST = ["host", "port", "schema"]


def _conn(conn_type: str, hook: str, name: str, *, hidden: list[str], relabel: dict, placeholders: dict,
          fields: dict | None = None) -> dict:
    return {
        "connection-type": conn_type,
        "hook-class-name": f"facility_data.hooks.{hook}",
        "hook-name": name,
        "ui-field-behaviour": {"hidden-fields": hidden, "relabeling": relabel, "placeholders": placeholders},
        "conn-fields": {
            key: {"label": label, "description": desc, "schema": {"type": ["string", "null"]}}
            for key, (label, desc) in (fields or {}).items()
        },
    }


def get_provider_info() -> dict:
    return {
        "package-name": "airflow-provider-facility-data",
        "name": "Facility Data",
        "description": "Globus, Globus Compute, NERSC SFAPI, SciCat, Rucio and LSST Butler integration for "
        "facility data pipelines.",
        "versions": [__version__],
        "connection-types": [
            _conn("globus", "globus.GlobusHook", "Globus (confidential client)", hidden=_HIDE_HOST,
                  relabel={"login": "Client ID", "password": "Client Secret"},
                  placeholders={"login": "UUID of the confidential client"},
                  fields={"compute_endpoint": ("Globus Compute endpoint", "Default endpoint UUID for Compute")}),
            _conn("sfapi", "sfapi.SFAPIHook", "NERSC Superfacility API", hidden=["port", "schema"],
                  relabel={"host": "API base URL", "login": "Client ID", "password": "Private key (JWK or PEM)"},
                  placeholders={"host": "https://api.nersc.gov/api/v1.2"},
                  fields={"token_url": ("Token URL", "OAuth token endpoint (defaults to NERSC's)")}),
            _conn("rucio", "rucio.RucioHook", "Rucio", hidden=["port", "schema"],
                  relabel={"host": "Rucio server URL", "login": "Account", "password": "Password"},
                  placeholders={"host": "https://rucio.example.org"},
                  fields={"auth_host": ("Auth server URL", "Defaults to the server URL"),
                          "auth_type": ("Auth type", "userpass (default), x509, oidc, ..."),
                          "vo": ("VO", "Virtual organisation (multi-VO servers only)")}),
            _conn("butler", "butler.ButlerHook", "LSST Data Butler", hidden=["port", "schema", "login", "password"],
                  relabel={"host": "Repository URI"},
                  placeholders={"host": "/repo/main or s3://bucket/repo/butler.yaml"},
                  fields={"aws_conn_id": ("AWS connection", "For S3-backed datastores: an aws connection id")}),
            _conn("scicat", "scicat.SciCatHook", "SciCat", hidden=["port", "schema"],
                  relabel={"host": "SciCat API URL", "login": "Ingest user", "password": "Password"},
                  placeholders={"host": "https://scicat.example.org/api/v3"}),
        ],
    }
