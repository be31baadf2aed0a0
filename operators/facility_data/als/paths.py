"""The ALS path contract, as plain functions (no Airflow, no I/O except the optional existence check).

The acquisition side's file watcher reports ``/global/raw/<PROP>-<digits>_<user>/<YYYYMMDD_HHMMSS_name>.h5``.
Stripping the watcher prefix (``/global``) gives the *relative* path ``raw/<folder>/<file>.h5``, the same on every
system (spot832, data832, NERSC, ALCF); each endpoint's own root decides where that lands on disk.
Reconstruction outputs are named from the scan: ``<folder>/rec<stem>/`` (TIFF stack) and ``<folder>/rec<stem>.zarr/``.

Manual confs are validated here before any side effect: the path must be under the beamline's raw root, contain
no traversal, name an ``.h5`` file whose folder and file names follow the beamline's rules (matched over the whole
name, ASCII only: no trailing newline, no non-ASCII digits), and (when a check is given) exist. The same rules,
as one JSON-schema pattern, guard the trigger forms (:func:`form_pattern`); :func:`check_scan_file` checks that a
local input is a regular HDF5 file.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

#: The HDF5 superblock signature; it sits at offset 0 or, after a user block, at 512, 1024, 2048, ...
HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


class ScanPathError(ValueError):
    """A scan path breaks the path contract (the message says which rule and how to fix it)."""


@dataclass(frozen=True)
class PathRules:
    """A beamline's path rules (see :class:`facility_data.als.beamline.PathRulesConfig`)."""

    watcher_prefix: str = "/global"
    raw_dir: str = "raw"
    folder_pattern: str = r"^[A-Za-z0-9]+-\d+_[A-Za-z0-9._+-]+$"
    file_pattern: str = r"^\d{8}_\d{6}_[A-Za-z0-9._+-]+\.h5$"

    @property
    def raw_root(self) -> PurePosixPath:
        """Where the watcher sees raw data, e.g. ``/global/raw``."""
        return PurePosixPath(self.watcher_prefix) / self.raw_dir

    def folder_ok(self, name: str) -> bool:
        return _full(self.folder_pattern, name)

    def file_ok(self, name: str) -> bool:
        return _full(self.file_pattern, name)


def _full(pattern: str, text: str) -> bool:
    """The whole of ``text`` matches, ASCII semantics (``\\d`` is 0-9 only; ``$`` cannot end before a newline)."""
    return re.fullmatch(pattern, text, re.ASCII) is not None


def _ecma(pattern: str) -> str:
    """A configured rule as the body of a JSON-schema (ECMA-262) pattern: anchors dropped, ``\\d`` as [0-9]."""
    body = pattern.removeprefix("^")
    if body.endswith("$") and not body.endswith("\\$"):
        body = body[:-1]
    return body.replace("\\d", "[0-9]")


def form_pattern(rules: PathRules) -> str:
    """The trigger form's JSON-schema ``pattern`` for a scan path, derived from ``rules``.

    Both the watcher form (``/global/raw/<folder>/<file>``) and the relative form (``raw/<folder>/<file>``) match.
    ``(?![\\s\\S])`` ends the match at the very end of the string in both Python and browsers (``$`` would accept
    a trailing newline in Python's ``re.search``, which the API's validator uses).
    """
    prefix, raw = re.escape(str(rules.raw_root)), re.escape(rules.raw_dir)
    return (f"^(?:{prefix}|{raw})/(?:{_ecma(rules.folder_pattern)})/(?:{_ecma(rules.file_pattern)})"
            r"(?![\s\S])")


@dataclass(frozen=True)
class ScanPath:
    """One scan, named by the path contract.

    ``folder`` is ``<PROP>-<digits>_<user>``; ``filename`` is ``<YYYYMMDD_HHMMSS_name>.h5``.
    """

    raw_dir: str
    folder: str
    filename: str

    @property
    def stem(self) -> str:
        return PurePosixPath(self.filename).stem

    @property
    def relative(self) -> str:
        """``raw/<folder>/<file>.h5``: the path common to every system."""
        return f"{self.raw_dir}/{self.folder}/{self.filename}"

    @property
    def key(self) -> str:
        """``<folder>/<file>.h5``: the scan's path inside a raw location (see ``Location.subdir``)."""
        return f"{self.folder}/{self.filename}"

    @property
    def tiff_dir(self) -> str:
        """``<folder>/rec<stem>``: the reconstructed TIFF stack, inside a scratch location."""
        return f"{self.folder}/rec{self.stem}"

    @property
    def zarr_dir(self) -> str:
        """``<folder>/rec<stem>.zarr``: the multiscale OME-Zarr, inside a scratch location."""
        return f"{self.folder}/rec{self.stem}.zarr"

    def watcher_path(self, rules: PathRules) -> str:
        return str(PurePosixPath(rules.watcher_prefix) / self.relative)


def parse_scan_path(file_path: object, rules: PathRules) -> ScanPath:
    """Parse a watcher path (``/global/raw/...``) or a relative one (``raw/...``) into a :class:`ScanPath`.

    Raises :class:`ScanPathError` naming the broken rule; nothing is touched.
    """
    if not isinstance(file_path, str):
        raise ScanPathError(f"file_path must be a string, got {type(file_path).__name__} ({file_path!r})")
    text = file_path
    if not text.strip():
        raise ScanPathError("file_path is empty")
    if text != text.strip():
        raise ScanPathError(f"file_path {file_path!r} has leading or trailing whitespace (a newline?)")
    if not text.isascii() or not text.isprintable():
        raise ScanPathError(f"file_path {file_path!r} contains non-ASCII or control characters")
    if "\x00" in text or "\\" in text:
        raise ScanPathError(f"file_path {file_path!r} contains a NUL byte or a backslash")
    parts = text.split("/")
    if any(p in ("..", ".") for p in parts):
        raise ScanPathError(f"file_path {file_path!r} contains '.' or '..' components (path traversal is refused)")
    path = PurePosixPath(text)
    raw_root = rules.raw_root
    if path.is_absolute():
        if not path.is_relative_to(raw_root):
            raise ScanPathError(f"file_path {file_path!r} is not under the beamline's raw root {raw_root}/")
        inner = path.relative_to(raw_root)
    else:
        if not path.is_relative_to(rules.raw_dir) or path == PurePosixPath(rules.raw_dir):
            raise ScanPathError(
                f"file_path {file_path!r} is neither under the raw root {raw_root}/ nor a relative "
                f"'{rules.raw_dir}/<folder>/<file>.h5' path"
            )
        inner = path.relative_to(rules.raw_dir)
    if len(inner.parts) != 2:
        raise ScanPathError(
            f"file_path {file_path!r} must be {raw_root}/<PROPOSAL>-<digits>_<user>/<YYYYMMDD_HHMMSS_name>.h5 "
            f"(one folder level under {raw_root}/, found {len(inner.parts) - 1})"
        )
    folder, filename = inner.parts
    if not filename.endswith(".h5"):
        raise ScanPathError(f"file_path {file_path!r} is not an .h5 file")
    if not rules.folder_ok(folder):
        raise ScanPathError(
            f"folder {folder!r} of {file_path!r} does not match the proposal folder rule {rules.folder_pattern}"
        )
    if not rules.file_ok(filename):
        raise ScanPathError(f"file name {filename!r} of {file_path!r} does not match the scan rule {rules.file_pattern}")
    return ScanPath(raw_dir=rules.raw_dir, folder=folder, filename=filename)


def validate_scan(file_path: object, rules: PathRules, *, exists: Callable[[str], bool] | None = None) -> ScanPath:
    """:func:`parse_scan_path`, then (if ``exists`` is given) check that the relative path exists at the source."""
    scan = parse_scan_path(file_path, rules)
    if exists is not None and not exists(scan.relative):
        raise ScanPathError(f"scan {scan.relative} (from {file_path!r}) does not exist at the acquisition endpoint")
    return scan


def scan_from_key(key: str, rules: PathRules) -> ScanPath:
    """The scan a raw-location key (``<folder>/<file>.h5``) names."""
    return parse_scan_path(f"{rules.raw_dir}/{key}", rules)


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISSOCK, "a socket"), (stat.S_ISLNK, "a symbolic link")):
        if test(mode):
            return name
    return "not a regular file"


def check_scan_file(path: Path, *, what: str) -> int:
    """``path`` must be a regular HDF5 file (not a symlink, directory, FIFO or device); returns its size.

    Raises :class:`ScanPathError` saying what ``path`` is instead. Only ``lstat`` and a few reads of the first
    bytes: a FIFO or device is never opened.
    """
    try:
        st = path.lstat()
    except FileNotFoundError:
        raise ScanPathError(f"{what} does not exist ({path})") from None
    if stat.S_ISLNK(st.st_mode):
        raise ScanPathError(f"{what} is a symbolic link (to {os.readlink(path)}); give the path of the real file")
    if not stat.S_ISREG(st.st_mode):
        raise ScanPathError(f"{what} is {_kind(st.st_mode)}, not an HDF5 file")
    with path.open("rb") as fh:
        offset = 0
        while offset + len(HDF5_SIGNATURE) <= st.st_size:
            fh.seek(offset)
            if fh.read(len(HDF5_SIGNATURE)) == HDF5_SIGNATURE:
                return st.st_size
            offset = 512 if offset == 0 else offset * 2
    raise ScanPathError(f"{what} is not an HDF5 file (no HDF5 signature; {st.st_size} B)")
