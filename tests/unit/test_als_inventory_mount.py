"""A Globus collection mounted on the worker (``local_root``): inspect hashes the file through the mount, and only
when the mounted file is the one Globus listed."""

from __future__ import annotations

import hashlib
from pathlib import Path

from facility_data.als.inventory import _mount_checksum
from facility_data.transfer.endpoints import Endpoint

UUID = "00000000-0000-4000-8000-000000000001"


def ep(root: Path | None) -> Endpoint:
    return Endpoint(name="spot832", kind="globus", site="als", uuid=UUID, root_path="/", local_root=root)


def test_a_mounted_file_is_hashed_through_the_mount(tmp_path):
    (tmp_path / "raw").mkdir()
    (tmp_path / "raw" / "a.h5").write_bytes(b"x" * 1000)
    assert _mount_checksum(ep(tmp_path), "raw/a.h5", 1000) == "sha256:" + hashlib.sha256(b"x" * 1000).hexdigest()


def test_no_checksum_without_a_mount_or_for_another_file(tmp_path):
    (tmp_path / "a.h5").write_bytes(b"x" * 1000)
    (tmp_path / "link.h5").symlink_to(tmp_path / "a.h5")
    assert _mount_checksum(ep(None), "a.h5", 1000) is None                   # not mounted anywhere
    assert _mount_checksum(ep(tmp_path / "absent"), "a.h5", 1000) is None    # mounted elsewhere, not here
    assert _mount_checksum(ep(tmp_path), "a.h5", 999) is None                # Globus listed another size
    assert _mount_checksum(ep(tmp_path), "link.h5", 1000) is None            # a symlink is not the listed file
    assert _mount_checksum(ep(tmp_path), "missing.h5", 1000) is None
    assert _mount_checksum(ep(tmp_path), "../a.h5", 1000) is None            # escapes the collection
