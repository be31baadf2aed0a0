"""NERSC: submit the job script to Slurm through the Superfacility API and wait for COMPLETED (blocking).

Airflow DAGs should prefer SFAPISubmitJobOperator + SFAPIJobSensor (deferrable); this controller is the same
logic for plain Python callers and for the HPC abstraction.
"""

from __future__ import annotations

import time

from facility_data.hpc.base import HPCController, JobFailed, JobResult


class NERSCController(HPCController):
    name = "nersc"

    def __init__(self, conn_id: str = "sfapi_default", machine: str = "perlmutter", poll_interval: float = 30.0,
                 not_found_grace: float = 600.0):
        self.conn_id = conn_id
        self.machine = machine
        self.poll_interval = poll_interval
        self.not_found_grace = not_found_grace

    def run_job(self, script: str, *, job_name: str, deadline_seconds: float) -> JobResult:
        from facility_data.hooks.sfapi import SFAPIHook, job_event

        hook = SFAPIHook(self.conn_id)
        start = time.monotonic()
        first_seen = time.time()
        jobid = hook.submit_job(script, machine=self.machine)
        while True:
            event = job_event(hook, jobid, self.machine, first_seen=first_seen, not_found_grace=self.not_found_grace)
            if event["status"] == "success":
                return JobResult(job_id=jobid, state="COMPLETED", seconds=time.monotonic() - start,
                                 info=event["job"])
            if event["status"] == "failed":
                raise JobFailed(event["message"])
            if time.monotonic() - start >= deadline_seconds:
                hook.cancel_job(jobid, machine=self.machine)
                raise JobFailed(f"Slurm job {jobid} ({job_name}) not finished after {deadline_seconds:.0f} s; "
                                "cancelled")
            time.sleep(self.poll_interval)
