"""rubin_unembargo_raw's summary sink check (runs.unverified_in_sinks) against real components: SQLite Butler repos,
the local embargo store and the site's Rucio server. It reads each sink once per night, whatever the number of
exposures (issue 17: the per-exposure check cost ~2 s each), and still names what each exposure lacks."""

from __future__ import annotations

import json
import warnings
from collections import Counter
from datetime import UTC, datetime

import pytest

from facility_data.demo.rubin_synthetic import build_night, unique_day_obs, write_policy
from facility_data.rubin import runs, steps
from facility_data.rubin.windows import ExposureRef

pytestmark = pytest.mark.integration
warnings.filterwarnings("ignore", module="erfa")


class CountingRucio:
    """The real Rucio client, counting the calls made through it."""

    def __init__(self, client):
        self._client, self.calls = client, Counter()

    def __getattr__(self, name):
        fn = getattr(self._client, name)
        if not callable(fn):
            return fn

        def call(*args, **kwargs):
            self.calls[name] += 1
            return fn(*args, **kwargs)
        return call


@pytest.fixture(scope="module")
def unembargoed(site, tmp_path_factory):
    """A night of 5 exposures, each fully unembargoed by the steps; returns (policy path, exposure dicts)."""
    root = tmp_path_factory.mktemp("summary-check")
    day = unique_day_obs(2025, 2025)
    night = build_night(root, day_obs=day, n_exposures=5, detectors=3)
    policy = night.policy(destination_prefix=site.root / "main" / f"summary-{day}")  # Rucio's RSE lives there
    path = write_policy(policy, root / "policy.yaml")
    ctx = steps.Context(policy, rucio=site.rucio_client())
    out = runs.select({"instrument": night.instrument, "day_obs": str(night.day_obs), "obs_ids": [],
                       "dry_run": False}, data_interval=None, run_after=datetime.now(UTC), policy_path=path,
                      context=ctx)
    assert len(out["ready"]) == 5, out["skipped"]
    for e in out["ready"]:
        steps.run_exposure(ctx, ExposureRef.from_dict(e))
    return path, out["ready"]


def _check(site, monkeypatch, path, exposures) -> tuple[dict, Counter]:
    rucio = CountingRucio(site.rucio_client())
    monkeypatch.setattr(runs, "context_for", lambda dry_run, policy_path=None: steps.Context(
        runs.load_policy(policy_path), rucio=rucio, dry_run=dry_run))
    return runs.unverified_in_sinks(exposures, path), rucio.calls


def test_sinks_are_read_once_per_night_not_once_per_exposure(site, unembargoed, monkeypatch):
    path, exposures = unembargoed
    one, calls_one = _check(site, monkeypatch, path, exposures[:1])
    every, calls_every = _check(site, monkeypatch, path, exposures)
    assert one == {} and every == {}  # all verified
    assert calls_every == calls_one, (calls_one, calls_every)  # the same Rucio calls for 1 or 5 exposures


def test_each_exposure_the_sinks_do_not_show_done_is_named_with_what_it_lacks(site, unembargoed, monkeypatch,
                                                                            tmp_path):
    path, exposures = unembargoed
    policy = runs.load_policy(path)
    altered, no_yaml, no_zip = (ExposureRef.from_dict(e) for e in exposures[1:4])
    yaml = steps.paths(policy, altered).yaml
    original = yaml.read_bytes()
    # the same length: only a comparison with the source Butler's records sees it
    yaml.write_text(original.decode().replace(altered.obs_id, altered.obs_id[:-1] + "9", 1))
    moved = {p: tmp_path / p.name for p in (steps.paths(policy, no_yaml).yaml, steps.paths(policy, no_zip).zip)}
    for src, dst in moved.items():
        src.rename(dst)
    try:
        unverified, _ = _check(site, monkeypatch, path, exposures)
    finally:  # the module's night stays fully unembargoed for the other tests
        yaml.write_bytes(original)
        for src, dst in moved.items():
            dst.rename(src)
    assert set(unverified) == {altered.obs_id, no_yaml.obs_id, no_zip.obs_id}, unverified
    assert unverified[altered.obs_id].startswith("dimensions inconsistent: ")
    assert unverified[no_yaml.obs_id].startswith("dimensions partial: ")
    assert unverified[no_zip.obs_id].startswith("zip partial: ")


def test_an_unreadable_destination_butler_leaves_every_exposure_unverified(site, unembargoed, monkeypatch):
    path, exposures = unembargoed
    broken = runs.load_policy(path)
    dest = broken.destinations[0].model_copy(update={"uri": str(broken.destinations[0].uri) + "-gone"})
    monkeypatch.setattr(runs, "load_policy", lambda p=None: broken.model_copy(update={"destinations": [dest]}))
    unverified, _ = _check(site, monkeypatch, path, exposures)
    assert set(unverified) == {e["obs_id"] for e in exposures}
    assert all(" error: " in why for why in unverified.values()), unverified


def test_night_records_are_the_per_exposure_records(unembargoed):
    """The yaml check compares with records read for the whole night: they must be each exposure's own."""
    from lsst.daf.butler import Butler

    from facility_data.rubin.dimensions import ELEMENTS, exposure_records
    from facility_data.rubin.sinks import night_records

    path, exposures = unembargoed
    source = Butler.from_config(runs.load_policy(path).source.uri)
    refs = [ExposureRef.from_dict(e) for e in exposures]
    night = night_records(source, refs[0].instrument, refs[0].day_obs, [r.exposure for r in refs])
    def rows(records: dict) -> dict:
        return {e: sorted(json.dumps(r.toDict(), default=str, sort_keys=True) for r in records[e]) for e in ELEMENTS}

    for ref in refs:
        alone = exposure_records(source, ref.instrument, ref.exposure)
        assert rows(night[ref.exposure]) == rows(alone), ref.obs_id
        assert alone["visit_detector_region"]  # the comparison covers the per-visit elements too
