"""Benchmark: the reconcile check (fast mode) of one night of >= 1000 exposures x 205 detector objects, every sink
populated, against the local site's real Rucio server (PostgreSQL) and SQLite Butler repos.

Prints one JSON line ``{"bench": "reconcile", "exposures", "objects", "seconds", ...}``; ``seconds`` times
``reconcile.check_night`` alone (opening the Butlers included, Python imports excluded). Building the night is done in bulk (tiny objects, one Butler transaction for the
records, one ingest call, Rucio bulk calls) and timed separately (``setup_seconds``, on stderr per phase). The zips,
yaml files, destination ingest (``ingest_zip``) and Rucio registrations are real; the Rucio registration is written in
bulk calls rather than by the per-exposure step (which takes ~1 s per exposure). Sizes: BENCH_RECONCILE_EXPOSURES
(default 1000), BENCH_RECONCILE_DETECTORS (default 205); BENCH_RECONCILE_INGEST=zip fills the destination Butler
with ingest_zip per exposure; BENCH_RECONCILE_DEEP=1 times the deep check; BENCH_RECONCILE_KEEP=1 keeps (and
reuses) the night.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
import warnings
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from pathlib import Path

warnings.filterwarnings("ignore")


#: ingest each zip into the destination Butler (as the unembargo step does, ~0.25 s per exposure) instead of one bulk
#: direct ingest of the same datasets
INGEST_ZIP = os.environ.get("BENCH_RECONCILE_INGEST", "bulk") == "zip"
#: time the deep check (the steps' own verification of every artifact) instead of the fast one
DEEP = os.environ.get("BENCH_RECONCILE_DEEP") == "1"


def _phase(name: str, t0: float) -> float:
    t = time.monotonic()
    print(f"[bench reconcile] {name}: {t - t0:.1f} s", file=sys.stderr, flush=True)
    return t


def build(root: Path, prefix: Path, day_obs: int, n: int, n_det: int, rucio) -> dict:
    from lsst.daf.butler import Butler, DatasetRef, FileDataset, Timespan

    from facility_data.demo.rubin_synthetic import (
        FORMATTER,
        INSTRUMENT,
        Night,
        _box,
        _tai,
        detector_layout,
        ensure_repo,
        exposure_id,
        obs_id_for,
    )
    from facility_data.rubin import butlerops, steps
    from facility_data.rubin.dimensions import ELEMENTS, export_yaml
    from facility_data.rubin.rucioreg import did_names
    from facility_data.rubin.storage import LocalStore, folder_key
    from facility_data.rubin.windows import ExposureRef
    from facility_data.rubin.zipbuild import build_zip, file_hashes

    t = time.monotonic()
    layout = detector_layout(n_det)
    store = LocalStore(root / "embargo")
    source = ensure_repo(root / "butler" / "embargo", layout)
    dest_repo = root / "butler" / "main"
    ensure_repo(dest_repo, layout)
    night = Night(day_obs, INSTRUMENT, root / "butler" / "embargo", [dest_repo], store, prefix)
    policy = night.policy(destination_prefix=prefix)
    day = datetime.strptime(str(day_obs), "%Y%m%d").replace(tzinfo=UTC)
    start = day + timedelta(days=1, hours=1)
    reg = source.registry
    exps, records = [], defaultdict(list)
    for i in range(n):
        seq = i + 1
        obs_id, exp_id = obs_id_for(day_obs, seq), exposure_id(day_obs, seq)
        begin = start + timedelta(seconds=30 * i)
        end = begin + timedelta(seconds=25)
        ra = 10.0 + 0.01 * i
        group = begin.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3]
        common = {"instrument": INSTRUMENT, "id": exp_id, "day_obs": day_obs, "physical_filter": "r_57",
                  "seq_num": seq, "exposure_time": 25.0, "target_name": "bench", "observation_reason": "science",
                  "science_program": "BENCH", "azimuth": 180.0, "zenith_angle": 20.0,
                  "timespan": Timespan(_tai(begin), _tai(end))}
        records["group"].append({"instrument": INSTRUMENT, "name": group})
        records["exposure"].append({**common, "obs_id": obs_id, "group": group, "dark_time": 25.9,
                                    "observation_type": "science", "seq_start": seq, "seq_end": seq,
                                    "tracking_ra": ra, "tracking_dec": -30.0, "sky_angle": 0.0,
                                    "has_simulated": True, "can_see_sky": True})
        records["visit"].append({**common, "name": obs_id, "region": _box(ra - 0.1, ra + 0.1, -30.1, -29.9)})
        records["visit_definition"].append({"instrument": INSTRUMENT, "exposure": exp_id, "visit": exp_id})
        records["visit_system_membership"] += [{"instrument": INSTRUMENT, "visit_system": vs, "visit": exp_id}
                                               for vs in (0, 2)]
        exps.append((obs_id, exp_id, end))
    with reg.transaction():
        reg.syncDimensionData("day_obs", {"instrument": INSTRUMENT, "id": day_obs, "timespan": Timespan(
            _tai(day + timedelta(hours=12)), _tai(day + timedelta(hours=36)))})
        for element in ("group", "exposure", "visit", "visit_definition", "visit_system_membership"):
            reg.insertDimensionData(element, *records[element])
    t = _phase(f"source dimension records ({n} exposures)", t)

    datasets = defaultdict(list)
    objects = 0
    types = {k: reg.getDatasetType(k) for k in ("raw", "guider_raw")}
    for obs_id, exp_id, _ in exps:
        folder = root / "embargo" / folder_key(INSTRUMENT, day_obs, obs_id)
        folder.mkdir(parents=True)
        (folder / f"{obs_id}_expectedSensors.json").write_text(json.dumps(
            {"obsId": obs_id, "expectedSensors": {d.name: d.purpose for d in layout}}))
        for d in layout:
            path = folder / f"{obs_id}_{d.name}.fits"
            path.write_bytes(f"{obs_id} {d.name}".encode().ljust(80))
            t_name = "guider_raw" if d.purpose == "GUIDER" else "raw"
            ref = DatasetRef(types[t_name], {"instrument": INSTRUMENT, "exposure": exp_id, "detector": d.id},
                             run=f"{INSTRUMENT}/raw/{'guider' if t_name == 'guider_raw' else 'all'}")
            datasets[t_name].append(FileDataset(path=str(path), refs=[ref], formatter=FORMATTER))
        objects += len(layout) + 1
    t = _phase(f"embargo store ({objects} objects)", t)
    for ds in datasets.values():
        reg.registerRun(ds[0].refs[0].run)
        source.ingest(*ds, transfer="direct", record_validation_info=False)
    t = _phase("source ingest (direct, one call per dataset type)", t)

    # zips, yaml files and destination ingest: the real per-exposure artifacts
    source = Butler.from_config(str(night.source_repo))
    refs_by_exp = defaultdict(list)
    for dt, coll in policy.collections(INSTRUMENT).items():
        for r in source.query_datasets(dt, collections=coll, instrument=INSTRUMENT, where="exposure.day_obs = :d",
                                       bind={"d": day_obs}, with_dimension_records=True, explain=False,
                                       limit=None):
            refs_by_exp[int(r.dataId["exposure"])].append(r)
    q = source.query_dimension_records
    by_exp_records = {e: defaultdict(list) for e in refs_by_exp}
    for element in ("exposure", "visit_definition"):
        for rec in q(element, instrument=INSTRUMENT, where="exposure.day_obs = :d", bind={"d": day_obs},
                     explain=False, limit=None):
            by_exp_records[int(rec.id if element == "exposure" else rec.exposure)][element].append(rec)
    for element in ("visit", "visit_system_membership"):
        for rec in q(element, instrument=INSTRUMENT, where="visit.day_obs = :d", bind={"d": day_obs},
                     explain=False, limit=None):
            by_exp_records[int(rec.id if element == "visit" else rec.visit)][element].append(rec)
    day_rec = q("day_obs", instrument=INSTRUMENT, day_obs=day_obs, explain=False)
    groups = {r.name: r for r in q("group", instrument=INSTRUMENT, explain=False)}
    systems = q("visit_system", instrument=INSTRUMENT, explain=False)
    hashes = {}
    dest = Butler.from_config(str(dest_repo), writeable=True)
    data_ids = [r.dataId for refs in refs_by_exp.values() for r in refs]
    data_ids += [source.registry.expandDataId(instrument=INSTRUMENT, visit=e) for e in refs_by_exp]
    for dataset_type in {r.datasetType for refs in refs_by_exp.values() for r in refs}:
        dest.registry.registerDatasetType(dataset_type)
    dest.transfer_dimension_records_from(source, data_ids)
    t = _phase("destination dimension records (one transfer)", t)
    t_zip = t_yaml = t_ingest = 0.0
    for obs_id, exp_id, end in exps:
        ref = ExposureRef(INSTRUMENT, day_obs, obs_id, exp_id, end.isoformat(), end.isoformat(), 80.0)
        p = steps.paths(policy, ref)
        objs = store.list_folder(INSTRUMENT, day_obs, obs_id)
        a = time.monotonic()
        index = butlerops.zip_index(source, refs_by_exp[exp_id], objs)
        zh, _ = build_zip(store, objs, index, p.zip)
        b = time.monotonic()
        recs = {e: [] for e in ELEMENTS}
        recs.update(by_exp_records[exp_id])
        recs["day_obs"] = day_rec
        recs["group"] = [groups[recs["exposure"][0].group]]
        recs["visit_system"] = systems
        p.yaml.write_bytes(export_yaml(source, recs))
        c = time.monotonic()
        if INGEST_ZIP:
            dest.ingest_zip(str(p.zip), transfer="direct", skip_existing=True)
        d = time.monotonic()
        t_zip, t_yaml, t_ingest = t_zip + b - a, t_yaml + c - b, t_ingest + d - c
        hashes[obs_id] = (zh, file_hashes(p.yaml))
    print(f"[bench reconcile]   zips {t_zip:.1f} s, yaml {t_yaml:.1f} s, ingest_zip {t_ingest:.1f} s",
          file=sys.stderr)
    t = _phase("zips + yaml" + (" + destination ingest_zip" if INGEST_ZIP else ""), t)
    if not INGEST_ZIP:  # registry + datastore records in one call (the fast check reads exactly those)
        for ds in datasets.values():  # the same dataset ids as the source, one direct ingest per dataset type
            dest.registry.registerRun(ds[0].refs[0].run)
            dest.ingest(*ds, transfer="direct", record_validation_info=False)
        t = _phase("destination datasets (one direct ingest per dataset type)", t)

    tracts: dict[int, set] = defaultdict(set)
    for d in source.query_data_ids(["visit", "tract"], data_id={"instrument": INSTRUMENT, "skymap": policy.rucio.skymap},
                                   where="visit.day_obs = :d", bind={"d": day_obs}, explain=False,
                                   limit=None):
        tracts[int(d["visit"])].add(int(d["tract"]))
    r = policy.rucio
    files, datasets_, attach, obs_names = [], set(), defaultdict(list), []
    for obs_id, exp_id, _ in exps:
        day_sets, obs = did_names(INSTRUMENT, day_obs, obs_id, sorted(tracts.get(exp_id, ())))
        obs_names.append(obs)
        zh, yh = hashes[obs_id]
        for h, role in ((zh, "zip_file"), (yh, "dim_file")):
            name = f"{INSTRUMENT}/{day_obs}/{Path(h.path).name}"
            files.append({"scope": r.scope, "name": name, "bytes": h.bytes, "md5": h.md5, "adler32": h.adler32,
                          "pfn": "file://" + h.path, "meta": {"rubin_butler": role}})
            for ds in (*day_sets, obs):
                datasets_.add(ds)
                attach[ds].append({"scope": r.scope, "name": name})
    for i in range(0, len(files), 500):
        rucio.add_replicas(r.rse, files[i:i + 500])
    rucio.add_datasets([{"scope": r.scope, "name": ds, "statuses": {"monotonic": True}} for ds in sorted(datasets_)])
    items = [{"scope": r.scope, "name": ds, "dids": dids[i:i + 500]}  # the server takes <= 1000 dids per item
             for ds, dids in attach.items() for i in range(0, len(dids), 500)]
    for i in range(0, len(items), 200):
        rucio.attach_dids_to_dids(items[i:i + 200])
    for obs in obs_names:
        rucio.close(r.scope, obs)
    meta = [{"scope": r.scope, "name": obs, "meta": {"arcBackup": f"{r.backup_rse}:need", "SafeCopies": ""}}
            for obs in obs_names]
    for i in range(0, len(meta), 500):
        rucio.set_dids_metadata_bulk(meta[i:i + 500])
    _phase(f"rucio bulk registration ({len(files)} replicas, {len(datasets_)} datasets)", t)
    return {"objects": objects}


def main() -> None:
    from facility_data.demo.rubin_synthetic import unique_day_obs
    from facility_data.localsite import Site
    from facility_data.rubin import reconcile, steps

    n = int(os.environ.get("BENCH_RECONCILE_EXPOSURES", "1000"))
    n_det = int(os.environ.get("BENCH_RECONCILE_DETECTORS", "205"))
    keep = os.environ.get("BENCH_RECONCILE_KEEP")  # keep the night (and reuse a kept one) to profile the check
    site = Site.from_env()
    started = site.up(services=("postgres", "rucio"))
    kept = site.root / "bench" / "reconcile-kept.json"
    if keep and kept.exists():
        state = json.loads(kept.read_text())
        day_obs, n, n_det, setup = state["day_obs"], state["exposures"], state["detectors"], state["setup"]
    else:
        day_obs, setup = unique_day_obs(1971, 1989), None
    root = site.root / "bench" / f"reconcile-{day_obs}"
    prefix = site.root / "main" / f"bench-reconcile-{day_obs}"  # under the RSE's prefix
    t0 = time.monotonic()
    try:
        if setup is None:
            built = build(root, prefix, day_obs, n, n_det, site.rucio_client())
            setup = time.monotonic() - t0
            objects = built["objects"]
            if keep:
                kept.write_text(json.dumps({"day_obs": day_obs, "exposures": n, "detectors": n_det,
                                            "setup": setup, "objects": objects}))
        else:
            objects = json.loads(kept.read_text())["objects"]
        policy = _policy(root, prefix, day_obs)
        ctx = steps.Context(policy, rucio=site.rucio_client())
        import lsst.daf.butler  # noqa: F401 - a Python import is process start-up, not part of the check
        now = datetime.now(UTC)
        t = time.monotonic()
        night = reconcile.check_night(ctx, "LSSTCam", day_obs, now=now, deep=DEEP)
        seconds = time.monotonic() - t
        counts = night.counts
        out = {"bench": "reconcile", "exposures": counts["total"], "objects": objects,
               "seconds": round(seconds, 2), "mode": "deep" if DEEP else "fast", "done": counts["done"],
               "setup_seconds": round(setup, 1), "detectors": n_det,
               "destination_fill": "ingest_zip" if INGEST_ZIP else "bulk direct ingest"}
        if counts["done"] != n:
            out["error"] = f"expected {n} done exposures, got {counts}"
        print(json.dumps(out), flush=True)
    finally:
        if not keep:
            shutil.rmtree(root, ignore_errors=True)
            shutil.rmtree(prefix, ignore_errors=True)
        if started:
            site.down()


def _policy(root: Path, prefix: Path, day_obs: int):
    from facility_data.demo.rubin_synthetic import INSTRUMENT, Night
    from facility_data.rubin.storage import LocalStore

    night = Night(day_obs, INSTRUMENT, root / "butler" / "embargo", [root / "butler" / "main"],
                  LocalStore(root / "embargo"), prefix)
    return night.policy(destination_prefix=prefix)


if __name__ == "__main__":
    main()
