"""The archival part of the policy (rucio.archive): validated at load, off when omitted, on in the shipped policy."""

from __future__ import annotations

import pytest
import yaml

from facility_data.config import ConfigError, include_dir
from facility_data.rubin.policy import ArchiveRule, RucioTarget, load_policy


def test_shipped_policy_archives_to_frdf():
    archive = load_policy(include_dir() / "embargo_policy.yaml").rucio.archive
    assert archive == ArchiveRule(rse_expression="FRDF_RAW_DISK", copies=1)


def test_archive_is_off_when_omitted():
    assert RucioTarget(rse="SLAC_RAW_DISK", scope="raw").archive is None


@pytest.mark.parametrize("archive, field", [
    ({"rse_expression": ""}, "rse_expression"),
    ({"rse_expression": "FRDF RAW"}, "rse_expression"),
    ({"rse_expression": "FRDF_RAW_DISK\n"}, "rse_expression"),
    ({"rse_expression": "FRDF_RAW_DISK", "copies": 0}, "copies"),
    ({"rse_expression": "FRDF_RAW_DISK", "copies": "two"}, "copies"),
    ({"rse_expression": "FRDF_RAW_DISK", "lifetime": 3600}, "lifetime"),
    ({"copies": 1}, "rse_expression"),
])
def test_bad_archive_is_refused_naming_the_field(tmp_path, archive, field):
    doc = yaml.safe_load((include_dir() / "embargo_policy.yaml").read_text())
    doc["rucio"]["archive"] = archive
    path = tmp_path / "policy.yaml"
    path.write_text(yaml.safe_dump(doc))
    with pytest.raises(ConfigError, match=rf"rucio\.archive\.{field}"):
        load_policy(path)
