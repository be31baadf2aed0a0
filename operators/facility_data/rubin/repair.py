"""Repairing what reconciliation found, and the guard on pruning the embargo copy.

Repair resumes each exposure from its first missing step through the same steps as ``rubin_unembargo_raw``
(:func:`facility_data.rubin.steps.run_exposure`), which never overwrite a verified artifact. Pruning deletes an
exposure's embargo copy only when the data-safety policy (facility_data.safety) accepts a deep verification of every
sink.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from facility_data.rubin import steps
from facility_data.rubin.classify import REPAIRABLE, ExposureCheck
from facility_data.rubin.storage import LocalStore, S3Store
from facility_data.rubin.windows import ExposureRef

log = logging.getLogger(__name__)


def repair_exposure(ctx: steps.Context, check: ExposureCheck | dict) -> dict:
    """Resume one exposure from its first missing step with the unembargo steps, then re-check it.

    Returns ``{"obs_id", "from", "outcomes", "state"}``; raises InconsistentArtifact (never overwritten) or the
    step's error (the DAG's retries and failure alert take over)."""
    check = ExposureCheck.from_dict(check) if isinstance(check, dict) else check
    if check.state not in REPAIRABLE or check.exposure is None:
        raise ValueError(f"{check.obs_id} is {check.state}: not repairable by reconciliation")
    exp = ExposureRef.from_dict(check.exposure)
    log.info("%s: %s, resuming from step %s%s", exp.obs_id, check.state, check.first_missing,
             " (dry run)" if ctx.dry_run else "")
    with ctx.exclusive(exp):  # the steps and the re-check, with no other run mid-step (else lease.ExposureBusy)
        outcomes = steps.run_exposure(ctx, exp, start_at=check.first_missing)
        for o in outcomes:
            log.info("%s %s: %s", exp.obs_id, o.step, o.state)
        result = {"obs_id": exp.obs_id, "from": check.first_missing, "outcomes": [o.to_dict() for o in outcomes]}
        if ctx.dry_run:
            result["state"] = "would-repair"
            return result
        after = steps.exposure_status(steps.Context(ctx.policy, store=ctx._store, rucio=ctx._rucio,
                                                    butler_factory=ctx._butler_factory), exp)
    if not after.complete:
        raise steps.StepFailed(f"{exp.obs_id}: still not complete after repair, first missing {after.first_missing}: "
                               f"{after.details.get(after.first_missing)}")
    result["state"] = "repaired"
    return result


def sink_checks(ctx: steps.Context, exp: ExposureRef):
    """Deep verification of every sink of one exposure, as facility_data.safety.SinkCheck values."""
    from facility_data.safety import SinkCheck

    status = steps.exposure_status(ctx, exp, deep=True)
    return [SinkCheck(sink=name, verified=state == "done", deep=True,
                      detail=json.dumps(status.details.get(name), default=str)[:300])
            for name, state in status.steps.items() if name != steps.GATE]


def prune_exposure(ctx: steps.Context, exp: ExposureRef, *, delete: bool) -> dict:
    """Ask the safety policy whether the exposure's embargo objects may go; delete them only if allowed and asked.

    Deleting removes the exposure's objects from the embargo store and its raw datasets from the source Butler
    (which point at those objects). Returns ``{"obs_id", "allowed", "reason", "deleted"}``."""
    from facility_data.safety import may_delete_unembargoed

    objects = ctx.store.list_folder(exp.instrument, exp.day_obs, exp.obs_id)
    decision = may_delete_unembargoed(f"{exp.instrument}/{exp.day_obs}/{exp.obs_id}", sink_checks(ctx, exp),
                                      required_sinks=steps.step_names(ctx.policy)[1:])
    out = {"obs_id": exp.obs_id, "allowed": decision.allowed, "reason": decision.reason, "deleted": 0,
           "objects": len(objects)}
    if not decision.allowed or not delete or ctx.dry_run:
        log.info("%s: prune %s (%s): %s", exp.obs_id, "allowed" if decision.allowed else "REFUSED",
                 "would delete" if decision.allowed else "kept", decision.reason)
        return out
    decision.require()
    refs = ctx.refs(exp)
    source = ctx.butler(ctx.policy.source, writeable=True)
    source.pruneDatasets(refs, disassociate=True, unstore=True, purge=True)
    for obj in objects:
        _delete_object(ctx.store, obj.key)
    out["deleted"] = len(objects)
    log.warning("%s: pruned %d embargo objects and %d source datasets (%s)", exp.obs_id, len(objects), len(refs),
                decision.reason)
    return out


def _delete_object(store, key: str) -> None:
    if isinstance(store, LocalStore):
        (Path(store.root) / key).unlink(missing_ok=True)
    elif isinstance(store, S3Store):
        store._retry(lambda: store.client.delete_object(Bucket=store.bucket, Key=store.prefix + key), key)
    else:
        raise NotImplementedError(f"deleting from {store!r} is not supported")

