"""The transfer interface every backend implements (local POSIX and Globus), and what it reports.

``transfer`` copies a file or (with ``recursive``) a directory from one endpoint to another and returns
:class:`TransferStats`; ``stat``/``list``/``delete`` inspect and remove. Paths are always relative to the
endpoint root. Export control is checked in :func:`check_transfer_allowed` before anything moves.
"""

from __future__ import annotations

import abc
from dataclasses import asdict, dataclass, field

from facility_data.safety import may_leave_site
from facility_data.transfer.endpoints import Endpoint, safe_relpath


class TransferError(RuntimeError):
    """A transfer, listing or delete failed; the message carries the backend's own error detail."""


class TransferTimeout(TransferError):
    """The deadline passed before the remote task finished (it has been cancelled)."""


@dataclass(frozen=True)
class FileStat:
    """What a backend knows of one path. ``checksum`` is "algorithm:hex" or None when the backend cannot know it.
    ``is_symlink``: a listing entry that is a symbolic link (listings never follow links; ``is_dir`` is then False)."""

    path: str
    is_dir: bool
    size: int | None
    checksum: str | None = None
    is_symlink: bool = False


@dataclass
class TransferStats:
    files: int = 0
    files_skipped: int = 0
    bytes: int = 0
    seconds: float = 0.0
    bytes_per_second: float = 0.0
    task_id: str | None = None
    details: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        """For logs: files, bytes, seconds and the rate (the backend's, else bytes / seconds) in MB/s."""
        rate = self.bytes_per_second or (self.bytes / self.seconds if self.seconds > 0 else 0.0)
        return f"{self.files} files, {self.bytes} B in {self.seconds:.2f} s ({rate / 1e6:.3f} MB/s)"


def check_transfer_allowed(src: Endpoint, src_path: str, dst: Endpoint, dst_path: str, *,
                           export_controlled: bool | None) -> None:
    """Validate both paths and ask the safety policy; raises before any side effect."""
    safe_relpath(src_path)
    safe_relpath(dst_path)
    may_leave_site(export_controlled=export_controlled, from_site=src.site, to_site=dst.site,
                   what=f"{src.name}:{src_path}", unknown_because="the transfer was not told").require()


class TransferBackend(abc.ABC):
    """One way of moving data between endpoints of a given kind."""

    @abc.abstractmethod
    def transfer(self, src: Endpoint, src_path: str, dst: Endpoint, dst_path: str, *, recursive: bool = False,
                 export_controlled: bool | None = None, verify_checksum: bool = True, label: str | None = None,
                 deadline_seconds: float | None = None) -> TransferStats: ...

    @abc.abstractmethod
    def stat(self, endpoint: Endpoint, path: str) -> FileStat | None:
        """The path's size and checksum (None where unknowable), or None when the path does not exist."""

    @abc.abstractmethod
    def list(self, endpoint: Endpoint, path: str = "") -> list[FileStat]:
        """Entries of a directory (not recursive), paths relative to the endpoint root."""

    @abc.abstractmethod
    def delete(self, endpoint: Endpoint, path: str, *, recursive: bool = False, label: str | None = None,
               deadline_seconds: float | None = None) -> dict: ...
