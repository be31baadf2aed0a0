"""Damage some unembargoed exposures of a night the way a crash would, for ``make demo`` to show reconciliation.

Each breakage leaves a state a real crash can leave (an artifact missing, never a corrupted one), so the reconcile
DAG must find it at the right step and repair it with the unembargo steps:

* ``rucio``: the Obs dataset reopened, the zip and yaml detached from it and its archive metadata removed
  (a crash inside the Rucio registration) -> first missing step ``rucio``;
* ``butler``: the exposure's datasets removed from the first destination Butler (the zip stays) -> ``butler:<dest>``;
* ``yaml``: the ``_dimensions.yaml`` file removed -> ``dimensions``.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from pathlib import Path

from facility_data.rubin import reconcile, steps
from facility_data.rubin.policy import load_policy
from facility_data.rubin.windows import ExposureRef, ManualRequest, select_manual

log = logging.getLogger(__name__)

BREAKAGES = ("rucio", "butler", "yaml")


def _context(site_root, policy_path, rucio) -> steps.Context:
    policy = load_policy(policy_path)
    if rucio is None:
        from facility_data.localsite import Site

        rucio = Site(Path(site_root)).rucio_client()
    return steps.Context(policy, rucio=rucio)


def break_rucio(ctx: steps.Context, exp: ExposureRef) -> str:
    client, scope = ctx.rucio, ctx.policy.rucio.scope
    p = steps.paths(ctx.policy, exp)
    obs = f"Dataset/{exp.instrument}/raw/Obs/{exp.day_obs}/{exp.obs_id}"
    client.set_status(scope, obs, open=True)
    client.detach_dids(scope, obs, [{"scope": scope, "name": f"{exp.instrument}/{exp.day_obs}/{f.name}"}
                                    for f in (p.zip, p.yaml)])
    for key in ("arcBackup", "SafeCopies"):
        client.delete_metadata(scope, obs, key)
    return f"{exp.obs_id}: Rucio Obs dataset {scope}:{obs} reopened, zip and yaml detached, arcBackup/SafeCopies removed"


def break_butler(ctx: steps.Context, exp: ExposureRef) -> str:
    dest_ref = ctx.policy.destinations[0]
    dest = ctx.butler(dest_ref, writeable=True)
    refs = [r for r in (dest.get_dataset(ref.id) for ref in ctx.refs(exp)) if r is not None]
    zip_path = steps.paths(ctx.policy, exp).zip
    size = zip_path.stat().st_size
    # registry and datastore records only: the zip (ingested by direct reference) is not the Butler's to delete
    dest.pruneDatasets(refs, disassociate=True, unstore=True, purge=True)
    if not zip_path.exists() or zip_path.stat().st_size != size:  # pragma: no cover - would be a Butler change
        raise RuntimeError(f"removing datasets from {dest_ref.label} touched {zip_path}")
    return f"{exp.obs_id}: {len(refs)} datasets removed from destination Butler {dest_ref.label}"


def break_yaml(ctx: steps.Context, exp: ExposureRef) -> str:
    path = steps.paths(ctx.policy, exp).yaml
    path.unlink()
    return f"{exp.obs_id}: {path} removed"


def break_exposures(site_root: str | Path, policy_path: str | Path, day_obs: int, *, instrument: str = "LSSTCam",
                    kinds: tuple[str, ...] = BREAKAGES, rucio=None, now: datetime | None = None) -> list[str]:
    """Break one fully unembargoed exposure of ``day_obs`` per kind (in order of obs_id); returns what was done."""
    ctx = _context(site_root, policy_path, rucio)
    unknown = sorted(set(kinds) - set(BREAKAGES))
    if unknown:
        raise ValueError(f"unknown breakage(s) {unknown}; known: {list(BREAKAGES)}")
    now = now or datetime.now(UTC)
    night = reconcile.check_night(ctx, instrument, int(day_obs), now=now)
    done = [ExposureRef.from_dict(e.exposure) for e in night.exposures if e.state == reconcile.DONE]
    if len(done) < len(kinds):
        raise ValueError(f"night {day_obs} has {len(done)} fully unembargoed exposure(s); {len(kinds)} needed")
    actions = {"rucio": break_rucio, "butler": break_butler, "yaml": break_yaml}
    out = []
    for kind, exp in zip(kinds, done, strict=False):
        what = actions[kind](ctx, exp)
        log.warning("demo breakage: %s", what)
        out.append(what)
    return out


def exposures_of(ctx: steps.Context, instrument: str, day_obs: int, now: datetime) -> list[ExposureRef]:
    return select_manual(ctx.source, ctx.policy, ManualRequest(instrument, int(day_obs), (), False), now)[0]


def summary(result: dict) -> str:
    """Text of a reconcile run's result (the ``finish`` task's XCom, or reconcile.run's return value)."""
    return reconcile.summary(result)
