"""The prompt-products unembargo policy (include/prompt_policy.yaml), validated at load.

Each row is one data query in the manner of lsst-dm/transfer_embargo's ``transfer_non_raw.py``: dataset types and
collections (names, shell globs or ``/regex/``), an optional Butler ``where`` clause, the embargo in hours, the
collections whose dataset types are never transferred, and what the embargo is counted from (``select_by``).
The schema is closed: an unknown key, a negative embargo or an empty type list is an error naming file and key.
"""

from __future__ import annotations

import fnmatch
import os
import re
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from facility_data.config import include_dir, load_model
from facility_data.rubin.policy import ButlerRef

_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _check_patterns(values: list[str], what: str) -> list[str]:
    for v in values:
        if not v or not v.strip():
            raise ValueError(f"{what}: an empty pattern matches nothing")
        if is_regex(v):
            try:
                re.compile(v[1:-1])
            except re.error as exc:
                raise ValueError(f"{what}: {v!r} is not a valid regular expression: {exc}") from None
    return values


def is_regex(pattern: str) -> bool:
    return len(pattern) > 2 and pattern.startswith("/") and pattern.endswith("/")


def matches(pattern: str, name: str) -> bool:
    """``/regex/`` (whole name) or a shell glob (``*``, ``?``, ``[...]``; a plain name matches only itself)."""
    if is_regex(pattern):
        return re.fullmatch(pattern[1:-1], name) is not None
    return fnmatch.fnmatchcase(name, pattern)


def match_any(patterns: list[str], names) -> list[str]:
    return sorted(n for n in names if any(matches(p, n) for p in patterns))


class PromptRow(_Strict):
    name: str  # names the row in logs, task map indexes and the summary
    instrument: str
    dataset_types: list[str] = Field(min_length=1)
    collections: list[str] = Field(min_length=1)
    where: str = ""  # Butler query expression, ANDed after the time constraint (it cannot widen it)
    embargo_hours: float = Field(ge=0, allow_inf_nan=False)
    select_by: Literal["timespan", "ingest_date"] = "timespan"
    avoid_collections: list[str] = Field(default_factory=list)

    @field_validator("name", "instrument")
    @classmethod
    def _plain(cls, v: str) -> str:
        if not _NAME.match(v):
            raise ValueError(f"must be a plain name (letters, digits, _), got {v!r}")
        return v

    @field_validator("dataset_types")
    @classmethod
    def _types(cls, v: list[str]) -> list[str]:
        return _check_patterns(v, "dataset_types")

    @field_validator("collections", "avoid_collections")
    @classmethod
    def _collections(cls, v: list[str]) -> list[str]:
        return _check_patterns(v, "collections")


class PromptPolicy(_Strict):
    rows: list[PromptRow] = Field(min_length=1)
    source: ButlerRef
    destinations: list[ButlerRef] = Field(min_length=1)
    verify: Literal["checksum", "size"] = "checksum"

    @model_validator(mode="after")
    def _unique(self):
        names = [r.name for r in self.rows]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"row names must be unique, repeated: {dupes}")
        labels = [d.label for d in self.destinations]
        if len(set(labels)) != len(labels) or self.source.label in labels:
            raise ValueError("destinations must be distinct and differ from the source")
        return self

    def row(self, name: str) -> PromptRow:
        for r in self.rows:
            if r.name == name:
                return r
        raise ValueError(f"unknown prompt policy row {name!r}: the policy has {[r.name for r in self.rows]}")


def prompt_policy_path() -> Path:
    """include/prompt_policy.yaml, unless FACILITY_RUBIN_PROMPT_POLICY names another file."""
    return Path(os.environ.get("FACILITY_RUBIN_PROMPT_POLICY") or include_dir() / "prompt_policy.yaml")


def load_prompt_policy(path: str | Path | None = None) -> PromptPolicy:
    return load_model(path or prompt_policy_path(), PromptPolicy)
