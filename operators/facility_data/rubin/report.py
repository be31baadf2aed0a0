"""Human-readable reconcile reports: one HTML page per night plus a PNG chart of states per night.

Written under ``<site>/reports/rubin_reconcile/<instrument>/`` (or ``$FACILITY_REPORTS``, or a directory the caller
names); every path written is logged so an operator can open it from the task log, and the facility_reports UI
plugin (Browse > Facility reports) serves them. A night with no exposures gets no report (an hourly reconcile of a
quiet week would otherwise write a page per empty night), and the ``rubin_reconcile`` retention of
``include/reports.yaml`` is applied each time reports are written.
"""

from __future__ import annotations

import html
import logging
from datetime import UTC, datetime
from pathlib import Path

from facility_data.charts import colour
from facility_data.rubin.classify import STATES, NightResult

log = logging.getLogger(__name__)



def reports_root(reports_dir: str | Path | None = None) -> Path:
    """``reports_dir``, else ``$FACILITY_REPORTS/rubin_reconcile``, else ``$FACILITY_SITE/reports/rubin_reconcile``
    (what the facility_reports UI plugin serves)."""
    if reports_dir is not None:
        return Path(reports_dir)
    from facility_data.reports import reports_root as site_reports

    return site_reports() / "rubin_reconcile"


def prompt_html(result: dict, day_obs: int) -> str:
    """The night's prompt-products section: counts per policy row as found and after this run's repairs."""
    if "prompt" not in result:
        return ""
    esc = html.escape
    prompt = result["prompt"]
    if prompt.get("error"):
        return f"<h2>Prompt products</h2><p><strong>not checked: {esc(prompt['error'])}</strong></p>"
    night = prompt.get("nights", {}).get(str(day_obs))
    if not night:
        return f"<h2>Prompt products</h2><p>{esc(prompt.get('note') or 'not checked for this night')}</p>"
    from facility_data.rubin.prompt_reconcile import COUNTS

    head = "".join(f"<th>{k}</th>" for k in COUNTS)
    rows = "".join(
        f"<tr><td>{esc(row)}</td>" + "".join(f"<td>{night['found'].get(row, {}).get(k, '')} / {c[k]}</td>"
                                              for k in COUNTS)
        + f"<td>{night['repaired'].get(row, '')}</td></tr>" for row, c in night["rows"].items())
    problems = "".join(f"<li>{esc(p['row'])}: {esc(p['state'])}: {esc(str(p.get('destination', '')))} "
                       f"{esc(str(p.get('dataset', '')))}: {esc(p['reason'])}</li>" for p in night["problems"])
    return (f"<h2>Prompt products (datasets x destinations, found / after this run)</h2>"
            f"<table><tr><th>row</th>{head}<th>transferred</th></tr>{rows}</table>"
            f"<ul>{problems or '<li>no problems</li>'}</ul>")


def _has_prompt(result: dict, day_obs: int) -> bool:
    night = (result.get("prompt") or {}).get("nights", {}).get(str(day_obs)) or {}
    return any(any(c.values()) for c in night.get("rows", {}).values())


def night_html(night: NightResult, result: dict, chart: Path | None) -> str:
    c = night.counts
    esc = html.escape
    rows = "".join(
        f"<tr><td>{esc(e.obs_id)}</td><td style='color:{colour(e.state)}'>{esc(e.state)}</td>"
        f"<td>{esc(e.stopped_after or '')}</td><td>{esc(e.first_missing or '')}</td>"
        f"<td>{esc('; '.join(e.problems))}</td></tr>"
        for e in night.exposures if e.state != "done")
    repaired = [r for r in result.get("repaired", []) if r["obs_id"] in {e.obs_id for e in night.exposures}]
    rep_rows = "".join(f"<li>{esc(r['obs_id'])}: {esc(r['state'])} from step {esc(str(r['from']))}</li>"
                       for r in repaired)
    embargoed = "".join(f"<li>{esc(p['obs_id'])}: {esc(p['reason'])}</li>" for p in night.embargoed[:50])
    found = (result.get("found") or {}).get(str(night.day_obs), {})
    counts = "".join(f"<tr><td>{esc(k)}</td><td>{found.get(k, '')}</td><td>{v}</td></tr>" for k, v in c.items())
    img = f"<img src='{esc(chart.name)}' alt='states per night'>" if chart else ""
    return f"""<!doctype html><html><head><meta charset="utf-8">
<title>Rubin reconcile {night.instrument} {night.day_obs}</title>
<style>body{{font-family:sans-serif}} td,th{{padding:2px 8px;border-bottom:1px solid #ddd;text-align:left}}</style>
</head><body>
<h1>Rubin unembargo reconciliation: {esc(night.instrument)} day_obs {night.day_obs}</h1>
<p>Checked {esc(night.checked_at)} ({esc(night.mode)} check, {night.seconds:.1f} s); repair {result.get('repair')},
dry run {result.get('dry_run')}. States reflect the sinks <em>after</em> this run's repairs.</p>
<h2>Counts</h2><table><tr><th>state</th><th>found</th><th>after this run</th></tr>{counts}</table>
{img}
<h2>Exposures not done ({c['total'] - c['done'] - c['pruned']})</h2>
<table><tr><th>obs_id</th><th>state</th><th>stopped after</th><th>first missing step</th><th>problems</th></tr>
{rows or '<tr><td colspan=5>none</td></tr>'}</table>
<h2>Repaired in this run</h2><ul>{rep_rows or '<li>none</li>'}</ul>
<h2>Still embargoed (not handled)</h2><ul>{embargoed or '<li>none</li>'}</ul>
{prompt_html(result, night.day_obs)}
</body></html>
"""


def chart_png(nights: list[NightResult], path: Path, found: dict | None = None) -> Path:
    """A stacked bar chart of exposure states per night: as found (left bar, when given) and after the run."""
    from facility_data.charts import write_states_chart

    title = f"Unembargo state per night ({nights[0].instrument})" if nights else "no nights"
    return write_states_chart(path, [(str(n.day_obs), n.counts) for n in nights], title=title, ylabel="exposures",
                              states=(*STATES, "still_embargoed"),
                              found=[found.get(str(n.day_obs), {}) for n in nights] if found else None)


def write_reports(nights: list[NightResult], result: dict, *, reports_dir: str | Path | None = None) -> list[Path]:
    """One HTML report per night that has exposures and one chart for them; returns the paths (each also
    logged). Then the kind's retention is applied to the directory written into."""
    from facility_data.reports import apply_retention

    empty = [n.day_obs for n in nights if not n.exposures and not n.embargoed and not _has_prompt(result, n.day_obs)]
    if empty:
        log.info("no reconcile report for %d night(s) without exposures: %s", len(empty),
                 ", ".join(map(str, empty)))
    nights = [n for n in nights if n.exposures or n.embargoed or _has_prompt(result, n.day_obs)]
    if not nights:
        return []
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    root = reports_root(reports_dir) / nights[0].instrument
    root.mkdir(parents=True, exist_ok=True)
    chart = chart_png(nights, root / f"states_{nights[0].day_obs}-{nights[-1].day_obs}_{stamp}.png",
                      result.get("found"))
    log.info("reconcile chart: %s", chart)
    written = [chart]
    for night in nights:
        path = root / f"{night.day_obs}_{stamp}.html"
        path.write_text(night_html(night, result, chart))
        log.info("reconcile report for %s %s: %s", night.instrument, night.day_obs, path)
        written.append(path)
    apply_retention(root, "rubin_reconcile")
    return written
