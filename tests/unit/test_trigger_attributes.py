"""Every trigger of the package survives what the real triggerer does to it before ``run()``: it sets
``trigger.task_instance``, and BaseTrigger then overwrites ``task_id`` (and template fields) on the trigger. A
trigger that kept its remote task id in ``task_id`` polled the Airflow task's id instead (issue 11's live
deferral test found it: every deferred Globus copy failed with 404 TaskNotFound)."""

from __future__ import annotations

import inspect
from types import SimpleNamespace

import pytest

from facility_data.triggers.globus import GlobusTaskTrigger
from facility_data.triggers.globus_compute import GlobusComputeTrigger
from facility_data.triggers.polling import PollingTrigger
from facility_data.triggers.sfapi import SFAPIJobTrigger

TRIGGERS = [GlobusTaskTrigger, GlobusComputeTrigger, SFAPIJobTrigger]


def test_every_trigger_of_the_package_is_listed_here():
    import facility_data.triggers.globus
    import facility_data.triggers.globus_compute
    import facility_data.triggers.sfapi

    found = {c for m in (facility_data.triggers.globus, facility_data.triggers.globus_compute,
                         facility_data.triggers.sfapi)
             for _, c in inspect.getmembers(m, inspect.isclass) if issubclass(c, PollingTrigger) and
             c is not PollingTrigger}
    assert found == set(TRIGGERS)


@pytest.mark.parametrize("cls", TRIGGERS, ids=lambda c: c.__name__)
def test_serialized_kwargs_are_unchanged_once_the_triggerer_sets_the_task_instance(cls):
    kwargs = {name: (12.5 if "float" in str(p.annotation) else f"value-of-{name}")
              for name, p in inspect.signature(cls.__init__).parameters.items()
              if name != "self" and p.kind is p.KEYWORD_ONLY}
    trigger = cls(**kwargs)
    before = trigger.serialize()
    trigger.task_instance = SimpleNamespace(task_id="airflow-task", dag_id="d", run_id="r", map_index=-1)
    assert trigger.serialize() == before
    rebuilt = cls(**before[1])
    rebuilt.task_instance = SimpleNamespace(task_id="airflow-task", dag_id="d", run_id="r", map_index=-1)
    assert rebuilt.serialize() == before and "airflow-task" not in rebuilt.describe()
