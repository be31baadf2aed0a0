"""A read-only web view of the site's reports directory (prune audits, reconcile reports and charts).

Mounted into the Airflow api-server by ``plugins/facility_reports.py`` and linked from the UI's Browse menu, so an
operator opens a report with one click instead of a shell. The index pages through the reports newest first and
filters them by kind (``?kind=prune``), Rubin night (``?night=20261117``) and the date written (``?date=2026-11`` or
``?date=2026-11-17``). Only files under the reports root are served, and only to a user Airflow's own auth manager
lets use the UI (see ``require_airflow_login``); no page names a server path and the app publishes no API docs.
"""

from __future__ import annotations

import html
import logging
import re
from datetime import date as Date
from pathlib import Path
from urllib.parse import quote, urlencode

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import FileResponse, HTMLResponse

from facility_data.reports import SUFFIXES, ReportFile, catalogue, reports_root

PER_PAGE, MAX_PER_PAGE = 100, 500
_NIGHT = re.compile(r"[0-9]{8}")
_DATE = re.compile(r"[0-9]{4}-[0-9]{2}(-[0-9]{2})?")
_KIND = re.compile(r"[A-Za-z0-9_]+")
log = logging.getLogger(__name__)
_UNAVAILABLE = "the reports are not served: Airflow's authentication is not available here"


async def require_airflow_login(request: Request) -> None:
    """Airflow's own check, as the api-server's routes make it: the JWT the UI holds (an ``Authorization: Bearer``
    header, else the ``_token`` cookie the UI sets) must be valid and name a user the auth manager lets use the
    website. Missing or expired: 401 (a browser is sent to the login page); invalid: 403; not allowed: 403.

    Airflow's security module is imported here, not with the plugin, because every Airflow process (each task too)
    loads the plugins and only the api-server needs it. If it cannot be loaded or run, the request is refused
    (503), never served.
    """
    try:
        from airflow.api_fastapi.app import get_auth_manager
        from airflow.api_fastapi.auth.managers.models.resource_details import AccessView
        from airflow.api_fastapi.core_api.security import bearer_scheme, get_user, requires_access_view

        auth_manager = get_auth_manager()  # raises unless the api-server initialised it
    except Exception as exc:
        log.error("facility reports refused: Airflow's auth manager cannot be loaded: %r", exc)
        raise HTTPException(status_code=503, detail=_UNAVAILABLE) from exc
    try:
        user = await get_user(request, _oauth_token=None, bearer_credentials=await bearer_scheme(request))
        requires_access_view(AccessView.WEBSITE)(request, user)
    except HTTPException as exc:
        if exc.status_code == 401 and request.method == "GET" and "text/html" in request.headers.get("accept", ""):
            login = auth_manager.get_url_login(next_url=str(request.url))
            raise HTTPException(status_code=303, detail="log in first", headers={"Location": login}) from exc
        raise
    except Exception as exc:
        log.error("facility reports refused: Airflow's authentication failed: %r", exc)
        raise HTTPException(status_code=503, detail=_UNAVAILABLE) from exc


def resolve_report(root: Path, relative: str) -> Path:
    """The file ``relative`` under ``root``; refuses anything outside it, hidden, or of an unlisted type."""
    root = root.resolve()
    target = (root / relative).resolve()
    if not target.is_relative_to(root) or any(p.startswith(".") for p in Path(relative).parts):
        raise HTTPException(status_code=404, detail="no such report")
    if target.suffix.lower() not in SUFFIXES or not target.is_file():
        raise HTTPException(status_code=404, detail="no such report")
    return target


def _filters(kind: str | None, night: str | None, date: str | None, page: str, per_page: str) -> dict:
    """The query, validated; a 400 names every bad field."""
    bad = []
    if kind and not _KIND.fullmatch(kind):
        bad.append(f"kind: letters, digits and '_' only (got {kind!r})")
    if night and not _NIGHT.fullmatch(night):
        bad.append(f"night: a day_obs, eight ASCII digits like 20261117 (got {night!r})")
    if date:
        try:
            if not _DATE.fullmatch(date):
                raise ValueError
            Date.fromisoformat(date if len(date) == 10 else f"{date}-01")
        except ValueError:
            bad.append(f"date: YYYY-MM or YYYY-MM-DD (got {date!r})")
    numbers = {}
    for name, value, top in (("page", page, None), ("per_page", per_page, MAX_PER_PAGE)):
        if not (value.isascii() and value.isdigit()) or int(value) < 1 or (top and int(value) > top):
            bad.append(f"{name}: a whole number from 1{f' to {top}' if top else ''} (got {value!r})")
        else:
            numbers[name] = int(value)
    if bad:
        raise HTTPException(status_code=400, detail="; ".join(bad))
    return {"kind": kind or None, "night": night or None, "date": date or None, **numbers}


def _matches(r: ReportFile, kind: str | None, night: str | None, date: str | None) -> bool:
    return ((kind is None or r.kind == kind)
            and (night is None or (r.nights is not None and r.nights[0] <= night <= r.nights[1]))
            and (date is None or r.modified.date().isoformat().startswith(date)))


def index_page(reports: list[ReportFile], f: dict) -> str:
    """The index; every name in it is relative to the reports root, whose server path it never shows."""
    esc = html.escape
    chosen = [r for r in reports if _matches(r, f["kind"], f["night"], f["date"])]
    pages = max(1, -(-len(chosen) // f["per_page"]))
    shown = chosen[(f["page"] - 1) * f["per_page"]:f["page"] * f["per_page"]]

    def link(**change) -> str:
        q = {k: v for k, v in {**f, **change}.items() if v is not None and not (k == "page" and v == 1)
             and not (k == "per_page" and v == PER_PAGE)}
        return "?" + urlencode(q) if q else "./"

    kinds = sorted({r.kind for r in reports})
    counts = {k: sum(1 for r in reports if r.kind == k) for k in kinds}
    kind_links = " | ".join([f'<a href="{esc(link(kind=None, page=1))}">all ({len(reports)})</a>']
                            + [f'<a href="{esc(link(kind=k, page=1))}">{esc(k)} ({counts[k]})</a>' for k in kinds])
    options = "".join(f'<option value="{esc(k)}"{" selected" if k == f["kind"] else ""}>{esc(k)}</option>'
                      for k in kinds)
    form = (f'<form method="get">kind <select name="kind"><option value="">all</option>{options}</select> '
            f'night <input name="night" value="{esc(f["night"] or "")}" placeholder="20261117" size="9" '
            f'pattern="[0-9]{{8}}"> written on <input name="date" value="{esc(f["date"] or "")}" '
            f'placeholder="2026-11 or 2026-11-17" size="12" pattern="[0-9]{{4}}-[0-9]{{2}}(-[0-9]{{2}})?"> '
            f'<button type="submit">filter</button></form>')
    rows = "".join(
        f'<tr><td><a href="file/{esc(quote(r.relative))}">{esc(r.relative)}</a></td><td>{esc(r.kind)}</td>'
        f"<td>{esc('' if r.nights is None else '-'.join(dict.fromkeys(r.nights)))}</td>"
        f"<td>{r.modified:%Y-%m-%d %H:%M:%S} UTC</td><td>{r.size:,}</td></tr>"
        for r in shown)
    nav = []
    if f["page"] > 1:
        nav.append(f'<a href="{esc(link(page=f["page"] - 1))}">newer</a>')
    nav.append(f"page {f['page']} of {pages}")
    if f["page"] < pages:
        nav.append(f'<a href="{esc(link(page=f["page"] + 1))}">older</a>')
    return (f"<html><head><meta charset='utf-8'><title>Facility reports</title></head><body>"
            f"<p><a href='dashboard/'>Dashboard</a></p><h1>Facility reports</h1><p>{len(chosen)} of {len(reports)} file(s) match, newest "
            f"first</p><p>{kind_links}</p>{form}<p>{' | '.join(nav)}</p>"
            f"<table><tr><th>report</th><th>kind</th><th>night</th><th>written</th><th>bytes</th></tr>"
            f"{rows or '<tr><td colspan=5>no reports match</td></tr>'}</table>"
            f"<p>{' | '.join(nav)}</p></body></html>")


def create_app(root: Path | None = None, *, rubin_context=None) -> FastAPI:
    """The reports browser and the operator dashboard (``facility_data.ui.dashboard_pages``), both behind Airflow's
    login. ``rubin_context``: how the dashboard opens the Rubin sinks (default: the policy's, via connections)."""
    from facility_data.ui.dashboard_pages import add_dashboard

    # No public API docs, and every route behind Airflow's login.
    app = FastAPI(title="Facility reports", docs_url=None, redoc_url=None, openapi_url=None,
                  dependencies=[Depends(require_airflow_login)])

    def base() -> Path:
        return root if root is not None else reports_root()

    @app.get("/", response_class=HTMLResponse)
    def index(kind: str | None = None, night: str | None = None, date: str | None = None, page: str = "1",
              per_page: str = str(PER_PAGE)) -> str:
        f = _filters(kind, night, date, page, per_page)
        return index_page(catalogue(base()), f)

    @app.get("/file/{relative:path}")
    def report(relative: str) -> FileResponse:
        return FileResponse(resolve_report(base(), relative))

    add_dashboard(app, base, rubin_context=rubin_context)
    return app
