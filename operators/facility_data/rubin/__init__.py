"""Rubin USDF raw unembargo: policy, release windows, embargo store, zips, dimension exports and the idempotent
per-exposure steps that the ``rubin_unembargo_raw`` DAG maps over (plain Python, no Airflow needed)."""
