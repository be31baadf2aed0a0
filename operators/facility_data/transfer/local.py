"""Local POSIX transfers: the embedded default behind the transfer interface.

Each file is copied to a temporary name beside its destination (small files through one buffer, hashed on the way;
large ones in the kernel, like cp), source and copy are both checksummed, and only when the checksums agree is the
copy renamed into place (an atomic ``os.replace`` on the same filesystem). So the destination path holds either the old file or a verified new one, never a partial
or corrupted copy. A destination that already has the same size and checksum is skipped (checksum sync), which
makes a retried transfer cheap and idempotent.
"""

from __future__ import annotations

import hashlib
import logging
import mmap
import os
import shutil
import stat
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from facility_data.transfer.base import (
    FileStat,
    TransferBackend,
    TransferError,
    TransferStats,
    TransferTimeout,
    check_transfer_allowed,
)
from facility_data.transfer.endpoints import Endpoint, PathError, safe_relpath

log = logging.getLogger(__name__)

CHECKSUM_ALGORITHM = "sha256"
_CHUNK = 1 << 20
_PARTIAL_MARK = ".fdpart-"
_SMALL_FILE = 4 << 20  # up to this size a file is copied through one buffer, hashed on the way
#: files copied at once: kernel copies and checksums release the GIL, but more threads than cores only contend for it
_WORKERS = min(8, max(2, os.cpu_count() or 1))


def _verify_algorithm() -> str:
    try:
        import google_crc32c  # noqa: F401 - installed with globus-compute-sdk; hardware CRC32C
    except ImportError:
        return "sha256"
    return "crc32c"


def file_checksum(path: Path, algorithm: str = CHECKSUM_ALGORITHM) -> str:
    """"<algorithm>:<hex>" of a file: sha256 (hashed straight from the page cache through mmap) or crc32c."""
    if algorithm == "crc32c":
        import google_crc32c

        crc, fd = 0, os.open(path, os.O_RDONLY)
        try:
            while chunk := os.read(fd, _CHUNK):
                crc = google_crc32c.extend(crc, chunk)
        finally:
            os.close(fd)
        return f"crc32c:{crc:08x}"
    h = hashlib.new(algorithm)
    with open(path, "rb") as fh:
        size = os.fstat(fh.fileno()).st_size
        if size:
            with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mm, memoryview(mm) as view:
                for start in range(0, size, _CHUNK):
                    h.update(view[start:start + _CHUNK])
    return f"{algorithm}:{h.hexdigest()}"


def _kernel_copy(fin: int, fout: int, size: int) -> None:
    """Copy ``size`` bytes in the kernel (copy_file_range, what cp uses), falling back to a buffered copy."""
    copied = 0
    try:
        if not hasattr(os, "copy_file_range"):  # not Linux
            raise OSError("no copy_file_range")
        while copied < size:
            n = os.copy_file_range(fin, fout, size - copied)
            if n == 0:
                break
            copied += n
    except OSError:  # e.g. a filesystem or kernel without copy_file_range: start over with plain reads
        os.lseek(fin, 0, os.SEEK_SET)
        os.lseek(fout, 0, os.SEEK_SET)
        os.ftruncate(fout, 0)
        while chunk := os.read(fin, _CHUNK):
            _write_all(fout, chunk)


def _read_all(fd: int, limit: int) -> bytes:
    """Up to ``limit`` bytes, until end of file (a read may return less than asked, e.g. on network filesystems)."""
    parts, left = [], limit
    while left and (chunk := os.read(fd, left)):
        parts.append(chunk)
        left -= len(chunk)
    return parts[0] if len(parts) == 1 else b"".join(parts)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _checksum_bytes(data: bytes, algorithm: str) -> str:
    if algorithm == "crc32c":
        import google_crc32c

        return f"crc32c:{google_crc32c.value(data):08x}"
    return f"{algorithm}:{hashlib.new(algorithm, data).hexdigest()}"


def _copy_hashing(src: Path, tmp: Path, algorithm: str) -> str:
    """Copy ``src`` to the new file ``tmp`` (its mode and times too) and return the checksum of the source.

    Small files go through one buffer, hashed as written (one read of the source); large ones are copied in the
    kernel and the source is hashed after (a source that changed meanwhile then fails verification).
    """
    fin = os.open(src, os.O_RDONLY)
    try:
        st = os.fstat(fin)
        fout = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            if st.st_size <= _SMALL_FILE:
                data = _read_all(fin, st.st_size + 1)  # +1: a file that grew since the stat shows as a size mismatch
                src_sum = _checksum_bytes(data, algorithm)
                _write_all(fout, data)
            else:
                _kernel_copy(fin, fout, st.st_size)
                src_sum = None
            os.fchmod(fout, stat.S_IMODE(st.st_mode))
            os.utime(fout, ns=(st.st_atime_ns, st.st_mtime_ns))
        finally:
            os.close(fout)
    finally:
        os.close(fin)
    return src_sum or file_checksum(src, algorithm)


def _partial_name(dest: Path) -> Path:
    return dest.with_name(f".{dest.name}{_PARTIAL_MARK}{uuid.uuid4().hex[:12]}")


def install_file(src: Path, dest: Path, *, verify_checksum: bool = True,
                 algorithm: str = CHECKSUM_ALGORITHM) -> tuple[int, str]:
    """Copy one file atomically to ``dest`` (mode and times kept); return (bytes, source checksum).

    Raises TransferError when the copy's checksum or size differs from the source; the copy is then discarded.
    """
    if not dest.parent.is_dir():
        dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = _partial_name(dest)
    try:
        src_sum = _copy_hashing(src, tmp, algorithm)
        size = tmp.stat().st_size
        if verify_checksum:
            dst_sum = file_checksum(tmp, algorithm)
            if dst_sum != src_sum:
                raise TransferError(f"checksum mismatch copying {src} -> {dest}: source {src_sum}, copy {dst_sum}; "
                                    "the copy was discarded")
        src_size = src.stat().st_size
        if size != src_size:
            raise TransferError(f"size mismatch copying {src} -> {dest}: source {src_size} B, copy {size} B "
                                "(did the source change during the copy?)")
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return size, src_sum


class LocalTransfer(TransferBackend):
    """Copies between local endpoints (``kind: local``) with checksum verification and atomic install.

    ``algorithm`` verifies each copy: CRC32C by default (hardware-accelerated, the integrity check cloud object
    stores use; it catches corrupted copies at several GB/s), or "sha256". ``stat`` always reports SHA-256: that is
    the checksum the safety policy compares between copies before anything is deleted.
    """

    def __init__(self, algorithm: str | None = None):
        self.algorithm = algorithm or _verify_algorithm()

    def _require_local(self, *endpoints: Endpoint) -> None:
        for ep in endpoints:
            if ep.kind != "local":
                raise TransferError(f"LocalTransfer cannot reach {ep.kind} endpoint {ep.name}")

    def _plan(self, src_root: Path, dst_root: Path, recursive: bool, src_label: str) -> list[tuple[Path, Path]]:
        if src_root.is_file():
            return [(src_root, dst_root)]
        if src_root.is_dir():
            if not recursive:
                raise TransferError(f"{src_label} is a directory: pass recursive=True to transfer it")
            pairs = []
            for dirpath, dirnames, filenames in os.walk(src_root):
                dirnames.sort()
                rel = Path(dirpath).relative_to(src_root)
                for name in sorted(filenames):
                    if _PARTIAL_MARK in name:
                        continue  # another transfer's temporary file, never data
                    pairs.append((Path(dirpath) / name, dst_root / rel / name))
            return pairs
        raise TransferError(f"source {src_label} does not exist (FILE_NOT_FOUND)")

    def _copy_one(self, s: Path, d: Path, verify_checksum: bool, start: float,
                  deadline_seconds: float | None) -> int | None:
        """Bytes copied, or None when ``d`` already holds the same content (checksum sync)."""
        if deadline_seconds is not None and time.monotonic() - start > deadline_seconds:
            raise TransferTimeout(f"deadline of {deadline_seconds:.0f} s passed before copying {s}")
        if (d.is_file() and d.stat().st_size == s.stat().st_size
                and file_checksum(d, self.algorithm) == file_checksum(s, self.algorithm)):
            return None
        size, checksum = install_file(s, d, verify_checksum=verify_checksum, algorithm=self.algorithm)
        log.debug("copied %s -> %s (%d B, %s)", s, d, size, checksum)
        return size

    def transfer(self, src, src_path, dst, dst_path, *, recursive=False, export_controlled=None,
                 verify_checksum=True, label=None, deadline_seconds=None) -> TransferStats:
        check_transfer_allowed(src, src_path, dst, dst_path, export_controlled=export_controlled)
        self._require_local(src, dst)
        src_root, dst_root = src.local_path(src_path), dst.local_path(dst_path)
        if src_root.resolve() == dst_root.resolve():
            raise TransferError(f"source and destination are the same file: {src_root}")
        start = time.monotonic()
        pairs = self._plan(src_root, dst_root, recursive, f"{src.name}:{src_path}")
        if src_root.is_dir():
            for parent in sorted({d.parent for _, d in pairs} | {dst_root}):
                parent.mkdir(parents=True, exist_ok=True)  # once per directory, not per file
        stats = TransferStats(details={"label": label, "source": f"{src.name}:{src_path}",
                                       "destination": f"{dst.name}:{dst_path}",
                                       "verified_with": self.algorithm if verify_checksum else None})
        # Files are independent: copy them on several threads (file I/O and copy_file_range release the GIL).
        with ThreadPoolExecutor(max_workers=_WORKERS) as pool:
            futures = [pool.submit(self._copy_one, s, d, verify_checksum, start, deadline_seconds) for s, d in pairs]
            try:
                for fut in futures:
                    copied = fut.result()
                    if copied is None:
                        stats.files_skipped += 1
                    else:
                        stats.files += 1
                        stats.bytes += copied
            except BaseException:
                for fut in futures:
                    fut.cancel()
                raise
        stats.seconds = time.monotonic() - start
        stats.bytes_per_second = stats.bytes / stats.seconds if stats.seconds > 0 else 0.0
        log.info("local transfer %s:%s -> %s:%s: %s copied, %d already present", src.name, src_path, dst.name,
                 dst_path, stats.summary(), stats.files_skipped)
        return stats

    def stat(self, endpoint, path) -> FileStat | None:
        self._require_local(endpoint)
        safe_relpath(path, allow_root=True)
        p = endpoint.local_path(path)
        if p.is_dir():
            return FileStat(path=str(path), is_dir=True, size=None, checksum=None)
        if p.is_file():
            return FileStat(path=str(path), is_dir=False, size=p.stat().st_size, checksum=file_checksum(p))
        return None

    def list(self, endpoint, path="") -> list[FileStat]:
        self._require_local(endpoint)
        rel = safe_relpath(path, allow_root=True)
        p = endpoint.local_path(path)
        if not p.is_dir():
            raise TransferError(f"{endpoint.name}:{path} is not a directory")
        out = []
        for entry in sorted(os.scandir(p), key=lambda e: e.name):
            if _PARTIAL_MARK in entry.name:
                continue
            # Never through a link: a dangling one would make the whole directory unlistable.
            link = entry.is_symlink()
            is_dir = not link and entry.is_dir(follow_symlinks=False)
            out.append(FileStat(path=str(rel / entry.name), is_dir=is_dir, is_symlink=link,
                                size=None if is_dir or link else entry.stat(follow_symlinks=False).st_size))
        return out

    def delete(self, endpoint, path, *, recursive=False, label=None, deadline_seconds=None) -> dict:
        self._require_local(endpoint)
        safe_relpath(path)  # never the endpoint root
        p = endpoint.local_path(path)
        if p.is_dir() and not p.is_symlink():
            if not recursive:
                raise TransferError(f"{endpoint.name}:{path} is a directory: pass recursive=True to delete it")
            files = sum(len(f) for _, _, f in os.walk(p))
            shutil.rmtree(p)
        elif p.exists() or p.is_symlink():
            files = 1
            p.unlink()
        else:
            raise TransferError(f"{endpoint.name}:{path} does not exist (FILE_NOT_FOUND)")
        log.info("deleted %s:%s (%d files)", endpoint.name, path, files)
        return {"endpoint": endpoint.name, "path": str(path), "files_deleted": files}


__all__ = ["LocalTransfer", "PathError", "file_checksum", "install_file"]
