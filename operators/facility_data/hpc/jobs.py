"""Rendering job scripts from the templates in include/jobs/ (Jinja2, strict: a missing parameter is an error)."""

from __future__ import annotations

import shlex
from pathlib import Path

from facility_data.config import ConfigError, include_dir


def jobs_dir() -> Path:
    return include_dir() / "jobs"


def render_job(template: str, **params) -> str:
    """Render ``include/jobs/<template>`` with ``params``; raises ConfigError naming a missing parameter."""
    import jinja2

    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(jobs_dir())), undefined=jinja2.StrictUndefined,
                             keep_trailing_newline=True, autoescape=False)
    env.filters["q"] = shlex.quote  # templates quote every path: {{ raw_file | q }}
    if "job_name" in params and not str(params["job_name"]).replace("-", "").replace("_", "").replace(".", "") \
            .isalnum():
        raise ConfigError(f"job_name {params['job_name']!r} may only hold letters, digits, '-', '_' and '.'")
    try:
        return env.get_template(template).render(**params)
    except jinja2.TemplateNotFound:
        raise ConfigError(f"{jobs_dir() / template}: job template not found") from None
    except jinja2.UndefinedError as exc:
        raise ConfigError(f"{jobs_dir() / template}: {exc} (pass it as a job parameter)") from None
