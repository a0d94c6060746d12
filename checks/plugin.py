"""The cnmlab pytest plugin (entry point ``pytest11``): checks as pytest items, grade sheets.

Loaded for every pytest run where cnmlab is installed, so with no ``--cnmlab-*`` option it only
registers its options, fixtures and marker, and imports nothing heavy.

Options (group "cnmlab", one prefix)::

    --cnmlab-assignment=PATH   the instructor's assignment: what is checked, points, deadlines,
                               the per-learner budget (checks/assignment.py)
    --cnmlab-submission=[NAME=]PATH
                               a learner's submission: which of their namespaces plays which
                               role (repeatable; the learner is NAME or the file's name);
                               --cnmlab-manifest is the same option
    --cnmlab-profile=NAME      a conformance profile (bridge): with submissions, the assignment
                               (one point per check); with a target, its checks run on it;
                               alone, it builds the profile's topology in a fresh engine lab
    --cnmlab-budget=S          wall-clock seconds per learner (overrides the assignment's)
    --cnmlab-jobs=N            learners graded at a time
    --cnmlab-target=KIND:ARG   engine:LAB, submission:PATH (or manifest:PATH), docker:SOCKET
                               (or a dockerd workdir): a target for the fixtures and profile
    --cnmlab-lab=LAB           shorthand for --cnmlab-target=engine:LAB
    --cnmlab-upstream=NETNS    the namespace that plays the internet (docker targets)
    --cnmlab-json=PATH         write the grade sheet: one row per (learner, check)

Grading: every check of the assignment becomes its own ``CheckItem`` under one collector per
learner (node id ``cnmlab/<learner>::<label>``), so ``-k``, ``--junitxml`` and ``-x`` work per
check. The first item to run grades every learner at once through ``checks/grading.py`` (each
learner in a worker process with a budget, each check with a deadline); the items then report
their learner's rows. A check that did not run (deselected, cut off, a refused submission) is
a failed row in the grade sheet, never a pass; a learner's own ``extra_checks`` are listed
apart and never graded. A failure shows expected / observed / reason (and the truth table of a
matrix), never a Python traceback.

Fixtures: ``cnmlab_target`` (session; the target the options name, skipped when there is none),
``cnmlab_check`` (function; ``cnmlab_check({"reachable": {...}})`` runs one check and fails the
test readably), ``cnmlab_target_spec`` (session; where the target comes from: override it in
a conftest with a ``"KIND:ARG"`` string or a ready Target). Marker ``cnmlab_needs("ipvs")``
(``from cnmlab.checks.vmlane import needs``): the test needs that kernel feature; where this
kernel lacks it the test runs in the full-kernel VM (``cnmlab.checks.vmlane``, loaded from here,
owns the marker and its options). Hook ``pytest_cnmlab_result(learner, result)`` sees every result.
"""
from __future__ import annotations

import os
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

TARGET_KINDS = ("engine", "manifest", "submission", "docker")
pytest_plugins = ["cnmlab.checks.vmlane"]


class CnmlabHooks:
    """Hook specifications other plugins (or a conftest) may implement."""

    @pytest.hookspec
    def pytest_cnmlab_result(self, learner: str, result: Any) -> None:
        """Called once for every check result (items and ``cnmlab_check`` alike)."""


def pytest_addhooks(pluginmanager: pytest.PytestPluginManager) -> None:
    pluginmanager.add_hookspecs(CnmlabHooks)


def pytest_addoption(parser: pytest.Parser) -> None:
    g = parser.getgroup("cnmlab", "cnmlab: container networking checks")
    g.addoption("--cnmlab-target", metavar="KIND:ARG", default=None,
                help="run checks against a target: engine:LAB, manifest:PATH, docker:SOCKET")
    g.addoption("--cnmlab-lab", metavar="LAB", default=None,
                help="shorthand for --cnmlab-target=engine:LAB")
    g.addoption("--cnmlab-assignment", metavar="PATH", default=None,
                help="the instructor's assignment: which checks, points, deadlines, budget")
    g.addoption("--cnmlab-submission", "--cnmlab-manifest", metavar="[NAME=]PATH",
                dest="cnmlab_submission", action="append", default=[],
                help="a learner's submission: which of their namespaces plays which role "
                     "(repeatable; the learner is NAME or the file's name)")
    g.addoption("--cnmlab-profile", metavar="NAME", default=None,
                help="a conformance profile (e.g. bridge): the assignment for submissions, "
                     "the checks for a target; alone, its topology is built in a fresh lab")
    g.addoption("--cnmlab-budget", metavar="S", type=float, default=None,
                help="wall-clock seconds per learner (overrides the assignment's)")
    g.addoption("--cnmlab-jobs", metavar="N", type=int, default=None,
                help="learners graded at a time")
    g.addoption("--cnmlab-upstream", metavar="NETNS", default=None,
                help="the network namespace that plays the internet (for docker targets)")
    g.addoption("--cnmlab-json", metavar="PATH", default=None,
                help="write a JSON grade sheet: one row per (learner, check)")


# ---------------------------------------------------------------------------------------------
# plugin state (in config.stash)


@dataclass
class Source:
    """Where one learner's (or implementation's) target comes from, and its checks."""

    learner: str
    kind: str  # engine | manifest | docker | fresh-engine
    arg: str
    checks: list[tuple[str, dict[str, Any], bool]] = field(default_factory=list)
    error: str | None = None  # the manifest could not be loaded
    graded: bool = False  # a learner's submission, graded through checks/grading.py
    upstream: str | None = None
    profile: Any = None
    _target: Any = None
    _target_error: str | None = None
    _cleanup: Callable[[], None] | None = None

    def target(self) -> Any:
        """The target, made once; a CnmError (one line) if it cannot be made."""
        from cnmlab.errors import CnmError

        if self._target is not None:
            return self._target
        if self._target_error is not None:
            raise CnmError(self._target_error)
        try:
            self._target = self._make()
        except CnmError as e:
            self._target_error = str(e)
            raise
        return self._target

    def _make(self) -> Any:
        from cnmlab.checks import targets

        if self.kind == "fresh-engine":
            from cnmlab.checks import conformance
            from cnmlab.lab import Lab

            lab = Lab(f"cnf{os.getpid()}{secrets.token_hex(2)}")
            self._cleanup = lab.down
            return conformance.build_engine(lab, self.profile)
        t = targets.make_target(self.kind, self.arg)
        if self.kind == "docker" and self.upstream:
            from cnmlab.checks.conformance import upstream_ref

            t._upstream = upstream_ref(self.upstream)
        return t

    def close(self) -> None:
        if self._cleanup is not None:
            fn, self._cleanup = self._cleanup, None
            fn()


@dataclass
class Grading:
    """The graded class: the instructor's assignment, the learners, and (once run) grades."""

    assignment: Any
    learners: list[Any]
    jobs: int | None = None
    selected: dict[str, set[int]] = field(default_factory=dict)
    grades: dict[str, Any] | None = None

    def run(self) -> dict[str, Any]:
        """Grade every learner (once), limited to the selected checks."""
        if self.grades is None:
            from cnmlab.checks import grading

            got = grading.grade(self.assignment, self.learners,
                                jobs=self.jobs or grading.DEFAULT_JOBS, selected=self.selected)
            self.grades = {g.learner: g for g in got}
        return self.grades

    def final(self) -> list[Any]:
        """Every learner's grade; nothing ran (all deselected): every check failed, not run."""
        if self.grades is not None:
            return list(self.grades.values())
        from cnmlab.checks import grading

        return [grading.LearnerGrade(
            lr.name, lr.path, [grading.not_run(c, "not run: not selected")
                               for c in self.assignment.checks],
            max_points=self.assignment.max_points) for lr in self.learners]


@dataclass
class State:
    sources: list[Source] = field(default_factory=list)
    fixture_source: Source | None = None
    fixture_problem: str = ("no cnmlab target: give --cnmlab-target KIND:ARG, --cnmlab-lab LAB "
                            "or --cnmlab-submission PATH")
    results: list[tuple[str, Any]] = field(default_factory=list)  # (learner, CheckResult)
    json_path: str | None = None
    grading: Grading | None = None

    def record(self, config: pytest.Config, learner: str, result: Any) -> None:
        self.results.append((learner, result))
        config.hook.pytest_cnmlab_result(learner=learner, result=result)

    def by_learner(self) -> dict[str, list[Any]]:
        out: dict[str, list[Any]] = {}
        for learner, r in self.results:
            out.setdefault(learner, []).append(r)
        return out


STATE = pytest.StashKey[State]()


def _state(config: pytest.Config) -> State:
    st = config.stash.get(STATE, None)
    if st is None:
        st = config.stash[STATE] = State()
    return st


def _active(config: pytest.Config) -> bool:
    o = config.option
    return bool(getattr(o, "cnmlab_target", None) or getattr(o, "cnmlab_lab", None)
                or getattr(o, "cnmlab_submission", None) or getattr(o, "cnmlab_profile", None)
                or getattr(o, "cnmlab_assignment", None) or getattr(o, "cnmlab_json", None))


def pytest_configure(config: pytest.Config) -> None:
    st = _state(config)
    if not _active(config):
        return
    o = config.option
    st.json_path = o.cnmlab_json
    if o.cnmlab_target and o.cnmlab_lab:
        raise pytest.UsageError("give --cnmlab-target or --cnmlab-lab, not both")
    spec = o.cnmlab_target or (f"engine:{o.cnmlab_lab}" if o.cnmlab_lab else None)
    profile = None
    if o.cnmlab_profile:
        from cnmlab.checks import conformance
        from cnmlab.errors import CnmError

        try:
            profile = conformance.load(o.cnmlab_profile)
        except CnmError as e:
            raise pytest.UsageError(f"--cnmlab-profile: {e}") from None
    pchecks = [(c.label, c.spec, c.optional) for c in profile.checks] if profile else []
    if spec:
        kind, sep, arg = spec.partition(":")
        if not sep or not arg or kind not in TARGET_KINDS:
            raise pytest.UsageError(f"--cnmlab-target {spec!r}: use KIND:ARG with KIND one of "
                                    f"{', '.join(TARGET_KINDS)} (engine:LAB, manifest:PATH, "
                                    f"docker:SOCKET)")
        if kind in ("manifest", "submission"):
            src = _manifest_source(arg, pchecks)
        else:
            src = Source(learner=spec, kind=kind, arg=arg, checks=list(pchecks),
                         upstream=o.cnmlab_upstream)
        st.sources.append(src)
        st.fixture_source = src
    if o.cnmlab_submission or o.cnmlab_assignment:
        st.grading = _grading(o, profile)
        for lr in st.grading.learners:
            st.sources.append(Source(
                learner=lr.name, kind="manifest", arg=lr.path, graded=True,
                checks=[(c.label, c.spec, c.optional) for c in st.grading.assignment.checks]))
    if not spec and o.cnmlab_submission:
        if len(o.cnmlab_submission) == 1:
            st.fixture_source = Source(learner=st.sources[-1].learner, kind="manifest",
                                       arg=st.sources[-1].arg)
        else:
            st.fixture_problem = (f"{len(o.cnmlab_submission)} submissions given: the "
                                  f"cnmlab_target fixture needs one target (--cnmlab-target)")
    if not st.sources and profile is not None:
        src = Source(learner=f"engine-{profile.name}", kind="fresh-engine", arg="",
                     checks=list(pchecks), profile=profile)
        st.sources.append(src)
        st.fixture_source = src


def _grading(o: Any, profile: Any) -> Grading:
    """The instructor's side of grading, from the options; usage errors are one line."""
    from cnmlab.checks import assignment as amod
    from cnmlab.errors import CnmError

    if not o.cnmlab_submission:
        raise pytest.UsageError("--cnmlab-assignment grades submissions: give "
                                "--cnmlab-submission [NAME=]PATH for each learner")
    if o.cnmlab_assignment and profile is not None:
        raise pytest.UsageError("give --cnmlab-assignment or --cnmlab-profile, not both (an "
                                "assignment may name a profile: profile: NAME)")
    if not o.cnmlab_assignment and profile is None:
        raise pytest.UsageError("--cnmlab-submission needs --cnmlab-assignment FILE or "
                                "--cnmlab-profile NAME: the instructor decides what is checked, "
                                "never the submission")
    try:
        a = amod.load(o.cnmlab_assignment) if o.cnmlab_assignment else \
            amod.from_profile(profile)
        learners = amod.learners(o.cnmlab_submission)
    except CnmError as e:
        raise pytest.UsageError(str(e)) from None
    if o.cnmlab_budget is not None:
        if not 0 < o.cnmlab_budget <= amod.MAX_SECONDS:
            raise pytest.UsageError(f"--cnmlab-budget {o.cnmlab_budget:g}: give seconds in "
                                    f"(0, {amod.MAX_SECONDS:g}]")
        a.budget = o.cnmlab_budget
    return Grading(a, learners, jobs=o.cnmlab_jobs)


def _manifest_source(path: str, pchecks: list[tuple[str, dict[str, Any], bool]]) -> Source:
    """A submission used as a plain target (--cnmlab-target manifest:PATH), checked in this
    process by the profile's checks (if any): the fixture route, not grading."""
    from cnmlab.checks import targets
    from cnmlab.errors import CnmError

    learner = os.path.splitext(os.path.basename(path))[0]
    try:
        m = targets.SubmissionTarget(path)
    except CnmError as e:
        return Source(learner=learner, kind="manifest", arg=path, error=str(e))
    src = Source(learner=learner, kind="manifest", arg=path, checks=list(pchecks))
    src._target = m
    return src


def pytest_unconfigure(config: pytest.Config) -> None:
    st = config.stash.get(STATE, None)
    if st is None:
        return
    for src in st.sources:
        src.close()


# ---------------------------------------------------------------------------------------------
# collection: one collector per learner, one item per check


_NODE_SAFE = re.compile(r"[^A-Za-z0-9_.@#+=-]")


class CheckFailed(Exception):
    def __init__(self, result: Any) -> None:
        super().__init__(result.check)
        self.result = result


class TargetCollector(pytest.Collector):
    """All the checks of one learner (a manifest) or one implementation (a target)."""

    def __init__(self, *, source: Source, **kw: Any) -> None:
        super().__init__(**kw)
        self.source = source

    def collect(self) -> list[pytest.Item]:
        if self.source.error is not None:
            return [ManifestErrorItem.from_parent(self, name="manifest", source=self.source)]
        return [CheckItem.from_parent(self, name=label, spec=spec, optional=optional,
                                      source=self.source, index=i)
                for i, (label, spec, optional) in enumerate(self.source.checks)]


class CheckItem(pytest.Item):
    """One check spec run against its learner's target."""

    def __init__(self, *, spec: dict[str, Any], source: Source, optional: bool = False,
                 index: int = 0, **kw: Any) -> None:
        super().__init__(**kw)
        self.spec = spec
        self.source = source
        self.optional = optional
        self.index = index
        self.kind = next(iter(spec))
        self.result: Any = None

    def runtest(self) -> None:
        st = _state(self.config)
        if self.source.graded:
            assert st.grading is not None
            r = st.grading.run()[self.source.learner].results[self.index]
            self.config.hook.pytest_cnmlab_result(learner=self.source.learner, result=r)
        else:
            r = self._run_here()
            st.record(self.config, self.source.learner, r)
        self.result = r
        if r.skipped:
            pytest.skip(r.reason or "skipped")
        if not r.ok:
            raise CheckFailed(r)

    def _run_here(self) -> Any:
        """A check on a plain target (engine, docker, a submission as fixture): in-process."""
        from cnmlab.checks.api import CheckResult
        from cnmlab.checks.kinds import run_check
        from cnmlab.errors import CnmError

        try:
            target = self.source.target()
        except CnmError as e:
            return CheckResult(self.name, self.kind, False, "a target to check", "error",
                               f"{self.source.learner}: {e}")
        r = run_check(target, self.spec)
        r.check = self.name
        if self.optional and not r.ok and not r.skipped:
            r.ok, r.skipped = True, True
            r.reason = f"optional, not required: {r.reason}"
        return r

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException],
                     style: Any = None) -> str:
        from cnmlab.checks.report import failure_text
        from cnmlab.errors import CnmError

        if isinstance(excinfo.value, CheckFailed):
            return f"{self.name}\n{failure_text(excinfo.value.result)}"
        if isinstance(excinfo.value, CnmError):
            return f"{self.name}: {excinfo.value}"
        return super().repr_failure(excinfo, style=style)

    def reportinfo(self) -> tuple[Any, int | None, str]:
        return self.path, None, f"cnmlab {self.source.learner}: {self.name}"


class ManifestErrorItem(pytest.Item):
    """Stands for a manifest that could not be loaded: one failed row, the others still run."""

    def __init__(self, *, source: Source, **kw: Any) -> None:
        super().__init__(**kw)
        self.source = source

    def runtest(self) -> None:
        from cnmlab.checks.api import CheckResult

        r = CheckResult("manifest", "manifest", False, "a valid manifest", "error",
                        self.source.error or "")
        _state(self.config).record(self.config, self.source.learner, r)
        raise CheckFailed(r)

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException],
                     style: Any = None) -> str:
        if isinstance(excinfo.value, CheckFailed):
            return f"manifest {self.source.arg}: {self.source.error}"
        return super().repr_failure(excinfo, style=style)

    def reportinfo(self) -> tuple[Any, int | None, str]:
        return self.path, None, f"cnmlab {self.source.learner}: manifest"


@pytest.hookimpl(tryfirst=True)  # before -k/-m deselection sees the items
def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config,
                                  items: list[pytest.Item]) -> None:
    st = config.stash.get(STATE, None)
    if st is None or not st.sources:
        return
    for src in st.sources:
        if not src.checks and src.error is None:
            continue  # a target for the fixtures only
        safe = _NODE_SAFE.sub("_", src.learner)
        node = TargetCollector.from_parent(session, name=safe, nodeid=f"cnmlab/{safe}",
                                           source=src)
        items.extend(session.genitems(node))


def pytest_collection_finish(session: pytest.Session) -> None:
    """Grade only what survived -k/-m/deselection; the rest are "not selected" failed rows."""
    st = session.config.stash.get(STATE, None)
    if st is None or st.grading is None:
        return
    for item in session.items:
        if isinstance(item, CheckItem) and item.source.graded:
            st.grading.selected.setdefault(item.source.learner, set()).add(item.index)


# ---------------------------------------------------------------------------------------------
# fixtures and the marker


@pytest.fixture(scope="session")
def cnmlab_target_spec(pytestconfig: pytest.Config) -> Source | None:
    """Where ``cnmlab_target`` comes from: the options' source; a conftest may override it with
    ``"KIND:ARG"`` or a ready Target."""
    return _state(pytestconfig).fixture_source


@pytest.fixture(scope="session")
def cnmlab_target(cnmlab_target_spec: Any, pytestconfig: pytest.Config) -> Any:
    """The target the options name (skips the test when none was given)."""
    from cnmlab.errors import CnmError

    src = cnmlab_target_spec
    if src is None:
        pytest.skip(_state(pytestconfig).fixture_problem)
    if isinstance(src, str):  # an overriding conftest may give "KIND:ARG"
        kind, _, arg = src.partition(":")
        src = Source(learner=src, kind=kind, arg=arg)
        pytestconfig.add_cleanup(src.close)
    if not isinstance(src, Source):
        return src  # already a Target
    try:
        return src.target()
    except CnmError as e:
        pytest.fail(f"cnmlab target {src.learner}: {e}", pytrace=False)


@pytest.fixture
def cnmlab_check(cnmlab_target: Any, pytestconfig: pytest.Config) -> Callable[..., Any]:
    """``cnmlab_check({"reachable": {"from": "a", "to": "b"}})``: run one check, assert it."""
    from cnmlab.checks.kinds import run_check
    from cnmlab.checks.report import failure_text

    st = _state(pytestconfig)
    learner = getattr(st.fixture_source, "learner", None) or getattr(cnmlab_target, "name",
                                                                     "target")

    def check(spec: dict[str, Any], label: str | None = None) -> Any:
        r = run_check(cnmlab_target, spec)
        if label:
            r.check = label
        st.record(pytestconfig, learner, r)
        if r.skipped:
            pytest.skip(f"{r.check}: {r.reason}")
        if not r.ok:
            pytest.fail(f"{r.check}\n{failure_text(r)}", pytrace=False)
        return r

    return check


# ---------------------------------------------------------------------------------------------
# reports


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    st = session.config.stash.get(STATE, None)
    if st is None or not st.json_path:
        return
    from cnmlab.checks import report

    rows = [report.row(learner, r) for learner, r in st.results]
    meta = {"tool": "cnmlab", "profile": session.config.option.cnmlab_profile}
    if st.grading is not None:
        graded = report.grading_sheet(st.grading.final(), st.grading.assignment)
        info = {n: {k: v for k, v in s.items() if k in ("points", "max_points", "submission",
                                                         "error", "seconds")}
                for n, s in graded["learners"].items()}
        sheet = report.grade_sheet(graded["rows"] + rows, info,
                                   assignment=graded["assignment"], **meta)
    else:
        sheet = report.grade_sheet(rows, **meta)
    report.write_json(st.json_path, sheet)


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int,
                            config: pytest.Config) -> None:
    st = config.stash.get(STATE, None)
    graded = st.grading.grades if st is not None and st.grading is not None else None
    if st is None or not (st.results or graded):
        return
    from cnmlab.checks import report

    tr = terminalreporter
    color = bool(getattr(tr._tw, "hasmarkup", False))
    tr.write_sep("=", "cnmlab")
    for learner, results in st.by_learner().items():
        tr.write_line(report.render_results(results, title=f"{learner}:", color=color))
    if graded is not None and st.grading is not None:
        for g in graded.values():
            if g.error:
                tr.write_line(f"{g.learner}: submission refused: {g.error}")
                continue
            tr.write_line(report.render_results(g.results, title=f"{g.learner}:", color=color))
            if g.extra:
                tr.write_line(report.render_results(
                    g.extra, title=f"{g.learner}, own checks (not graded):", color=color))
        sheet = report.grading_sheet(list(graded.values()), st.grading.assignment)
        tr.write_line("")
        tr.write_line(report.render_grades(sheet, color=color))
    if st.json_path:
        tr.write_line(f"cnmlab: grade sheet written to {st.json_path}")
