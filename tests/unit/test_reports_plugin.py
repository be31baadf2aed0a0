"""The reports view serves what is under the reports root, and nothing else; its index pages and filters by kind,
night and date."""

from __future__ import annotations

import importlib.util
import os
import re
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from fastapi.testclient import TestClient

from facility_data.reports_app import create_app

REPO = Path(__file__).resolve().parents[2]


def make_client(tmp_path):
    root = tmp_path / "reports"
    (root / "rubin").mkdir(parents=True)
    (root / "rubin" / "20261117.html").write_text("<h1>night 20261117</h1>")
    (root / "rubin" / "secret.cfg").write_text("password=x")
    (tmp_path / "outside.html").write_text("outside")
    return TestClient(create_app(root))


def test_index_lists_reports_and_serves_them(tmp_path):
    client = make_client(tmp_path)
    index = client.get("/").text
    assert "rubin/20261117.html" in index and "secret.cfg" not in index
    assert client.get("/file/rubin/20261117.html").text == "<h1>night 20261117</h1>"


def test_nothing_outside_the_root_or_of_other_types(tmp_path):
    client = make_client(tmp_path)
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


def test_index_pages_and_filters_by_kind_night_and_date(tmp_path):
    root = site_reports(tmp_path)
    client = TestClient(create_app(root))
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


def test_bad_index_queries_name_every_field(tmp_path):
    client = TestClient(create_app(site_reports(tmp_path)))
    r = client.get("/", params={"night": "2026111٧", "date": "2026-02-31", "page": "0", "per_page": "501",
                                "kind": "../x"})
    assert r.status_code == 400
    detail = r.json()["detail"]
    for field in ("kind:", "night:", "date:", "page:", "per_page:"):
        assert field in detail
    assert client.get("/", params={"night": "20261112\n"}).status_code == 400
    assert client.get("/", params={"page": "٣"}).status_code == 400
