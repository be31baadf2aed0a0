"""A read-only web view of the site's reports directory (prune audits, reconcile reports and charts).

Mounted into the Airflow api-server by ``plugins/facility_reports.py`` and linked from the UI's Browse menu, so an
operator opens a report with one click instead of a shell. Only files under the reports root are served.
"""

from __future__ import annotations

import html
import os
from datetime import UTC, datetime
from pathlib import Path

from fastapi import FastAPI, HTTPException
from fastapi.responses import FileResponse, HTMLResponse

SUFFIXES = {".html", ".htm", ".png", ".json", ".txt", ".csv", ".md", ".svg"}


def reports_root() -> Path:
    """$FACILITY_REPORTS, else $FACILITY_SITE/reports."""
    if os.environ.get("FACILITY_REPORTS"):
        return Path(os.environ["FACILITY_REPORTS"])
    return Path(os.environ.get("FACILITY_SITE", ".site")) / "reports"


def resolve_report(root: Path, relative: str) -> Path:
    """The file ``relative`` under ``root``; refuses anything outside it, hidden, or of an unlisted type."""
    root = root.resolve()
    target = (root / relative).resolve()
    if not target.is_relative_to(root) or any(p.startswith(".") for p in Path(relative).parts):
        raise HTTPException(status_code=404, detail="no such report")
    if target.suffix.lower() not in SUFFIXES or not target.is_file():
        raise HTTPException(status_code=404, detail="no such report")
    return target


def create_app(root: Path | None = None) -> FastAPI:
    app = FastAPI(title="Facility reports")

    def base() -> Path:
        return root if root is not None else reports_root()

    @app.get("/", response_class=HTMLResponse)
    def index() -> str:
        top = base()
        files = sorted((p for p in top.rglob("*") if p.is_file() and p.suffix.lower() in SUFFIXES),
                       key=lambda p: p.stat().st_mtime, reverse=True) if top.is_dir() else []
        rows = "".join(
            f'<tr><td><a href="file/{html.escape(str(p.relative_to(top)))}">{html.escape(str(p.relative_to(top)))}'
            f"</a></td><td>{datetime.fromtimestamp(p.stat().st_mtime, UTC):%Y-%m-%d %H:%M:%S} UTC</td>"
            f"<td>{p.stat().st_size:,}</td></tr>"
            for p in files[:500]
        )
        return (f"<html><head><title>Facility reports</title></head><body><h1>Facility reports</h1>"
                f"<p>{html.escape(str(top))}: {len(files)} file(s), newest first</p>"
                f"<table><tr><th>report</th><th>modified</th><th>bytes</th></tr>{rows}</table></body></html>")

    @app.get("/file/{relative:path}")
    def report(relative: str) -> FileResponse:
        return FileResponse(resolve_report(base(), relative))

    return app
