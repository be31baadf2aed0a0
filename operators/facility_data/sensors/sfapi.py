"""SFAPIJobSensor: wait for a NERSC Slurm job (submitted through the Superfacility API) to finish.

Succeeds only when the job is COMPLETED and returns its accounting record as XCom; fails on FAILED, TIMEOUT,
CANCELLED, NODE_FAIL, OUT_OF_MEMORY (and other failure states) with that record in the error. Deferrable (the
trigger polls); when the sensor's timeout passes, or a user kills the task, the job is cancelled.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from airflow.sdk import BaseSensorOperator, PokeReturnValue, conf
from airflow.sdk.exceptions import AirflowException, AirflowSensorTimeout

from facility_data.hooks.sfapi import SFAPIHook, job_event


class SFAPIJobSensor(BaseSensorOperator):
    """Wait for Slurm job ``jobid`` on ``machine``; ``timeout`` (seconds) is the job's deadline."""

    template_fields: Sequence[str] = ("jobid", "machine")
    ui_color = "#e4f0e8"

    def __init__(self, *, jobid: str, machine: str = "perlmutter", conn_id: str = SFAPIHook.default_conn_name,
                 not_found_grace: float = 600.0,
                 deferrable: bool | None = None, **kwargs) -> None:
        kwargs.setdefault("poke_interval", 30)
        kwargs.setdefault("timeout", timedelta(hours=6).total_seconds())
        super().__init__(**kwargs)
        self.jobid = jobid
        self.machine = machine
        self.conn_id = conn_id
        self.not_found_grace = not_found_grace
        # read when the DAG is parsed, not when this module is first imported: a conf set later still applies
        self.deferrable = (conf.getboolean("operators", "default_deferrable", fallback=False)
                           if deferrable is None else deferrable)
        self._first_seen: float | None = None

    def _hook(self) -> SFAPIHook:
        return SFAPIHook(self.conn_id)

    def execute(self, context) -> Any:
        self._first_seen = time.time()
        if self.deferrable:
            from facility_data.triggers.sfapi import SFAPIJobTrigger

            self.defer(trigger=SFAPIJobTrigger(jobid=str(self.jobid), machine=self.machine, conn_id=self.conn_id,
                                               deadline=time.time() + float(self.timeout),
                                               poll_interval=float(self.poke_interval),
                                               not_found_grace=self.not_found_grace, first_seen=self._first_seen),
                       method_name="execute_complete",
                       # the trigger's own deadline cancels the job; this is only a backstop
                       timeout=timedelta(seconds=float(self.timeout) + 300))
        try:
            return super().execute(context)
        except AirflowSensorTimeout:
            self._cancel("sensor timeout")
            raise

    def poke(self, context) -> PokeReturnValue:
        event = job_event(self._hook(), str(self.jobid), self.machine, first_seen=self._first_seen or time.time(),
                          not_found_grace=self.not_found_grace)
        self.log.info("%s", event["message"])
        if event["status"] != "pending":
            self._report(event)
        if event["status"] == "failed":
            raise AirflowException(event["message"])
        return PokeReturnValue(is_done=event["status"] == "success", xcom_value=event["job"] or None)

    def execute_complete(self, context, event: dict[str, Any]) -> dict:
        self._report(event)
        if event.get("status") != "success":
            raise AirflowException(f"{event.get('status')}: {event.get('message')}")
        self.log.info("%s", event["message"])
        return event.get("job") or {}

    def _report(self, event: dict[str, Any]) -> None:
        from facility_data.metrics import job_metrics

        job_metrics(self.machine, str(event.get("status")), event.get("job") or {})

    def _cancel(self, why: str) -> None:
        try:
            self._hook().cancel_job(str(self.jobid), machine=self.machine)
            self.log.warning("cancelled Slurm job %s (%s)", self.jobid, why)
        except Exception as exc:
            self.log.error("could not cancel Slurm job %s after %s: %s", self.jobid, why, exc)

    def on_kill(self) -> None:
        self._cancel("task killed")
