"""ALCF: run the job script through Globus Compute on the facility's endpoint (Polaris), or on the local
process pool when the connection's compute endpoint is ``local``. The script's exit code decides success."""

from __future__ import annotations

import time

from facility_data.hpc.base import HPCController, JobFailed, JobResult


def run_script(script: str, job_name: str) -> dict:
    """Executed on the endpoint: run ``script`` with bash and report its exit code and output tail."""
    import subprocess
    import tempfile

    with tempfile.NamedTemporaryFile("w", suffix=".sh", prefix=f"{job_name}-", delete=False) as fh:
        fh.write(script)
    proc = subprocess.run(["bash", fh.name], capture_output=True, text=True)
    return {"exitcode": proc.returncode, "output": (proc.stdout + proc.stderr)[-4000:]}


class ALCFController(HPCController):
    name = "alcf"

    def __init__(self, conn_id: str = "globus_default", endpoint_id: str | None = None):
        self.conn_id = conn_id
        self.endpoint_id = endpoint_id

    def run_job(self, script: str, *, job_name: str, deadline_seconds: float) -> JobResult:
        from facility_data.compute import ComputeError, run_with_deadline
        from facility_data.hooks.globus import GlobusHook

        start = time.monotonic()
        executor = GlobusHook(self.conn_id).get_compute_executor(self.endpoint_id)
        try:
            result = run_with_deadline(executor, run_script, (script, job_name), deadline_seconds=deadline_seconds,
                                       label=f"ALCF job {job_name}")
        except ComputeError as exc:
            raise JobFailed(str(exc)) from exc
        finally:
            executor.shutdown(wait=False, cancel_futures=True)
        if result["exitcode"] != 0:
            raise JobFailed(f"ALCF job {job_name} FAILED with exit code {result['exitcode']}:\n{result['output']}")
        return JobResult(job_id=job_name, state="COMPLETED", seconds=time.monotonic() - start, info=result)
