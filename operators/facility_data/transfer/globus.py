"""Globus transfers behind the transfer interface, and the one reading of a Globus task's state.

What the seed's code got wrong is decided here once: a task is done only when its status is ``SUCCEEDED``;
``FAILED``, ``INACTIVE`` and the faults Globus would otherwise retry forever (``FILE_NOT_FOUND``,
``PERMISSION_DENIED``, ...) are failures carrying Globus' own error text, and the task gets cancelled. Submissions
carry a deterministic label so that a retried Airflow task adopts the task it already submitted.
"""

from __future__ import annotations

import hashlib
import logging
import re
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from facility_data.transfer.base import (
    FileStat,
    TransferBackend,
    TransferError,
    TransferStats,
    TransferTimeout,
    check_transfer_allowed,
)
from facility_data.transfer.endpoints import Endpoint, PurePosixPath, safe_relpath

log = logging.getLogger(__name__)

# nice_status values of an ACTIVE task that will not heal by waiting: the task is cancelled and fails.
FATAL_NICE_STATUS = frozenset({"FILE_NOT_FOUND", "PERMISSION_DENIED", "NOT_A_DIRECTORY", "IS_A_DIRECTORY",
                               "QUOTA_EXCEEDED", "FILE_SIZE_CHANGED", "VERIFY_CHECKSUM"})
_LABEL_OK = re.compile(r"[^A-Za-z0-9 _.\-]")  # no commas: they separate task_list filter values


DEFAULT_ALGORITHM = "SHA256"  # the ledger's checksums are sha256: one algorithm end to end
# Algorithms whose verification counts as evidence for pruning: 32-bit checksums (ADLER32, CRC32) do not.
EVIDENCE_ALGORITHMS = frozenset({"MD5", "SHA1", "SHA256", "SHA512"})


def external_checksum(checksum: str | None, algorithm: str | None) -> str | None:
    """The hex digest of ``checksum`` ("sha256:<hex>") when it is of ``algorithm``, else None."""
    prefix, _, digest = (checksum or "").partition(":")
    return digest if digest and algorithm and prefix.upper() == algorithm.upper() else None


def task_label(label: str | None, identity: str) -> str:
    """A Globus-legal label ending in a short hash of ``identity``: the same Airflow task gets the same label."""
    tag = hashlib.sha256(identity.encode()).hexdigest()[:12]
    base = _LABEL_OK.sub("_", label or "facility-data")[:100]
    return f"{base} af-{tag}"


@dataclass
class TaskState:
    """How a Globus task stands: ``outcome`` is "success", "failed" or "pending"."""

    task_id: str
    outcome: str
    status: str
    message: str = ""
    stats: dict = field(default_factory=dict)

    def as_event(self) -> dict:
        return {"status": self.outcome, "task_id": self.task_id, "globus_status": self.status,
                "message": self.message, "stats": self.stats}


def task_stats(doc: dict) -> dict:
    keys = ("files", "files_transferred", "files_skipped", "directories", "bytes_transferred",
            "bytes_checksummed", "effective_bytes_per_second", "subtasks_failed", "request_time",
            "completion_time", "label", "type", "verify_checksum")
    return {k: doc.get(k) for k in keys if k in doc}


def _event_text(events: list[dict]) -> str:
    errors = [e for e in events if e.get("is_error")] or events
    return "; ".join(f"{e.get('code')}: {e.get('description')} {e.get('details') or ''}".strip()
                     for e in errors[:3])


def interpret_task(doc: dict, events: list[dict] | None = None) -> TaskState:
    """Read a task document (``get_task``) and, for failures, its event list. The only success is SUCCEEDED."""
    task_id, status = str(doc.get("task_id")), str(doc.get("status"))
    nice = doc.get("nice_status")
    stats = task_stats(doc)
    if status == "SUCCEEDED":
        return TaskState(task_id, "success", status, "SUCCEEDED", stats)
    detail = _event_text(events or [])
    if status == "FAILED":
        fatal = doc.get("fatal_error") or {}
        why = f"{fatal.get('code')}: {fatal.get('description')}" if fatal else (doc.get("nice_status_details") or "")
        return TaskState(task_id, "failed", status, f"Globus task {task_id} FAILED: {why} {detail}".strip(), stats)
    if status == "INACTIVE":
        return TaskState(task_id, "failed", status,
                         f"Globus task {task_id} is INACTIVE (credentials or consent expired: "
                         f"{doc.get('nice_status_details') or nice or 'no detail'}) {detail}".strip(), stats)
    if nice in FATAL_NICE_STATUS:
        return TaskState(task_id, "failed", status,
                         f"Globus task {task_id} stuck in {nice}: {doc.get('nice_status_details') or ''} "
                         f"{detail}".strip(), stats)
    return TaskState(task_id, "pending", status, nice or status, stats)


def transfer_stats(state: TaskState, seconds: float) -> TransferStats:
    s = state.stats
    return TransferStats(files=int(s.get("files_transferred") or 0), files_skipped=int(s.get("files_skipped") or 0),
                         bytes=int(s.get("bytes_transferred") or 0), seconds=seconds,
                         bytes_per_second=float(s.get("effective_bytes_per_second") or 0.0),
                         task_id=state.task_id, details=s)


class GlobusTransfer(TransferBackend):
    """Transfer/list/stat/delete on Globus collections through a ``globus_sdk.TransferClient``."""

    def __init__(self, client, *, poll_interval: float = 10.0):
        self.client = client
        self.poll_interval = poll_interval

    @staticmethod
    def _require_globus(*endpoints: Endpoint) -> None:
        for ep in endpoints:
            if ep.kind != "globus":
                raise TransferError(f"GlobusTransfer cannot reach {ep.kind} endpoint {ep.name}")

    # -- task lifecycle -------------------------------------------------------------------------------------
    def find_task(self, label: str) -> dict | None:
        """The newest non-failed task with exactly this label, if any (a retry adopts it)."""
        for doc in self.client.task_list(filter={"label": label}, orderby="request_time DESC", limit=10):
            if doc.get("label") == label and doc.get("status") in ("ACTIVE", "INACTIVE", "SUCCEEDED"):
                return dict(doc)
        return None

    def submit_transfer(self, src: Endpoint, src_path: str, dst: Endpoint, dst_path: str, *, label: str,
                        recursive: bool = False, export_controlled: bool | None = None,
                        verify_checksum: bool = True, deadline_seconds: float | None = None,
                        checksum_algorithm: str | None = DEFAULT_ALGORITHM,
                        source_checksum: str | None = None) -> tuple[str, bool]:
        """Submit (or adopt) a transfer task; returns (task_id, adopted). ``deadline_seconds`` is also given to
        Globus, so the service itself stops the task if nobody is left to cancel it. ``checksum_algorithm`` is the
        one Globus verifies with; a known ``source_checksum`` of a file ("sha256:<hex>") is given to Globus as the
        item's ``external_checksum``, so Globus checks source *and* destination against it."""
        import globus_sdk

        check_transfer_allowed(src, src_path, dst, dst_path, export_controlled=export_controlled)
        self._require_globus(src, dst)
        existing = self.find_task(label)
        if existing:
            log.info("adopting Globus task %s (%s) already submitted with label %r", existing["task_id"],
                     existing.get("status"), label)
            return str(existing["task_id"]), True
        extra = {}
        if deadline_seconds is not None:
            extra["deadline"] = datetime.now(UTC) + timedelta(seconds=deadline_seconds)
        tdata = globus_sdk.TransferData(src.uuid, dst.uuid, label=label, sync_level="checksum",
                                        verify_checksum=verify_checksum, notify_on_succeeded=False,
                                        notify_on_failed=False, notify_on_inactive=False, **extra)
        item = {"checksum_algorithm": checksum_algorithm} if checksum_algorithm else {}
        external = external_checksum(source_checksum, checksum_algorithm)
        if external and not recursive:
            item["external_checksum"] = external
        tdata.add_item(src.remote_path(src_path), dst.remote_path(dst_path), recursive=recursive, **item)
        task_id = str(self.client.submit_transfer(tdata)["task_id"])
        log.info("submitted Globus transfer %s: %s:%s -> %s:%s (label %r)", task_id, src.name, src_path,
                 dst.name, dst_path, label)
        return task_id, False

    def submit_delete(self, endpoint: Endpoint, path: str, *, label: str, recursive: bool = False,
                      deadline_seconds: float | None = None) -> tuple[str, bool]:
        """Submit (or adopt) a delete task; ``deadline_seconds`` is given to Globus as the task's deadline."""
        import globus_sdk

        safe_relpath(path)  # never the endpoint root
        self._require_globus(endpoint)
        existing = self.find_task(label)
        if existing:
            log.info("adopting Globus delete task %s already submitted with label %r", existing["task_id"], label)
            return str(existing["task_id"]), True
        extra = {}
        if deadline_seconds is not None:
            extra["deadline"] = datetime.now(UTC) + timedelta(seconds=deadline_seconds)
        ddata = globus_sdk.DeleteData(endpoint.uuid, label=label, recursive=recursive,
                                      notify_on_succeeded=False, notify_on_failed=False, notify_on_inactive=False,
                                      **extra)
        ddata.add_item(endpoint.remote_path(path))
        task_id = str(self.client.submit_delete(ddata)["task_id"])
        log.info("submitted Globus delete %s of %s:%s (label %r)", task_id, endpoint.name, path, label)
        return task_id, False

    def copy_evidence(self, task_id: str, dst: Endpoint, dst_path: str) -> tuple[bool, str]:
        """(verified, why): did Globus task ``task_id`` SUCCEED with checksum verification in copying to
        ``dst_path`` on ``dst``? Read from Globus itself (task document and its successful transfers), so a stale or
        forged XCom value cannot make a copy count as verified."""
        self._require_globus(dst)
        doc = self.client.get_task(task_id).data
        if doc.get("type") != "TRANSFER" or doc.get("status") != "SUCCEEDED":
            return False, f"Globus task {task_id} is a {doc.get('type')} task in status {doc.get('status')}"
        if not doc.get("verify_checksum"):
            return False, f"Globus task {task_id} ran without verify_checksum"
        if str(doc.get("destination_endpoint_id")) != str(dst.uuid):
            return False, f"Globus task {task_id} copied to collection {doc.get('destination_endpoint_id')}, " \
                          f"not {dst.name} ({dst.uuid})"
        target = dst.remote_path(dst_path).rstrip("/")
        for entry in self.client.task_successful_transfers(task_id):
            done = str(entry.get("destination_path", "")).rstrip("/")
            if done == target or done.startswith(target + "/"):
                return True, f"Globus task {task_id} SUCCEEDED with verify_checksum"
        return False, f"Globus task {task_id} lists no successful transfer to {target}"

    def task_state(self, task_id: str) -> TaskState:
        doc = self.client.get_task(task_id).data
        events: list[dict] = []
        if doc.get("status") != "SUCCEEDED" and (doc.get("status") != "ACTIVE" or doc.get("nice_status")
                                                  in FATAL_NICE_STATUS):
            events = [dict(e) for e in self.client.task_event_list(task_id, limit=10)]
        return interpret_task(doc, events)

    def cancel(self, task_id: str) -> bool:
        """Ask Globus to cancel; False (logged) if it refused, e.g. because the task already ended."""
        try:
            res = self.client.cancel_task(task_id)
            log.warning("cancelled Globus task %s: %s", task_id, res.get("message", res.get("code")))
            return True
        except Exception as exc:  # the failure being reported matters more than the cancel
            log.warning("could not cancel Globus task %s: %s", task_id, exc)
            return False

    def wait(self, task_id: str, *, deadline_seconds: float | None = None) -> TaskState:
        """Poll until terminal; cancel and raise on failure or at the deadline."""
        start = time.monotonic()
        while True:
            state = self.task_state(task_id)
            if state.outcome == "success":
                return state
            if state.outcome == "failed":
                if state.status not in ("FAILED", "SUCCEEDED"):
                    self.cancel(task_id)
                raise TransferError(state.message)
            if deadline_seconds is not None and time.monotonic() - start >= deadline_seconds:
                self.cancel(task_id)
                raise TransferTimeout(f"Globus task {task_id} not finished after {deadline_seconds:.0f} s "
                                      f"({state.message}); cancelled")
            time.sleep(self.poll_interval)

    # -- the TransferBackend interface ----------------------------------------------------------------------
    def transfer(self, src, src_path, dst, dst_path, *, recursive=False, export_controlled=None,
                 verify_checksum=True, label=None, deadline_seconds=None) -> TransferStats:
        start = time.monotonic()
        label = label or task_label(None, f"{src.name}:{src_path}->{dst.name}:{dst_path}")
        task_id, _ = self.submit_transfer(src, src_path, dst, dst_path, label=label, recursive=recursive,
                                          export_controlled=export_controlled, verify_checksum=verify_checksum,
                                          deadline_seconds=deadline_seconds)
        state = self.wait(task_id, deadline_seconds=deadline_seconds)
        return transfer_stats(state, time.monotonic() - start)

    def stat(self, endpoint, path) -> FileStat | None:
        import globus_sdk

        self._require_globus(endpoint)
        try:
            doc = self.client.operation_stat(endpoint.uuid, endpoint.remote_path(path))
        except globus_sdk.TransferAPIError as exc:
            if exc.http_status == 404 or "NotFound" in str(exc.code):
                return None
            raise TransferError(f"stat {endpoint.name}:{path} failed: {exc.code}: {exc.message}") from exc
        is_dir = doc.get("type") == "dir"
        # Globus does not report a file checksum: None makes the safety policy keep the file.
        return FileStat(path=str(path), is_dir=is_dir, size=None if is_dir else doc.get("size"), checksum=None)

    def list(self, endpoint, path="") -> list[FileStat]:
        import globus_sdk

        self._require_globus(endpoint)
        rel = safe_relpath(path, allow_root=True)
        try:
            res = self.client.operation_ls(endpoint.uuid, path=endpoint.remote_path(path))
        except globus_sdk.TransferAPIError as exc:
            raise TransferError(f"list {endpoint.name}:{path} failed: {exc.code}: {exc.message}") from exc
        out = []
        for e in res:
            link = e.get("type") == "invalid_symlink" or bool(e.get("link_target"))
            is_dir = e.get("type") == "dir" and not link
            out.append(FileStat(path=str(PurePosixPath(rel) / e["name"]), is_dir=is_dir, is_symlink=link,
                                size=None if is_dir or link else e.get("size")))
        return out

    def delete(self, endpoint, path, *, recursive=False, label=None, deadline_seconds=None) -> dict[str, Any]:
        label = label or task_label("delete", f"{endpoint.name}:{path}")
        task_id, _ = self.submit_delete(endpoint, path, label=label, recursive=recursive,
                                        deadline_seconds=deadline_seconds)
        state = self.wait(task_id, deadline_seconds=deadline_seconds)
        return {"endpoint": endpoint.name, "path": str(path), "task_id": task_id, **state.stats}
