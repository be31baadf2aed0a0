"""Airflow plugin: the site's reports (prune audits, reconcile reports) under /facility-reports, linked from Browse,
served only to users logged in to Airflow (see facility_data.reports_app.require_airflow_login)."""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin

from facility_data.reports_app import create_app


class FacilityReportsPlugin(AirflowPlugin):
    name = "facility_reports"
    fastapi_apps = [{"app": create_app(), "url_prefix": "/facility-reports", "name": "Facility reports"}]
    external_views = [{"name": "Facility reports", "href": "/facility-reports/", "destination": "nav",
                       "category": "browse", "url_route": "facility-reports"}]
