"""PostgreSQL under the Rucio server restarting while an exposure is registered (issue 12).

The restart is real: the module brings up a private site (its own PostgreSQL cluster and a Rucio server on it,
about 20-60 s), because stopping the session's shared PostgreSQL would break the other tests using it. The Rucio
client talks to the server directly; what it sees of a database that is gone is the server's own answer
(``DatabaseException``), which the project's bounded retries (facility_data.retry) classify as transient.
"""

from __future__ import annotations

import logging
import time
import uuid
import warnings
from types import SimpleNamespace

import pytest
from _fault_workers import released
from test_rucio_faults import ARCHIVE, Fault, assert_registered_once, local_steps_done

from facility_data import retry
from facility_data.demo.rubin_synthetic import build_night, unique_day_obs
from facility_data.rubin import rucioreg, steps
from facility_data.rubin.policy import ArchiveRule

pytestmark = pytest.mark.integration
warnings.filterwarnings("ignore", module="erfa")
PORT_VARS = [f"FACILITY_{n}_PORT" for n in ("PG", "RUCIO", "S3", "SCICAT", "AIRFLOW")]


@pytest.fixture(scope="module")
def pg_site(tmp_path_factory):
    """A private site with only PostgreSQL and Rucio, so its database can be stopped without harming others."""
    import rucio.common.config

    from facility_data.localsite import Site

    root = tmp_path_factory.mktemp("pgfault")
    root.chmod(0o755)
    with pytest.MonkeyPatch.context() as mp:
        for var in PORT_VARS:  # ports the user or `make` fixed belong to the shared site: take free ones
            mp.delenv(var, raising=False)
        s = Site(root / "site")
        # the rucio client caches the first configuration it reads (token file included) for the whole process,
        # and the site's client() sets RUCIO_CONFIG if unset: point both at this site's before anything reads
        # them, so that afterwards the shared site's configuration is found again
        mp.setenv("RUCIO_CONFIG", str(s.rucio.config))
        rucio.common.config.clean_cached_config()
        try:
            s.up(services=("postgres", "rucio"))
            yield s
        finally:
            rucio.common.config.clean_cached_config()
            s.remove()
    rucio.common.config.clean_cached_config()


@pytest.fixture
def night(pg_site, tmp_path):
    if not pg_site.postgres.running():  # an earlier case that failed half-way left it stopped
        pg_site.postgres.start()
    night = build_night(tmp_path, day_obs=unique_day_obs(), n_exposures=1, detectors=4)
    policy = night.policy(destination_prefix=pg_site.root / "main" / f"test-{uuid.uuid4().hex[:8]}")
    policy = policy.model_copy(update={"rucio": policy.rucio.model_copy(
        update={"archive": ArchiveRule(rse_expression=ARCHIVE)})})
    return policy, released(policy, night.day_obs, night.ends[night.obs_ids[-1]])[0]


def retry_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == retry.__name__]


def retrying(site) -> SimpleNamespace:
    """The site as the checks see it: every Rucio call retried like the steps' calls. After a restart each server
    worker still holds connections to the old PostgreSQL and answers its next request with a DatabaseException."""
    return SimpleNamespace(rucio_client=lambda: rucioreg.RetryingRucio(site.rucio_client()))


def assert_end_state(site, policy, exp):
    """Registered exactly once, and Rucio's bytes/md5/adler32 are those of the files on disk."""
    import hashlib
    import zlib

    site = retrying(site)
    assert_registered_once(site, policy, exp)
    p = steps.paths(policy, exp)
    for f in (p.zip, p.yaml):
        data = f.read_bytes()
        name = f"{exp.instrument}/{exp.day_obs}/{f.name}"
        [rep] = site.rucio_client().list_replicas([{"scope": "raw", "name": name}])
        assert (rep["bytes"], rep["md5"], rep["adler32"]) == (
            len(data), hashlib.md5(data).hexdigest(), f"{zlib.adler32(data) & 0xFFFFFFFF:08x}"), name
    assert steps.run_rucio(steps.Context(policy, rucio=site.rucio_client()), exp).state == "verified"


class RestartOnRetry(logging.Handler):
    """Brings PostgreSQL back when the retries announce attempt ``at``: a database down for the retries before."""

    def __init__(self, pg, at: int):
        super().__init__()
        self.pg, self.at, self.back_at = pg, at, None

    def emit(self, record):
        if self.back_at is None and f" attempt {self.at}/" in record.getMessage():
            self.pg.start()
            self.back_at = time.monotonic()


def test_database_down_for_seconds_mid_registration_converges_with_each_retry_logged(pg_site, night, caplog,
                                                                                     monkeypatch):
    policy, exp = night
    monkeypatch.setattr(retry, "BASE_DELAY", 1.5)  # the first backoff passes with the database down
    local_steps_done(policy, exp)
    pg = pg_site.postgres
    stopped = []
    client = Fault(pg_site.rucio_client(), "add_replicas",
                   after=lambda: (pg.stop(), stopped.append(time.monotonic())))  # the zip's replica is in
    back = RestartOnRetry(pg, at=3)
    retry.log.addHandler(back)
    try:
        with caplog.at_level(logging.WARNING, logger=retry.__name__):
            outcome = steps.run_rucio(steps.Context(policy, rucio=client), exp)
    finally:
        retry.log.removeHandler(back)
    assert outcome.state == "done"
    assert back.back_at is not None and back.back_at - stopped[0] >= retry.BASE_DELAY
    lines = retry_lines(caplog)
    assert sum(f"/{retry.ATTEMPTS} in " in line for line in lines) >= 2, lines
    assert all("DatabaseException" in line for line in lines), lines
    assert not any("gave up" in line for line in lines), lines
    assert_end_state(pg_site, policy, exp)


def test_database_down_beyond_the_budget_fails_loudly_and_the_rerun_completes(pg_site, night, caplog, monkeypatch):
    policy, exp = night
    monkeypatch.setattr(retry, "BASE_DELAY", 0.05)
    local_steps_done(policy, exp)
    pg = pg_site.postgres
    # replicas and datasets are in, nothing attached yet: a partial state the rerun must complete
    client = Fault(pg_site.rucio_client(), "attach_dids", before=pg.stop)
    try:
        with caplog.at_level(logging.WARNING, logger=retry.__name__), pytest.raises(Exception) as err:
            steps.run_rucio(steps.Context(policy, rucio=client), exp)
    finally:
        pg.start()
    assert type(err.value).__name__ == "DatabaseException" and retry.is_transient_rucio(err.value)
    lines = retry_lines(caplog)
    assert sum(f"/{retry.ATTEMPTS} in " in line for line in lines) == retry.ATTEMPTS - 1, lines
    assert any(f"gave up after {retry.ATTEMPTS} attempts: DatabaseException" in line for line in lines), lines
    plan = steps.rucio_plan(steps.Context(policy), exp, None)
    days, obs = plan.datasets[:-1], plan.obs
    rucio = retrying(pg_site).rucio_client()
    assert all(rucio.list_content("raw", d) == [] for d in days)  # made, nothing attached
    with pytest.raises(Exception, match="not found|DataIdentifierNotFound"):
        rucio.get_did("raw", obs)

    caplog.clear()  # the database is back: the next run (a fresh context, like the task's next try) completes
    with caplog.at_level(logging.WARNING, logger=retry.__name__):
        outcome = steps.run_rucio(steps.Context(policy, rucio=pg_site.rucio_client()), exp)
    assert outcome.state == "done"
    # the server's workers may each answer once from a connection to the stopped database: retried, logged
    assert all("DatabaseException" in line and "gave up" not in line for line in retry_lines(caplog))
    acted = outcome.detail["acted"]
    assert not any(a.startswith("replica ") for a in acted) and not any(f"dataset {d}" in acted for d in days), acted
    assert f"dataset {obs}" in acted, acted
    assert_end_state(pg_site, policy, exp)
