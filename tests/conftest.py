"""Shared test harness.

* Airflow is configured here, before anything imports it: a throwaway AIRFLOW_HOME (SQLite) per test session whose
  dags folder is this checkout's dags/, so ``dag.test()`` runs the real DAG files.
* ``airflow_db``: the metadata DB migrated once per session (needed by ``dag.test()``).
* ``site``: the local site's real services (PostgreSQL, Rucio, S3 API), brought up idempotently and reused when
  ``make test`` already started them; torn down at the end only if this session started them.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
_session_tmp = Path(tempfile.mkdtemp(prefix="facility-test-"))
_session_tmp.chmod(0o755)  # the local site's PostgreSQL runs as its own user and must reach its directory

os.environ.setdefault("FACILITY_INCLUDE", str(REPO / "include"))
os.environ["AIRFLOW_HOME"] = str(_session_tmp / "airflow")
os.environ["AIRFLOW__CORE__DAGS_FOLDER"] = str(REPO / "dags")
os.environ["AIRFLOW__CORE__PLUGINS_FOLDER"] = str(REPO / "plugins")
os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
os.environ["AIRFLOW__CORE__UNIT_TEST_MODE"] = "True"
os.environ["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] = f"sqlite:///{_session_tmp / 'airflow' / 'airflow.db'}"
os.environ["AIRFLOW__LOGGING__BASE_LOG_FOLDER"] = str(_session_tmp / "airflow" / "logs")
# Always a private site: `make` exports the user's FACILITY_SITE, and tests must never write alerts, ledgers or
# reports there. Likewise the user's configuration overrides must not change what the tests see.
os.environ["FACILITY_SITE"] = str(_session_tmp / "site")
for _override in ("FACILITY_REPORTS", "FACILITY_RUBIN_POLICY", "FACILITY_RUBIN_START", "FACILITY_ENDPOINTS_FILE",
                  "FACILITY_AIRFLOW_DB", "FACILITY_PLACEMENT", "FACILITY_POD_OVERRIDES", "FACILITY_DAG_BUNDLE",
                  "FACILITY_DAG_BUNDLE_REPO", "FACILITY_DAG_BUNDLE_REF"):
    os.environ.pop(_override, None)
(_session_tmp / "airflow").mkdir(parents=True, exist_ok=True)


@pytest.fixture(scope="session")
def airflow_db() -> Path:
    """A migrated Airflow metadata DB for this test session (about 4 s, once)."""
    subprocess.run([sys.executable, "-m", "airflow", "db", "migrate"], check=True, capture_output=True,
                   env=os.environ.copy())
    return Path(os.environ["AIRFLOW_HOME"])


@pytest.fixture(scope="session")
def site():
    """The local site with its real services up (see facility_data.localsite)."""
    from facility_data.localsite import Site

    # A site of its own per test session (unless FACILITY_TEST_SITE names a running one), independent of
    # FACILITY_SITE, which tests may point at private directories.
    s = Site(Path(os.environ.get("FACILITY_TEST_SITE") or _session_tmp / "services"))
    try:
        started = s.up()
    except BaseException:  # no teardown runs for a fixture that failed: stop what this session started
        if not os.environ.get("FACILITY_TEST_SITE"):
            s.remove()
        raise
    yield s
    if started and not os.environ.get("FACILITY_KEEP_SITE"):
        # a session's own site goes entirely: as root its PostgreSQL cluster lives outside it, under /var/tmp
        s.down() if os.environ.get("FACILITY_TEST_SITE") else s.remove()


@pytest.fixture
def site_root(tmp_path) -> Path:
    """A private, empty local-site directory for tests that only need files (no services)."""
    root = tmp_path / "site"
    root.mkdir()
    return root
