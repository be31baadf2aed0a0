"""HPCJobOperator: render a job script from include/jobs/ and run it to completion on an HPC controller
(``local``, ``alcf`` or ``nersc``; see facility_data.hpc). It waits in the worker, which suits the LOCAL controller
(the embedded default); for NERSC prefer SFAPISubmitJobOperator + the deferrable SFAPIJobSensor, for ALCF the
deferrable GlobusComputeOperator. The job's accounting/exit information is the XCom value.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowException


class HPCJobOperator(BaseOperator):
    template_fields: Sequence[str] = ("job_params", "hpc", "job_name")

    def __init__(self, *, template: str, job_params: dict[str, Any] | None = None, hpc: str = "local",
                 job_name: str | None = None, deadline: timedelta = timedelta(hours=1),
                 controller_kwargs: dict[str, Any] | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        self.template = template
        self.job_params = job_params or {}
        self.hpc = hpc
        self.job_name = job_name
        self.deadline = deadline
        self.controller_kwargs = controller_kwargs or {}

    def execute(self, context) -> dict:
        from facility_data.hpc import JobFailed, get_controller, render_job
        from facility_data.metrics import job_metrics

        name = self.job_name or self.task_id
        script = render_job(self.template, **{**self.job_params, "job_name": name})  # errors before any side effect
        controller = get_controller(self.hpc, **self.controller_kwargs)
        try:
            result = controller.run_job(script, job_name=name, deadline_seconds=self.deadline.total_seconds())
        except JobFailed as exc:
            job_metrics(controller.name, "failed", {})
            raise AirflowException(str(exc)) from exc
        job_metrics(controller.name, "success", result.info, run_seconds=result.seconds)
        self.log.info("%s job %s %s in %.1f s", controller.name, result.job_id, result.state, result.seconds)
        return {"hpc": controller.name, "job_id": result.job_id, "state": result.state,
                "seconds": round(result.seconds, 3), **result.info}
