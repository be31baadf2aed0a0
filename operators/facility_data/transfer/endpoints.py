"""Transfer endpoints, configured by name in include/endpoints.yaml (never hard-coded UUIDs in code or DAGs).

An endpoint is either a Globus collection (``kind: globus``, a UUID and a root path on that collection) or a local
POSIX directory standing in for one (``kind: local``, the embedded default). Every path handed to a transfer
backend is relative to the endpoint's root; :func:`safe_relpath` is the one place that rule is enforced.
"""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from facility_data.config import ConfigError, include_dir, load_model
from facility_data.refusal import PathError  # defined in the core, so the refusal boundary knows it


class Endpoint(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = ""
    kind: Literal["local", "globus"]
    site: str = Field(description="facility the storage is at, e.g. als, nersc, alcf (export control uses it)")
    uuid: str | None = Field(default=None, description="Globus collection UUID (kind: globus)")
    root_path: str = Field(default="/", description="root of this endpoint on its collection / local root")
    local_root: Path | None = Field(default=None, description="POSIX directory of a local endpoint (kind: local), "
                                    "or where a Globus collection is mounted on the workers (optional)")
    description: str = ""

    @model_validator(mode="after")
    def _kind_fields(self) -> Endpoint:
        if self.kind == "globus" and not self.uuid:
            raise ValueError("a globus endpoint needs a uuid")
        if self.kind == "local" and self.local_root is None:
            raise ValueError("a local endpoint needs a local_root")
        if not self.root_path.startswith("/") or ".." in PurePosixPath(self.root_path).parts:
            raise ValueError(f"root_path must be absolute and must not contain '..' (got {self.root_path!r})")
        return self

    def remote_path(self, relpath: str | PurePosixPath) -> str:
        """The path of ``relpath`` on this endpoint's collection (what Globus is told)."""
        rel = safe_relpath(relpath, allow_root=True)
        full = PurePosixPath(self.root_path) / rel
        return str(full)

    def local_path(self, relpath: str | PurePosixPath) -> Path:
        """The POSIX path of ``relpath`` under ``local_root`` (a local endpoint, or a Globus collection mounted on
        this worker), checked to stay inside the endpoint root."""
        if self.local_root is None:
            raise PathError(f"endpoint {self.name} ({self.kind}) has no local_root on this machine")
        rel = safe_relpath(relpath, allow_root=True)
        root = self.local_directory()
        if rel.parts in ((), (".",)):
            return root  # the endpoint root itself (its parent is outside by definition)
        full = root.joinpath(*rel.parts)
        # A symlink inside the tree (including the last component) must not lead outside it.
        resolved, real_root = full.resolve(), root.resolve()
        if resolved != real_root and real_root not in resolved.parents:
            raise PathError(f"{relpath!r} resolves outside endpoint {self.name} ({resolved})")
        return full

    def local_directory(self) -> Path:
        assert self.local_root is not None
        return self.local_root.joinpath(*PurePosixPath(self.root_path).parts[1:])


class EndpointsFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    endpoints: dict[str, Endpoint]


def safe_relpath(path: str | PurePosixPath, *, allow_root: bool = False) -> PurePosixPath:
    """Validate a path relative to an endpoint root: not absolute, no '..', no empty or NUL-containing names."""
    text = str(path)
    if "\x00" in text:
        raise PathError(f"path {text!r} contains a NUL byte")
    if text.startswith("/") or text.startswith("~"):
        raise PathError(f"path {text!r} must be relative to the endpoint root, not absolute")
    rel = PurePosixPath(text)
    if ".." in rel.parts:
        raise PathError(f"path {text!r} must not contain '..'")
    if "\\" in text:
        raise PathError(f"path {text!r} must use '/' separators")
    if not allow_root and rel.parts in ((), (".",)):
        raise PathError("an empty path (the endpoint root itself) is not allowed here")
    return rel


def default_endpoints_file() -> Path:
    """$FACILITY_ENDPOINTS_FILE (e.g. include/endpoints.facility.yaml in production), else include/endpoints.yaml."""
    override = os.environ.get("FACILITY_ENDPOINTS_FILE")
    return Path(override) if override else include_dir() / "endpoints.yaml"


def load_endpoints(path: str | Path | None = None) -> dict[str, Endpoint]:
    """Read the endpoint configuration; each endpoint carries its own name."""
    path = Path(path) if path else default_endpoints_file()
    model = load_model(path, EndpointsFile)
    return {name: ep.model_copy(update={"name": name}) for name, ep in model.endpoints.items()}


def get_endpoint(name: str, path: str | Path | None = None) -> Endpoint:
    endpoints = load_endpoints(path)
    try:
        return endpoints[name]
    except KeyError:
        known = ", ".join(sorted(endpoints)) or "none"
        raise ConfigError(f"{path or default_endpoints_file()}: no endpoint named {name!r} (known: {known})") from None
