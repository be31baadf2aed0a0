"""Running functions remotely (Globus Compute) or locally, with a deadline that cancels the work.

Any ``concurrent.futures`` executor can stand in for Globus Compute: :func:`run_with_deadline` submits, waits at
most the deadline, and at the deadline cancels the future and, for :class:`LocalProcessExecutor`, kills the worker
process, so nothing keeps running behind a failed Airflow task. :func:`compute_task_state` reads a Globus Compute
task (by id, which is what a trigger can hold) into success / failed-with-traceback / pending.
"""

from __future__ import annotations

import logging
import signal
import traceback
from concurrent.futures import Executor, Future, ProcessPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

log = logging.getLogger(__name__)


class ComputeError(RuntimeError):
    """The remote or local function raised; the message holds its traceback text."""


class ComputeTimeout(ComputeError):
    """The deadline passed; the function was cancelled."""


class LocalProcessExecutor(ProcessPoolExecutor):
    """A process pool whose running work can be stopped (``terminate``), the local stand-in for an endpoint."""

    def __init__(self, max_workers: int = 1):
        super().__init__(max_workers=max_workers, initializer=_default_sigterm)

    def terminate(self) -> None:
        # Python < 3.14 has no public way to stop a running ProcessPoolExecutor job: kill its worker processes,
        # and wait until they are gone (SIGKILL if SIGTERM is not enough), so nothing runs past the deadline.
        procs = [p for p in list((getattr(self, "_processes", None) or {}).values()) if p.is_alive()]
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.join(timeout=2)
            if proc.is_alive():
                proc.kill()
                proc.join(timeout=2)
        self.shutdown(wait=False, cancel_futures=True)


def _default_sigterm() -> None:
    """Workers are forked from processes (Airflow tasks, pytest) that may handle SIGTERM themselves; a worker must
    die on it."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def exception_text(exc: BaseException) -> str:
    return "".join(traceback.format_exception(exc)).strip()


def run_with_deadline(executor: Executor, fn, args: tuple = (), kwargs: dict | None = None, *,
                      deadline_seconds: float, label: str = "function") -> Any:
    """Submit ``fn`` and return its result; raise ComputeError with the traceback, or ComputeTimeout after
    cancelling it at the deadline."""
    future: Future = executor.submit(fn, *args, **(kwargs or {}))
    try:
        return future.result(timeout=deadline_seconds)
    except FutureTimeout:
        cancelled = future.cancel()
        terminate = getattr(executor, "terminate", None)
        if callable(terminate):
            terminate()
            how = "worker process terminated"
        else:
            how = "future cancelled" if cancelled else "future was running; the executor cannot stop it"
        log.error("%s passed its deadline of %.0f s: %s", label, deadline_seconds, how)
        raise ComputeTimeout(f"{label} did not finish within {deadline_seconds:.0f} s ({how})") from None
    except Exception as exc:
        remote_tb = getattr(exc, "remote_data", None) or exception_text(exc)
        raise ComputeError(f"{label} failed:\n{remote_tb}") from exc


def compute_task_state(client, task_id: str) -> dict:
    """One look at a Globus Compute task: {"status": "success"|"failed"|"pending", ...}."""
    from globus_compute_sdk.errors import TaskExecutionFailed

    try:
        task = client.get_task(task_id)
    except TaskExecutionFailed as exc:
        return {"status": "failed", "task_id": task_id, "message": f"Globus Compute task {task_id} failed:\n{exc}"}
    if task.get("pending", True):
        return {"status": "pending", "task_id": task_id, "message": str(task.get("status"))}
    if "result" in task:
        return {"status": "success", "task_id": task_id, "message": "success"}
    return {"status": "failed", "task_id": task_id,
            "message": f"Globus Compute task {task_id} ended without a result: {task.get('reason', 'unknown')}"}
