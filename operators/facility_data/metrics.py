"""Airflow metrics for the data movement and the HPC jobs, through Airflow's own Stats client (StatsD, Datadog or
OpenTelemetry, as ``[metrics]`` configures it; nothing is sent when metrics are off). Names, under Airflow's
``[metrics] statsd_prefix``:

* ``facility_data.transfer.<source>_to_<destination>.{bytes,files,bytes_per_second}`` (gauges),
  ``.seconds`` (timer) and ``.count`` (counter), per completed transfer hop;
* ``facility_data.job.<machine>.{queue_seconds,run_seconds}`` (timers, from Slurm accounting; run time as measured
  for the local and ALCF controllers) and ``facility_data.job.<machine>.<outcome>`` (counter: success, failed,
  timeout), per finished job (SFAPIJobSensor, HPCJobOperator).
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from typing import Any

from airflow.sdk.observability.stats import Stats, normalize_name_for_stats


def _name(*parts: str) -> str:
    return ".".join(normalize_name_for_stats(str(p), log_warning=False) for p in ("facility_data", *parts))


def transfer_metrics(source: str, destination: str, stats: dict[str, Any]) -> None:
    """One completed transfer (a TransferStats dict) from endpoint ``source`` to ``destination``."""
    base = ("transfer", f"{source}_to_{destination}")
    seconds = float(stats.get("seconds") or 0.0)
    size = int(stats.get("bytes") or 0)
    rate = float(stats.get("bytes_per_second") or 0.0) or (size / seconds if seconds > 0 else 0.0)
    Stats.incr(_name(*base, "count"))
    Stats.gauge(_name(*base, "bytes"), size)
    Stats.gauge(_name(*base, "files"), int(stats.get("files") or 0))
    Stats.gauge(_name(*base, "bytes_per_second"), rate)
    Stats.timing(_name(*base, "seconds"), timedelta(seconds=seconds))


_ELAPSED = re.compile(r"^(?:(\d+)-)?(?:(\d+):)?(\d+):(\d+)(?:\.\d+)?$", re.ASCII)


def slurm_seconds(elapsed: str | None) -> float | None:
    """Slurm's ``[D-][HH:]MM:SS`` as seconds; None when absent or unreadable."""
    m = _ELAPSED.match(str(elapsed or "").strip())
    if not m:
        return None
    days, hours, minutes, secs = (int(g or 0) for g in m.groups())
    return float(((days * 24 + hours) * 60 + minutes) * 60 + secs)


def _queue_seconds(job: dict[str, Any]) -> float | None:
    try:
        waited = (datetime.fromisoformat(job["start"]) - datetime.fromisoformat(job["submit"])).total_seconds()
    except (KeyError, TypeError, ValueError):  # not started ("Unknown"), or no submit time
        return None
    return waited if waited >= 0 else None


def job_metrics(machine: str, outcome: str, job: dict[str, Any], *, run_seconds: float | None = None) -> None:
    """One finished job: its queue and run time from the (Slurm) accounting record, else ``run_seconds`` as the
    caller measured it, and its outcome."""
    Stats.incr(_name("job", machine, outcome))
    queued = _queue_seconds(job)
    if queued is not None:
        Stats.timing(_name("job", machine, "queue_seconds"), timedelta(seconds=queued))
    ran = slurm_seconds(job.get("elapsed"))
    ran = run_seconds if ran is None else ran
    if ran is not None:
        Stats.timing(_name("job", machine, "run_seconds"), timedelta(seconds=ran))
