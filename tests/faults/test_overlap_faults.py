"""Two and three overlapping runs over the same exposures (scheduled + backfill + reconcile repair), each a real
process (spawn) against the real local site (Rucio on PostgreSQL, SQLite Butlers, local files).

Before the per-exposure lease, the loser of a race reported a false ``InconsistentArtifact ... is closed but lacks``
(an Obs dataset closed by the winner between the loser's check and its attach), failed closing an already-closed
dataset, or failed on a concurrent ingest. Now: every run ends without error, each exposure's zip is built once, and
the end state equals a clean run's.
"""

from __future__ import annotations

import json
import multiprocessing
import uuid
import warnings
from datetime import timedelta
from pathlib import Path

import pytest
from _fault_workers import end_state, released, run_exposures, run_reconcile

from facility_data.demo.rubin_synthetic import build_night, unique_day_obs
from facility_data.rubin import steps

pytestmark = pytest.mark.integration
warnings.filterwarnings("ignore", module="erfa")
SPAWN = multiprocessing.get_context("spawn")
N_EXPOSURES = 3


def night_and_policy(site, root: Path):
    night = build_night(root, day_obs=unique_day_obs(), n_exposures=N_EXPOSURES, detectors=6, without_guider=(3,))
    return night, night.policy(destination_prefix=site.root / "main" / f"test-{uuid.uuid4().hex[:8]}")


@pytest.fixture(scope="module")
def clean(site, conns, tmp_path_factory):
    """A clean run: one process, one night of the same shape, every exposure once."""
    night, policy = night_and_policy(site, tmp_path_factory.mktemp("clean"))
    exps = released(policy, night.day_obs, night.ends[night.obs_ids[-1]])
    for exp in exps:
        steps.run_exposure(steps.Context(policy), exp)
    return [end_state(site, night, policy, e) for e in exps]


def overlap(tmp_path, policy, night, exps, kinds: list[str]) -> list[dict]:
    """Start one process per kind (``forward``/``backward`` run_exposure over the night, ``reconcile`` repair),
    released together at a barrier; return their reports."""
    barrier = SPAWN.Barrier(len(kinds))
    now = night.ends[night.obs_ids[-1]]
    procs, outs = [], []
    for i, kind in enumerate(kinds):
        out = tmp_path / f"run{i}-{kind}.json"
        if kind == "reconcile":
            args = (policy, night.day_obs, now + timedelta(days=5), barrier, str(out), 300.0,
                    str(tmp_path / "reports"))
            procs.append(SPAWN.Process(target=run_reconcile, args=args))
        else:
            order = exps if kind == "forward" else exps[::-1]
            procs.append(SPAWN.Process(target=run_exposures, args=(policy, order, barrier, str(out), 300.0)))
        outs.append(out)
    for p in procs:
        p.start()
    for p in procs:
        p.join(600)
        assert p.exitcode == 0
    return [json.loads(o.read_text()) for o in outs]


def assert_converged(site, night, policy, exps, clean, reports):
    errors = [r for rep in reports for r in (rep.get("results") or {}).values() if isinstance(r, str)]
    assert errors == [], "\n".join(errors)  # no false inconsistency, no failed close, no failed ingest
    zip_built = [s for rep in reports for outs in (rep.get("results") or {}).values() for step, s in outs
                 if step == steps.ZIP]
    assert zip_built.count("done") <= len(exps)
    assert [end_state(site, night, policy, e) for e in exps] == clean
    for e in exps:  # zip and yaml bytes equal a clean build's
        ref = night.policy(destination_prefix=Path(policy.destination_prefix).parent / f"ref-{uuid.uuid4().hex[:8]}")
        ctx = steps.Context(ref)
        steps.run_step(ctx, e, steps.ZIP), steps.run_step(ctx, e, steps.DIMENSIONS)
        for a, b in zip(steps.paths(policy, e).__dict__.values(), steps.paths(ref, e).__dict__.values(), strict=True):
            assert a.read_bytes() == b.read_bytes(), a


def test_two_overlapping_runs_scheduled_and_backfill(site, conns, clean, tmp_path):
    night, policy = night_and_policy(site, tmp_path)
    exps = released(policy, night.day_obs, night.ends[night.obs_ids[-1]])
    reports = overlap(tmp_path, policy, night, exps, ["forward", "backward"])
    assert_converged(site, night, policy, exps, clean, reports)


def test_three_overlapping_runs_scheduled_backfill_and_reconcile_repair(site, conns, clean, tmp_path):
    night, policy = night_and_policy(site, tmp_path)
    exps = released(policy, night.day_obs, night.ends[night.obs_ids[-1]])
    reports = overlap(tmp_path, policy, night, exps, ["forward", "backward", "reconcile"])
    assert_converged(site, night, policy, exps, clean, reports)
    result = reports[2]["result"]
    assert "error" not in result, result.get("error")
    assert result["failed"] == [] and result["unrepairable"] == [], result
    assert result["counts"][str(night.day_obs)].get("done") == len(exps)
    assert result["temporary"] == []
