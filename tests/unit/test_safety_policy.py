"""The single data-safety policy: export control and delete-only-with-a-verified-twin."""

from __future__ import annotations

import pytest

from facility_data.safety import Copy, SafetyError, may_delete, may_leave_site


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
