"""Trigger waiting for a Globus Transfer task (transfer or delete) without holding a worker slot.

Fires {"status": "success"} only on SUCCEEDED; "failed" (FAILED, INACTIVE, a fault such as FILE_NOT_FOUND or
PERMISSION_DENIED; the still-active task is cancelled) and "timeout" (deadline passed, task cancelled) carry
Globus' own error text in "message". Holds only serializable values.
"""

from __future__ import annotations

from typing import Any

from facility_data.triggers.polling import PollingTrigger


class GlobusTaskTrigger(PollingTrigger):
    def __init__(self, *, globus_task_id: str, conn_id: str = "globus_default", deadline: float,
                 poll_interval: float = 30.0):
        super().__init__(deadline=deadline, poll_interval=poll_interval)
        self.globus_task_id = globus_task_id
        self.conn_id = conn_id
        self._backend = None

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return ("facility_data.triggers.globus.GlobusTaskTrigger",
                {"globus_task_id": self.globus_task_id, "conn_id": self.conn_id, "deadline": self.deadline,
                 "poll_interval": self.poll_interval})

    def describe(self) -> str:
        return f"Globus task {self.globus_task_id}"

    def backend(self):
        if self._backend is None:
            from facility_data.hooks.globus import GlobusHook

            self._backend = GlobusHook(self.conn_id).get_transfer_backend()
        return self._backend

    def check(self) -> dict[str, Any]:
        state = self.backend().task_state(self.globus_task_id)
        event = state.as_event()
        if state.outcome == "failed" and state.status not in ("FAILED", "SUCCEEDED"):
            ok = self.backend().cancel(self.globus_task_id)
            event["message"] += " (task cancelled)" if ok else " (cancelling the task FAILED: see log)"
        return event

    def cancel(self) -> str:
        if self.backend().cancel(self.globus_task_id):
            return f"cancel requested for Globus task {self.globus_task_id}"
        return f"cancelling Globus task {self.globus_task_id} FAILED (see log)"
