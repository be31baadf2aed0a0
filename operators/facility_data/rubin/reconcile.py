"""Reconciliation: which exposures past release are not fully unembargoed, where each stopped, and repair.

For one night (instrument + day_obs) the exposures come from the embargo side: the source Butler's exposure records
of that day_obs (whatever the policy's embargo length; only those past release are handled, the rest are counted as
still embargoed) and the embargo store's folders of that day (a folder without an exposure record is incomplete at
source). Each is checked against every sink and classified:

* ``done`` - every step's effect verified;
* ``not_started`` - complete at source, nothing in any sink;
* ``partial`` - stopped after a step: ``first_missing`` names the step a repair resumes from;
* ``incomplete_at_source`` - sensors that expectedSensors.json lists are missing, or no raw datasets / no exposure
  record (picked up later, once complete: a later check sees it as not started);
* ``inconsistent_at_source`` - the embargo store and the embargo Butler disagree (an object's size differs from the
  size the Butler recorded, e.g. a truncated upload; an artifact missing from the folder): never released;
* ``inconsistent`` - an artifact exists but differs from the source (zip members, Rucio sizes/hashes, yaml):
  reported and never overwritten;
* ``pruned`` - the embargo copy is gone (no objects, no source datasets) and the zip exists;
* ``error`` - a sink could not be read.

Two modes. ``fast`` (default) reads each sink once per night, in bulk: one exposure query and one dataset query per
dataset type on the source Butler, one directory (or bucket prefix) listing of the embargo store, one listing of the
destination directory, per destination Butler one dataset query per dataset type plus one visit query and one
datastore-record lookup, and for Rucio a handful of bulk calls (list_dids with a name wildcard, bulk_list_files,
get_metadata_bulk, list_replicas). Its per-exposure checks are cheap: zip central directory (member names and sizes)
against the store listing, zip/yaml sizes against the bytes Rucio recorded, dataset ids and datastore records,
Rucio replicas/attachments/closed/metadata. ``deep`` additionally runs the unembargo steps' own read-only checks
(:func:`facility_data.rubin.steps.exposure_status` with ``deep=True``) on every exposure: every zip member's CRC
against its embargo object, the yaml against the source Butler's records, datastore artifacts, Rucio md5/adler32
against the files. Only a deep result can authorise pruning the embargo copy.

Repair resumes each exposure from its first missing step through the same steps as ``rubin_unembargo_raw``
(:func:`facility_data.rubin.steps.run_exposure`), which never overwrite a verified artifact.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

from facility_data.rubin import rucioreg, steps
from facility_data.rubin.policy import EmbargoPolicy
from facility_data.rubin.storage import LocalStore, S3Store, StoredObject, folder_key
from facility_data.rubin.windows import ExposureRef, ManualRequest, select_manual
from facility_data.rubin.zipbuild import quick_check

log = logging.getLogger(__name__)

DONE, NOT_STARTED, PARTIAL, INCOMPLETE, INCONSISTENT, INCONSISTENT_SOURCE, PRUNED, ERROR = (
    "done", "not_started", "partial", "incomplete_at_source", "inconsistent", "inconsistent_at_source", "pruned",
    "error")
STATES = (DONE, NOT_STARTED, PARTIAL, INCOMPLETE, INCONSISTENT, INCONSISTENT_SOURCE, PRUNED, ERROR)
REPAIRABLE = (NOT_STARTED, PARTIAL)
#: states an operator must look at (the DAG alerts on them)
UNREPAIRABLE = (INCOMPLETE, INCONSISTENT, INCONSISTENT_SOURCE, ERROR)
PRUNE_MODES = ("off", "dry_run", "delete")
MAX_NIGHTS = 62
_DAY = re.compile(r"^\d{8}$")
_CHUNK = 500  # DIDs per bulk Rucio call
_SELECT_CHUNK = 250  # exposures per selection query


class BadParams(ValueError):
    """Reconcile Params that cannot be honoured; raised before any side effect."""


# ------------------------------------------------------------------------------------------------ request
@dataclass(frozen=True)
class Request:
    instrument: str
    nights: tuple[int, ...]
    repair: bool
    dry_run: bool
    deep: bool
    prune_embargo: str  # off | dry_run | delete

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Request:
        return cls(**{**d, "nights": tuple(d["nights"])})


def _day(value, name: str) -> date:
    text = str(value)
    if not _DAY.match(text):
        raise BadParams(f"{name} must be YYYYMMDD, got {value!r}")
    try:
        return date(int(text[:4]), int(text[4:6]), int(text[6:]))
    except ValueError:
        raise BadParams(f"{name} {value!r} is not a calendar date") from None


def day_obs_of(t: datetime) -> int:
    """Rubin's observing day: the UTC-12h calendar date."""
    return int((t.astimezone(UTC) - timedelta(hours=12)).strftime("%Y%m%d"))


#: rubin_unembargo_reconcile's conf, a closed schema (see facility_data.conf)
RECONCILE_CONF = {"instrument": (str,), "day_obs_first": (str, type(None)), "day_obs_last": (str, type(None)),
                  "lookback_nights": (int,), "repair": (bool,), "dry_run": (bool,), "deep": (bool,),
                  "prune_embargo": (str,)}


def check_run_conf(conf: object) -> None:
    """Refuse unknown keys and wrong types in the run's own conf (BadParams), before anything is read."""
    from facility_data.conf import ConfError, check_conf

    try:
        check_conf(conf, RECONCILE_CONF, what="rubin_unembargo_reconcile")
    except ConfError as exc:
        raise BadParams(str(exc)) from None


def parse_request(params: dict, policy: EmbargoPolicy, *, now: datetime, lookback_days: int = 7) -> Request:
    """Validate Params against the policy (clear BadParams, no side effect).

    ``day_obs_first``/``day_obs_last`` select nights by day_obs (both or neither); without them (the scheduled
    run) every night that may hold an exposure released in the last ``lookback_days`` days is checked: from
    ``lookback_days`` nights before the night of (now - the longest embargo of the instrument) up to today's."""
    params = dict(params or {})
    instrument = params.get("instrument") or (policy.instruments[0] if len(policy.instruments) == 1 else None)
    if not isinstance(instrument, str) or instrument not in policy.instruments:
        raise BadParams(f"unknown instrument {instrument!r}: the policy knows {policy.instruments}")
    first, last = params.get("day_obs_first"), params.get("day_obs_last")
    default_range = first in ("", None) and last in ("", None)
    if default_range:
        # every night with an exposure released in the last lookback_days, under the longest embargo too
        longest = max(r.embargo_hours for r in policy.rows_for(instrument)) + policy.settle_minutes / 60
        day = lambda t: datetime.strptime(str(day_obs_of(t)), "%Y%m%d").date()  # noqa: E731
        a = day(now - timedelta(hours=longest)) - timedelta(days=lookback_days - 1)
        b = day(now)
    elif first in ("", None) or last in ("", None):
        raise BadParams("give both day_obs_first and day_obs_last (the same value for one night), or neither")
    else:
        a, b = _day(first, "day_obs_first"), _day(last, "day_obs_last")
    if b < a:
        raise BadParams(f"day_obs_last {b:%Y%m%d} is before day_obs_first {a:%Y%m%d}")
    if not default_range and (b - a).days + 1 > MAX_NIGHTS:
        raise BadParams(f"at most {MAX_NIGHTS} nights per run, asked for {(b - a).days + 1}")
    flags = {}
    for name, default in (("repair", True), ("dry_run", False), ("deep", False)):
        value = params.get(name, default)
        if not isinstance(value, bool):
            raise BadParams(f"{name} must be true or false, got {value!r}")
        flags[name] = value
    prune = params.get("prune_embargo", "off")
    if prune is False or prune is None:
        prune = "off"
    if prune not in PRUNE_MODES:
        raise BadParams(f"prune_embargo must be one of {PRUNE_MODES}, got {prune!r}")
    nights = tuple(int(f"{a + timedelta(days=i):%Y%m%d}") for i in range((b - a).days + 1))
    return Request(instrument, nights, flags["repair"], flags["dry_run"], flags["deep"], prune)


# ------------------------------------------------------------------------------------------------ results
@dataclass
class ExposureCheck:
    obs_id: str
    state: str
    first_missing: str | None = None
    stopped_after: str | None = None
    exposure: dict | None = None  # ExposureRef dict (None: folder in the store without an exposure record)
    sinks: dict[str, str] = field(default_factory=dict)  # sink -> ok | missing | inconsistent | error | n/a
    problems: list[str] = field(default_factory=list)
    deep: bool = False

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> ExposureCheck:
        return cls(**d)


@dataclass
class NightResult:
    instrument: str
    day_obs: int
    mode: str
    checked_at: str
    exposures: list[ExposureCheck]
    embargoed: list[dict] = field(default_factory=list)  # {"obs_id", "reason"}: not past release, not handled
    seconds: float = 0.0

    @property
    def counts(self) -> dict[str, int]:
        c = Counter(e.state for e in self.exposures)
        out = {s: c.get(s, 0) for s in STATES}
        out["still_embargoed"] = len(self.embargoed)
        out["total"] = len(self.exposures)
        return out

    def to_dict(self) -> dict:
        return {"instrument": self.instrument, "day_obs": self.day_obs, "mode": self.mode,
                "checked_at": self.checked_at, "seconds": round(self.seconds, 3), "counts": self.counts,
                "exposures": [e.to_dict() for e in self.exposures], "embargoed": self.embargoed}

    @classmethod
    def from_dict(cls, d: dict) -> NightResult:
        return cls(d["instrument"], d["day_obs"], d["mode"], d["checked_at"],
                   [ExposureCheck.from_dict(e) for e in d["exposures"]], d.get("embargoed", []),
                   d.get("seconds", 0.0))


# ------------------------------------------------------------------------------------------------ listings
def list_day_objects(store, instrument: str, day_obs: int,
                     folders: list[str] | None = None) -> dict[str, list[StoredObject]]:
    """Every object of the night in the embargo store, by exposure folder, in one listing (only ``folders``, one
    listing each, when given: a night whose exposures are mostly still embargoed)."""
    out: dict[str, list[StoredObject]] = defaultdict(list)
    if folders is not None:
        return {f: objs for f in folders if (objs := store.list_folder(instrument, day_obs, f))}
    if isinstance(store, LocalStore):
        day = Path(store.root) / instrument / str(day_obs)
        if not day.is_dir():
            return {}
        with os.scandir(day) as folders:
            for folder in folders:
                if not folder.is_dir():
                    continue
                prefix = folder_key(instrument, day_obs, folder.name)
                with os.scandir(folder.path) as entries:
                    out[folder.name] = sorted((StoredObject(prefix + e.name, (st := e.stat()).st_size, st.st_mtime)
                                               for e in entries if e.is_file()), key=lambda o: o.key)
        return dict(out)
    if isinstance(store, S3Store):
        for page in store._list(f"{instrument}/{day_obs}/"):
            for obj in page.get("Contents", []):
                key = obj["Key"][len(store.prefix):]
                parts = key.split("/")
                if len(parts) == 4 and parts[3]:
                    modified = obj.get("LastModified")
                    out[parts[2]].append(StoredObject(key, int(obj["Size"]), modified.timestamp() if modified else None))
        return {k: sorted(v, key=lambda o: o.key) for k, v in out.items()}
    return {o: store.list_folder(instrument, day_obs, o) for o in store.list_day(instrument, day_obs)}


def _dest_files(policy: EmbargoPolicy, instrument: str, day_obs: int) -> dict[str, int]:
    day = Path(policy.destination_prefix) / instrument / str(day_obs)
    if not day.is_dir():
        return {}
    with os.scandir(day) as entries:
        return {e.name: e.stat().st_size for e in entries if e.is_file() and not e.name.startswith(".")}


def temporary_files(policy: EmbargoPolicy, instrument: str, day_obs: int) -> list[dict]:
    """The night's temporary files in the destination (``.<name>.<owner>.tmp``): path, bytes, owner, and whether
    that owner is known dead (its leftovers go at the exposure's next attempt)."""
    from facility_data.rubin.lease import parse_token, token_owner_dead

    day = Path(policy.destination_prefix) / instrument / str(day_obs)
    out = []
    for tmp in sorted(day.glob(".*.tmp")) if day.is_dir() else []:
        owner = tmp.name[1:-len(".tmp")].rsplit(".", 1)[-1]
        try:
            size = tmp.stat().st_size
        except FileNotFoundError:
            continue
        out.append({"path": str(tmp), "bytes": size, "owner": owner if parse_token(owner) else None,
                    "owner_dead": token_owner_dead(owner)})
    return out


def _query_ids(butler, policy: EmbargoPolicy, instrument: str, day_obs: int,
               exposures: list[int] | None = None) -> dict[int, dict[str, int]]:
    """Exposure -> {dataset id: detector} of every raw (and guider) dataset of the night in ``butler``, in one
    query per dataset type returning plain rows (no DatasetRef built); a missing collection/type means none.
    With ``exposures``, only those (in chunks: SQLite limits the size of an IN clause)."""
    from lsst.daf.butler import MissingCollectionError, MissingDatasetTypeError

    wheres = ["exposure.day_obs = :day"] if exposures is None else [
        "exposure.day_obs = :day AND exposure.id IN (" + ",".join(str(int(e)) for e in chunk) + ")"
        for chunk in _chunks(sorted(exposures), _SELECT_CHUNK)]
    out: dict[int, dict[str, int]] = defaultdict(dict)
    for dataset_type, collection in policy.collections(instrument).items():
        for where in wheres:
            try:
                with butler.query() as q:
                    q = q.join_dataset_search(dataset_type, collections=[collection]).where(
                        where, bind={"day": day_obs}, instrument=instrument)
                    for row in q.general(["exposure", "detector"], f"{dataset_type}.dataset_id",
                                         find_first=False):
                        out[int(row["exposure"])][str(row[f"{dataset_type}.dataset_id"])] = int(row["detector"])
            except (MissingDatasetTypeError, MissingCollectionError):
                break
    return dict(out)


def _tracts_by_visit(source, policy: EmbargoPolicy, instrument: str, day_obs: int) -> dict[int, set[int]]:
    """Visit -> overlapping tracts of the policy's skymap, for the whole night in one spatial query."""
    out: dict[int, set[int]] = defaultdict(set)
    try:
        ids = source.query_data_ids(["visit", "tract"], data_id={"instrument": instrument,
                                                                  "skymap": policy.rucio.skymap},
                                    where="visit.day_obs = :day", bind={"day": day_obs}, explain=False,
                                    limit=None)
    except LookupError:  # no such skymap in the repo: every exposure is NoTract
        return out
    for d in ids:
        out[int(d["visit"])].add(int(d["tract"]))
    return out


def _visits_by_exposure(source, instrument: str, day_obs: int) -> dict[int, list[int]]:
    out: dict[int, list[int]] = defaultdict(list)
    for rec in source.query_dimension_records("visit_definition", instrument=instrument,
                                              where="exposure.day_obs = :day", bind={"day": day_obs},
                                              explain=False, limit=None):
        out[int(rec.exposure)].append(int(rec.visit))
    return out


@dataclass
class _DestState:
    ids: set[str]
    visits: set[int]


def _dest_state(butler, policy: EmbargoPolicy, instrument: str, day_obs: int,
                exposures: list[int] | None = None) -> _DestState:
    """Dataset ids and visit records of the night in a destination Butler. Registry presence stands for the
    ingest: ingest_zip writes registry and datastore records in one transaction (the deep check reads artifacts)."""
    ids = {i for per_exp in _query_ids(butler, policy, instrument, day_obs, exposures).values() for i in per_exp}
    visits = {int(r.id) for r in butler.query_dimension_records(
        "visit", instrument=instrument, where="visit.day_obs = :day", bind={"day": day_obs}, explain=False,
        limit=None)}
    return _DestState(ids, visits)


def _chunks(items: list, n: int = _CHUNK):
    for i in range(0, len(items), n):
        yield items[i:i + n]


@dataclass
class _RucioState:
    obs_meta: dict[str, dict]  # Obs dataset name -> metadata (is_open, arcBackup, SafeCopies, ...)
    day_sets: set[str]
    parents: dict[str, set[str]]  # file name -> datasets it is attached to (Obs and day datasets of the night)
    replicas: dict[str, dict]  # file name -> {bytes, md5, adler32, rses}
    file_meta: dict[str, dict]
    rules: list[dict]  # archival rules on the night's Obs datasets (empty when the policy asks for none)


def _rucio_state(client, policy: EmbargoPolicy, instrument: str, day_obs: int, files: list[str]) -> _RucioState:
    scope = policy.rucio.scope
    base = f"Dataset/{instrument}/raw"
    obs = [d if isinstance(d, str) else d["name"] for d in
           client.list_dids(scope, [{"name": f"{base}/Obs/{day_obs}/*"}], did_type="dataset")]
    day_sets = {d if isinstance(d, str) else d["name"] for d in
                client.list_dids(scope, [{"name": f"{base}/*/{day_obs}"}], did_type="dataset")}
    obs_meta: dict[str, dict] = {}
    parents: dict[str, set[str]] = defaultdict(set)
    for chunk in _chunks(obs):
        for m in client.get_metadata_bulk([{"scope": scope, "name": n} for n in chunk], plugin="ALL"):
            obs_meta[m["name"]] = m
    for chunk in _chunks(obs + sorted(day_sets)):
        for f in client.bulk_list_files([{"scope": scope, "name": n} for n in chunk]):
            parents[f["name"]].add(f["parent_name"])
    replicas: dict[str, dict] = {}
    for chunk in _chunks(files, 100):  # the server's cost per call grows faster than linearly
        for r in client.list_replicas([{"scope": scope, "name": n} for n in chunk], rse_expression=policy.rucio.rse,
                                      ignore_availability=True, resolve_archives=False):
            replicas[r["name"]] = r
    file_meta: dict[str, dict] = {}
    for chunk in _chunks([n for n in files if n in replicas or n in parents]):
        for m in client.get_metadata_bulk([{"scope": scope, "name": n} for n in chunk], plugin="JSON"):
            file_meta[m["name"]] = m
    archive = policy.rucio.archive
    rules = rucioreg.night_rules(client, scope, archive.rse_expression, instrument, day_obs) if archive else []
    return _RucioState(obs_meta, day_sets, dict(parents), replicas, file_meta, rules)


# ------------------------------------------------------------------------------------------------ classify
def _classify(check: ExposureCheck, names: list[str]) -> ExposureCheck:
    """State and first missing step from the per-step states (``step -> ok|missing|inconsistent|error``)."""
    states = {n: check.sinks.get(n, "missing") for n in names}
    if states[steps.GATE] != "ok":
        check.state = {"error": ERROR, "inconsistent": INCONSISTENT_SOURCE}.get(states[steps.GATE], INCOMPLETE)
        check.first_missing = steps.GATE
        check.sinks.pop("_partial_rucio", None)
        return check
    first = next((n for n in names if states[n] != "ok"), None)
    check.first_missing = first
    if first is None:
        check.state = DONE
    elif "inconsistent" in states.values():
        check.state = INCONSISTENT
        check.first_missing = next(n for n in names if states[n] == "inconsistent")
    elif "error" in states.values():
        check.state = ERROR
    else:
        later = names[names.index(first):]
        anything = any(states[n] == "ok" for n in later) or check.sinks.get("_partial_rucio") == "yes"
        check.state = NOT_STARTED if first == steps.ZIP and not anything else PARTIAL
        check.stopped_after = names[names.index(first) - 1]
    check.sinks.pop("_partial_rucio", None)
    return check


def check_night(ctx: steps.Context, instrument: str, day_obs: int, *, now: datetime,
                deep: bool = False) -> NightResult:
    """Classify every exposure of one night (read-only)."""
    import time

    t0 = time.monotonic()
    policy = ctx.policy
    names = steps.step_names(policy)
    exps, problems = _select_night(ctx, instrument, day_obs, now)
    embargoed = [p for p in problems if "embargoed" in p["reason"]]
    norow = [p for p in problems if p not in embargoed]
    known = {e.obs_id for e in exps} | {p["obs_id"] for p in problems}
    if problems:  # part of the night is not handled: list only the released folders (and every folder's name)
        objects = list_day_objects(ctx.store, instrument, day_obs, folders=[e.obs_id for e in exps])
        folders = set(ctx.store.list_day(instrument, day_obs))
    else:
        objects = list_day_objects(ctx.store, instrument, day_obs)
        folders = set(objects)
    results: list[ExposureCheck] = []
    for obs_id in sorted(folders - known):  # summit wrote objects, the embargo Butler has no exposure
        results.append(ExposureCheck(obs_id, INCOMPLETE, steps.GATE, sinks={steps.GATE: "missing"},
                                     problems=["objects in the embargo store but no exposure record in the "
                                               "source Butler (ingest not finished?)"], deep=deep))
    for p in norow:
        log.warning("%s: %s (not handled)", p["obs_id"], p["reason"])
    if deep:
        results += [_deep_check(ctx, e, objects.get(e.obs_id, []), names) for e in exps]
    elif exps:
        subset = [e.exposure for e in exps] if problems else None
        results += _fast_checks(ctx, instrument, day_obs, exps, objects, names, subset)
    results.sort(key=lambda c: c.obs_id)
    night = NightResult(instrument, day_obs, "deep" if deep else "fast", now.astimezone(UTC).isoformat(), results,
                        embargoed, time.monotonic() - t0)
    log.info("night %s %s (%s check, %.1f s): %s", instrument, day_obs, night.mode, night.seconds,
             {k: v for k, v in night.counts.items() if v})
    return night


def _select_night(ctx: steps.Context, instrument: str, day_obs: int, now: datetime):
    """The night's exposures past release (and the others, with why), by the unembargo's own manual selection.

    Asked in chunks of obs_ids: windows.select_manual matches policy rows with one ``exposure.id IN (...)`` clause,
    which SQLite refuses beyond ~1000 terms (a full LSSTCam night)."""
    recs = ctx.source.query_dimension_records("exposure", instrument=instrument, where="exposure.day_obs = :day",
                                              bind={"day": day_obs}, explain=False, limit=None)
    obs_ids = sorted(r.obs_id for r in recs)
    exps, problems = [], []
    for i in range(0, len(obs_ids), _SELECT_CHUNK):
        e, p = select_manual(ctx.source, ctx.policy,
                             ManualRequest(instrument, day_obs, tuple(obs_ids[i:i + _SELECT_CHUNK]), False), now)
        exps += e
        problems += p
    return exps, problems


def _deep_check(ctx: steps.Context, exp: ExposureRef, objects: list, names: list[str]) -> ExposureCheck:
    """The unembargo steps' own read-only checks, with full verification (re-reads everything)."""
    check = ExposureCheck(exp.obs_id, DONE, exposure=exp.to_dict(), deep=True)
    try:
        status = steps.exposure_status(ctx, exp, deep=True)
    except Exception as exc:  # noqa: BLE001 - reported as an error state, never hidden
        check.sinks = {n: "error" for n in names}
        check.problems.append(f"{type(exc).__name__}: {exc}")
        return _classify(check, names)
    mapping = {"done": "ok", "missing": "missing", "incomplete": "missing", "inconsistent": "inconsistent",
               "error": "error"}
    check.sinks = {n: mapping.get(s, "error") for n, s in status.steps.items()}
    for n, d in status.details.items():
        if check.sinks.get(n) != "ok" and isinstance(d, dict):
            text = d.get("error") or d.get("missing") or d.get("state")
            if text:
                check.problems.append(f"{n}: {text}")
    if not objects and not ctx.refs(exp) and steps.paths(ctx.policy, exp).zip.exists():
        check.state, check.problems = PRUNED, ["embargo copy pruned; zip kept"]
        return check
    return _classify(check, names)


def _fast_checks(ctx: steps.Context, instrument: str, day_obs: int, exps: list[ExposureRef],
                 objects: dict[str, list[StoredObject]], names: list[str],
                 subset: list[int] | None) -> list[ExposureCheck]:
    from concurrent.futures import ThreadPoolExecutor

    policy = ctx.policy
    source = ctx.source
    base = f"{instrument}/{day_obs}"
    rucio_files = [f"{base}/{e.obs_id}{suffix}" for e in exps for suffix in (".zip", "_dimensions.yaml")]
    # Rucio answers from another server: ask it while this process reads the Butlers
    with ThreadPoolExecutor(1) as pool:
        pending = pool.submit(_rucio_state, ctx.rucio, policy, instrument, day_obs, rucio_files)
        src_ids = _query_ids(source, policy, instrument, day_obs, subset)
        recorded = steps.recorded_files(source, [i for per_exp in src_ids.values() for i in per_exp])
        detectors = {int(r.id): r.full_name for r in source.query_dimension_records(
            "detector", instrument=instrument, explain=False, limit=None)}
        visits = _visits_by_exposure(source, instrument, day_obs)
        tracts = _tracts_by_visit(source, policy, instrument, day_obs)
        dest_files = _dest_files(policy, instrument, day_obs)
        dests: dict[str, _DestState | Exception] = {}
        for d in policy.destinations:
            try:
                dests[steps.butler_step(d)] = _dest_state(ctx.butler(d), policy, instrument, day_obs, subset)
            except Exception as exc:  # noqa: BLE001 - reported per exposure as an error state
                dests[steps.butler_step(d)] = exc
        try:
            rucio: _RucioState | Exception = pending.result()
        except Exception as exc:  # noqa: BLE001
            rucio = exc
    out = []
    for exp in exps:
        check = ExposureCheck(exp.obs_id, DONE, exposure=exp.to_dict())
        objs = objects.get(exp.obs_id, [])
        ids = src_ids.get(exp.exposure, {})
        zip_name, yaml_name = f"{exp.obs_id}.zip", f"{exp.obs_id}_dimensions.yaml"
        if not objs and not ids and zip_name in dest_files:
            check.state, check.problems = PRUNED, ["embargo copy pruned; zip kept"]
            out.append(check)
            continue
        check.sinks[steps.GATE] = _gate(ctx, exp, objs, ids, detectors, recorded, check.problems)
        check.sinks[steps.ZIP] = _zip(policy, exp, objs, dest_files, check.problems)
        check.sinks[steps.DIMENSIONS] = "ok" if dest_files.get(yaml_name) else "missing"
        exp_visits = visits.get(exp.exposure, [])
        for label, state in dests.items():
            if isinstance(state, Exception):
                check.sinks[label] = "error"
                check.problems.append(f"{label}: {type(state).__name__}: {state}")
                continue
            lacking = len(set(ids) - state.ids)
            no_visit = [v for v in exp_visits if v not in state.visits]
            check.sinks[label] = "ok" if ids and not lacking and not no_visit else "missing"
            if check.sinks[label] != "ok":
                check.problems.append(f"{label}: {len(ids) - lacking}/{len(ids)} datasets registered, "
                                      f"visit records missing: {no_visit}")
        if isinstance(rucio, Exception):
            check.sinks[steps.RUCIO] = "error"
            check.problems.append(f"rucio: {type(rucio).__name__}: {rucio}")
        else:
            exp_tracts = sorted({t for v in exp_visits for t in tracts.get(v, ())})
            _rucio(policy, exp, exp_tracts, rucio, dest_files, check)
        out.append(_classify(check, names))
    return out


def _gate(ctx, exp: ExposureRef, objs: list[StoredObject], ids: dict[str, int], detectors: dict[int, str],
          recorded: dict[str, list[tuple[str, int]]], problems: list[str]) -> str:
    """The completeness gate of steps.check_gate, on the night's bulk listings."""
    if not ids:
        problems.append("gate: no raw datasets in the source Butler")
        return "missing"
    bad = steps.size_problems(recorded, ids, objs)
    if bad:
        problems.append(f"gate: inconsistent at source: {bad[:5]}")
        return "inconsistent"
    name = steps.manifest_name(exp.obs_id)
    if name not in {o.name for o in objs}:
        ok, why = steps.without_manifest(ctx, exp, objs)
        if not ok:
            problems.append(f"gate: {why}")
        return "ok" if ok else "missing"
    try:
        expected = json.loads(ctx.store.read(folder_key(exp.instrument, exp.day_obs, exp.obs_id) + name))
    except (OSError, ValueError) as exc:
        problems.append(f"gate: unreadable {name}: {exc}")
        return "error"
    wanted = {d for d, kind in expected.get("expectedSensors", {}).items()
              if kind in ("SCIENCE", "WAVEFRONT", "GUIDER")}
    missing = sorted(wanted - {detectors.get(det) for det in ids.values()})
    if missing:
        problems.append(f"gate: {len(missing)} expected sensor(s) missing: {missing[:10]}")
        return "missing"
    return "ok"


def _zip(policy, exp: ExposureRef, objs: list[StoredObject], dest_files: dict[str, int],
         problems: list[str]) -> str:
    if f"{exp.obs_id}.zip" not in dest_files:
        return "missing"
    problem = quick_check(steps.paths(policy, exp).zip, objs)  # central directory vs the store listing
    if problem:
        problems.append(f"zip: {problem}")
        return "inconsistent"
    return "ok"


def _rucio(policy, exp: ExposureRef, tracts: list[int], st: _RucioState, dest_files: dict[str, int],
           check: ExposureCheck) -> None:
    from facility_data.rubin.rucioreg import did_names

    day_sets, obs = did_names(exp.instrument, exp.day_obs, exp.obs_id, tracts)
    missing, partial, bad = [], False, []
    for suffix, role in ((".zip", "zip_file"), ("_dimensions.yaml", "dim_file")):
        fname = f"{exp.obs_id}{suffix}"
        name = f"{exp.instrument}/{exp.day_obs}/{fname}"
        rep = st.replicas.get(name)
        if rep is None or policy.rucio.rse not in rep.get("rses", {}):
            missing.append(f"replica {name}")
        else:
            partial = True
            size = dest_files.get(fname)
            if size is not None and rep.get("bytes") != size:
                bad.append(f"rucio {name} records {rep.get('bytes')} bytes, the file has {size}")
        if rep is not None and st.file_meta.get(name, {}).get("rubin_butler") != role:
            missing.append(f"meta {name}")
        attached = st.parents.get(name, set())
        partial = partial or bool(attached)
        missing += [f"attach {name} -> {ds}" for ds in (*day_sets, obs) if ds not in attached]
    meta = st.obs_meta.get(obs)
    if meta is None or meta.get("is_open", True):
        missing.append(f"close {obs}")
    if meta is not None:
        partial = True
        if "arcBackup" not in meta:
            missing.append("meta arcBackup")
        if "SafeCopies" not in meta:
            missing.append("meta SafeCopies")
    else:
        missing += ["meta arcBackup", "meta SafeCopies"]
    archive = policy.rucio.archive
    if archive and rucioreg.find_rule(st.rules, policy.rucio.scope, obs, archive.rse_expression) is None:
        missing.append(rucioreg.rule_part(obs, archive.rse_expression))
    if bad:
        check.sinks[steps.RUCIO] = "inconsistent"
        check.problems += [f"rucio: {b}" for b in bad]
    elif missing:
        check.sinks[steps.RUCIO] = "missing"
        check.problems.append(f"rucio: missing {missing}")
    else:
        check.sinks[steps.RUCIO] = "ok"
    if partial and missing:
        check.sinks["_partial_rucio"] = "yes"


# ------------------------------------------------------------------------------------------------ repair
def repair_exposure(ctx: steps.Context, check: ExposureCheck | dict) -> dict:
    """Resume one exposure from its first missing step with the unembargo steps, then re-check it.

    Returns ``{"obs_id", "from", "outcomes", "state"}``; raises InconsistentArtifact (never overwritten) or the
    step's error (the DAG's retries and failure alert take over)."""
    check = ExposureCheck.from_dict(check) if isinstance(check, dict) else check
    if check.state not in REPAIRABLE or check.exposure is None:
        raise ValueError(f"{check.obs_id} is {check.state}: not repairable by reconciliation")
    exp = ExposureRef.from_dict(check.exposure)
    log.info("%s: %s, resuming from step %s%s", exp.obs_id, check.state, check.first_missing,
             " (dry run)" if ctx.dry_run else "")
    with ctx.exclusive(exp):  # the steps and the re-check, with no other run mid-step (else lease.ExposureBusy)
        outcomes = steps.run_exposure(ctx, exp, start_at=check.first_missing)
        for o in outcomes:
            log.info("%s %s: %s", exp.obs_id, o.step, o.state)
        result = {"obs_id": exp.obs_id, "from": check.first_missing, "outcomes": [o.to_dict() for o in outcomes]}
        if ctx.dry_run:
            result["state"] = "would-repair"
            return result
        after = steps.exposure_status(steps.Context(ctx.policy, store=ctx._store, rucio=ctx._rucio,
                                                    butler_factory=ctx._butler_factory), exp)
    if not after.complete:
        raise steps.StepFailed(f"{exp.obs_id}: still not complete after repair, first missing {after.first_missing}: "
                               f"{after.details.get(after.first_missing)}")
    result["state"] = "repaired"
    return result


# ------------------------------------------------------------------------------------------------ prune guard
def sink_checks(ctx: steps.Context, exp: ExposureRef):
    """Deep verification of every sink of one exposure, as facility_data.safety.SinkCheck values."""
    from facility_data.safety import SinkCheck

    status = steps.exposure_status(ctx, exp, deep=True)
    return [SinkCheck(sink=name, verified=state == "done", deep=True,
                      detail=json.dumps(status.details.get(name), default=str)[:300])
            for name, state in status.steps.items() if name != steps.GATE]


def prune_exposure(ctx: steps.Context, exp: ExposureRef, *, delete: bool) -> dict:
    """Ask the safety policy whether the exposure's embargo objects may go; delete them only if allowed and asked.

    Deleting removes the exposure's objects from the embargo store and its raw datasets from the source Butler
    (which point at those objects). Returns ``{"obs_id", "allowed", "reason", "deleted"}``."""
    from facility_data.safety import may_delete_unembargoed

    objects = ctx.store.list_folder(exp.instrument, exp.day_obs, exp.obs_id)
    decision = may_delete_unembargoed(f"{exp.instrument}/{exp.day_obs}/{exp.obs_id}", sink_checks(ctx, exp),
                                      required_sinks=steps.step_names(ctx.policy)[1:])
    out = {"obs_id": exp.obs_id, "allowed": decision.allowed, "reason": decision.reason, "deleted": 0,
           "objects": len(objects)}
    if not decision.allowed or not delete or ctx.dry_run:
        log.info("%s: prune %s (%s): %s", exp.obs_id, "allowed" if decision.allowed else "REFUSED",
                 "would delete" if decision.allowed else "kept", decision.reason)
        return out
    decision.require()
    refs = ctx.refs(exp)
    source = ctx.butler(ctx.policy.source, writeable=True)
    source.pruneDatasets(refs, disassociate=True, unstore=True, purge=True)
    for obj in objects:
        _delete_object(ctx.store, obj.key)
    out["deleted"] = len(objects)
    log.warning("%s: pruned %d embargo objects and %d source datasets (%s)", exp.obs_id, len(objects), len(refs),
                decision.reason)
    return out


def _delete_object(store, key: str) -> None:
    if isinstance(store, LocalStore):
        (Path(store.root) / key).unlink(missing_ok=True)
    elif isinstance(store, S3Store):
        store._retry(lambda: store.client.delete_object(Bucket=store.bucket, Key=store.prefix + key), key)
    else:
        raise NotImplementedError(f"deleting from {store!r} is not supported")


# ------------------------------------------------------------------------------------------------ summaries
def repair_list(nights: list[NightResult]) -> list[dict]:
    """The exposures a repair run maps over (one isolated task each)."""
    return [e.to_dict() for n in nights for e in n.exposures if e.state in REPAIRABLE]


def unrepairable(nights: list[NightResult]) -> list[dict]:
    return [{"day_obs": n.day_obs, "obs_id": e.obs_id, "state": e.state, "problems": e.problems}
            for n in nights for e in n.exposures if e.state in UNREPAIRABLE]


def counts_per_night(nights: list[NightResult]) -> dict[str, dict[str, int]]:
    return {str(n.day_obs): n.counts for n in nights}


def summary(result: dict) -> str:
    """Text summary of a reconcile run's result (the DAG's XCom/asset extra, or :func:`run`'s return value)."""
    lines = [f"reconcile {result.get('instrument', '')} nights {result.get('first')}..{result.get('last')} "
             f"(mode {result.get('mode')}, repair {result.get('repair')}, dry_run {result.get('dry_run')})"]
    def parts(c: dict) -> str:
        return ", ".join(f"{k} {v}" for k, v in c.items() if v and k != "total") or "none"

    for day, c in sorted((result.get("counts") or {}).items()):
        before = (result.get("found") or {}).get(day)
        if before and before != c:
            lines.append(f"  {day}: found {parts(before)}")
        lines.append(f"  {day}: {c.get('total', 0)} exposures past release, now: {parts(c)}")
    for r in result.get("repaired") or []:
        lines.append(f"  repaired {r['obs_id']} from step {r['from']}: {r['state']}")
    for f in result.get("failed") or []:
        lines.append(f"  NOT repaired {f['obs_id']}: {f.get('error')}")
    for u in result.get("unrepairable") or []:
        lines.append(f"  NEEDS AN OPERATOR {u['obs_id']} ({u['day_obs']}): {u['state']}: {'; '.join(u['problems'])}")
    for p in result.get("prune") or []:
        lines.append(f"  prune {p['obs_id']}: {'allowed' if p['allowed'] else 'refused'}, deleted {p['deleted']}: "
                     f"{p['reason']}")
    temps = result.get("temporary") or []
    if temps:
        lines.append(f"  temporary files: {len(temps)}, {sum(t['bytes'] for t in temps)} bytes "
                     f"({sum(t['owner_dead'] for t in temps)} of dead owners, removed at the exposure's next attempt)")
    for path in result.get("reports") or []:
        lines.append(f"  report: {path}")
    return "\n".join(lines)


def run(ctx: steps.Context, request: Request, *, now: datetime, reports_dir: str | Path | None = None) -> dict:
    """The whole reconciliation in one process (what the DAG does across tasks): check, repair, re-check, prune,
    report. Used by scripts and the demo; returns the same result dict as the DAG's summary task."""
    from facility_data.rubin import report

    nights = [check_night(ctx, request.instrument, d, now=now, deep=request.deep) for d in request.nights]
    found = counts_per_night(nights)
    repaired, failed = [], []
    if request.repair:
        for item in repair_list(nights):
            try:
                repaired.append(repair_exposure(ctx, item))
            except Exception as exc:  # noqa: BLE001 - one exposure's failure never stops the others
                log.error("%s: repair failed: %s: %s", item["obs_id"], type(exc).__name__, exc)
                failed.append({"obs_id": item["obs_id"], "error": f"{type(exc).__name__}: {exc}"})
        if repaired and not request.dry_run:
            ctx = steps.Context(ctx.policy, store=ctx._store, rucio=ctx._rucio, butler_factory=ctx._butler_factory)
            nights = [check_night(ctx, request.instrument, d, now=now, deep=request.deep) for d in request.nights]
    return finish(ctx, request, nights, repaired, failed, found=found, reports_dir=reports_dir,
                  report_module=report)


def finish(ctx: steps.Context, request: Request, nights: list[NightResult], repaired: list[dict],
           failed: list[dict], *, found: dict | None = None, reports_dir=None, report_module=None) -> dict:
    """Prune (if asked), write the reports, and assemble the result dict (``found``: counts before repair,
    ``counts``: after)."""
    if report_module is None:
        from facility_data.rubin import report as report_module
    pruned = []
    if request.prune_embargo != "off":
        for n in nights:
            for e in n.exposures:
                if e.state == DONE and e.exposure:
                    pruned.append(prune_exposure(ctx, ExposureRef.from_dict(e.exposure),
                                                 delete=request.prune_embargo == "delete" and not request.dry_run))
    result = {"instrument": request.instrument, "first": request.nights[0], "last": request.nights[-1],
              "mode": "deep" if request.deep else "fast", "repair": request.repair, "dry_run": request.dry_run,
              "found": found or {}, "counts": counts_per_night(nights), "repaired": repaired, "failed": failed,
              "unrepairable": unrepairable(nights), "prune": pruned,
              "temporary": [t for d in request.nights for t in temporary_files(ctx.policy, request.instrument, d)]}
    result["reports"] = [str(p) for p in report_module.write_reports(nights, result, reports_dir=reports_dir)]
    return result
