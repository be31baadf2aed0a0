"""The one chart drawer: a stacked bar chart of states (state -> count) per column, drawn with matplotlib's Agg
backend (no display, safe in a worker or the API server).

Used by the Rubin reconcile (a column per night, optionally paired as found / after the run), the ALS reconcile
(one column per acquisition day report) and the dashboard (the ALS chart of recent days, served as bytes). A state
has one colour wherever it is drawn (:data:`COLOURS`; a state not listed gets a fixed colour from its name), so the
same state looks the same in every chart and report. :func:`write_states_chart` installs the PNG atomically (a
hidden temporary file in the same directory, renamed into place), so a reader or the reports browser never sees
half a chart.
"""

from __future__ import annotations

import hashlib
import io
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

# Rubin and ALS states; the two domains share the meaning (and so the colour) of done .. error.
COLOURS: dict[str, str] = {
    "done": "#2e7d32", "not_started": "#90a4ae", "partial": "#f9a825", "incomplete_at_source": "#8e24aa",
    "inconsistent": "#c62828", "inconsistent_at_source": "#ad1457", "pruned": "#1565c0", "error": "#000000",
    "still_embargoed": "#cfd8dc", "export_controlled_held": "#1565c0", "not reconciled": "#cfd8dc",
}
# for a state not in COLOURS: picked by its name's hash, so it is the same colour in every chart (never the
# position-dependent default cycle, under which a state changes colour when another one appears)
_SPARE = ("#6d4c41", "#00838f", "#ff7043", "#558b2f", "#4527a0", "#ef6c00", "#37474f", "#9e9d24")

_NOTE = "#546e7a"  # the "nothing to draw" text (not a neutral grey: antialiased black text makes those)

Counts = Mapping[str, int]


def colour(state: str, colours: Mapping[str, str] | None = None) -> str:
    """The colour ``state`` is drawn in: ``colours`` (the caller's overrides), else :data:`COLOURS`, else a fixed
    spare colour chosen by the state's name."""
    if colours and state in colours:
        return colours[state]
    if state in COLOURS:
        return COLOURS[state]
    return _SPARE[int(hashlib.sha256(state.encode()).hexdigest(), 16) % len(_SPARE)]


def states_chart_png(columns: Sequence[tuple[str, Counts]], *, title: str, ylabel: str,
                     states: Sequence[str] | None = None, found: Sequence[Counts] | None = None,
                     colours: Mapping[str, str] | None = None, empty_text: str | None = None) -> bytes:
    """A PNG: one stacked bar per ``(label, counts)`` column, a segment per state with a count, in ``states`` order
    (default: :data:`COLOURS` order, then any other state by name). ``found``: one count per column as found before
    a run; each column then gets two bars (left as found, right after) and the title says so. Nothing to draw (no
    column, or every count 0) still gives a chart: its title, with ``empty_text`` (default "no <ylabel>", "" for
    none) in it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [label for label, _ in columns]
    after = [counts for _, counts in columns]
    if found is not None and len(found) != len(after):
        raise ValueError(f"found has {len(found)} column(s), the chart {len(after)}")
    if states is None:
        seen = {s for c in [*after, *(found or [])] for s in c}
        states = [s for s in COLOURS if s in seen] + sorted(seen - set(COLOURS))
    bars = [(found, -0.2), (after, 0.2)] if found else [(after, 0.0)]
    fig, ax = plt.subplots(figsize=(max(4.0, 0.8 * len(labels) + 2.5), 3.4), dpi=100)
    try:
        xs = list(range(len(labels)))
        drawn: set[str] = set()
        for counts, shift in bars:
            bottom = [0] * len(labels)
            for state in states:
                values = [c.get(state, 0) for c in counts]
                if any(values):
                    ax.bar([x + shift for x in xs], values, width=0.38 if found else 0.6, bottom=bottom,
                           label=None if state in drawn else state, color=colour(state, colours))
                    bottom = [b + v for b, v in zip(bottom, values, strict=True)]
                    drawn.add(state)
        # "found | after" once in the title, not under every column (labels overlapped beyond a few columns)
        ax.set_xticks(xs, labels, rotation=45 if len(labels) > 4 else 0,
                      ha="right" if len(labels) > 4 else "center")
        ax.set_ylabel(ylabel)
        ax.set_title(title + ("\nleft bar: as found, right bar: after this run" if found else ""))
        if drawn:
            ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
        elif empty_text != "":  # an empty chart says so, rather than bare axes that look like a drawing failure
            ax.text(0.5, 0.5, f"no {ylabel}" if empty_text is None else empty_text, transform=ax.transAxes,
                    ha="center", va="center", color=_NOTE)
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
    finally:
        plt.close(fig)
    return buf.getvalue()


def write_states_chart(path: str | Path, columns: Sequence[tuple[str, Counts]], **options) -> Path:
    """:func:`states_chart_png` written to ``path`` atomically (temp file beside it, fsync, rename; the temp file
    is removed if anything fails); returns ``path``."""
    path = Path(path)
    data = states_chart_png(columns, **options)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp's 0600 would hide the chart from the reports browser's user
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
