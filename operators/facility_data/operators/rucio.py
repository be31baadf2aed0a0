"""RucioRegisterOperator: the Rucio step of the Rubin unembargo for one exposure (see facility_data.rubin.steps).

Registers the zip and dimensions yaml as replicas with bytes/md5/adler32 and ``rubin_butler`` metadata, attaches
them to the Tract/NoTract day datasets and the exposure's Obs dataset (created when missing), closes the Obs dataset
and sets its ``arcBackup`` and ``SafeCopies`` metadata. Parts already done are verified and left alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from airflow.sdk import BaseOperator

from facility_data.operators.embargo import _dry_run, run_rubin_step


class RucioRegisterOperator(BaseOperator):
    """Register one unembargoed exposure in Rucio (idempotent, bounded retries on transient Rucio errors).

    :param exposure: an exposure ref dict (from the select task)
    :param zip_result: the EmbargoZipOperator's result (its hashes spare re-reading the zip); optional
    :param policy_path: embargo policy YAML (default include/embargo_policy.yaml)
    :param dry_run: report what would be done; None = the run's ``dry_run`` Param
    """

    template_fields: Sequence[str] = ("exposure", "zip_result", "policy_path")
    ui_color = "#d5f5e3"

    def __init__(self, *, exposure: dict, zip_result: dict | None = None, policy_path: str | None = None,
                 dry_run: bool | None = None, **kwargs) -> None:
        kwargs.setdefault("map_index_template", "{{ obs_id }}")
        super().__init__(**kwargs)
        self.exposure, self.zip_result = exposure, zip_result
        self.policy_path, self.dry_run = policy_path, dry_run

    def execute(self, context) -> Any:
        known = (self.zip_result or {}).get("detail") if isinstance(self.zip_result, dict) else None
        return run_rubin_step("rucio", self.exposure, _dry_run(self.dry_run, context), self.policy_path, context,
                              known_zip=known)
