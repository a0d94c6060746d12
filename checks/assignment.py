"""The instructor's assignment: what is checked, what each check is worth, how long it may take.

Grading splits two files with two owners. The **assignment** is the instructor's; a learner's
**submission** (``checks/submission.py``) only says which of their namespaces plays which role::

    # bridge-hw.yaml (instructor)
    name: bridge-hw
    profile: bridge            # every check of checks/profiles/bridge.yaml ...
    skip: [hairpin]            # ... except these ids
    points: {truth-table: 3}   # points per check id (default 1; optional checks are worth 0)
    deadline: 15               # seconds one check may take (default), before it counts as failed
    budget: 90                 # seconds of wall clock per learner, all checks together
    checks:                    # the instructor's own checks, on top of (or instead of) a profile
      - id: mtu-c1
        check: {mtu: {sandbox: c1, mtu: 1500}}
        points: 2
        deadline: 5
      - id: resolv
        check: {python: {call: "mycourse.checks:resolv_conf", sandbox: c3}}  # code: here only

A check that does not finish within its deadline, or is cut off by the learner's budget, or
cannot run at all, is a failure with its reason; nothing counts as passed unless it ran and
passed.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Any

from cnmlab import yamlsrc
from cnmlab.checks import conformance, library
from cnmlab.checks.kinds import parse_spec
from cnmlab.errors import CnmError, InvalidInput
from cnmlab.yamlsrc import Source

DEFAULT_DEADLINE = 15.0   # s per check: the slowest built-in check at its longest timeout fits
DEFAULT_BUDGET = 90.0     # s per learner: the bridge profile takes about 4 s on a sound setup
MAX_SECONDS = 3600.0

_TOP = {"name", "description", "profile", "skip", "points", "deadline", "budget", "checks"}
_ENTRY = {"id", "check", "label", "optional", "why", "points", "deadline"}


@dataclass
class GradedCheck:
    """One check of an assignment, with its worth and time limit."""

    id: str
    spec: dict[str, Any]
    label: str
    points: float = 1.0
    deadline: float = DEFAULT_DEADLINE
    optional: bool = False  # reported, worth nothing, never fails a learner
    why: str = ""

    @property
    def kind(self) -> str:
        return next(iter(self.spec))


@dataclass
class Assignment:
    name: str
    checks: list[GradedCheck]
    budget: float = DEFAULT_BUDGET
    profile: str | None = None
    description: str = ""
    path: str = ""

    @property
    def max_points(self) -> float:
        return sum(c.points for c in self.checks if not c.optional)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "profile": self.profile, "budget": self.budget,
                "max_points": self.max_points,
                "checks": [{"id": c.id, "label": c.label, "points": c.points,
                            "deadline": c.deadline, "optional": c.optional}
                           for c in self.checks]}


def _seconds(src: Source, where: tuple[Any, ...], value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or \
            not 0 < value <= MAX_SECONDS:
        raise src.error(where, f"must be a number of seconds in (0, {MAX_SECONDS:g}], "
                               f"got {value!r}")
    return float(value)


def _points(src: Source, where: tuple[Any, ...], value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1e6:
        raise src.error(where, f"must be a number of points >= 0, got {value!r}")
    return float(value)


def _fits(src: Source, where: tuple[Any, ...], spec: dict[str, Any], deadline: float) -> None:
    """A deadline shorter than the check's own probe timeout would fail every learner."""
    params = next(iter(spec.values())) or {}
    timeout = params.get("timeout")
    if isinstance(timeout, (int, float)) and not isinstance(timeout, bool) \
            and timeout >= deadline:
        raise src.error(where, f"deadline {deadline:g} s is not longer than the check's own "
                               f"timeout ({timeout:g} s): every learner would fail it")


def from_profile(profile: str | conformance.Profile, budget: float | None = None,
                 deadline: float | None = None) -> Assignment:
    """Every check of a conformance profile, one point each (optional ones worth nothing)."""
    prof = conformance.load(profile) if isinstance(profile, str) else profile
    d = deadline if deadline is not None else DEFAULT_DEADLINE
    checks = [GradedCheck(c.id, c.spec, c.label, 0.0 if c.optional else 1.0, d, c.optional,
                          c.why) for c in prof.checks]
    return Assignment(name=prof.name, checks=checks,
                      budget=budget if budget is not None else DEFAULT_BUDGET,
                      profile=prof.name, description=prof.description, path=prof.path)


def load(path: str) -> Assignment:
    """An assignment file; every error is one line naming the file, line and field."""
    src = yamlsrc.load(path)
    data = src.data
    if not isinstance(data, dict):
        raise src.error((), "an assignment is a mapping with profile: and/or checks:")
    for k in data:
        if k not in _TOP:
            raise src.error((k,), f"unknown field; known: {', '.join(sorted(_TOP))}")
    deadline = _seconds(src, ("deadline",), data["deadline"]) if "deadline" in data \
        else DEFAULT_DEADLINE
    budget = _seconds(src, ("budget",), data["budget"]) if "budget" in data else DEFAULT_BUDGET
    checks: list[GradedCheck] = []
    profile_name: str | None = None
    ids: dict[str, tuple[Any, ...]] = {}
    if data.get("profile") is not None:
        if not isinstance(data["profile"], str):
            raise src.error(("profile",), f"must be a profile name, known: "
                                          f"{', '.join(conformance.available())}")
        try:
            prof = conformance.load(data["profile"])
        except CnmError as e:
            raise src.error(("profile",), str(e)) from None
        profile_name = prof.name
        skip = data.get("skip") or []
        if not isinstance(skip, list) or not all(isinstance(x, str) for x in skip):
            raise src.error(("skip",), "must be a list of check ids of the profile")
        known = {c.id for c in prof.checks}
        for i, x in enumerate(skip):
            if x not in known:
                raise src.error(("skip", i), f"no check {x!r} in profile {prof.name}; known: "
                                             f"{', '.join(sorted(known))}")
        for c in prof.checks:
            if c.id not in skip:
                checks.append(GradedCheck(c.id, c.spec, c.label, 0.0 if c.optional else 1.0,
                                          deadline, c.optional, c.why))
                ids[c.id] = ("profile",)
    elif "skip" in data:
        raise src.error(("skip",), "skip: names checks of a profile: give profile: too")
    raw = data.get("checks")
    if raw is None:
        raw = []
    if not isinstance(raw, list):
        raise src.error(("checks",), "must be a list of {id:, check: {kind: {params}}, points:}")
    for i, entry in enumerate(raw):
        checks.append(_entry(src, ("checks", i), entry, deadline, ids))
    points = data.get("points")
    if points is not None:
        if not isinstance(points, dict):
            raise src.error(("points",), "must map check ids to points")
        by_id = {c.id: c for c in checks}
        for cid, value in points.items():
            if cid not in by_id:
                raise src.error(("points", cid), f"no check {cid!r} in this assignment")
            by_id[cid].points = _points(src, ("points", cid), value)
    if not checks:
        raise src.error((), "the assignment grades nothing: give profile: or checks:")
    for c, label in zip(checks, conformance.unique_labels([c.label for c in checks])):
        c.label = label
    name = data.get("name")
    return Assignment(name=str(name) if name else os.path.splitext(os.path.basename(path))[0],
                      checks=checks, budget=budget, profile=profile_name,
                      description=str(data.get("description") or ""), path=path)


def _entry(src: Source, where: tuple[Any, ...], entry: Any, deadline: float,
           ids: dict[str, tuple[Any, ...]]) -> GradedCheck:
    if not isinstance(entry, dict) or "check" not in entry:
        raise src.error(where, "each check is {id: NAME, check: {kind: {params}}, points: N}")
    for k in entry:
        if k not in _ENTRY:
            raise src.error(where + (k,), f"unknown field; known: {', '.join(sorted(_ENTRY))}")
    kind = None
    try:
        kind, params = parse_spec(entry["check"])
        library.validate(kind, params)
    except InvalidInput as e:
        field_ = getattr(e, "param", None)
        raise src.error(where + ("check",) + ((kind,) if kind else ())
                        + ((field_,) if field_ else ()), str(e)) from None
    spec = {kind: params}
    cid = entry.get("id", f"check-{where[-1] + 1}")
    if not isinstance(cid, str) or not cid:
        raise src.error(where + ("id",), f"{cid!r} is not an id")
    if cid in ids:
        raise src.error(where + ("id",), f"id {cid!r} is used twice")
    ids[cid] = where
    optional = entry.get("optional", False)
    if not isinstance(optional, bool):
        raise src.error(where + ("optional",), "must be true or false")
    d = _seconds(src, where + ("deadline",), entry["deadline"]) if "deadline" in entry \
        else deadline
    _fits(src, where + ("deadline",), spec, d)
    pts = _points(src, where + ("points",), entry["points"]) if "points" in entry \
        else (0.0 if optional else 1.0)
    label = entry.get("label")
    return GradedCheck(cid, spec, str(label) if label else conformance.label_of(spec), pts, d,
                       optional, str(entry.get("why") or ""))


LEARNER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@+-]{0,63}$")


@dataclass
class Learner:
    """One learner to grade: the identity the grader gives, and their submission file."""

    name: str
    path: str


def learners(args: list[str]) -> list[Learner]:
    """``PATH`` (the learner is the file's name) or ``NAME=PATH``, one identity each.

    The identity never comes from inside the file; two submissions for one identity are an
    error (one would silently overwrite the other's grade).
    """
    out: list[Learner] = []
    seen: dict[str, str] = {}
    for arg in args:
        name, sep, path = arg.partition("=")
        if not sep or os.path.exists(arg):
            name, path = os.path.splitext(os.path.basename(arg))[0], arg
        if not LEARNER_NAME.match(name):
            raise InvalidInput(f"{arg}: {name!r} is not a usable learner name (letters, digits, "
                               f"'_', '.', '@', '+', '-'): rename the file or give NAME=PATH")
        if name in seen:
            raise InvalidInput(f"learner {name} is given twice ({seen[name]} and {path}): one "
                               f"submission per learner (name them with NAME=PATH)")
        seen[name] = path
        out.append(Learner(name, path))
    return out

