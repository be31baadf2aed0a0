"""The full BL 8.3.2 chain on the embedded default: new file -> asset event -> local reconstruction -> prune dry run.

Local endpoints under a private FACILITY_SITE, a tiny synthetic scan, the real local reconstruction and OME-Zarr.
Stated tolerance (48-pixel, 4-slice scan, 61 angles, photon noise): inside the reconstruction circle the volume
correlates with the phantom at >= 0.85 (measured about 0.93); the full-size accuracy is tested by the science tests.
"""

from __future__ import annotations

import json
import stat
from pathlib import PurePosixPath

import _als_support as s
import numpy as np
import pytest

pytestmark = pytest.mark.dagtest
MIN_CORRELATION = 0.85


@pytest.fixture
def site(airflow_db, tmp_path, monkeypatch):
    root = s.private_site(tmp_path, monkeypatch)
    monkeypatch.delenv("AIRFLOW_VAR_BL832_DECISION_SETTINGS", raising=False)
    return root


def _inside(size: int, margin: float = 3) -> np.ndarray:
    yy, xx = np.mgrid[:size, :size] - (size - 1) / 2
    return np.hypot(yy, xx) < size / 2 - margin


def test_bl832_chain_on_the_embedded_default(site, scicat_default):
    import tifffile
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader

    from facility_data.demo import als_synthetic as synthetic

    watcher_path = s.write_scan(site)
    rel = watcher_path.removeprefix("/global/")
    before = len(s.asset_events("x-als://bl832/recon/local"))

    dr = s.dag("bl832_new_file").test(run_conf={"file_path": watcher_path, "is_export_control": False})
    assert str(dr.state) == "success"
    st = s.states(dr)
    assert st["copy_spot_to_data"] == st["copy_data_to_nersc"] == st["verify_nersc_copy"] == "success"
    assert st["ingest_scicat"] == "success"
    assert st["announce_local"] == "success"
    assert st["announce_nersc"] == st["announce_alcf"] == "skipped"  # default decision settings: local only

    # The same bytes at spot832, data832 and NERSC, recorded in the ledger.
    spot = s.endpoint_dir(site, "spot832") / rel
    data = s.endpoint_dir(site, "data832") / rel
    nersc = s.endpoint_dir(site, "nersc832") / rel
    assert spot.read_bytes() == data.read_bytes() == nersc.read_bytes()
    ledger = s.ledger(site)
    key = rel.removeprefix("raw/")
    for role in ("spot", "data", "nersc"):
        rec = ledger.copy("bl832", role, key)
        assert rec is not None and rec.state == "present" and rec.size == spot.stat().st_size
    assert ledger.export_controlled("bl832", rel) is False
    # Catalogued in SciCat (the local stand-in), and nothing to alert about.
    stored = PurePosixPath(watcher_path.replace("/global/raw/", "/data/raw/"))
    assert [d for d in scicat_default.datasets.values()
            if (d["sourceFolder"], d["datasetName"]) == (str(stored.parent), stored.stem)]
    assert not (site / "alerts.jsonl").exists()

    # The asset event that starts bl832_recon_local carries the file path and sizes.
    events = s.asset_events("x-als://bl832/recon/local")
    assert len(events) == before + 1
    extra = events[-1]
    assert extra["file_path"] == watcher_path and extra["export_controlled"] is False
    assert extra["sizes"] == {"spot": spot.stat().st_size, "data": spot.stat().st_size, "nersc": spot.stat().st_size}

    # The consumer, given that event's content as its conf (the scheduler path is shown by `make demo`).
    dr = s.dag("bl832_recon_local").test(run_conf={"file_path": extra["file_path"],
                                                   "is_export_control": extra["export_controlled"]})
    assert str(dr.state) == "success", s.states(dr)
    scratch = s.endpoint_dir(site, "data832_scratch") / s.FOLDER
    stem = "20240101_120000_shell"
    tiffs = sorted((scratch / f"rec{stem}").glob("*.tif*"))
    assert len(tiffs) == s.SLICES
    volume = np.stack([tifffile.imread(p) for p in tiffs])
    truth = synthetic.phantom(s.SIZE, s.SLICES)
    m = _inside(s.SIZE)
    corr = np.corrcoef(volume[:, m].ravel(), truth[:, m].ravel())[0, 1]
    assert corr >= MIN_CORRELATION, corr

    nodes = list(Reader(parse_url(str(scratch / f"rec{stem}.zarr")))())
    image = nodes[0]
    shapes = [tuple(a.shape) for a in image.data]
    assert shapes[0] == (s.SLICES, s.SIZE, s.SIZE) and len(shapes) >= 2
    assert np.allclose(np.asarray(image.data[0]), volume)
    pixel_um = synthetic.DEFAULT_METADATA["pixel_size_mm"] * 1000
    scales = [t[0]["scale"] for t in image.metadata["coordinateTransformations"]]
    assert scales[0] == pytest.approx([pixel_um] * 3)
    assert [a["name"] for a in image.metadata["axes"]] == ["z", "y", "x"]

    for path in (scratch, scratch / f"rec{stem}", scratch / f"rec{stem}.zarr", tiffs[0]):
        assert path.stat().st_mode & stat.S_IWGRP, f"{path} is not group-writable"
    for what in (f"rec{stem}", f"rec{stem}.zarr"):
        rec = ledger.copy("bl832", "data_scratch", f"{s.FOLDER}/{what}")
        assert rec is not None and rec.checksum.startswith("tree-sha256:")

    # A manual prune run is a dry run by default: a report, nothing deleted (all copies are new).
    dr = s.dag("bl832_prune").test()
    assert str(dr.state) == "success"
    reports = sorted((site / "reports" / "als" / "bl832").glob("prune-*-dry-run.json"))
    assert len(reports) == 1
    doc = json.loads(reports[0].read_text())
    assert doc["dry_run"] is True and doc["counts"]["deleted"] == doc["counts"]["would_delete"] == 0
    assert {d["location"] for d in doc["decisions"]} >= {"spot", "data", "data_scratch"}
    assert all("younger than" in d["reason"] for d in doc["decisions"])
    assert spot.exists() and (scratch / f"rec{stem}.zarr").exists()


def test_decision_settings_variable_switches_targets_at_run_time(site, monkeypatch):
    monkeypatch.setenv("AIRFLOW_VAR_BL832_DECISION_SETTINGS", json.dumps({"local": False, "alcf": True}))
    before = {t: len(s.asset_events(f"x-als://bl832/recon/{t}")) for t in ("local", "alcf")}
    dr = s.dag("bl832_new_file").test(run_conf={"file_path": s.write_scan(site, "20240101_130000_var"),
                                                "send_to_nersc": False})
    st = s.states(dr)
    assert str(dr.state) == "success"
    assert st["announce_local"] == "skipped" and st["announce_alcf"] == "success"
    assert st["copy_data_to_nersc"] == "skipped"  # send_to_nersc: false
    assert s.tree(s.endpoint_dir(site, "nersc832")) == []
    assert len(s.asset_events("x-als://bl832/recon/local")) == before["local"]
    assert len(s.asset_events("x-als://bl832/recon/alcf")) == before["alcf"] + 1
