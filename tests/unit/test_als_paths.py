"""The ALS path contract: watcher path -> relative raw path, output names, and validation of manual confs."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from facility_data.als.paths import (
    HDF5_SIGNATURE,
    PathRules,
    ScanPathError,
    check_scan_file,
    form_pattern,
    parse_scan_path,
    scan_from_key,
    validate_scan,
)

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


# ---- full-string, ASCII-only rules; the form pattern; what a scan file really is ------------------------------
@pytest.mark.parametrize(("value", "message"), [
    ("/global/raw/BLS-00564_u/20230224_132553_a.h5\n", "trailing whitespace"),
    (" /global/raw/BLS-00564_u/20230224_132553_a.h5", "leading or trailing whitespace"),
    ("/global/raw/BLS-00564_u\n/20230224_132553_a.h5", "non-ASCII or control"),
    ("/global/raw/BLS-٠٠٥٦٤_u/20230224_132553_a.h5", "non-ASCII"),  # Arabic-Indic digits
    ("/global/raw/BLS-00564_u/２０２３0224_132553_a.h5", "non-ASCII"),  # full-width digits
])
def test_newlines_and_non_ascii_digits_are_refused(value, message):
    with pytest.raises(ScanPathError, match=message):
        parse_scan_path(value, RULES)


@pytest.mark.parametrize(("folder", "ok"), [("BLS-00564_u", True), ("BLS-00564_u\n", False),
                                             ("BLS-٠٠٥٦٤_u", False), ("xBLS-00564_u!", False)])
def test_rules_match_the_whole_name_in_ascii(folder, ok):
    assert RULES.folder_ok(folder) is ok


def test_form_pattern_follows_the_configured_rules():
    pattern = form_pattern(RULES)
    assert re.search(pattern, WATCHED) and re.search(pattern, WATCHED.removeprefix("/global/"))
    for bad in ("../../etc/passwd", WATCHED + "\n", "/etc/passwd.h5", WATCHED.replace("00564", "٠٠٥٦٤"),
                "/global/raw/BLS-00564_dyparkinson/x/20230224_132553_sea_shell.h5"):
        assert not re.search(pattern, bad), bad
    custom = PathRules(watcher_prefix="/mnt/bl", folder_pattern=r"^P\d{3}$", file_pattern=r"^scan_\d+\.h5$")
    assert re.search(form_pattern(custom), "/mnt/bl/raw/P123/scan_7.h5")
    assert not re.search(form_pattern(custom), WATCHED)


_names = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=12) | st.sampled_from(
    ["BLS-00564_u", "20230224_132553_a.h5", "..", ".", "", "a.h5\n", "BLS-1_u\n", "BLS-١_u", "x/../y"])


@settings(max_examples=200, deadline=None)
@given(prefix=st.sampled_from(["/global/raw/", "raw/", "/global/", "/", ""]), folder=_names, name=_names)
def test_property_form_pattern_never_admits_what_the_rules_refuse(prefix, folder, name):
    value = f"{prefix}{folder}/{name}"
    try:
        parse_scan_path(value, RULES)
        parsed = True
    except ScanPathError:
        parsed = False
    if re.search(form_pattern(RULES), value):
        assert parsed, value  # the form is never looser than the domain check


def test_check_scan_file_says_what_a_path_is(tmp_path):
    good = tmp_path / "good.h5"
    good.write_bytes(HDF5_SIGNATURE + b"\0" * 8)
    assert check_scan_file(good, what="scan") == 16
    user_block = tmp_path / "ub.h5"
    user_block.write_bytes(b"\0" * 512 + HDF5_SIGNATURE)
    assert check_scan_file(user_block, what="scan") == 520
    fake = tmp_path / "fake.h5"
    fake.write_bytes(b"GIF89a not hdf5")
    (tmp_path / "dir.h5").mkdir()
    os.mkfifo(tmp_path / "fifo.h5")
    (tmp_path / "link.h5").symlink_to(good)
    (tmp_path / "empty.h5").write_bytes(b"")
    for name, message in [("fake.h5", "not an HDF5 file \\(no HDF5 signature"), ("dir.h5", "is a directory"),
                          ("fifo.h5", "is a FIFO"), ("link.h5", "is a symbolic link"), ("missing.h5", "does not exist"),
                          ("empty.h5", "not an HDF5 file")]:
        with pytest.raises(ScanPathError, match=message):
            check_scan_file(tmp_path / name, what="scan")
    with pytest.raises(ScanPathError, match="is a character device"):
        check_scan_file(Path("/dev/null"), what="scan")
