"""Building, installing and verifying an exposure's zip.

The zip holds every object of the exposure's embargo folder under its own (flat) name, byte-identical (FITS members
ZIP_STORED, others DEFLATED; downstream checks compare members with the embargo objects, and embargo pruning relies
on that), plus ``_butler_zip_index.json`` (what ``Butler.ingest_zip`` reads) and ``_metadata_index.json`` (the FITS
header cards, taken from the bytes as they stream, in astro_metadata_translator's index format: see metaindex).

It is written to an exclusively created temporary file in the destination directory (same filesystem; named after
its owner's lease, so a killed owner's leftover is recognised and removed at the next attempt), its size, md5
and adler32 computed from the bytes as they are written (the writer is unseekable so zipfile never rewrites a header
behind our back; it uses data descriptors instead), then installed with a hard link, which fails if the zip already
exists: a racer never overwrites, and the loser verifies the winner's zip against the source instead.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import queue
import threading
import uuid
import zipfile
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

from zlib_ng import zlib_ng  # SIMD adler32/crc32, same values as zlib's, many times faster

from facility_data.rubin.metaindex import FITS_SUFFIXES, HeaderCollector, metadata_index
from facility_data.rubin.storage import EmbargoStore, StoredObject

log = logging.getLogger(__name__)

BUTLER_INDEX = "_butler_zip_index.json"
METADATA_INDEX = "_metadata_index.json"
INDEX_NAMES = (BUTLER_INDEX, METADATA_INDEX)
_DATE = (1980, 1, 1, 0, 0, 0)  # fixed member timestamps: a rebuilt zip is byte-identical
_CHUNK = 10 * 1024 * 1024


class InconsistentArtifact(RuntimeError):
    """An artifact exists but does not match the source; it is reported, never overwritten."""


class WriteFailed(OSError):
    """Writing an artifact failed (ENOSPC, EIO, a read-only destination, ...); the message names the path."""


def _remove_temp(tmp: Path) -> None:
    """Remove our temporary file; a failure (a destination turned read-only) is logged, never raised over the
    write's own error."""
    try:
        tmp.unlink(missing_ok=True)
    except OSError as exc:
        log.warning("could not remove temporary %s: %s", tmp, exc)


def _write_failed(exc: OSError, dest: Path, tmp: Path) -> WriteFailed:
    return WriteFailed(exc.errno, f"{exc.strerror or exc} while writing {dest} (temporary {tmp.name}, removed)")


@dataclass(frozen=True)
class FileHashes:
    path: str
    bytes: int
    md5: str
    adler32: str  # 8 hex digits, as Rucio expects

    def to_dict(self) -> dict:
        return asdict(self)


class _HashingWriter:
    """Unseekable file wrapper that hashes and counts every byte written.

    md5 (the slowest part, ~700 MB/s: its floor) and the disk write each run in a helper thread, overlapping each other
    and the CRC of the next chunk (all release the GIL on large buffers); adler32 (zlib-ng, SIMD) and the byte count
    stay in the caller's thread. Chunks (bytes or read-only views) are shared by both helpers, never copied.
    """

    _QUEUE = 4  # chunks in flight per helper (x 8 MiB)

    def __init__(self, raw):
        self.raw, self.count, self.md5, self.adler, self._unsynced = raw, 0, hashlib.md5(), 1, 0
        self._error: BaseException | None = None
        self._pending = bytearray()
        self._queues = [queue.Queue(maxsize=self._QUEUE) for _ in range(2)]
        self._threads = [threading.Thread(target=self._drain, args=(q, fn), daemon=True, name=f"zip-{name}")
                         for q, fn, name in zip(self._queues, (self.md5.update, self._write), ("md5", "write"),
                                                strict=True)]
        for t in self._threads:
            t.start()

    _SYNC_EVERY = 64 << 20

    def _write(self, data) -> None:
        """Write, and every 64 MiB wait for the disk: the final fsync then has little left, and the wait overlaps
        the md5 thread (the slowest part) instead of following it."""
        self.raw.write(data)
        self._unsynced += len(data)
        if self._unsynced >= self._SYNC_EVERY:
            self.raw.flush()
            getattr(os, "fdatasync", os.fsync)(self.raw.fileno())  # macOS has no fdatasync
            self._unsynced = 0

    def _drain(self, q: queue.Queue, fn) -> None:
        while (data := q.get()) is not None:
            if self._error is None:
                try:
                    fn(data)
                except BaseException as exc:  # reported to the writing thread
                    self._error = exc

    _SMALL = 1 << 20  # headers, descriptors and sidecars are coalesced into blocks of about this size

    def _send(self, data: bytes) -> None:
        for q in self._queues:
            q.put(data)

    def write(self, data) -> int:
        if self._error is not None:
            raise self._error
        n = len(data)
        self.adler = zlib_ng.adler32(data, self.adler)
        self.count += n
        if n < self._SMALL:
            self._pending += data
            if len(self._pending) >= self._SMALL:
                self._send(bytes(self._pending))
                self._pending.clear()
        else:
            if self._pending:
                self._send(bytes(self._pending))
                self._pending.clear()
            # the helpers need an immutable buffer: bytes and read-only views (the store's mapped files) are passed
            # as they are; anything else (zipfile may hand a reused buffer) is copied
            self._send(data if isinstance(data, bytes) or (isinstance(data, memoryview) and data.readonly)
                       else bytes(data))
        return n

    def finish(self) -> None:
        """Wait until every byte is hashed and written; re-raise a write error."""
        if self._pending and self._error is None:
            self._send(bytes(self._pending))
            self._pending.clear()
        for q, t in zip(self._queues, self._threads, strict=True):
            if t.is_alive():
                q.put(None)
        for t in self._threads:
            t.join()
        if self._error is not None:
            raise self._error

    def tell(self) -> int:
        return self.count

    def seek(self, *args):
        raise OSError("not seekable")

    def seekable(self) -> bool:
        return False

    def flush(self) -> None:
        pass  # the write helper owns the file until finish(); the caller flushes after


def file_hashes(path: Path) -> FileHashes:
    """Size, md5 and adler32 of a file already on disk (used only when the file was not written by this call)."""
    md5, adler, n = hashlib.md5(), 1, 0
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            md5.update(chunk)
            adler = zlib_ng.adler32(chunk, adler)
            n += len(chunk)
    return FileHashes(str(path), n, md5.hexdigest(), f"{adler:08x}")


def _temp_for(dest: Path, owner: str | None = None) -> Path:
    """``.<name>.<owner>.tmp``: the owner (a lease token, ``<host>_<pid>_<random>``) says whose leftover it is."""
    return dest.parent / f".{dest.name}.{owner or uuid.uuid4().hex}.tmp"


def temp_owner(tmp: Path, dest: Path) -> str | None:
    """The owner named by a temporary file of ``dest`` (None: not one of its temporary files)."""
    prefix = f".{dest.name}."
    if not (tmp.name.startswith(prefix) and tmp.name.endswith(".tmp")):
        return None
    return tmp.name[len(prefix):-len(".tmp")]


def temporaries(dest: Path) -> list[Path]:
    return sorted(dest.parent.glob(f".{dest.name}.*.tmp"))


def _install(tmp: Path, dest: Path) -> bool:
    """Hard-link tmp to dest; False if dest already exists (someone else installed it)."""
    try:
        os.link(tmp, dest)
        return True
    except FileExistsError:
        return False


def install_bytes(dest: Path, data: bytes, owner: str | None = None) -> bool:
    """Write small content atomically without overwrite; True if this call created ``dest``."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_for(dest, owner)
    try:
        try:
            with open(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644), "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
        except OSError as exc:
            raise _write_failed(exc, dest, tmp) from exc
        return _install(tmp, dest)
    finally:
        _remove_temp(tmp)


def _member_info(name: str, size: int) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name, date_time=_DATE)
    info.compress_type = zipfile.ZIP_STORED if name.endswith((".fits", ".fz")) else zipfile.ZIP_DEFLATED
    info.external_attr = 0o644 << 16
    info.file_size = size
    return info


def _write_members(zf: zipfile.ZipFile, store: EmbargoStore, objects: list[StoredObject], names: list[str],
                   sidecars: dict[str, bytes], butler_index: bytes) -> None:
    headers: dict[str, dict | None] = {}
    # the store reads the next objects ahead (S3) while this thread writes and hashes the current one
    with zf, contextlib.closing(store.iter_objects(objects)) as reads:
        for obj, (key, chunks) in zip(objects, reads, strict=True):
            if key != obj.key:  # iter_objects keeps the order; a member's bytes under another name is never written
                raise RuntimeError(f"store read {key} where {obj.key} was due")
            info = _member_info(obj.name, obj.size)
            n = 0
            keep = obj.name.endswith(".json") and obj.size < 1 << 20
            parts = []
            fits = HeaderCollector(obj.name) if obj.name.endswith(FITS_SUFFIXES) else None
            with zf.open(info, "w", force_zip64=obj.size >= zipfile.ZIP64_LIMIT) as member:
                for chunk in chunks:
                    member.write(chunk)
                    n += len(chunk)
                    if keep:
                        parts.append(chunk)
                    if fits is not None:
                        fits.feed(chunk)  # keeps the header blocks only
            if n != obj.size:
                raise InconsistentArtifact(f"{obj.key}: read {n} bytes, listed {obj.size} (object changed?)")
            if keep:
                sidecars[obj.name] = b"".join(parts)
            if fits is not None:
                headers[obj.name] = fits.cards()
        zf.writestr(_member_info(BUTLER_INDEX, len(butler_index)), butler_index)
        meta = metadata_index(headers, sidecars)
        zf.writestr(_member_info(METADATA_INDEX, len(meta)), meta)


def build_zip(store: EmbargoStore, objects: Iterable[StoredObject], butler_index: bytes, dest: Path,
              owner: str | None = None) -> tuple[FileHashes | None, Path]:
    """Build the zip for ``objects`` into a temp file beside ``dest`` (named after ``owner``, the caller's lease) and
    install it without overwrite.

    Returns (hashes, dest) if this call installed it, (None, dest) if ``dest`` appeared meanwhile (then the caller
    verifies the existing one). The temporary file is removed in every case; a write error (ENOSPC ...) is raised as
    :class:`WriteFailed` naming ``dest``.
    """
    objects = sorted(objects, key=lambda o: o.name)
    names = [o.name for o in objects]
    if len(set(names)) != len(names) or set(names) & set(INDEX_NAMES):
        raise InconsistentArtifact(f"{dest.name}: duplicate or reserved member names in the embargo folder")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_for(dest, owner)
    sidecars: dict[str, bytes] = {}
    writer, written = None, False
    try:
        try:
            with open(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644), "wb") as raw:
                writer = _HashingWriter(raw)
                try:
                    _write_members(zipfile.ZipFile(writer, "w", allowZip64=True), store, objects, names, sidecars,
                                   butler_index)
                finally:
                    writer.finish()
                written = True
                raw.flush()
                os.fsync(raw.fileno())
        except OSError as exc:  # the destination's errors; the store's name their own object
            if writer is None or written or exc is writer._error:
                raise _write_failed(exc, dest, tmp) from exc
            raise
        hashes = FileHashes(str(dest), writer.count, writer.md5.hexdigest(), f"{writer.adler:08x}")
        if not _install(tmp, dest):
            log.info("%s appeared while building (another run); verifying it instead", dest)
            return None, dest
        log.info("installed %s: %d members, %d bytes, md5 %s, adler32 %s", dest, len(objects) + 2,
                 hashes.bytes, hashes.md5, hashes.adler32)
        return hashes, dest
    finally:
        _remove_temp(tmp)


def quick_check(path: Path, objects: Iterable[StoredObject]) -> str | None:
    """Cheap check from the central directory only: None if members and sizes match the source listing, else why."""
    try:
        with zipfile.ZipFile(path) as zf:
            infos = {i.filename: i for i in zf.infolist()}
    except (OSError, zipfile.BadZipFile) as exc:
        return f"unreadable zip: {exc}"
    expected = {o.name: o.size for o in objects}
    missing = sorted(set(expected) - set(infos))
    extra = sorted(set(infos) - set(expected) - set(INDEX_NAMES))
    if missing or extra or any(n not in infos for n in INDEX_NAMES):
        return f"members differ from the embargo folder: missing {missing[:5]}, extra {extra[:5]}"
    wrong = [n for n, size in expected.items() if infos[n].file_size != size]
    if wrong:
        return f"member sizes differ from the embargo objects: {wrong[:5]}"
    return None


def verify_zip(path: Path, store: EmbargoStore, objects: Iterable[StoredObject], ref_ids: set[str]) -> FileHashes:
    """Verify an existing zip against the source (names, sizes, CRC of every member vs the embargo object, Butler
    index refs) and return its hashes; raise InconsistentArtifact on any difference."""
    objects = list(objects)
    problem = quick_check(path, objects)
    if problem:
        raise InconsistentArtifact(f"{path}: {problem}")
    with zipfile.ZipFile(path) as zf, contextlib.closing(store.iter_objects(objects)) as reads:
        for obj, (_key, chunks) in zip(objects, reads, strict=True):
            info = zf.getinfo(obj.name)
            crc = 0
            for chunk in chunks:
                crc = zlib_ng.crc32(chunk, crc)
            if crc != info.CRC:
                raise InconsistentArtifact(f"{path}: member {obj.name} differs from embargo object {obj.key}")
        bad = zf.testzip()  # every member's data against its recorded CRC
        if bad:
            raise InconsistentArtifact(f"{path}: member {bad} is corrupt")
        index = json.loads(zf.read(BUTLER_INDEX))
    ids = {str(i) for i in _index_ids(index)}
    if ids != set(ref_ids):
        raise InconsistentArtifact(f"{path}: Butler index holds {len(ids)} datasets, the source {len(ref_ids)}")
    return file_hashes(path)


def _index_ids(index: dict) -> Iterable[str]:
    for info in index.get("artifact_map", {}).values():
        yield from info.get("ids", [])
