"""The Airflow UI plugin's app: the reports browser and the operator dashboard, behind Airflow's own login.

The one room that reads both ALS and Rubin state (ledgers, reports, sinks) to show it; nothing imports it but
``plugins/facility_reports.py``.
"""
