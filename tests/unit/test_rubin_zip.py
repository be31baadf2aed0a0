"""Zip building: byte-identical members, hashes from the written bytes, atomic no-overwrite install, verification."""

from __future__ import annotations

import hashlib
import json
import os
import threading
import zipfile
import zlib

import pytest

from facility_data.rubin.metaindex import metadata_index
from facility_data.rubin.storage import LocalStore, StoredObject
from facility_data.rubin.zipbuild import (
    BUTLER_INDEX,
    METADATA_INDEX,
    InconsistentArtifact,
    build_zip,
    file_hashes,
    install_bytes,
    quick_check,
    verify_zip,
)

FOLDER = "LSSTCam/20250101/MC_O_20250101_000001/"


@pytest.fixture
def store(tmp_path):
    s = LocalStore(tmp_path / "embargo")
    for i in range(3):
        s.put(f"{FOLDER}MC_O_20250101_000001_R01_S0{i}.fits", bytes([i]) * 20000 + b"tail")
        s.put(f"{FOLDER}MC_O_20250101_000001_R01_S0{i}.json", json.dumps({"OBSID": "X", "DET": i}).encode())
    s.put(f"{FOLDER}MC_O_20250101_000001_expectedSensors.json", b'{"expectedSensors": {}}')
    return s


def objects(store):
    return store.list_folder("LSSTCam", 20250101, "MC_O_20250101_000001")


INDEX = json.dumps({"artifact_map": {"MC_O_20250101_000001_R01_S00.fits": {"ids": ["id-0"]}}}).encode()


def test_members_are_byte_identical_and_hashes_match_the_file(store, tmp_path):
    dest = tmp_path / "out" / "MC_O_20250101_000001.zip"
    hashes, path = build_zip(store, objects(store), INDEX, dest)
    assert path == dest and hashes is not None
    again = file_hashes(dest)
    assert (hashes.bytes, hashes.md5, hashes.adler32) == (again.bytes, again.md5, again.adler32)
    data = dest.read_bytes()
    assert hashes.md5 == hashlib.md5(data).hexdigest() and hashes.adler32 == f"{zlib.adler32(data):08x}"
    with zipfile.ZipFile(dest) as zf:
        assert zf.testzip() is None
        for obj in objects(store):
            assert zf.read(obj.name) == store.read(obj.key)
            expected = zipfile.ZIP_STORED if obj.name.endswith(".fits") else zipfile.ZIP_DEFLATED
            assert zf.getinfo(obj.name).compress_type == expected
        assert zf.read(BUTLER_INDEX) == INDEX
        meta = json.loads(zf.read(METADATA_INDEX))
        assert meta["__COMMON__"] == {"OBSID": "X"}
        assert meta["MC_O_20250101_000001_R01_S02.fits"] == {"DET": 2}
    assert not list(dest.parent.glob(".*.tmp")), "temporary file left behind"


def test_rebuild_is_byte_identical(store, tmp_path):
    a, _ = build_zip(store, objects(store), INDEX, tmp_path / "a" / "x.zip")
    b, _ = build_zip(store, objects(store), INDEX, tmp_path / "b" / "x.zip")
    assert a.md5 == b.md5 and a.bytes == b.bytes


def test_existing_zip_is_never_overwritten(store, tmp_path):
    dest = tmp_path / "out" / "x.zip"
    first, _ = build_zip(store, objects(store), INDEX, dest)
    before = dest.read_bytes()
    second, _ = build_zip(store, objects(store), b"{}", dest)
    assert second is None and dest.read_bytes() == before
    assert not list(dest.parent.glob(".*.tmp"))


def test_concurrent_builds_install_exactly_one(store, tmp_path):
    dest = tmp_path / "out" / "x.zip"
    results = []
    threads = [threading.Thread(target=lambda: results.append(build_zip(store, objects(store), INDEX, dest)[0]))
               for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(r is not None for r in results) == 1
    assert verify_zip(dest, store, objects(store), {"id-0"}).md5 == next(r for r in results if r).md5


def test_failed_read_leaves_nothing(store, tmp_path):
    class Failing(LocalStore):
        def iter_chunks(self, key):
            if key.endswith("S01.fits"):
                raise OSError("disk went away")
            yield from super().iter_chunks(key)

    failing = Failing(store.root)
    dest = tmp_path / "out" / "x.zip"
    with pytest.raises(OSError, match="disk went away"):
        build_zip(failing, objects(store), INDEX, dest)
    assert not dest.exists() and not list(dest.parent.glob(".*"))


def test_object_changing_size_during_read_is_refused(store, tmp_path):
    objs = [StoredObject(o.key, o.size + 1) if o.name.endswith("S00.fits") else o for o in objects(store)]
    with pytest.raises(InconsistentArtifact, match="listed"):
        build_zip(store, objs, INDEX, tmp_path / "x.zip")
    assert not (tmp_path / "x.zip").exists()


def test_verify_detects_a_member_differing_from_the_source(store, tmp_path):
    dest = tmp_path / "x.zip"
    build_zip(store, objects(store), INDEX, dest)
    key = f"{FOLDER}MC_O_20250101_000001_R01_S01.fits"
    store.put(key, bytes([9]) * 20000 + b"tail")  # same size, different bytes
    assert quick_check(dest, objects(store)) is None  # the cheap check cannot see it ...
    with pytest.raises(InconsistentArtifact, match="differs from embargo object"):
        verify_zip(dest, store, objects(store), {"id-0"})  # ... the deep one does


def test_verify_detects_missing_members_and_wrong_index(store, tmp_path):
    dest = tmp_path / "x.zip"
    build_zip(store, objects(store), INDEX, dest)
    store.put(f"{FOLDER}late_arrival.json", b"{}")
    assert "missing" in quick_check(dest, objects(store))
    with pytest.raises(InconsistentArtifact):
        verify_zip(dest, store, objects(store), {"id-0"})
    (store.root / FOLDER / "late_arrival.json").unlink()
    with pytest.raises(InconsistentArtifact, match="Butler index"):
        verify_zip(dest, store, objects(store), {"id-0", "id-1"})


def test_install_bytes_is_exclusive(tmp_path):
    dest = tmp_path / "d" / "x.yaml"
    assert install_bytes(dest, b"one") is True
    assert install_bytes(dest, b"two") is False
    assert dest.read_bytes() == b"one"


def test_metadata_index_ignores_non_json_sidecars():
    out = json.loads(metadata_index({"a.fits": None, "b.fits": None, "c.fits": None},
                                    {"a.json": b'{"K": 1, "A": 2}', "b.json": b'{"K": 1, "A": 3}', "c.json": b"not json"}))
    assert out == {"__CONTENT__": "metadata", "__COMMON__": {"K": 1}, "a.fits": {"A": 2}, "b.fits": {"A": 3}}


def test_store_refuses_keys_escaping_its_root(store):
    with pytest.raises(ValueError, match="escapes"):
        store.read("../../etc/passwd")
    with pytest.raises(ValueError, match="escapes"):
        store.read("/etc/passwd")
    with pytest.raises(ValueError, match="escapes"):
        list(store.iter_chunks(f"{FOLDER}../../../../x"))


def test_large_member_spanning_chunks_and_syncs(store, tmp_path, monkeypatch):
    """A member larger than the store's read chunk (mapped views) and the writer's periodic disk sync."""
    from facility_data.rubin import storage, zipbuild

    monkeypatch.setattr(zipbuild._HashingWriter, "_SYNC_EVERY", 3 << 20)
    syncs = []
    real_fdatasync = os.fdatasync
    monkeypatch.setattr(os, "fdatasync", lambda fd: syncs.append(fd) or real_fdatasync(fd))
    big = bytes(range(256)) * ((2 * storage.CHUNK + 12345) // 256)
    store.put(f"{FOLDER}MC_O_20250101_000001_R22_S11.fits", big)
    dest = tmp_path / "big.zip"
    hashes, _ = build_zip(store, objects(store), INDEX, dest)
    data = dest.read_bytes()
    assert (hashes.bytes, hashes.md5) == (len(data), hashlib.md5(data).hexdigest())
    with zipfile.ZipFile(dest) as zf:
        assert zf.read("MC_O_20250101_000001_R22_S11.fits") == big
    assert verify_zip(dest, store, objects(store), {"id-0"}).md5 == hashes.md5
    assert len(syncs) >= 2  # each 8 MiB chunk passes the 3 MiB mark: synced as it goes, not only at the end
