"""BL 7.0.1.2 and 7.3.3: the same factory, configured as data-movement beamlines (data -> NERSC, SciCat, ledger)."""

from __future__ import annotations

import _als_support as s
import pytest

pytestmark = pytest.mark.dagtest


@pytest.mark.parametrize(("beamline", "data", "nersc"), [("bl733", "data733", "nersc733")])
def test_data_movement_beamline_moves_and_records(airflow_db, tmp_path, monkeypatch, beamline, data, nersc):
    site = tmp_path / "site"
    site.mkdir()
    monkeypatch.setenv("FACILITY_SITE", str(site))
    watcher_path = s.write_scan(site, endpoint=data)
    dr = s.dag(f"{beamline}_new_file").test(run_conf={"file_path": watcher_path})
    st = s.states(dr)
    assert str(dr.state) == "success", st
    assert set(st) == {"validate", "record_arrival", "ingest_scicat", "nersc_gate", "copy_data_to_nersc",
                       "verify_nersc_copy"}
    rel = watcher_path.removeprefix("/global/")
    assert (s.endpoint_dir(site, nersc) / rel).read_bytes() == (s.endpoint_dir(site, data) / rel).read_bytes()
    ledger = s.ledger(site)
    key = rel.removeprefix("raw/")
    assert ledger.copy(beamline, "data", key).state == ledger.copy(beamline, "nersc", key).state == "present"


def test_every_configured_dag_exists():
    ids = s.dag_ids()
    assert {"bl832_new_file", "bl832_recon_nersc", "bl832_recon_alcf", "bl832_recon_local", "bl832_prune",
            "bl7012_new_file", "bl733_new_file"} <= ids
    assert not any(i.startswith(("bl7012_recon_", "bl733_recon_")) for i in ids)  # reconcile DAGs do exist
