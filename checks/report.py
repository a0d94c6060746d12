"""Rendering check results, shared by the pytest plugin and the ``cnmlab`` CLI.

* ``render_result`` / ``render_results``: PASS/FAIL/SKIP lines with expected / observed /
  reason, and the truth tables of matrix checks.
* ``rows`` and ``grade_sheet``: the JSON grade sheet, one row per (learner, check); a row with
  ``"graded": false`` (a learner's own check) is listed but never counted.
* ``grading_sheet``: the sheet of a graded class (points, budget, refused submissions).
* ``render_grades``: a per-learner table for the terminal.
* ``write_json`` / ``write_junit``: files for CI (the plugin's JUnit comes from pytest's own
  ``--junitxml``; ``write_junit`` serves the CLI when it runs checks without pytest).
"""
from __future__ import annotations

import json
import os
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from cnmlab.checks.api import CheckResult

RED = "\x1b[1;31m"
GREEN = "\x1b[32m"
YELLOW = "\x1b[33m"
RESET = "\x1b[0m"


def status(r: CheckResult) -> str:
    if r.skipped:
        return "SKIP"
    return "PASS" if r.ok else "FAIL"


def _paint(text: str, code: str, color: bool) -> str:
    return f"{code}{text}{RESET}" if color else text


def failure_text(r: CheckResult, with_table: bool = True) -> str:
    """What a failed check says: expected, observed, reason (and its truth table)."""
    lines = [f"expected: {r.expected}", f"observed: {r.observed}"]
    if r.reason:
        lines.append(f"reason:   {r.reason}")
    if with_table and r.table is not None:
        lines.append("")
        lines.append(r.table.render_text())
    return "\n".join(lines)


def render_result(r: CheckResult, color: bool = False, verbose: bool = False,
                  indent: str = "") -> str:
    st = status(r)
    code = {"PASS": GREEN, "FAIL": RED, "SKIP": YELLOW}[st]
    head = f"{indent}{_paint(st, code, color)} {r.check}"
    if st == "SKIP":
        head += f"  ({r.reason})" if r.reason else ""
        if r.observed in ("", "-"):  # not run (not in the target's profile)
            return head
        return "\n".join([head, f"{indent}     expected: {r.expected}",
                           f"{indent}     observed: {r.observed}"])
    if st == "PASS" and not verbose:
        return head
    body = [f"{indent}     expected: {r.expected}", f"{indent}     observed: {r.observed}"]
    if r.reason:
        body.append(f"{indent}     reason:   {r.reason}")
    return "\n".join([head, *body])


def render_results(results: Sequence[CheckResult], title: str = "", color: bool = False,
                   verbose: bool = False, tables: bool = True) -> str:
    """Every result (failures with expected/observed/reason), the tables, one summary line."""
    out = []
    if title:
        out.append(title)
    for r in results:
        out.append(render_result(r, color=color, verbose=verbose, indent="  "))
    if tables:
        for r in results:
            if r.table is not None:
                out.append("")
                out.append(f"  truth table: {r.check}")
                out += ["    " + line for line in r.table.render_text(color=color).splitlines()]
    out.append("  " + summary(results, color=color))
    return "\n".join(out)


def counts(results: Iterable[CheckResult]) -> dict[str, int]:
    c = {"passed": 0, "failed": 0, "skipped": 0, "total": 0}
    for r in results:
        c["total"] += 1
        c["skipped" if r.skipped else "passed" if r.ok else "failed"] += 1
    return c


def summary(results: Sequence[CheckResult], color: bool = False) -> str:
    c = counts(results)
    text = f"{c['passed']} passed, {c['failed']} failed"
    if c["skipped"]:
        text += f", {c['skipped']} skipped"
    return _paint(text, RED if c["failed"] else GREEN, color)


# ---------------------------------------------------------------------------------------------
# grade sheets


def row(learner: str, r: CheckResult) -> dict[str, Any]:
    return {"learner": learner, "check": r.check, "kind": r.kind, "ok": bool(r.ok),
            "skipped": bool(r.skipped), "expected": r.expected, "observed": r.observed,
            "reason": r.reason,
            "table": r.table.to_dict() if r.table is not None else None}


def rows(by_learner: Mapping[str, Sequence[CheckResult]]) -> list[dict[str, Any]]:
    return [row(learner, r) for learner, results in by_learner.items() for r in results]


def grade_sheet(all_rows: Sequence[Mapping[str, Any]],
                info: Mapping[str, Mapping[str, Any]] | None = None,
                **meta: Any) -> dict[str, Any]:
    """``{"rows": [...], "learners": {name: {passed, failed, skipped, total, ok, ...info}},
    ...meta}``. Rows marked ``"graded": false`` are listed but not counted."""
    learners: dict[str, dict[str, Any]] = {}
    for name in info or {}:
        learners[name] = {"passed": 0, "failed": 0, "skipped": 0, "total": 0}
    for rw in all_rows:
        s = learners.setdefault(rw["learner"], {"passed": 0, "failed": 0, "skipped": 0,
                                                "total": 0})
        if rw.get("graded") is False:
            continue
        s["total"] += 1
        s["skipped" if rw.get("skipped") else "passed" if rw["ok"] else "failed"] += 1
    for name, s in learners.items():
        s.update((info or {}).get(name, {}))
        s["ok"] = s["failed"] == 0 and not s.get("error")
    return {**meta, "ok": all(s["ok"] for s in learners.values()), "learners": learners,
            "rows": list(all_rows)}


def grading_sheet(grades: Sequence[Any], assignment: Any, **meta: Any) -> dict[str, Any]:
    """The sheet of a graded class (``grading.LearnerGrade`` per learner): every assignment
    check as a graded row with its points, the learners' own checks as ungraded rows."""
    all_rows: list[dict[str, Any]] = []
    info: dict[str, dict[str, Any]] = {}
    for g in grades:
        for c, r in zip(assignment.checks, g.results):
            rw = row(g.learner, r)
            rw.update(graded=True, id=c.id, optional=c.optional, max_points=c.points,
                      points=c.points if r.ok and not r.skipped and not c.optional else 0.0)
            all_rows.append(rw)
        for r in g.extra:
            rw = row(g.learner, r)
            rw.update(graded=False, id=None, optional=True, max_points=0.0, points=0.0)
            all_rows.append(rw)
        info[g.learner] = {"points": g.points, "max_points": g.max_points,
                           "submission": g.path, "error": g.error,
                           "seconds": round(g.seconds, 3)}
    return grade_sheet(all_rows, info, assignment=assignment.to_dict(), **meta)


def _num(x: float) -> str:
    return f"{x:g}"


def render_grades(sheet: Mapping[str, Any], color: bool = False) -> str:
    """A per-learner table: points (when graded), passed/total and the failed checks; a
    learner's own checks follow on their own line, marked as not graded."""
    learners = sheet.get("learners") or {}
    if not learners:
        return "no results"
    w = max([len(n) for n in learners] + [7])
    graded = any("points" in s for s in learners.values())
    pw = max([len(f"{_num(s.get('points', 0))}/{_num(s.get('max_points', 0))}")
              for s in learners.values()] + [6]) if graded else 0
    head = f"{'learner'.ljust(w)}  result  " + (f"{'points'.ljust(pw)}  " if graded else "")
    out = [head + "passed  failed checks"]
    for name, s in learners.items():
        mine = [r for r in sheet["rows"] if r["learner"] == name]
        failed = [r["check"] for r in mine if r.get("graded") is not False
                  and not r["ok"] and not r.get("skipped")]
        res = _paint("PASS" if s["ok"] else "FAIL", GREEN if s["ok"] else RED, color)
        pts = (f"{_num(s.get('points', 0))}/{_num(s.get('max_points', 0))}".ljust(pw) + "  "
               if graded else "")
        what = f"submission refused: {s['error']}" if s.get("error") else \
            ("; ".join(failed) or "-")
        out.append(f"{name.ljust(w)}  {res}    {pts}{s['passed']:>2}/{s['total']:<3} {what}")
        own = [r for r in mine if r.get("graded") is False]
        if own:
            bad = [r["check"] for r in own if not r["ok"]]
            out.append(f"{''.ljust(w)}  own checks (not graded): "
                       f"{len(own) - len(bad)}/{len(own)} passed"
                       + (f"; failed: {'; '.join(bad)}" if bad else ""))
    return "\n".join(out)


def _atomic_write(path: str, text: str) -> None:
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def write_json(path: str, sheet: Mapping[str, Any]) -> None:
    _atomic_write(path, json.dumps(sheet, indent=2) + "\n")


def junit_xml(by_learner: Mapping[str, Sequence[CheckResult]], suite: str = "cnmlab") -> str:
    """JUnit XML: one testsuite per learner (target), one testcase per check."""
    root = ET.Element("testsuites", name=suite)
    for learner, results in by_learner.items():
        c = counts(results)
        ts = ET.SubElement(root, "testsuite", name=learner, tests=str(c["total"]),
                           failures=str(c["failed"]), skipped=str(c["skipped"]), errors="0")
        for r in results:
            tc = ET.SubElement(ts, "testcase", classname=f"{suite}.{learner}", name=r.check)
            if r.skipped:
                ET.SubElement(tc, "skipped", message=r.reason)
            elif not r.ok:
                f = ET.SubElement(tc, "failure", message=r.reason or r.observed)
                f.text = failure_text(r)
            else:
                ET.SubElement(tc, "system-out").text = f"observed: {r.observed}"
    ET.indent(root)
    return '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(root, encoding="unicode") \
        + "\n"


def write_junit(path: str, by_learner: Mapping[str, Sequence[CheckResult]],
                suite: str = "cnmlab") -> None:
    _atomic_write(path, junit_xml(by_learner, suite))
