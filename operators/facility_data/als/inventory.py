"""What is at a location: size and checksum of a file or a whole directory tree, through the transfer backends.

A reconstruction is a directory (``rec<stem>/`` TIFF stack, ``rec<stem>.zarr/``), so a directory's identity is a
*tree digest*: SHA-256 over the sorted ``relative path, size, checksum`` lines of its files ("tree-sha256:<hex>").
Two trees with the same digest hold the same files with the same contents. If any file's checksum is unknowable
(a Globus listing), the tree's checksum is unknown (None) and callers fall back to the ledger, which holds a
checksum for such a copy only with *evidence* (:class:`Evidence`): computed from the bytes (``inspect``) or a Globus
task that SUCCEEDED with checksum verification (``globus:<task id>``, checked with Globus when recorded).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from facility_data.transfer.base import TransferBackend
from facility_data.transfer.endpoints import Endpoint, PathError


@dataclass(frozen=True)
class Evidence:
    """How the checksum of one copy is known: ``verified_by`` is ``inspect`` or ``globus:<task id>``."""

    checksum: str
    algorithm: str | None
    verified_by: str


def live_evidence(item: Item) -> Evidence | None:
    """The evidence of a checksum computed from the bytes at the location (None when it could not be)."""
    if item.checksum is None:
        return None
    return Evidence(item.checksum, item.checksum.partition(":")[0], "inspect")


def recorded_evidence(ledger, beamline: str, location: str, key: str, size: int | None) -> tuple[Evidence | None, str]:
    """(evidence, why not): the ledger's checksum for ``key`` at ``location``, trusted only while the copy is
    recorded present with this live ``size``, with evidence, and - for a Globus verification - an algorithm that
    counts (:data:`~facility_data.transfer.globus.EVIDENCE_ALGORITHMS`)."""
    from facility_data.transfer.globus import EVIDENCE_ALGORITHMS

    rec = ledger.copy(beamline, location, key)
    if rec is None or rec.state != "present":
        return None, f"the ledger has no present copy of {key} at {location}"
    if rec.size != size:
        return None, f"{location}:{key} is {size} B now, the ledger recorded {rec.size} B"
    if not rec.checksum or not rec.verified_by:
        return None, f"the ledger holds no verified checksum of {location}:{key} (no verify_checksum evidence)"
    if rec.verified_by != "inspect" and (rec.checksum_algorithm or "").upper() not in EVIDENCE_ALGORITHMS:
        return None, (f"{location}:{key} was verified by {rec.verified_by} with checksum algorithm "
                      f"{rec.checksum_algorithm or 'unknown'}, which is not accepted as evidence")
    return Evidence(rec.checksum, rec.checksum_algorithm, rec.verified_by), ""


def transfer_evidence(backend, endpoint: Endpoint, path: str, transfer: dict | None,
                      source_checksum: str | None) -> tuple[Evidence | None, str]:
    """(evidence, why not) that the copy at ``path`` on a Globus ``endpoint`` holds ``source_checksum``: the
    transfer's result (the GlobusTransferOperator's XCom) names a task that Globus confirms SUCCEEDED with
    verify_checksum into this path, using an algorithm that counts."""
    from facility_data.transfer.globus import EVIDENCE_ALGORITHMS

    task_id = (transfer or {}).get("task_id")
    if not task_id:
        return None, "no Globus task given for this copy"
    algorithm = str((transfer or {}).get("checksum_algorithm") or "")
    if algorithm.upper() not in EVIDENCE_ALGORITHMS:
        return None, f"Globus task {task_id} verified with checksum algorithm {algorithm or 'unknown'}, not accepted"
    if not source_checksum:
        return None, f"the source's checksum is not known, so Globus task {task_id} proves no checksum"
    verified, why = backend.copy_evidence(task_id, endpoint, path)
    if not verified:
        return None, why
    return Evidence(source_checksum, algorithm.upper(), f"globus:{task_id}"), ""


@dataclass(frozen=True)
class Item:
    path: str
    is_dir: bool
    size: int
    checksum: str | None
    files: int


def backend_for(endpoint: Endpoint, *, globus_conn_id: str = "globus_default") -> TransferBackend:
    """The transfer backend that can reach ``endpoint`` (Globus credentials from the Airflow connection)."""
    if endpoint.kind == "local":
        from facility_data.transfer.local import LocalTransfer

        return LocalTransfer()
    from facility_data.hooks.globus import GlobusHook  # lazy: globus_sdk is heavy

    return GlobusHook(globus_conn_id).get_transfer_backend()


def _walk(backend: TransferBackend, endpoint: Endpoint, path: str, prefix: str, out: list) -> None:
    for entry in backend.list(endpoint, path):
        name = entry.path.rsplit("/", 1)[-1]
        rel = f"{prefix}{name}"
        if entry.is_dir:
            _walk(backend, endpoint, entry.path, rel + "/", out)
        else:
            st = backend.stat(endpoint, entry.path)
            out.append((rel, st.size if st else entry.size, st.checksum if st else None))


def _mount_checksum(endpoint: Endpoint, path: str, size: int | None) -> str | None:
    """SHA-256 of a file on a Globus collection read through its mount on this worker (``local_root``): Globus
    reports no checksum, the mount can. None where the collection is not mounted here or the file there is not the
    one Globus listed (not a regular file, another size)."""
    if endpoint.kind != "globus" or endpoint.local_root is None or not endpoint.local_directory().is_dir():
        return None
    from facility_data.transfer.local import file_checksum

    try:
        local = endpoint.local_path(path)
    except PathError:
        return None
    if local.is_symlink() or not local.is_file() or local.stat().st_size != size:
        return None
    return file_checksum(local, "sha256")


def inspect(backend: TransferBackend, endpoint: Endpoint, path: str) -> Item | None:
    """Size and checksum of ``path`` (a file or a directory tree) on ``endpoint``; None if it does not exist."""
    st = backend.stat(endpoint, path)
    if st is None:
        return None
    if not st.is_dir:
        return Item(path=path, is_dir=False, size=st.size or 0, checksum=st.checksum or _mount_checksum(
            endpoint, path, st.size), files=1)
    files: list[tuple[str, int | None, str | None]] = []
    _walk(backend, endpoint, path, "", files)
    files.sort()
    known = all(c is not None and s is not None for _, s, c in files)
    h = hashlib.sha256()
    for rel, size, checksum in files:
        h.update(f"{rel}\t{size}\t{checksum}\n".encode())
    return Item(path=path, is_dir=True, size=sum(s or 0 for _, s, _ in files),
                checksum=f"tree-sha256:{h.hexdigest()}" if known else None, files=len(files))
