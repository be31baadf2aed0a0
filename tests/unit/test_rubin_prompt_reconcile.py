"""The reconcile's prompt-products check (rubin.prompt_reconcile) against real SQLite Butler repos: a synthetic
night with prompt products (4 visits x (2 calexp + 1 sourceTable_visit) = 12 datasets), fresh destinations."""

from __future__ import annotations

import warnings
from datetime import timedelta
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
from facility_data.rubin import prompt_reconcile
from facility_data.rubin.policy import ButlerRef
from facility_data.rubin.prompt_policy import PromptPolicy, PromptRow

warnings.filterwarnings("ignore", module="erfa")
EMBARGO_H = 80


@pytest.fixture(scope="module")
def night(tmp_path_factory):
    n = build_night(tmp_path_factory.mktemp("promptrec"), day_obs=unique_day_obs(), n_exposures=4, detectors=6)
    add_prompt_products(n, detectors=2)
    return n


@pytest.fixture
def dests(tmp_path):
    out = [tmp_path / name for name in ("main", "main2")]
    for path in out:
        ensure_repo(path, detector_layout(6))
    return out


def policy(night, dests, instrument=INSTRUMENT) -> PromptPolicy:
    row = PromptRow(name="prompt", instrument=instrument, dataset_types=["*"], collections=["LSSTCam/prompt/*"],
                    embargo_hours=EMBARGO_H, avoid_collections=["LSSTCam/raw/all"])
    return PromptPolicy(rows=[row], source=ButlerRef(uri=str(night.source_repo)),
                        destinations=[ButlerRef(uri=str(d)) for d in dests])


def released(night):
    return max(night.ends.values()) + timedelta(hours=EMBARGO_H, minutes=1)


def check(night, pol, *, repair, dry_run=False, now=None, nights=None):
    return prompt_reconcile.check(pol, INSTRUMENT, nights or [night.day_obs], repair=repair, dry_run=dry_run,
                                  now=now or released(night))


def n_calexps(dest) -> int:
    from lsst.daf.butler import Butler, MissingDatasetTypeError

    try:
        return len(Butler.from_config(str(dest)).query_datasets("calexp", "LSSTCam/prompt/*", find_first=False,
                                                                explain=False))
    except MissingDatasetTypeError:
        return 0


def test_untransferred_products_are_missing_and_fail_without_repair(night, dests):
    out = check(night, policy(night, dests), repair=False)
    counts = out["nights"][str(night.day_obs)]["rows"]["prompt"]
    assert counts == {"present": 0, "missing": 24, "held": 0, "inconsistent": 0, "refused": 0, "error": 0}
    [line] = prompt_reconcile.verdict_lines(out)
    assert f"prompt {night.day_obs} row prompt: missing 24" == line
    assert all(n_calexps(d) == 0 for d in dests)  # checking writes nothing


def test_repair_transfers_that_night_and_the_rerun_is_green(night, dests):
    pol = policy(night, dests)
    out = check(night, pol, repair=True)
    n = out["nights"][str(night.day_obs)]
    assert n["found"]["prompt"]["missing"] == 24 and n["repaired"] == {"prompt": 24}
    assert n["rows"]["prompt"]["present"] == 24 and n["rows"]["prompt"]["missing"] == 0
    assert prompt_reconcile.verdict_lines(out) == []
    assert all(n_calexps(d) == 8 for d in dests)
    again = check(night, pol, repair=False)
    assert again["nights"][str(night.day_obs)]["rows"]["prompt"]["present"] == 24
    assert prompt_reconcile.verdict_lines(again) == [] and again["nights"][str(night.day_obs)]["repaired"] == {}


def test_repair_only_touches_the_nights_checked(night, dests):
    other = int(str(night.day_obs)[:4] + "0101") if str(night.day_obs)[4:] != "0101" else night.day_obs - 1
    out = check(night, policy(night, dests), repair=True, nights=[other])
    assert out["nights"][str(other)]["rows"]["prompt"] == dict.fromkeys(prompt_reconcile.COUNTS, 0)
    assert prompt_reconcile.verdict_lines(out) == [] and all(n_calexps(d) == 0 for d in dests)


def test_dry_run_reports_missing_and_repairs_nothing(night, dests):
    out = check(night, policy(night, dests), repair=True, dry_run=True)
    assert out["nights"][str(night.day_obs)]["repaired"] == {}
    assert prompt_reconcile.verdict_lines(out) and all(n_calexps(d) == 0 for d in dests)


def test_a_changed_destination_dataset_is_inconsistent_and_not_overwritten(night, dests):
    from lsst.daf.butler import Butler

    pol = policy(night, dests[:1])
    assert prompt_reconcile.verdict_lines(check(night, pol, repair=True)) == []
    ref = Butler.from_config(str(night.source_repo)).query_datasets("calexp", "LSSTCam/prompt/output-1",
                                                                     explain=False)[0]
    path = Path(Butler.from_config(str(dests[0])).getURI(ref).ospath)
    altered = path.read_text().replace("calexp", "CALEXP")  # same size: only the checksum sees it
    path.write_text(altered)
    out = check(night, pol, repair=True)
    n = out["nights"][str(night.day_obs)]
    assert n["rows"]["prompt"]["inconsistent"] == 1 and n["rows"]["prompt"]["present"] == 11
    assert n["repaired"] == {}  # nothing missing: no transfer attempted
    assert n["problems"][0]["state"] == "inconsistent" and str(ref.id) in n["problems"][0]["dataset"]
    assert any("inconsistent 1" in line for line in prompt_reconcile.verdict_lines(out))
    assert path.read_text() == altered


def test_products_still_embargoed_are_held_and_do_not_fail(night, dests):
    out = check(night, policy(night, dests), repair=True, now=min(night.ends.values()) + timedelta(hours=1))
    counts = out["nights"][str(night.day_obs)]["rows"]["prompt"]
    assert counts["held"] == 12 and counts["missing"] == 0  # held is per dataset, before any destination
    assert prompt_reconcile.verdict_lines(out) == [] and all(n_calexps(d) == 0 for d in dests)


def test_no_row_for_the_instrument_opens_no_butler(night, dests):
    def no_butler(*a, **k):
        raise AssertionError("no Butler may be opened")

    out = prompt_reconcile.check(policy(night, dests, instrument="LATISS"), INSTRUMENT, [night.day_obs],
                                 repair=True, dry_run=False, now=released(night), butler_factory=no_butler)
    assert out["rows"] == [] and out["nights"] == {} and "no prompt policy row" in out["note"]
    assert prompt_reconcile.verdict_lines(out) == []


def test_an_unreachable_source_is_an_error_that_fails(night, dests, tmp_path):
    pol = PromptPolicy(rows=policy(night, dests).rows, source=ButlerRef(uri=str(tmp_path / "nowhere")),
                       destinations=[ButlerRef(uri=str(d)) for d in dests])
    out = check(night, pol, repair=True)
    assert out["nights"][str(night.day_obs)]["rows"]["prompt"]["error"] == 1
    assert any("error 1" in line for line in prompt_reconcile.verdict_lines(out))
    assert prompt_reconcile.verdict_lines(None) and prompt_reconcile.verdict_lines({"error": "task died"})
