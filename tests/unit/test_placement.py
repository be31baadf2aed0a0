"""Placement: every task of every shipped DAG runs on its site role's queue (include/placement.yaml), and a bad
placement file or an unplaced task fails the DAG file's parse with a message naming what is wrong."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from facility_data.placement import PlacementError, load_placement, place, placement_path

REPO = Path(__file__).resolve().parents[2]
SMALL_DAG_FILE = REPO / "dags" / "als_transfer_healthcheck.py"


@pytest.fixture(scope="module")
def shipped_bag():
    """Every DAG of dags/ with the shipped placement file and pod overrides off (the embedded default)."""
    from airflow.dag_processing.dagbag import DagBag

    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("FACILITY_PLACEMENT", raising=False)
        mp.delenv("FACILITY_POD_OVERRIDES", raising=False)
        bag = DagBag(dag_folder=str(REPO / "dags"))
    assert not bag.import_errors, bag.import_errors
    return bag


def _variant(tmp_path, monkeypatch, edit) -> Path:
    """A copy of the shipped placement file changed by ``edit`` (on the parsed YAML), made FACILITY_PLACEMENT."""
    raw = yaml.safe_load((REPO / "include" / "placement.yaml").read_text())
    edit(raw)
    path = tmp_path / "placement.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    monkeypatch.setenv("FACILITY_PLACEMENT", str(path))
    return path


def _parse_error(dag_file: Path = SMALL_DAG_FILE) -> str:
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(dag_file))
    assert not bag.dag_ids, f"the DAG file parsed although its placement is invalid: {bag.dag_ids}"
    assert list(bag.import_errors) == [str(dag_file)], bag.import_errors
    return bag.import_errors[str(dag_file)]


def test_every_task_of_every_dag_runs_on_the_queue_of_its_role(shipped_bag):
    cfg = load_placement(REPO / "include" / "placement.yaml")
    queues = {r.queue for r in cfg.roles.values()}
    wrong, count = [], 0
    for dag in shipped_bag.dags.values():
        for task in dag.tasks:
            count += 1
            rule = cfg.rule_for(dag.dag_id, task.task_id)
            expected = cfg.roles[rule.role].queue if rule else None
            if task.queue != expected or task.queue not in queues:
                wrong.append(f"{dag.dag_id} / {task.task_id}: queue {task.queue!r}, placement says {expected!r}")
    assert count > 80 and not wrong, "\n".join(wrong)


@pytest.mark.parametrize(("dag_id", "task_id", "queue"), [
    ("bl832_new_file", "validate", "als-beamline"),           # the scan is read on spot832
    ("bl832_new_file", "copy_spot_to_data", "als-beamline"),  # the copy off spot at the beamline
    ("bl832_new_file", "verify_data_copy", "als-data"),       # checks of data832 on the data server
    ("bl7012_new_file", "validate", "als-data"),              # BL 7.0.1.2 starts on data7012
    ("bl832_new_file", "verify_nersc_copy", "nersc"),
    ("bl832_recon_nersc", "scan.submit_recon", "nersc"),       # NERSC-side work at NERSC
    ("bl832_recon_local", "reconstruct", "als-data"),         # a mapped task
    ("rubin_unembargo_raw", "exposure.zip", "usdf"),          # a task of a mapped task group
    ("rubin_unembargo_reconcile", "repair", "usdf"),
])
def test_tasks_run_where_their_data_is(shipped_bag, dag_id, task_id, queue):
    assert shipped_bag.dags[dag_id].get_task(task_id).queue == queue


def test_queues_survive_serialization(shipped_bag):
    """The scheduler queues tasks from the serialized DAG: the queue must be in it (mapped tasks included)."""
    from airflow.serialization.serialized_objects import DagSerialization

    for dag_id in ("bl832_recon_local", "rubin_unembargo_raw"):
        dag = shipped_bag.dags[dag_id]
        restored = DagSerialization.from_dict(DagSerialization.to_dict(dag))
        queues = {t.task_id: t.queue for t in restored.tasks}
        assert queues == {t.task_id: t.queue for t in dag.tasks} and "default" not in queues.values()


def test_every_rule_places_some_task(shipped_bag):
    """A rule that no task reaches first (a typo, or shadowed by an earlier rule) is dead configuration."""
    cfg = load_placement(REPO / "include" / "placement.yaml")
    used = {cfg.tasks.index(cfg.rule_for(d.dag_id, t.task_id)) for d in shipped_bag.dags.values() for t in d.tasks}
    dead = [f"tasks[{i}]: {r.dag} / {r.task}" for i, r in enumerate(cfg.tasks) if i not in used]
    assert not dead, dead


def test_pod_overrides_are_off_in_the_embedded_default(shipped_bag):
    heavy = shipped_bag.dags["rubin_unembargo_raw"].get_task("exposure.zip")
    assert "pod_override" not in (heavy.executor_config or {})


def test_placement_file_defaults_to_include_and_follows_the_override(monkeypatch, tmp_path):
    monkeypatch.delenv("FACILITY_PLACEMENT", raising=False)
    assert placement_path() == REPO / "include" / "placement.yaml"
    monkeypatch.setenv("FACILITY_PLACEMENT", str(tmp_path / "other.yaml"))
    assert placement_path() == tmp_path / "other.yaml"


def test_a_task_no_rule_places_fails_the_parse(tmp_path, monkeypatch):
    def drop_catch_all(raw):
        raw["tasks"] = [r for r in raw["tasks"] if not (r["dag"] == "als_transfer_healthcheck" and r["task"] == "*")]

    path = _variant(tmp_path, monkeypatch, drop_catch_all)
    err = _parse_error()
    assert f"{path}: no rule under tasks: places als_transfer_healthcheck / transfer_middle_to_destination" in err


def test_unknown_role_fails_the_parse(tmp_path, monkeypatch):
    def misspell(raw):
        raw["tasks"][0]["role"] = "usfd"

    path = _variant(tmp_path, monkeypatch, misspell)
    err = _parse_error()
    assert str(path) in err and "tasks[0] (rubin_unembargo_* / exposure.zip): unknown role 'usfd'" in err
    assert "roles are als-beamline, als-data, nersc, usdf" in err


@pytest.mark.parametrize(("edit", "key"), [
    pytest.param(lambda raw: raw.update(queues={"usdf": "usdf"}), "queues", id="top-level"),
    pytest.param(lambda raw: raw["tasks"][0].update(tsk="x"), "tasks.0.tsk", id="rule"),
    pytest.param(lambda raw: raw["roles"]["usdf"].update(queu="x"), "roles.usdf.queu", id="role"),
    pytest.param(lambda raw: raw["pods"]["heavy"]["limits"].update(gpu="1"), "pods.heavy.limits.gpu.[key]",
                 id="resource"),
])
def test_unknown_key_fails_the_parse(tmp_path, monkeypatch, edit, key):
    path = _variant(tmp_path, monkeypatch, edit)
    err = _parse_error()
    assert f"{path}: key {key}:" in err


def test_unknown_pod_profile_fails_the_parse(tmp_path, monkeypatch):
    def misspell(raw):
        raw["tasks"][0]["pod"] = "haevy"

    _variant(tmp_path, monkeypatch, misspell)
    assert "unknown pod profile 'haevy'; profiles are heavy" in _parse_error()


@pytest.mark.parametrize(("resources", "message"), [
    ({"requests": {"cpu": "8"}, "limits": {"cpu": "4"}}, "cpu request 8 exceeds its limit 4"),
    ({"requests": {"memory": "5Gi"}, "limits": {"memory": "4Gi"}}, "memory request 5Gi exceeds its limit 4Gi"),
    ({"limits": {"memory": "4 GB"}}, "memory: '4 GB' is not a Kubernetes quantity"),
    ({"tmp_size": "lots"}, "tmp_size: 'lots' is not a Kubernetes quantity"),
])
def test_impossible_pod_resources_fail_the_parse(tmp_path, monkeypatch, resources, message):
    _variant(tmp_path, monkeypatch, lambda raw: raw["pods"].update(heavy=resources))
    assert message in _parse_error()


def test_missing_placement_file_fails_the_parse(tmp_path, monkeypatch):
    monkeypatch.setenv("FACILITY_PLACEMENT", str(tmp_path / "absent.yaml"))
    assert f"{tmp_path / 'absent.yaml'}: configuration file not found" in _parse_error()


def test_a_role_executor_is_set_on_its_tasks_and_an_unknown_one_fails_the_parse(tmp_path, monkeypatch):
    from airflow.dag_processing.dagbag import DagBag

    _variant(tmp_path, monkeypatch, lambda raw: raw["roles"]["nersc"].update(executor="LocalExecutor"))
    dag = DagBag(dag_folder=str(SMALL_DAG_FILE)).dags["als_transfer_healthcheck"]
    assert {t.task_id for t in dag.tasks if t.executor == "LocalExecutor"} == {"verify", "cleanup_destination"}
    assert dag.get_task("write_probe").executor is None

    _variant(tmp_path, monkeypatch, lambda raw: raw["roles"]["nersc"].update(executor="NoSuchExecutor"))
    assert "NoSuchExecutor" in _parse_error()


def test_place_sets_mapped_tasks_too(tmp_path):
    """A mapped task keeps its operator arguments apart (partial_kwargs): its queue must still be set."""
    from datetime import datetime

    from airflow.sdk import DAG, task

    path = tmp_path / "placement.yaml"
    path.write_text("roles: {site-a: {queue: qa}}\ntasks: [{dag: d, task: '*', role: site-a}]\n")
    with DAG("d", schedule=None, start_date=datetime(2025, 1, 1)) as dag:
        @task
        def one(x):
            return x

        one.expand(x=[1, 2])
    place(dag, path=path)
    assert dag.get_task("one").queue == "qa"

    with DAG("other", schedule=None, start_date=datetime(2025, 1, 1)) as other:
        one.expand(x=[1])
    with pytest.raises(PlacementError, match="no rule under tasks: places other / one"):
        place(other, path=path)


def test_an_edited_placement_file_is_read_again(tmp_path, monkeypatch):
    """The file is validated once per content (many DAGs per DAG file), never served stale after an edit."""
    path = tmp_path / "placement.yaml"
    path.write_text("roles: {site-a: {queue: qa}}\ntasks: [{task: '*', role: site-a}]\n")
    assert load_placement(path).roles["site-a"].queue == "qa"
    path.write_text("roles: {site-a: {queue: qb}}\ntasks: [{task: '*', role: site-a}]\n")
    assert load_placement(path).roles["site-a"].queue == "qb"
    path.write_text("roles: {site-a: {queue: '${SITE_A_QUEUE}'}}\ntasks: [{task: '*', role: site-a}]\n")
    monkeypatch.setenv("SITE_A_QUEUE", "qc")
    assert load_placement(path).roles["site-a"].queue == "qc"
    monkeypatch.setenv("SITE_A_QUEUE", "qd")
    assert load_placement(path).roles["site-a"].queue == "qd"


def test_a_task_that_sets_its_own_queue_is_refused(tmp_path):
    """Queues are set in one place: a queue= in DAG code that disagrees with the placement file is an error."""
    from datetime import datetime

    from airflow.sdk import DAG, task

    path = tmp_path / "placement.yaml"
    path.write_text("roles: {site-a: {queue: qa}}\ntasks: [{task: '*', role: site-a}]\n")
    with DAG("d", schedule=None, start_date=datetime(2025, 1, 1)) as dag:
        task(lambda: None, task_id="mine", queue="elsewhere")()
    with pytest.raises(PlacementError, match="d / mine sets queue='elsewhere' itself, but .* places it on 'qa'"):
        place(dag, path=path)

    with DAG("again", schedule=None, start_date=datetime(2025, 1, 1)) as again:
        task(lambda: None, task_id="t")()
    place(place(again, path=path), path=path)  # placing twice is no conflict
    assert again.get_task("t").queue == "qa"
