"""LOCAL: run a job script with bash on this machine (the embedded default for reconstruction jobs).

The script runs in its own process group with its output in ``<workdir>/<job_name>.log``; a non-zero exit fails
with the log's tail, and at the deadline the whole process group is killed.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from facility_data.hpc.base import HPCController, JobFailed, JobResult

log = logging.getLogger(__name__)


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


class LocalController(HPCController):
    name = "local"

    def __init__(self, workdir: str | os.PathLike | None = None):
        self.workdir = Path(workdir) if workdir else None

    def run_job(self, script: str, *, job_name: str, deadline_seconds: float) -> JobResult:
        workdir = self.workdir or Path(tempfile.mkdtemp(prefix="facility-job-"))
        workdir.mkdir(parents=True, exist_ok=True)
        script_path = workdir / f"{job_name}.sh"
        log_path = workdir / f"{job_name}.log"
        script_path.write_text(script)
        start = time.monotonic()
        with open(log_path, "wb") as out:
            proc = subprocess.Popen(["bash", str(script_path)], cwd=workdir, stdout=out, stderr=subprocess.STDOUT,
                                    start_new_session=True)
            log.info("local job %s started (pid %d), log %s", job_name, proc.pid, log_path)
            try:
                code = proc.wait(timeout=deadline_seconds)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                raise JobFailed(f"local job {job_name} killed at its deadline of {deadline_seconds:.0f} s; "
                                f"log tail:\n{_tail(log_path)}") from None
        seconds = time.monotonic() - start
        info = {"exitcode": code, "log": str(log_path), "elapsed_seconds": round(seconds, 3)}
        if code != 0:
            raise JobFailed(f"local job {job_name} FAILED with exit code {code}; log tail:\n{_tail(log_path)}")
        return JobResult(job_id=str(proc.pid), state="COMPLETED", seconds=seconds, info=info)
