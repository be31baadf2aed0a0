"""bl832_recon_nersc and bl832_recon_alcf through the project's operators: SFAPI submit + job sensor through the real
sfapi_client against a local SFAPI server (which runs each batch script here), GlobusComputeOperator on the local
Compute executor, Globus transfers between local endpoints. Success puts verified, group-writable outputs at data832;
a failure stops every later step."""

from __future__ import annotations

import json
import stat

import _als_support as s
import pytest

pytestmark = pytest.mark.dagtest
STEM = "20240101_120000_shell"


@pytest.fixture
def site(airflow_db, tmp_path, monkeypatch):
    root = s.private_site(tmp_path, monkeypatch)
    monkeypatch.setenv("AIRFLOW_VAR_BL832_DECISION_SETTINGS", json.dumps({"nersc": True, "alcf": True}))
    return root


def _raw_on_data832(site, name: str = STEM, content: bytes | None = None) -> str:
    """A scan already on data832 (what bl832_new_file leaves behind); returns its watcher path."""
    path = s.write_scan(site, name, endpoint="data832_raw", subdir="")
    if content is not None:
        (s.endpoint_dir(site, "data832_raw") / s.FOLDER / f"{name}.h5").write_bytes(content)
    return path


def _outputs(site, name: str = STEM) -> tuple:
    scratch = s.endpoint_dir(site, "data832_scratch") / s.FOLDER
    return scratch / f"rec{name}", scratch / f"rec{name}.zarr"


def test_nersc_reconstruction_submits_jobs_and_copies_results_back(site, monkeypatch):
    nersc = s.FakeNERSC().install(monkeypatch)
    watcher_path = _raw_on_data832(site)
    dr = s.dag("bl832_recon_nersc").test(run_conf={"file_path": watcher_path, "is_export_control": False})
    st = s.states(dr)
    assert str(dr.state) == "success", st
    assert len(nersc.scripts) == 2
    assert "python -m facility_data.als.recon" in nersc.scripts[0] and "#SBATCH" in nersc.scripts[0]
    assert "python -m facility_data.als.multiscale" in nersc.scripts[1]
    # the beamline's recon.nersc settings (runtime none: the local job runner runs the commands directly)
    for script in nersc.scripts:
        assert {"#SBATCH --time=0:45:00", "#SBATCH --qos=realtime", "#SBATCH --account=als"} <= set(script.splitlines())
    tiff, zarr = _outputs(site)
    assert len(list(tiff.glob("*.tif*"))) == s.SLICES and (zarr / "zarr.json").exists()
    assert tiff.stat().st_mode & stat.S_IWGRP and zarr.stat().st_mode & stat.S_IWGRP
    # the CFS scratch copy and the data832 copy are both verified against pscratch and recorded
    ledger = s.ledger(site)
    for role in ("nersc_pscratch", "data_scratch", "nersc_scratch"):
        for what in (f"rec{STEM}", f"rec{STEM}.zarr"):
            rec = ledger.copy("bl832", role, f"{s.FOLDER}/{what}")
            assert rec is not None and rec.state == "present", (role, what)
    assert ledger.copy("bl832", "data_scratch", f"{s.FOLDER}/rec{STEM}").checksum == \
        ledger.copy("bl832", "nersc_pscratch", f"{s.FOLDER}/rec{STEM}").checksum


def test_failed_nersc_job_stops_every_later_step(site, monkeypatch):
    nersc = s.FakeNERSC(fail="facility_data.als.recon").install(monkeypatch)
    dr = s.dag("bl832_recon_nersc").test(run_conf={"file_path": _raw_on_data832(site), "is_export_control": False})
    st = s.states(dr)
    assert str(dr.state) == "failed"
    assert st["scan.submit_recon[0]"] == "success" and st["scan.wait_recon[0]"] == "failed"
    for later in ("scan.submit_multires[0]", "scan.wait_multires[0]", "scan.verify_and_record[0]",
                  "scan.copy_tiff_nersc_pscratch_to_data_scratch[0]"):
        assert st[later] == "upstream_failed", later
    assert len(nersc.scripts) == 1  # the multires job was never submitted
    assert s.tree(s.endpoint_dir(site, "data832_scratch")) == []


def test_alcf_reconstruction_runs_through_globus_compute_and_copies_back(site, monkeypatch):
    s.compute_connection(monkeypatch)
    dr = s.dag("bl832_recon_alcf").test(run_conf={"file_path": _raw_on_data832(site), "is_export_control": False})
    st = s.states(dr)
    assert str(dr.state) == "success", st
    assert (s.endpoint_dir(site, "alcf832_raw") / s.FOLDER / f"{STEM}.h5").exists()
    tiff, zarr = _outputs(site)
    assert len(list(tiff.glob("*.tif*"))) == s.SLICES and (zarr / "zarr.json").exists()
    rec = s.ledger(site).copy("bl832", "data_scratch", f"{s.FOLDER}/rec{STEM}.zarr")
    assert rec is not None and rec.checksum.startswith("tree-sha256:")


def test_failed_compute_function_stops_every_later_step(site, monkeypatch):
    s.compute_connection(monkeypatch)
    from facility_data.als.paths import HDF5_SIGNATURE

    # passes the signature check (so it is staged), then fails in the function that reads it at ALCF
    watcher_path = _raw_on_data832(site, content=HDF5_SIGNATURE + b" but not an HDF5 file")
    dr = s.dag("bl832_recon_alcf").test(run_conf={"file_path": watcher_path, "is_export_control": False})
    st = s.states(dr)
    assert str(dr.state) == "failed"
    assert st["scan.stage_raw_to_alcf[0]"] == "success" and st["scan.reconstruct[0]"] == "failed"
    for later in ("scan.multiscale[0]", "scan.copy_tiff_alcf_scratch_to_data_scratch[0]",
                  "scan.verify_and_record[0]"):
        assert st[later] == "upstream_failed", later
    assert s.tree(s.endpoint_dir(site, "data832_scratch")) == []



def _deferred_tasks(records) -> set[str]:
    """The tasks whose dag.test() run deferred and ran their trigger inline, from dag.test()'s own log lines."""
    out, current = set(), None
    for r in records:
        msg = r.getMessage()
        if msg.startswith("[DAG TEST] starting task_id="):
            current = msg.split("task_id=")[1].split()[0]
        elif msg == "[DAG TEST] running trigger in line" and current:
            out.add(current)
    return out


def test_nersc_job_waits_defer_by_default_and_resume_on_the_trigger_event(site, monkeypatch, caplog):
    """With [operators] default_deferrable (as the local site and docker-compose set it) the job sensors defer to
    SFAPIJobTrigger; dag.test() runs the trigger inline and the sensors resume on its event."""
    monkeypatch.setenv("AIRFLOW__OPERATORS__DEFAULT_DEFERRABLE", "True")
    nersc = s.FakeNERSC().install(monkeypatch)
    d = s.dag("bl832_recon_nersc")
    assert d.get_task("scan.wait_recon").deferrable and d.get_task("scan.wait_multires").deferrable
    with caplog.at_level("INFO", logger="airflow.sdk.definitions.dag"):
        dr = d.test(run_conf={"file_path": _raw_on_data832(site), "is_export_control": False})
    assert str(dr.state) == "success", s.states(dr)
    assert {"scan.wait_recon", "scan.wait_multires"} <= _deferred_tasks(caplog.records)
    assert len(nersc.scripts) == 2 and nersc.server.cancelled == []


def test_nersc_job_waits_poke_when_deferrable_is_off(site, monkeypatch, caplog):
    monkeypatch.setenv("AIRFLOW__OPERATORS__DEFAULT_DEFERRABLE", "False")
    d = s.dag("bl832_recon_nersc")
    assert not d.get_task("scan.wait_recon").deferrable


def test_send_to_nersc_false_is_not_announced_and_a_manual_nersc_recon_is_refused(site, monkeypatch):
    nersc = s.FakeNERSC().install(monkeypatch)
    before = len(s.asset_events("x-als://bl832/recon/nersc"))
    dr = s.dag("bl832_new_file").test(run_conf={"file_path": s.write_scan(site, STEM), "is_export_control": False,
                                                "send_to_nersc": False})
    st = s.states(dr)
    assert str(dr.state) == "success", st
    assert st["copy_data_to_nersc"] == "skipped" and st["announce_nersc"] == "skipped"
    assert st["announce_alcf"] == "success"
    assert len(s.asset_events("x-als://bl832/recon/nersc")) == before

    watcher_path = f"/global/raw/{s.FOLDER}/{STEM}.h5"
    dr = s.dag("bl832_recon_nersc").test(run_conf={"file_path": watcher_path, "is_export_control": False,
                                                   "send_to_nersc": False})
    st = s.states(dr)
    assert str(dr.state) == "failed" and st["collect"] == "failed", st
    assert nersc.scripts == [] and s.tree(s.endpoint_dir(site, "nersc832")) == []
