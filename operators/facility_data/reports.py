"""The site's reports directory: which kind each report file is, how long each kind is kept, what the index lists.

Kinds follow the layout the writers use: ``als/<beamline>/prune-*`` is ``prune`` (ALS prune audits),
``rubin_reconcile/<instrument>/*`` is ``rubin_reconcile`` (with the night, ``day_obs``, in the file name); anything
else is named by its top directory. Retention is days since a file was written, per kind, from
``include/reports.yaml`` (a kind not listed there is kept forever); the writers apply it each time they write, to the
directory they wrote into, so no separate clean-up job is needed.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator

from facility_data.config import include_dir, load_model, site_root

log = logging.getLogger(__name__)

KINDS = ("prune", "rubin_reconcile", "als_reconcile")
SUFFIXES = {".html", ".htm", ".png", ".json", ".txt", ".csv", ".md", ".svg"}
_NIGHTS = re.compile(r"^(?:states_)?([0-9]{8})(?:-([0-9]{8}))?_")  # <night>_<stamp>.html, states_<a>-<b>_<stamp>.png


class ReportsConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    #: Days a report of each kind is kept after it was written; a kind not listed is kept forever.
    retention_days: dict[str, float] = Field(default_factory=dict)

    @field_validator("retention_days")
    @classmethod
    def _known(cls, v: dict[str, float]) -> dict[str, float]:
        unknown = sorted(set(v) - set(KINDS))
        if unknown:
            raise ValueError(f"unknown report kind(s) {unknown}; known: {list(KINDS)}")
        bad = {k: d for k, d in v.items() if not d > 0}
        if bad:
            raise ValueError(f"must be more than 0 days (got {bad})")
        return v


def load_config(path: str | Path | None = None) -> ReportsConfig:
    """``include/reports.yaml`` (or ``path``); without the file every report is kept forever."""
    path = Path(path) if path else include_dir() / "reports.yaml"
    return load_model(path, ReportsConfig) if path.exists() else ReportsConfig()


def reports_root() -> Path:
    """$FACILITY_REPORTS, else $FACILITY_SITE/reports (what the facility_reports UI plugin serves)."""
    if os.environ.get("FACILITY_REPORTS"):
        return Path(os.environ["FACILITY_REPORTS"])
    return site_root() / "reports"


@dataclass(frozen=True)
class ReportFile:
    relative: str
    kind: str
    nights: tuple[str, str] | None  # (first, last) day_obs the file covers, for rubin_reconcile
    modified: datetime
    size: int


def describe(root: Path, path: Path, st: os.stat_result) -> ReportFile:
    rel = path.relative_to(root)
    parts = rel.parts
    if parts[0] == "als" and path.name.startswith("prune-"):
        kind = "prune"
    else:
        kind = parts[0] if len(parts) > 1 else "other"
    m = _NIGHTS.match(path.name) if kind == "rubin_reconcile" else None
    nights = (m.group(1), m.group(2) or m.group(1)) if m else None
    return ReportFile(relative=rel.as_posix(), kind=kind, nights=nights,
                      modified=datetime.fromtimestamp(st.st_mtime, UTC), size=st.st_size)


def _scan(root: Path, directory: Path, out: list[ReportFile]) -> None:
    with os.scandir(directory) as entries:  # one stat per file; links are neither followed nor listed
        for e in entries:
            if e.name.startswith("."):
                continue
            if e.is_dir(follow_symlinks=False):
                _scan(root, Path(e.path), out)
            elif e.is_file(follow_symlinks=False) and Path(e.name).suffix.lower() in SUFFIXES:
                out.append(describe(root, Path(e.path), e.stat(follow_symlinks=False)))


def catalogue(root: Path) -> list[ReportFile]:
    """Every report file under ``root`` (regular files of a listed type, no hidden parts, no symlinks), newest
    first."""
    out: list[ReportFile] = []
    if root.is_dir():
        _scan(root, root, out)
    return sorted(out, key=lambda r: (r.modified, r.relative), reverse=True)


def apply_retention(directory: Path, kind: str, *, config: ReportsConfig | None = None,
                    now: datetime | None = None) -> list[Path]:
    """Delete the report files directly in ``directory`` written more than the kind's retention ago (never
    symlinks, never other file types); returns what was deleted, each also logged."""
    days = (config or load_config()).retention_days.get(kind)
    if days is None or not directory.is_dir():
        return []
    cutoff = (now or datetime.now(UTC)) - timedelta(days=days)
    deleted = []
    for p in sorted(directory.iterdir()):
        if (p.suffix.lower() in SUFFIXES and not p.is_symlink() and p.is_file()
                and datetime.fromtimestamp(p.stat().st_mtime, UTC) < cutoff):
            p.unlink()
            deleted.append(p)
    if deleted:
        log.info("report retention (%s, %g days): deleted %d file(s) from %s", kind, days, len(deleted), directory)
    return deleted
