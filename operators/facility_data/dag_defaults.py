"""What every DAG of the bundle shares: owner, retries with backoff, and the failure alert."""

from __future__ import annotations

from datetime import timedelta

from facility_data.notify import failure_callback

DEFAULT_ARGS = {
    "owner": "facility-data",
    "retries": 2,
    "retry_delay": timedelta(seconds=30),
    "retry_exponential_backoff": True,
    "max_retry_delay": timedelta(minutes=10),
    "on_failure_callback": failure_callback,
}


def default_args(**overrides) -> dict:
    """DEFAULT_ARGS with per-DAG overrides (e.g. fewer retries for a health check)."""
    return {**DEFAULT_ARGS, **overrides}
