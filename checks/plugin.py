"""The cnmlab pytest plugin (entry point ``pytest11``): checks as pytest items, grade sheets.

Loaded for every pytest run where cnmlab is installed, so with no ``--cnmlab-*`` option it only
registers its options, fixtures and marker, and imports nothing heavy.

Options (group "cnmlab", one prefix)::

    --cnmlab-target=KIND:ARG   engine:LAB, manifest:PATH, docker:SOCKET (or a dockerd workdir)
    --cnmlab-lab=LAB           shorthand for --cnmlab-target=engine:LAB
    --cnmlab-manifest=PATH     a learner's manifest (repeatable: one per learner)
    --cnmlab-profile=NAME      a conformance profile (bridge) whose checks run on every target;
                               alone, it builds the profile's topology in a fresh engine lab
    --cnmlab-upstream=NETNS    the namespace that plays the internet (docker targets)
    --cnmlab-json=PATH         write the grade sheet: one row per (learner, check)

Every check spec (a manifest's ``checks:``, a profile's checks) becomes its own ``CheckItem``,
named by its label, under one collector per learner (node id ``cnmlab/<learner>::<label>``), so
``-k``, ``--junitxml`` and ``-x`` work per check. A failure shows expected / observed / reason
(and the truth table of a matrix), never a Python traceback.

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

TARGET_KINDS = ("engine", "manifest", "docker")
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
    g.addoption("--cnmlab-manifest", metavar="PATH", action="append", default=[],
                help="a learner's manifest of hand-built namespaces and checks (repeatable)")
    g.addoption("--cnmlab-profile", metavar="NAME", default=None,
                help="a conformance profile (e.g. bridge) whose checks run on every target; "
                     "without a target, its topology is built in a fresh engine lab")
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
class State:
    sources: list[Source] = field(default_factory=list)
    fixture_source: Source | None = None
    fixture_problem: str = ("no cnmlab target: give --cnmlab-target KIND:ARG, --cnmlab-lab LAB "
                            "or --cnmlab-manifest PATH")
    results: list[tuple[str, Any]] = field(default_factory=list)  # (learner, CheckResult)
    json_path: str | None = None

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
                or getattr(o, "cnmlab_manifest", None) or getattr(o, "cnmlab_profile", None)
                or getattr(o, "cnmlab_json", None))


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
        if kind == "manifest":
            src = _manifest_source(arg, pchecks)
        else:
            src = Source(learner=spec, kind=kind, arg=arg, checks=list(pchecks),
                         upstream=o.cnmlab_upstream)
        st.sources.append(src)
        st.fixture_source = src
    for path in o.cnmlab_manifest:
        st.sources.append(_manifest_source(path, pchecks))
    if not spec and o.cnmlab_manifest:
        if len(o.cnmlab_manifest) == 1:
            st.fixture_source = st.sources[-1]
        else:
            st.fixture_problem = (f"{len(o.cnmlab_manifest)} manifests given: the cnmlab_target "
                                  f"fixture needs one target (--cnmlab-target)")
    if not st.sources and profile is not None:
        src = Source(learner=f"engine-{profile.name}", kind="fresh-engine", arg="",
                     checks=list(pchecks), profile=profile)
        st.sources.append(src)
        st.fixture_source = src
    names: dict[str, int] = {}
    for src in st.sources:  # two learners with one name: keep their rows apart
        n = names[src.learner] = names.get(src.learner, 0) + 1
        if n > 1:
            src.learner = f"{src.learner}#{n}"


def _manifest_source(path: str, pchecks: list[tuple[str, dict[str, Any], bool]]) -> Source:
    from cnmlab.checks import targets
    from cnmlab.checks.conformance import label_of, unique_labels
    from cnmlab.errors import CnmError

    learner = os.path.splitext(os.path.basename(path))[0]
    try:
        m = targets.ManifestTarget(path)
    except CnmError as e:
        return Source(learner=learner, kind="manifest", arg=path, error=str(e))
    checks = [(label_of(c), c, False) for c in m.checks] + list(pchecks)
    labels = unique_labels([c[0] for c in checks])
    src = Source(learner=m.name, kind="manifest", arg=path,
                 checks=[(lab, spec, opt) for lab, (_, spec, opt) in zip(labels, checks)])
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
                                      source=self.source)
                for label, spec, optional in self.source.checks]


class CheckItem(pytest.Item):
    """One check spec run against its learner's target."""

    def __init__(self, *, spec: dict[str, Any], source: Source, optional: bool = False,
                 **kw: Any) -> None:
        super().__init__(**kw)
        self.spec = spec
        self.source = source
        self.optional = optional
        self.kind = next(iter(spec))
        self.result: Any = None

    def runtest(self) -> None:
        from cnmlab.checks.api import CheckResult, run_check
        from cnmlab.errors import CnmError

        try:
            target = self.source.target()
        except CnmError as e:
            r = CheckResult(self.name, self.kind, False, "a target to check", "error",
                            f"{self.source.learner}: {e}")
        else:
            r = run_check(target, self.spec)
            r.check = self.name
            if self.optional and not r.ok and not r.skipped:
                r.ok, r.skipped = True, True
                r.reason = f"optional, not required: {r.reason}"
        self.result = r
        _state(self.config).record(self.config, self.source.learner, r)
        if r.skipped:
            pytest.skip(r.reason or "skipped")
        if not r.ok:
            raise CheckFailed(r)

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
    from cnmlab.checks.api import run_check
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
    sheet = report.grade_sheet(rows, tool="cnmlab", profile=session.config.option.cnmlab_profile)
    report.write_json(st.json_path, sheet)


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int,
                            config: pytest.Config) -> None:
    st = config.stash.get(STATE, None)
    if st is None or not st.results:
        return
    from cnmlab.checks import report

    tr = terminalreporter
    color = bool(getattr(tr._tw, "hasmarkup", False))
    tr.write_sep("=", "cnmlab")
    for learner, results in st.by_learner().items():
        tr.write_line(report.render_results(results, title=f"{learner}:", color=color))
    if st.json_path:
        tr.write_line(f"cnmlab: grade sheet written to {st.json_path}")
