"""The embargo store: where the summit writes each exposure's objects, ``<instrument>/<day_obs>/<obs_id>/``.

Two implementations behind one interface: a local directory (the embedded default) and S3 (USDF's Ceph; here the
site's S3 API server) through a boto3 client that :func:`open_store` takes from an Airflow ``aws`` connection
(``endpoint_url`` in its extra). The source Butler's raw datasets point at these objects (``direct`` ingest).
"""

from __future__ import annotations

import collections
import functools
import mmap
import os
import shutil
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import BinaryIO, Protocol

from facility_data.retry import Attempts, call_with_retry, is_transient_s3

CHUNK = 8 * 1024 * 1024
#: read-ahead defaults of an S3 store (the policy's storage block may change them)
READ_AHEAD_BYTES = 64 << 20
PARALLEL_READS = 4


class StoreReadFailed(RuntimeError):
    """Reading an embargo object failed for good (its transient faults outlasted the retry budget); names it."""


class IncompleteRead(ConnectionError):
    """The store ended an object's body before its Content-Length (a transient fault: resumed)."""


@dataclass(frozen=True)
class StoredObject:
    key: str  # relative to the store root, e.g. LSSTCam/20251231/MC_O_20251231_000010/MC_O_..._R22_S11.fits
    size: int
    #: modification time (POSIX seconds; S3 LastModified), None where the listing did not give one; the gate's
    #: no-manifest fallback judges "no new object for N hours" from it
    mtime: float | None = field(default=None, compare=False)

    @property
    def name(self) -> str:
        return self.key.rsplit("/", 1)[-1]


def _error_code(exc: BaseException) -> str | None:
    """An S3 error answer's code (botocore ClientError), else None."""
    response = getattr(exc, "response", None)
    return response.get("Error", {}).get("Code") if isinstance(response, dict) else None


def folder_key(instrument: str, day_obs: int, obs_id: str) -> str:
    return f"{instrument}/{day_obs}/{obs_id}/"


class EmbargoStore(Protocol):
    def list_folder(self, instrument: str, day_obs: int, obs_id: str) -> list[StoredObject]: ...
    def iter_chunks(self, key: str) -> Iterator[bytes | memoryview]: ...
    def iter_objects(self, objects: Sequence[StoredObject]) -> Iterator[tuple[str, Iterator[bytes | memoryview]]]:
        ...
    def read(self, key: str) -> bytes: ...
    def put(self, key: str, data: bytes | BinaryIO) -> None: ...
    def uri(self, key: str) -> str: ...
    def list_day(self, instrument: str, day_obs: int) -> list[str]: ...


def serial_objects(store, objects: Sequence[StoredObject]) -> Iterator[tuple[str, Iterator]]:
    """``iter_objects`` without read-ahead: each object's chunks from ``store.iter_chunks``, one after the other."""
    for obj in objects:
        yield obj.key, store.iter_chunks(obj.key)


class LocalStore:
    """Embargo store as a directory tree (``file://``)."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def __repr__(self) -> str:
        return f"LocalStore({str(self.root)!r})"

    @functools.cached_property
    def _resolved_root(self) -> Path:
        return self.root.resolve()

    def _path(self, key: str) -> Path:
        """The file of ``key``, checked lexically like an object key (no syscalls: this runs once per object)."""
        parts = PurePosixPath(key).parts
        if not parts or parts[0] == "/" or ".." in parts:
            raise ValueError(f"key {key!r} escapes the embargo store {self.root}")
        return self._resolved_root.joinpath(*parts)

    def list_folder(self, instrument: str, day_obs: int, obs_id: str) -> list[StoredObject]:
        folder = self._path(folder_key(instrument, day_obs, obs_id))
        if not folder.is_dir():
            return []
        prefix = folder_key(instrument, day_obs, obs_id)
        return sorted((StoredObject(prefix + p.name, (st := p.stat()).st_size, st.st_mtime)
                       for p in folder.iterdir() if p.is_file()), key=lambda o: o.key)

    def list_day(self, instrument: str, day_obs: int) -> list[str]:
        day = self._path(f"{instrument}/{day_obs}")
        return sorted(p.name for p in day.iterdir() if p.is_dir()) if day.is_dir() else []

    def iter_chunks(self, key: str) -> Iterator[memoryview]:
        """Read-only views of the file mapped from the page cache: no copy into user space.

        The mapping is not closed here: it lives as long as any chunk does (a zip writer's helper threads may still
        hold one) and is unmapped when the last reference goes. Embargo objects are written once and never changed;
        one truncated while mapped would end the reading process with SIGBUS (the task fails and is retried;
        nothing is installed).
        """
        with open(self._path(key), "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if not size:
                return
            # mapped in one go (MAP_POPULATE) rather than page fault by page fault
            mm = mmap.mmap(f.fileno(), 0, flags=mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0),
                           prot=mmap.PROT_READ)
        view = memoryview(mm)
        for start in range(0, len(view), CHUNK):
            yield view[start:start + CHUNK]

    def iter_objects(self, objects: Sequence[StoredObject]) -> Iterator[tuple[str, Iterator[memoryview]]]:
        """Serial: a mapped file needs no read-ahead (the page cache and MAP_POPULATE are it)."""
        return serial_objects(self, objects)

    def read(self, key: str) -> bytes:
        return self._path(key).read_bytes()

    def put(self, key: str, data: bytes | BinaryIO) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(data, bytes):
            path.write_bytes(data)
        else:
            with open(path, "wb") as f:
                shutil.copyfileobj(data, f, CHUNK)

    def uri(self, key: str) -> str:
        return str(self._path(key))


class S3Store:
    """Embargo store in an S3 bucket; every call is retried on transient faults (bounded, see retry.py)."""

    def __init__(self, client, bucket: str, prefix: str = "", *, read_ahead_bytes: int = READ_AHEAD_BYTES,
                 parallel_reads: int = PARALLEL_READS):
        self.client, self.bucket, self.prefix = client, bucket, prefix.strip("/") + "/" if prefix.strip("/") else ""
        if read_ahead_bytes < 0 or parallel_reads < 1:
            raise ValueError(f"read_ahead_bytes must be >= 0 and parallel_reads >= 1, got {read_ahead_bytes}, "
                             f"{parallel_reads}")
        self.read_ahead_bytes, self.parallel_reads = read_ahead_bytes, parallel_reads
        #: the most bytes read ahead and not yet handed to the consumer during the last ``iter_objects``
        self.peak_in_flight = 0
        #: the most objects being read at once during the last ``iter_objects``
        self.peak_reads = 0

    def __repr__(self) -> str:
        return f"S3Store(s3://{self.bucket}/{self.prefix})"

    def _retry(self, fn, what: str):
        return call_with_retry(fn, transient=is_transient_s3, what=f"s3://{self.bucket}/{what}")

    def _list(self, prefix: str, delimiter: str | None = None) -> Iterator[dict]:
        token = None
        while True:
            kwargs = {"Bucket": self.bucket, "Prefix": self.prefix + prefix}
            if delimiter:
                kwargs["Delimiter"] = delimiter
            if token:
                kwargs["ContinuationToken"] = token
            page = self._retry(lambda kw=kwargs: self.client.list_objects_v2(**kw), f"{prefix} (list)")
            yield page
            if not page.get("IsTruncated"):
                return
            token = page["NextContinuationToken"]

    def list_folder(self, instrument: str, day_obs: int, obs_id: str) -> list[StoredObject]:
        prefix = folder_key(instrument, day_obs, obs_id)
        out = []
        for page in self._list(prefix, delimiter="/"):
            for obj in page.get("Contents", []):
                key = obj["Key"][len(self.prefix):]
                if not key.endswith("/"):
                    modified = obj.get("LastModified")
                    out.append(StoredObject(key, int(obj["Size"]), modified.timestamp() if modified else None))
        return sorted(out, key=lambda o: o.key)

    def list_day(self, instrument: str, day_obs: int) -> list[str]:
        names = []
        for page in self._list(f"{instrument}/{day_obs}/", delimiter="/"):
            names += [p["Prefix"].rstrip("/").rsplit("/", 1)[-1] for p in page.get("CommonPrefixes", [])]
        return sorted(names)

    def iter_chunks(self, key: str) -> Iterator[bytes]:
        """The object's bytes in chunks. A transient fault mid-read (connection reset, read timeout, short body)
        resumes from the next byte with a ranged GET pinned to the first answer's ETag (a replaced object is never
        spliced), within one bounded budget per object; after the last attempt :class:`StoreReadFailed` names the
        object and how far the read got."""
        full = self.prefix + key
        budget = Attempts(transient=is_transient_s3, what=f"s3://{self.bucket}/{full} (read)")
        got, size, etag = 0, None, None
        while size is None or got < size:
            kwargs = {"Bucket": self.bucket, "Key": full}
            if size is not None:  # a resume
                kwargs["Range"] = f"bytes={got}-"
                if etag:
                    kwargs["IfMatch"] = etag
            try:
                resp = self._retry(lambda kw=kwargs: self.client.get_object(**kw), key)
            except Exception as exc:
                if size is not None and _error_code(exc) == "PreconditionFailed":
                    raise StoreReadFailed(f"s3://{self.bucket}/{full}: replaced while being read (ETag no longer "
                                          f"{etag}); read stopped at byte {got} of {size}") from exc
                raise
            if size is None:
                etag, size = resp.get("ETag"), int(resp["ContentLength"])
            chunks = resp["Body"].iter_chunks(CHUNK)
            try:
                while True:
                    try:
                        chunk = next(chunks, None)
                        if chunk is None and got < size:
                            raise IncompleteRead(f"body ended at byte {got} of {size}")
                    except Exception as exc:
                        try:
                            budget.failed(exc)
                        except Exception as final:
                            raise StoreReadFailed(
                                f"s3://{self.bucket}/{full}: read failed at byte {got} of {size} after "
                                f"{budget.attempt} attempt(s): {type(final).__name__}: {final}") from final
                        break  # transient: resume from byte ``got``
                    if chunk is None:
                        break
                    got += len(chunk)
                    yield chunk
            finally:
                resp["Body"].close()

    def iter_objects(self, objects: Sequence[StoredObject]) -> Iterator[tuple[str, Iterator[bytes]]]:
        """(key, chunks) for each object, in the given order, while up to ``parallel_reads`` GETs read the next
        objects ahead. Memory is bounded: an object is started only while the objects started and not yet consumed
        total at most ``read_ahead_bytes`` with it (or none is: a larger object then goes alone), so the bytes held
        never exceed the budget plus one object (``peak_in_flight`` records them). Each object keeps the retries
        and ETag-pinned resume of :meth:`iter_chunks`; the first object that fails for good fails the iteration
        (at the consumer's next chunk, whichever object it is on) and stops the other reads. ``read_ahead_bytes``
        0 or ``parallel_reads`` 1: serial, one GET at a time."""
        objects = list(objects)
        self.peak_in_flight, self.peak_reads = 0, min(1, len(objects))
        if not self.read_ahead_bytes or self.parallel_reads < 2 or len(objects) < 2:
            return serial_objects(self, objects)
        return _ReadAhead(self, objects).run()

    def read(self, key: str) -> bytes:
        return self._retry(
            lambda: self.client.get_object(Bucket=self.bucket, Key=self.prefix + key)["Body"].read(), key)

    def put(self, key: str, data: bytes | BinaryIO) -> None:
        if isinstance(data, bytes):
            self._retry(lambda: self.client.put_object(Bucket=self.bucket, Key=self.prefix + key, Body=data), key)
        else:
            self.client.upload_fileobj(data, self.bucket, self.prefix + key)

    def uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{self.prefix}{key}"


class _ReadAhead:
    """One ``S3Store.iter_objects`` pass: worker threads take the objects in order as the budget allows and append
    their chunks to per-object queues; the consumer drains them in order and releases each object's budget."""

    def __init__(self, store: S3Store, objects: list[StoredObject]):
        self.store, self.objects = store, objects
        self.cond = threading.Condition()
        self.queues = [collections.deque() for _ in objects]
        self.done = [False] * len(objects)
        self.released = [False] * len(objects)
        self.next = 0  # the next object a worker takes
        self.reserved = 0  # sizes of the objects taken and not yet released by the consumer
        self.held = 0  # bytes read and not yet handed to the consumer
        self.reading = 0  # objects being read now
        self.error: BaseException | None = None
        self.stopped = False

    def run(self) -> Iterator[tuple[str, Iterator[bytes]]]:
        n = min(self.store.parallel_reads, len(self.objects))
        threads = [threading.Thread(target=self._work, daemon=True, name=f"s3-read-ahead-{i}") for i in range(n)]
        for t in threads:
            t.start()
        try:
            for i, obj in enumerate(self.objects):
                yield obj.key, self._chunks(i)
                self._release(i)
        finally:
            with self.cond:
                self.stopped = True
                self.cond.notify_all()
            # a worker stops at its next chunk; not waited for, so a failure is reported at once

    def _admissible(self) -> bool:
        i = self.next
        if i >= len(self.objects):
            return False
        size = self.objects[i].size
        return self.reserved == 0 or self.reserved + size <= self.store.read_ahead_bytes

    def _work(self) -> None:
        while True:
            with self.cond:
                while not self.stopped and self.error is None and self.next < len(self.objects) \
                        and not self._admissible():
                    self.cond.wait()
                if self.stopped or self.error is not None or self.next >= len(self.objects):
                    return
                i = self.next
                self.next += 1
                self.reserved += self.objects[i].size
                self.reading += 1
                self.store.peak_reads = max(self.store.peak_reads, self.reading)
            chunks = self.store.iter_chunks(self.objects[i].key)
            try:
                for chunk in chunks:
                    with self.cond:
                        if self.stopped or self.error is not None:
                            return
                        if self.released[i]:
                            break  # the consumer moved on without it
                        self.queues[i].append(chunk)
                        self.held += len(chunk)
                        self.store.peak_in_flight = max(self.store.peak_in_flight, self.held)
                        self.cond.notify_all()
                with self.cond:
                    self.done[i] = True
                    self.cond.notify_all()
            # final (iter_chunks retried the transient ones); anything, or the consumer would wait forever
            except BaseException as exc:  # noqa: BLE001
                with self.cond:
                    if self.error is None:
                        self.error = exc
                    self.cond.notify_all()
                return
            finally:
                chunks.close()
                with self.cond:
                    self.reading -= 1

    def _chunks(self, i: int) -> Iterator[bytes]:
        q = self.queues[i]
        while True:
            with self.cond:
                while not q and not self.done[i] and self.error is None:
                    self.cond.wait()
                if self.error is not None:
                    raise self.error
                if not q:
                    return
                chunk = q.popleft()
                self.held -= len(chunk)
                self.cond.notify_all()
            yield chunk

    def _release(self, i: int) -> None:
        with self.cond:
            self.released[i] = True
            self.held -= sum(len(c) for c in self.queues[i])
            self.queues[i].clear()
            self.reserved -= self.objects[i].size
            self.cond.notify_all()


def open_store(storage) -> EmbargoStore:
    """The store a policy's ``storage`` section describes; S3 credentials come from its Airflow aws connection."""
    if storage.kind == "local":
        return LocalStore(storage.root)
    from airflow.providers.amazon.aws.hooks.s3 import S3Hook

    client = S3Hook(aws_conn_id=storage.aws_conn_id).get_conn()
    bucket, _, prefix = storage.root.removeprefix("s3://").partition("/")
    return S3Store(client, bucket, prefix, read_ahead_bytes=storage.read_ahead_bytes,
                   parallel_reads=storage.parallel_reads)
