"""Group-writable permissions for reconstruction outputs.

Results land on shared beamline storage and are later pruned by Globus deletes running as another member of the
beamline group; without group write on every file and directory those deletes fail with PERMISSION_DENIED (the
failure the original pipeline hit with its Zarr outputs). Directories also get the setgid bit so files created
in them later inherit the group.
"""

from __future__ import annotations

import os
from pathlib import Path

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
