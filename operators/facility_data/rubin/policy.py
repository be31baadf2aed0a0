"""The unembargo policy (include/embargo_policy.yaml), validated at load.

Rows say how long each kind of exposure stays embargoed: the first row (in file order) whose Butler ``where``
clause matches an exposure gives its embargo; an exposure that matches no row is never released. A row may also say
how an exposure without its ``<obs_id>_expectedSensors.json`` manifest can be released (by default it never is).
"""

from __future__ import annotations

import os
import re
from datetime import datetime
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from facility_data.config import ConfigError, include_dir, load_model
from facility_data.rubin.storage import PARALLEL_READS, READ_AHEAD_BYTES

_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class WithoutManifest(_Strict):
    """Fallback for an exposure whose summit never wrote its expected-sensors manifest: release it once no new
    object has arrived in its embargo folder for this many hours (judged from the objects' modification times)."""

    release_after_quiet_hours: float = Field(gt=0, allow_inf_nan=False)


class PolicyRow(_Strict):
    instrument: str
    where: str = ""  # Butler query expression over exposure fields; empty = every exposure of the instrument
    embargo_hours: float = Field(ge=0, allow_inf_nan=False)
    #: None (default): an exposure without a manifest is never released (incomplete_at_source, "no manifest")
    without_manifest: WithoutManifest | None = None

    @field_validator("instrument")
    @classmethod
    def _instrument_name(cls, v: str) -> str:
        if not _NAME.match(v):
            raise ValueError(f"instrument must be a plain name, got {v!r}")
        return v


class ButlerRef(_Strict):
    """A Butler repository: an Airflow ``butler`` connection id or a repository URI (exactly one)."""

    conn_id: str | None = None
    uri: str | None = None

    @model_validator(mode="after")
    def _one(self):
        if bool(self.conn_id) == bool(self.uri):
            raise ValueError("give exactly one of conn_id or uri")
        return self

    @property
    def label(self) -> str:
        return self.conn_id or self.uri  # type: ignore[return-value]


class Storage(_Strict):
    kind: Literal["local", "s3"]
    root: str  # local directory, or s3://bucket[/prefix]
    aws_conn_id: str | None = None
    #: an s3 store's zip reads: GETs in flight at once, and the bytes they may read ahead of the zip writer (an
    #: object larger than this is read alone); 0 or 1 reads one object at a time
    read_ahead_bytes: int = Field(default=READ_AHEAD_BYTES, ge=0)
    parallel_reads: int = Field(default=PARALLEL_READS, ge=1, le=64)

    @model_validator(mode="after")
    def _s3_needs_conn(self):
        if self.kind == "s3" and (not self.root.startswith("s3://") or not self.aws_conn_id):
            raise ValueError("an s3 store needs root s3://bucket[/prefix] and aws_conn_id")
        if self.kind == "local" and not Path(self.root).is_absolute():
            raise ValueError(f"a local store root must be an absolute path, got {self.root!r}")
        return self


class ArchiveRule(_Strict):
    """Long-term archival (seed: "transfer raw data to FrDF"): a Rucio replication rule on each exposure's Obs
    dataset to ``rse_expression``. Its state (REPLICATING until Rucio's transfer daemons have copied the files, then
    OK) is reported, not awaited: the rule's existence is what the unembargo verifies."""

    rse_expression: str = Field(min_length=1, pattern=r"^\S+$")  # e.g. an RSE name or an attribute such as FrDF=true
    copies: int = Field(default=1, ge=1)


class RucioTarget(_Strict):
    conn_id: str = "rucio_default"
    rse: str
    scope: str
    backup_rse: str = "SLAC_RAW_DISK_BKUP"  # arcBackup=<backup_rse>:need asks for the HPSS copy
    skymap: str = "lsst_cells_v1"
    archive: ArchiveRule | None = None  # None: no archival rule is made or checked


class EmbargoPolicy(_Strict):
    rows: list[PolicyRow] = Field(min_length=1)
    source: ButlerRef
    raw_collection: str = "{instrument}/raw/all"
    guider_collection: str = "{instrument}/raw/guider"
    dataset_type: str = "raw"
    guider_dataset_type: str | None = "guider_raw"  # optional: tolerated when absent for an exposure
    storage: Storage
    destination_prefix: str
    destinations: list[ButlerRef] = Field(min_length=1)
    rucio: RucioTarget
    settle_minutes: float = Field(default=5.0, ge=0)

    @field_validator("destination_prefix")
    @classmethod
    def _absolute(cls, v: str) -> str:
        if not Path(v).is_absolute():
            raise ValueError(f"destination_prefix must be an absolute path, got {v!r}")
        return v

    @property
    def instruments(self) -> list[str]:
        return sorted({r.instrument for r in self.rows})

    def rows_for(self, instrument: str) -> list[PolicyRow]:
        rows = [r for r in self.rows if r.instrument == instrument]
        if not rows:
            raise ValueError(f"unknown instrument {instrument!r}: the policy knows {self.instruments}")
        return rows

    def collections(self, instrument: str) -> dict[str, str]:
        """Dataset type -> source collection for this instrument."""
        out = {self.dataset_type: self.raw_collection.format(instrument=instrument)}
        if self.guider_dataset_type:
            out[self.guider_dataset_type] = self.guider_collection.format(instrument=instrument)
        return out


#: the first 15-minute window the scheduler creates when the DAG is unpaused (catchup starts here); windows before
#: it are reached by backfills. Production: the day the service takes over. The local site sets its creation time.
DEFAULT_SCHEDULE_START = "2026-11-01T00:00:00+00:00"


def schedule_start() -> datetime:
    """The unembargo DAG's start_date: $FACILITY_RUBIN_START (ISO 8601 with a UTC offset) or the default."""
    value = os.environ.get("FACILITY_RUBIN_START") or DEFAULT_SCHEDULE_START
    try:
        start = datetime.fromisoformat(value)
    except ValueError:
        raise ConfigError(f"FACILITY_RUBIN_START={value!r} is not an ISO 8601 date-time") from None
    if start.tzinfo is None:
        raise ConfigError(f"FACILITY_RUBIN_START={value!r} needs a UTC offset, e.g. 2026-11-01T00:00:00+00:00")
    return start


def policy_path() -> Path:
    """include/embargo_policy.yaml, unless FACILITY_RUBIN_POLICY names another file (a config location, no secrets)."""
    return Path(os.environ.get("FACILITY_RUBIN_POLICY") or include_dir() / "embargo_policy.yaml")


def load_policy(path: str | Path | None = None) -> EmbargoPolicy:
    return load_model(path or policy_path(), EmbargoPolicy)
