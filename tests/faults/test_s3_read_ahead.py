"""The S3 store's read-ahead (``S3Store.iter_objects``) against the local site's S3 API server, through the TCP
proxy (added latency, resets): order, the memory budget, retries per object, a persistent failure, and zips
byte-identical to the local store's.

Objects are written straight to the server and, byte for byte, to a local store; the zip is built from each.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
import uuid

import pytest
from _proxy import FaultProxy
from pydantic import ValidationError
from test_s3_faults import s3_client

from facility_data import retry
from facility_data.rubin.policy import Storage
from facility_data.rubin.storage import CHUNK, LocalStore, S3Store, StoredObject, StoreReadFailed
from facility_data.rubin.zipbuild import build_zip, temporaries, verify_zip

FOLDER = "LSSTCam/20250101/MC_O_20250101_000001/"
INDEX = json.dumps({"artifact_map": {"MC_O_20250101_000001_R00_S00.fits": {"ids": ["id-0"]}}}).encode()
MIB = 1 << 20


@pytest.fixture
def proxy(site):
    p = FaultProxy(site.s3.port)
    yield p
    p.close()


@pytest.fixture
def bucket(site, monkeypatch):
    monkeypatch.setattr(retry, "BASE_DELAY", 0.01)
    name = f"rubin-ahead-{uuid.uuid4().hex[:8]}"
    s3_client(site.s3_url).create_bucket(Bucket=name)
    return name


def put_objects(site, bucket, tmp_path, sizes: list[int]) -> tuple[list[StoredObject], LocalStore]:
    """Random objects (FITS and a JSON sidecar per detector) in the bucket and, identical, in a local store."""
    local = LocalStore(tmp_path / "embargo")
    direct = S3Store(s3_client(site.s3_url), bucket)
    objs = []
    for i, size in enumerate(sizes):
        for suffix, data in ((".fits", os.urandom(size)), (".json", json.dumps({"DET": i}).encode())):
            key = f"{FOLDER}MC_O_20250101_000001_R00_S{i:02d}{suffix}"
            direct.put(key, data)
            local.put(key, data)
            objs.append(StoredObject(key, len(data)))
    return sorted(objs, key=lambda o: o.key), local


def via_proxy(proxy, bucket, **settings) -> S3Store:
    return S3Store(s3_client(proxy.url), bucket, **settings)


def retry_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == retry.__name__]


def read_ahead_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("s3-read-ahead-")]


def test_zip_through_read_ahead_is_byte_identical_to_the_local_stores(site, bucket, proxy, tmp_path):
    # a large object first (spans chunks), small ones after: they finish first, yet come out in order
    objs, local = put_objects(site, bucket, tmp_path, [CHUNK + 3 * MIB, MIB, 1, 0, 2 * MIB + 7, MIB // 2])
    proxy.latency(0.005)
    s3 = via_proxy(proxy, bucket, read_ahead_bytes=16 * MIB, parallel_reads=4)
    h3, p3 = build_zip(s3, objs, INDEX, tmp_path / "s3" / "x.zip")
    hl, pl = build_zip(local, objs, INDEX, tmp_path / "local" / "x.zip")
    assert p3.read_bytes() == pl.read_bytes()
    assert (h3.md5, h3.adler32, h3.bytes) == (hl.md5, hl.adler32, hl.bytes)
    assert s3.peak_reads > 1, "several GETs were in flight"
    assert s3.peak_in_flight <= 16 * MIB + max(o.size for o in objs)
    # verify reads through the read-ahead too, and sees the same bytes
    assert verify_zip(p3, s3, objs, {"id-0"}).md5 == hl.md5


def test_read_ahead_is_bounded_by_the_budget_and_keeps_the_order(site, bucket, proxy, tmp_path):
    size = MIB
    objs, local = put_objects(site, bucket, tmp_path, [size] * 6)
    fits = [o for o in objs if o.name.endswith(".fits")]
    budget = 2 * size + 1  # two raw objects at a time, whatever the worker count
    proxy.latency(0.02)
    s3 = via_proxy(proxy, bucket, read_ahead_bytes=budget, parallel_reads=4)
    got = []
    for key, chunks in s3.iter_objects(fits):
        time.sleep(0.3)  # a slow writer: the readers run ahead until the budget stops them
        got.append((key, b"".join(chunks)))
    assert [k for k, _ in got] == [o.key for o in fits]
    assert all(data == local.read(key) for key, data in got)
    assert s3.peak_reads == 2
    assert size < s3.peak_in_flight <= budget, s3.peak_in_flight  # read ahead, within the budget


def test_an_object_larger_than_the_budget_is_read_alone(site, bucket, proxy, tmp_path):
    objs, local = put_objects(site, bucket, tmp_path, [2 * MIB] * 3)
    s3 = via_proxy(proxy, bucket, read_ahead_bytes=MIB, parallel_reads=4)
    fits = [o for o in objs if o.name.endswith(".fits")]
    assert [(k, b"".join(c)) for k, c in s3.iter_objects(fits)] == [(o.key, local.read(o.key)) for o in fits]
    assert s3.peak_reads == 1 and s3.peak_in_flight <= 2 * MIB


def test_serial_settings_read_one_object_at_a_time(site, bucket, proxy, tmp_path):
    objs, local = put_objects(site, bucket, tmp_path, [MIB] * 3)
    for settings in ({"read_ahead_bytes": 0}, {"parallel_reads": 1}):
        s3 = via_proxy(proxy, bucket, **settings)
        assert [(k, b"".join(c)) for k, c in s3.iter_objects(objs)] == [(o.key, local.read(o.key)) for o in objs]
        assert s3.peak_reads == 1 and s3.peak_in_flight == 0 and not read_ahead_threads()


def test_a_reset_object_is_resumed_and_the_zip_is_still_byte_identical(site, bucket, proxy, tmp_path, caplog):
    objs, local = put_objects(site, bucket, tmp_path, [MIB] * 4)
    proxy.reset_after(MIB // 3, times=2)  # lands on whichever objects are in flight then
    s3 = via_proxy(proxy, bucket, read_ahead_bytes=8 * MIB, parallel_reads=4)
    with caplog.at_level(logging.WARNING, logger=retry.__name__):
        _, p3 = build_zip(s3, objs, INDEX, tmp_path / "s3" / "x.zip")
    assert proxy.events["reset"] == 2
    lines = retry_lines(caplog)
    keys = {o.key for o in objs}
    assert len(lines) == 2 and all(any(f"{k} (read): attempt 2/" in line for k in keys) for line in lines), lines
    _, pl = build_zip(local, objs, INDEX, tmp_path / "local" / "x.zip")
    assert p3.read_bytes() == pl.read_bytes()


def test_a_persistent_failure_fails_the_zip_and_leaves_nothing(site, bucket, proxy, tmp_path, caplog):
    objs, _ = put_objects(site, bucket, tmp_path, [MIB] * 4)
    proxy.reset_after(MIB // 3, times=10_000)
    s3 = via_proxy(proxy, bucket, read_ahead_bytes=8 * MIB, parallel_reads=4)
    dest = tmp_path / "s3" / "x.zip"
    with caplog.at_level(logging.WARNING, logger=retry.__name__), pytest.raises(StoreReadFailed) as err:
        build_zip(s3, objs, INDEX, dest)
    msg = str(err.value)
    assert any(f"{o.key}: read failed at byte " in msg for o in objs) and f"after {retry.ATTEMPTS} attempt" in msg
    assert not dest.exists() and temporaries(dest) == []
    assert any(f"gave up after {retry.ATTEMPTS} attempts" in line for line in retry_lines(caplog))
    deadline = time.monotonic() + 30
    while read_ahead_threads() and time.monotonic() < deadline:  # the other reads stop too
        time.sleep(0.05)
    assert not read_ahead_threads()
    # bounded: each raw object gets its own budget, and no more than that
    assert proxy.events["reset"] <= retry.ATTEMPTS * len(objs)


def test_a_consumer_that_stops_early_stops_the_reads(site, bucket, proxy, tmp_path):
    objs, _ = put_objects(site, bucket, tmp_path, [MIB] * 6)
    proxy.latency(0.02)
    s3 = via_proxy(proxy, bucket, read_ahead_bytes=4 * MIB, parallel_reads=3)
    reads = s3.iter_objects(objs)
    key, chunks = next(reads)
    assert b"".join(chunks)  # a write error would stop here: the zip closes the iteration
    reads.close()
    deadline = time.monotonic() + 30
    while read_ahead_threads() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not read_ahead_threads()


@pytest.mark.parametrize("bad", [{"read_ahead_bytes": -1}, {"parallel_reads": 0}, {"parallel_reads": 65},
                                 {"read_ahead": 5}])
def test_storage_read_ahead_settings_are_a_closed_schema(bad):
    with pytest.raises(ValidationError):
        Storage(kind="s3", root="s3://b", aws_conn_id="c", **bad)
    ok = Storage(kind="s3", root="s3://b", aws_conn_id="c")
    assert (ok.read_ahead_bytes, ok.parallel_reads) == (64 * MIB, 4)
