"""Truth tables: who should reach whom, who did, and which cells disagree.

Rows are sources, columns are targets. ``.`` reaches, ``X`` is blocked, ``-`` is the diagonal,
``?`` was expected but not observed (not probed), and a blank cell is not part of the check.
``>`` (observed only) is a one-way cell: the destination received the source's packets but no
reply came back. For a pair that must be blocked it counts as reached (isolation is judged at
the receiver); for a pair that must reach it counts as blocked (no answer).
Expected and observed are printed side by side with the wrong observed cells highlighted, then
one line "N wrong, M correct".
"""
from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

Pair = tuple[str, str]

RED = "\x1b[1;31m"
GREEN = "\x1b[32m"
RESET = "\x1b[0m"


def _sym(v: bool | None) -> str:
    return "?" if v is None else ("." if v else "X")


class TruthTable:
    """Compare an expected reachability matrix with an observed one.

    ``expected`` decides which cells are checked; an expected cell missing from ``observed``
    counts as wrong (shown ``?``). ``details`` (optional, per cell) is the observed text of
    each probe, e.g. ``ProbeResult.observed``, quoted next to the wrong cells.
    """

    def __init__(self, names: Sequence[str], expected: Mapping[Pair, bool],
                 observed: Mapping[Pair, bool], title: str = "",
                 details: Mapping[Pair, str] | None = None,
                 one_way: Iterable[Pair] = ()) -> None:
        self.names = list(names)
        known = set(self.names)
        for s, d in list(expected) + list(observed):
            if s not in known or d not in known:
                raise ValueError(f"cell {s}->{d} names someone not in {self.names}")
        self.expected = dict(expected)
        self.observed = dict(observed)
        self.title = title
        self.details = dict(details or {})
        self.one_way: set[Pair] = set(one_way)
        order = {n: i for i, n in enumerate(self.names)}
        cells = sorted(self.expected, key=lambda p: (order[p[0]], order[p[1]]))
        self.cells: list[Pair] = cells
        self.wrong: list[Pair] = [p for p in cells if self.observed.get(p) != self.expected[p]]
        self.correct = len(cells) - len(self.wrong)

    @classmethod
    def from_results(cls, names: Sequence[str], expected: Mapping[Pair, bool],
                     results: Mapping[Pair, Any], title: str = "") -> "TruthTable":
        """From probe results (anything with ``.ok`` and ``.observed``, e.g. ProbeResult).

        A pair that must be blocked counts as reached when its destination received any of its
        packets (``arrived``), answered or not; one whose packets arrived without any answer is
        a one-way cell (``>``).
        """
        one_way = {p for p, r in results.items() if not r.ok and getattr(r, "arrived", None)
                   and getattr(r, "reason", "timeout") == "timeout"}
        observed = {p: bool(r.ok) or (bool(getattr(r, "arrived", None))
                                      and not expected.get(p, False))
                    for p, r in results.items()}
        return cls(names, expected, observed, title,
                   details={p: r.observed for p, r in results.items()}, one_way=one_way)

    @property
    def ok(self) -> bool:
        return not self.wrong

    @property
    def summary(self) -> str:
        return f"{len(self.wrong)} wrong, {self.correct} correct"

    def __str__(self) -> str:
        return self.render_text(color=False)

    # ---- text ----------------------------------------------------------------------------
    def _cell(self, which: str, s: str, d: str) -> tuple[str, bool]:
        """(symbol, is wrong) for one cell of the expected or observed matrix."""
        if s == d and (s, d) not in self.expected:
            return "-", False
        if (s, d) not in self.expected:
            return " ", False
        if which == "expected":
            return _sym(self.expected[(s, d)]), False
        if (s, d) in self.one_way:
            return ">", (s, d) in self.wrong
        return _sym(self.observed.get((s, d))), (s, d) in self.wrong

    def _matrix_lines(self, which: str, color: bool) -> list[str]:
        w = max([len(n) for n in self.names] + [3])
        rw = max([len(n) for n in self.names] + [len(which)])
        lines = [which.ljust(rw) + " " + "".join(n.center(w + 1) for n in self.names)]
        for s in self.names:
            row = s.ljust(rw) + " "
            for d in self.names:
                sym, bad = self._cell(which, s, d)
                if bad and color:
                    row += " " * ((w + 1 - 1) // 2) + RED + sym + RESET + \
                        " " * (w + 1 - 1 - (w + 1 - 1) // 2)
                elif bad:
                    row += f"[{sym}]".center(w + 1)
                else:
                    row += sym.center(w + 1)
            lines.append(row)
        return lines

    def render_text(self, color: bool = False) -> str:
        left = self._matrix_lines("expected", False)
        right = self._matrix_lines("observed", color)
        width = max(len(l) for l in left)
        out = []
        if self.title:
            out.append(self.title)
        out += [(l.ljust(width) + "    " + r).rstrip() for l, r in zip(left, right)]
        summary = self.summary
        if color:
            summary = (RED if self.wrong else GREEN) + summary + RESET
        out.append(summary)
        for s, d in self.wrong:
            out.append(self._wrong_line(s, d))
        legend = "legend: . reaches   X blocked   - self   ? not probed   " + \
            ("> one way (arrived, no reply)   " if self.one_way else "") + \
            ("red = wrong" if color else "[ ] = wrong")
        out.append(legend)
        return "\n".join(out)

    def _wrong_line(self, s: str, d: str) -> str:
        exp = "reach" if self.expected[(s, d)] else "blocked"
        seen = self.observed.get((s, d))
        if (s, d) in self.one_way:
            obs = f"one way: {d} received {s}'s packets, no reply"
        else:
            obs = "not probed" if seen is None else ("reaches" if seen else "blocked")
        why = self.details.get((s, d))
        return f"  {s} -> {d}: expected {exp}, observed {obs}" + (f" ({why})" if why else "")

    # ---- JSON ----------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        def nested(m: Mapping[Pair, bool]) -> dict[str, dict[str, bool]]:
            out: dict[str, dict[str, bool]] = {}
            for (s, d) in self.cells:
                if (s, d) in m:
                    out.setdefault(s, {})[d] = bool(m[(s, d)])
            return out

        return {
            "title": self.title,
            "names": self.names,
            "expected": nested(self.expected),
            "observed": nested(self.observed),
            "wrong": [{"src": s, "dst": d, "expected": self.expected[(s, d)],
                       "observed": self.observed.get((s, d)),
                       **({"detail": self.details[(s, d)]} if (s, d) in self.details else {})}
                      for s, d in self.wrong],
            "one_way": [{"src": s, "dst": d} for s, d in self.cells if (s, d) in self.one_way],
            "wrong_count": len(self.wrong),
            "correct_count": self.correct,
            "summary": self.summary,
            "ok": self.ok,
        }

    def to_json(self, indent: int | None = None) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    # ---- Rich (TUI) ----------------------------------------------------------------------
    def to_rich(self) -> Any:
        """A Rich renderable: the two matrices side by side, then the summary and wrong cells."""
        from rich.console import Group
        from rich.table import Table
        from rich.text import Text

        def matrix(which: str) -> Table:
            t = Table(title=which, show_edge=False, box=None, padding=(0, 1))
            t.add_column("", style="bold")
            for n in self.names:
                t.add_column(n, justify="center")
            for s in self.names:
                row: list[Any] = [s]
                for d in self.names:
                    sym, bad = self._cell(which, s, d)
                    style = ("bold white on red" if bad else
                             "green" if sym == "." else "yellow" if sym == "X" else "dim")
                    row.append(Text(sym, style=style))
                t.add_row(*row)
            return t

        grid = Table.grid(padding=(0, 4))
        grid.add_row(matrix("expected"), matrix("observed"))
        parts: list[Any] = []
        if self.title:
            parts.append(Text(self.title, style="bold"))
        parts += [grid, Text(self.summary, style="bold red" if self.wrong else "bold green")]
        for s, d in self.wrong:
            parts.append(Text(self._wrong_line(s, d), style="red"))
        return Group(*parts)
