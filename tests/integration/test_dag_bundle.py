"""The project deployed as an Airflow 3 git DAG bundle (include/airflow/dag_bundles.json, README "Deploying as a DAG
bundle"): a real bare git repository holding this checkout's HEAD, the bundle config the local site builds loaded
through Airflow's own DagBundlesManager, the provider's GitDagBundle cloning it, and the DAGs parsed from the clone
as the DAG processor does (BundleDagBag). Then a new commit moves the bundle's version while the old version can
still be checked out and parsed, which is what lets a DAG run finish on the code it started with."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
from pathlib import Path

import pytest

from facility_data.localsite.airflow_home import check_dag_bundle, dag_bundle_env, git_bundle_config
from facility_data.localsite.procs import SiteError

REPO = Path(__file__).resolve().parents[2]
BUNDLE = "facility-data"  # the name in include/airflow/dag_bundles.json
PROBE_DAG = "bundle_version_probe"
PROBE_FILE = f'''"""A DAG that exists only from the second commit on."""
from datetime import datetime

from airflow.sdk import DAG

with DAG(dag_id="{PROBE_DAG}", schedule=None, start_date=datetime(2025, 1, 1), tags=["test"]):
    pass
'''


def _contract_ids() -> set[str]:
    """The DAG ids tests/dags/test_dag_integrity.py holds the checkout to (one list, not a copy of it)."""
    spec = importlib.util.spec_from_file_location("_dag_integrity_ids", REPO / "tests/dags/test_dag_integrity.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return set(mod.CONTRACT_IDS)


def _git(*args: str, cwd: Path) -> str:
    res = subprocess.run(["git", "-c", "user.name=bundle-test", "-c", "user.email=bundle-test@localhost",
                          "-c", "init.defaultBranch=main", *args], cwd=cwd, capture_output=True, text=True)
    assert res.returncode == 0, f"git {' '.join(args)}: {res.stderr}"
    return res.stdout.strip()


@pytest.fixture
def origin(tmp_path) -> tuple[Path, Path]:
    """(bare repository, a working clone that pushes to it): one commit on ``main`` with the tracked files of this
    checkout's HEAD (git archive, so a shallow CI clone works too and nothing is written to the checkout)."""
    bare, work = tmp_path / "origin.git", tmp_path / "work"
    _git("init", "-q", "--bare", str(bare), cwd=tmp_path)
    work.mkdir()
    archive = subprocess.run(["git", "-C", str(REPO), "archive", "HEAD"], capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(work)], input=archive, check=True)
    _git("init", "-q", cwd=work)
    _git("add", "-A", cwd=work)
    _git("commit", "-q", "-m", "the project at the checkout's HEAD", cwd=work)
    _git("push", "-q", str(bare), "HEAD:refs/heads/main", cwd=work)
    return bare, work


@pytest.fixture
def bundles(tmp_path, monkeypatch):
    """Point Airflow's bundle config at what the local site sets for FACILITY_DAG_BUNDLE=git; returns a function
    giving the DagBundlesManager for a repository (and optionally another ref)."""

    def manager(repo: Path, ref: str = ""):
        from airflow.dag_processing.bundles.manager import DagBundlesManager

        env = dag_bundle_env(tmp_path / "airflow", {"FACILITY_DAG_BUNDLE": "git", "FACILITY_DAG_BUNDLE_REPO": str(repo),
                                                    "FACILITY_DAG_BUNDLE_REF": ref})
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        return DagBundlesManager()

    return manager


def _parse(bundle):
    from airflow.dag_processing.dagbag import BundleDagBag

    return BundleDagBag(dag_folder=bundle.path, bundle_path=bundle.path, bundle_name=bundle.name)


def test_git_bundle_parses_tracks_main_and_keeps_old_versions(origin, bundles, tmp_path):
    from airflow.dag_processing.dagbag import BundleDagBag

    bare, work = origin
    first = _git("rev-parse", "HEAD", cwd=work)
    manager = bundles(bare)
    assert set(manager.get_all_bundle_names()) == {BUNDLE}

    tracking = manager.get_bundle(BUNDLE)
    assert tracking.supports_versioning
    tracking.initialize()
    assert tracking.path == tracking.repo_path / "dags"
    assert str(tracking.path).startswith(str(tmp_path / "airflow" / "dag_bundles"))  # the site's, not /tmp's
    assert tracking.get_current_version().version == first

    bag = _parse(tracking)
    assert bag.import_errors == {}, "\n".join(f"{k}: {v}" for k, v in bag.import_errors.items())
    missing = _contract_ids() - set(bag.dag_ids)
    assert not missing, f"contract DAG ids not parsed from the bundle: {sorted(missing)}"
    assert PROBE_DAG not in bag.dag_ids
    # every DAG the checkout's dags/ defines, no more and no fewer
    expected = {p.stem for p in (REPO / "dags").glob("*.py") if not p.name.startswith("_")}
    assert {Path(d.fileloc).stem for d in bag.dags.values()} == expected

    # a new commit on main: the tracking bundle moves to it on refresh
    (work / "dags" / f"{PROBE_DAG}.py").write_text(PROBE_FILE)
    _git("add", "-A", cwd=work)
    _git("commit", "-q", "-m", "add a probe DAG", cwd=work)
    _git("push", "-q", str(bare), "HEAD:refs/heads/main", cwd=work)
    second = _git("rev-parse", "HEAD", cwd=work)
    assert second != first
    tracking.refresh()
    assert tracking.get_current_version().version == second
    probe = BundleDagBag(dag_folder=tracking.path / f"{PROBE_DAG}.py", bundle_path=tracking.path, bundle_name=BUNDLE)
    assert probe.import_errors == {} and probe.dag_ids == [PROBE_DAG]

    # the first version is still there to run a DAG run that started on it (what a worker does for its task)
    old = manager.get_bundle(BUNDLE, version=first)
    old.initialize()
    assert old.path == old.versions_dir / first / "dags"
    assert old.get_current_version().version == first
    assert not (old.path / f"{PROBE_DAG}.py").exists()
    old_bag = _parse(old)
    assert old_bag.import_errors == {}
    assert PROBE_DAG not in old_bag.dag_ids
    assert _contract_ids() <= set(old_bag.dag_ids)
    assert not (old.repo_path / ".git").exists()  # prune_dotgit_folder: a version checkout is files only


def test_a_ref_that_does_not_exist_fails_initialize(origin, bundles):
    bare, _ = origin
    bundle = bundles(bare, ref="no-such-branch").get_bundle(BUNDLE)
    with pytest.raises(Exception, match="no-such-branch"):
        bundle.initialize()
    assert not bundle.is_initialized


@pytest.mark.parametrize("missing, reason", [
    ("deadbeef", "Version deadbeef not found in the repository"),
    # gitpython takes any 40 hex digits for a commit without looking it up, so the provider's own check passes
    # and the failure comes later, from git, less clearly worded; it still fails
    ("0" * 40, "Could not parse object"),
])
def test_a_version_that_does_not_exist_fails_initialize(origin, bundles, missing, reason):
    bare, _ = origin
    bundle = bundles(bare).get_bundle(BUNDLE, version=missing)
    with pytest.raises(Exception, match=reason):
        bundle.initialize()
    assert not bundle.is_initialized


def test_a_repository_that_does_not_exist_fails_initialize(bundles, tmp_path):
    bundle = bundles(tmp_path / "nowhere.git").get_bundle(BUNDLE)
    with pytest.raises(RuntimeError, match="Error cloning repository"):
        bundle.initialize()


def test_the_repository_comes_from_the_connection_when_the_site_does_not_name_one(origin, tmp_path, monkeypatch):
    """Production: include/airflow/dag_bundles.json as it is, the URL (and credentials) in the git connection."""
    from airflow.dag_processing.bundles.manager import DagBundlesManager

    bare, work = origin
    config = json.loads((REPO / "include" / "airflow" / "dag_bundles.json").read_text())
    conn_id = config[0]["kwargs"]["git_conn_id"]
    monkeypatch.setenv("AIRFLOW__DAG_PROCESSOR__DAG_BUNDLE_CONFIG_LIST", json.dumps(config))
    monkeypatch.setenv("AIRFLOW__DAG_PROCESSOR__DAG_BUNDLE_STORAGE_PATH", str(tmp_path / "storage"))
    monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps({"conn_type": "git", "host": str(bare)}))
    bundle = DagBundlesManager().get_bundle(BUNDLE)
    bundle.initialize()
    assert bundle.get_current_version().version == _git("rev-parse", "HEAD", cwd=work)
    assert (bundle.path / "als_beamlines.py").is_file()


# --- the local site's choice (FACILITY_DAG_BUNDLE) ---

def test_the_local_site_keeps_the_dags_folder_by_default(tmp_path):
    assert dag_bundle_env(tmp_path, {}) == {}
    assert dag_bundle_env(tmp_path, {"FACILITY_DAG_BUNDLE": "local"}) == {}


@pytest.mark.parametrize("environ, reason", [
    ({"FACILITY_DAG_BUNDLE": "svn"}, "expected 'local'"),
    ({"FACILITY_DAG_BUNDLE": "git"}, "needs FACILITY_DAG_BUNDLE_REPO"),
    ({"FACILITY_DAG_BUNDLE": "git", "FACILITY_DAG_BUNDLE_REPO": "  "}, "needs FACILITY_DAG_BUNDLE_REPO"),
])
def test_the_local_site_refuses_an_unusable_bundle_choice(tmp_path, environ, reason):
    with pytest.raises(SiteError, match=reason):
        dag_bundle_env(tmp_path, environ)


def test_the_local_site_sets_repo_ref_and_storage(tmp_path):
    env = dag_bundle_env(tmp_path, {"FACILITY_DAG_BUNDLE": "GIT", "FACILITY_DAG_BUNDLE_REPO": "/srv/facility.git",
                                    "FACILITY_DAG_BUNDLE_REF": "v1.2"})
    [bundle] = json.loads(env["AIRFLOW__DAG_PROCESSOR__DAG_BUNDLE_CONFIG_LIST"])
    conn = json.loads(env[f"AIRFLOW_CONN_{bundle['kwargs']['git_conn_id'].upper()}"])
    assert conn == {"conn_type": "git", "host": "/srv/facility.git"}
    assert "repo_url" not in bundle["kwargs"]
    assert bundle["kwargs"]["tracking_ref"] == "v1.2"
    assert bundle["kwargs"]["subdir"] == "dags"
    assert env["AIRFLOW__DAG_PROCESSOR__DAG_BUNDLE_STORAGE_PATH"] == str(tmp_path / "dag_bundles")


@pytest.mark.parametrize("content", [
    "not json",
    "[]",
    json.dumps([{"name": "x", "classpath": "airflow.dag_processing.bundles.local.LocalDagBundle", "kwargs": {}}]),
    json.dumps([{"name": "x", "classpath": "airflow.providers.git.bundles.git.GitDagBundle",
                 "kwargs": {"git_conn_id": "g", "subdir": "dags"}}]),
    json.dumps([{"name": "x", "classpath": "airflow.providers.git.bundles.git.GitDagBundle",
                 "kwargs": {"tracking_ref": "main"}}]),
])
def test_a_malformed_bundle_file_is_refused(tmp_path, content):
    path = tmp_path / "dag_bundles.json"
    path.write_text(content)
    with pytest.raises(SiteError, match=str(path)):
        git_bundle_config(path=path)


def test_the_shipped_bundle_file_is_the_documented_one():
    [bundle] = git_bundle_config()
    assert bundle["name"] == BUNDLE
    assert bundle["kwargs"]["tracking_ref"] == "main" and bundle["kwargs"]["subdir"] == "dags"
    assert "repo_url" not in bundle["kwargs"], "the repository URL belongs in the git connection, not in the file"
    assert os.path.isdir(REPO / bundle["kwargs"]["subdir"])


def _site_env(tmp_path, repo, ref=""):
    return dag_bundle_env(tmp_path, {"FACILITY_DAG_BUNDLE": "git", "FACILITY_DAG_BUNDLE_REPO": str(repo),
                                     "FACILITY_DAG_BUNDLE_REF": ref})


def test_the_local_site_checks_the_bundle_before_airflow_starts(origin, tmp_path):
    bare, work = origin
    assert check_dag_bundle({}) is None  # the dags folder: nothing to check
    assert check_dag_bundle(_site_env(tmp_path, bare)) == f"{bare} at main"
    _git("tag", "v1", cwd=work)
    _git("push", "-q", str(bare), "v1", cwd=work)
    assert check_dag_bundle(_site_env(tmp_path, bare, "v1")) == f"{bare} at v1"
    with pytest.raises(SiteError, match="has no branch or tag 'no-such-branch'"):
        check_dag_bundle(_site_env(tmp_path, bare, "no-such-branch"))
    with pytest.raises(SiteError, match="is not a git repository this host can read"):
        check_dag_bundle(_site_env(tmp_path, tmp_path / "nowhere.git"))


def test_a_dag_run_keeps_the_commit_it_started_on(origin, airflow_db, tmp_path):
    """What the bundle is for, seen in Airflow's own metadata: the real dag-processor parses the bundle and records
    the commit on every DAG, a run triggered then records it too, and after a new commit the DAGs move on while
    the run keeps its version (the one its tasks are run from)."""
    import shutil
    import sqlite3
    import sys

    bare, work = origin
    home = tmp_path / "home"
    home.mkdir()
    # a private copy of the session's migrated metadata DB: this Airflow's DAGs and runs stay out of other tests'
    shutil.copy(airflow_db / "airflow.db", home / "airflow.db")
    env = {**os.environ, **_site_env(home, bare), "AIRFLOW_HOME": str(home),
           "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
           "AIRFLOW__CORE__UNIT_TEST_MODE": "False", "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(home / "logs")}

    def airflow(*args):
        res = subprocess.run([sys.executable, "-m", "airflow", *args], env=env, capture_output=True, text=True,
                             timeout=600)
        assert res.returncode == 0, f"airflow {' '.join(args)}: {res.stderr[-3000:]}"
        return res.stdout

    def query(sql):
        with sqlite3.connect(home / "airflow.db") as db:
            return db.execute(sql).fetchall()

    first = _git("rev-parse", "HEAD", cwd=work)
    airflow("dag-processor", "--num-runs", "1")
    parsed = dict(query("select dag_id, bundle_version from dag where bundle_name = 'facility-data'"))
    assert _contract_ids() <= set(parsed), sorted(parsed)
    assert set(parsed.values()) == {first}
    assert query("select count(*) from import_error") == [(0,)]

    # the copied DB may hold runs of earlier tests (dag.test() of the same DAG): only the run triggered here counts
    runs_sql = "select run_id, bundle_version from dag_run where dag_id = 'als_transfer_healthcheck'"
    earlier = dict(query(runs_sql))
    airflow("dags", "trigger", "als_transfer_healthcheck")
    [(run_id, run_version)] = [r for r in query(runs_sql) if r[0] not in earlier]
    assert run_version == first

    (work / "dags" / "als_transfer_healthcheck.py").write_text(
        (work / "dags" / "als_transfer_healthcheck.py").read_text() + "\n# the next commit\n")
    _git("commit", "-q", "-am", "the next commit", cwd=work)
    _git("push", "-q", str(bare), "HEAD:refs/heads/main", cwd=work)
    second = _git("rev-parse", "HEAD", cwd=work)
    airflow("dag-processor", "--num-runs", "1")
    assert query("select bundle_version from dag where dag_id = 'als_transfer_healthcheck'") == [(second,)]
    assert dict(query(runs_sql))[run_id] == first
