"""Register the parts of connection URLs that may carry a credential with Airflow's secrets masker.

Airflow masks connection passwords (and extras with sensitive names) by itself, not hosts: a webhook URL
(``https://hooks.slack.com/services/T…/B…/<token>``) or an API URL with ``?token=…`` or ``user:pass@`` in it would
reach task logs whenever a client prints it (requests and urllib3 print the path and query in their errors). Every
hook calls :func:`mask_url` on the URL it builds from its connection.
"""

from __future__ import annotations

from urllib.parse import parse_qsl, unquote, urlsplit

#: a path segment at least this long is treated as a possible token (API paths such as "api/v3" stay readable)
TOKEN_SEGMENT_LENGTH = 16


def url_secrets(url: str | None, *, whole_path: bool = False) -> list[str]:
    """The substrings of ``url`` that may be credentials: the URL itself, its user info, every query value, and its
    path (``whole_path``: a webhook's path is its credential) or the token-like segments of it."""
    if not url:
        return []
    parts = urlsplit(url if "://" in url else f"https://{url}")
    out = [url, parts.username, parts.password, *(v for _, v in parse_qsl(parts.query, keep_blank_values=False))]
    segments = [s for s in parts.path.split("/") if s]
    if whole_path and segments:  # plain words ("services", "hooks") stay readable elsewhere in the log
        out += [parts.path, parts.path.strip("/"), *(s for s in segments if any(c.isdigit() for c in s))]
    out += [s for s in segments if len(s) >= TOKEN_SEGMENT_LENGTH]
    out += [unquote(s) for s in out if s and unquote(s) != s]
    return [s for s in dict.fromkeys(out) if s]


def mask_url(url: str | None, *, whole_path: bool = False) -> None:
    """Mask :func:`url_secrets` of ``url`` in this task's logs (and in what ``redact`` returns)."""
    from airflow.sdk.log import mask_secret

    for secret in url_secrets(url, whole_path=whole_path):
        mask_secret(secret)
