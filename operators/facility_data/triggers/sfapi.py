"""Trigger waiting for a Slurm job submitted through the NERSC Superfacility API.

Fires "success" only for COMPLETED; "failed" for FAILED, TIMEOUT, CANCELLED, NODE_FAIL, OUT_OF_MEMORY and the other
failure states, with the job's accounting record in "job"; "timeout" after cancelling the job at the deadline.
A job that accounting does not know yet stays pending for ``not_found_grace`` seconds, then fails.
"""

from __future__ import annotations

import time
from typing import Any

from facility_data.triggers.polling import PollingTrigger


class SFAPIJobTrigger(PollingTrigger):
    def __init__(self, *, jobid: str, machine: str = "perlmutter", conn_id: str = "sfapi_default", deadline: float,
                 poll_interval: float = 30.0, not_found_grace: float = 600.0, first_seen: float | None = None):
        super().__init__(deadline=deadline, poll_interval=poll_interval)
        self.jobid = str(jobid)
        self.machine = machine
        self.conn_id = conn_id
        self.not_found_grace = float(not_found_grace)
        self.first_seen = float(first_seen) if first_seen is not None else time.time()
        self._hook = None

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return ("facility_data.triggers.sfapi.SFAPIJobTrigger",
                {"jobid": self.jobid, "machine": self.machine, "conn_id": self.conn_id, "deadline": self.deadline,
                 "poll_interval": self.poll_interval, "not_found_grace": self.not_found_grace,
                 "first_seen": self.first_seen})

    def describe(self) -> str:
        return f"Slurm job {self.jobid} on {self.machine}"

    def hook(self):
        if self._hook is None:
            from facility_data.hooks.sfapi import SFAPIHook

            self._hook = SFAPIHook(self.conn_id)
        return self._hook

    def check(self) -> dict[str, Any]:
        from facility_data.hooks.sfapi import job_event

        return job_event(self.hook(), self.jobid, self.machine, first_seen=self.first_seen,
                         not_found_grace=self.not_found_grace)

    def cancel(self) -> str:
        self.hook().cancel_job(self.jobid, machine=self.machine)
        return f"Slurm job {self.jobid} cancelled"
