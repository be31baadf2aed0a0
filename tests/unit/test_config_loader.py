from __future__ import annotations

import pytest
from pydantic import BaseModel

from facility_data.config import ConfigError, expand_env, load_model


class Inner(BaseModel):
    root: str
    days: int


class Doc(BaseModel):
    name: str
    inner: Inner


def test_expands_environment_variables_and_defaults(monkeypatch):
    monkeypatch.setenv("SITE_X", "/data/site")
    monkeypatch.delenv("UNSET_X", raising=False)
    assert expand_env({"a": ["${SITE_X}/raw", "${UNSET_X:-fallback}"], "n": 3}) == {
        "a": ["/data/site/raw", "fallback"], "n": 3}


def test_unset_variable_names_the_file_and_variable(monkeypatch):
    monkeypatch.delenv("UNSET_X", raising=False)
    with pytest.raises(ConfigError, match=r"cfg\.yaml: environment variable UNSET_X is not set"):
        expand_env({"a": "${UNSET_X}"}, source="cfg.yaml")


def test_validation_error_names_file_key_and_expectation(tmp_path):
    path = tmp_path / "bl.yaml"
    path.write_text("name: bl832\ninner:\n  root: /x\n  days: soon\n")
    with pytest.raises(ConfigError) as err:
        load_model(path, Doc)
    msg = str(err.value)
    assert str(path) in msg and "inner.days" in msg and "integer" in msg and "'soon'" in msg


def test_missing_file_and_bad_yaml_are_clear(tmp_path):
    with pytest.raises(ConfigError, match="configuration file not found"):
        load_model(tmp_path / "nope.yaml", Doc)
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_model(bad, Doc)


def test_valid_file_loads(tmp_path, monkeypatch):
    monkeypatch.setenv("ROOT_X", "/r")
    path = tmp_path / "ok.yaml"
    path.write_text("name: bl832\ninner: {root: '${ROOT_X}/raw', days: 3}\n")
    assert load_model(path, Doc) == Doc(name="bl832", inner=Inner(root="/r/raw", days=3))


def test_temporary_env_restores_exactly_what_was_there(monkeypatch):
    from facility_data.config import temporary_env

    monkeypatch.setenv("KEEP_X", "old")
    monkeypatch.delenv("NEW_X", raising=False)
    with temporary_env({"KEEP_X": "new", "NEW_X": "1"}):
        import os

        assert os.environ["KEEP_X"] == "new" and os.environ["NEW_X"] == "1"
    import os

    assert os.environ["KEEP_X"] == "old" and "NEW_X" not in os.environ


def test_tests_never_use_the_users_site():
    """The harness points FACILITY_SITE at the test session's own directory, whatever `make` exported."""
    import os
    import tempfile

    assert os.environ["FACILITY_SITE"].startswith(tempfile.gettempdir())
    assert "facility-test-" in os.environ["FACILITY_SITE"]
