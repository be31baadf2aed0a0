"""The single data-safety policy: export control and delete-only-with-a-verified-twin."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from facility_data.safety import (
    Copy,
    ExportEvidence,
    SafetyError,
    export_status,
    may_delete,
    may_leave_site,
    may_scan_leave_site,
)


def test_export_controlled_data_never_leaves_its_site():
    d = may_leave_site(export_controlled=True, from_site="als", to_site="alcf")
    assert not d.allowed and "export-controlled" in d.reason
    with pytest.raises(SafetyError):
        d.require()


def test_export_controlled_data_may_move_within_its_site():
    assert may_leave_site(export_controlled=True, from_site="als", to_site="als").allowed


def test_open_data_may_leave():
    assert may_leave_site(export_controlled=False, from_site="als", to_site="nersc").allowed


TARGET = Copy("spot832", "raw/p/a.h5", 100, "sha256:aa")


def test_delete_allowed_only_with_verified_twin():
    twin = Copy("data832", "raw/p/a.h5", 100, "sha256:aa")
    assert may_delete(TARGET, [twin], required_locations=["data832"]).allowed


@pytest.mark.parametrize("twin, why", [
    (None, "no copy"),
    (Copy("data832", "raw/p/a.h5", 99, "sha256:aa"), "size differs"),
    (Copy("data832", "raw/p/a.h5", 100, "sha256:bb"), "checksum differs"),
    (Copy("data832", "raw/p/a.h5", 100, "md5:aa"), "not comparable"),
    (Copy("data832", "raw/p/a.h5", 100, None), "unknown"),
    (Copy("nersc832", "raw/p/a.h5", 100, "sha256:aa"), "no copy"),
])
def test_delete_refused_without_verified_twin(twin, why):
    d = may_delete(TARGET, [twin], required_locations=["data832"])
    assert not d.allowed and why in d.reason and "keeping" in d.reason


def test_every_required_location_must_hold_a_twin():
    twin = Copy("data832", "raw/p/a.h5", 100, "sha256:aa")
    d = may_delete(TARGET, [twin], required_locations=["data832", "nersc832"])
    assert not d.allowed and "nersc832" in d.reason


def test_own_location_or_no_location_never_counts():
    same = Copy("spot832", "raw/p/a.h5", 100, "sha256:aa")
    assert not may_delete(TARGET, [same], required_locations=["spot832"]).allowed
    assert not may_delete(TARGET, [same], required_locations=[]).allowed


def test_target_with_unknown_checksum_is_kept():
    target = Copy("spot832", "raw/p/a.h5", 100, None)
    twin = Copy("data832", "raw/p/a.h5", 100, "sha256:aa")
    assert not may_delete(target, [twin], required_locations=["data832"]).allowed


# ---- export control of one scan: known by name or by content, else it stays --------------------------------


def _leave(**evidence):
    return may_scan_leave_site(ExportEvidence(**evidence), from_site="als", to_site="nersc", what="raw/P-1_u/s.h5")


def test_scan_leaves_only_when_known_and_fingerprinted_and_free():
    assert _leave(declared=False, fingerprinted=True).allowed
    assert _leave(recorded=False, fingerprinted=True).allowed
    assert _leave(declared=False, recorded=False, same_content={"bl832:raw/P-1_u/s.h5": False},
                  fingerprinted=True).allowed


@pytest.mark.parametrize(("evidence", "why"), [
    ({}, "neither recorded by the new-file DAG nor declared"),
    ({"fingerprinted": True}, "neither recorded"),
    ({"declared": False}, "fingerprint"),
    ({"recorded": False}, "fingerprint"),
    ({"declared": True, "fingerprinted": True}, "export-controlled"),
    ({"recorded": True, "declared": False, "fingerprinted": True}, "recorded"),
    ({"declared": False, "same_content": {"bl832:raw/P-2_u/orig.h5": True}, "fingerprinted": True},
     "same content as export-controlled bl832:raw/P-2_u/orig.h5"),
    ({"declared": False, "same_content": {"a": False, "b": True}, "fingerprinted": True}, "same content"),
])
def test_scan_that_is_controlled_unknown_or_ambiguous_stays(evidence, why):
    d = _leave(**evidence)
    assert not d.allowed and why in d.reason and "may not leave als" in d.reason
    with pytest.raises(SafetyError):
        d.require()


def test_status_unknown_is_none_and_never_false():
    assert export_status(ExportEvidence())[0] is None
    assert export_status(ExportEvidence(declared=False))[0] is None
    assert export_status(ExportEvidence(declared=True))[0] is True


def test_every_scan_may_stay_on_site():
    assert may_scan_leave_site(ExportEvidence(), from_site="als", to_site="als", what="x").allowed
    assert may_leave_site(export_controlled=None, from_site="als", to_site="als").allowed
    assert not may_leave_site(export_controlled=None, from_site="als", to_site="alcf").allowed


@settings(max_examples=200, deadline=None)
@given(declared=st.sampled_from([None, True, False]), recorded=st.sampled_from([None, True, False]),
       twins=st.dictionaries(st.text(max_size=5), st.booleans(), max_size=3), fingerprinted=st.booleans())
def test_property_leaving_needs_known_free_status(declared, recorded, twins, fingerprinted):
    d = _leave(declared=declared, recorded=recorded, same_content=twins, fingerprinted=fingerprinted)
    free = (declared is not True and recorded is not True and not any(twins.values())
            and (declared is not None or recorded is not None) and fingerprinted)
    assert d.allowed is free
