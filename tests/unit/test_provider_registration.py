"""The package registers as an Airflow provider, so its connection types appear in the UI."""

from __future__ import annotations

import importlib
import importlib.metadata

import pytest

CONN_TYPES = {"globus", "sfapi", "rucio", "butler", "scicat"}


def test_entry_point_points_at_provider_info():
    eps = [ep for ep in importlib.metadata.entry_points(group="apache_airflow_provider")
           if ep.value.startswith("facility_data")]
    assert len(eps) == 1
    info = eps[0].load()()
    assert info["package-name"] == "airflow-provider-facility-data"
    assert {c["connection-type"] for c in info["connection-types"]} == CONN_TYPES


def test_airflow_providers_manager_knows_the_connection_types():
    from airflow.providers_manager import ProvidersManager

    pm = ProvidersManager()
    assert "airflow-provider-facility-data" in pm.providers
    missing = CONN_TYPES - set(pm.hooks)
    assert not missing, f"connection types not registered with Airflow: {missing}"


@pytest.mark.parametrize("conn", __import__("facility_data").get_provider_info()["connection-types"],
                         ids=lambda c: c["connection-type"])
def test_each_hook_class_exists_and_declares_its_connection_type(conn):
    module, _, cls = conn["hook-class-name"].rpartition(".")
    hook = getattr(importlib.import_module(module), cls)
    assert hook.conn_type == conn["connection-type"]
    assert hook.default_conn_name
