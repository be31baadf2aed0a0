"""The ALS path contract: watcher path -> relative raw path, output names, and validation of manual confs."""

from __future__ import annotations

import pytest

from facility_data.als.paths import PathRules, ScanPathError, parse_scan_path, scan_from_key, validate_scan

RULES = PathRules()
WATCHED = "/global/raw/BLS-00564_dyparkinson/20230224_132553_sea_shell.h5"


def test_watcher_path_maps_to_relative_raw_path_and_output_names():
    scan = parse_scan_path(WATCHED, RULES)
    assert scan.relative == "raw/BLS-00564_dyparkinson/20230224_132553_sea_shell.h5"
    assert scan.folder == "BLS-00564_dyparkinson"
    assert scan.stem == "20230224_132553_sea_shell"
    assert scan.key == "BLS-00564_dyparkinson/20230224_132553_sea_shell.h5"
    assert scan.tiff_dir == "BLS-00564_dyparkinson/rec20230224_132553_sea_shell"
    assert scan.zarr_dir == "BLS-00564_dyparkinson/rec20230224_132553_sea_shell.zarr"
    assert scan.watcher_path(RULES) == WATCHED


def test_relative_form_is_accepted_and_round_trips():
    scan = parse_scan_path("raw/BLS-00564_dyparkinson/20230224_132553_sea_shell.h5", RULES)
    assert scan == parse_scan_path(WATCHED, RULES)
    assert scan_from_key(scan.key, RULES) == scan


def test_custom_watcher_prefix():
    rules = PathRules(watcher_prefix="/mnt/bl832")
    assert parse_scan_path("/mnt/bl832/raw/ALS-1_u/20240101_000000_x.h5", rules).relative == "raw/ALS-1_u/20240101_000000_x.h5"
    with pytest.raises(ScanPathError, match="not under the beamline's raw root /mnt/bl832/raw"):
        parse_scan_path(WATCHED, rules)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("/etc/passwd", "not under the beamline's raw root"),
        ("/global/raw/../../etc/shadow.h5", "traversal"),
        ("/global/raw/BLS-00564_u/../x/20230224_132553_a.h5", "traversal"),
        ("raw/./BLS-00564_u/20230224_132553_a.h5", "traversal"),
        ("/global/raw/BLS-00564_u/20230224_132553_a.tiff", "not an .h5 file"),
        ("/global/raw/20230224_132553_a.h5", "one folder level"),
        ("/global/raw/a/b/20230224_132553_a.h5", "one folder level"),
        ("/global/raw/not a proposal/20230224_132553_a.h5", "proposal folder rule"),
        ("/global/raw/BLS-00564_u/sea_shell.h5", "scan rule"),
        ("scans/BLS-00564_u/20230224_132553_a.h5", "neither under the raw root"),
        ("", "empty"),
        ("/global/raw/BLS-00564_u/20230224_132553_a\\b.h5", "backslash"),
        (42, "must be a string, got int"),
        (None, "must be a string, got NoneType"),
        (["/global/raw/BLS-00564_u/20230224_132553_a.h5"], "must be a string, got list"),
    ],
)
def test_bad_paths_get_a_clear_error(value, message):
    with pytest.raises(ScanPathError, match=message):
        parse_scan_path(value, RULES)


def test_validate_checks_existence_at_the_source():
    seen = []

    def exists(rel):
        seen.append(rel)
        return False

    with pytest.raises(ScanPathError, match="does not exist at the acquisition endpoint"):
        validate_scan(WATCHED, RULES, exists=exists)
    assert seen == ["raw/BLS-00564_dyparkinson/20230224_132553_sea_shell.h5"]
    assert validate_scan(WATCHED, RULES, exists=lambda rel: True).stem == "20230224_132553_sea_shell"


def test_existence_is_not_checked_when_the_path_is_invalid():
    called = []
    with pytest.raises(ScanPathError):
        validate_scan("/global/raw/../x.h5", RULES, exists=lambda rel: called.append(rel) or True)
    assert called == []
