"""Group-writable permissions for reconstruction outputs, and installing an output directory only once complete.

Results land on shared beamline storage and are later pruned by Globus deletes running as another member of the
beamline group; without group write on every file and directory those deletes fail with PERMISSION_DENIED (the
failure the original pipeline hit with its Zarr outputs). Directories also get the setgid bit so files created
in them later inherit the group.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

log = logging.getLogger(__name__)

DIR_MODE = 0o2775
FILE_MODE = 0o664


def make_group_writable(root: Path | str) -> int:
    """chmod ``root`` and everything under it (dirs 2775, files 0664); returns how many entries were changed.

    Symlinks are left alone (chmod would follow them out of the tree).
    """
    root = Path(root)
    count = 0
    for dirpath, dirnames, filenames in os.walk(root):
        for name in filenames:
            p = os.path.join(dirpath, name)
            if not os.path.islink(p):
                os.chmod(p, FILE_MODE)
                count += 1
        for name in dirnames:
            p = os.path.join(dirpath, name)
            if not os.path.islink(p):
                os.chmod(p, DIR_MODE)
                count += 1
    if root.is_dir():
        os.chmod(root, DIR_MODE)
    elif root.is_file():
        os.chmod(root, FILE_MODE)
    return count + 1


@contextmanager
def staged_directory(final: Path) -> Iterator[Path]:
    """Yield a private sibling of ``final`` to write into. On success it is made group-writable and put at
    ``final`` (replacing an older output); on any failure it is removed. Readers never see a half-written output."""
    final.parent.mkdir(parents=True, exist_ok=True)
    partial = final.with_name(f".{final.name}.partial-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir()
    try:
        yield partial
        make_group_writable(partial)
        if final.exists():
            log.info("replacing the existing %s", final)
            shutil.rmtree(final)
        partial.rename(final)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
