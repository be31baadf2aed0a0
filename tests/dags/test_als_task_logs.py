"""ALS task logs (issue 17): a task whose return value is a dict or list (scan records, job arguments, reports)
logs one summary line of its own instead of Airflow's "Returned value was: {...}", and an expected refusal is one
ERROR line naming the item and the rule, with a short traceback (no domain frames, no chained cause) and no retry.

The project's own lines go through the standard logging module (read with ``caplog``); the task runner's lines
(return values, the failure traceback) through structlog to the process's stdout (read with ``capfd``)."""

from __future__ import annotations

import re

import _als_support as s
import pytest

from facility_data.als.dags import build_all


def _returns_a_collection(task) -> bool:
    fn = getattr(task, "python_callable", None)
    ret = str(getattr(fn, "__annotations__", {}).get("return", ""))
    return ret.startswith(("dict", "list"))


def _shows_return_value(task) -> bool:
    if hasattr(task, "partial_kwargs"):  # a mapped task keeps its arguments here
        return task.partial_kwargs.get("show_return_value_in_logs", True)
    return task.show_return_value_in_logs


def test_every_als_task_returning_a_dict_or_list_keeps_it_out_of_the_log():
    tasks = [(dag_id, t) for dag_id, d in build_all().items() for t in d.tasks if _returns_a_collection(t)]
    ids = {f"{dag_id}.{t.task_id}" for dag_id, t in tasks}
    # the tasks with the largest values are all among them
    assert {"bl832_new_file.validate", "bl832_recon_nersc.scan.prepare", "bl832_recon_local.reconstruct",
            "bl832_reconcile.reconcile", "bl832_prune.sweep", "bl832_recon_alcf.collect"} <= ids
    shown = sorted(f"{dag_id}.{t.task_id}" for dag_id, t in tasks if _shows_return_value(t))
    assert shown == []


@pytest.mark.dagtest
def test_new_file_logs_one_line_per_task_and_no_returned_values(airflow_db, tmp_path, monkeypatch, capfd, caplog):
    site = s.private_site(tmp_path, monkeypatch)
    watcher_path = s.write_scan(site)
    rel = watcher_path.removeprefix("/global/")
    capfd.readouterr()
    dr = s.dag("bl832_new_file").test(run_conf={"file_path": watcher_path})
    out, logs = capfd.readouterr().out, caplog.text
    assert str(dr.state) == "success", s.states(dr)
    assert re.search(r"Returned value was: [{\[]", out) is None  # no dict or list (nersc_gate's True is fine)
    assert out.count("Returned value not shown") >= 6  # validate, 2 verifies, scicat, raw_copies, announce_local
    # what happened to the file, one line each: found, copied (bytes, seconds, rate), verified, announced
    assert re.search(rf"new scan {re.escape(rel)} .*export_controlled=False", logs)
    assert re.search(rf"local transfer spot832:{re.escape(rel)} -> data832_raw:\S+: 1 files, \d+ B in [\d.]+ s "
                     r"\([\d.]+ MB/s\)", logs)
    assert re.search(rf"verified raw of {re.escape(rel)}: spot832:\S+ == data832_raw:\S+ \(\d+ B, sha256:", logs)
    assert re.search(rf"{re.escape(rel)}: raw copies verified at spot \(\d+ B\), data \(\d+ B\)", logs)
    assert re.search(rf"announced {re.escape(rel)} to local reconstruction \(export_controlled=False", logs)
    assert "'paths': {" not in logs  # no scan record dumped by a log line of ours either


@pytest.mark.dagtest
def test_a_refusal_is_one_error_line_and_a_short_unchained_traceback(airflow_db, tmp_path, monkeypatch, capfd,
                                                                     caplog):
    site = s.private_site(tmp_path, monkeypatch)
    monkeypatch.setenv("AIRFLOW_VAR_BL832_DECISION_SETTINGS", '{"local": true, "nersc": true, "alcf": true}')
    # a scan the ledger does not know and the conf does not declare: the safety policy keeps it at ALS
    watcher_path = s.write_scan(site, endpoint="data832_raw", subdir="")
    d = s.dag("bl832_recon_nersc")
    d.get_task("collect").retries = 2  # a refusal must not be retried, whatever the DAG's retries
    capfd.readouterr()
    dr = d.test(run_conf={"file_path": watcher_path})
    out = capfd.readouterr().out
    st = s.states(dr)
    assert str(dr.state) == "failed" and st["collect"] == "failed", st  # failed, not up_for_retry

    refusals = [r.getMessage() for r in caplog.records if r.levelname == "ERROR" and r.getMessage().startswith("refused")]
    assert len(refusals) == 1, refusals
    assert f"refused nersc reconstruction of {watcher_path!r} (data-safety policy): SafetyError: REFUSED" \
        in refusals[0]
    assert "neither recorded by the new-file DAG nor declared" in refusals[0]

    traceback = out[out.index("Task failed with exception"):]
    traceback = traceback[:traceback.index("\n", traceback.index("AirflowFailException: "))]
    assert "During handling of the above exception" not in out
    assert "The above exception was the direct cause" not in out
    assert "facility_data/als/steps.py" not in traceback  # the domain frames stay out
    assert traceback.count("Traceback (most recent call last)") == 1
    assert "AirflowFailException: SafetyError: REFUSED nersc reconstruction" in traceback
