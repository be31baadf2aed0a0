"""Reading the sinks of the Rubin unembargo in bulk, one night at a time (read-only).

For one night (instrument + day_obs) each sink is read once, whatever the number of exposures: one dataset query
per dataset type on the source Butler, one directory (or bucket prefix) listing of the embargo store, one listing of
the destination directory, per destination Butler one dataset query per dataset type plus one visit query and one
datastore-record lookup, and for Rucio a handful of bulk calls (list_dids with a name wildcard, bulk_list_files,
get_metadata_bulk, list_replicas). :func:`read_night` gathers them and facility_data.rubin.classify judges each
exposure against them; :func:`night_records` reads the source's dimension records (what each yaml must hold).
"""

from __future__ import annotations

import os
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from facility_data.rubin import rucioreg, steps
from facility_data.rubin.policy import EmbargoPolicy
from facility_data.rubin.storage import LocalStore, S3Store, StoredObject, folder_key
from facility_data.rubin.windows import ExposureRef

_CHUNK = 500  # DIDs per bulk Rucio call
SELECT_CHUNK = 250  # exposures per selection query (SQLite limits the size of an IN clause)


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


def dest_files(policy: EmbargoPolicy, instrument: str, day_obs: int) -> dict[str, int]:
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


def query_ids(butler, policy: EmbargoPolicy, instrument: str, day_obs: int,
               exposures: list[int] | None = None) -> dict[int, dict[str, int]]:
    """Exposure -> {dataset id: detector} of every raw (and guider) dataset of the night in ``butler``, in one
    query per dataset type returning plain rows (no DatasetRef built); a missing collection/type means none.
    With ``exposures``, only those (in chunks: SQLite limits the size of an IN clause)."""
    from lsst.daf.butler import MissingCollectionError, MissingDatasetTypeError

    wheres = ["exposure.day_obs = :day"] if exposures is None else [
        "exposure.day_obs = :day AND exposure.id IN (" + ",".join(str(int(e)) for e in chunk) + ")"
        for chunk in chunks(sorted(exposures), SELECT_CHUNK)]
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


def tracts_by_visit(source, policy: EmbargoPolicy, instrument: str, day_obs: int) -> dict[int, set[int]]:
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


def visits_by_exposure(source, instrument: str, day_obs: int) -> dict[int, list[int]]:
    out: dict[int, list[int]] = defaultdict(list)
    for rec in source.query_dimension_records("visit_definition", instrument=instrument,
                                              where="exposure.day_obs = :day", bind={"day": day_obs},
                                              explain=False, limit=None):
        out[int(rec.exposure)].append(int(rec.visit))
    return out


@dataclass
class DestState:
    ids: set[str]
    visits: set[int]


def dest_state(butler, policy: EmbargoPolicy, instrument: str, day_obs: int,
                exposures: list[int] | None = None) -> DestState:
    """Dataset ids and visit records of the night in a destination Butler. Registry presence stands for the
    ingest: ingest_zip writes registry and datastore records in one transaction (the deep check reads artifacts)."""
    ids = {i for per_exp in query_ids(butler, policy, instrument, day_obs, exposures).values() for i in per_exp}
    visits = {int(r.id) for r in butler.query_dimension_records(
        "visit", instrument=instrument, where="visit.day_obs = :day", bind={"day": day_obs}, explain=False,
        limit=None)}
    return DestState(ids, visits)


def chunks(items: list, n: int = _CHUNK):
    for i in range(0, len(items), n):
        yield items[i:i + n]


@dataclass
class RucioState:
    obs_meta: dict[str, dict]  # Obs dataset name -> metadata (is_open, arcBackup, SafeCopies, ...)
    day_sets: set[str]
    parents: dict[str, set[str]]  # file name -> datasets it is attached to (Obs and day datasets of the night)
    replicas: dict[str, dict]  # file name -> {bytes, md5, adler32, rses}
    file_meta: dict[str, dict]
    rules: list[dict]  # archival rules on the night's Obs datasets (empty when the policy asks for none)


def rucio_state(client, policy: EmbargoPolicy, instrument: str, day_obs: int, files: list[str]) -> RucioState:
    scope = policy.rucio.scope
    base = f"Dataset/{instrument}/raw"
    obs = [d if isinstance(d, str) else d["name"] for d in
           client.list_dids(scope, [{"name": f"{base}/Obs/{day_obs}/*"}], did_type="dataset")]
    day_sets = {d if isinstance(d, str) else d["name"] for d in
                client.list_dids(scope, [{"name": f"{base}/*/{day_obs}"}], did_type="dataset")}
    obs_meta: dict[str, dict] = {}
    parents: dict[str, set[str]] = defaultdict(set)
    for chunk in chunks(obs):
        for m in client.get_metadata_bulk([{"scope": scope, "name": n} for n in chunk], plugin="ALL"):
            obs_meta[m["name"]] = m
    for chunk in chunks(obs + sorted(day_sets)):
        for f in client.bulk_list_files([{"scope": scope, "name": n} for n in chunk]):
            parents[f["name"]].add(f["parent_name"])
    replicas: dict[str, dict] = {}
    for chunk in chunks(files, 100):  # the server's cost per call grows faster than linearly
        for r in client.list_replicas([{"scope": scope, "name": n} for n in chunk], rse_expression=policy.rucio.rse,
                                      ignore_availability=True, resolve_archives=False):
            replicas[r["name"]] = r
    file_meta: dict[str, dict] = {}
    for chunk in chunks([n for n in files if n in replicas or n in parents]):
        for m in client.get_metadata_bulk([{"scope": scope, "name": n} for n in chunk], plugin="JSON"):
            file_meta[m["name"]] = m
    archive = policy.rucio.archive
    rules = rucioreg.night_rules(client, scope, archive.rse_expression, instrument, day_obs) if archive else []
    return RucioState(obs_meta, day_sets, dict(parents), replicas, file_meta, rules)



@dataclass
class NightSinks:
    """What every sink holds of one night's exposures (a sink that could not be read: its exception)."""
    src_ids: dict[int, dict[str, int]]  # exposure -> {dataset id: detector} in the source Butler
    recorded: dict[str, list[tuple[str, int]]]  # source dataset id -> its datastore files (path, bytes)
    detectors: dict[int, str]  # detector id -> full name
    visits: dict[int, list[int]]  # exposure -> visits
    tracts: dict[int, set[int]]  # visit -> overlapping tracts
    dest_files: dict[str, int]  # file name in the destination directory -> bytes
    dests: dict[str, DestState | Exception]  # butler step name -> its state
    rucio: RucioState | Exception


def read_night(ctx: steps.Context, instrument: str, day_obs: int, exps: list[ExposureRef],
               subset: list[int] | None = None) -> NightSinks:
    """Read every sink of the night once for ``exps`` (Butler queries restricted to the exposure ids ``subset``
    when given: a night mostly outside the request)."""
    from concurrent.futures import ThreadPoolExecutor

    policy = ctx.policy
    source = ctx.source
    base = f"{instrument}/{day_obs}"
    rucio_files = [f"{base}/{e.obs_id}{suffix}" for e in exps for suffix in (".zip", "_dimensions.yaml")]
    # Rucio answers from another server: ask it while this process reads the Butlers
    with ThreadPoolExecutor(1) as pool:
        pending = pool.submit(rucio_state, ctx.rucio, policy, instrument, day_obs, rucio_files)
        src_ids = query_ids(source, policy, instrument, day_obs, subset)
        recorded = steps.recorded_files(source, [i for per_exp in src_ids.values() for i in per_exp])
        detectors = {int(r.id): r.full_name for r in source.query_dimension_records(
            "detector", instrument=instrument, explain=False, limit=None)}
        visits = visits_by_exposure(source, instrument, day_obs)
        tracts = tracts_by_visit(source, policy, instrument, day_obs)
        files = dest_files(policy, instrument, day_obs)
        dests: dict[str, DestState | Exception] = {}
        for d in policy.destinations:
            try:
                dests[steps.butler_step(d)] = dest_state(ctx.butler(d), policy, instrument, day_obs, subset)
            except Exception as exc:  # noqa: BLE001 - reported per exposure as an error state
                dests[steps.butler_step(d)] = exc
        try:
            rucio: RucioState | Exception = pending.result()
        except Exception as exc:  # noqa: BLE001
            rucio = exc
    return NightSinks(src_ids, recorded, detectors, visits, tracts, files, dests, rucio)


def night_records(source, instrument: str, day_obs: int, exposures: list[int]) -> dict[int, dict[str, list]]:
    """Exposure -> its dimension records in the source Butler, as facility_data.rubin.dimensions.exposure_records
    gives them, for ``exposures`` of one night: one query per element for the whole night, not ~8 per exposure.
    An exposure the night's queries do not fully cover (a visit on another day_obs) is asked alone."""
    from facility_data.rubin.dimensions import ELEMENTS, exposure_records

    def night(element: str, where: str) -> list:
        return source.query_dimension_records(element, instrument=instrument, where=where, bind={"day": day_obs},
                                              explain=False, limit=None)

    by_exposure = {int(r.id): r for r in night("exposure", "exposure.day_obs = :day")}
    groups = {r.dataId["group"]: r for r in night("group", "exposure.day_obs = :day")}
    definitions: dict[int, list] = defaultdict(list)
    for r in night("visit_definition", "exposure.day_obs = :day"):
        definitions[int(r.exposure)].append(r)
    visits = {int(r.id): r for r in night("visit", "visit.day_obs = :day")}
    per_visit: dict[str, dict[int, list]] = {e: defaultdict(list) for e in ("visit_detector_region",
                                                                             "visit_system_membership")}
    for element, bucket in per_visit.items():
        for r in night(element, "visit.day_obs = :day"):
            bucket[int(r.visit)].append(r)
    days = source.query_dimension_records("day_obs", instrument=instrument, day_obs=day_obs, explain=False)
    systems = source.query_dimension_records("visit_system", instrument=instrument, explain=False)
    out = {}
    for exposure in exposures:
        rec = by_exposure.get(exposure)
        ids = sorted({int(d.visit) for d in definitions.get(exposure, [])})
        if rec is None or rec.group not in groups or any(v not in visits for v in ids):
            out[exposure] = exposure_records(source, instrument, exposure)  # LookupError if not in the source
            continue
        records: dict[str, list] = {e: [] for e in ELEMENTS}
        records.update(exposure=[rec], day_obs=list(days), group=[groups[rec.group]],
                       visit_definition=definitions[exposure], visit=[visits[v] for v in ids])
        for element, bucket in per_visit.items():
            records[element] = [r for v in ids for r in bucket.get(v, [])]
        members = {m.visit_system for m in records["visit_system_membership"]}
        records["visit_system"] = [r for r in systems if r.id in members]
        out[exposure] = records
    return out
