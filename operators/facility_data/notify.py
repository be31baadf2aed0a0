"""Failure alerts: every DAG's ``on_failure_callback``.

An alert is logged and appended as one JSON line to ``$FACILITY_SITE/alerts.jsonl`` (the local site's inbox, which
``make demo`` prints); where an Airflow connection ``facility_alerts`` of type http exists, it is also POSTed there
(e.g. a Slack or Mattermost incoming webhook). Sending an alert must never fail the callback. The webhook URL
carries its token: it is registered with Airflow's secrets masker, never logged, and the record is redacted.
"""

from __future__ import annotations

import json
import logging
import os
from datetime import UTC, datetime
from pathlib import Path

from airflow.sdk.bases.notifier import BaseNotifier

log = logging.getLogger(__name__)

ALERT_CONN_ID = "facility_alerts"


def alert_record(context) -> dict:
    ti = context.get("ti") or context.get("task_instance")
    dag_run = context.get("dag_run")
    exc = context.get("exception")
    return {
        "time": datetime.now(UTC).isoformat(),
        "dag_id": getattr(ti, "dag_id", None),
        "task_id": getattr(ti, "task_id", None),
        "map_index": getattr(ti, "map_index", None),
        "run_id": getattr(dag_run, "run_id", None) or getattr(ti, "run_id", None),
        "try_number": getattr(ti, "try_number", None),
        "error": f"{type(exc).__name__}: {exc}" if exc else None,
    }


class FacilityAlertNotifier(BaseNotifier):
    """Record a failed task where operators will see it."""

    template_fields = ()

    def notify(self, context) -> None:
        from airflow.sdk.log import redact

        url = _webhook()  # first: its secrets are registered before anything is logged or written
        record = redact(alert_record(context))  # no registered secret reaches the log, the inbox or the webhook
        log.error("ALERT %s.%s[%s] run %s failed: %s", record["dag_id"], record["task_id"], record["map_index"],
                  record["run_id"], record["error"])
        site = os.environ.get("FACILITY_SITE")
        if site:
            try:
                with open(Path(site) / "alerts.jsonl", "a") as fh:
                    fh.write(json.dumps(record) + "\n")
            except OSError as exc:
                log.warning("could not append alert to %s/alerts.jsonl: %s", site, exc)
        if url:
            post_alert(url, record)


def _webhook() -> str | None:
    try:
        from airflow.sdk import BaseHook

        conn = BaseHook.get_connection(ALERT_CONN_ID)
    except Exception:  # no webhook configured: the log and the inbox are the alert
        return None
    return webhook_url(conn)


def webhook_url(conn) -> str:
    """The webhook URL of an http connection, registered with the secrets masker: its path is its token."""
    from facility_data.masking import mask_url

    url = conn.host if "://" in (conn.host or "") else f"{conn.schema or 'https'}://{conn.host}"
    mask_url(url, whole_path=True)
    return url


def post_alert(url: str, record: dict) -> bool:
    """POST the alert; never raises, never logs the URL or the client's error text (both may hold the token)."""
    import requests

    response, error = None, None
    try:
        response = requests.post(url, json={"text": f"Airflow task failed: {record}"}, timeout=10)
    except Exception as exc:  # logged below, outside the handler: a failing log handler prints the active error
        error = type(exc).__name__
    if response is None:
        log.warning("could not POST alert to connection %s: %s (URL not shown: it may carry a token)",
                    ALERT_CONN_ID, error)
        return False
    if response.status_code >= 400:
        log.warning("alert webhook of connection %s answered HTTP %d", ALERT_CONN_ID, response.status_code)
        return False
    return True


def failure_callback(context) -> None:
    """Plain function form, for ``default_args["on_failure_callback"]``."""
    FacilityAlertNotifier().notify(context)
