"""GlobusComputeOperator: run a function (a Python callable, or a registered function id) on a Globus Compute
endpoint, with a deadline; the function's return value is the XCom value, a raised exception fails the task with
its traceback text.

Where it runs:
* ``executor_factory`` given (any ``concurrent.futures`` executor factory): in that executor, waiting in the worker;
* endpoint ``local`` (connection extra ``compute_endpoint: local``, the embedded default): a local process pool;
  at the deadline the worker process is killed;
* otherwise the Globus Compute service: the function is submitted by id (a callable is registered first) and the
  task waits deferred in :class:`~facility_data.triggers.globus_compute.GlobusComputeTrigger`. Globus Compute
  cannot cancel an accepted task, so at the deadline the Airflow task fails and says the remote run may go on.

A retry never submits the same work twice while the first submission may still run: the service task id is kept in
an Airflow Variable named after the task instance (Globus Compute cannot look tasks up by label), and a retry adopts
that task if it is still pending or has succeeded; it submits again only if it failed. The Variable is removed when
the task ends.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from datetime import timedelta
from typing import Any

from airflow.sdk import BaseOperator, Variable, conf
from airflow.sdk.exceptions import AirflowException

from facility_data.hooks.globus import LOCAL_COMPUTE, GlobusHook


class GlobusComputeOperator(BaseOperator):
    template_fields: Sequence[str] = ("function_args", "function_kwargs", "endpoint_id", "function_id")
    ui_color = "#e8dcf8"

    def __init__(self, *, function: Callable | None = None, function_id: str | None = None,
                 function_args: Sequence[Any] = (), function_kwargs: dict[str, Any] | None = None,
                 endpoint_id: str | None = None, deadline: timedelta = timedelta(minutes=20),
                 executor_factory: Callable[[], Executor] | None = None,
                 conn_id: str = GlobusHook.default_conn_name, poll_interval: float = 10.0,
                 deferrable: bool = conf.getboolean("operators", "default_deferrable", fallback=False),
                 **kwargs) -> None:
        super().__init__(**kwargs)
        if (function is None) == (function_id is None):
            raise ValueError("pass exactly one of function (a callable) or function_id (a registered function)")
        self.function = function
        self.function_id = function_id
        self.function_args = function_args
        self.function_kwargs = function_kwargs or {}
        self.endpoint_id = endpoint_id
        self.deadline = deadline
        self.executor_factory = executor_factory
        self.conn_id = conn_id
        self.poll_interval = poll_interval
        self.deferrable = deferrable

    @property
    def _label(self) -> str:
        name = getattr(self.function, "__name__", None) or self.function_id
        return f"function {name} ({self.task_id})"

    def execute(self, context) -> Any:
        from facility_data.compute import ComputeError, run_with_deadline

        deadline_seconds = self.deadline.total_seconds()
        executor = None
        if self.executor_factory is not None:
            executor = self.executor_factory()
        else:
            hook = GlobusHook(self.conn_id)
            endpoint = hook.compute_endpoint(self.endpoint_id)
            if endpoint == LOCAL_COMPUTE:
                executor = hook.get_compute_executor(endpoint)
        if executor is not None:
            if self.function is None:
                raise ValueError("a registered function_id can only run on a Globus Compute endpoint, "
                                 "not on a local executor: pass function=")
            try:
                return run_with_deadline(executor, self.function, tuple(self.function_args), self.function_kwargs,
                                         deadline_seconds=deadline_seconds, label=self._label)
            except ComputeError as exc:
                raise AirflowException(str(exc)) from exc
            finally:
                executor.shutdown(wait=False, cancel_futures=True)
        return self._submit_remote(hook, endpoint, deadline_seconds, context)

    def _submit_remote(self, hook: GlobusHook, endpoint: str, deadline_seconds: float, context) -> Any:
        from facility_data.compute import compute_task_state

        client = hook.get_compute_client()
        key, ident = submission_key(context)
        task_id = Variable.get(key, default=None)
        if task_id:
            earlier = compute_task_state(client, task_id)
            if earlier["status"] == "failed":
                self.log.info("the earlier try's Globus Compute task %s failed; submitting again", task_id)
                task_id = None
            else:
                self.log.info("adopting Globus Compute task %s (%s) submitted by an earlier try of %s", task_id,
                              earlier["message"], ident)
        if not task_id:
            function_id = self.function_id or client.register_function(self.function)
            task_id = client.run(*self.function_args, endpoint_id=endpoint, function_id=function_id,
                                 **self.function_kwargs)
            Variable.set(key, task_id, description=f"Globus Compute task of {ident}: a retry adopts it (removed "
                                                    "when the task ends)")
            self.log.info("submitted %s to Globus Compute endpoint %s: task %s", self._label, endpoint, task_id)
        if self.deferrable:
            from facility_data.triggers.globus_compute import GlobusComputeTrigger

            self.defer(trigger=GlobusComputeTrigger(compute_task_id=task_id, conn_id=self.conn_id,
                                                    deadline=time.time() + deadline_seconds,
                                                    poll_interval=self.poll_interval),
                       method_name="execute_complete", timeout=timedelta(seconds=deadline_seconds + 300))
        from facility_data.triggers.globus_compute import NO_REMOTE_CANCEL

        start = time.monotonic()
        while True:
            event = compute_task_state(client, task_id)
            if event["status"] != "pending":
                return self.execute_complete(context, event)
            if time.monotonic() - start >= deadline_seconds:
                raise AirflowException(f"Globus Compute task {task_id} not finished after {deadline_seconds:.0f} s; "
                                       f"{NO_REMOTE_CANCEL}")
            time.sleep(self.poll_interval)

    def execute_complete(self, context, event: dict[str, Any]) -> Any:
        if event.get("status") in ("success", "failed"):  # ended: nothing left for a retry to adopt
            Variable.delete(submission_key(context)[0])
        if event.get("status") != "success":
            raise AirflowException(f"{self._label} {event.get('status')}: {event.get('message')}")
        result = GlobusHook(self.conn_id).get_compute_client().get_result(event["task_id"])
        self.log.info("%s succeeded (Globus Compute task %s)", self._label, event["task_id"])
        return result


def submission_key(context) -> tuple[str, str]:
    """(Variable key, readable identity) of a task instance's Globus Compute submission; stable across its tries."""
    ti = context["ti"]
    ident = f"{ti.dag_id}/{ti.run_id}/{ti.task_id}[{ti.map_index}]"
    return f"facility_data.compute_task.{hashlib.sha256(ident.encode()).hexdigest()[:24]}", ident
