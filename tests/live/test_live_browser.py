"""The trigger and backfill dialogs in a real browser (Debian's chromium, Playwright), as an operator uses them
(issue 17): bad values are refused by the form before a run exists; the backfill dialog's
1-hour range means the same windows as the REST API's."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from _live_support import floor15
from playwright.sync_api import expect

# the timeout includes starting the site and Airflow (minutes on a busy 2-core machine)
pytestmark = [pytest.mark.live, pytest.mark.integration, pytest.mark.timeout(900)]


def _run_count(live, dag_id: str) -> int:
    return live.api("GET", f"/dags/{dag_id}/dagRuns", params={"limit": 1})["total_entries"]


def _open(page, live, dag_id: str):
    assert live.server.wait_for_dag(dag_id, timeout=90), f"{dag_id} not parsed"
    page.goto(f"{live.url}/dags/{dag_id}")
    page.get_by_role("button", name="Trigger Dag").click()
    dialog = page.get_by_role("dialog")
    dialog.get_by_text("Run Parameters").wait_for()
    unpause = dialog.get_by_label("on trigger")  # "Unpause <dag> on trigger": a refused form must change nothing
    if unpause.count() and unpause.is_checked():
        unpause.uncheck()
    return dialog


def _submit(page, dialog, before: str) -> tuple[bool, str]:
    """Press Trigger if the form lets us. Returns whether it was enabled and the refusals the dialog shows: every
    line of text that was not there when it opened (field errors, the error box with the API's answer). A dialog
    that closes has accepted the run and shows no refusal."""
    button = dialog.get_by_role("button", name="Trigger", exact=True)
    enabled = button.is_enabled()
    if enabled:
        button.click()
        deadline = datetime.now(UTC) + timedelta(seconds=20)
        while datetime.now(UTC) < deadline and _text(dialog) and not _new_lines(before, _text(dialog)):
            page.wait_for_timeout(250)
        page.wait_for_timeout(500)
    return enabled, _new_lines(before, _text(dialog))


def _text(dialog) -> str:
    """The dialog's text, or "" once it has closed."""
    try:
        return dialog.inner_text(timeout=2_000)
    except Exception:  # playwright's TimeoutError: no dialog any more
        return ""


def _new_lines(before: str, after: str) -> str:
    seen = set(before.splitlines())
    return "\n".join(line for line in after.splitlines() if line.strip() and line not in seen)


def test_new_file_form_refuses_a_path_outside_the_raw_root(browser_page, live_airflow):
    dag_id = "bl832_new_file"
    dialog = _open(browser_page, live_airflow, dag_id)
    before, text = _run_count(live_airflow, dag_id), dialog.inner_text()
    dialog.locator("#element_file_path").fill("../../etc/passwd")
    enabled, errors = _submit(browser_page, dialog, text)
    created = _run_count(live_airflow, dag_id) - before
    assert (not enabled or "file_path" in errors) and created == 0, \
        f"Trigger enabled: {enabled}; refusal shown: {errors!r}; runs created: {created}"


def test_rubin_form_refuses_bad_fields_before_a_run_exists(browser_page, live_airflow):
    """Two bad fields: the dialog refuses, naming the first (Airflow 3.3.2 validates Params one by one and stops at
    the first failure, ParamsDict.validate); no run exists. The domain check names every field at once
    (tests/unit/test_rubin_windows.py::test_every_bad_manual_field_is_named_at_once)."""
    dag_id = "rubin_unembargo_raw"
    dialog = _open(browser_page, live_airflow, dag_id)
    before, text = _run_count(live_airflow, dag_id), dialog.inner_text()
    dialog.locator("#element_day_obs").fill("2025-12-31")
    dialog.locator("#element_obs_ids").fill("x/y")
    enabled, errors = _submit(browser_page, dialog, text)
    assert _run_count(live_airflow, dag_id) == before
    assert not enabled or "day_obs" in errors, f"Trigger enabled: {enabled}; refusal shown: {errors!r}"


def test_backfill_dialog_one_hour_range_proposes_five_windows(browser_page, live_airflow):
    """The dialog asks the API for a dry run of the range: its "To" is inclusive, as POST /api/v2/backfills's is
    (test_live_backfill), so From 10:00 To 11:00 proposes the runs of 10:00 ... 11:00, five 15-minute windows."""
    dag_id = "rubin_unembargo_raw"
    dialog = _open(browser_page, live_airflow, dag_id)
    start = floor15(datetime.now(UTC)) - timedelta(days=2, minutes=15 * 7)  # an odd hour, minutes not :00
    dry_runs = []  # what the dialog asks the API while the operator fills the range
    browser_page.on("response", lambda r: dry_runs.append(r) if r.url.endswith("/backfills/dry_run") else None)
    dialog.get_by_text("Backfill", exact=True).click()
    end = start + timedelta(hours=1)
    for k, moment in enumerate((start, end)):  # From, To: each a popover with a date and a time field (UTC)
        dialog.locator("[data-testid=datetime-input]").nth(k).click()
        popover = browser_page.locator("[data-scope=popover][data-part=content]:visible")
        popover.get_by_placeholder("YYYY/MM/DD").fill(moment.strftime("%Y/%m/%d"))
        popover.get_by_placeholder("HH:mm").fill(moment.strftime("%H:%M"))
        browser_page.keyboard.press("Tab")
        browser_page.keyboard.press("Escape")
        expect(popover).to_have_count(0, timeout=10_000)  # closed before the next field's popover opens
    shown = dialog.get_by_text("will be triggered")
    shown.wait_for(timeout=30_000)
    browser_page.wait_for_timeout(1000)  # the dialog re-asks on every change: let the last answer land

    def asked_for_our_range(r):
        body = json.loads(r.request.post_data or "{}")
        return (datetime.fromisoformat(body["from_date"]), datetime.fromisoformat(body["to_date"])) == (start, end)

    answers = [r.json() for r in dry_runs if asked_for_our_range(r)]
    assert answers, f"the dialog never asked for [{start}, {end}]: {[r.request.post_data for r in dry_runs]}"
    proposed = sorted(datetime.fromisoformat(b["logical_date"]) for b in answers[-1]["backfills"])
    # the same windows as POST /api/v2/backfills creates for this range (test_live_backfill): To is inclusive
    assert proposed == [start + k * timedelta(minutes=15) for k in range(5)], proposed
    assert shown.inner_text().startswith("5 runs"), shown.inner_text()
