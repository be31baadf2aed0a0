"""What is at a location: size and checksum of a file or a whole directory tree, through the transfer backends.

A reconstruction is a directory (``rec<stem>/`` TIFF stack, ``rec<stem>.zarr/``), so a directory's identity is a
*tree digest*: SHA-256 over the sorted ``relative path, size, checksum`` lines of its files ("tree-sha256:<hex>").
Two trees with the same digest hold the same files with the same contents. If any file's checksum is unknowable
(a Globus listing), the tree's checksum is unknown (None) and callers fall back to the ledger.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from facility_data.transfer.base import TransferBackend
from facility_data.transfer.endpoints import Endpoint


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


def inspect(backend: TransferBackend, endpoint: Endpoint, path: str) -> Item | None:
    """Size and checksum of ``path`` (a file or a directory tree) on ``endpoint``; None if it does not exist."""
    st = backend.stat(endpoint, path)
    if st is None:
        return None
    if not st.is_dir:
        return Item(path=path, is_dir=False, size=st.size or 0, checksum=st.checksum, files=1)
    files: list[tuple[str, int | None, str | None]] = []
    _walk(backend, endpoint, path, "", files)
    files.sort()
    known = all(c is not None and s is not None for _, s, c in files)
    h = hashlib.sha256()
    for rel, size, checksum in files:
        h.update(f"{rel}\t{size}\t{checksum}\n".encode())
    return Item(path=path, is_dir=True, size=sum(s or 0 for _, s, _ in files),
                checksum=f"tree-sha256:{h.hexdigest()}" if known else None, files=len(files))
