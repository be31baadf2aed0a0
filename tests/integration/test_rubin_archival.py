"""Archival to FrDF: a Rucio replication rule on each exposure's Obs dataset, against the real local Rucio server.

The local server runs no daemons, so a new rule stays REPLICATING: the tests check that the rule exists for the
Obs dataset and the archive RSE expression, and that its state is reported.
"""

from __future__ import annotations

import uuid
import warnings
from datetime import timedelta

import pytest

from facility_data.demo.rubin_synthetic import build_night, unique_day_obs
from facility_data.localsite.rucio_server import ensure_archive_rse
from facility_data.rubin import classify, reconcile, repair, rucioreg, steps, windows
from facility_data.rubin.policy import ArchiveRule

pytestmark = pytest.mark.integration
warnings.filterwarnings("ignore", module="erfa")

ARCHIVE = "FRDF_RAW_DISK"


@pytest.fixture
def client(site):
    c = site.rucio_client()
    ensure_archive_rse(c)  # a site bootstrapped before the archive RSE existed gets it here
    return c


def _policy(night, site, archive: ArchiveRule | None):
    policy = night.policy(destination_prefix=site.root / "main" / f"archival-{uuid.uuid4().hex[:8]}")
    return policy.model_copy(update={"rucio": policy.rucio.model_copy(update={"archive": archive})})


@pytest.fixture
def night(site, tmp_path):
    return build_night(tmp_path, day_obs=unique_day_obs(), n_exposures=2, detectors=4)


def _exposures(night, policy):
    req = windows.parse_manual(policy, {"instrument": "LSSTCam", "day_obs": str(night.day_obs)})
    refs, problems = windows.select_manual(steps.Context(policy).source, policy, req,
                                           night.ends[night.obs_ids[-1]] + timedelta(days=5))
    assert problems == []
    return refs


def _obs(exp) -> str:
    return rucioreg.did_names(exp.instrument, exp.day_obs, exp.obs_id, [])[1]


def _rules(client, exp, expression=ARCHIVE):
    return [r for r in client.list_did_rules("raw", _obs(exp)) if r["rse_expression"] == expression]


def test_archival_rule_is_made_once_per_exposure_and_its_state_reported(site, client, night):
    policy = _policy(night, site, ArchiveRule(rse_expression=ARCHIVE))
    for exp in _exposures(night, policy):
        rucio = steps.run_exposure(steps.Context(policy, rucio=client), exp)[-1]
        assert rucio.state == "done"
        assert rucioreg.rule_part(_obs(exp), ARCHIVE) in rucio.detail["acted"]
        (rule,) = _rules(client, exp)
        assert (rule["copies"], rule["grouping"], rule["did_type"]) == (1, "DATASET", "DATASET")
        assert rucio.detail["archive"]["id"] == rule["id"]
        assert rucio.detail["archive"]["state"] in ("REPLICATING", "OK")
        # HPSS backup is still requested as before
        assert client.get_metadata("raw", _obs(exp), plugin="ALL")["arcBackup"] == "SLAC_RAW_DISK_BKUP:need"
        # a rerun finds the rule and makes no second one
        again = steps.run_step(steps.Context(policy, rucio=client), exp, steps.RUCIO)
        assert again.state == "verified" and again.detail["missing"] == []
        assert len(_rules(client, exp)) == 1
        assert steps.exposure_status(steps.Context(policy, rucio=client), exp).complete


def test_missing_rule_is_a_missing_part_for_the_steps_and_the_fast_reconcile(site, client, night):
    """Exposures registered before archival was configured: both checks name the missing rule, a rule to another
    RSE expression does not count, and repair makes it."""
    off = _policy(night, site, None)
    exps = _exposures(night, off)
    for exp in exps:
        steps.run_exposure(steps.Context(off, rucio=client), exp)
        assert _rules(client, exp) == []
    on = off.model_copy(update={"rucio": off.rucio.model_copy(update={"archive": ArchiveRule(rse_expression=ARCHIVE)})})
    # a rule elsewhere (to the disk the files are on) is not the archival rule
    client.add_replication_rule([{"scope": "raw", "name": _obs(exps[0])}], 1, "SLAC_RAW_DISK")
    now = night.ends[night.obs_ids[-1]] + timedelta(days=5)
    for exp in exps:
        ok, detail = steps.check_rucio(steps.Context(on, rucio=client), exp)
        assert not ok and detail["missing"] == [rucioreg.rule_part(_obs(exp), ARCHIVE)]
        assert detail["archive"] is None
    result = reconcile.check_night(steps.Context(on, rucio=client, dry_run=True), "LSSTCam", night.day_obs, now=now)
    got = {e.obs_id: e for e in result.exposures}
    for exp in exps:
        check = got[exp.obs_id]
        assert (check.state, check.first_missing) == (classify.PARTIAL, steps.RUCIO)
        assert any(rucioreg.rule_part(_obs(exp), ARCHIVE) in p for p in check.problems), check.problems
    # archival off: the same night is done (the rule is asked for only when configured)
    result = reconcile.check_night(steps.Context(off, rucio=client, dry_run=True), "LSSTCam", night.day_obs, now=now)
    assert {e.state for e in result.exposures} == {classify.DONE}
    for exp in exps:
        repair.repair_exposure(steps.Context(on, rucio=client), got[exp.obs_id])
        assert len(_rules(client, exp)) == 1
    result = reconcile.check_night(steps.Context(on, rucio=client, dry_run=True), "LSSTCam", night.day_obs, now=now)
    assert {e.state for e in result.exposures} == {classify.DONE}


def test_unknown_archive_expression_fails_the_step_loudly(site, client, night):
    from rucio.common.exception import InvalidRSEExpression

    policy = _policy(night, site, ArchiveRule(rse_expression="NO_SUCH_ARCHIVE_RSE"))
    exp = _exposures(night, policy)[0]
    with pytest.raises(InvalidRSEExpression):
        steps.run_exposure(steps.Context(policy, rucio=client), exp)
    status = steps.exposure_status(steps.Context(policy, rucio=client), exp)
    assert status.first_missing == steps.RUCIO
    assert status.details[steps.RUCIO]["missing"] == [rucioreg.rule_part(_obs(exp), "NO_SUCH_ARCHIVE_RSE")]


def test_embargo_copy_is_not_pruned_while_the_archival_rule_is_missing(site, client, night):
    off = _policy(night, site, None)
    exp = _exposures(night, off)[0]
    steps.run_exposure(steps.Context(off, rucio=client), exp)
    on = off.model_copy(update={"rucio": off.rucio.model_copy(update={"archive": ArchiveRule(rse_expression=ARCHIVE)})})
    refused = repair.prune_exposure(steps.Context(on, rucio=client), exp, delete=True)
    assert not refused["allowed"] and "rucio" in refused["reason"] and refused["deleted"] == 0
    assert night.store.list_folder("LSSTCam", night.day_obs, exp.obs_id)
    steps.run_step(steps.Context(on, rucio=client), exp, steps.RUCIO)
    allowed = repair.prune_exposure(steps.Context(on, rucio=client, dry_run=True), exp, delete=True)
    assert allowed["allowed"] and allowed["deleted"] == 0
