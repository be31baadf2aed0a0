"""S3 faults between the real boto3 client and the local site's S3 API server (moto), injected by a TCP proxy.

The night is written straight to the server; the steps read it through the proxy, which resets connections
mid-body, stalls, or stops listening. The client's own (botocore) retries are off here, so what is counted is
the project's bounded retry layer (facility_data/retry.py); in production botocore's retries run underneath it.
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
from facility_data.rubin import lease, steps
from facility_data.rubin.policy import Storage
from facility_data.rubin.storage import S3Store, StoreReadFailed

pytestmark = pytest.mark.integration
warnings.filterwarnings("ignore", module="erfa")
FILE_SIZE = 1 << 20  # each raw object spans many TCP segments, so a reset lands mid-body


def s3_client(url: str, **config):
    import boto3
    from botocore.config import Config

    return boto3.client("s3", endpoint_url=url, aws_access_key_id="testing", aws_secret_access_key="testing",
                        region_name="us-east-1",
                        config=Config(retries={"max_attempts": 1, "mode": "standard"}, **config))


@pytest.fixture
def proxy(site):
    p = FaultProxy(site.s3.port)
    yield p
    p.close()


@pytest.fixture
def s3_night(site, tmp_path, monkeypatch):
    monkeypatch.setattr(retry, "BASE_DELAY", 0.01)
    bucket = f"rubin-summit-{uuid.uuid4().hex[:8]}"
    direct = S3Store(s3_client(site.s3_url), bucket)
    direct.client.create_bucket(Bucket=bucket)
    night = build_night(tmp_path, day_obs=unique_day_obs(), n_exposures=1, detectors=4, file_size=FILE_SIZE,
                        store=direct)
    policy = night.policy(storage=Storage(kind="s3", root=f"s3://{bucket}", aws_conn_id="unused_store_given"),
                          destination_prefix=site.root / "main" / f"test-{uuid.uuid4().hex[:8]}")
    exp = released(policy, night.day_obs, night.ends[night.obs_ids[-1]])[0]
    return night, policy, exp


def proxied_context(site, policy, proxy, exp, *, serial: bool = False, **client_config) -> steps.Context:
    """A Context reading the store through the proxy, its listing and Butler facts read while the proxy passes.
    ``serial``: one GET at a time (no read-ahead), so a fault lands on a known object (the proxy's reset countdown
    is shared by all connections); the read-ahead's own fault tests are in test_s3_read_ahead.py."""
    store = S3Store(s3_client(proxy.url, **client_config), policy.storage.root[5:],
                    read_ahead_bytes=0 if serial else policy.storage.read_ahead_bytes,
                    parallel_reads=policy.storage.parallel_reads)
    ctx = steps.Context(policy, store=store, rucio=site.rucio_client())
    ctx.objects(exp), ctx.refs(exp)  # noqa: B018 - primed: the faults hit the zip step's object reads
    return ctx


def leftovers(policy, exp) -> list[str]:
    """Anything of the exposure in main storage besides finished artifacts: temporaries, leases, partial zips."""
    day = steps.paths(policy, exp).zip.parent
    return sorted(p.name for p in day.iterdir() if p.name.startswith(".")) if day.exists() else []


def reference_zip(site, policy, exp, tmp_path) -> bytes:
    """The exposure's zip built without faults, straight from the server, in a destination of its own."""
    clean = policy.model_copy(update={"destination_prefix": str(tmp_path / "clean")})
    steps.run_zip(steps.Context(clean, store=S3Store(s3_client(site.s3_url), policy.storage.root[5:])), exp)
    return steps.paths(clean, exp).zip.read_bytes()


def retry_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == retry.__name__]


def test_reset_mid_read_resumes_and_the_zip_is_byte_identical(site, s3_night, proxy, tmp_path, caplog):
    night, policy, exp = s3_night
    ctx = proxied_context(site, policy, proxy, exp, serial=True)
    first = ctx.objects(exp)[0]  # the zip reads members in name order
    proxy.reset_after(FILE_SIZE // 3, times=2)  # the first raw object's read is cut twice, a third apart
    with caplog.at_level(logging.WARNING, logger=retry.__name__):
        assert steps.run_zip(ctx, exp).state == "done"
    assert proxy.events["reset"] == 2
    lines = retry_lines(caplog)
    assert len(lines) == 2, lines  # both resumed within the object's budget, each announced
    for n, line in zip((2, 3), lines, strict=True):
        assert f"{first.key} (read): attempt {n}/{retry.ATTEMPTS} in " in line and "Connection reset" in line
    assert steps.paths(policy, exp).zip.read_bytes() == reference_zip(site, policy, exp, tmp_path)
    assert leftovers(policy, exp) == []


def test_resets_beyond_the_budget_fail_naming_the_object_and_leave_nothing(site, s3_night, proxy, caplog):
    night, policy, exp = s3_night
    ctx = proxied_context(site, policy, proxy, exp, serial=True)
    first = ctx.objects(exp)[0]  # the zip reads members in name order
    proxy.reset_after(FILE_SIZE // 3, times=100)
    with caplog.at_level(logging.WARNING, logger=retry.__name__), pytest.raises(StoreReadFailed) as err:
        steps.run_zip(ctx, exp)
    msg = str(err.value)
    assert f"{first.key}: read failed at byte " in msg and f"after {retry.ATTEMPTS} attempt(s)" in msg, msg
    assert proxy.events["reset"] == retry.ATTEMPTS  # bounded: one read, resumed ATTEMPTS - 1 times, then given up
    assert any(f"gave up after {retry.ATTEMPTS} attempts" in line for line in retry_lines(caplog))
    assert not steps.paths(policy, exp).zip.exists() and leftovers(policy, exp) == []


def test_object_replaced_between_a_reset_and_the_resume_is_never_spliced(site, s3_night, proxy, caplog):
    night, policy, exp = s3_night
    ctx = proxied_context(site, policy, proxy, exp, serial=True)
    first = ctx.objects(exp)[0]

    class ReplaceOnRetry(logging.Handler):  # the summit rewrites the object while the read is cut
        def emit(self, record):
            if "attempt 2/" in record.getMessage():
                night.store.client.put_object(Bucket=night.store.bucket, Key=first.key, Body=b"\0" * first.size)

    handler = ReplaceOnRetry()
    logging.getLogger(retry.__name__).addHandler(handler)
    proxy.reset_after(FILE_SIZE // 3)
    try:
        with caplog.at_level(logging.WARNING, logger=retry.__name__), pytest.raises(StoreReadFailed) as err:
            steps.run_zip(ctx, exp)
    finally:
        logging.getLogger(retry.__name__).removeHandler(handler)
    assert f"{first.key}: replaced while being read" in str(err.value), str(err.value)
    assert not steps.paths(policy, exp).zip.exists() and leftovers(policy, exp) == []


def test_stalled_server_times_out_and_is_retried(site, s3_night, proxy, caplog):
    night, policy, exp = s3_night
    ctx = proxied_context(site, policy, proxy, exp, read_timeout=0.5)

    class PassOnRetry(logging.Handler):  # the stall ends when the first retry is announced: no timing guess
        def emit(self, record):
            if "attempt 2/" in record.getMessage():
                proxy.pass_()

    handler = PassOnRetry()
    logging.getLogger(retry.__name__).addHandler(handler)
    try:
        proxy.stall()
        with caplog.at_level(logging.WARNING, logger=retry.__name__):
            assert steps.run_zip(ctx, exp).state == "done"
    finally:
        logging.getLogger(retry.__name__).removeHandler(handler)
    assert any("Timeout" in line and "attempt 2/" in line for line in retry_lines(caplog)), retry_lines(caplog)


def test_server_gone_beyond_the_budget_fails_loudly_then_a_later_run_completes_once(site, s3_night, proxy, caplog):
    night, policy, exp = s3_night
    ctx = proxied_context(site, policy, proxy, exp)
    proxy.down()  # nothing listens: every attempt is refused
    with caplog.at_level(logging.WARNING, logger=retry.__name__), pytest.raises(Exception) as err:
        steps.run_exposure(ctx, exp)
    # the zip step's first read (its gate reads the sensor manifest) gives up after the budget, naming the object
    assert retry.is_transient_s3(err.value) and f"{exp.obs_id}_expectedSensors.json" in str(err.value), err.value
    assert sum(f"/{retry.ATTEMPTS} in " in line for line in retry_lines(caplog)) == retry.ATTEMPTS - 1
    p = steps.paths(policy, exp)
    assert not p.zip.exists() and not p.yaml.exists() and leftovers(policy, exp) == []
    assert not lease.lease_path(p.zip).exists()

    proxy.up()  # the server is back: a later run (a fresh context, as the next task try has) completes
    later = proxied_context(site, policy, proxy, exp)
    assert [o.state for o in steps.run_exposure(later, exp)] == ["verified"] + ["done"] * (
        len(steps.step_names(policy)) - 1)
    again = steps.run_exposure(proxied_context(site, policy, proxy, exp), exp)
    assert {o.state for o in again} == {"verified"}  # exactly once: nothing left to do
    status = steps.exposure_status(steps.Context(policy, store=later.store, rucio=site.rucio_client()), exp,
                                   deep=True)
    assert status.complete, status.details
    client = site.rucio_client()
    for f in (p.zip, p.yaml):
        reps = list(client.list_replicas([{"scope": "raw", "name": f"{exp.instrument}/{exp.day_obs}/{f.name}"}]))
        assert [list(r["rses"]) for r in reps] == [[policy.rucio.rse]]
