"""The reports view serves what is under the reports root, and nothing else, and only to a user Airflow's own auth
manager lets in; its index pages and filters by kind, night and date.

The app is mounted the way the api-server mounts plugin apps (Airflow's ``init_plugins`` loading this checkout's
plugins folder, with the auth manager and the api-server's middlewares), and the tokens are real ones issued by
Airflow's simple auth manager (``POST /auth/token``, or its ``generate_jwt`` for the expired and role-less cases).
"""

from __future__ import annotations

import importlib.util
import os
import re
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import jwt
import pytest
from fastapi.testclient import TestClient

from facility_data.ui.app import create_app

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def api_server(airflow_db):
    """A host app built with the api-server's own steps (``airflow.api_fastapi.app.create_app`` without the core API
    routes, UI views and DAG bag, which double the build time): the plugins, the auth manager with its /auth
    routes, the middlewares (the JWT refresh reads the ``_token`` cookie)."""
    from airflow.api_fastapi.app import init_auth_manager, init_plugins
    from airflow.api_fastapi.core_api.app import init_middlewares
    from fastapi import FastAPI

    host = FastAPI()
    init_plugins(host)
    init_auth_manager(host)
    init_middlewares(host)
    return host


@pytest.fixture(scope="module")
def token(api_server) -> str:
    """The admin's JWT, issued as the UI and API clients get one: POST /auth/token with the generated password."""
    from airflow.api_fastapi.auth.managers.simple.simple_auth_manager import SimpleAuthManager

    password = SimpleAuthManager.get_passwords()["admin"]
    r = TestClient(api_server).post("/auth/token", json={"username": "admin", "password": password})
    assert r.status_code == 201, r.text
    return r.json()["access_token"]


def client_for(root: Path, token: str) -> TestClient:
    return TestClient(create_app(root), headers={"Authorization": f"Bearer {token}"})


def make_root(tmp_path) -> Path:
    root = tmp_path / "reports"
    (root / "rubin").mkdir(parents=True)
    (root / "rubin" / "20261117.html").write_text("<h1>night 20261117</h1>")
    (root / "rubin" / "secret.cfg").write_text("password=x")
    (tmp_path / "outside.html").write_text("outside")
    return root


def make_client(tmp_path, token):
    return client_for(make_root(tmp_path), token)


@pytest.fixture
def mounted(api_server, tmp_path, monkeypatch):
    """A client of the api-server host, whose plugin serves a fresh reports root ($FACILITY_REPORTS)."""
    monkeypatch.setenv("FACILITY_REPORTS", str(make_root(tmp_path)))
    return TestClient(api_server, follow_redirects=False)


INDEX, FILE = "/facility-reports/", "/facility-reports/file/rubin/20261117.html"


def test_no_login_is_refused_and_a_browser_sent_to_the_login_page(mounted):
    for url in (INDEX, FILE, INDEX + "?kind=prune", "/facility-reports/file/rubin/secret.cfg"):
        r = mounted.get(url)
        assert r.status_code == 401 and "20261117" not in r.text, url
    browser = mounted.get(FILE, headers={"Accept": "text/html,application/xhtml+xml"})
    assert browser.status_code == 303 and "20261117.html" not in browser.text
    assert browser.headers["location"].startswith("/auth/login?next=")
    assert "facility-reports%2Ffile%2Frubin%2F20261117.html" in browser.headers["location"]


def test_bad_expired_or_unprivileged_tokens_are_refused(mounted, token):
    from airflow.api_fastapi.app import get_auth_manager
    from airflow.api_fastapi.auth.managers.simple.user import SimpleAuthManagerUser

    am = get_auth_manager()
    header, claims, signature = token.split(".")
    forged_claims = jwt.decode(token, options={"verify_signature": False})
    cases = {  # the token, the status and detail Airflow's own check gives it
        "tampered signature": (f"{header}.{claims}.{signature[::-1]}", 403, "Invalid JWT token"),
        "signed with another key": (jwt.encode(forged_claims, "not-the-api-secret-" * 4, algorithm="HS512"), 403,
                                    "Invalid JWT token"),
        "not a JWT": ("admin", 403, "Invalid JWT token"),
        "expired an hour ago": (am.generate_jwt(SimpleAuthManagerUser(username="admin", role="admin"),
                                                expiration_time_in_seconds=-3600), 401, "Token Expired"),
        "valid, but no role": (am.generate_jwt(SimpleAuthManagerUser(username="nobody", role=None)), 403,
                               "Forbidden"),
    }
    for name, (bad, status, detail) in cases.items():
        for url in (INDEX, FILE):
            by_header = mounted.get(url, headers={"Authorization": f"Bearer {bad}"})
            assert (by_header.status_code, by_header.json()) == (status, {"detail": detail}), (name, url)
            mounted.cookies.clear()
            by_cookie = mounted.get(url, cookies={"_token": bad})
            assert by_cookie.status_code in (401, 403) and "20261117" not in by_cookie.text, (name, url)
    r = mounted.get(INDEX, headers={"Authorization": f"Basic {token}"})  # a token, but not as a bearer
    assert r.status_code == 401


def test_a_login_by_header_or_cookie_serves_the_index_and_the_file(mounted, token):
    for auth in ({"headers": {"Authorization": f"Bearer {token}"}}, {"cookies": {"_token": token}}):
        mounted.cookies.clear()
        index = mounted.get(INDEX, **auth)
        assert index.status_code == 200 and "rubin/20261117.html" in index.text and "secret.cfg" not in index.text
        assert mounted.get(FILE, **auth).text == "<h1>night 20261117</h1>"


def test_no_response_shows_a_server_path(mounted, token, tmp_path):
    good = {"Authorization": f"Bearer {token}"}
    seen = []
    for headers in ({}, good, {"Authorization": "Bearer x"}):
        for url in (INDEX, FILE, INDEX + "?night=2026111x&page=0", INDEX + "?kind=rubin",
                    "/facility-reports/file/rubin/secret.cfg", "/facility-reports/file/../outside.html",
                    "/facility-reports/file/nope.html", "/facility-reports/nope"):
            r = mounted.get(url, headers=headers)
            seen.append(r.text + repr(dict(r.headers)))
    assert any("rubin/20261117.html" in s for s in seen)  # the index was served, with relative names
    for path in {str(tmp_path), str(tmp_path.resolve()), str(Path(os.environ["FACILITY_REPORTS"]).resolve())}:
        assert not any(path in s for s in seen), path


def test_no_public_api_docs(mounted, token):
    for headers in ({}, {"Authorization": f"Bearer {token}"}):
        for url in ("docs", "redoc", "openapi.json", "docs/oauth2-redirect"):
            r = mounted.get("/facility-reports/" + url, headers=headers)
            assert r.status_code == 404 and "openapi" not in r.text.lower(), url


def test_refused_when_airflow_authentication_cannot_be_loaded(tmp_path, token, monkeypatch):
    from airflow.api_fastapi import app as api_app

    client = make_client(tmp_path, token)
    assert client.get("/").status_code == 200
    with monkeypatch.context() as m:  # the security module cannot be imported
        m.setitem(sys.modules, "airflow.api_fastapi.core_api.security", None)
        for url in ("/", "/file/rubin/20261117.html"):
            r = client.get(url)
            assert r.status_code == 503 and "not served" in r.text and "20261117" not in r.text
    with monkeypatch.context() as m:  # the app is mounted outside an api-server: no auth manager initialised
        m.setattr(api_app._AuthManagerState, "instance", None)
        r = client.get("/file/rubin/20261117.html")
        assert r.status_code == 503 and "20261117" not in r.text
    assert client.get("/").status_code == 200


def test_index_lists_reports_and_serves_them(tmp_path, token):
    client = make_client(tmp_path, token)
    index = client.get("/").text
    assert "rubin/20261117.html" in index and "secret.cfg" not in index
    assert client.get("/file/rubin/20261117.html").text == "<h1>night 20261117</h1>"


def test_nothing_outside_the_root_or_of_other_types(tmp_path, token):
    client = make_client(tmp_path, token)
    assert client.get("/file/rubin/secret.cfg").status_code == 404
    assert client.get("/file/../outside.html").status_code == 404
    assert client.get("/file/rubin/%2e%2e/%2e%2e/outside.html").status_code == 404
    assert client.get("/file/rubin/missing.html").status_code == 404
    (tmp_path / "reports" / "rubin" / "link.html").symlink_to(tmp_path / "outside.html")
    (tmp_path / "reports" / "linked").symlink_to(tmp_path, target_is_directory=True)
    index = client.get("/").text
    assert "link.html" not in index and "linked" not in index and "1 of 1 file(s)" in index
    assert client.get("/file/rubin/link.html").status_code == 404


def test_plugin_registers_the_app_and_a_browse_link():
    spec = importlib.util.spec_from_file_location("facility_reports", REPO / "plugins" / "facility_reports.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    plugin = module.FacilityReportsPlugin
    assert plugin.fastapi_apps[0]["url_prefix"] == "/facility-reports"
    assert plugin.external_views[0]["href"] == "/facility-reports/"


def write(path: Path, data: str, days_old: float) -> None:
    path.write_text(data)
    t = time.time() - days_old * 86400
    os.utime(path, (t, t))


def site_reports(tmp_path: Path) -> Path:
    """40 nightly prune audits (json + txt) and a week of hourly reconcile reports: 266 files with real ages."""
    root = tmp_path / "reports"
    prune, rubin = root / "als" / "bl832", root / "rubin_reconcile" / "LSSTCam"
    prune.mkdir(parents=True)
    rubin.mkdir(parents=True)
    for day in range(40):
        for suffix in ("json", "txt"):
            write(prune / f"prune-{day:03d}.{suffix}", "{}", day + 0.5)
    for hour in range(155):
        night = 20261110 + hour % 5
        write(rubin / f"{night}_{hour:04d}.html", f"night {night}", hour / 24)
        if hour % 5 == 0:
            write(rubin / f"states_20261110-20261114_{hour:04d}.png", "png", hour / 24)
    return root


def rows(page: str) -> list[str]:
    return re.findall(r'<tr><td><a href="file/([^"]+)">', page)


def test_index_pages_and_filters_by_kind_night_and_date(tmp_path, token):
    root = site_reports(tmp_path)
    client = client_for(root, token)
    first = client.get("/").text
    assert "266 of 266 file(s) match" in first and len(rows(first)) == 100 and "page 1 of 3" in first
    assert rows(first)[0].startswith("rubin_reconcile/")  # newest first: the reconcile written an hour ago
    assert 'href="?kind=prune"' in first  # a kind is one click away
    third = client.get("/?page=3").text
    assert len(rows(third)) == 66 and "older</a>" not in third and "newer</a>" in third

    prune = client.get("/?kind=prune").text
    names = rows(prune)
    assert len(names) == 80 and all(n.startswith("als/bl832/prune-") for n in names)
    month_ago = (datetime.now(UTC) - timedelta(days=30.5)).date().isoformat()
    audits = rows(client.get(f"/?kind=prune&date={month_ago}").text)
    assert sorted(audits) == ["als/bl832/prune-030.json", "als/bl832/prune-030.txt"]
    assert client.get("/file/" + audits[0]).status_code == 200
    assert len(rows(client.get(f"/?kind=prune&date={month_ago[:7]}").text)) >= 2  # the whole month

    night = rows(client.get("/?kind=rubin_reconcile&night=20261112&per_page=500").text)
    htmls = [n for n in night if n.endswith(".html")]
    assert len(htmls) == 31 and all("/20261112_" in n for n in htmls)  # hours 2, 7, ... 152
    assert len([n for n in night if n.endswith(".png")]) == 31  # each chart covers 20261110-20261114
    assert rows(client.get("/?night=20261109").text) == []
    paged = client.get("/?kind=prune&per_page=30&page=2").text
    assert len(rows(paged)) == 30 and 'href="?kind=prune&amp;page=3&amp;per_page=30"' in paged


def test_bad_index_queries_name_every_field(tmp_path, token):
    client = client_for(site_reports(tmp_path), token)
    r = client.get("/", params={"night": "2026111٧", "date": "2026-02-31", "page": "0", "per_page": "501",
                                "kind": "../x"})
    assert r.status_code == 400
    detail = r.json()["detail"]
    for field in ("kind:", "night:", "date:", "page:", "per_page:"):
        assert field in detail
    assert client.get("/", params={"night": "20261112\n"}).status_code == 400
    assert client.get("/", params={"page": "٣"}).status_code == 400
