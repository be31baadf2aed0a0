"""EmbargoZipOperator: the zip step of the Rubin unembargo for one exposure (see facility_data.rubin.steps).

Builds ``<prefix>/<instrument>/<day_obs>/<obs_id>.zip`` from the exposure's embargo folder, or verifies the one that
exists against the source; returns the zip's path, bytes, md5 and adler32 (XCom) for the Rucio step.
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

    from facility_data.rubin.lease import ExposureBusy
    from facility_data.rubin.steps import EmbargoViolation, IncompleteExposure
    from facility_data.rubin.zipbuild import InconsistentArtifact

    try:
        yield
    except IncompleteExposure as exc:
        raise AirflowSkipException(f"{exc} (left for a later run or reconciliation)") from exc
    except InconsistentArtifact as exc:  # retrying cannot fix it; alert and leave it for an operator
        raise AirflowFailException(f"INCONSISTENT, not overwritten: {exc}") from exc
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


class EmbargoZipOperator(BaseOperator):
    """Zip one exposure's embargo folder (byte-identical members) into the destination, atomically, no overwrite.

    :param exposure: an exposure ref dict (from the select task; see facility_data.rubin.windows.ExposureRef)
    :param policy_path: embargo policy YAML (default include/embargo_policy.yaml)
    :param dry_run: report what would be done; None = the run's ``dry_run`` Param
    """

    template_fields: Sequence[str] = ("exposure", "policy_path")
    ui_color = "#d6eaf8"

    def __init__(self, *, exposure: dict, policy_path: str | None = None, dry_run: bool | None = None,
                 **kwargs) -> None:
        kwargs.setdefault("map_index_template", "{{ obs_id }}")
        super().__init__(**kwargs)
        self.exposure, self.policy_path, self.dry_run = exposure, policy_path, dry_run

    def execute(self, context) -> Any:
        return run_rubin_step("zip", self.exposure, _dry_run(self.dry_run, context), self.policy_path, context)
