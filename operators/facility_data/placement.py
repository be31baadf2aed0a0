"""Where each task runs: its site role's queue (and executor), and Kubernetes resources for heavy tasks.

Every DAG file ends with ``place(dag)``: the rules in include/placement.yaml (first match wins, by DAG id and task
id pattern) give each task a site role. The role names the queue its site's workers serve; a heavy task's rule may
also name a pod profile, applied as ``executor_config={"pod_override": V1Pod}`` when ``pod_overrides`` is on. A task
that no rule matches fails the DAG file's parse, so a new task never runs on whatever worker picks it up first.
"""

from __future__ import annotations

import functools
import os
import re
from decimal import Decimal
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from facility_data.config import ConfigError, include_dir, load_model

#: the name of the worker container in the pod template; the provider merges a pod_override into it by position,
#: and the KubernetesExecutor names its task container "base"
BASE_CONTAINER = "base"
_QUANTITY = re.compile(r"^(?P<n>[0-9]+(\.[0-9]+)?)(?P<unit>m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?$")
_UNITS = {None: 1, "m": Decimal("0.001"), "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15,
          "E": 10**18, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}
Resource = Literal["cpu", "memory", "ephemeral-storage"]


class PlacementError(ConfigError):
    """The placement configuration is invalid, or a DAG has a task it does not place."""


def quantity(value: str) -> Decimal:
    """A Kubernetes resource quantity ("500m", "4", "16Gi") as a number, to compare requests with limits."""
    m = _QUANTITY.match(value)
    if not m:
        raise ValueError(f"{value!r} is not a Kubernetes quantity (e.g. 500m, 4, 4Gi)")
    return Decimal(m["n"]) * _UNITS[m["unit"]]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Role(_Strict):
    queue: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    #: for deployments with several executors (Airflow 3 per-task ``executor=``); None = the default executor
    executor: str | None = None


class PodProfile(_Strict):
    requests: dict[Resource, str] = {}
    limits: dict[Resource, str] = {}
    #: an emptyDir of this size mounted at /tmp (and requested as ephemeral storage)
    tmp_size: str | None = None

    @model_validator(mode="after")
    def _requests_within_limits(self):
        for name, value in [*self.requests.items(), *self.limits.items(), ("tmp_size", self.tmp_size or "0")]:
            try:
                quantity(value)
            except ValueError as exc:
                raise ValueError(f"{name}: {exc}") from None
        for name, req in self.requests.items():
            if name in self.limits and quantity(req) > quantity(self.limits[name]):
                raise ValueError(f"{name} request {req} exceeds its limit {self.limits[name]}")
        return self


class Rule(_Strict):
    dag: str = "*"
    task: str
    role: str
    pod: str | None = None

    def matches(self, dag_id: str, task_id: str) -> bool:
        return fnmatchcase(dag_id, self.dag) and fnmatchcase(task_id, self.task)


class Placement(_Strict):
    pod_overrides: bool = False
    roles: dict[str, Role] = Field(min_length=1)
    pods: dict[str, PodProfile] = {}
    tasks: list[Rule] = Field(min_length=1)

    @model_validator(mode="after")
    def _known_names(self):
        for i, rule in enumerate(self.tasks):
            if rule.role not in self.roles:
                raise ValueError(f"tasks[{i}] ({rule.dag} / {rule.task}): unknown role {rule.role!r}; "
                                 f"roles are {', '.join(self.roles)}")
            if rule.pod is not None and rule.pod not in self.pods:
                raise ValueError(f"tasks[{i}] ({rule.dag} / {rule.task}): unknown pod profile {rule.pod!r}; "
                                 f"profiles are {', '.join(self.pods) or '(none)'}")
        return self

    def rule_for(self, dag_id: str, task_id: str) -> Rule | None:
        return next((r for r in self.tasks if r.matches(dag_id, task_id)), None)


def placement_path() -> Path:
    """include/placement.yaml, unless FACILITY_PLACEMENT names another file."""
    return Path(os.environ.get("FACILITY_PLACEMENT") or include_dir() / "placement.yaml")


def load_placement(path: str | Path | None = None) -> Placement:
    path = Path(path or placement_path())
    try:
        content = path.read_bytes()
    except OSError:
        content = None  # load_model names the missing or unreadable file
    # one DAG file places many DAGs: validate once per content of the file and environment it expands
    return _load(path, content, tuple(sorted(os.environ.items())))


@functools.lru_cache(maxsize=4)
def _load(path: Path, content: bytes | None, environ: tuple) -> Placement:
    try:
        return load_model(path, Placement)
    except ConfigError as exc:
        raise PlacementError(str(exc)) from None


def pod_override(name: str, profile: PodProfile):
    """The V1Pod the KubernetesExecutor merges over its pod template for a task of this profile."""
    from kubernetes.client import models as k8s  # seconds to import: only when pod overrides are on

    requests = dict(profile.requests)
    mounts, volumes = [], []
    if profile.tmp_size:
        requests.setdefault("ephemeral-storage", profile.tmp_size)
        mounts.append(k8s.V1VolumeMount(name="tmp", mount_path="/tmp"))
        volumes.append(k8s.V1Volume(name="tmp", empty_dir=k8s.V1EmptyDirVolumeSource(size_limit=profile.tmp_size)))
    resources = k8s.V1ResourceRequirements(requests=requests or None, limits=dict(profile.limits) or None)
    container = k8s.V1Container(name=BASE_CONTAINER, volume_mounts=mounts or None, resources=resources)
    return k8s.V1Pod(metadata=k8s.V1ObjectMeta(labels={"facility-data/pod-profile": name}),
                     spec=k8s.V1PodSpec(containers=[container], volumes=volumes or None))


def _set(task, name: str, value) -> None:
    # a mapped task keeps its operator arguments in partial_kwargs (executor/executor_config have no setter there)
    if hasattr(task, "partial_kwargs"):
        task.partial_kwargs[name] = value
    else:
        setattr(task, name, value)


def place(dag, *, path: str | Path | None = None):
    """Give every task of ``dag`` its queue (and executor, pod override) from the placement file; returns ``dag``.
    Raises :class:`PlacementError` (a parse error of the DAG file) for a task that no rule places."""
    from airflow.sdk.configuration import conf

    cfg = load_placement(path)
    source = path or placement_path()
    default_queue = conf.get("operators", "default_queue")
    for task in dag.tasks:
        rule = cfg.rule_for(dag.dag_id, task.task_id)
        if rule is None:
            raise PlacementError(f"{source}: no rule under tasks: places {dag.dag_id} / {task.task_id}; add one "
                                 f"naming its site role ({', '.join(cfg.roles)})")
        role = cfg.roles[rule.role]
        if task.queue not in (default_queue, role.queue):  # one place says where tasks run: this file
            raise PlacementError(f"{dag.dag_id} / {task.task_id} sets queue={task.queue!r} itself, but {source} "
                                 f"places it on {role.queue!r}: set queues only in the placement file")
        _set(task, "queue", role.queue)
        if role.executor:
            _set(task, "executor", role.executor)
        if cfg.pod_overrides and rule.pod:
            pod = pod_override(rule.pod, cfg.pods[rule.pod])
            _set(task, "executor_config", {**(task.executor_config or {}), "pod_override": pod})
    return dag
