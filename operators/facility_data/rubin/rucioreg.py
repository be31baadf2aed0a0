"""Rucio registration of an exposure's zip and dimensions yaml, one idempotent part at a time.

Parts, in order: file replicas (bytes/md5/adler32, ``rubin_butler`` metadata ``zip_file`` / ``dim_file``),
attachment to each ``Tract<N>`` (or ``NoTract``) day dataset and last to the exposure's ``Obs`` dataset (datasets
created when missing), the Obs dataset closed, then ``arcBackup=<backup RSE>:need`` and ``SafeCopies`` metadata on
it, and last (when the policy asks for archival) a replication rule on the Obs dataset to the archive RSE expression
(FrDF). :func:`missing_parts` reads the state from Rucio; :func:`register` does only what is missing and tolerates a part
that another run did meanwhile. A metadata value that is already set (e.g. arcBackup flipped by the archiver) is
never overwritten.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass

from facility_data.retry import call_with_retry, is_transient_rucio
from facility_data.rubin.zipbuild import FileHashes, InconsistentArtifact

log = logging.getLogger(__name__)


class RetryingRucio:
    """Wraps a rucio Client: every call retried on transient errors (bounded); generators materialised inside."""

    def __init__(self, client):
        self._client = client

    def __getattr__(self, name):
        fn = getattr(self._client, name)
        if not callable(fn):
            return fn

        def call(*args, **kwargs):
            def once():
                out = fn(*args, **kwargs)
                return list(out) if isinstance(out, Iterator) else out
            return call_with_retry(once, transient=is_transient_rucio, what=f"rucio {name}")
        return call


@dataclass(frozen=True)
class RucioFile:
    name: str
    path: str
    role: str  # rubin_butler metadata: zip_file or dim_file
    hashes: FileHashes | None  # None: compare sizes only (cheap status check)


@dataclass(frozen=True)
class Plan:
    scope: str
    rse: str
    files: tuple[RucioFile, ...]
    datasets: tuple[str, ...]  # tract/NoTract datasets, then the Obs dataset last
    obs: str
    arc_backup: str
    archive_expression: str | None = None  # None: no archival rule
    archive_copies: int = 1


def did_names(instrument: str, day_obs: int, obs_id: str, tracts: list[int]) -> tuple[list[str], str]:
    base = f"Dataset/{instrument}/raw"
    day_sets = [f"{base}/Tract{t}/{day_obs}" for t in tracts] or [f"{base}/NoTract/{day_obs}"]
    return day_sets, f"{base}/Obs/{day_obs}/{obs_id}"


def _exc(name: str):
    from rucio.common import exception

    return getattr(exception, name)


def _get_did(client, scope: str, name: str) -> dict | None:
    try:
        return client.get_did(scope, name)
    except _exc("DataIdentifierNotFound"):
        return None


def _file_state(client, plan: Plan, f: RucioFile) -> list[str]:
    did = _get_did(client, plan.scope, f.name)
    if did is None:  # nothing of this file yet: every part is missing
        return [f"replica {f.name}", *(f"attach {f.name} -> {ds}" for ds in plan.datasets)]
    if f.hashes is not None:
        want = (f.hashes.bytes, f.hashes.md5, f.hashes.adler32)
        have = (did.get("bytes"), did.get("md5"), did.get("adler32"))
        if want != have:
            raise InconsistentArtifact(f"rucio {plan.scope}:{f.name} has bytes/md5/adler32 {have}, file has {want}")
    missing = []
    reps = client.list_replicas([{"scope": plan.scope, "name": f.name}], rse_expression=plan.rse)
    if not any(plan.rse in r.get("rses", {}) for r in reps):
        missing.append(f"replica {f.name}")
    meta = client.get_metadata(plan.scope, f.name, plugin="ALL")
    if meta.get("rubin_butler") != f.role:
        missing.append(f"meta {f.name}")
    parents = {p["name"] for p in client.list_parent_dids(plan.scope, f.name)}
    missing += [f"attach {f.name} -> {ds}" for ds in plan.datasets if ds not in parents]
    return missing


def rule_part(obs: str, expression: str) -> str:
    return f"rule {obs} -> {expression}"


def find_rule(rules, scope: str, obs: str, expression: str) -> dict | None:
    """The replication rule on ``scope:obs`` to ``expression`` among ``rules`` (whoever owns it), or None."""
    for r in rules:
        if r.get("scope") == scope and r.get("name") == obs and r.get("rse_expression") == expression:
            return r
    return None


def rule_summary(rule: dict | None) -> dict | None:
    """What a report shows of an archival rule; its state is REPLICATING until Rucio's daemons have copied it."""
    if rule is None:
        return None
    return {k: rule.get(k) for k in ("id", "rse_expression", "copies", "state", "account")}


def archive_rule(client, plan: Plan) -> dict | None:
    """The Obs dataset's archival rule, or None (also when the dataset does not exist yet)."""
    if not plan.archive_expression:
        return None
    try:
        rules = client.list_did_rules(plan.scope, plan.obs)
    except _exc("DataIdentifierNotFound"):
        return None
    return find_rule(rules, plan.scope, plan.obs, plan.archive_expression)


def night_rules(client, scope: str, expression: str, instrument: str, day_obs: int) -> list[dict]:
    """Every rule to ``expression`` on an Obs dataset of the night, in one listing (for :func:`find_rule`).

    Rucio filters rules by exact name only, so the listing is bounded by creation time instead: a night's rules are
    made after its exposures were taken (a day's margin covers the day_obs offset from UTC)."""
    from datetime import datetime, timedelta

    from rucio.common.utils import DATE_FORMAT  # the server's RFC 1123 form, in UTC

    since = datetime.strptime(str(day_obs), "%Y%m%d") - timedelta(days=1)
    prefix = did_names(instrument, day_obs, "", [])[1]
    rules = client.list_replication_rules(filters={
        "scope": scope, "rse_expression": expression, "created_after": since.strftime(DATE_FORMAT)})
    return [r for r in rules if r.get("name", "").startswith(prefix)]


def missing_parts(client, plan: Plan) -> list[str]:
    """Every registration part not yet in Rucio, in the order :func:`register` does them."""
    missing = []
    for f in plan.files:
        missing += _file_state(client, plan, f)
    obs = _get_did(client, plan.scope, plan.obs)
    if obs is None or obs.get("open", True):
        missing.append(f"close {plan.obs}")
    meta = client.get_metadata(plan.scope, plan.obs, plugin="ALL") if obs else {}
    if "arcBackup" not in meta:
        missing.append("meta arcBackup")
    if "SafeCopies" not in meta:
        missing.append("meta SafeCopies")
    if plan.archive_expression and (obs is None or archive_rule(client, plan) is None):
        missing.append(rule_part(plan.obs, plan.archive_expression))
    return missing


def _tolerate(fn, *names: str) -> bool:
    """Run fn; True if it acted, False if Rucio said it was already done."""
    try:
        fn()
        return True
    except tuple(_exc(n) for n in names):
        return False


def register(client, plan: Plan) -> list[str]:
    """Do every missing part; return what was done (empty if everything was there)."""
    done = []
    todo = set(missing_parts(client, plan))
    for f in plan.files:
        if f.hashes is None:
            raise ValueError(f"{f.name}: hashes are needed to register a replica")
        if f"replica {f.name}" in todo:
            entry = {"scope": plan.scope, "name": f.name, "bytes": f.hashes.bytes, "md5": f.hashes.md5,
                     "adler32": f.hashes.adler32, "pfn": "file://" + f.path, "meta": {"rubin_butler": f.role}}
            if _tolerate(lambda e=entry: client.add_replicas(plan.rse, [e]), "Duplicate", "FileAlreadyExists"):
                done.append(f"replica {f.name}")
                log.info("registered replica %s:%s on %s (%d bytes)", plan.scope, f.name, plan.rse, f.hashes.bytes)
        elif f"meta {f.name}" in todo:  # replicas are registered with their metadata
            client.set_metadata(plan.scope, f.name, "rubin_butler", f.role)
            done.append(f"meta {f.name}")
    for ds in plan.datasets:
        if any(f"attach {f.name} -> {ds}" in todo for f in plan.files) and _get_did(client, plan.scope, ds) is None:
            if _tolerate(lambda d=ds: client.add_dataset(plan.scope, d, statuses={"monotonic": True}),
                         "DataIdentifierAlreadyExists"):
                done.append(f"dataset {ds}")
        for f in plan.files:
            if f"attach {f.name} -> {ds}" in todo:
                try:
                    acted = _tolerate(lambda d=ds, n=f.name: client.attach_dids(
                        plan.scope, d, [{"scope": plan.scope, "name": n}]), "FileAlreadyExists", "DuplicateContent")
                except _exc("UnsupportedOperation") as exc:  # attaching to a closed dataset
                    raise InconsistentArtifact(f"{plan.scope}:{ds} is closed but lacks {f.name}: {exc}") from exc
                if acted:
                    done.append(f"attach {f.name} -> {ds}")
    if f"close {plan.obs}" in todo:
        try:
            client.close(plan.scope, plan.obs)
            done.append(f"close {plan.obs}")
        except _exc("UnsupportedOperation"):
            # Rucio refuses to close a closed dataset: a retried close whose first answer was lost (the server had
            # closed it), or another run's close. Done if it is closed now; anything else is the server's refusal.
            if client.get_did(plan.scope, plan.obs).get("open", True):
                raise
            log.info("%s:%s was already closed", plan.scope, plan.obs)
    if "meta arcBackup" in todo:
        client.set_metadata(plan.scope, plan.obs, "arcBackup", plan.arc_backup)
        done.append("meta arcBackup")
    if "meta SafeCopies" in todo:
        client.set_metadata(plan.scope, plan.obs, "SafeCopies", "")
        done.append("meta SafeCopies")
    if plan.archive_expression and rule_part(plan.obs, plan.archive_expression) in todo:
        did = {"scope": plan.scope, "name": plan.obs}
        if _tolerate(lambda: client.add_replication_rule(
                [did], plan.archive_copies, plan.archive_expression, grouping="DATASET",
                comment="long-term archival of raw data"), "DuplicateRule"):
            done.append(rule_part(plan.obs, plan.archive_expression))
            log.info("archival rule %s:%s -> %s (%d copies)", plan.scope, plan.obs, plan.archive_expression,
                     plan.archive_copies)
    return done
