"""The shared loop of this package's triggers: poll a remote task until it ends or its deadline passes.

A subclass says how to look at the task once (``check``, blocking, run in a thread so the triggerer's event loop
never blocks) and how to cancel it (``cancel``). At the deadline the remote work is cancelled and a "timeout"
event fired; when a user kills the deferred task (mark failed/clear), ``on_kill`` cancels it too. The deadline is
an absolute UNIX time so it survives the trigger being moved to another triggerer.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent


class PollingTrigger(BaseTrigger):
    def __init__(self, *, deadline: float, poll_interval: float = 30.0):
        super().__init__()
        self.deadline = float(deadline)
        self.poll_interval = float(poll_interval)

    # subclasses -------------------------------------------------------------------------------------------
    def check(self) -> dict[str, Any]:
        """One look at the remote task: an event payload whose "status" is success, failed or pending."""
        raise NotImplementedError

    def cancel(self) -> str:
        """Cancel the remote task; return what happened."""
        raise NotImplementedError

    def describe(self) -> str:
        raise NotImplementedError

    # the loop ---------------------------------------------------------------------------------------------
    async def run(self) -> AsyncIterator[TriggerEvent]:
        while True:
            try:
                event = await asyncio.to_thread(self.check)
            except Exception as exc:  # the SDKs retry transient errors; what reaches here is not transient
                yield TriggerEvent({"status": "error", "message": f"polling {self.describe()} failed: "
                                                                  f"{type(exc).__name__}: {exc}"})
                return
            if event["status"] != "pending":
                yield TriggerEvent(event)
                return
            remaining = self.deadline - time.time()
            if remaining <= 0:
                outcome = await asyncio.to_thread(self._cancel_quietly)
                yield TriggerEvent({**event, "status": "timeout",
                                    "message": f"{self.describe()} not finished by its deadline "
                                               f"(last state: {event.get('message')}); {outcome}"})
                return
            self.log.info("%s still running (%s); next look in %.0f s", self.describe(), event.get("message"),
                          min(self.poll_interval, remaining))
            await asyncio.sleep(min(self.poll_interval, remaining))

    def _cancel_quietly(self) -> str:
        try:
            return self.cancel()
        except Exception as exc:
            return f"cancel failed: {type(exc).__name__}: {exc}"

    async def on_kill(self) -> None:
        outcome = await asyncio.to_thread(self._cancel_quietly)
        self.log.warning("task killed by a user: %s: %s", self.describe(), outcome)
