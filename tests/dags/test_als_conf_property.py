"""Property tests through the real DAG files: random manual confs (unknown keys, wrong types, odd strings,
symlinked aliases, renamed copies, files that are not scans) never move an export-controlled scan off site, and
a refused conf leaves nothing behind (no file at any destination, no ledger write). Every refusal names what is
wrong. The counts of each run are printed (`pytest -s`) for the project's notes."""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections import Counter

import _als_support as s
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

pytestmark = pytest.mark.dagtest
OFF_SITE = ("nersc832", "nersc832_alsdev_scratch", "nersc_pscratch", "alcf832")
KNOWN = {"file_path", "is_export_control", "send_to_nersc"}
ODD = ["../../etc/passwd", "/etc/passwd.h5", "", " ", "\n", "/global/raw/ALS-1_u/20240101_120000_a.h5\n",
       "/global/raw/ALS-١١_u/20240101_120000_a.h5", "/global/raw/ALS-1_u/../ALS-1_u/20240101_120000_a.h5",
       "raw\\ALS-1_u\\20240101_120000_a.h5", "/global/raw/ALS-1_u/20240101_120000_a.h5\x00", "ALS-1_u",
       "/global/raw/ALS-1_u/20240101_120000_a.H5", "/global/raw/ALS-1_u/2024-01-01_a.h5", "ж" * 20]
UNKNOWN_KEYS = ["is_export_controlled", "export_control", "File_path", "isExportControl", "conf", "",
                "file_path ", "send_to_nersc\n"]
ANY_JSON = st.one_of(st.none(), st.booleans(), st.integers(-2, 2), st.floats(allow_nan=False, width=16),
                     st.sampled_from(["true", "false", "yes", "1", ""]), st.lists(st.booleans(), max_size=2),
                     st.dictionaries(st.sampled_from(["a", "file_path"]), st.booleans(), max_size=1))
#: every variant tried, per DAG: tried / refused with a clear message / refused with a side effect / accepted
COUNTS: dict[str, Counter] = {}


def _files(site) -> dict[str, str]:
    """sha256 of every file at every off-site destination."""
    out = {}
    for ep in OFF_SITE:
        root = site / "endpoints" / ep
        for p in root.rglob("*") if root.exists() else ():
            if p.is_file() and not p.is_symlink():
                out[str(p.relative_to(site))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def _snapshot(site) -> tuple:
    return _files(site), len(s.ledger(site).events("bl832"))


@pytest.fixture
def world(airflow_db, tmp_path, monkeypatch):
    """A controlled scan C (arrived through bl832_new_file), its symlinked alias folder, a renamed copy of it, an
    alias out of the raw root, files that are not scans, and one free scan F (the only thing that may leave)."""
    site = s.private_site(tmp_path, monkeypatch)
    monkeypatch.setenv("AIRFLOW_VAR_BL832_DECISION_SETTINGS", json.dumps({"local": False, "nersc": True,
                                                                          "alcf": True}))
    s.FakeNERSC(fail="facility_data.als.recon").install(monkeypatch)  # an accepted run stops after staging
    controlled = s.write_scan(site, "20240101_120000_ctrl")
    dr = s.dag("bl832_new_file").test(run_conf={"file_path": controlled, "is_export_control": True})
    assert str(dr.state) == "success"
    c_bytes = (s.endpoint_dir(site, "spot832") / "raw" / s.FOLDER / "20240101_120000_ctrl.h5").read_bytes()
    from facility_data.demo import als_synthetic as synthetic

    free = f"/global/raw/{s.FOLDER}/20240101_130000_free.h5"
    for raw in (s.endpoint_dir(site, "data832_raw"), s.endpoint_dir(site, "spot832") / "raw"):
        synthetic.write_scan(raw / s.FOLDER / "20240101_130000_free.h5", n_angles=s.ANGLES, size=s.SIZE,
                             n_slices=s.SLICES, seed=4)  # other bytes than the controlled scan
    paths = {"controlled": controlled, "free": free}
    for root_ep, sub in (("data832_raw", ""), ("spot832", "raw")):
        raw = s.endpoint_dir(site, root_ep) / sub if sub else s.endpoint_dir(site, root_ep)
        folder = raw / s.FOLDER
        (raw / "ALS-22222_alias").symlink_to(folder, target_is_directory=True)
        renamed = raw / "ALS-33333_other" / "20240202_080000_renamed.h5"
        renamed.parent.mkdir(exist_ok=True)
        renamed.write_bytes(c_bytes)
        (tmp_path / "outside.h5").write_bytes(c_bytes)
        (folder / "20240101_140000_out.h5").symlink_to(tmp_path / "outside.h5")
        (folder / "20240101_140000_link.h5").symlink_to(folder / "20240101_120000_ctrl.h5")
        (folder / "20240101_140000_fake.h5").write_bytes(b"not HDF5 at all")
        (folder / "20240101_140000_dir.h5").mkdir()
        os.mkfifo(folder / "20240101_140000_fifo.h5")
    g = f"/global/raw/{s.FOLDER}/"
    paths.update({"alias-folder": controlled.replace(s.FOLDER, "ALS-22222_alias"),
                  "renamed-copy": "/global/raw/ALS-33333_other/20240202_080000_renamed.h5",
                  "alias-outside": g + "20240101_140000_out.h5", "alias-file": g + "20240101_140000_link.h5",
                  "not-hdf5": g + "20240101_140000_fake.h5", "directory": g + "20240101_140000_dir.h5",
                  "fifo": g + "20240101_140000_fifo.h5", "missing": g + "20240101_150000_missing.h5",
                  "relative-controlled": controlled.removeprefix("/global/")})
    return site, paths, hashlib.sha256(c_bytes).hexdigest()


def _confs(keys: set[str]):
    path = st.one_of(st.sampled_from(["controlled", "free", "alias-folder", "renamed-copy", "alias-outside",
                                      "alias-file", "not-hdf5", "directory", "fifo", "missing",
                                      "relative-controlled"]).map(lambda label: ("label", label)),
                     st.sampled_from(ODD).map(lambda v: ("value", v)), ANY_JSON.map(lambda v: ("value", v)))
    flag = st.one_of(st.none(), st.booleans(), ANY_JSON)
    optional = {"file_path": path, "is_export_control": flag}
    if "send_to_nersc" in keys:
        optional["send_to_nersc"] = st.one_of(st.booleans(), ANY_JSON)
    return st.tuples(st.fixed_dictionaries({}, optional=optional),
                     st.dictionaries(st.sampled_from(UNKNOWN_KEYS), ANY_JSON, max_size=2))


def _materialise(raw: tuple, paths: dict) -> dict:
    known, extra = raw
    conf = {**extra, **known}
    if "file_path" in conf:
        kind, value = conf["file_path"]
        conf["file_path"] = paths[value] if kind == "label" else value
    return conf


def _failure(caplog) -> str:
    found = re.findall(r"AirflowFailException: ((?:ConfError|SafetyError|ConfigError|PathError): [^\n]*)", caplog.text)
    return found[-1] if found else ""


def _clear(message: str, conf: dict) -> bool:
    """A refusal is clear when it names what is wrong: the param, the unknown key, the path or export control."""
    if message.startswith("Invalid input for param "):  # the form: it names the param it refused
        return message.removeprefix("Invalid input for param ").split(":", 1)[0] in KNOWN
    unknown = [k for k in conf if k not in KNOWN]
    if unknown:
        return "unknown conf key" in message and all(repr(k) in message for k in unknown)
    return any(w in message for w in ("file_path", "is_export_control", "send_to_nersc", "scan", "export-control",
                                      "alias"))


def _run(dag_id: str, conf: dict, caplog):
    from airflow.sdk.exceptions import ParamValidationError

    caplog.clear()
    try:
        dr = s.dag(dag_id).test(run_conf=conf)
    except ParamValidationError as exc:
        return "form", str(exc), {}
    return str(dr.state), _failure(caplog), s.states(dr)


def _check(site, c_digest, counts: Counter, before: tuple, good: bool, refused: bool, message: str, conf: dict):
    after = _snapshot(site)
    assert c_digest not in after[0].values(), f"an export-controlled scan left ALS with conf {conf!r}"
    if good:
        counts["good"] += 1
        return
    counts["tried"] += 1
    if refused:
        counts["refused"] += 1
        counts["refused with a clear message"] += _clear(message, conf)
        side_effect = after != before
        counts["refused with a side effect"] += side_effect
        assert not side_effect, f"refused conf {conf!r} left something behind"
        assert _clear(message, conf), (conf, message)
    else:
        counts["accepted (stays at ALS)"] += 1


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                  HealthCheck.too_slow])
@given(raw=_confs({"file_path", "is_export_control"}), target=st.sampled_from(["nersc", "alcf"]))
@example(raw=({"file_path": ("label", "free"), "is_export_control": False}, {}), target="nersc")  # may go
@example(raw=({"file_path": ("label", "controlled"), "is_export_control": False}, {}), target="alcf")
@example(raw=({"file_path": ("label", "free"), "is_export_control": False}, {"is_export_controlled": True}),
         target="nersc")
def test_property_recon_confs_never_move_a_controlled_scan(world, caplog, raw, target):
    site, paths, c_digest = world
    conf = _materialise(raw, paths)
    counts = COUNTS.setdefault("recon", Counter())
    before = _snapshot(site)
    state, message, st_ = _run(f"bl832_recon_{target}", conf, caplog)
    refused = state == "form" or st_.get("collect") == "failed"
    good = set(conf) == {"file_path", "is_export_control"} and conf["file_path"] == paths["free"] \
        and conf["is_export_control"] is False
    assert refused is not good, (conf, state, message, st_)  # only the free, declared scan may go
    _check(site, c_digest, counts, before, good, refused, message, conf)
    print(f"\nrecon counts: {dict(counts)}")


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                  HealthCheck.too_slow])
@given(raw=_confs(KNOWN))
@example(raw=({"file_path": ("label", "free")}, {}))
@example(raw=({"file_path": ("label", "renamed-copy"), "is_export_control": False, "send_to_nersc": True}, {}))
@example(raw=({"file_path": ("label", "free")}, {"is_export_controlled": True}))
def test_property_new_file_confs_never_move_a_controlled_scan(world, caplog, raw):
    site, paths, c_digest = world
    conf = _materialise(raw, paths)
    counts = COUNTS.setdefault("new_file", Counter())
    before = _snapshot(site)
    state, message, st_ = _run("bl832_new_file", conf, caplog)
    refused = state == "form" or st_.get("validate") == "failed"
    if not refused:  # accepted: a real scan, named by its real path, so whatever it is, its bytes decide
        assert conf["file_path"] in (paths["controlled"], paths["free"], paths["renamed-copy"],
                                     paths["relative-controlled"]), (conf, st_)
    good = not refused and conf["file_path"] == paths["free"] and set(conf) <= KNOWN
    _check(site, c_digest, counts, before, good, refused, message, conf)
    print(f"\nnew_file counts: {dict(counts)}")
