"""What every ALS DAG builder shares: the start date, a running task's environment (endpoints, ledger, run conf),
the failure boundary of a leaf step (refusals: facility_data.refusal.permanent), and the reconstruction assets.

Only ``airflow.sdk`` and light project modules are imported at top level; the rest is imported when a task runs.
"""

from __future__ import annotations

import logging
from datetime import datetime

from airflow.sdk import Asset

from facility_data.als.beamline import Beamline

log = logging.getLogger(__name__)

START = datetime(2025, 1, 1)


def context():
    from airflow.sdk import get_current_context

    return get_current_context()


def env(bl: Beamline):
    """(endpoints, ledger) for a running task (never at parse time)."""
    from facility_data.als.ledger import Ledger
    from facility_data.transfer import load_endpoints

    return load_endpoints(), Ledger(bl.ledger_file())


def decision_override(bl: Beamline):
    from airflow.sdk import Variable

    return Variable.get(bl.decision_variable, default=None)


def run_id() -> str | None:
    return getattr(context().get("dag_run"), "run_id", None)


def run_conf() -> dict:
    """The conf exactly as the run was given it. Airflow merges unknown keys into ``params``, where a misspelt
    safety flag would pass unseen; the closed-schema checks read this instead."""
    conf = getattr(context().get("dag_run"), "conf", None)
    return dict(conf) if isinstance(conf, dict) else ({} if conf is None else conf)


def leaf_failure(what: str, exc: BaseException, *, retryable: bool) -> Exception:
    """The boundary of a leaf step that was asked for and not done (nothing downstream waits for it, so data
    movement goes on): one ERROR line naming ``what`` and the reason, and the exception to raise ``from None`` (no
    domain frames, no chained cause). ``retryable``: AirflowException, so the DAG's retries come first; else
    AirflowFailException (a retry cannot fix it). Either way the task ends FAILED and the DAG's failure callback
    sends the alert (once, on the last try)."""
    from airflow.sdk.exceptions import AirflowException, AirflowFailException

    reason = f"{what} failed: {type(exc).__name__}: {exc}"
    log.error("%s (%s)", reason, "retryable" if retryable else "not retryable")
    return (AirflowException if retryable else AirflowFailException)(reason)


def conf_item(conf: object) -> str:
    """What a manual run asked for, to name it in a refusal: its file_path, else the whole (small) conf."""
    if isinstance(conf, dict) and isinstance(conf.get("file_path"), str):
        return repr(conf["file_path"])
    return f"conf {conf!r}"[:300]


def recon_asset(bl: Beamline, target: str) -> Asset:
    return Asset(name=bl.asset_name(target), uri=bl.asset_uri(target), group="als",
                 extra={"beamline": bl.id, "target": target})


def flat(scan: dict) -> dict:
    """A scan record plus flat ``<role>_<what>`` keys, so operators can take ``xcom["data_raw"]`` arguments."""
    out = dict(scan)
    for role, paths in scan["paths"].items():
        for what, path in paths.items():
            out[f"{role}_{what}"] = path
    return out


def announced_line(extra: dict) -> str:
    """An asset event's extra in a few words, for the one log line of an announce task."""
    sizes = ", ".join(f"{role} {size} B" for role, size in (extra.get("sizes") or {}).items())
    return (f"export_controlled={extra.get('export_controlled')}, send_to_nersc={extra.get('send_to_nersc')}"
            + (f", {sizes}" if sizes else ""))


def outputs_line(out: dict) -> str:
    """``{name: {"files", "size", ...}}`` (what record_output / record_copy return) as "tiff: 12 files, 3456 B; ..."."""
    return "; ".join(f"{name}: {o.get('files')} files, {o.get('size')} B" for name, o in out.items())

