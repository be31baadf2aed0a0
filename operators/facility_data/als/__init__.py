"""ALS beamlines: path contract, beamline configuration, copy ledger, retention sweep, DAG factory, synthetic scans,
local reconstruction and multiscale conversion, SciCat ingest. Plain Python; nothing here imports Airflow at module
level except the DAG factory."""
