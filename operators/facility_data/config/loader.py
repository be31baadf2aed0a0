from __future__ import annotations

import os
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

import yaml
from pydantic import BaseModel, ValidationError

M = TypeVar("M", bound=BaseModel)

_VAR = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?::-(?P<default>[^}]*))?\}")


class ConfigError(ValueError):
    """A configuration file is missing, unreadable or invalid."""


def site_root() -> Path:
    """Root of the local site (stand-in endpoints, embargo store, Butler repos, Airflow home)."""
    value = os.environ.get("FACILITY_SITE")
    if not value:
        raise ConfigError("FACILITY_SITE is not set: point it at the local site directory (make site-up sets it)")
    return Path(value)


def include_dir() -> Path:
    """The bundle's include/ directory: $FACILITY_INCLUDE, else include/ beside the dags/ folder of this checkout."""
    value = os.environ.get("FACILITY_INCLUDE")
    if value:
        return Path(value)
    here = Path(__file__).resolve()
    for parent in here.parents:
        if (parent / "include").is_dir() and (parent / "dags").is_dir():
            return parent / "include"
    raise ConfigError("cannot find the bundle's include/ directory: set FACILITY_INCLUDE")


@contextmanager
def temporary_env(values: Mapping[str, str]) -> Iterator[None]:
    """Set environment variables for the duration of a block, then restore exactly what was there (for libraries
    that read settings only from the environment, and for expanding ${VAR} with values not exported globally)."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def expand_env(value, *, source: str = "<config>"):
    """Expand ${VAR} and ${VAR:-default} in every string of a parsed YAML document."""
    if isinstance(value, dict):
        return {k: expand_env(v, source=source) for k, v in value.items()}
    if isinstance(value, list):
        return [expand_env(v, source=source) for v in value]
    if not isinstance(value, str):
        return value

    def repl(m: re.Match) -> str:
        name, default = m.group("name"), m.group("default")
        if name in os.environ:
            return os.environ[name]
        if default is not None:
            return default
        raise ConfigError(f"{source}: environment variable {name} is not set (used in {value!r})")

    return _VAR.sub(repl, value)


def load_model(path: str | Path, model: type[M]) -> M:
    """Read a YAML file, expand environment variables and validate it against a pydantic model."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: configuration file not found") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    try:
        return model.model_validate(expand_env(raw if raw is not None else {}, source=str(path)))
    except ValidationError as exc:
        problems = "; ".join(
            f"key {'.'.join(str(p) for p in err['loc']) or '<root>'}: {err['msg']} (got {err.get('input')!r})"
            for err in exc.errors()
        )
        raise ConfigError(f"{path}: {problems}") from None
