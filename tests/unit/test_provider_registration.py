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


EDGE_EXECUTOR = "airflow.providers.edge3.executors.EdgeExecutor"


def test_edge3_provider_registers_its_executor_config_and_cli():
    """The EdgeExecutor (sites pulling their queues over HTTPS) is installed as Airflow sees providers: its
    executor class, its ``[edge]`` options (off by default, so the one-machine setup is unchanged) and
    ``airflow edge worker``."""
    from airflow.configuration import conf
    from airflow.providers_manager import ProvidersManager

    pm = ProvidersManager()
    assert "apache-airflow-providers-edge3" in pm.providers
    assert EDGE_EXECUTOR in pm.executor_class_names
    assert conf.getboolean("edge", "api_enabled") is False
    from airflow.providers.edge3.cli.definition import get_edge_cli_commands

    group = get_edge_cli_commands()[0]
    assert group.name == "edge"
    assert "worker" in {c.name for c in group.subcommands}


def test_edge_executor_class_imports_and_is_not_local():
    """`airflow standalone` replaces a non-local default executor by LocalExecutor, so an edge-mode Airflow
    must start its components itself (localsite.airflow_home.AirflowServer does)."""
    module, _, name = EDGE_EXECUTOR.rpartition(".")
    cls = getattr(importlib.import_module(module), name)
    assert cls.__name__ == "EdgeExecutor"
    assert cls.is_local is False
