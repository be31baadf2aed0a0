"""Manual confs are closed schemas: every key of a run's ``dag_run.conf`` (as given, not Airflow's merged params)
must be known and of the expected JSON type, or the run is refused before any side effect. Airflow merges unknown
conf keys into the params silently, so a misspelt safety key (``is_export_controlled``) would otherwise be ignored.
"""

from __future__ import annotations

_JSON = {str: "a string", bool: "true or false", type(None): "null", list: "a list", int: "an integer"}


class ConfError(ValueError):
    """A run's conf (or asset-event extra) is malformed; raised before any side effect."""


def check_conf(conf: object, schema: dict[str, tuple[type, ...]], *, what: str) -> dict:
    """``conf`` against a closed schema (key -> accepted types). Raises :class:`ConfError` naming every unknown key
    and the first value of a wrong type; returns a copy of ``conf`` ({} for None)."""
    if conf is None:
        return {}
    if not isinstance(conf, dict):
        raise ConfError(f"{what}: conf must be an object, got {type(conf).__name__}")
    unknown = sorted(set(conf) - set(schema), key=str)
    if unknown:
        raise ConfError(f"{what}: unknown conf key(s) {unknown}; expected only {', '.join(schema)}")
    for key, types in schema.items():
        value = conf.get(key)
        # bool is an int in Python: an integer key never accepts true/false
        if key in conf and (not isinstance(value, types) or (isinstance(value, bool) and bool not in types)):
            expected = " or ".join(_JSON[t] for t in types)
            raise ConfError(f"{what}: conf key {key} must be {expected}, got {type(value).__name__} ({value!r})")
    return dict(conf)
