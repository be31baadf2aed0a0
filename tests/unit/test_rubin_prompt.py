"""The prompt-products unembargo (rubin.prompt) against real SQLite Butler repos: a synthetic night whose source
Butler holds a calexp-like (visit + detector) and a catalogue-like (visit) dataset type in two runs."""

from __future__ import annotations

import warnings
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from facility_data.demo.rubin_synthetic import (
    INSTRUMENT,
    add_prompt_products,
    build_night,
    detector_layout,
    ensure_repo,
    unique_day_obs,
)
from facility_data.rubin import prompt
from facility_data.rubin.policy import ButlerRef
from facility_data.rubin.prompt_policy import PromptPolicy, PromptRow
from facility_data.rubin.runs import BadRequest

warnings.filterwarnings("ignore", module="erfa")
EMBARGO_H = 80
DETECTORS = 2  # calexps per visit
TYPES = ("calexp", "sourceTable_visit")


@pytest.fixture(scope="module")
def night(tmp_path_factory):
    """4 on-sky visits, 2 per prompt run: 4 x (2 calexp + 1 sourceTable_visit) = 12 datasets. Read-only."""
    n = build_night(tmp_path_factory.mktemp("prompt"), day_obs=unique_day_obs(), n_exposures=4, detectors=6)
    add_prompt_products(n, detectors=DETECTORS)
    return n


@pytest.fixture
def dests(tmp_path):
    """Two fresh destination repos per test (the night's own stay untouched)."""
    out = [tmp_path / name for name in ("main", "main2")]
    for path in out:
        ensure_repo(path, detector_layout(6))
    return out


def row(**kw) -> PromptRow:
    base = {"name": "prompt", "instrument": INSTRUMENT, "dataset_types": ["*"], "collections": ["LSSTCam/prompt/*"],
            "embargo_hours": EMBARGO_H, "avoid_collections": ["LSSTCam/raw/all"]}
    return PromptRow(**{**base, **kw})


def policy(night, dests, *rows, verify="checksum") -> PromptPolicy:
    return PromptPolicy(rows=list(rows) or [row()], source=ButlerRef(uri=str(night.source_repo)),
                        destinations=[ButlerRef(uri=str(d)) for d in dests], verify=verify)


def release(night, i: int) -> datetime:
    return night.ends[night.obs_ids[i]] + timedelta(hours=EMBARGO_H)


def ctx_at(pol, now, dry_run=False):
    return prompt.PromptContext(pol, clock=lambda: now, dry_run=dry_run)


def held(night, dest) -> dict[str, set[int]]:
    """Dataset type -> visits the destination holds (empty if the type is not even registered)."""
    from lsst.daf.butler import Butler, MissingDatasetTypeError

    b = Butler.from_config(str(dest))
    out = {}
    for t in TYPES:
        try:
            refs = b.query_datasets(t, "LSSTCam/prompt/*", find_first=False, explain=False, limit=None)
        except MissingDatasetTypeError:
            refs = []
        out[t] = {r.dataId["visit"] for r in refs}
    return out


def visits(night, idx) -> set[int]:
    return {night.exposure_ids[night.obs_ids[i]] for i in idx}


def test_released_products_are_transferred_with_their_dimension_records(night, dests):
    from lsst.daf.butler import Butler

    pol = policy(night, dests)
    out = prompt.run(ctx_at(pol, release(night, 3) + timedelta(minutes=1)), day_obs=night.day_obs)
    assert out["ok"], out
    assert out["selected"] == 12 and out["transferred"] == 24 and out["already_present"] == 0  # 2 destinations
    assert out["rows"][0]["dataset_types"] == list(TYPES)
    src = Butler.from_config(str(night.source_repo))
    for dest in dests:
        assert held(night, dest) == {t: visits(night, range(4)) for t in TYPES}
        b = Butler.from_config(str(dest))
        for ref in src.query_datasets("calexp", "LSSTCam/prompt/*", find_first=False, explain=False):
            assert b.get(ref) == src.get(ref)  # same id, same content, readable in the destination
        recs = b.query_dimension_records("visit", instrument=INSTRUMENT, explain=False)
        assert {r.id for r in recs} == visits(night, range(4))  # transfer_dimensions brought the visits


@pytest.mark.parametrize("where", ["", "visit.id > 0 OR visit.id <= 0"])  # a row's where cannot widen the time
def test_still_embargoed_products_are_held_and_fail_the_run(night, dests, where):
    pol = policy(night, dests[:1], row(where=where))
    now = release(night, 1) + timedelta(seconds=1)  # visits 0-1 released, 2-3 not
    out = prompt.run(ctx_at(pol, now), day_obs=night.day_obs)
    assert not out["ok"] and out["transferred"] == 6
    states = {p["state"] for p in out["rows"][0]["problems"]}
    assert states == {prompt.HELD} and out["problem_count"] == 6
    assert held(night, dests[0]) == {t: visits(night, (0, 1)) for t in TYPES}


def test_a_window_run_moves_exactly_what_is_released_in_its_window(night, dests):
    pol = policy(night, dests[:1])
    # releases 36 s apart: [release(0), release(1) + 1 s) holds visits 0 and 1 only
    window = (release(night, 0), release(night, 1) + timedelta(seconds=1))
    out = prompt.run(ctx_at(pol, release(night, 3) + timedelta(hours=1)), window=window)
    assert out["ok"] and out["transferred"] == 6, out
    assert held(night, dests[0]) == {t: visits(night, (0, 1)) for t in TYPES}
    # the next window, run before its products are due by the clock: nothing moves, the run fails
    later = (window[1], release(night, 3) + timedelta(seconds=1))
    out = prompt.run(ctx_at(pol, release(night, 2) - timedelta(minutes=1)), window=later)
    assert not out["ok"] and out["transferred"] == 0 and out["problem_count"] == 6
    assert held(night, dests[0]) == {t: visits(night, (0, 1)) for t in TYPES}


def test_rerun_is_idempotent_and_verifies_what_is_there(night, dests):
    pol = policy(night, dests)
    now = release(night, 3) + timedelta(minutes=1)
    first = prompt.run(ctx_at(pol, now), day_obs=night.day_obs)
    again = prompt.run(ctx_at(pol, now), day_obs=night.day_obs)
    assert first["ok"] and again["ok"]
    assert again["transferred"] == 0 and again["already_present"] == 24
    assert held(night, dests[0]) == {t: visits(night, range(4)) for t in TYPES}


def _dest_file(dest: Path, ref) -> Path:
    from lsst.daf.butler import Butler

    return Path(Butler.from_config(str(dest)).getURI(ref).ospath)


@pytest.mark.parametrize("verify", ["checksum", "size"])
def test_a_changed_dataset_in_the_destination_is_refused(night, dests, verify):
    from lsst.daf.butler import Butler

    pol = policy(night, dests[:1], verify=verify)
    now = release(night, 3) + timedelta(minutes=1)
    assert prompt.run(ctx_at(pol, now), day_obs=night.day_obs)["ok"]
    ref = Butler.from_config(str(night.source_repo)).query_datasets("calexp", "LSSTCam/prompt/output-1",
                                                                     explain=False)[0]
    path = _dest_file(dests[0], ref)
    text = path.read_text()
    # checksum mode must catch a same-size change; size mode a size change
    altered = text.replace("calexp", "CALEXP") if verify == "checksum" else text + "# edited\n"
    path.write_text(altered)
    out = prompt.run(ctx_at(pol, now), day_obs=night.day_obs)
    assert not out["ok"] and out["problem_count"] == 1 and out["already_present"] == 11
    problem = out["rows"][0]["problems"][0]
    assert problem["state"] == prompt.INCONSISTENT and str(ref.id) in problem["dataset"]
    assert "differs" in problem["reason"] and "refused" in problem["reason"]
    assert path.read_text() == altered  # refused, not overwritten


def test_another_dataset_for_the_same_data_id_is_refused(night, dests):
    from lsst.daf.butler import Butler, DatasetType

    pol = policy(night, dests[:1])
    src = Butler.from_config(str(night.source_repo))
    ref = src.query_datasets("sourceTable_visit", "LSSTCam/prompt/output-1", explain=False,
                             with_dimension_records=True)[0]
    dest = Butler.from_config(str(dests[0]), writeable=True)
    dest.transfer_dimension_records_from(src, [ref])
    dest.registry.registerDatasetType(DatasetType("sourceTable_visit", ref.datasetType.dimensions,
                                                  "StructuredDataDict"))
    dest.registry.registerRun(ref.run)
    other = dest.put({"not": "the source's"}, "sourceTable_visit", ref.dataId, run=ref.run)
    assert other.id != ref.id
    out = prompt.run(ctx_at(pol, release(night, 3) + timedelta(minutes=1)), day_obs=night.day_obs)
    assert not out["ok"] and out["problem_count"] == 1 and out["transferred"] == 11
    problem = out["rows"][0]["problems"][0]
    assert problem["state"] == prompt.INCONSISTENT and str(other.id) in problem["reason"]
    assert dest.get(other) == {"not": "the source's"}


def test_dry_run_moves_nothing_and_counts_what_it_would(night, dests):
    pol = policy(night, dests)
    out = prompt.run(ctx_at(pol, release(night, 3) + timedelta(minutes=1), dry_run=True), day_obs=night.day_obs)
    assert out["ok"] and out["dry_run"] and out["would_transfer"] == 24 and out["transferred"] == 0
    for dest in dests:
        assert held(night, dest) == {t: set() for t in TYPES}


def test_one_failing_row_does_not_stop_the_others_but_fails_the_run(night, dests):
    bad = row(name="broken", where="visit.no_such_field = 1")
    good = row(name="calexps", dataset_types=["calexp"])
    pol = policy(night, dests[:1], bad, good)
    out = prompt.run(ctx_at(pol, release(night, 3) + timedelta(minutes=1)), day_obs=night.day_obs)
    assert not out["ok"]
    broken, calexps = out["rows"]
    assert not broken["ok"] and broken["problems"][0]["state"] == prompt.ERROR
    assert calexps["ok"] and calexps["transferred"] == 8
    assert held(night, dests[0]) == {"calexp": visits(night, range(4)), "sourceTable_visit": set()}
    assert any("broken: error" in line for line in prompt.verdict_lines(out))


def test_resolve_excludes_raws_calibrations_and_avoided_types(night):
    from lsst.daf.butler import Butler

    src = Butler.from_config(str(night.source_repo))
    everything = row(collections=["LSSTCam/*"], avoid_collections=[])  # raw/all, raw/guider and the prompt runs
    types, collections, _ = prompt.resolve(src, everything)
    assert "LSSTCam/raw/all" in collections and [t.name for t in types] == list(TYPES)  # never raw, guider_raw
    avoiding = row(avoid_collections=["/LSSTCam/prompt/output-2/"])  # both types occur there
    assert prompt.resolve(src, avoiding)[0] == []
    regex = row(dataset_types=["/source.*/"], collections=["/LSSTCam/prompt/output-[12]/"])
    assert [t.name for t in prompt.resolve(src, regex)[0]] == ["sourceTable_visit"]


@pytest.fixture
def own_night(tmp_path):
    """A night of its own, for tests that add to the source Butler."""
    n = build_night(tmp_path / "src", day_obs=unique_day_obs(), n_exposures=2, detectors=6)
    add_prompt_products(n, runs=("LSSTCam/prompt/output-1",), detectors=1)
    return n


def test_unknown_timespan_and_untimed_types_are_refused(own_night, dests):
    from lsst.daf.butler import Butler, DatasetType

    night = own_night
    src = Butler.from_config(str(night.source_repo), writeable=True)
    rec = src.query_dimension_records("visit", instrument=INSTRUMENT, explain=False)[0].toDict()
    rec.update(id=rec["id"] + 50, name="no-timespan", seq_num=99, timespan=None)
    src.registry.insertDimensionData("visit", rec)
    src.put({"x": 1}, "sourceTable_visit", instrument=INSTRUMENT, visit=rec["id"], run="LSSTCam/prompt/output-1")
    src.registry.registerDatasetType(DatasetType("dailySummary", ["instrument"], "StructuredDataDict",
                                                 universe=src.dimensions))
    src.put({"day": 1}, "dailySummary", instrument=INSTRUMENT, run="LSSTCam/prompt/output-1")
    pol = policy(night, dests[:1])
    out = prompt.run(ctx_at(pol, release(night, 1) + timedelta(minutes=1)), day_obs=night.day_obs)
    assert not out["ok"] and out["transferred"] == 4  # 2 visits x (calexp + sourceTable_visit)
    reasons = [p["reason"] for p in out["rows"][0]["problems"]]
    assert len(reasons) == 2
    assert any("dailySummary has no visit or exposure dimension" in r for r in reasons)
    assert any("no timespan end" in r and str(rec["id"]) in r for r in reasons)


def test_select_by_ingest_date(own_night, dests):
    night = own_night
    ingested = datetime.now(UTC)  # the products were just put
    by_ingest = row(name="by_ingest", dataset_types=["sourceTable_visit"], select_by="ingest_date",
                    embargo_hours=1)
    pol = policy(night, dests[:1], by_ingest)
    window = (ingested - timedelta(hours=1), ingested + timedelta(hours=2))  # holds ingest + 1 h
    early = prompt.run(ctx_at(pol, ingested + timedelta(minutes=30)), window=window)
    assert not early["ok"] and early["transferred"] == 0 and early["problem_count"] == 2
    assert {p["state"] for p in early["rows"][0]["problems"]} == {prompt.HELD}
    due = prompt.run(ctx_at(pol, ingested + timedelta(hours=1, minutes=5)), window=window)
    assert due["ok"] and due["transferred"] == 2, due
    outside = prompt.run(ctx_at(pol, ingested + timedelta(hours=5)),
                         window=(ingested + timedelta(hours=2), ingested + timedelta(hours=3)))
    assert outside["ok"] and outside["selected"] == 0


# ---------------------------------------------------------------------------------------------------- plan
def _pol():
    from facility_data.rubin.prompt_policy import load_prompt_policy

    return load_prompt_policy()


_WINDOW = (datetime(2026, 11, 2, 10, 0, tzinfo=UTC), datetime(2026, 11, 2, 10, 15, tzinfo=UTC))


def test_plan_window_and_manual_units():
    units = prompt.plan({"dry_run": False}, {}, run_type="scheduled", data_interval=_WINDOW, policy=_pol())
    assert units == [{"row": "lsstcam_prompt", "window": [w.isoformat() for w in _WINDOW], "day_obs": None,
                      "dry_run": False}]
    manual = prompt.plan({"day_obs": "20261101", "rows": ["lsstcam_prompt"], "dry_run": True}, {},
                         run_type="manual", data_interval=None, policy=_pol())
    assert manual == [{"row": "lsstcam_prompt", "window": None, "day_obs": 20261101, "dry_run": True}]
    # an integer (a JSON conf {"day_obs": 20261101}) is the same night, as for the raw DAG
    assert prompt.plan({"day_obs": 20261101, "rows": ["lsstcam_prompt"], "dry_run": True}, {}, run_type="manual",
                       data_interval=None, policy=_pol()) == manual


@pytest.mark.parametrize("params, conf, run_type, interval, message", [
    ({"day_obs": "20261101"}, {}, "scheduled", _WINDOW, "Params day_obs are for manual runs only"),
    ({"rows": ["lsstcam_prompt"]}, {}, "backfill", _WINDOW, "Params rows are for manual runs only"),
    ({"day_obs": "20261340"}, {}, "manual", None, "calendar date"),
    ({"day_obs": "２０２６１１０１"}, {}, "manual", None, "must be YYYYMMDD"),
    ({"day_obs": "20261101\n"}, {}, "manual", None, "must be YYYYMMDD"),
    ({"day_obs": True}, {}, "manual", None, "must be YYYYMMDD"),
    ({"rows": ["nope"]}, {}, "manual", _WINDOW, "unknown row(s) ['nope']"),
    ({}, {}, "manual", None, "must name a day_obs"),
    ({"day_obs": "20261101"}, {"dryrun": True}, "manual", None, "unknown conf key(s) ['dryrun']"),
    ({"day_obs": "20261101", "dry_run": "yes"}, {}, "manual", None, "dry_run: must be true or false"),
])
def test_plan_refuses_bad_requests(params, conf, run_type, interval, message):
    with pytest.raises(BadRequest) as err:
        prompt.plan(params, conf, run_type=run_type, data_interval=interval, policy=_pol())
    assert message in str(err.value)
