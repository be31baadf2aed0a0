"""The prompt-products policy (include/prompt_policy.yaml): shipped file loads, closed schema, clear errors."""

from __future__ import annotations

import pytest
import yaml

from facility_data.config import ConfigError, include_dir
from facility_data.rubin.prompt_policy import load_prompt_policy, match_any, matches


def test_shipped_prompt_policy_loads():
    policy = load_prompt_policy()
    assert [r.name for r in policy.rows] == ["lsstcam_prompt"]
    row = policy.rows[0]
    assert row.select_by == "timespan" and row.embargo_hours == 80
    assert "LSSTCam/raw/all" in row.avoid_collections
    assert policy.verify == "checksum"


def _shipped() -> dict:
    return yaml.safe_load((include_dir() / "prompt_policy.yaml").read_text())


def _row(d):
    return d["rows"][0]


@pytest.mark.parametrize("mutate, key, words", [
    (lambda d: _row(d).update(embargo_hrs=3), "rows.0.embargo_hrs", "Extra inputs are not permitted"),
    (lambda d: d.update(destination="x"), "destination", "Extra inputs are not permitted"),
    (lambda d: _row(d).update(embargo_hours=-1), "rows.0.embargo_hours", "greater than or equal to 0"),
    (lambda d: _row(d).update(embargo_hours=float("nan")), "rows.0.embargo_hours", "finite"),
    (lambda d: _row(d).update(dataset_types=[]), "rows.0.dataset_types", "at least 1"),
    (lambda d: _row(d).update(dataset_types=[""]), "rows.0.dataset_types", "empty pattern"),
    (lambda d: _row(d).update(collections=[]), "rows.0.collections", "at least 1"),
    (lambda d: _row(d).update(collections=["/[unclosed/"]), "rows.0.collections", "not a valid regular"),
    (lambda d: _row(d).update(select_by="mtime"), "rows.0.select_by", "timespan"),
    (lambda d: _row(d).update(name="has space"), "rows.0.name", "plain name"),
    (lambda d: d["rows"].append(dict(_row(d))), "<root>", "row names must be unique"),
    (lambda d: d.update(rows=[]), "rows", "at least 1"),
    (lambda d: d.update(destinations=[d["source"]]), "<root>", "differ from the source"),
    (lambda d: d.update(verify="mtime"), "verify", "checksum"),
])
def test_bad_prompt_policy_names_file_and_key(tmp_path, mutate, key, words):
    data = _shipped()
    mutate(data)
    path = tmp_path / "prompt.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError) as err:
        load_prompt_policy(path)
    assert str(path) in str(err.value) and f"key {key}:" in str(err.value) and words in str(err.value)


def test_patterns_glob_regex_and_exact():
    names = ["calexp", "calexpBackground", "src", "sourceTable_visit", "raw"]
    assert match_any(["calexp"], names) == ["calexp"]  # a plain name is exact, not a prefix
    assert match_any(["calexp*"], names) == ["calexp", "calexpBackground"]
    assert match_any(["/s(rc|ource.*)/"], names) == ["sourceTable_visit", "src"]
    assert not matches("/calexp/", "calexpBackground")  # a regex matches the whole name
