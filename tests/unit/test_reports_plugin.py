"""The reports view serves what is under the reports root, and nothing else."""

from __future__ import annotations

import importlib.util
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


def test_plugin_registers_the_app_and_a_browse_link():
    spec = importlib.util.spec_from_file_location("facility_reports", REPO / "plugins" / "facility_reports.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    plugin = module.FacilityReportsPlugin
    assert plugin.fastapi_apps[0]["url_prefix"] == "/facility-reports"
    assert plugin.external_views[0]["href"] == "/facility-reports/"
