"""Where rubin_unembargo_raw's catchup begins is configuration, validated like the rest."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from facility_data.config import ConfigError
from facility_data.rubin.policy import DEFAULT_SCHEDULE_START, schedule_start


def test_default_and_override(monkeypatch):
    monkeypatch.delenv("FACILITY_RUBIN_START", raising=False)
    assert schedule_start() == datetime.fromisoformat(DEFAULT_SCHEDULE_START)
    monkeypatch.setenv("FACILITY_RUBIN_START", "2026-11-21T08:15:00+00:00")
    assert schedule_start() == datetime(2026, 11, 21, 8, 15, tzinfo=UTC)


@pytest.mark.parametrize("value, why", [("yesterday", "not an ISO 8601"), ("2026-11-21T08:15:00", "UTC offset")])
def test_bad_values_are_clear(monkeypatch, value, why):
    monkeypatch.setenv("FACILITY_RUBIN_START", value)
    with pytest.raises(ConfigError, match=why):
        schedule_start()


def test_the_dag_uses_it(monkeypatch):
    monkeypatch.setenv("FACILITY_RUBIN_START", "2026-11-20T00:00:00+00:00")
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "dags" / "rubin_unembargo_raw.py"
    spec = importlib.util.spec_from_file_location("rubin_dag_start_check", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.dag.start_date == datetime(2026, 11, 20, tzinfo=UTC)
