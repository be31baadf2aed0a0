"""Classifying the Rubin unembargo's exposures, one night at a time (read-only).

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

Two modes. ``fast`` (default) reads each sink once per night, in bulk (facility_data.rubin.sinks); its
per-exposure checks are cheap: zip central directory (member names and sizes) against the store listing, zip/yaml
sizes against the bytes Rucio recorded, dataset ids and datastore records, Rucio replicas/attachments/closed/metadata.
``deep`` additionally runs the unembargo steps' own read-only checks (:func:`facility_data.rubin.steps.exposure_status`
with ``deep=True``) on every exposure: every zip member's CRC against its embargo object, the yaml against the source
Butler's records, datastore artifacts, Rucio md5/adler32 against the files. Only a deep result can authorise pruning
the embargo copy.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime

from facility_data.rubin import rucioreg, steps
from facility_data.rubin.sinks import SELECT_CHUNK, NightSinks, RucioState, list_day_objects, read_night
from facility_data.rubin.storage import StoredObject, folder_key
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


def judge(check: ExposureCheck, names: list[str]) -> ExposureCheck:
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
    exps, problems = select_night(ctx, instrument, day_obs, now)
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
        results += [deep_check(ctx, e, objects.get(e.obs_id, []), names) for e in exps]
    elif exps:
        subset = [e.exposure for e in exps] if problems else None
        results += fast_checks(ctx, exps, objects, names, read_night(ctx, instrument, day_obs, exps, subset))
    results.sort(key=lambda c: c.obs_id)
    night = NightResult(instrument, day_obs, "deep" if deep else "fast", now.astimezone(UTC).isoformat(), results,
                        embargoed, time.monotonic() - t0)
    log.info("night %s %s (%s check, %.1f s): %s", instrument, day_obs, night.mode, night.seconds,
             {k: v for k, v in night.counts.items() if v})
    return night


def check_exposures(ctx: steps.Context, instrument: str, day_obs: int,
                    exps: list[ExposureRef]) -> list[ExposureCheck]:
    """The fast check of some released exposures of one night, each sink read once for all of them (read-only);
    one ExposureCheck per exposure, in the order given."""
    objects = list_day_objects(ctx.store, instrument, day_obs, folders=[e.obs_id for e in exps])
    night = read_night(ctx, instrument, day_obs, exps, subset=[e.exposure for e in exps])
    return fast_checks(ctx, exps, objects, steps.step_names(ctx.policy), night)


def select_night(ctx: steps.Context, instrument: str, day_obs: int, now: datetime):
    """The night's exposures past release (and the others, with why), by the unembargo's own manual selection.

    Asked in chunks of obs_ids: windows.select_manual matches policy rows with one ``exposure.id IN (...)`` clause,
    which SQLite refuses beyond ~1000 terms (a full LSSTCam night)."""
    recs = ctx.source.query_dimension_records("exposure", instrument=instrument, where="exposure.day_obs = :day",
                                              bind={"day": day_obs}, explain=False, limit=None)
    obs_ids = sorted(r.obs_id for r in recs)
    exps, problems = [], []
    for i in range(0, len(obs_ids), SELECT_CHUNK):
        e, p = select_manual(ctx.source, ctx.policy,
                             ManualRequest(instrument, day_obs, tuple(obs_ids[i:i + SELECT_CHUNK]), False), now)
        exps += e
        problems += p
    return exps, problems


def deep_check(ctx: steps.Context, exp: ExposureRef, objects: list, names: list[str]) -> ExposureCheck:
    """The unembargo steps' own read-only checks, with full verification (re-reads everything)."""
    check = ExposureCheck(exp.obs_id, DONE, exposure=exp.to_dict(), deep=True)
    try:
        status = steps.exposure_status(ctx, exp, deep=True)
    except Exception as exc:  # noqa: BLE001 - reported as an error state, never hidden
        check.sinks = {n: "error" for n in names}
        check.problems.append(f"{type(exc).__name__}: {exc}")
        return judge(check, names)
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
    return judge(check, names)


def fast_checks(ctx: steps.Context, exps: list[ExposureRef], objects: dict[str, list[StoredObject]],
                names: list[str], night: NightSinks) -> list[ExposureCheck]:
    """Classify each of ``exps`` (one night) against the night's bulk listings ``objects`` and ``night``."""
    policy = ctx.policy
    src_ids, recorded, detectors = night.src_ids, night.recorded, night.detectors
    visits, tracts, dest_files, dests, rucio = night.visits, night.tracts, night.dest_files, night.dests, night.rucio
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
        out.append(judge(check, names))
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


def _rucio(policy, exp: ExposureRef, tracts: list[int], st: RucioState, dest_files: dict[str, int],
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

