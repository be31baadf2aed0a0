"""GlobusTransferOperator and GlobusDeleteOperator: move or delete data between endpoints named in include/.

Endpoints resolve through :func:`facility_data.transfer.load_endpoints`. Two local endpoints run the local POSIX
backend in the worker (the embedded default: checksum-verified, atomic). Globus endpoints submit a Globus task with
a label derived from the Airflow task instance, so a retry adopts the task it already submitted, then defer to
:class:`~facility_data.triggers.globus.GlobusTaskTrigger` (or poll in the worker when not deferrable). Success is
SUCCEEDED only; anything else fails the task with Globus' message, and the deadline cancels the remote task.
The transfer statistics (files, bytes, seconds, rate, task id) are the XCom value.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from airflow.sdk import BaseOperator, conf
from airflow.sdk.exceptions import AirflowException

from facility_data.hooks.globus import GlobusHook


def _as_bool(value: Any, name: str) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "1", "yes"):
        return True
    if text in ("false", "0", "no", "none", ""):
        return False
    from facility_data.conf import ConfError

    # usually a template over the run's conf: a refusal, not a fault a retry could fix
    raise ConfError(f"{name} must be a boolean, got {value!r}")


def _export_status(value: Any) -> bool | None:
    """The rendered ``export_controlled``: True, False, or None when it is not known (unset, empty, None), which the
    safety policy treats as controlled. Anything else is an error."""
    if value is None or isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("", "none", "null"):
        return None
    return _as_bool(value, "export_controlled")


def _identity(context) -> str:
    ti = context["ti"]
    return f"{ti.dag_id}/{ti.run_id}/{ti.task_id}/{getattr(ti, 'map_index', -1)}"


class _GlobusTaskOperator(BaseOperator):
    """What transfer and delete share: endpoint lookup, the deferral and reading the trigger's event."""

    def __init__(self, *, label: str | None = None, deadline: timedelta = timedelta(hours=6),
                 endpoints_file: str | None = None, conn_id: str = GlobusHook.default_conn_name,
                 poll_interval: float = 30.0,
                 deferrable: bool = conf.getboolean("operators", "default_deferrable", fallback=False),
                 **kwargs) -> None:
        super().__init__(**kwargs)
        self.globus_label = label  # BaseOperator.label is taken (task group display name)
        self.deadline = deadline
        self.endpoints_file = endpoints_file
        self.conn_id = conn_id
        self.poll_interval = poll_interval
        self.deferrable = deferrable

    def _endpoints(self, *names: str):
        from facility_data.transfer import get_endpoint

        return [get_endpoint(n, self.endpoints_file) for n in names]

    def _wait_globus(self, backend, task_id: str) -> dict:
        deadline_seconds = self.deadline.total_seconds()
        if self.deferrable:
            from facility_data.triggers.globus import GlobusTaskTrigger

            self.defer(trigger=GlobusTaskTrigger(globus_task_id=task_id, conn_id=self.conn_id,
                                                 deadline=time.time() + deadline_seconds,
                                                 poll_interval=self.poll_interval),
                       method_name="execute_complete", kwargs={"started": time.time()},
                       timeout=timedelta(seconds=deadline_seconds + 300))  # backstop: the trigger cancels first
        start = time.monotonic()
        from facility_data.transfer import TransferError

        try:
            state = backend.wait(task_id, deadline_seconds=deadline_seconds)
        except TransferError as exc:
            raise AirflowException(str(exc)) from exc
        return self._result(state.as_event(), time.monotonic() - start)

    def _result(self, event: dict, seconds: float) -> dict:
        raise NotImplementedError

    def execute_complete(self, context, event: dict[str, Any], started: float | None = None) -> dict:
        if event.get("status") != "success":
            raise AirflowException(f"Globus task {event.get('task_id')} {event.get('status')}: "
                                   f"{event.get('message')}")
        return self._result(event, time.time() - started if started else 0.0)


class GlobusTransferOperator(_GlobusTaskOperator):
    """Copy ``source_path`` on ``source_endpoint`` to ``destination_path`` on ``destination_endpoint``.

    Paths are relative to the endpoints' roots. ``recursive`` copies a directory. ``export_controlled`` data, and
    data whose status is not given (the default, or a template that renders empty or None), may not leave its site
    (facility_data.safety decides, before anything moves). Returns transfer statistics, plus
    ``verify_checksum``, ``checksum_algorithm`` and ``source_checksum`` (what was asked of Globus) for the copy's
    evidence in the ledger.

    ``checksum_algorithm`` (default SHA256) is what Globus verifies with; ``source_checksum`` ("sha256:<hex>",
    e.g. the scan's fingerprint) is given to Globus as the item's ``external_checksum`` so Globus checks both ends.
    """

    template_fields: Sequence[str] = ("source_endpoint", "source_path", "destination_endpoint", "destination_path",
                                      "globus_label", "export_controlled", "recursive", "source_checksum")
    ui_color = "#d8e8f8"

    def __init__(self, *, source_endpoint: str, source_path: str, destination_endpoint: str, destination_path: str,
                 recursive: bool = False, export_controlled: bool | None = None, verify_checksum: bool = True,
                 checksum_algorithm: str | None = "SHA256", source_checksum: str | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        self.checksum_algorithm = checksum_algorithm
        self.source_checksum = source_checksum
        self.source_endpoint = source_endpoint
        self.source_path = source_path
        self.destination_endpoint = destination_endpoint
        self.destination_path = destination_path
        self.recursive = recursive
        self.export_controlled = export_controlled
        self.verify_checksum = verify_checksum

    def execute(self, context) -> dict:
        from facility_data.refusal import permanent

        # a refusal (safety policy, bad path or endpoint) fails once and loud; a real error keeps its retries
        with permanent(f"transfer {self.source_endpoint}:{self.source_path} -> "
                       f"{self.destination_endpoint}:{self.destination_path}"):
            return self._transfer(context)

    def _transfer(self, context) -> dict:
        from facility_data.transfer import LocalTransfer, backend_kind, check_transfer_allowed
        from facility_data.transfer.globus import task_label

        export_controlled = _export_status(self.export_controlled)
        recursive = _as_bool(self.recursive, "recursive")
        src, dst = self._endpoints(self.source_endpoint, self.destination_endpoint)
        check_transfer_allowed(src, self.source_path, dst, self.destination_path, export_controlled=export_controlled)
        kind = backend_kind(src, dst)
        self.log.info("transfer %s:%s -> %s:%s (%s, recursive=%s, verify_checksum=%s)", src.name, self.source_path,
                      dst.name, self.destination_path, kind, recursive, self.verify_checksum)
        if kind == "local":
            stats = LocalTransfer().transfer(src, self.source_path, dst, self.destination_path, recursive=recursive,
                                             export_controlled=export_controlled,
                                             verify_checksum=self.verify_checksum, label=self.globus_label,
                                             deadline_seconds=self.deadline.total_seconds())
            return self._report(stats.as_dict())
        backend = GlobusHook(self.conn_id).get_transfer_backend(poll_interval=self.poll_interval)
        task_id, _ = backend.submit_transfer(src, self.source_path, dst, self.destination_path,
                                             label=task_label(self.globus_label, _identity(context)), recursive=recursive,
                                             export_controlled=export_controlled,
                                             verify_checksum=self.verify_checksum,
                                             deadline_seconds=self.deadline.total_seconds(),
                                             checksum_algorithm=self.checksum_algorithm,
                                             source_checksum=self.source_checksum or None)
        return self._wait_globus(backend, task_id)

    def _result(self, event: dict, seconds: float) -> dict:
        from facility_data.transfer.globus import TaskState, transfer_stats

        state = TaskState(event["task_id"], event["status"], event.get("globus_status", ""), event.get("message", ""),
                          event.get("stats") or {})
        stats = transfer_stats(state, seconds)
        self.log.info("Globus task %s SUCCEEDED: %s", state.task_id, stats.summary())
        return self._report({**stats.as_dict(), "verify_checksum": bool(self.verify_checksum),
                             "checksum_algorithm": self.checksum_algorithm,
                             "source_checksum": self.source_checksum or None})

    def _report(self, stats: dict) -> dict:
        from facility_data.metrics import transfer_metrics

        transfer_metrics(self.source_endpoint, self.destination_endpoint, stats)
        return stats


class GlobusDeleteOperator(_GlobusTaskOperator):
    """Delete ``path`` (relative to the endpoint root; a directory needs ``recursive``) on ``endpoint``.

    This operator only executes a deletion: whether a copy *may* be deleted is decided beforehand by
    ``facility_data.safety.may_delete`` in the calling DAG (the pruning sweep).
    """

    template_fields: Sequence[str] = ("endpoint", "path", "globus_label", "recursive")
    ui_color = "#f8dcd8"

    def __init__(self, *, endpoint: str, path: str, recursive: bool = False, missing_ok: bool = False,
                 **kwargs) -> None:
        super().__init__(**kwargs)
        self.endpoint = endpoint
        self.path = path
        self.recursive = recursive
        self.missing_ok = missing_ok

    def execute(self, context) -> dict:
        from facility_data.refusal import permanent

        with permanent(f"delete {self.endpoint}:{self.path}"):
            return self._delete(context)

    def _delete(self, context) -> dict:
        from facility_data.transfer import LocalTransfer, safe_relpath
        from facility_data.transfer.globus import task_label

        recursive = _as_bool(self.recursive, "recursive")
        safe_relpath(self.path)
        (ep,) = self._endpoints(self.endpoint)
        if ep.kind == "local":
            backend = LocalTransfer()
            if self.missing_ok and backend.stat(ep, self.path) is None:
                self.log.info("%s:%s already absent", ep.name, self.path)
                return {"endpoint": ep.name, "path": self.path, "files_deleted": 0}
            return backend.delete(ep, self.path, recursive=recursive)
        backend = GlobusHook(self.conn_id).get_transfer_backend(poll_interval=self.poll_interval)
        if self.missing_ok and backend.stat(ep, self.path) is None:
            self.log.info("%s:%s already absent", ep.name, self.path)
            return {"endpoint": ep.name, "path": self.path, "files_deleted": 0}
        task_id, _ = backend.submit_delete(ep, self.path, label=task_label(self.globus_label or "delete", _identity(context)),
                                           recursive=recursive, deadline_seconds=self.deadline.total_seconds())
        return self._wait_globus(backend, task_id)

    def _result(self, event: dict, seconds: float) -> dict:
        self.log.info("Globus delete task %s of %s:%s SUCCEEDED", event["task_id"], self.endpoint, self.path)
        return {"endpoint": self.endpoint, "path": self.path, "task_id": event["task_id"], "seconds": seconds,
                **(event.get("stats") or {})}
