"""The ALS path contract, as plain functions (no Airflow, no I/O except the optional existence check).

The acquisition side's file watcher reports ``/global/raw/<PROP>-<digits>_<user>/<YYYYMMDD_HHMMSS_name>.h5``.
Stripping the watcher prefix (``/global``) gives the *relative* path ``raw/<folder>/<file>.h5``, the same on every
system (spot832, data832, NERSC, ALCF); each endpoint's own root decides where that lands on disk.
Reconstruction outputs are named from the scan: ``<folder>/rec<stem>/`` (TIFF stack) and ``<folder>/rec<stem>.zarr/``.

Manual confs are validated here before any side effect: the path must be under the beamline's raw root, contain
no traversal, name an ``.h5`` file whose folder and file names follow the beamline's rules, and (when a check is
given) exist.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import PurePosixPath


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
    text = file_path.strip()
    if not text:
        raise ScanPathError("file_path is empty")
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
    if not re.match(rules.folder_pattern, folder):
        raise ScanPathError(
            f"folder {folder!r} of {file_path!r} does not match the proposal folder rule {rules.folder_pattern}"
        )
    if not re.match(rules.file_pattern, filename):
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
