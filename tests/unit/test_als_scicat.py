"""SciCat: hook login shapes and failures, and idempotent ingest of a synthetic scan, against canned HTTP
responses (the `responses` library intercepts the real requests calls)."""

from __future__ import annotations

import base64
import io
import json
import logging
from urllib.parse import parse_qs, urlsplit

import h5py
import pytest
import responses
from responses import matchers

from facility_data.als import scicat_ingest as ingest
from facility_data.demo import als_synthetic as synthetic
from facility_data.hooks.scicat import (
    SciCatAuthError,
    SciCatClient,
    SciCatHook,
    SciCatHTTPError,
    SciCatResponseError,
)

API = "http://scicat.test/api/v3"
PASSWORD = "ingest-password-123"
TOKEN = "tok-abcdef-0123456789"
PID = "20.500.12269/abc-123"
SOURCE = "/global/raw/ALS-12345_auser/20240101_120000_phantom.h5"
STORED = "/data/raw/ALS-12345_auser/20240101_120000_phantom.h5"


@pytest.fixture
def scan(tmp_path):
    return synthetic.write_scan(tmp_path / "20240101_120000_phantom.h5", n_angles=21, size=32, n_slices=2,
                                proposal="ALS-12345", experimenter_email=" a.user@lbl.gov, ")


@pytest.fixture
def hook(monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONN_SCICAT_TEST", json.dumps(
        {"conn_type": "scicat", "host": API, "login": "ingestor", "password": PASSWORD}))
    return SciCatHook("scicat_test", backoff=0)


@pytest.fixture
def rsps():
    with responses.RequestsMock(assert_all_requests_are_fired=False) as r:
        yield r


def _login(rsps, **kwargs):
    return rsps.post(f"{API}/auth/login", json={"access_token": TOKEN, "userId": "ingestor"},
                     match=[matchers.json_params_matcher({"username": "ingestor", "password": PASSWORD})], **kwargs)


def _empty_lookup(rsps):
    return rsps.get(f"{API}/Datasets", json=[])


def _ingest(hook, scan, **kw):
    return ingest.ingest_scan(hook, scan, source_path=SOURCE, source_root="/global/raw", storage_root="/data/raw",
                              **kw)


def _posts(rsps, suffix):
    return [c for c in rsps.calls if c.request.method == "POST" and c.request.url.endswith(suffix)]


# --------------------------------------------------------------------------------------------- full ingest
def test_ingest_creates_dataset_datablock_and_thumbnail(hook, scan, rsps, caplog):
    caplog.set_level(logging.DEBUG)
    _login(rsps)
    lookup = _empty_lookup(rsps)
    rsps.post(f"{API}/Datasets", json={"pid": PID},
              match=[matchers.header_matcher({"Authorization": f"Bearer {TOKEN}"})])
    quoted = "20.500.12269%2Fabc-123"
    rsps.get(f"{API}/Datasets/{quoted}/origdatablocks", json=[])
    rsps.post(f"{API}/Datasets/{quoted}/origdatablocks", json={"id": "odb1"})
    rsps.get(f"{API}/Datasets/{quoted}/attachments", json=[])
    rsps.post(f"{API}/Datasets/{quoted}/attachments", json={"id": "att1"})

    assert _ingest(hook, scan) == PID

    where = json.loads(parse_qs(urlsplit(lookup.calls[0].request.url).query)["filter"][0])["where"]
    assert where == {"sourceFolder": "/data/raw/ALS-12345_auser", "datasetName": "20240101_120000_phantom"}
    body = json.loads(_posts(rsps, "/Datasets")[0].request.body)
    assert body["type"] == "raw" and body["dataFormat"] == "DX"
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

    block = json.loads(_posts(rsps, "/origdatablocks")[0].request.body)
    assert block["dataFileList"][0]["path"] == STORED and block["size"] == scan.stat().st_size
    att = json.loads(_posts(rsps, "/attachments")[0].request.body)
    assert att["caption"] == "raw image" and att["ownerGroup"] == "ALS-12345"
    prefix = "data:image/png;base64,"
    assert att["thumbnail"].startswith(prefix)
    from PIL import Image

    img = Image.open(io.BytesIO(base64.b64decode(att["thumbnail"][len(prefix):])))
    assert img.format == "PNG" and img.size == (32, 2)

    # no secret in logs, and the token never travels in a URL
    assert PASSWORD not in caplog.text and TOKEN not in caplog.text
    assert all(TOKEN not in c.request.url for c in rsps.calls)


def test_rerun_finds_everything_and_creates_nothing(hook, scan, rsps):
    _login(rsps)
    rsps.get(f"{API}/Datasets", json=[{"pid": PID, "datasetName": "20240101_120000_phantom"}])
    quoted = "20.500.12269%2Fabc-123"
    rsps.get(f"{API}/Datasets/{quoted}/origdatablocks", json=[{"dataFileList": [{"path": STORED}]}])
    rsps.get(f"{API}/Datasets/{quoted}/attachments", json=[{"caption": "raw image"}])
    assert _ingest(hook, scan) == PID
    assert [c.request.method for c in rsps.calls] == ["POST", "GET", "GET", "GET"]  # login + three lookups


def test_lookup_by_given_pid(hook, scan, rsps):
    _login(rsps)
    rsps.get(f"{API}/Datasets/given-pid", status=404, json={"error": "not found"})
    rsps.post(f"{API}/Datasets", json={"pid": "given-pid"})
    rsps.get(f"{API}/Datasets/given-pid/origdatablocks", json=[])
    rsps.post(f"{API}/Datasets/given-pid/origdatablocks", json={})
    rsps.get(f"{API}/Datasets/given-pid/attachments", json=[])
    rsps.post(f"{API}/Datasets/given-pid/attachments", json={})
    assert _ingest(hook, scan, pid="given-pid") == "given-pid"
    assert json.loads(_posts(rsps, "/Datasets")[0].request.body)["pid"] == "given-pid"


def test_email_and_proposal_fallbacks(hook, tmp_path, rsps):
    scan = synthetic.write_scan(tmp_path / "20240101_120000_x.h5", n_angles=4, size=16, n_slices=1,
                                proposal="None", experimenter_email="None")
    _login(rsps)
    _empty_lookup(rsps)
    rsps.post(f"{API}/Datasets", json={"pid": "p1"})
    rsps.get(f"{API}/Datasets/p1/origdatablocks", json=[])
    rsps.post(f"{API}/Datasets/p1/origdatablocks", json={})
    rsps.get(f"{API}/Datasets/p1/attachments", json=[])
    rsps.post(f"{API}/Datasets/p1/attachments", json={})
    ingest.ingest_scan(hook, scan, owner_group_fallback="8.3.2")
    body = json.loads(_posts(rsps, "/Datasets")[0].request.body)
    assert body["ownerGroup"] == "8.3.2" and "proposalId" not in body
    assert body["contactEmail"] == ingest.UNKNOWN_EMAIL
    assert body["sourceFolder"] == str(tmp_path)  # no roots given: the path as read


# ------------------------------------------------------------------------------------------------ login
def test_older_users_login_shape(hook, scan, rsps):
    rsps.post(f"{API}/auth/login", status=404, json={"error": "Cannot POST"})
    rsps.post(f"{API}/Users/login", json={"id": TOKEN, "ttl": 1209600})
    rsps.get(f"{API}/Datasets", json=[], match=[matchers.header_matcher({"Authorization": f"Bearer {TOKEN}"})])
    assert hook.get_conn().find_datasets({"x": 1}) == []


def test_login_refused_is_an_auth_error_without_the_password(hook, rsps):
    rsps.post(f"{API}/auth/login", status=401, json={"message": "Unauthorized"})
    with pytest.raises(SciCatAuthError, match="ingestor") as err:
        hook.get_conn()
    assert PASSWORD not in str(err.value)
    ok, message = hook.test_connection()
    assert not ok and "refused" in message


def test_malformed_login_response(hook, rsps):
    rsps.post(f"{API}/auth/login", body="<html>proxy error page</html>", status=200)
    with pytest.raises(SciCatResponseError, match="without a token"):
        hook.get_conn()


def test_login_retries_on_5xx(hook, rsps):
    rsps.post(f"{API}/auth/login", status=503)
    _login(rsps)
    client = hook.get_conn()
    assert len(rsps.calls) == 2 and client._token == TOKEN
    assert TOKEN not in repr(client)
    assert hook.test_connection() == (True, f"logged in to {API} as ingestor")


def test_expired_token_logs_in_again_once(hook, rsps):
    _login(rsps)
    rsps.get(f"{API}/Datasets", status=401)
    rsps.get(f"{API}/Datasets", json=[{"pid": "p"}])
    assert hook.get_conn().find_datasets({}) == [{"pid": "p"}]
    assert [c.request.url.split("?")[0].rsplit("/", 1)[-1] for c in rsps.calls] == [
        "login", "Datasets", "login", "Datasets"]


def test_get_retries_5xx_then_gives_up_with_the_status(hook, rsps):
    _login(rsps)
    rsps.get(f"{API}/Datasets", status=500, body="Internal Server Error")
    with pytest.raises(SciCatHTTPError, match="500") as err:
        hook.get_conn().find_datasets({})
    assert err.value.status == 500
    assert len([c for c in rsps.calls if c.request.method == "GET"]) == 4  # 1 + max_retries


def test_hook_needs_credentials(monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONN_SCICAT_NOPW", json.dumps({"conn_type": "scicat", "host": API,
                                                                "login": "ingestor"}))
    with pytest.raises(ValueError, match="password"):
        SciCatHook("scicat_nopw").get_conn()


def test_host_without_scheme_becomes_https(monkeypatch, rsps):
    monkeypatch.setenv("AIRFLOW_CONN_SCICAT_BARE", json.dumps(
        {"conn_type": "scicat", "host": "scicat.example.org", "schema": "api/v3", "login": "u", "password": "pw"}))
    rsps.post("https://scicat.example.org/api/v3/auth/login", json={"access_token": "t"})
    assert SciCatHook("scicat_bare").get_conn().base_url == "https://scicat.example.org/api/v3"


# -------------------------------------------------------------------------------- failures during ingest
def test_500_on_create_but_stored_anyway_is_found_not_duplicated(hook, scan, rsps):
    _login(rsps)
    rsps.get(f"{API}/Datasets", json=[])
    rsps.post(f"{API}/Datasets", status=500, body="timeout writing index")
    rsps.get(f"{API}/Datasets", json=[{"pid": "p2"}])  # the server had stored it
    rsps.get(f"{API}/Datasets/p2/origdatablocks", json=[])
    rsps.post(f"{API}/Datasets/p2/origdatablocks", json={})
    rsps.get(f"{API}/Datasets/p2/attachments", json=[])
    rsps.post(f"{API}/Datasets/p2/attachments", json={})
    assert _ingest(hook, scan) == "p2"
    assert len(_posts(rsps, "/Datasets")) == 1


def test_create_keeps_failing_says_nothing_exists(hook, scan, rsps):
    _login(rsps)
    _empty_lookup(rsps)
    rsps.post(f"{API}/Datasets", status=502)
    with pytest.raises(ingest.SciCatIngestError, match="nothing exists in SciCat") as err:
        _ingest(hook, scan, create_attempts=2)
    assert err.value.state == {"dataset": None}
    assert isinstance(err.value, ingest.INGEST_ERRORS)
    assert len(_posts(rsps, "/Datasets")) == 2


def test_create_rejected_4xx_is_not_retried(hook, scan, rsps):
    _login(rsps)
    _empty_lookup(rsps)
    rsps.post(f"{API}/Datasets", status=400, json={"message": ["contactEmail must be an email"]})
    with pytest.raises(SciCatHTTPError, match="contactEmail"):
        _ingest(hook, scan)
    assert len(_posts(rsps, "/Datasets")) == 1


def test_malformed_create_response_then_lookup(hook, scan, rsps):
    _login(rsps)
    _empty_lookup(rsps)
    rsps.post(f"{API}/Datasets", json={"unexpected": True})  # 200 without pid
    with pytest.raises(ingest.SciCatIngestError, match="was not created"):
        _ingest(hook, scan, create_attempts=1)


def test_malformed_lookup_response(hook, scan, rsps):
    _login(rsps)
    rsps.get(f"{API}/Datasets", body="<html>maintenance</html>", status=200)
    with pytest.raises(SciCatResponseError, match="non-JSON"):
        _ingest(hook, scan)
    assert not _posts(rsps, "/Datasets")


def test_half_created_dataset_is_reported_exactly_and_a_rerun_completes_it(hook, scan, rsps):
    _login(rsps)
    _empty_lookup(rsps)
    rsps.post(f"{API}/Datasets", json={"pid": "p3"})
    rsps.get(f"{API}/Datasets/p3/origdatablocks", json=[])
    rsps.post(f"{API}/Datasets/p3/origdatablocks", status=500, body="db down")
    with pytest.raises(ingest.SciCatIngestError) as err:
        _ingest(hook, scan)
    msg = str(err.value)
    assert "dataset p3 exists (created by this run)" in msg
    assert "origdatablock missing" in msg and "thumbnail not checked" in msg and "Rerunning" in msg
    assert err.value.state["dataset"] == "p3"
    assert not _posts(rsps, "/attachments")

    rsps.reset()
    rsps.post(f"{API}/auth/login", json={"access_token": TOKEN})
    rsps.get(f"{API}/Datasets", json=[{"pid": "p3"}])
    rsps.get(f"{API}/Datasets/p3/origdatablocks", json=[])
    rsps.post(f"{API}/Datasets/p3/origdatablocks", json={})
    rsps.get(f"{API}/Datasets/p3/attachments", json=[])
    rsps.post(f"{API}/Datasets/p3/attachments", json={})
    assert _ingest(SciCatHook("scicat_test", backoff=0), scan) == "p3"
    assert not _posts(rsps, "/Datasets") and len(_posts(rsps, "/origdatablocks")) == 1


# --------------------------------------------------------------------------- bad input: no request at all
@pytest.mark.parametrize("case", ["missing", "corrupt", "no_data", "outside_root", "traversal", "one_root"])
def test_bad_input_fails_before_any_request(hook, scan, tmp_path, rsps, case):
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
    assert len(rsps.calls) == 0


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


def test_client_rejects_non_url():
    with pytest.raises(ValueError, match="URL"):
        SciCatClient("scicat.test", "u", "p")
