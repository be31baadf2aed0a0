"""Policy validation at load, bounded retries, the Rucio and Butler hooks' connection handling, run summaries."""

from __future__ import annotations

import json
import time
import warnings

import pytest
import yaml

from facility_data import retry
from facility_data.config import ConfigError
from facility_data.rubin.policy import load_policy, policy_path
from facility_data.rubin.runs import BadRequest, validate

warnings.filterwarnings("ignore", module="erfa")


def test_shipped_policy_loads(monkeypatch, tmp_path):
    monkeypatch.setenv("FACILITY_SITE", str(tmp_path))
    monkeypatch.delenv("FACILITY_RUBIN_POLICY", raising=False)
    policy = load_policy()
    assert policy_path().name == "embargo_policy.yaml"
    assert policy.instruments == ["LSSTCam"]
    assert [r.embargo_hours for r in policy.rows_for("LSSTCam")] == [0, 80]
    assert policy.destination_prefix == f"{tmp_path}/main"
    assert policy.collections("LSSTCam") == {"raw": "LSSTCam/raw/all", "guider_raw": "LSSTCam/raw/guider"}


def _shipped(tmp_path, monkeypatch) -> dict:
    monkeypatch.setenv("FACILITY_SITE", str(tmp_path))
    return yaml.safe_load(policy_path().read_text())


@pytest.mark.parametrize("mutate, key", [
    (lambda d: d.update(rows=[]), "rows"),
    (lambda d: d["rows"][0].update(embargo_hours=-1), "rows.0.embargo_hours"),
    (lambda d: d["rows"][0].update(instrument="../LSSTCam"), "rows.0.instrument"),
    (lambda d: d.update(storage={"kind": "s3", "root": "s3://bucket"}), "storage"),
    (lambda d: d.update(storage={"kind": "local", "root": "relative/dir"}), "storage"),
    (lambda d: d.update(destination_prefix="relative"), "destination_prefix"),
    (lambda d: d.update(destinations=[]), "destinations"),
    (lambda d: d.update(source={"conn_id": "a", "uri": "/b"}), "source"),
    (lambda d: d.update(unexpected=1), "unexpected"),
    (lambda d: d["rucio"].pop("rse"), "rucio.rse"),
])
def test_bad_policy_names_file_and_key(tmp_path, monkeypatch, mutate, key):
    doc = _shipped(tmp_path, monkeypatch)
    mutate(doc)
    path = tmp_path / "policy.yaml"
    path.write_text(yaml.safe_dump(doc))
    with pytest.raises(ConfigError) as err:
        load_policy(path)
    assert str(path) in str(err.value) and f"key {key}" in str(err.value)


def test_retry_is_bounded_and_only_for_transient_errors(monkeypatch):
    monkeypatch.setattr(retry, "BASE_DELAY", 0.001)
    calls = []

    def flaky():
        calls.append(1)
        raise ConnectionResetError("peer reset")

    with pytest.raises(ConnectionResetError):
        retry.call_with_retry(flaky, transient=retry.is_transient_s3, what="x")
    assert len(calls) == retry.ATTEMPTS
    calls.clear()

    def logical():
        calls.append(1)
        raise KeyError("no such key")

    with pytest.raises(KeyError):
        retry.call_with_retry(logical, transient=retry.is_transient_s3, what="x")
    assert len(calls) == 1
    outcomes = iter([TimeoutError(), TimeoutError(), "ok"])

    def twice():
        v = next(outcomes)
        if isinstance(v, Exception):
            raise v
        return v

    t = time.monotonic()
    assert retry.call_with_retry(twice, transient=retry.is_transient_s3, what="x") == "ok"
    assert time.monotonic() - t < 1


def test_s3_and_rucio_error_classification():
    from botocore.exceptions import ClientError, EndpointConnectionError
    from rucio.common.exception import DatabaseException, DataIdentifierNotFound, Duplicate

    def client_error(code, status):
        return ClientError({"Error": {"Code": code}, "ResponseMetadata": {"HTTPStatusCode": status}}, "GetObject")

    assert retry.is_transient_s3(client_error("SlowDown", 503))
    assert retry.is_transient_s3(EndpointConnectionError(endpoint_url="http://x"))
    assert not retry.is_transient_s3(client_error("NoSuchKey", 404))
    assert retry.is_transient_rucio(DatabaseException("deadlock"))
    assert not retry.is_transient_rucio(DataIdentifierNotFound("x"))
    assert not retry.is_transient_rucio(Duplicate("x"))


def _conn(monkeypatch, conn_id, **fields):
    monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps(fields))


def test_rucio_hook_reads_only_its_connection(monkeypatch):
    from facility_data.hooks.rucio import RucioHook

    _conn(monkeypatch, "rucio_t", conn_type="rucio", host="https://rucio.example.org", login="rubin",
          password="s3cret", extra={"vo": "lsst", "auth_host": "https://auth.example.org"})
    kw = RucioHook(rucio_conn_id="rucio_t").client_kwargs()
    assert kw["rucio_host"] == "https://rucio.example.org" and kw["auth_host"] == "https://auth.example.org"
    assert kw["account"] == "rubin" and kw["vo"] == "lsst" and kw["auth_type"] == "userpass"
    assert kw["creds"] == {"username": "rubin", "password": "s3cret"}
    a = RucioHook.token_dir("https://a", "rubin", None, {"password": "pw-one"})
    b = RucioHook.token_dir("https://b", "rubin", None, {"password": "pw-one"})
    c = RucioHook.token_dir("https://a", "rubin", None, {"password": "pw-two"})
    assert len({a, b, c}) == 3 and "pw-one" not in str(a)  # separate caches; the secret is only hashed


@pytest.mark.parametrize("fields, message", [
    ({"conn_type": "rucio", "host": "rucio.example.org", "login": "a", "password": "p"}, "server URL"),
    ({"conn_type": "rucio", "host": "https://r", "password": "p"}, "login"),
    ({"conn_type": "rucio", "host": "https://r", "login": "a"}, "password"),
])
def test_rucio_hook_rejects_incomplete_connections(monkeypatch, fields, message):
    from facility_data.hooks.rucio import RucioHook

    _conn(monkeypatch, "rucio_bad", **fields)
    with pytest.raises(ValueError, match=message):
        RucioHook(rucio_conn_id="rucio_bad").client_kwargs()
    ok, msg = RucioHook(rucio_conn_id="rucio_bad").test_connection()
    assert not ok and "p" not in msg.split(":")[-1].split()  # the password is never echoed


def test_butler_hook_opens_the_repo_of_its_connection(monkeypatch, tmp_path):
    from facility_data.demo.rubin_synthetic import detector_layout, ensure_repo
    from facility_data.hooks.butler import ButlerHook

    ensure_repo(tmp_path / "repo", detector_layout(2))
    _conn(monkeypatch, "butler_t", conn_type="butler", host=str(tmp_path / "repo"))
    hook = ButlerHook(butler_conn_id="butler_t")
    butler = hook.get_butler(writeable=True)
    assert butler.isWriteable()
    assert butler.query_dimension_records("instrument", explain=False)[0].name == "LSSTCam"
    ok, msg = hook.test_connection()
    assert ok and str(tmp_path / "repo") in msg
    _conn(monkeypatch, "butler_missing", conn_type="butler", host=str(tmp_path / "nope"))
    ok, _ = ButlerHook(butler_conn_id="butler_missing").test_connection()
    assert not ok


def test_window_runs_accept_defaults_and_manual_runs_are_validated(tmp_path, monkeypatch):
    monkeypatch.setenv("FACILITY_SITE", str(tmp_path))
    policy = load_policy()
    assert validate({"instrument": "LSSTCam", "day_obs": None, "obs_ids": [], "dry_run": False}, policy) is None
    with pytest.raises(BadRequest, match="unknown instrument"):
        validate({"instrument": "HSC", "day_obs": "20250101"}, policy)
    req = validate({"instrument": "LSSTCam", "obs_ids": ["MC_O_20250101_000001"]}, policy)
    assert req.obs_ids == ("MC_O_20250101_000001",) and req.day_obs is None
