"""Airflow plugin: the site's reports (prune audits, reconcile reports) and the operator dashboard under
/facility-reports, linked from Browse, served only to users logged in to Airflow (see
facility_data.ui.app.require_airflow_login). The Browse links carry ``[api] base_url``'s path, so a UI served
under a prefix (``https://host/airflow/``) links to ``/airflow/facility-reports/``."""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin

from facility_data.ui.app import create_app
from facility_data.ui.dashboard import ui_root


class FacilityReportsPlugin(AirflowPlugin):
    name = "facility_reports"
    fastapi_apps = [{"app": create_app(), "url_prefix": "/facility-reports", "name": "Facility reports"}]
    external_views = [
        {"name": "Facility reports", "href": f"{ui_root()}facility-reports/", "destination": "nav",
         "category": "browse", "url_route": "facility-reports"},
        {"name": "Facility dashboard", "href": f"{ui_root()}facility-reports/dashboard/", "destination": "nav",
         "category": "browse", "url_route": "facility-dashboard"},
    ]
