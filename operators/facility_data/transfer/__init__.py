"""Moving data between named endpoints: one interface, a local POSIX backend (the embedded default) and Globus.

Import-light: the Globus SDK is imported only when a Globus backend is used.
"""

from facility_data.transfer.base import (
    FileStat,
    TransferBackend,
    TransferError,
    TransferStats,
    TransferTimeout,
    check_transfer_allowed,
)
from facility_data.transfer.endpoints import Endpoint, PathError, get_endpoint, load_endpoints, safe_relpath
from facility_data.transfer.local import LocalTransfer

__all__ = [
    "Endpoint",
    "FileStat",
    "LocalTransfer",
    "PathError",
    "TransferBackend",
    "TransferError",
    "TransferStats",
    "TransferTimeout",
    "backend_kind",
    "check_transfer_allowed",
    "get_endpoint",
    "load_endpoints",
    "safe_relpath",
]


def backend_kind(*endpoints: Endpoint) -> str:
    """"local" or "globus": the backend that can reach all of ``endpoints`` (mixing kinds is an error)."""
    kinds = {ep.kind for ep in endpoints}
    if len(kinds) != 1:
        names = ", ".join(f"{ep.name} ({ep.kind})" for ep in endpoints)
        raise TransferError(f"cannot transfer between endpoints of different kinds: {names}")
    return kinds.pop()
