"""SFAPISubmitJobOperator: render a Slurm batch script from a template in include/jobs/ and submit it to a NERSC
machine through the Superfacility API. Returns the Slurm job id (XCom) for :class:`SFAPIJobSensor` to wait on.

The job name ends in a hash of the Airflow task instance; before submitting, the operator looks for a queued or
running job of that name and adopts it, so a retried task never submits the same job twice.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

from airflow.sdk import BaseOperator

from facility_data.hooks.sfapi import SFAPIHook


def job_name_for(base: str, identity: str) -> str:
    tag = hashlib.sha256(identity.encode()).hexdigest()[:10]
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in base)[:40]
    return f"{safe}-af{tag}"


class SFAPISubmitJobOperator(BaseOperator):
    """Submit ``include/jobs/<template>`` rendered with ``job_params`` (plus ``job_name``) to ``machine``."""

    template_fields: Sequence[str] = ("job_params", "machine", "job_name")
    ui_color = "#e4f0e8"

    def __init__(self, *, template: str, job_params: dict[str, Any] | None = None, job_name: str | None = None,
                 machine: str = "perlmutter", conn_id: str = SFAPIHook.default_conn_name, **kwargs) -> None:
        super().__init__(**kwargs)
        self.template = template
        self.job_params = job_params or {}
        self.job_name = job_name
        self.machine = machine
        self.conn_id = conn_id

    def execute(self, context) -> str:
        from facility_data.hpc.jobs import render_job

        ti = context["ti"]
        identity = f"{ti.dag_id}/{ti.run_id}/{ti.task_id}/{getattr(ti, 'map_index', -1)}"
        name = job_name_for(self.job_name or ti.task_id, identity)
        script = render_job(self.template, **{**self.job_params, "job_name": name})  # errors before any request
        hook = SFAPIHook(self.conn_id)
        existing = hook.find_active_job(name, machine=self.machine)
        if existing:
            self.log.info("adopting Slurm job %s (%s) already submitted as %s", existing["jobid"],
                          existing.get("state"), name)
            return str(existing["jobid"])
        jobid = hook.submit_job(script, machine=self.machine)
        self.log.info("submitted %s as Slurm job %s on %s", self.template, jobid, self.machine)
        return jobid
