"""Loading and validating the YAML configuration in ``include/``.

Every loader goes through :func:`load_model`, so a bad file always fails the same way: a :class:`ConfigError`
naming the file, the key and what was expected.
"""

from facility_data.config.loader import (
    ConfigError,
    expand_env,
    include_dir,
    load_model,
    site_root,
    temporary_env,
)

__all__ = ["ConfigError", "expand_env", "include_dir", "load_model", "site_root", "temporary_env"]
