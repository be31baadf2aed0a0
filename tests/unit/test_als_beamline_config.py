"""Beamline configuration: the shipped files validate, bad files fail naming file and key, run-time overrides."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from facility_data.als.beamline import Beamline, check_endpoints, load_beamline, load_beamlines
from facility_data.config import ConfigError
from facility_data.transfer import load_endpoints


@pytest.fixture
def endpoints(monkeypatch, tmp_path):
    monkeypatch.setenv("FACILITY_SITE", str(tmp_path))
    return load_endpoints()


def test_shipped_beamlines_validate_and_use_configured_endpoints(endpoints):
    beamlines = {b.id: b for b in load_beamlines()}
    assert set(beamlines) == {"bl832", "bl7012", "bl733"}
    for bl in beamlines.values():
        check_endpoints(bl, endpoints)
    bl832 = beamlines["bl832"]
    assert bl832.recon_targets == ["local", "nersc", "alcf"]
    assert bl832.decision_settings.enabled() == ["local"]
    assert bl832.source_role == "spot"
    assert bl832.location("spot").retention_days == 1 and bl832.location("spot").check == ["data"]
    assert bl832.location("data").retention_days == 35 and bl832.location("data").check == ["nersc"]
    assert bl832.location("nersc").retention_days is None
    for data_mover in ("bl7012", "bl733"):
        assert beamlines[data_mover].recon_targets == []
        assert beamlines[data_mover].source_role == "data"
        assert beamlines[data_mover].location("data").check == ["nersc"]


def test_unknown_endpoint_is_a_clear_error(endpoints):
    bl = load_beamline("bl832")
    del endpoints["alcf832_raw"]
    with pytest.raises(ConfigError, match="location alcf uses endpoint 'alcf832_raw'"):
        check_endpoints(bl, endpoints)


def _write(tmp_path: Path, data: dict, name: str = "bl999") -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


BASE = {"id": "bl999", "beamline": "9.9.9",
        "locations": {"data": {"endpoint": "d", "kind": "raw", "retention_days": 3, "check": ["nersc"]},
                      "nersc": {"endpoint": "n", "kind": "raw"}}}


def test_minimal_file_loads(tmp_path):
    bl = load_beamline(_write(tmp_path, BASE))
    assert bl.decision_settings.enabled() == []
    assert bl.decision_variable == "bl999_decision_settings"


@pytest.mark.parametrize(
    ("patch", "message"),
    [
        ({"locations": {"data": {"endpoint": "d", "kind": "raw", "retention_days": 3, "check": ["data"]}}},
         "lists itself"),
        ({"locations": {"data": {"endpoint": "d", "kind": "raw", "retention_days": 3, "check": ["elsewhere"]}}},
         "not a location"),
        ({"locations": {"data": {"endpoint": "d", "kind": "raw", "retention_days": 3}}}, "no check location"),
        ({"locations": {"nersc": {"endpoint": "n", "kind": "raw"}}}, "location 'data' is required"),
        ({"locations": {**BASE["locations"], "tape": {"endpoint": "t", "kind": "raw"}}}, "unknown location role"),
        ({"locations": {**BASE["locations"], "data": {"endpoint": "d", "kind": "raw", "retention_days": -1,
                                                       "check": ["nersc"]}}}, "locations.data.retention_days"),
        ({"decision_settings": {"nersc": True}}, "enables 'nersc' but recon.targets"),
        ({"decision_settings": {"nersc": "perhaps"}}, "decision_settings.nersc"),
        ({"recon": {"targets": ["local"]}}, "needs location"),
        ({"id": "BL 999"}, "key id"),
        ({"paths": {"raw_dir": "a/b"}}, "paths.raw_dir"),
        ({"paths": {"file_pattern": "("}}, "not a valid regular expression"),
        ({"paths": {"folder_pattern": ".*"}}, "must not match '..'"),
        ({"paths": {"folder_pattern": "[a-z/]+"}}, "must not match 'a/b'"),
        ({"paths": {"file_pattern": r"(?P<ts>\d+)\.h5"}}, "named groups"),
        ({"surprise": 1}, "key surprise"),
    ],
)
def test_bad_files_fail_naming_file_and_key(tmp_path, patch, message):
    path = _write(tmp_path, {**BASE, **patch})
    with pytest.raises(ConfigError, match=message) as err:
        load_beamline(path)
    assert str(path) in str(err.value)


def test_file_name_must_match_id(tmp_path):
    with pytest.raises(ConfigError, match="file name must match"):
        load_beamline(_write(tmp_path, BASE, name="other"))


def test_decision_settings_override_at_run_time():
    bl = load_beamline("bl832")
    assert bl.effective_decisions(None).enabled() == ["local"]
    assert bl.effective_decisions('{"nersc": true}').enabled() == ["local", "nersc"]
    assert bl.effective_decisions({"local": False, "alcf": True}).enabled() == ["alcf"]
    for bad, msg in [("{not json", "not valid JSON"), ("[1]", "expected a JSON object"),
                     ('{"nersc": "yes please"}', "bl832_decision_settings"), ('{"olcf": true}', "bl832_decision_settings")]:
        with pytest.raises(ConfigError, match=msg):
            bl.effective_decisions(bad)


def test_data_movement_beamline_cannot_enable_recon_at_run_time():
    bl = load_beamline("bl733")
    with pytest.raises(ConfigError, match="cannot run"):
        bl.effective_decisions('{"local": true}')


def test_location_paths():
    bl = Beamline.model_validate({**BASE, "locations": {
        "data": {"endpoint": "d", "subdir": "/raw/", "kind": "raw", "retention_days": 3, "check": ["nersc"]},
        "nersc": {"endpoint": "n", "kind": "raw"}}})
    assert bl.location("data").path_of("P-1_u/x.h5") == "raw/P-1_u/x.h5"
    assert bl.location("nersc").path_of("P-1_u/x.h5") == "P-1_u/x.h5"
    with pytest.raises(ConfigError, match="no location 'alcf'"):
        bl.location("alcf")
