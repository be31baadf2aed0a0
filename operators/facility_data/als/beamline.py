"""Beamline configuration: ``include/beamlines/<id>.yaml`` validated into a :class:`Beamline`.

One file per beamline says everything its DAGs need: where data lives (named *locations*, each an endpoint from
``include/endpoints.yaml`` plus a sub-directory), how long each location keeps it, which location must hold a
verified twin before a prune and whether the sweep may delete there at all (``delete``), which reconstruction targets run (the *decision settings*, overridable at run time by
an Airflow Variable), and the SciCat settings. The DAG factory builds every beamline's DAGs from these objects.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from facility_data.als.paths import PathRules
from facility_data.config import ConfigError, include_dir, load_model, site_root

RECON_TARGETS = ("local", "nersc", "alcf")
ReconTarget = Literal["local", "nersc", "alcf"]
#: Location roles the DAGs use. ``spot``/``data``/``nersc``/``alcf`` hold raw scans (``raw/<folder>/<file>.h5``);
#: the ``*_scratch`` roles hold reconstructions (``<folder>/rec<stem>/`` and ``<folder>/rec<stem>.zarr/``).
#: ``nersc_pscratch`` is where NERSC jobs write before results are copied out. ``spot`` is optional: without it the
#: scan starts at ``data`` (BL 7.0.1.2 and 7.3.3 write straight to their data servers).
ROLES = ("spot", "data", "nersc", "alcf", "data_scratch", "nersc_pscratch", "nersc_scratch", "alcf_scratch")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PathRulesConfig(_Strict):
    watcher_prefix: str = "/global"
    raw_dir: str = "raw"
    folder_pattern: str = r"^[A-Za-z0-9]+-\d+_[A-Za-z0-9._+-]+$"
    file_pattern: str = r"^\d{8}_\d{6}_[A-Za-z0-9._+-]+\.h5$"

    @field_validator("watcher_prefix")
    @classmethod
    def _absolute(cls, v: str) -> str:
        if not v.startswith("/") or ".." in v.split("/"):
            raise ValueError("must be an absolute path without '..'")
        return v.rstrip("/") or "/"

    @field_validator("raw_dir")
    @classmethod
    def _simple(cls, v: str) -> str:
        if not v or "/" in v.strip("/") or v in (".", ".."):
            raise ValueError("must be one directory name, e.g. raw")
        return v.strip("/")

    @field_validator("folder_pattern", "file_pattern")
    @classmethod
    def _regex(cls, v: str) -> str:
        """Matched over the whole name, ASCII only; the trigger forms carry it too, so it must stay portable."""
        try:
            re.compile(v, re.ASCII)
        except re.error as exc:
            raise ValueError(f"not a valid regular expression: {exc}") from None
        if "(?P" in v or "(?<" in v:
            raise ValueError("named groups and lookbehinds are not allowed (the trigger form's pattern must also "
                             "work in a browser)")
        for name in ("..", ".", "", "a/b"):
            if re.fullmatch(v, name, re.ASCII):
                raise ValueError(f"must not match {name!r} (a path component has to be a real name)")
        return v

    def rules(self) -> PathRules:
        return PathRules(**self.model_dump())


class Location(_Strict):
    """Where one kind of data lives: an endpoint (by name) and the sub-directory the contract's paths start in."""

    endpoint: str = Field(min_length=1)
    subdir: str = ""
    kind: Literal["raw", "recon"]
    retention_days: float | None = Field(default=None, ge=0, description="None: never pruned")
    check: list[str] = Field(default_factory=list, description="locations that must hold a verified twin")
    #: The explicit switch: scheduled sweeps delete here only when true (off by default, so a fresh deployment's
    #: sweep reports what it would delete and deletes nothing).
    delete: bool = Field(default=False, description="let bl<id>_prune delete at this location")

    @field_validator("subdir")
    @classmethod
    def _subdir(cls, v: str) -> str:
        v = v.strip("/")
        if v.startswith("/") or any(p in ("..", ".") for p in v.split("/") if p):
            raise ValueError("must be a relative path without '.' or '..'")
        return v

    def path_of(self, key: str) -> str:
        """The endpoint-relative path of ``key`` (``<folder>/<file>.h5`` or ``<folder>/rec<stem>[.zarr]``)."""
        return f"{self.subdir}/{key}" if self.subdir else key


class DecisionSettings(_Strict):
    """Which reconstruction targets run for a new scan (the seed's ``decision-settings`` JSON block)."""

    local: bool = False
    nersc: bool = False
    alcf: bool = False

    def enabled(self) -> list[str]:
        return [t for t in RECON_TARGETS if getattr(self, t)]


class SciCatSettings(_Strict):
    enabled: bool = True
    conn_id: str = "scicat_default"
    #: The raw file is read on the worker at ``h5_root/<raw-relative path>``; empty: the ``data`` location's
    #: local endpoint directory (the embedded default).
    h5_root: str = ""
    #: Datablock paths are rewritten from ``source_root`` to ``storage_root`` (the seed's INGEST_*_ROOT_PATH).
    source_root: str = ""
    storage_root: str = ""
    owner_group_fallback: str = ""


class NERSCRecon(_Strict):
    conn_id: str = "sfapi_default"
    globus_conn_id: str = "globus_default"
    machine: str = "perlmutter"
    recon_template: str = "tomo_recon.slurm.j2"
    multires_template: str = "batch.slurm.j2"
    #: Each job's Slurm walltime and the deadline of its wait (at which the job is cancelled); not capped.
    timeout_minutes: int = Field(default=45, gt=0)
    qos: str = Field(default="realtime", pattern=r"^[A-Za-z0-9_.-]+$")
    account: str = Field(default="als", pattern=r"^[A-Za-z0-9_.-]+$")
    constraint: str = Field(default="cpu", pattern=r"^[A-Za-z0-9_.&|-]+$")
    #: The beamline's container image and how the job runs it: ``podman-hpc`` or ``shifter`` at NERSC; ``none``
    #: runs the commands directly (the embedded default, whose local job runner has no container runtime).
    image: str = ""
    runtime: Literal["none", "podman-hpc", "shifter"] = "none"
    #: ``host:container`` bind mounts for the container (the CFS and pscratch trees the jobs read and write).
    mounts: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _container(self) -> NERSCRecon:
        if self.runtime != "none" and not self.image:
            raise ValueError(f"recon.nersc.runtime is {self.runtime!r} but recon.nersc.image is empty")
        for m in self.mounts:
            host, _, inside = m.partition(":")
            if not (host.startswith("/") and inside.startswith("/")):
                raise ValueError(f"recon.nersc.mounts entry {m!r} is not an absolute host:container pair")
        return self

    @property
    def walltime(self) -> str:
        """``timeout_minutes`` as Slurm's H:MM:SS."""
        return f"{self.timeout_minutes // 60}:{self.timeout_minutes % 60:02d}:00"

    def job_params(self) -> dict:
        """The Slurm and container parameters every NERSC job template takes."""
        return {"walltime": self.walltime, "qos": self.qos, "account": self.account, "constraint": self.constraint,
                "image": self.image, "runtime": self.runtime, "mounts": list(self.mounts)}


class ALCFRecon(_Strict):
    globus_conn_id: str = "globus_default"
    compute_conn_id: str = "globus_default"
    timeout_minutes: int = Field(default=30, gt=0)


class ReconSettings(_Strict):
    targets: list[ReconTarget] = Field(default_factory=lambda: list(RECON_TARGETS))
    pixel_size_um_fallback: float = Field(default=0.65, gt=0)
    nersc: NERSCRecon = NERSCRecon()
    alcf: ALCFRecon = ALCFRecon()


class PruneSettings(_Strict):
    enabled: bool = True
    schedule: str = "@daily"


class ReconcileSettings(_Strict):
    """``<id>_reconcile``: when it runs and which acquisition days a run without a date range looks at."""

    enabled: bool = True
    schedule: str = "@daily"
    lookback_days: int = Field(default=7, ge=1, le=366, description="today and the days before it")
    #: A scan whose chain moved (a ledger event) or whose source file changed less than this long ago may still be
    #: in flight: it is listed as such and left alone, so the sweep never races the new-file DAG.
    settle_minutes: int = Field(default=120, ge=0)


class Beamline(_Strict):
    id: str = Field(pattern=r"^bl[0-9a-z]+$", description="used in DAG ids, e.g. bl832")
    beamline: str = Field(pattern=r"^\d+(\.\d+)+$", description="e.g. 8.3.2")
    home_site: str = "als"
    description: str = ""
    paths: PathRulesConfig = PathRulesConfig()
    locations: dict[str, Location]
    send_to_nersc: bool = True
    scicat: SciCatSettings = SciCatSettings()
    decision_settings: DecisionSettings = DecisionSettings()
    recon: ReconSettings | None = None
    prune: PruneSettings = PruneSettings()
    reconcile: ReconcileSettings = ReconcileSettings()
    transfer_deadline_minutes: int = Field(default=60, gt=0)
    #: The durable copy ledger (SQLite) and where prune reports go; relative paths are under the site
    #: directory ($FACILITY_SITE), resolved when a task runs (never at DAG parse time).
    ledger_path: str = "als/ledger.sqlite"
    reports_dir: str = "reports"

    @field_validator("locations")
    @classmethod
    def _roles(cls, v: dict[str, Location]) -> dict[str, Location]:
        unknown = sorted(set(v) - set(ROLES))
        if unknown:
            raise ValueError(f"unknown location role(s) {unknown}; known roles: {list(ROLES)}")
        if "data" not in v:
            raise ValueError("location 'data' is required")
        for name, loc in v.items():
            for other in loc.check:
                if other == name:
                    raise ValueError(f"location {name!r} lists itself as its check location")
                if other not in v:
                    raise ValueError(f"location {name!r} checks against {other!r}, which is not a location")
                if v[other].kind != loc.kind:
                    raise ValueError(f"location {name!r} ({loc.kind}) checks against {other!r} ({v[other].kind})")
            if loc.retention_days is not None and not loc.check:
                raise ValueError(f"location {name!r} has retention_days but no check location")
            if loc.delete and loc.retention_days is None:
                raise ValueError(f"location {name!r} has delete: true but no retention_days")
        return v

    @model_validator(mode="after")
    def _targets(self) -> Beamline:
        targets = self.recon.targets if self.recon else []
        for t in self.decision_settings.enabled():
            if t not in targets:
                raise ValueError(f"decision_settings enables {t!r} but recon.targets is {targets}")
        need = {"nersc": ("nersc", "nersc_pscratch", "data_scratch"), "alcf": ("alcf", "alcf_scratch", "data_scratch"),
                "local": ("data_scratch",)}
        for t in targets:
            missing = [r for r in need[t] if r not in self.locations]
            if missing:
                raise ValueError(f"recon target {t!r} needs location(s) {missing}")
        return self

    # ---- derived values -------------------------------------------------------------------------------------
    @property
    def rules(self) -> PathRules:
        return self.paths.rules()

    @property
    def recon_targets(self) -> list[str]:
        return list(self.recon.targets) if self.recon else []

    @property
    def decision_variable(self) -> str:
        """The Airflow Variable (JSON) that overrides ``decision_settings`` at run time."""
        return f"{self.id}_decision_settings"

    @property
    def source_role(self) -> str:
        """Where the watcher sees a new scan: ``spot`` if configured, else ``data``."""
        return "spot" if "spot" in self.locations else "data"

    def asset_uri(self, target: str) -> str:
        return f"x-als://{self.id}/recon/{target}"

    def asset_name(self, target: str) -> str:
        return f"{self.id}_recon_{target}_request"

    def ledger_file(self) -> Path:
        return _under_site(self.ledger_path)

    def reports_path(self) -> Path:
        return _under_site(self.reports_dir) / "als" / self.id

    def location(self, role: str) -> Location:
        try:
            return self.locations[role]
        except KeyError:
            raise ConfigError(f"beamline {self.id}: no location {role!r} configured") from None

    def effective_decisions(self, override: str | dict | None) -> DecisionSettings:
        """File defaults overlaid with the run-time override (the Variable's JSON); a bad override is an error."""
        if override in (None, "", {}):
            return self.decision_settings
        if isinstance(override, str):
            try:
                override = json.loads(override)
            except json.JSONDecodeError as exc:
                raise ConfigError(f"Variable {self.decision_variable}: not valid JSON: {exc}") from None
        if not isinstance(override, dict):
            raise ConfigError(f"Variable {self.decision_variable}: expected a JSON object, got {override!r}")
        try:
            merged = DecisionSettings.model_validate({**self.decision_settings.model_dump(), **override})
        except ValidationError as exc:
            raise ConfigError(f"Variable {self.decision_variable}: {exc.errors()[0]['msg']} ({override!r})") from None
        for t in merged.enabled():
            if t not in self.recon_targets:
                raise ConfigError(f"Variable {self.decision_variable} enables {t!r}, which {self.id} cannot run "
                                  f"(recon.targets: {self.recon_targets})")
        return merged


def _under_site(value: str) -> Path:
    path = Path(value)
    return path if path.is_absolute() else site_root() / path


def beamlines_dir() -> Path:
    return include_dir() / "beamlines"


def load_beamline(name_or_path: str | Path) -> Beamline:
    """Load ``include/beamlines/<name>.yaml`` (or a path); the file name must match the beamline id."""
    path = Path(name_or_path)
    if path.suffix not in (".yaml", ".yml"):
        path = beamlines_dir() / f"{name_or_path}.yaml"
    bl = load_model(path, Beamline)
    if path.stem != bl.id:
        raise ConfigError(f"{path}: key id: file name must match the beamline id (got {bl.id!r})")
    return bl


def load_beamlines(directory: str | Path | None = None) -> list[Beamline]:
    """Every beamline configured in ``include/beamlines/``, sorted by id."""
    directory = Path(directory) if directory else beamlines_dir()
    return sorted((load_beamline(p) for p in directory.glob("*.yaml")), key=lambda b: b.id)


def check_endpoints(beamline: Beamline, endpoints: dict) -> None:
    """Every location's endpoint must be configured (``include/endpoints.yaml``); raises ConfigError naming it."""
    for role, loc in beamline.locations.items():
        if loc.endpoint not in endpoints:
            known = ", ".join(sorted(endpoints)) or "none"
            raise ConfigError(f"beamline {beamline.id}: location {role} uses endpoint {loc.endpoint!r}, which is not "
                              f"in the endpoints file (known: {known})")
