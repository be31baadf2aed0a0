"""LocalTransfer and endpoints: path rules, export control, verified atomic copies, idempotent retries."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from facility_data.config import ConfigError
from facility_data.safety import SafetyError
from facility_data.transfer import (
    Endpoint,
    LocalTransfer,
    PathError,
    TransferError,
    backend_kind,
    get_endpoint,
    load_endpoints,
)
from facility_data.transfer import local as local_mod
from facility_data.transfer.local import file_checksum


@pytest.fixture
def eps(tmp_path) -> dict[str, Endpoint]:
    def ep(name, site, root="/"):
        return Endpoint(name=name, kind="local", site=site, local_root=tmp_path / "endpoints" / name, root_path=root)

    return {"spot": ep("spot", "als"), "data": ep("data", "als"), "nersc": ep("nersc", "nersc"),
            "data_raw": Endpoint(name="data_raw", kind="local", site="als", local_root=tmp_path / "endpoints" / "data",
                                 root_path="/raw")}


def write(ep: Endpoint, rel: str, data: bytes) -> Path:
    p = ep.local_path(rel)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(data)
    return p


def no_partials(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if ".fdpart-" in p.name]


def test_file_copy_is_verified_and_reports_stats(eps, caplog):
    caplog.set_level("INFO", logger="facility_data.transfer.local")
    write(eps["spot"], "raw/p1/scan.h5", b"x" * 5000)
    stats = LocalTransfer().transfer(eps["spot"], "raw/p1/scan.h5", eps["data"], "raw/p1/scan.h5")
    dest = eps["data"].local_path("raw/p1/scan.h5")
    assert dest.read_bytes() == b"x" * 5000
    assert (stats.files, stats.files_skipped, stats.bytes) == (1, 0, 5000)
    assert stats.seconds > 0 and stats.bytes_per_second > 0
    rate = f"({stats.bytes_per_second / 1e6:.3f} MB/s)"
    assert f"1 files, 5000 B in {stats.seconds:.2f} s {rate} copied, 0 already present" in caplog.text


def test_recursive_tree_and_alias_endpoint(eps):
    for i, size in enumerate([0, 10, 70_000, 3 << 20]):
        write(eps["spot"], f"raw/p1/rec/sub{i % 2}/f{i}.tif", os.urandom(size))
    stats = LocalTransfer().transfer(eps["spot"], "raw/p1/rec", eps["data"], "raw/p1/rec", recursive=True)
    assert stats.files == 4 and stats.bytes == 10 + 70_000 + (3 << 20)
    # data_raw is a view of data/raw: the same file under a shorter path
    st = LocalTransfer().stat(eps["data_raw"], "p1/rec/sub1/f3.tif")
    assert st.size == 3 << 20
    assert st.checksum == file_checksum(eps["spot"].local_path("raw/p1/rec/sub1/f3.tif"))


@pytest.mark.parametrize("algorithm", ["crc32c", "sha256"])
def test_small_and_large_files_keep_content_mode_and_times(eps, algorithm):
    """Small files go through one buffer, large ones through the kernel copy: both keep bytes, mode and mtime."""
    sizes = {"empty": 0, "small": 5000, "large": local_mod._SMALL_FILE + 12345}
    for name, size in sizes.items():
        src = write(eps["spot"], f"t/{name}", os.urandom(size))
        src.chmod(0o640)
        os.utime(src, ns=(1_600_000_000_000_000_000, 1_700_000_000_123_456_789))
    LocalTransfer(algorithm).transfer(eps["spot"], "t", eps["data"], "t", recursive=True)
    for name in sizes:
        src, dst = eps["spot"].local_path(f"t/{name}"), eps["data"].local_path(f"t/{name}")
        assert dst.read_bytes() == src.read_bytes()
        assert (dst.stat().st_mode & 0o7777, dst.stat().st_mtime_ns) == (0o640, 1_700_000_000_123_456_789)
        assert file_checksum(dst, algorithm) == file_checksum(src, algorithm)
    assert no_partials(eps["data"].local_root) == []


def test_short_reads_are_completed(eps, monkeypatch):
    """A read may return less than asked (network filesystems): the buffered path reads on to the end."""
    data = os.urandom(300_000)
    write(eps["spot"], "scan.h5", data)
    real_read = os.read
    monkeypatch.setattr(os, "read", lambda fd, n: real_read(fd, min(n, 4096)))
    LocalTransfer().transfer(eps["spot"], "scan.h5", eps["data"], "scan.h5")
    assert eps["data"].local_path("scan.h5").read_bytes() == data


def test_large_file_without_kernel_copy_falls_back_to_reads(eps, monkeypatch):
    """A platform or filesystem without copy_file_range (macOS, some network filesystems) copies with reads."""
    data = os.urandom(local_mod._SMALL_FILE + 777)
    write(eps["spot"], "big.h5", data)
    monkeypatch.delattr(os, "copy_file_range")
    LocalTransfer().transfer(eps["spot"], "big.h5", eps["data"], "big.h5")
    assert eps["data"].local_path("big.h5").read_bytes() == data


def test_directory_needs_recursive(eps):
    write(eps["spot"], "d/a", b"a")
    with pytest.raises(TransferError, match="recursive=True"):
        LocalTransfer().transfer(eps["spot"], "d", eps["data"], "d")
    assert not eps["data"].local_path("d").exists()


def test_missing_source_is_file_not_found(eps):
    with pytest.raises(TransferError, match="FILE_NOT_FOUND"):
        LocalTransfer().transfer(eps["spot"], "nope.h5", eps["data"], "nope.h5")


def test_retry_skips_files_already_verified_and_replaces_changed_ones(eps):
    write(eps["spot"], "t/a", b"aaaa")
    write(eps["spot"], "t/b", b"bbbb")
    LocalTransfer().transfer(eps["spot"], "t", eps["data"], "t", recursive=True)
    eps["data"].local_path("t/b").write_bytes(b"stale")
    stats = LocalTransfer().transfer(eps["spot"], "t", eps["data"], "t", recursive=True)
    assert (stats.files, stats.files_skipped) == (1, 1)
    assert eps["data"].local_path("t/b").read_bytes() == b"bbbb"


@pytest.mark.parametrize("bad", ["/etc/passwd", "../outside", "a/../../b", "", ".", "~/x", "a\\b", "a\x00b"])
def test_bad_paths_rejected_before_any_side_effect(eps, bad):
    write(eps["spot"], "ok.h5", b"1")
    with pytest.raises(PathError):
        LocalTransfer().transfer(eps["spot"], bad, eps["data"], "ok.h5")
    with pytest.raises(PathError):
        LocalTransfer().transfer(eps["spot"], "ok.h5", eps["data"], bad)
    assert not eps["data"].local_root.exists()


def test_symlink_escape_rejected(eps, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_bytes(b"s")
    eps["spot"].local_root.mkdir(parents=True)
    (eps["spot"].local_root / "link").symlink_to(outside)
    with pytest.raises(PathError, match="outside endpoint"):
        LocalTransfer().transfer(eps["spot"], "link/secret", eps["data"], "secret")


def test_export_controlled_data_does_not_leave_als(eps):
    write(eps["data"], "raw/scan.h5", b"ec")
    with pytest.raises(SafetyError, match="export-controlled"):
        LocalTransfer().transfer(eps["data"], "raw/scan.h5", eps["nersc"], "raw/scan.h5", export_controlled=True)
    assert not eps["nersc"].local_root.exists()
    # on site it may move
    LocalTransfer().transfer(eps["data"], "raw/scan.h5", eps["spot"], "raw/scan.h5",
                             export_controlled=True)
    assert eps["spot"].local_path("raw/scan.h5").read_bytes() == b"ec"


@pytest.mark.parametrize("size", [100_000, local_mod._SMALL_FILE + 1])  # buffered and kernel-copy paths
@pytest.mark.parametrize("algorithm", ["crc32c", "sha256"])
def test_corrupted_copy_is_detected_and_discarded(eps, monkeypatch, algorithm, size):
    write(eps["spot"], "scan.h5", os.urandom(size))
    eps["data"].local_root.mkdir(parents=True)
    real_copy = local_mod._copy_hashing

    def corrupting_copy(src, tmp, algorithm):
        digest = real_copy(src, tmp, algorithm)
        with open(tmp, "r+b") as fh:  # a bit flips on the way to disk
            fh.seek(500)
            byte = fh.read(1)
            fh.seek(500)
            fh.write(bytes([byte[0] ^ 0x01]))
        return digest

    monkeypatch.setattr(local_mod, "_copy_hashing", corrupting_copy)
    with pytest.raises(TransferError, match=f"checksum mismatch.*source {algorithm}:"):
        LocalTransfer(algorithm).transfer(eps["spot"], "scan.h5", eps["data"], "scan.h5")
    assert not eps["data"].local_path("scan.h5").exists()
    assert no_partials(eps["data"].local_root) == []


def test_partial_copy_never_appears_at_destination(eps, monkeypatch):
    write(eps["spot"], "scan.h5", os.urandom(3 << 20))
    old = write(eps["data"], "scan.h5", b"previous verified version")
    seen_at_dest = []

    class Interrupted(Exception):
        pass

    def dying_copy(src, tmp, algorithm):
        with open(src, "rb") as fin, open(tmp, "xb") as fout:
            fout.write(fin.read(1 << 20))
        seen_at_dest.append(old.read_bytes())
        raise Interrupted("worker killed mid-copy")

    monkeypatch.setattr(local_mod, "_copy_hashing", dying_copy)
    with pytest.raises(Interrupted):
        LocalTransfer().transfer(eps["spot"], "scan.h5", eps["data"], "scan.h5")
    # during and after the interrupted copy the destination path held the old complete file, never a partial one
    assert seen_at_dest == [b"previous verified version"]
    assert old.read_bytes() == b"previous verified version"
    assert no_partials(eps["data"].local_root) == []


def test_stat_list_delete(eps):
    write(eps["data"], "d/a.h5", b"12345")
    write(eps["data"], "d/sub/b.h5", b"1")
    lt = LocalTransfer()
    assert lt.stat(eps["data"], "d/missing") is None
    assert [(f.path, f.is_dir, f.size) for f in lt.list(eps["data"], "d")] == [("d/a.h5", False, 5),
                                                                                ("d/sub", True, None)]
    with pytest.raises(TransferError, match="recursive"):
        lt.delete(eps["data"], "d")
    with pytest.raises(PathError):
        lt.delete(eps["data"], "")  # never the endpoint root
    assert lt.delete(eps["data"], "d", recursive=True)["files_deleted"] == 2
    assert not eps["data"].local_path("d").exists()
    with pytest.raises(TransferError, match="FILE_NOT_FOUND"):
        lt.delete(eps["data"], "d/a.h5")


def test_list_reports_symlinks_without_following_them(eps, tmp_path):
    """A dangling link used to make the whole directory unlistable (the prune sweep then skipped the location)."""
    write(eps["data"], "d/a.h5", b"12345")
    (tmp_path / "big.h5").write_bytes(b"x" * 100)
    (tmp_path / "dir").mkdir()
    d = eps["data"].local_path("d")
    (d / "dangling.h5").symlink_to(tmp_path / "gone.h5")
    (d / "file_link.h5").symlink_to(tmp_path / "big.h5")
    (d / "dir_link").symlink_to(tmp_path / "dir", target_is_directory=True)
    listing = [(f.path, f.is_dir, f.size, f.is_symlink) for f in LocalTransfer().list(eps["data"], "d")]
    assert listing == [("d/a.h5", False, 5, False), ("d/dangling.h5", False, None, True),
                       ("d/dir_link", False, None, True), ("d/file_link.h5", False, None, True)]


def test_endpoint_config_files(monkeypatch, tmp_path):
    monkeypatch.setenv("FACILITY_SITE", str(tmp_path))
    local = load_endpoints()
    assert local["data832_raw"].local_path("p/s.h5") == tmp_path / "endpoints/data832/raw/p/s.h5"
    assert {e.kind for e in local.values()} == {"local"}
    facility = load_endpoints(Path(os.environ["FACILITY_INCLUDE"]) / "endpoints.facility.yaml")
    assert set(facility) == set(local)  # the same names in both worlds
    assert facility["nersc832"].remote_path("raw/p/s.h5") == "/global/cfs/cdirs/als/data_mover/8.3.2/raw/p/s.h5"
    assert all(e.kind == "globus" and e.site == local[n].site for n, e in facility.items())
    with pytest.raises(ConfigError, match="no endpoint named 'nope'"):
        get_endpoint("nope")
    with pytest.raises(TransferError, match="different kinds"):
        backend_kind(local["spot832"], facility["nersc832"])


def test_bad_endpoint_config_names_file_and_key(tmp_path):
    bad = tmp_path / "endpoints.yaml"
    bad.write_text("endpoints:\n  x: {kind: globus, site: als}\n")
    with pytest.raises(ConfigError, match=r"endpoints\.yaml.*endpoints\.x.*uuid"):
        load_endpoints(bad)


def test_symlink_as_last_component_cannot_leak_outside_data(eps, tmp_path):
    (tmp_path / "secret.h5").write_bytes(b"not yours")
    eps["spot"].local_root.mkdir(parents=True)
    (eps["spot"].local_root / "scan.h5").symlink_to(tmp_path / "secret.h5")
    with pytest.raises(PathError, match="outside endpoint"):
        LocalTransfer().transfer(eps["spot"], "scan.h5", eps["data"], "scan.h5")
