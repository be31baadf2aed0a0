"""The HPC controller interface: run one job script to completion, or fail with the job's own error."""

from __future__ import annotations

import abc
from dataclasses import dataclass, field


class JobFailed(RuntimeError):
    """The job ended in a state other than success, or passed its deadline (and was cancelled)."""


@dataclass
class JobResult:
    job_id: str
    state: str
    seconds: float
    info: dict = field(default_factory=dict)


class HPCController(abc.ABC):
    name: str

    @abc.abstractmethod
    def run_job(self, script: str, *, job_name: str, deadline_seconds: float) -> JobResult:
        """Run ``script``; return when it succeeded, raise JobFailed otherwise (cancelling it at the deadline)."""
