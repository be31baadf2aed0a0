"""Test-only DAGs (not in the bundle's dags/): each remote-service operator in a DAG, run by
tests/dags/test_operators_remote.py under dag.test() with its trigger inline, against local stand-ins of the
services (a local SFAPI server, canned Globus HTTP responses, a local Compute process pool)."""

from __future__ import annotations

import operator
from datetime import datetime

from airflow.sdk import dag

from facility_data.dag_defaults import default_args
from facility_data.operators.globus import GlobusDeleteOperator, GlobusTransferOperator
from facility_data.operators.globus_compute import GlobusComputeOperator
from facility_data.operators.hpc import HPCJobOperator
from facility_data.operators.sfapi import SFAPISubmitJobOperator
from facility_data.sensors.sfapi import SFAPIJobSensor

COMMON = {"start_date": datetime(2025, 1, 1), "catchup": False,
          "default_args": default_args(retries=1), "tags": ["test"]}
COMPUTE_ENDPOINT = "00000000-0000-4000-8000-00000000c0de"
COMPUTE_FUNCTION = "00000000-0000-4000-8000-0000000000f1"


@dag(dag_id="test_operators_sfapi", schedule=None, **COMMON)
def sfapi_check():
    submit = SFAPISubmitJobOperator(task_id="submit", template="healthcheck.slurm.j2", conn_id="sfapi_dagtest")
    wait = SFAPIJobSensor(task_id="wait", jobid="{{ ti.xcom_pull(task_ids='submit') }}", conn_id="sfapi_dagtest",
                          deferrable=True, poke_interval=0.1, timeout=120)
    submit >> wait


@dag(dag_id="test_operators_compute", schedule=None, **COMMON)
def compute_check():
    GlobusComputeOperator(task_id="local", function=operator.mul, function_args=[6, 7],
                          conn_id="globus_dagtest_local")
    GlobusComputeOperator(task_id="remote", function_id=COMPUTE_FUNCTION, function_args=[2],
                          endpoint_id=COMPUTE_ENDPOINT, conn_id="globus_dagtest", deferrable=True, poll_interval=0.1)


@dag(dag_id="test_operators_globus", schedule=None, **COMMON)
def globus_check():
    copy = GlobusTransferOperator(task_id="copy", source_endpoint="data832", source_path="raw/p1/scan.h5",
                                  destination_endpoint="nersc832", destination_path="raw/p1/scan.h5",
                                  conn_id="globus_dagtest",  # endpoints: $FACILITY_ENDPOINTS_FILE set by the test
                                  export_controlled=False, deferrable=True, poll_interval=0.1, label="dagtest copy")
    delete = GlobusDeleteOperator(task_id="delete", endpoint="data832", path="raw/p1/scan.h5",
                                  conn_id="globus_dagtest", deferrable=True, poll_interval=0.1)
    copy >> delete


@dag(dag_id="test_operators_hpc", schedule=None, **COMMON)
def hpc_check():
    HPCJobOperator(task_id="local_job", template="batch.slurm.j2", hpc="local",
                   job_params={"command": "echo reconstructing {{ params.scan }}"}, params={"scan": "scan1.h5"})


sfapi_check()
compute_check()
globus_check()
hpc_check()
