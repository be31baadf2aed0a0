"""The Rubin unembargo's operators: one per step of one exposure (see facility_data.rubin.steps).

``RubinStepOperator(step=...)`` runs any step (gate, zip, dimensions, butler, rucio) through
``facility_data.rubin.runs.run_named_step`` (one log line per step) and maps the domain errors onto task states
(``rubin_task_outcome``, the one such mapping). ``EmbargoZipOperator`` is the zip step: it builds
``<prefix>/<instrument>/<day_obs>/<obs_id>.zip`` from the exposure's embargo folder, or verifies the one that exists
against the source, and returns the zip's path, bytes, md5 and adler32 (XCom) for the Rucio step
(``RubinStepOperator(step="rucio", zip_result=<the zip task's output>)``, which spares re-reading the zip).
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import contextmanager
from typing import Any

from airflow.sdk import BaseOperator


def _dry_run(value: bool | None, context) -> bool:
    if value is not None:
        return bool(value)
    return bool((context.get("params") or {}).get("dry_run", False))


@contextmanager
def rubin_task_outcome():
    """Map the unembargo's domain errors onto Airflow task states; one mapping for every Rubin task that acts.
    The domain error stays the cause, so its traceback shows where it was raised."""
    from airflow.sdk.exceptions import AirflowException, AirflowFailException, AirflowSkipException

    from facility_data.rubin.butlerops import UniverseMismatch
    from facility_data.rubin.lease import ExposureBusy
    from facility_data.rubin.steps import EmbargoViolation, IncompleteExposure
    from facility_data.rubin.zipbuild import InconsistentArtifact

    try:
        yield
    except IncompleteExposure as exc:
        raise AirflowSkipException(f"{exc} (left for a later run or reconciliation)") from exc
    except InconsistentArtifact as exc:  # retrying cannot fix it; alert and leave it for an operator
        raise AirflowFailException(f"INCONSISTENT, not overwritten: {exc}") from exc
    except UniverseMismatch as exc:  # a destination repository that cannot take the source's records
        raise AirflowFailException(f"REFUSED: {exc}") from exc
    except EmbargoViolation as exc:  # never retried into an early release; alerts
        raise AirflowFailException(f"EMBARGO, nothing released: {exc}") from exc
    except ExposureBusy as exc:  # another run is mid-step: not a verdict on the artifacts; Airflow retries later
        raise AirflowException(f"BUSY, retry later: {exc}") from exc


def run_rubin_step(name: str, exposure: dict, dry_run: bool, policy_path: str | None, context, **kwargs) -> dict:
    """Shared by the Rubin operators: run the step, mapping domain errors onto Airflow task states."""
    from facility_data.rubin.runs import run_named_step

    context["obs_id"] = exposure.get("obs_id")  # named map index in the UI
    with rubin_task_outcome():
        return run_named_step(name, exposure, dry_run=dry_run, policy_path=policy_path, **kwargs)


#: the steps a RubinStepOperator runs ("butler" runs every destination Butler of the policy)
STEPS = ("gate", "zip", "dimensions", "butler", "rucio")


class RubinStepOperator(BaseOperator):
    """Run one step of the unembargo for one exposure: idempotent (check, act only if missing, verify).

    :param step: one of ``STEPS``
    :param exposure: an exposure ref dict (from the select task; see facility_data.rubin.windows.ExposureRef)
    :param policy_path: embargo policy YAML (default include/embargo_policy.yaml)
    :param dry_run: report what would be done; None = the run's ``dry_run`` Param
    :param zip_result: ``rucio`` only, optional: the zip step's result, whose hashes spare re-reading the zip

    The UI names each mapped instance by its obs_id. The return value (XCom) is the step's outcome dict with the
    exposure's ``obs_id``; it is not logged (the step logs one line of its own: ``runs.step_line``).

    ``rucio`` registers the zip and dimensions yaml as replicas (bytes/md5/adler32, ``rubin_butler`` metadata),
    attaches them to the Tract/NoTract day datasets and the exposure's Obs dataset (created when missing), closes
    the Obs dataset and sets its ``arcBackup`` and ``SafeCopies`` metadata; parts already done are verified and
    left alone, transient Rucio errors retried (bounded).
    """

    template_fields: Sequence[str] = ("exposure", "policy_path", "zip_result")
    ui_color = "#d6eaf8"

    def __init__(self, *, step: str, exposure: dict, policy_path: str | None = None, dry_run: bool | None = None,
                 zip_result: dict | None = None, **kwargs) -> None:
        if step not in STEPS:
            raise ValueError(f"unknown Rubin step {step!r}; expected one of {STEPS}")
        if zip_result is not None and step != "rucio":  # fail closed: an argument no step would read
            raise ValueError(f"zip_result is for the rucio step only, not {step!r}")
        kwargs.setdefault("map_index_template", "{{ obs_id }}")
        super().__init__(**kwargs)
        self.step, self.exposure, self.policy_path, self.dry_run = step, exposure, policy_path, dry_run
        self.zip_result = zip_result

    def execute(self, context) -> Any:
        kwargs = {}
        if self.step == "rucio":
            known = self.zip_result.get("detail") if isinstance(self.zip_result, dict) else None
            kwargs["known_zip"] = known
        return run_rubin_step(self.step, self.exposure, _dry_run(self.dry_run, context), self.policy_path, context,
                              **kwargs)


class EmbargoZipOperator(RubinStepOperator):
    """Zip one exposure's embargo folder (byte-identical members) into the destination, atomically, no overwrite.

    :param exposure: an exposure ref dict (from the select task; see facility_data.rubin.windows.ExposureRef)
    :param policy_path: embargo policy YAML (default include/embargo_policy.yaml)
    :param dry_run: report what would be done; None = the run's ``dry_run`` Param
    """

    def __init__(self, *, exposure: dict, policy_path: str | None = None, dry_run: bool | None = None,
                 **kwargs) -> None:
        super().__init__(step="zip", exposure=exposure, policy_path=policy_path, dry_run=dry_run, **kwargs)
