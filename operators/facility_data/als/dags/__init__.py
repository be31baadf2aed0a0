"""Every ALS beamline's DAGs, built from its configuration (``include/beamlines/<id>.yaml``); no DAG code is copied.

One module per kind of DAG: :mod:`.new_file`, :mod:`.recon` (local, and one remote builder for NERSC and ALCF),
:mod:`.prune` (sweep and preview), :mod:`.reconcile`; :mod:`.common` holds what they share.
"""

from __future__ import annotations

from airflow.sdk import DAG

from facility_data.als.beamline import Beamline, load_beamlines
from facility_data.als.dags.common import recon_asset
from facility_data.als.dags.new_file import build_new_file_dag
from facility_data.als.dags.prune import build_prune_dag
from facility_data.als.dags.recon import RECON_BUILDERS
from facility_data.als.dags.reconcile import build_reconcile_dag


def build_beamline_dags(bl: Beamline) -> dict[str, DAG]:
    dags = [build_new_file_dag(bl)]
    dags += [RECON_BUILDERS[t](bl) for t in bl.recon_targets]
    if bl.prune.enabled and any(loc.retention_days is not None for loc in bl.locations.values()):
        dags += [build_prune_dag(bl), build_prune_dag(bl, preview=True)]
    dags += [build_reconcile_dag(bl)] if bl.reconcile.enabled else []
    return {d.dag_id: d for d in dags}


def build_all() -> dict[str, DAG]:
    """Every beamline's DAGs, keyed by DAG id (the DAG file puts them in its globals)."""
    out: dict[str, DAG] = {}
    for bl in load_beamlines():
        out.update(build_beamline_dags(bl))
    return out


__all__ = ["build_all", "build_beamline_dags", "recon_asset"]
