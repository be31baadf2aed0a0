"""Test-only DAG for the live Airflow (tests/live/conftest.py adds this folder as a second local DAG bundle): one
Globus copy between two collections of the shipped facility endpoints, served by the session's Globus stand-in,
deferred to the real triggerer."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

from airflow.sdk import dag

from facility_data.dag_defaults import default_args
from facility_data.operators.globus import GlobusTransferOperator

FACILITY_ENDPOINTS = Path(__file__).resolve().parents[3] / "include" / "endpoints.facility.yaml"


@dag(dag_id="live_globus_deferral", schedule=None, start_date=datetime(2025, 1, 1), catchup=False,
     # one retry: on 2 busy cores the task runner has failed to report a finished task's state to the api-server
     # ("Failed to report terminal task state"); a retry adopts the Globus task by its label, never a second copy
     default_args=default_args(retries=1, retry_delay=timedelta(seconds=5)), tags=["test"])
def live_globus_deferral():
    GlobusTransferOperator(task_id="copy", source_endpoint="spot832", source_path="raw/live/scan.h5",
                           destination_endpoint="nersc832", destination_path="raw/live/scan.h5",
                           endpoints_file=str(FACILITY_ENDPOINTS), deferrable=True, poll_interval=1,
                           deadline=timedelta(minutes=10), label="live deferral", export_controlled=False)


live_globus_deferral()
