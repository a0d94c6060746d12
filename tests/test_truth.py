"""Truth tables: pure logic, no kernel."""
from __future__ import annotations

import json
import re
from types import SimpleNamespace

import pytest

from cnmlab.checks.truth import TruthTable

NAMES = ["a1", "a2", "b1"]


def _expected() -> dict:
    # a1 and a2 share a network; b1 is isolated
    return {(s, d): (s[0] == d[0]) for s in NAMES for d in NAMES if s != d}


def _table(flip: list | None = None, drop: list | None = None, **kw) -> TruthTable:
    exp = _expected()
    obs = dict(exp)
    for p in flip or []:
        obs[p] = not obs[p]
    for p in drop or []:
        del obs[p]
    return TruthTable(NAMES, exp, obs, title="bridge isolation", **kw)


def test_all_correct():
    t = _table()
    assert t.ok and t.wrong == [] and t.summary == "0 wrong, 6 correct"


def test_wrong_cells_in_name_order():
    t = _table(flip=[("b1", "a1"), ("a1", "b1")])
    assert t.wrong == [("a1", "b1"), ("b1", "a1")]
    assert t.summary == "2 wrong, 4 correct"
    assert not t.ok


def test_missing_observation_is_wrong():
    t = _table(drop=[("a2", "a1")])
    assert t.wrong == [("a2", "a1")]
    assert "?" in t.render_text()
    assert "a2 -> a1: expected reach, observed not probed" in t.render_text()


def test_render_text_plain():
    t = _table(flip=[("a1", "b1")])
    text = t.render_text(color=False)
    lines = text.splitlines()
    assert lines[0] == "bridge isolation"
    assert lines[1].split() == ["expected", "a1", "a2", "b1", "observed", "a1", "a2", "b1"]
    # row a1: expected "- . X", observed "- . [.]"
    assert lines[2].split() == ["a1", "-", ".", "X", "a1", "-", ".", "[.]"]
    assert lines[4].split() == ["b1", "X", "X", "-", "b1", "X", "X", "-"]
    assert "1 wrong, 5 correct" in text
    assert "a1 -> b1: expected blocked, observed reaches" in text
    assert "\x1b[" not in text
    # the observed block starts at the same column on every row
    cols = {l.index("observed") if "observed" in l else None for l in lines[1:2]}
    starts = {len(l) - len(l.lstrip()) for l in lines[1:5]}
    assert cols and starts == {0}


def test_render_text_color_highlights_only_wrong():
    t = _table(flip=[("a1", "b1")])
    text = t.render_text(color=True)
    assert text.count("\x1b[1;31m.\x1b[0m") == 1
    assert "[.]" not in text
    plain = re.sub(r"\x1b\[[0-9;]*m", "", text)
    # colour codes do not change the layout
    assert plain.splitlines()[2] == \
        t.render_text(color=False).splitlines()[2].replace("[.]", " .").rstrip()


def test_details_are_quoted():
    exp = _expected()
    res = {p: SimpleNamespace(ok=v, observed="reply" if v else "timeout after 1 s")
           for p, v in exp.items()}
    res[("a2", "a1")] = SimpleNamespace(ok=False, observed="timeout after 1 s")
    t = TruthTable.from_results(NAMES, exp, res)
    assert t.wrong == [("a2", "a1")]
    assert "a2 -> a1: expected reach, observed blocked (timeout after 1 s)" in t.render_text()


def test_to_json():
    t = _table(flip=[("b1", "a2")])
    data = json.loads(t.to_json())
    assert data["names"] == NAMES
    assert data["expected"]["a1"] == {"a2": True, "b1": False}
    assert data["observed"]["b1"]["a2"] is True
    assert data["wrong"] == [{"src": "b1", "dst": "a2", "expected": False, "observed": True}]
    assert data["summary"] == "1 wrong, 5 correct"
    assert data["wrong_count"] == 1 and data["correct_count"] == 5 and data["ok"] is False
    assert data["title"] == "bridge isolation"


def test_partial_expected_leaves_blank_cells():
    exp = {("a1", "a2"): True, ("a1", "b1"): False}
    t = TruthTable(NAMES, exp, {("a1", "a2"): True, ("a1", "b1"): False})
    assert t.summary == "0 wrong, 2 correct"
    row_a2 = t.render_text().splitlines()[2]
    assert row_a2.split() == ["a2", "-", "a2", "-"]


def test_unknown_name_rejected():
    with pytest.raises(ValueError):
        TruthTable(NAMES, {("a1", "zz"): True}, {})


def test_to_rich_renders():
    from rich.console import Console

    t = _table(flip=[("a1", "b1")])
    console = Console(record=True, width=100, color_system=None)
    console.print(t.to_rich())
    out = console.export_text()
    assert "expected" in out and "observed" in out
    assert "1 wrong, 5 correct" in out
    assert "a1 -> b1: expected blocked, observed reaches" in out
