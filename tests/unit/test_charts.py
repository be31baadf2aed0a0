"""The one chart drawer: a real PNG (opened with PIL), each state in its fixed colour, an empty chart still drawn,
and the file installed atomically (no temporary file left, nothing half-written when the write fails)."""

from __future__ import annotations

import io
import os

import pytest
from PIL import Image

from facility_data import charts

GREEN, GREY, YELLOW, BLACK = (0x2E, 0x7D, 0x32), (0x90, 0xA4, 0xAE), (0xF9, 0xA8, 0x25), (0, 0, 0)


def rgb(hex_colour: str) -> tuple[int, int, int]:
    return tuple(int(hex_colour[i:i + 2], 16) for i in (1, 3, 5))


def colours_of(data: bytes) -> set[tuple[int, int, int]]:
    img = Image.open(io.BytesIO(data))
    assert img.format == "PNG"
    return set(img.convert("RGB").getdata())


def test_a_chart_is_a_png_with_each_state_in_its_colour(tmp_path):
    path = charts.write_states_chart(tmp_path / "states_20240101_x.png", [("2024-01-01", {"done": 3, "partial": 1})],
                                     title="t", ylabel="scans")
    assert path == tmp_path / "states_20240101_x.png" and path.stat().st_size > 0
    seen = colours_of(path.read_bytes())
    assert GREEN in seen and YELLOW in seen and GREY not in seen  # not_started has no scan: no bar, no legend entry
    assert Image.open(path).size == (400, 340)
    assert oct(path.stat().st_mode & 0o777) == oct(0o644)  # readable by the reports browser's user
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary file left beside it


@pytest.mark.parametrize("columns", [[], [("2024-01-01", {})], [("2024-01-01", {"done": 0, "error": 0})]])
def test_nothing_to_draw_still_gives_a_chart_without_bars(tmp_path, columns):
    path = charts.write_states_chart(tmp_path / "empty.png", columns, title="Reconcile state", ylabel="scans")
    seen = colours_of(path.read_bytes())
    assert not {rgb(c) for c in charts.COLOURS.values()} - {BLACK} & seen  # no state's bar (text is black too)
    assert [p.name for p in tmp_path.iterdir()] == ["empty.png"]


def test_an_empty_chart_says_so_rather_than_showing_bare_axes():
    note = rgb(charts._NOTE)
    assert note in colours_of(charts.states_chart_png([], title="t", ylabel="scans"))  # "no scans"
    assert note in colours_of(charts.states_chart_png([("a", {"done": 0})], title="t", ylabel="n", empty_text="x"))
    assert note not in colours_of(charts.states_chart_png([], title="t", ylabel="scans", empty_text=""))
    assert note not in colours_of(charts.states_chart_png([("a", {"done": 1})], title="t", ylabel="scans"))


def test_a_failed_write_leaves_neither_a_temp_file_nor_a_half_chart(tmp_path, monkeypatch):
    old = tmp_path / "states.png"
    old.write_bytes(b"the previous chart")

    def broken(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(charts.os, "replace", broken)
    with pytest.raises(OSError, match="disk full"):
        charts.write_states_chart(old, [("a", {"done": 1})], title="t", ylabel="scans")
    assert old.read_bytes() == b"the previous chart" and [p.name for p in tmp_path.iterdir()] == ["states.png"]


def test_the_chart_is_complete_before_it_appears(tmp_path, monkeypatch):
    seen = {}
    real = os.replace

    def spy(src, dst):  # at the rename: the temp file is hidden, beside the target, and already the whole PNG
        seen["tmp"], seen["data"] = os.path.basename(src), open(src, "rb").read()
        seen["target_before"] = os.path.exists(dst)
        real(src, dst)

    monkeypatch.setattr(charts.os, "replace", spy)
    path = charts.write_states_chart(tmp_path / "c.png", [("a", {"done": 2})], title="t", ylabel="scans")
    assert seen["tmp"].startswith(".c.png.") and not seen["target_before"]
    assert seen["data"] == path.read_bytes() and seen["data"].startswith(b"\x89PNG")


def test_the_agg_backend_draws_without_a_display(monkeypatch):
    import matplotlib

    monkeypatch.delenv("DISPLAY", raising=False)
    charts.states_chart_png([("a", {"done": 1})], title="t", ylabel="scans")
    assert matplotlib.get_backend().lower() == "agg"


def test_a_state_keeps_its_colour_whatever_else_is_drawn():
    unknown = rgb(charts.colour("held_by_the_new_thing"))
    assert charts.colour("held_by_the_new_thing") == charts.colour("held_by_the_new_thing")
    alone = colours_of(charts.states_chart_png([("a", {"held_by_the_new_thing": 2})], title="t", ylabel="n"))
    mixed = colours_of(charts.states_chart_png([("a", {"done": 1, "zz_other": 3, "held_by_the_new_thing": 2})],
                                               title="t", ylabel="n"))
    assert unknown in alone and unknown in mixed and GREEN in mixed
    assert charts.colour("done", {"done": "#123456"}) == "#123456"  # a caller may override


def test_paired_bars_draw_the_found_states_too():
    found_only = colours_of(charts.states_chart_png([("n1", {"done": 2})], title="t", ylabel="exposures",
                                                    found=[{"not_started": 2}]))
    after_only = colours_of(charts.states_chart_png([("n1", {"done": 2})], title="t", ylabel="exposures"))
    assert GREY in found_only and GREEN in found_only and GREY not in after_only
    with pytest.raises(ValueError, match="found has 2 column"):
        charts.states_chart_png([("n1", {"done": 2})], title="t", ylabel="x", found=[{}, {}])


def test_only_the_states_asked_for_are_drawn_in_their_order():
    # a count that is not a state ("total" in the Rubin counts) is never drawn when the states are named
    drawn = colours_of(charts.states_chart_png([("a", {"done": 1, "zz_total": 5})], title="t", ylabel="n",
                                               states=["done"]))
    assert rgb(charts.colour("zz_total")) not in drawn and GREEN in drawn
