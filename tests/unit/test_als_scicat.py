"""SciCat through pyscicat: the hook's login shapes, retries and failures, and the idempotent ingest of a synthetic
scan, against the local SciCat stand-in (facility_data.localsite.scicat_standin, a real HTTP server). A few answers no SciCat
gives (HTML where JSON is due, a 200 without a pid, an https host) stay on canned `responses`."""

from __future__ import annotations

import base64
import io
import json
import logging

import h5py
import pytest
import responses
from pyscicat.client import ScicatClient

from facility_data.als import scicat_ingest as ingest
from facility_data.demo import als_synthetic as synthetic
from facility_data.hooks.scicat import (
    SciCatAuthError,
    SciCatClient,
    SciCatError,
    SciCatHook,
    SciCatHTTPError,
    SciCatResponseError,
)
from facility_data.localsite.scicat_standin import SciCatStandIn

PASSWORD = "ingest-password-123"
SOURCE = "/global/raw/ALS-12345_auser/20240101_120000_phantom.h5"
STORED = "/data/raw/ALS-12345_auser/20240101_120000_phantom.h5"
CANNED = "http://scicat.test/api/v3"  # for the `responses` tests only


@pytest.fixture
def scan(tmp_path):
    return synthetic.write_scan(tmp_path / "20240101_120000_phantom.h5", n_angles=21, size=32, n_slices=2,
                                proposal="ALS-12345", experimenter_email=" a.user@lbl.gov, ")


@pytest.fixture
def scicat():
    with SciCatStandIn({"ingestor": PASSWORD}) as server:
        yield server


@pytest.fixture
def hook(scicat, monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONN_SCICAT_TEST", scicat.connection_json())
    return SciCatHook("scicat_test", backoff=0)


def _ingest(hook, scan, **kw):
    return ingest.ingest_scan(hook, scan, source_path=SOURCE, source_root="/global/raw", storage_root="/data/raw",
                              **kw)


def _tokens_in_urls(scicat) -> list[str]:
    return [q for _, _, q in scicat.calls if "access_token" in q or any(t in q for t in scicat.tokens)]


# --------------------------------------------------------------------------------------------- full ingest
def test_the_hook_returns_a_logged_in_pyscicat_client(hook, scicat):
    client = hook.get_conn()
    assert isinstance(client, ScicatClient)
    assert client._token in scicat.tokens and client._token not in repr(client) and PASSWORD not in repr(client)
    from airflow.sdk.log import redact

    assert client._token not in redact(f"Authorization: Bearer {client._token}")  # registered with the masker
    assert hook.test_connection() == (True, f"logged in to {scicat.url} as ingestor")


def test_ingest_creates_dataset_datablock_and_thumbnail_once(hook, scan, scicat, caplog):
    caplog.set_level(logging.DEBUG)
    pid = _ingest(hook, scan)

    assert list(scicat.datasets) == [pid] and pid.startswith("20.500.12269/")
    body = scicat.datasets[pid]
    assert body["type"] == "raw" and body["dataFormat"] == "DX" and body["datasetName"] == "20240101_120000_phantom"
    assert body["ownerGroup"] == "ALS-12345" and body["proposalId"] == "ALS-12345"
    assert body["accessGroups"] == ["bl832", "8.3.2"]
    assert body["contactEmail"] == "a.user@lbl.gov"  # spaces and commas cleaned
    assert body["sourceFolder"] == "/data/raw/ALS-12345_auser"
    assert body["size"] == scan.stat().st_size and body["numberOfFiles"] == 1
    sm = body["scientificMetadata"]
    assert sm["/measurement/instrument/detector/pixel_size"] == pytest.approx(0.00325)
    assert sm["/process/acquisition/rotation/num_angles"] == 21
    assert len(sm["data_sample"]["/measurement/instrument/source/current"]) == 10
    assert sm["data_sample"]["/measurement/instrument/monochromator/energy"] == [25.0]
    assert "20240101" in body["keywords"] and "phantom" in body["keywords"]

    (block,) = scicat.origdatablocks[pid]
    assert block["dataFileList"][0]["path"] == STORED and block["size"] == scan.stat().st_size
    assert block["ownerGroup"] == "ALS-12345"
    (att,) = scicat.attachments[pid]
    assert att["caption"] == "raw image" and att["ownerGroup"] == "ALS-12345"
    prefix = "data:image/png;base64,"
    assert att["thumbnail"].startswith(prefix)
    from PIL import Image

    img = Image.open(io.BytesIO(base64.b64decode(att["thumbnail"][len(prefix):])))
    assert img.format == "PNG" and img.size == (32, 2)

    # no secret in logs, and the token never travels in a URL (pyscicat alone sends ?access_token=)
    assert PASSWORD not in caplog.text and not any(t in caplog.text for t in scicat.tokens)
    assert _tokens_in_urls(scicat) == []


def test_rerun_finds_everything_and_creates_nothing(hook, scan, scicat):
    pid = _ingest(hook, scan)
    posts = [c for c in scicat.calls if c[0] == "POST"]
    assert _ingest(SciCatHook("scicat_test", backoff=0), scan) == pid
    assert [c for c in scicat.calls if c[0] == "POST"] == posts + [("POST", "auth/login", "")]  # login only
    assert len(scicat.datasets) == len(scicat.origdatablocks[pid]) == len(scicat.attachments[pid]) == 1


def test_a_plus_in_the_scan_name_is_found_on_rerun_not_duplicated(hook, tmp_path, scicat):
    # "+" is allowed in ALS folder and file names; unencoded in the filter, the server would read a space
    scan = synthetic.write_scan(tmp_path / "ALS-1_a+b" / "20240101_120000_c+d.h5", n_angles=4, size=16, n_slices=1)
    pid = ingest.ingest_scan(hook, scan)
    assert scicat.datasets[pid]["sourceFolder"].endswith("/ALS-1_a+b")
    assert ingest.ingest_scan(hook, scan) == pid
    assert list(scicat.datasets) == [pid] and scicat.count("POST", "Datasets") == 1


def test_lookup_by_given_pid(hook, scan, scicat):
    assert _ingest(hook, scan, pid="given/pid-1") == "given/pid-1"
    assert list(scicat.datasets) == ["given/pid-1"] and scicat.count("GET", "Datasets/given%2Fpid-1") == 1
    assert _ingest(hook, scan, pid="given/pid-1") == "given/pid-1"  # found by pid the second time
    assert scicat.count("POST", "Datasets") == 1


def test_email_and_proposal_fallbacks(hook, tmp_path, scicat):
    scan = synthetic.write_scan(tmp_path / "20240101_120000_x.h5", n_angles=4, size=16, n_slices=1,
                                proposal="None", experimenter_email="None")
    pid = ingest.ingest_scan(hook, scan, owner_group_fallback="8.3.2")
    body = scicat.datasets[pid]
    assert body["ownerGroup"] == "8.3.2" and "proposalId" not in body
    assert body["contactEmail"] == ingest.UNKNOWN_EMAIL
    assert body["sourceFolder"] == str(tmp_path)  # no roots given: the path as read


# ------------------------------------------------------------------------------------------------ login
def test_older_users_login_shape(monkeypatch):
    with SciCatStandIn({"ingestor": PASSWORD}, v4_login=False) as v3:
        monkeypatch.setenv("AIRFLOW_CONN_SCICAT_V3", v3.connection_json())
        assert SciCatHook("scicat_v3").get_conn().datasets_get_many({"x": 1}) == []
        assert [(m, r) for m, r, _ in v3.calls] == [("POST", "auth/login"), ("POST", "Users/login"),
                                                    ("GET", "Datasets")]


def test_login_refused_is_an_auth_error_without_the_password(scicat, monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONN_SCICAT_BAD", scicat.connection_json(password="wrong-password-456"))
    hook = SciCatHook("scicat_bad")
    with pytest.raises(SciCatAuthError, match=r"ingestor.*refused \(401\)") as err:
        hook.get_conn()
    assert "wrong-password-456" not in str(err.value)
    ok, message = hook.test_connection()
    assert not ok and "refused" in message


def test_login_retries_on_5xx(hook, scicat, caplog):
    scicat.fail("POST", "auth/login", status=503, message="starting up")
    client = hook.get_conn()
    assert scicat.count("POST", "auth/login") == 2 and client._token in scicat.tokens
    assert "SciCat POST auth/login answered 503; retry 1/3" in caplog.text


def test_expired_token_logs_in_again_once(hook, scicat):
    client = hook.get_conn()
    scicat.expire_tokens()
    assert client.datasets_get_many({}) == []
    assert [(m, r) for m, r, _ in scicat.calls] == [("POST", "auth/login"), ("GET", "Datasets"),
                                                    ("POST", "auth/login"), ("GET", "Datasets")]


# ------------------------------------------------------------------------- transient and lasting faults
def test_a_transient_500_on_a_read_is_retried_and_the_ingest_succeeds(hook, scan, scicat, caplog):
    scicat.fail("GET", "Datasets", status=500, message="index rebuilding")
    pid = _ingest(hook, scan)
    assert scicat.count("GET", "Datasets") == 2 and list(scicat.datasets) == [pid]
    assert "SciCat GET Datasets answered 500; retry 1/3" in caplog.text


def test_a_lasting_5xx_gives_up_after_bounded_retries_with_the_service_message(hook, scicat):
    scicat.fail("GET", "Datasets", status=500, times=10, message="database unavailable")
    with pytest.raises(SciCatHTTPError, match="database unavailable") as err:
        hook.get_conn().datasets_get_many({})
    assert err.value.status == 500 and "datasets_get_many" in str(err.value)
    assert scicat.count("GET", "Datasets") == 4  # 1 + max_retries


def test_scicat_down_fails_the_ingest_naming_the_service_after_bounded_retries(hook, scan, scicat, caplog):
    scicat.down()
    with pytest.raises(SciCatError, match=r"unreachable after 4 attempt\(s\): ConnectionError") as err:
        _ingest(hook, scan)
    assert scicat.url in str(err.value) and isinstance(err.value, ingest.INGEST_ERRORS)
    assert caplog.text.count("SciCat POST auth/login: ConnectionError; retry") == 3
    scicat.up()  # back: the same call succeeds (the catch-up path reruns exactly this)
    assert _ingest(SciCatHook("scicat_test", backoff=0), scan) in scicat.datasets


def test_500_on_create_but_stored_anyway_is_found_not_duplicated(hook, scan, scicat):
    scicat.fail("POST", "Datasets", status=500, after_store=True, message="timeout writing index")
    pid = _ingest(hook, scan)
    assert list(scicat.datasets) == [pid] and scicat.count("POST", "Datasets") == 1
    assert len(scicat.origdatablocks[pid]) == 1


def test_500_on_create_before_storing_is_looked_up_then_retried(hook, scan, scicat):
    scicat.fail("POST", "Datasets", status=500, message="write conflict")
    pid = _ingest(hook, scan)
    assert list(scicat.datasets) == [pid] and scicat.count("POST", "Datasets") == 2


def test_create_keeps_failing_says_nothing_exists(hook, scan, scicat):
    scicat.fail("POST", "Datasets", status=502, times=5, message="bad gateway")
    with pytest.raises(ingest.SciCatIngestError, match="nothing exists in SciCat") as err:
        _ingest(hook, scan, create_attempts=2)
    assert err.value.state == {"dataset": None}
    assert isinstance(err.value, ingest.INGEST_ERRORS)
    assert scicat.count("POST", "Datasets") == 2 and not scicat.datasets


def test_create_rejected_4xx_is_not_retried(hook, scan, scicat):
    scicat.fail("POST", "Datasets", status=400, message="contactEmail must be an email")
    with pytest.raises(SciCatHTTPError, match="contactEmail must be an email"):
        _ingest(hook, scan)
    assert scicat.count("POST", "Datasets") == 1 and not scicat.datasets


def test_half_created_dataset_is_reported_exactly_and_a_rerun_completes_it(hook, scan, scicat):
    scicat.fail("POST", "origdatablocks", status=500, message="db down")
    with pytest.raises(ingest.SciCatIngestError) as err:
        _ingest(hook, scan)
    (pid,) = scicat.datasets
    msg = str(err.value)
    assert f"dataset {pid} exists (created by this run)" in msg and "db down" in msg
    assert "origdatablock missing" in msg and "thumbnail not checked" in msg and "Rerunning" in msg
    assert err.value.state["dataset"] == pid
    assert scicat.count("POST", "attachments") == 0

    assert _ingest(SciCatHook("scicat_test", backoff=0), scan) == pid
    assert scicat.count("POST", "Datasets") == 1
    assert len(scicat.origdatablocks[pid]) == len(scicat.attachments[pid]) == 1


# ----------------------------------------------------------------- answers no SciCat gives (canned HTTP)
@pytest.fixture
def canned(monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONN_SCICAT_CANNED", json.dumps(
        {"conn_type": "scicat", "host": CANNED, "login": "ingestor", "password": PASSWORD}))
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        yield rsps


def _canned_login(rsps):
    rsps.post(f"{CANNED}/auth/login", json={"access_token": "tok-abcdef-0123456789"})


def test_malformed_login_response(canned):
    canned.post(f"{CANNED}/auth/login", body="<html>proxy error page</html>", status=200)
    with pytest.raises(SciCatResponseError, match="without a token"):
        SciCatHook("scicat_canned").get_conn()


def test_malformed_create_response_then_lookup(canned, scan):
    _canned_login(canned)
    canned.get(f"{CANNED}/Datasets", json=[])
    canned.post(f"{CANNED}/Datasets", json={"unexpected": True})  # 200 without pid
    with pytest.raises(ingest.SciCatIngestError, match="was not created.*without a dataset pid"):
        _ingest(SciCatHook("scicat_canned"), scan, create_attempts=1)


def test_malformed_lookup_response(canned, scan):
    _canned_login(canned)
    canned.get(f"{CANNED}/Datasets", body="<html>maintenance</html>", status=200)
    with pytest.raises(SciCatResponseError, match="non-JSON"):
        _ingest(SciCatHook("scicat_canned"), scan)
    assert not [c for c in canned.calls if c.request.method == "POST" and c.request.url.endswith("/Datasets")]


def test_a_lookup_answering_an_object_is_malformed(canned, scan):
    _canned_login(canned)
    canned.get(f"{CANNED}/Datasets", json={"error": "not a list"})
    with pytest.raises(SciCatResponseError, match="expected a list"):
        _ingest(SciCatHook("scicat_canned"), scan)


def test_host_without_scheme_becomes_https(monkeypatch, canned):
    monkeypatch.setenv("AIRFLOW_CONN_SCICAT_BARE", json.dumps(
        {"conn_type": "scicat", "host": "scicat.example.org", "schema": "api/v3", "login": "u", "password": "pw"}))
    canned.post("https://scicat.example.org/api/v3/auth/login", json={"access_token": "t"})
    assert SciCatHook("scicat_bare").get_conn().base_url == "https://scicat.example.org/api/v3"


def test_retry_settings_come_from_the_connection_extra(scicat, monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONN_SCICAT_NORETRY", scicat.connection_json(max_retries=0, backoff=0, timeout=5))
    scicat.fail("GET", "Datasets", status=503, times=2, message="busy")
    client = SciCatHook("scicat_noretry").get_conn()
    assert (client.max_retries, client.backoff, client._timeout_seconds) == (0, 0.0, 5.0)
    with pytest.raises(SciCatHTTPError, match="busy"):
        client.datasets_get_many({})
    assert scicat.count("GET", "Datasets") == 1


@pytest.mark.parametrize("extra, message", [
    ({"max_retry": 2}, r"unknown extra key\(s\) \['max_retry'\]"),
    ({"max_retries": -1}, "max_retries=-1 must be a non-negative integer"),
    ({"max_retries": 1.5}, "max_retries=1.5 must be a non-negative integer"),
    ({"backoff": "fast"}, "backoff='fast' must be a number of seconds >= 0"),
    ({"timeout": 0}, "timeout=0 must be a number of seconds > 0"),
])
def test_bad_connection_extra_is_refused_before_any_request(scicat, monkeypatch, extra, message):
    monkeypatch.setenv("AIRFLOW_CONN_SCICAT_BADX", scicat.connection_json(**extra))
    with pytest.raises(ValueError, match=message):
        SciCatHook("scicat_badx").get_conn()
    assert scicat.calls == []


def test_hook_needs_credentials(monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONN_SCICAT_NOPW", json.dumps({"conn_type": "scicat", "host": CANNED,
                                                                "login": "ingestor"}))
    with pytest.raises(ValueError, match="password"):
        SciCatHook("scicat_nopw").get_conn()


def test_client_rejects_non_url():
    with pytest.raises(ValueError, match="URL"):
        SciCatClient("scicat.test", "u", "p")


# --------------------------------------------------------------------------- bad input: no request at all
@pytest.mark.parametrize("case", ["missing", "corrupt", "no_data", "outside_root", "traversal", "one_root"])
def test_bad_input_fails_before_any_request(hook, scan, tmp_path, scicat, case):
    kwargs = {"source_path": SOURCE, "source_root": "/global/raw", "storage_root": "/data/raw"}
    path = scan
    if case == "missing":
        path = tmp_path / "nope.h5"
    elif case == "corrupt":
        path = tmp_path / "corrupt.h5"
        path.write_bytes(b"\x00not hdf5" * 50)
    elif case == "no_data":
        with h5py.File(scan, "r+") as f:
            del f["/exchange/data"]
    elif case == "outside_root":
        kwargs["source_path"] = "/elsewhere/x.h5"
    elif case == "traversal":
        kwargs["source_path"] = "/global/raw/../../etc/x.h5"
    elif case == "one_root":
        kwargs["storage_root"] = ""
    with pytest.raises(ingest.IngestInputError):
        ingest.ingest_scan(hook, path, **kwargs)
    assert scicat.calls == []


# ------------------------------------------------------------------------------------------- field rules
@pytest.mark.parametrize("raw, expected", [
    ("a.user@lbl.gov", "a.user@lbl.gov"),
    (" 'a.user@lbl.gov', ", "a.user@lbl.gov"),
    ("None", ingest.UNKNOWN_EMAIL),
    ("", ingest.UNKNOWN_EMAIL),
    (None, ingest.UNKNOWN_EMAIL),
    ("not an address", ingest.UNKNOWN_EMAIL),
])
def test_clean_email(raw, expected):
    assert ingest.clean_email(raw) == expected


def test_access_controls():
    assert ingest.access_controls("bl832", "ALS-1", "8.3.2") == ("ALS-1", ["bl832", "8.3.2"])
    assert ingest.access_controls(" '8.3.2', ", None, "8.3.2") == ("8.3.2", ["8.3.2"])
    assert ingest.access_controls(None, "None", "7.3.3") == ("7.3.3", ["7.3.3"])


def test_storage_path_rewrite():
    assert str(ingest.storage_path(SOURCE, "/global/raw", "/data/raw")) == STORED
    assert str(ingest.storage_path("/a/b.h5", "", "")) == "/a/b.h5"
    with pytest.raises(ingest.IngestInputError, match="not under"):
        ingest.storage_path("/global/rawdata/b.h5", "/global/raw", "/data/raw")


# ------------------------------------------------------------- what the DAG retries (ingest_scicat's boundary)
def _raised(call) -> BaseException:
    try:
        call()
    except Exception as exc:
        return exc
    raise AssertionError("did not fail")


def test_scicat_down_or_5xx_is_retryable_a_refused_login_or_4xx_is_not(hook, scan, scicat, monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONN_SCICAT_BAD", scicat.connection_json(password="wrong-password-456"))
    assert not ingest.retryable(_raised(lambda: _ingest(SciCatHook("scicat_bad", backoff=0), scan)))
    scicat.fail("POST", "Datasets", status=400, message="bad dataset")
    assert not ingest.retryable(_raised(lambda: _ingest(hook, scan)))
    scicat.fail("GET", "Datasets", status=503, times=10, message="database unavailable")
    assert ingest.retryable(_raised(lambda: _ingest(hook, scan)))
    scicat.down()
    assert ingest.retryable(_raised(lambda: _ingest(hook, scan)))


def test_retryable_looks_through_a_half_done_ingest_to_its_cause(tmp_path, hook):
    from airflow.sdk.exceptions import AirflowNotFoundException

    def wrapped(cause: BaseException) -> BaseException:
        try:
            raise ingest.SciCatIngestError("incomplete", state={}) from cause
        except ingest.SciCatIngestError as exc:
            return exc

    assert not ingest.retryable(wrapped(SciCatAuthError("refused")))
    assert not ingest.retryable(wrapped(SciCatHTTPError("rejected", status=422)))
    assert ingest.retryable(wrapped(SciCatHTTPError("gateway", status=502)))
    assert ingest.retryable(wrapped(SciCatError("unreachable")))
    assert not ingest.retryable(_raised(lambda: _ingest(hook, tmp_path / "missing.h5")))  # IngestInputError
    assert not ingest.retryable(AirflowNotFoundException("The conn_id `scicat_default` isn't defined"))
    assert ingest.retryable(RuntimeError("unexpected"))  # unknown: the DAG's retries first, as for any task


# ------------------------------------------------------------------------------- the stand-in's record file
def test_the_standin_keeps_its_records_in_its_state_file_across_a_restart(tmp_path, scan, monkeypatch):
    state = tmp_path / "records.json"
    with SciCatStandIn({"ingestor": PASSWORD}, state_file=state) as first:
        monkeypatch.setenv("AIRFLOW_CONN_SCICAT_KEPT", first.connection_json())
        pid = _ingest(SciCatHook("scicat_kept", backoff=0), scan)
        assert json.loads(state.read_text())["datasets"][pid]["pid"] == pid
    with SciCatStandIn({"ingestor": PASSWORD}, state_file=state) as second:
        assert list(second.datasets) == [pid] and len(second.origdatablocks[pid]) == 1
        assert len(second.attachments[pid]) == 1 and not second.tokens  # tokens are not kept: clients log in again
        monkeypatch.setenv("AIRFLOW_CONN_SCICAT_KEPT", second.connection_json())
        posts = second.count("POST", "Datasets")
        assert _ingest(SciCatHook("scicat_kept", backoff=0), scan) == pid  # a rerun finds it, creates nothing
        assert second.count("POST", "Datasets") == posts
