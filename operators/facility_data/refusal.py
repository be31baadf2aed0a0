"""Expected refusals and the one task boundary that turns them into a single, loud, unretried failure.

A refusal is a "no" that retrying cannot change: a bad run conf (:class:`facility_data.conf.ConfError`), a bad
configuration file (:class:`facility_data.config.ConfigError`), the data-safety policy
(:class:`facility_data.safety.SafetyError`) or a path a transfer may not use (:class:`PathError`, defined here so
the boundary can name it without the core importing ``transfer``, which re-exports it). Every task that can refuse
(the ALS DAG tasks, the Globus operators) runs inside :func:`permanent`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

log = logging.getLogger(__name__)


class PathError(ValueError):
    """A path given to a transfer is absolute, escapes its endpoint root, or is otherwise unusable."""


def _rule(exc: BaseException) -> str | None:
    """The rule ``exc`` is a refusal by, or None when it is a real error."""
    from facility_data.conf import ConfError
    from facility_data.config import ConfigError
    from facility_data.safety import SafetyError

    for kind, rule in ((SafetyError, "data-safety policy"), (PathError, "bad path"),
                       (ConfigError, "bad configuration"), (ConfError, "bad conf")):
        if isinstance(exc, kind):
            return rule
    return None


@contextmanager
def permanent(item: str) -> Iterator[None]:
    """The task boundary for expected refusals: one ERROR line naming ``item`` and the rule, then
    AirflowFailException (no retry: retrying cannot fix them) raised ``from None``, so the task runner's traceback
    is a few Airflow frames: no domain frames, no chained cause. Anything else (a real error) propagates untouched,
    with its traceback and the task's retries."""
    try:
        yield
    except Exception as exc:
        rule = _rule(exc)
        if rule is None:
            raise
        from airflow.sdk.exceptions import AirflowFailException

        reason = f"{type(exc).__name__}: {exc}"
        log.error("refused %s (%s): %s", item, rule, reason)
        raise AirflowFailException(reason) from None
