"""The per-exposure steps of the unembargo, each ``check -> act only if missing -> verify``.

Order: ``gate`` (completeness), ``zip``, ``dimensions``, ``butler:<destination>`` (one per destination repo),
``rucio``. State is always read from the sinks (zip file against the embargo objects, yaml content, destination
Butler registry and datastore, Rucio DIDs), never from a marker, so rerunning any step or the whole sequence any
number of times, after a crash anywhere, converges to the same end state. :func:`exposure_status` answers "which
steps are verified and which is the first missing" without changing anything (used by reconciliation).

Every acting step (and :func:`run_exposure`, over all its steps) holds the exposure's lease
(:mod:`facility_data.rubin.lease`, a file next to the zip), so no two runs of any DAG, on any worker, check and act
on the same exposure at once: a check never sees another run mid-step, and a step that finds a live holder waits
boundedly, then raises ``lease.ExposureBusy`` (retry later), never a verdict about the artifacts. Temporary files
name the lease that writes them; the next holder removes a dead owner's at once.

Two safety rules hold in the steps themselves, whatever called them: the gate releases nothing that is not provably
complete and consistent at source (expected-sensors manifest, or the policy row's documented fallback; object sizes
equal to the embargo Butler's records), and every step that puts an exposure into main storage first re-derives its
release time from the source Butler and the current policy and refuses (:class:`EmbargoViolation`) before it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from facility_data.rubin import butlerops, lease, rucioreg
from facility_data.rubin.dimensions import export_yaml, exposure_records, same_export, visit_ids
from facility_data.rubin.policy import ButlerRef, EmbargoPolicy
from facility_data.rubin.storage import EmbargoStore, open_store
from facility_data.rubin.windows import (
    INCOMPLETE_AT_SOURCE,
    INCONSISTENT_AT_SOURCE,
    ExposureRef,
    current_release,
    governing_row,
)
from facility_data.rubin.zipbuild import (
    FileHashes,
    InconsistentArtifact,
    build_zip,
    file_hashes,
    install_bytes,
    quick_check,
    temp_owner,
    temporaries,
    verify_zip,
)

log = logging.getLogger(__name__)

GATE, ZIP, DIMENSIONS, RUCIO = "gate", "zip", "dimensions", "rucio"


class IncompleteExposure(RuntimeError):
    """The exposure's embargo folder/Butler lacks sensors that expectedSensors.json lists, or the manifest."""

    def __init__(self, obs_id: str, missing: list[str], reason: str | None = None):
        super().__init__(f"{obs_id}: incomplete at source: "
                         f"{reason or f'{len(missing)} expected sensor(s) missing: {missing[:10]}'}")
        self.obs_id, self.missing = obs_id, missing


class InconsistentAtSource(InconsistentArtifact):
    """The embargo store and the embargo Butler disagree about an exposure (e.g. a truncated upload): never released."""


class EmbargoViolation(RuntimeError):
    """A step was asked to release an exposure whose release time (re-derived now) has not come, or never comes."""


class StepFailed(RuntimeError):
    """A step acted but its effect could not be verified afterwards."""


def butler_step(ref: ButlerRef) -> str:
    return f"butler:{ref.label}"


def step_names(policy: EmbargoPolicy) -> list[str]:
    return [GATE, ZIP, DIMENSIONS, *(butler_step(d) for d in policy.destinations), RUCIO]


@dataclass(frozen=True)
class Paths:
    zip: Path
    yaml: Path


def paths(policy: EmbargoPolicy, exp: ExposureRef) -> Paths:
    day = Path(policy.destination_prefix) / exp.instrument / str(exp.day_obs)
    return Paths(day / f"{exp.obs_id}.zip", day / f"{exp.obs_id}_dimensions.yaml")


@dataclass
class Outcome:
    step: str
    state: str  # verified (was already done) | done (acted and verified) | would-act (dry run)
    detail: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


class Context:
    """Everything the steps touch, opened lazily: policy, embargo store, Butlers, Rucio client.

    Tests and scripts pass ready objects; the DAG lets the defaults open them through Airflow connections.
    ``lease_wait_s``: how long a step waits for another run's lease on the exposure before ExposureBusy.
    """

    def __init__(self, policy: EmbargoPolicy, *, store: EmbargoStore | None = None, rucio=None,
                 butler_factory: Callable | None = None, dry_run: bool = False,
                 clock: Callable[[], datetime] | None = None, lease_wait_s: float | None = None):
        self.policy, self.dry_run, self.lease_wait_s = policy, dry_run, lease_wait_s
        self._leases: dict[str, lease.Lease] = {}
        self.clock = clock or (lambda: datetime.now(UTC))  # injectable for tests; the embargo is wall-clock time
        self._store, self._rucio = store, rucio
        self._butler_factory = butler_factory or butlerops.open_butler
        self._butlers: dict = {}
        self._cache: dict = {}

    @property
    def store(self) -> EmbargoStore:
        if self._store is None:
            self._store = open_store(self.policy.storage)
        return self._store

    @property
    def rucio(self):
        if self._rucio is None:
            from facility_data.hooks.rucio import RucioHook

            self._rucio = RucioHook(rucio_conn_id=self.policy.rucio.conn_id).get_conn()
        if callable(self._rucio) and not hasattr(self._rucio, "get_did"):
            self._rucio = self._rucio()
        if not isinstance(self._rucio, rucioreg.RetryingRucio):
            self._rucio = rucioreg.RetryingRucio(self._rucio)
        return self._rucio

    def butler(self, ref: ButlerRef, *, writeable: bool = False):
        """The Butler of ``ref``, opened once; a destination whose dimension universe is not the source's is
        refused here (butlerops.UniverseMismatch), before any step reads or writes it."""
        key = (ref.label, writeable)
        if key not in self._butlers:
            butler = self._butler_factory(ref, writeable=writeable)
            if ref != self.policy.source:
                butlerops.check_same_universe(self.source, butler, self.policy.source.label, ref.label)
            self._butlers[key] = butler
        return self._butlers[key]

    @property
    def source(self):
        return self.butler(self.policy.source)

    def cached(self, exp: ExposureRef, what: str, compute: Callable):
        key = (exp.obs_id, what)
        if key not in self._cache:
            self._cache[key] = compute()
        return self._cache[key]

    @contextmanager
    def exclusive(self, exp: ExposureRef) -> Iterator[str | None]:
        """Hold the exposure's lease (reentrant within this context) and yield its owner token; a dry run reads
        only and takes none (it never blocks a real run). Raises lease.ExposureBusy if a live run holds it."""
        if self.dry_run:
            yield None
            return
        held = self._leases.get(exp.obs_id)
        if held is not None:
            yield held.token
            return
        self._leases[exp.obs_id] = held = lease.acquire(lease.lease_path(paths(self.policy, exp).zip),
                                                        wait_s=self.lease_wait_s)
        try:
            yield held.token
        finally:
            del self._leases[exp.obs_id]
            held.release()
            if held.lost:  # exclusion lapsed for a while; the check after each act still verified its effect
                log.error("%s: %s", exp.obs_id, held.lost)

    # facts about one exposure, computed once per context
    def objects(self, exp):
        return self.cached(exp, "objects", lambda: self.store.list_folder(exp.instrument, exp.day_obs, exp.obs_id))

    def refs(self, exp):
        return self.cached(exp, "refs", lambda: butlerops.source_refs(self.source, self.policy, exp))

    def records(self, exp):
        return self.cached(exp, "records", lambda: exposure_records(self.source, exp.instrument, exp.exposure))

    def visits(self, exp) -> list[int]:
        return visit_ids(self.records(exp))

    def row(self, exp):
        """The current policy's row governing ``exp`` in the source Butler (None: no row, or no exposure)."""
        return self.cached(exp, "row", lambda: governing_row(self.source, self.policy, exp.instrument,
                                                             exp.exposure)[1])


# ---------------------------------------------------------------------------------------------------- embargo
def ensure_released(ctx: Context, exp: ExposureRef) -> datetime:
    """Refuse (EmbargoViolation) unless the clock is past ``exp``'s release, re-derived from the source Butler's
    exposure record and the current policy (never earlier than the ref's own release)."""
    release, why = current_release(ctx.source, ctx.policy, exp)
    if release is None:
        raise EmbargoViolation(f"{exp.obs_id}: not releasable: {why}")
    now = ctx.clock()
    if now < release:
        raise EmbargoViolation(f"{exp.obs_id}: still embargoed until {release.isoformat()} (now {now.isoformat()}); "
                               "nothing released")
    return release


# ---------------------------------------------------------------------------------------------------- sizes
def recorded_files(butler, dataset_ids) -> dict[str, list[tuple[str, int]]]:
    """Dataset id -> [(artifact basename, size the Butler recorded; -1 if it recorded none)], from the datastore's
    stored-file records (as butlerops.zip_index reads them), in bulk."""
    import uuid

    datastore = butler._datastore  # no public API exposes stored-file records without copying the artifacts
    from lsst.daf.butler.datastore.stored_file_info import StoredFileInfo

    ids = [i if isinstance(i, uuid.UUID) else uuid.UUID(str(i)) for i in dataset_ids]
    out: dict[str, list[tuple[str, int]]] = {}
    for start in range(0, len(ids), 500):
        for record in datastore._table.fetch(dataset_id=ids[start:start + 500]):
            info = StoredFileInfo.from_record(record)
            name = Path(info.file_location(datastore.locationFactory).uri.path).name
            out.setdefault(str(record["dataset_id"]), []).append((name, int(info.file_size)))
    return out


def size_problems(recorded: dict[str, list[tuple[str, int]]], dataset_ids, objects) -> list[str]:
    """Where the embargo store disagrees with the embargo Butler: a dataset without a stored-file record, an artifact
    not in the folder, no recorded size, or a size that differs (a truncated or replaced upload)."""
    sizes = {o.name: o.size for o in objects}
    problems = []
    for did in sorted(str(i) for i in dataset_ids):
        if did not in recorded:
            problems.append(f"dataset {did} has no stored-file record in the embargo Butler")
        for name, size in recorded.get(did, ()):
            if name not in sizes:
                problems.append(f"{name}: in the embargo Butler, not in the embargo folder")
            elif size < 0:
                problems.append(f"{name}: the embargo Butler recorded no size")
            elif size != sizes[name]:
                problems.append(f"{name}: {sizes[name]} bytes in the store, {size} recorded by the embargo Butler")
    return problems


# ---------------------------------------------------------------------------------------------------- gate
def manifest_name(obs_id: str) -> str:
    return f"{obs_id}_expectedSensors.json"


def quiet_enough(objects, hours: float, now: datetime) -> tuple[bool, str]:
    """The no-manifest fallback: whether no object of the folder arrived in the last ``hours`` (fails closed when a
    modification time is unknown)."""
    times = [o.mtime for o in objects]
    if not times or any(t is None for t in times):
        return False, "modification times unknown"
    newest = datetime.fromtimestamp(max(times), UTC)
    if now - newest < timedelta(hours=hours):
        return False, f"newest object arrived {newest.isoformat()}, less than {hours:g} h ago"
    return True, f"no new object since {newest.isoformat()} ({hours:g} h quiet)"


def without_manifest(ctx: Context, exp: ExposureRef, objects) -> tuple[bool, str]:
    """An exposure lacking its manifest: released only under its governing row's ``without_manifest`` fallback."""
    row = ctx.row(exp)
    fallback = row.without_manifest if row is not None else None
    if fallback is None:
        return False, "no manifest"
    quiet, why = quiet_enough(objects, fallback.release_after_quiet_hours, ctx.clock())
    if not quiet:
        return False, f"no manifest; {why}"
    log.warning("%s: no %s; released by the policy's without_manifest fallback: %s", exp.obs_id,
                manifest_name(exp.obs_id), why)
    return True, f"no manifest; without_manifest fallback: {why}"


def check_gate(ctx: Context, exp: ExposureRef, deep: bool = True) -> tuple[bool, dict]:
    """Complete and consistent at source, or not with ``state`` (incomplete_at_source / inconsistent_at_source) and
    ``reason``. Fails closed: no manifest means not released unless the governing row opts in to its fallback."""
    refs = ctx.refs(exp)
    if not refs:
        return False, {"state": INCOMPLETE_AT_SOURCE, "reason": "no raw datasets",
                       "missing": ["<all: no raw datasets>"]}
    objects = ctx.objects(exp)
    ids = [r.id for r in refs]
    bad = size_problems(ctx.cached(exp, "recorded", lambda: recorded_files(ctx.source, ids)), ids, objects)
    if bad:
        return False, {"state": INCONSISTENT_AT_SOURCE, "reason": f"store and embargo Butler differ: {bad[:5]}",
                       "mismatched": bad}
    present = {butlerops.detector_name(r) for r in refs}
    name = manifest_name(exp.obs_id)
    if name not in {o.name for o in objects}:
        ok, why = without_manifest(ctx, exp, objects)
        if not ok:
            return False, {"state": INCOMPLETE_AT_SOURCE, "reason": why, "missing": [name]}
        return True, {"datasets": len(refs), "expected": None, "fallback": why}
    key = f"{exp.instrument}/{exp.day_obs}/{exp.obs_id}/{name}"
    expected = json.loads(ctx.store.read(key)).get("expectedSensors", {})
    wanted = {det for det, kind in expected.items() if kind in ("SCIENCE", "WAVEFRONT", "GUIDER")}
    missing = sorted(wanted - present)
    if missing:
        return False, {"state": INCOMPLETE_AT_SOURCE, "datasets": len(refs), "expected": len(wanted),
                       "missing": missing, "reason": f"incomplete at source: missing {missing[:10]}"}
    return True, {"datasets": len(refs), "expected": len(wanted), "missing": []}


def run_gate(ctx: Context, exp: ExposureRef) -> Outcome:
    ok, detail = check_gate(ctx, exp)
    if not ok:
        if detail["state"] == INCONSISTENT_AT_SOURCE:
            raise InconsistentAtSource(f"{exp.obs_id}: {detail['reason']}")
        raise IncompleteExposure(exp.obs_id, detail["missing"], detail["reason"])
    return Outcome(GATE, "verified", detail)


# ---------------------------------------------------------------------------------------------------- zip
def _ref_ids(ctx, exp) -> set[str]:
    return {str(r.id) for r in ctx.refs(exp)}


def check_zip(ctx: Context, exp: ExposureRef, deep: bool = True) -> tuple[bool, dict]:
    """Deep: every member against the embargo object (and hashes); shallow: names and sizes only."""
    path = paths(ctx.policy, exp).zip
    if not path.exists():
        return False, {"path": str(path)}
    if deep:
        hashes = verify_zip(path, ctx.store, ctx.objects(exp), _ref_ids(ctx, exp))
        ctx._cache[(exp.obs_id, "zip_hashes")] = hashes
        return True, hashes.to_dict()
    problem = quick_check(path, ctx.objects(exp))
    if problem:
        raise InconsistentArtifact(f"{path}: {problem}")
    return True, {"path": str(path), "bytes": path.stat().st_size}


#: a temporary file whose name names no owner (written before owners were named) is a leftover after this long
STALE_TEMP_S = 6 * 3600


def remove_dead_temps(dest: Path, token: str | None) -> int:
    """Remove ``dest``'s temporary files left by dead owners, whatever their age; returns the bytes freed.

    Called under the exposure's lease (``token``), so no other live run of this exposure is writing: a temporary
    file of another owner is a leftover, unless its owner is a process still alive on this host (a run that lost
    its lease; it removes its own). Unnamed (old-style) ones go after STALE_TEMP_S.
    """
    import time

    freed = 0
    for tmp in temporaries(dest):
        owner = temp_owner(tmp, dest)
        if owner == token:
            continue
        named = lease.parse_token(owner)
        try:
            st = tmp.stat()
            if named and lease.token_owner_alive_here(owner):
                continue
            if not named and time.time() - st.st_mtime <= STALE_TEMP_S:
                continue
            tmp.unlink()
        except FileNotFoundError:
            continue
        freed += st.st_size
        log.warning("removed %s (%d bytes), left by %s killed while writing", tmp, st.st_size,
                    f"run {owner}" if named else "a run")
    return freed


def run_zip(ctx: Context, exp: ExposureRef) -> Outcome:
    ensure_released(ctx, exp)
    with ctx.exclusive(exp) as owner:
        dest = paths(ctx.policy, exp).zip
        if not ctx.dry_run:  # before the check: a run killed between install and cleanup left one beside the zip
            remove_dead_temps(dest, owner)
        done, detail = check_zip(ctx, exp)
        if done:
            return Outcome(ZIP, "verified", detail)
        if ctx.dry_run:
            return Outcome(ZIP, "would-act",
                           {"would": f"build {detail['path']} from {len(ctx.objects(exp))} objects"})
        run_gate(ctx, exp)  # complete and consistent at source, whatever called this step
        index = butlerops.zip_index(ctx.source, ctx.refs(exp), ctx.objects(exp))
        hashes, path = build_zip(ctx.store, ctx.objects(exp), index, dest, owner=owner)
        if hashes is None:  # appeared meanwhile (a writer without the lease): verified like any existing one
            done, detail = check_zip(ctx, exp)
            return Outcome(ZIP, "verified", detail)
        problem = quick_check(path, ctx.objects(exp))
        if problem:
            raise StepFailed(f"{path} after install: {problem}")
        ctx._cache[(exp.obs_id, "zip_hashes")] = hashes
        return Outcome(ZIP, "done", hashes.to_dict())


def zip_hashes(ctx: Context, exp: ExposureRef, known: dict | None = None) -> FileHashes:
    """The zip's hashes: from this context, from the zip step's result (XCom), or by reading the file once."""
    path = paths(ctx.policy, exp).zip
    if known and known.get("md5") and known.get("path") == str(path) and path.stat().st_size == known["bytes"]:
        return FileHashes(str(path), known["bytes"], known["md5"], known["adler32"])
    return ctx.cached(exp, "zip_hashes", lambda: file_hashes(path))


# ---------------------------------------------------------------------------------------------------- dimensions
def _yaml_bytes(ctx, exp) -> bytes:
    return ctx.cached(exp, "yaml", lambda: export_yaml(ctx.source, ctx.records(exp)))


def check_dimensions(ctx: Context, exp: ExposureRef, deep: bool = True) -> tuple[bool, dict]:
    path = paths(ctx.policy, exp).yaml
    if not path.exists():
        return False, {"path": str(path)}
    if not same_export(path.read_bytes(), _yaml_bytes(ctx, exp)):
        raise InconsistentArtifact(f"{path} differs from the source Butler's records for {exp.obs_id}")
    return True, {"path": str(path), "bytes": path.stat().st_size}


def run_dimensions(ctx: Context, exp: ExposureRef) -> Outcome:
    ensure_released(ctx, exp)
    with ctx.exclusive(exp) as owner:
        dest = paths(ctx.policy, exp).yaml
        if not ctx.dry_run:  # as for the zip: also when the yaml is already installed
            remove_dead_temps(dest, owner)
        done, detail = check_dimensions(ctx, exp)
        if done:
            return Outcome(DIMENSIONS, "verified", detail)
        if ctx.dry_run:
            return Outcome(DIMENSIONS, "would-act", {"would": f"write {detail['path']}"})
        created = install_bytes(dest, _yaml_bytes(ctx, exp), owner=owner)
        done, detail = check_dimensions(ctx, exp)
        if not done:
            raise StepFailed(f"{detail['path']} missing after install")
        log.info("%s %s", "wrote" if created else "found (another run wrote)", detail["path"])
        return Outcome(DIMENSIONS, "done" if created else "verified", detail)


# ---------------------------------------------------------------------------------------------------- butler
def _destination(ctx: Context, label: str) -> ButlerRef:
    for d in ctx.policy.destinations:
        if d.label == label or butler_step(d) == label:
            return d
    raise ValueError(f"unknown destination {label!r}; the policy has {[d.label for d in ctx.policy.destinations]}")


def check_butler(ctx: Context, exp: ExposureRef, dest: ButlerRef, deep: bool = True) -> tuple[bool, dict]:
    ok, why = butlerops.ingested(ctx.butler(dest, writeable=not ctx.dry_run), ctx.refs(exp), ctx.visits(exp),
                                 exp.instrument)
    return ok, {"destination": dest.label, "state": why}


def run_butler(ctx: Context, exp: ExposureRef, dest: ButlerRef) -> Outcome:
    name = butler_step(dest)
    ctx.butler(dest, writeable=not ctx.dry_run)  # a destination in another dimension universe: refused first
    ensure_released(ctx, exp)
    with ctx.exclusive(exp):
        done, detail = check_butler(ctx, exp, dest)
        if done:
            return Outcome(name, "verified", detail)
        if ctx.dry_run:
            return Outcome(name, "would-act", {"would": f"ingest {paths(ctx.policy, exp).zip} into {dest.label}"})
        zip_path = paths(ctx.policy, exp).zip
        if not zip_path.exists():
            raise StepFailed(f"{zip_path} is missing: the zip step must run first")
        butlerops.ingest(ctx.butler(dest, writeable=True), ctx.source, ctx.refs(exp), ctx.visits(exp),
                         exp.instrument, zip_path)
        done, detail = check_butler(ctx, exp, dest)
        if not done:
            raise StepFailed(f"{exp.obs_id} not fully ingested into {dest.label} after ingest: {detail['state']}")
        log.info("%s: ingested %s into %s", exp.obs_id, zip_path.name, dest.label)
        return Outcome(name, "done", detail)


# ---------------------------------------------------------------------------------------------------- rucio
def rucio_plan(ctx: Context, exp: ExposureRef, hashes: FileHashes | None) -> rucioreg.Plan:
    p = paths(ctx.policy, exp)
    tracts = ctx.cached(exp, "tracts", lambda: butlerops.tracts(ctx.source, ctx.policy, exp, ctx.visits(exp)))
    day_sets, obs = rucioreg.did_names(exp.instrument, exp.day_obs, exp.obs_id, tracts)
    yaml_hashes = file_hashes(p.yaml) if hashes is not None and p.yaml.exists() else None
    base = f"{exp.instrument}/{exp.day_obs}"
    files = (rucioreg.RucioFile(f"{base}/{p.zip.name}", str(p.zip), "zip_file", hashes),
             rucioreg.RucioFile(f"{base}/{p.yaml.name}", str(p.yaml), "dim_file", yaml_hashes))
    r = ctx.policy.rucio
    return rucioreg.Plan(r.scope, r.rse, files, (*day_sets, obs), obs, f"{r.backup_rse}:need",
                         r.archive.rse_expression if r.archive else None, r.archive.copies if r.archive else 1)


def check_rucio(ctx: Context, exp: ExposureRef, deep: bool = True, known_zip: dict | None = None,
                ) -> tuple[bool, dict]:
    hashes = zip_hashes(ctx, exp, known_zip) if deep and paths(ctx.policy, exp).zip.exists() else None
    plan = rucio_plan(ctx, exp, hashes)
    missing = rucioreg.missing_parts(ctx.rucio, plan)
    detail = {"missing": missing, "obs": plan.obs, "datasets": list(plan.datasets)}
    if plan.archive_expression:  # the rule's transfer state, reported (Rucio's daemons do the copy)
        detail["archive"] = rucioreg.rule_summary(rucioreg.archive_rule(ctx.rucio, plan))
    return not missing, detail


def run_rucio(ctx: Context, exp: ExposureRef, known_zip: dict | None = None) -> Outcome:
    ensure_released(ctx, exp)
    with ctx.exclusive(exp):
        done, detail = check_rucio(ctx, exp, known_zip=known_zip)
        if done:
            return Outcome(RUCIO, "verified", detail)
        if ctx.dry_run:
            return Outcome(RUCIO, "would-act", {"would": detail["missing"]})
        p = paths(ctx.policy, exp)
        for f in (p.zip, p.yaml):
            if not f.exists():
                raise StepFailed(f"{f} is missing: earlier steps must run first")
        acted = rucioreg.register(ctx.rucio, rucio_plan(ctx, exp, zip_hashes(ctx, exp, known_zip)))
        done, detail = check_rucio(ctx, exp, known_zip=known_zip)
        if not done:
            raise StepFailed(f"{exp.obs_id}: Rucio parts still missing after registration: {detail['missing']}")
        detail["acted"] = acted
        return Outcome(RUCIO, "done" if acted else "verified", detail)


# ---------------------------------------------------------------------------------------------------- sequences
def run_step(ctx: Context, exp: ExposureRef, name: str, **kwargs) -> Outcome:
    """Run one step by name (``butler:<label>`` for a destination)."""
    if name == GATE:
        return run_gate(ctx, exp)
    if name == ZIP:
        return run_zip(ctx, exp)
    if name == DIMENSIONS:
        return run_dimensions(ctx, exp)
    if name.startswith("butler:"):
        return run_butler(ctx, exp, _destination(ctx, name))
    if name == RUCIO:
        return run_rucio(ctx, exp, **kwargs)
    raise ValueError(f"unknown step {name!r}; steps are {step_names(ctx.policy)}")


def run_exposure(ctx: Context, exp: ExposureRef, *, start_at: str | None = None) -> list[Outcome]:
    """Every step in order (from ``start_at`` if given), under one hold of the exposure's lease; stops at the first
    exception (lease.ExposureBusy if another live run holds the exposure: nothing was done)."""
    names = step_names(ctx.policy)
    if start_at is not None:
        names = names[names.index(start_at):] if start_at in names else names
    outcomes = []
    with ctx.exclusive(exp):
        for name in names:
            outcome = run_step(ctx, exp, name)
            log.info("%s %s: %s", exp.obs_id, name, outcome.state)
            outcomes.append(outcome)
    return outcomes


@dataclass
class ExposureStatus:
    obs_id: str
    steps: dict[str, str]  # step -> done | missing | incomplete | inconsistent | error
    details: dict[str, object]
    first_missing: str | None

    @property
    def complete(self) -> bool:
        return self.first_missing is None

    def to_dict(self) -> dict:
        return asdict(self)


def exposure_status(ctx: Context, exp: ExposureRef, *, deep: bool = False,
                    only: list[str] | None = None) -> ExposureStatus:
    """Read-only: for every step, whether its effect is verified in its sink, and the first step that is not.

    ``deep`` also compares every zip member with its embargo object and the Rucio hashes with the zip (reads
    everything); the default compares names, sizes and registrations only. ``only`` restricts the check to
    some steps (e.g. the local sinks).
    """
    checks: dict[str, Callable[[], tuple[bool, dict]]] = {
        GATE: lambda: check_gate(ctx, exp, deep),
        ZIP: lambda: check_zip(ctx, exp, deep),
        DIMENSIONS: lambda: check_dimensions(ctx, exp, deep),
        **{butler_step(d): (lambda d=d: check_butler(ctx, exp, d, deep)) for d in ctx.policy.destinations},
        RUCIO: lambda: check_rucio(ctx, exp, deep),
    }
    states, details, first = {}, {}, None
    for name, check in checks.items():
        if only is not None and name not in only:
            continue
        try:
            ok, detail = check()
            state = "done" if ok else "missing"
            if name == GATE and not ok:
                state = "inconsistent" if detail.get("state") == INCONSISTENT_AT_SOURCE else "incomplete"
        except InconsistentArtifact as exc:
            state, detail = "inconsistent", {"error": str(exc)}
        except Exception as exc:  # a sink that cannot be read is reported, not hidden
            state, detail = "error", {"error": f"{type(exc).__name__}: {exc}"}
        states[name], details[name] = state, detail
        if state != "done" and first is None:
            first = name
    return ExposureStatus(exp.obs_id, states, details, first)
