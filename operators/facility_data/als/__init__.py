"""ALS beamlines: path contract, beamline configuration, copy ledger, retention sweep, DAG factory,
local reconstruction and multiscale conversion, SciCat ingest. Plain Python; nothing here imports Airflow at module
level except the DAG factory."""
