"""Trigger waiting for a Globus Compute task by id.

Fires "success" when the function returned (the operator then fetches the result), "failed" with the remote
traceback text when it raised, "timeout" at the deadline. Globus Compute offers no way to stop a task once the
service has accepted it, so at the deadline the Airflow task fails and the event says the remote task may still
run: bound the function's own runtime (e.g. a walltime in the endpoint's resource specification).
"""

from __future__ import annotations

from typing import Any

from facility_data.triggers.polling import PollingTrigger

NO_REMOTE_CANCEL = ("Globus Compute cannot cancel an accepted task; it may still run on the endpoint until its "
                    "walltime")


class GlobusComputeTrigger(PollingTrigger):
    def __init__(self, *, compute_task_id: str, conn_id: str = "globus_default", deadline: float,
                 poll_interval: float = 30.0):
        super().__init__(deadline=deadline, poll_interval=poll_interval)
        self.compute_task_id = compute_task_id
        self.conn_id = conn_id
        self._client = None

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return ("facility_data.triggers.globus_compute.GlobusComputeTrigger",
                {"compute_task_id": self.compute_task_id, "conn_id": self.conn_id, "deadline": self.deadline,
                 "poll_interval": self.poll_interval})

    def describe(self) -> str:
        return f"Globus Compute task {self.compute_task_id}"

    def client(self):
        if self._client is None:
            from facility_data.hooks.globus import GlobusHook

            self._client = GlobusHook(self.conn_id).get_compute_client()
        return self._client

    def check(self) -> dict[str, Any]:
        from facility_data.compute import compute_task_state

        return compute_task_state(self.client(), self.compute_task_id)

    def cancel(self) -> str:
        return NO_REMOTE_CANCEL
