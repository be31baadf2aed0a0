"""The operator dashboard's pages, added to the reports app (so behind the same Airflow login, no API docs).

``/dashboard/`` lists the Rubin nights and ALS days the reconciles reported on, with a search box;
``/dashboard/rubin/<instrument>/<day_obs>`` and ``/dashboard/als/<beamline>/<YYYY-MM-DD>`` show one night or day;
``/dashboard/als/<beamline>/chart.png`` is the ALS reconcile's per-day chart; ``/dashboard/search?q=`` shows one
item's journey. Links into the app are relative to where it is mounted (the request's root path); links into the
Airflow UI honour ``[api] base_url`` (:func:`facility_data.ui.dashboard.run_url`).
"""

from __future__ import annotations

import html
import logging
import re
from collections.abc import Callable
from datetime import date, datetime, timedelta
from pathlib import Path
from urllib.parse import quote

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from facility_data.reports import catalogue
from facility_data.ui import dashboard as d

log = logging.getLogger(__name__)
esc = html.escape
_NAME = re.compile(r"[A-Za-z0-9_]{1,64}")
_DAY_OBS = re.compile(r"[0-9]{8}")
_ISO_DAY = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
_QUERY = re.compile(r"[A-Za-z0-9_./-]{1,300}")
CHART_DAYS = 14
STYLE = ("<style>body{font-family:sans-serif;margin:1em} td,th{padding:2px 8px;border-bottom:1px solid #ddd;"
         "text-align:left} .warn{color:#c62828}</style>")


def _page(title: str, body: str, app: str) -> str:
    nav = (f'<p><a href="{app}/dashboard/">Dashboard</a> | <a href="{app}/">Reports</a></p>'
           f'<form method="get" action="{app}/dashboard/search">scan path or obs_id '
           f'<input name="q" size="50" aria-label="search"> <button type="submit">search</button></form>')
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{esc(title)}</title>{STYLE}</head><body>"
            f"{nav}<h1>{esc(title)}</h1>{body}</body></html>")


def _table(head: list[str], rows: list[list[str]], empty: str) -> str:
    th = "".join(f"<th>{esc(h)}</th>" for h in head)
    trs = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><tr>{th}</tr>{trs or f'<tr><td colspan={len(head)}>{esc(empty)}</td></tr>'}</table>"


def _link(href: str, text: str) -> str:
    return f'<a href="{esc(href)}">{esc(text)}</a>'


def _when(t: datetime | str | None) -> str:
    if t is None:
        return ""
    if isinstance(t, str):
        t = datetime.fromisoformat(t)
    return f"{t:%Y-%m-%d %H:%M:%S} UTC"


def _counts(counts: dict[str, int]) -> str:
    return _table(["state", "count"], [[esc(k), str(v)] for k, v in counts.items() if v or k == "done"], "none")


def _app_root(request: Request) -> str:
    """Where this app is mounted, as the browser sees it (the api-server's root path plus the plugin prefix)."""
    return esc(request.scope.get("root_path", "").rstrip("/"))


def _bad(detail: str, status: int = 400) -> HTTPException:
    return HTTPException(status_code=status, detail=detail)


def _day_obs(value: str) -> int:
    try:
        if not _DAY_OBS.fullmatch(value):
            raise ValueError
        datetime.strptime(value, "%Y%m%d")
    except ValueError:
        raise _bad(f"day_obs: eight ASCII digits of a real date like 20261117 (got {value!r})") from None
    return int(value)


def _iso_day(value: str, name: str = "day") -> date:
    try:
        if not _ISO_DAY.fullmatch(value):
            raise ValueError
        return date.fromisoformat(value)
    except ValueError:
        raise _bad(f"{name}: YYYY-MM-DD (got {value!r})") from None


def _runs_unavailable(exc: Exception) -> str:
    log.error("dashboard: Airflow's runs cannot be read: %r", exc)
    return (f"<p class='warn'>Run links unavailable: Airflow's metadata DB could not be read "
            f"({esc(type(exc).__name__)}).</p>")


def add_dashboard(app: FastAPI, base: Callable[[], Path], *, rubin_context: Callable | None = None) -> None:
    """Add the dashboard's routes to ``app`` (the reports app: its dependencies guard them too). ``base``: the
    reports root; ``rubin_context``: how to open the Rubin sinks (default: the policy's, through connections)."""

    def beamline(name: str):
        bls = d.als_beamlines()
        if name not in bls:
            raise _bad(f"unknown beamline {name!r}; known: {sorted(bls)}", 404)
        return bls[name]

    @app.get("/dashboard/", response_class=HTMLResponse)
    def overview(request: Request) -> str:
        app_root, reports = _app_root(request), catalogue(base())
        body = ["<h2>Rubin nights</h2>"]
        nights = sorted({(r.relative.split("/")[1], n) for r in reports if r.kind == "rubin_reconcile" and r.nights
                         and r.relative.endswith(".html") for n in r.nights}, reverse=True)
        body.append(_table(["instrument", "night (day_obs)"],
                           [[esc(i), _link(f"{app_root}/dashboard/rubin/{quote(i)}/{n}", n)] for i, n in nights[:30]],
                           "no Rubin reconcile report yet"))
        body.append(f'<form method="get" action="{app_root}/dashboard/rubin">Any night, read live from the sinks: '
                    'instrument <input name="instrument" size="10"> day_obs <input name="day_obs" size="9" '
                    'placeholder="20261117"> <button type="submit">open</button></form>')
        body.append("<h2>ALS days</h2>")
        for bl_id in sorted(d.als_beamlines()):
            days = sorted(d.als_report_days(reports, bl_id), reverse=True)[:CHART_DAYS]
            links = " ".join(_link(f"{app_root}/dashboard/als/{bl_id}/{x[:4]}-{x[4:6]}-{x[6:]}",
                                   f"{x[:4]}-{x[4:6]}-{x[6:]}") for x in days)
            chart = (f'<br><img alt="{esc(bl_id)} reconcile state per day" '
                     f'src="{app_root}/dashboard/als/{bl_id}/chart.png">' if days else "")
            body.append(f"<h3>{esc(bl_id)}</h3><p>{links or 'no reconcile report yet'}{chart}</p>")
        return _page("Facility dashboard", "".join(body), app_root)

    @app.get("/dashboard/rubin")
    def rubin_form(request: Request, instrument: str = "", day_obs: str = "") -> RedirectResponse:
        _day_obs(day_obs)
        if not _NAME.fullmatch(instrument):
            raise _bad(f"instrument: letters, digits and '_' (got {instrument!r})")
        return RedirectResponse(f"{_app_root(request)}/dashboard/rubin/{instrument}/{day_obs}", status_code=303)

    @app.get("/dashboard/rubin/{instrument}/{day_obs}", response_class=HTMLResponse)
    def rubin_night(request: Request, instrument: str, day_obs: str) -> str:
        app_root, night_no = _app_root(request), _day_obs(day_obs)
        if not _NAME.fullmatch(instrument):
            raise _bad(f"instrument: letters, digits and '_' (got {instrument!r})")
        try:
            known = d.rubin_instruments()
        except Exception as exc:
            log.error("dashboard: the embargo policy cannot be loaded: %r", exc)
            raise _bad(f"the Rubin policy cannot be loaded ({type(exc).__name__}): nothing can be shown", 503) \
                from exc
        if instrument not in known:
            raise _bad(f"unknown instrument {instrument!r}; the policy knows {known}", 404)
        try:
            night = d.rubin_night(instrument, night_no, context_factory=rubin_context)
        except Exception as exc:  # a sink that cannot be read: refused loudly, never shown as empty
            log.error("dashboard: night %s %s: the sinks cannot be read: %r", instrument, day_obs, exc)
            raise _bad(f"the sinks of {instrument} {day_obs} cannot be read: {type(exc).__name__}: "
                       f"{d.scrub(str(exc))}", 503) from exc
        names = sorted({s for e in night.exposures for s in e.sinks})
        warn = ""
        try:
            steps = d.task_steps([e.obs_id for e in night.exposures], "rubin_")
        except Exception as exc:
            steps, warn = {}, _runs_unavailable(exc)
        rows = []
        for e in night.exposures:
            last = (steps.get(e.obs_id) or [None])[-1]
            run = _link(last.url, f"{last.dag_id} {last.run_id}") if last else "no run yet"
            rows.append([_link(f"{app_root}/dashboard/search?q={quote(e.obs_id)}", e.obs_id), esc(e.state),
                         esc(e.first_missing or "")] + [esc(e.sinks.get(n, "")) for n in names]
                        + [esc(d.scrub("; ".join(e.problems))), run])
        reports = catalogue(base())
        chart = d.rubin_chart(reports, instrument, night_no)
        chart_html = (f"<h2>Reconcile chart</h2><p>written {_when(chart.modified)} by the newest reconcile run "
                      f"covering this night</p><img alt='reconcile chart' src='{app_root}/file/"
                      f"{esc(quote(chart.relative))}'>" if chart else "<p>No reconcile chart covers this night yet.</p>")
        body = (f"<p>Read live from the sinks at {_when(night.checked_at)} by the reconcile's own read-only check "
                f"({esc(night.mode)}, {night.seconds:.1f} s); {len(night.embargoed)} exposure(s) still embargoed "
                f"are not shown.</p>{warn}<h2>By state</h2>{_counts(night.counts)}{chart_html}"
                "<h2>Exposures</h2>"
                + _table(["obs_id", "state", "first missing step", *map(_sink_label, names), "problems", "run"], rows,
                         "no exposure past release this night"))
        return _page(f"Rubin {instrument} night {day_obs}", body, app_root)

    @app.get("/dashboard/als/{beamline_id}/chart.png")
    def als_chart(beamline_id: str, last: str | None = None) -> Response:
        bl = beamline(beamline_id)
        reports = catalogue(base())
        if last:
            end = _iso_day(last, "last")
        else:
            days = sorted(d.als_report_days(reports, bl.id))
            end = date.fromisoformat(f"{days[-1][:4]}-{days[-1][4:6]}-{days[-1][6:]}") if days else date.today()
        days = [d.als_day(bl, end - timedelta(days=k), base(), reports) for k in range(CHART_DAYS - 1, -1, -1)]
        return Response(d.als_chart_png(bl.id, days), media_type="image/png")

    @app.get("/dashboard/als/{beamline_id}/{day}", response_class=HTMLResponse)
    def als_day(request: Request, beamline_id: str, day: str) -> str:
        app_root, bl, when = _app_root(request), beamline(beamline_id), _iso_day(day)
        try:
            result = d.als_day(bl, when, base())
        except Exception as exc:  # the report, the ledger or the runs' DB unreadable: refused, never an empty day
            log.error("dashboard: %s %s cannot be read: %r", bl.id, day, exc)
            raise _bad(f"{bl.id} {day} cannot be read: {type(exc).__name__}", 503) from exc
        locations = sorted({loc for s in result.scans for loc in s.copies})
        rows = [[_link(f"{app_root}/dashboard/search?q={quote(s.scan)}", s.scan), esc(s.state), esc(s.step or "")]
                + [esc(s.copies.get(loc, "-")) for loc in locations] + [esc(s.reason),
                   _link(d.run_url(s.dag_id, s.run_id), f"{s.dag_id} {s.run_id}") if s.dag_id and s.run_id
                   else esc(s.run_id or "no run recorded")] for s in result.scans]
        chart = f" and its {_link(f'{app_root}/file/{quote(result.chart)}', 'chart')}" if result.chart else ""
        source = (f"<p>States from the newest reconcile report of this day, written {_when(result.report_written)}"
                  f"{' (a dry run)' if result.dry_run else ''}: "
                  f"{_link(f'{app_root}/file/{quote(result.report.relative)}', result.report.relative)}{chart}; "
                  f"copies from the ledger now.</p>" if result.report else
                  "<p class='warn'>No reconcile report of this day yet: copies from the ledger only.</p>")
        body = (f"{source}<h2>By state</h2>{_counts(result.counts)}"
                f'<img alt="reconcile state per day" src="{app_root}/dashboard/als/{bl.id}/chart.png?last={day}">'
                "<h2>Scans</h2>"
                + _table(["scan", "state", "first missing step", *locations, "reason", "run"], rows,
                         "no scan of this day"))
        return _page(f"{bl.id} acquisition day {day}", body, app_root)

    @app.get("/dashboard/search", response_class=HTMLResponse)
    def search(request: Request, q: str = "") -> str:
        app_root = _app_root(request)
        if not _QUERY.fullmatch(q) or ".." in q.split("/"):
            raise _bad("q: a scan path (raw/<folder>/<file>.h5 or the watcher's path) or an obs_id: letters, "
                       f"digits, '_', '-', '.', '/', at most 300 (got {q[:80]!r})")
        reports = catalogue(base())
        parts = []
        for bl_id, bl in sorted(d.als_beamlines().items()):
            found = d.als_journey(bl, q, base(), reports)
            if found is None:
                continue
            scan, events, state = found
            now = (f"<p>State: <b>{esc(state.state)}</b>{' at ' + esc(state.step) if state.step else ''}: "
                   f"{esc(state.reason)}</p>" if state else "<p>In no reconcile report yet.</p>")
            day = d._scan_day(scan)
            day_link = _link(f"{app_root}/dashboard/als/{bl_id}/{day}", f"{bl_id} {day}") if day else ""
            rows = [[esc(_when(e.time)), esc(e.what),
                     _link(d.run_url(e.dag_id, e.run_id), f"{e.dag_id} {e.run_id}") if e.dag_id and e.run_id
                     else esc(e.run_id or "")] for e in events]
            parts.append(f"<h2>ALS {esc(bl_id)} scan {esc(scan)}</h2><p>{day_link}</p>{now}"
                         + _table(["when", "step", "run"], rows, "no ledger event"))
        if _NAME.fullmatch(q):
            try:
                steps = d.task_steps([q], "rubin_")[q]
            except Exception as exc:
                steps = []
                parts.append(_runs_unavailable(exc))
            if steps:
                m = re.search(r"_([0-9]{8})_", q)
                nights = " ".join(_link(f"{app_root}/dashboard/rubin/{i}/{m.group(1)}", f"{i} night {m.group(1)}")
                                  for i in _instruments()) if m else ""
                rows = [[esc(_when(s.start)), esc(s.task_id), esc(s.state or "none"), esc(_when(s.end)),
                         _link(s.url, f"{s.dag_id} {s.run_id}")] for s in steps]
                parts.append(f"<h2>Rubin exposure {esc(q)}</h2><p>{nights}</p>"
                             + _table(["started", "step", "state", "ended", "run (task log)"], rows, ""))
        body = "".join(parts) or f"<p>No scan or exposure matches {esc(q)}.</p>"
        return _page(f"Journey of {q}", body, app_root)


def _sink_label(step: str) -> str:
    """A sink's column title: a destination Butler's step is named by its URI, a server path; show its last part."""
    kind, sep, uri = step.partition(":")
    return f"{kind} {uri.rstrip('/').rsplit('/', 1)[-1]}" if sep else step


def _instruments() -> list[str]:
    try:
        return d.rubin_instruments()
    except Exception as exc:  # the night link is a convenience: without a policy the steps are still shown
        log.warning("dashboard: no night links, the Rubin policy cannot be loaded: %r", exc)
        return []
