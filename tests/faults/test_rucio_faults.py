"""The Rucio server gone mid-registration, and answers lost after the server acted, with the real rucio client
talking to the local Rucio server through a TCP proxy (tests/faults/_proxy.py).

"Server stopped" is the proxy no longer listening (connections refused, open ones cut), which is what the client
sees of a stopped server; the server itself keeps running, so other tests sharing it are not disturbed. Not
modelled: a server that dies inside its own database transaction (PostgreSQL rolls that back; the client sees the
same lost answer as the reset case below).
"""

from __future__ import annotations

import logging
import uuid
import warnings

import pytest
from _fault_workers import released
from _proxy import FaultProxy

from facility_data import retry
from facility_data.demo.rubin_synthetic import build_night, unique_day_obs
from facility_data.localsite.rucio_server import ensure_archive_rse
from facility_data.rubin import rucioreg, steps
from facility_data.rubin.policy import ArchiveRule

pytestmark = pytest.mark.integration
warnings.filterwarnings("ignore", module="erfa")
ARCHIVE = "FRDF_RAW_DISK"


@pytest.fixture
def proxy(site):
    p = FaultProxy(site.rucio.port)
    yield p
    p.close()


@pytest.fixture
def night(site, tmp_path, monkeypatch):
    monkeypatch.setattr(retry, "BASE_DELAY", 0.01)
    ensure_archive_rse(site.rucio_client())
    night = build_night(tmp_path, day_obs=unique_day_obs(), n_exposures=1, detectors=4)
    policy = night.policy(destination_prefix=site.root / "main" / f"test-{uuid.uuid4().hex[:8]}")
    policy = policy.model_copy(update={"rucio": policy.rucio.model_copy(
        update={"archive": ArchiveRule(rse_expression=ARCHIVE)})})
    return night, policy, released(policy, night.day_obs, night.ends[night.obs_ids[-1]])[0]


def proxied_client(site, proxy):
    client = site.rucio_client()  # authenticated against the server itself; every later call goes through the proxy
    client.host, client.list_hosts = proxy.url, [proxy.url]
    return client


class Fault:
    """The rucio client with an action run around one method: ``before`` (e.g. arm a reset of its answer) or
    ``after`` (e.g. stop the server once the call went through)."""

    def __init__(self, client, method: str, *, before=None, after=None):
        self._client, self._method, self._before, self._after = client, method, before, after
        self.calls = 0

    def __getattr__(self, name):
        fn = getattr(self._client, name)
        if name != self._method:
            return fn

        def call(*args, **kwargs):
            self.calls += 1
            if self._before and self.calls == 1:
                self._before()
            out = fn(*args, **kwargs)
            if self._after and self.calls == 1:
                self._after()
            return out
        return call


def obs_name(exp) -> str:
    return rucioreg.did_names(exp.instrument, exp.day_obs, exp.obs_id, [])[1]


def registration(site, policy, exp) -> dict:
    """What Rucio holds for the exposure: rules to the archive, Obs content and state, replicas per file."""
    client = site.rucio_client()
    obs = obs_name(exp)
    files = [f"{exp.instrument}/{exp.day_obs}/{f.name}" for f in (steps.paths(policy, exp).zip,
                                                                   steps.paths(policy, exp).yaml)]
    return {"rules": [r["rse_expression"] for r in client.list_did_rules("raw", obs)],
            "obs_open": client.get_did("raw", obs)["open"],
            "obs_content": sorted(c["name"] for c in client.list_content("raw", obs)),
            "replicas": {n: [list(r["rses"]) for r in client.list_replicas([{"scope": "raw", "name": n}])]
                         for n in files},
            "expected_files": sorted(files)}


def assert_registered_once(site, policy, exp):
    state = registration(site, policy, exp)
    assert state["rules"] == [ARCHIVE]  # exactly one rule
    assert state["obs_open"] is False and state["obs_content"] == state["expected_files"]
    assert all(reps == [[policy.rucio.rse]] for reps in state["replicas"].values()), state["replicas"]


def local_steps_done(policy, exp) -> steps.Context:
    ctx = steps.Context(policy)
    for name in steps.step_names(policy)[:-1]:
        steps.run_step(ctx, exp, name)
    return ctx


def test_server_stops_between_add_replicas_and_attach_then_the_next_run_converges(site, night, proxy, caplog):
    _, policy, exp = night
    local_steps_done(policy, exp)
    client = Fault(proxied_client(site, proxy), "add_replicas", after=proxy.down)
    with caplog.at_level(logging.WARNING, logger=retry.__name__), pytest.raises(Exception) as err:
        steps.run_rucio(steps.Context(policy, rucio=client), exp)
    assert type(err.value).__name__ == "ServerConnectionException" and retry.is_transient_rucio(err.value)
    lines = [r.getMessage() for r in caplog.records if r.name == retry.__name__]
    assert sum(f"/{retry.ATTEMPTS} in " in line for line in lines) == retry.ATTEMPTS - 1, lines
    assert any(f"gave up after {retry.ATTEMPTS} attempts: ServerConnectionException" in line for line in lines)
    zip_did = f"{exp.instrument}/{exp.day_obs}/{steps.paths(policy, exp).zip.name}"
    assert site.rucio_client().get_did("raw", zip_did)["name"] == zip_did  # the replica went in before the stop

    proxy.up()  # the server is back: the next run (a fresh context, like the task's next try) converges
    caplog.clear()
    outcome = steps.run_rucio(steps.Context(policy, rucio=proxied_client(site, proxy)), exp)
    assert outcome.state == "done"
    assert f"replica {zip_did}" not in outcome.detail["acted"]  # kept, not re-added
    assert rucioreg.rule_part(obs_name(exp), ARCHIVE) in outcome.detail["acted"]
    assert_registered_once(site, policy, exp)
    assert steps.run_rucio(steps.Context(policy, rucio=proxied_client(site, proxy)), exp).state == "verified"


@pytest.mark.parametrize("method", ["attach_dids", "close", "add_replication_rule"])
def test_answer_lost_after_the_server_acted_is_retried_and_tolerated(site, night, proxy, method):
    """The server does the call, then the connection is reset before its answer arrives: the retry finds the
    work done (Duplicate*, already closed) and the run ends green, registered exactly once."""
    _, policy, exp = night
    local_steps_done(policy, exp)
    client = Fault(proxied_client(site, proxy), method, before=lambda: proxy.reset_after(0))
    assert steps.run_rucio(steps.Context(policy, rucio=client), exp).state == "done"
    assert proxy.events["reset"] == 1 and client.calls >= 1
    assert_registered_once(site, policy, exp)
