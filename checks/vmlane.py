"""The VM test lane: tests that need a kernel feature this machine lacks run in the full-kernel VM.

Mark a test with the kernel features it needs (names from ``cnmlab features``: veth, bridge,
macvlan, ipvlan, vxlan, dummy, vlan, ipvs, iptables, nftables)::

    from cnmlab.checks.vmlane import needs      # the same as pytest.mark.cnmlab_needs

    @needs("ipvs")
    def test_service_spreads_over_two_backends():
        ...

    pytestmark = needs("ipvlan", "vlan")        # a whole module

(``@pytest.mark.cnmlab_needs(...)`` and this repository's ``@pytest.mark.needs(...)`` are read
the same way.) Where the kernel has the features, the test runs here like any other. Where it
lacks one, the test is *not* skipped: when the run starts, the lane boots the full-kernel VM
(``cnmlab vm``) once, in the background, and runs every such test in one pytest process inside
it (Python is 8-20x slower there, so one boot and one interpreter for all of them). Each test's
outcome inside becomes its outcome here, with the guest's traceback and captured output, so
``-v``, ``-x``, ``-k`` and ``--junitxml`` see them as usual (``PASSED (vm)`` with ``-v``; the
JUnit testcase carries the property ``cnmlab_vm``). If the VM cannot run them (qemu missing,
boot failure, timeout), each of those tests fails and says why.

The guest runs this same checkout, read-only (its writes land in a tmpfs), from the same
rootdir and ini file; only the test ids travel, not the host's other command-line options.
Inside, a ``needs`` marker never skips: a feature the VM was booted to provide must be there,
and a test whose feature is broken fails.

Options: ``--cnmlab-vm=auto`` (default: the VM for what this kernel lacks), ``always`` (every
``needs`` test in the VM), ``off`` (skip what this kernel lacks, as before);
``--cnmlab-vm-timeout=SECONDS`` (1800: the guest CPU is emulated, ~10x slower, and a busy machine slows it further); ``--cnmlab-vm-append=ARGS`` (extra guest kernel
command line: ``module_blacklist=ip_vs`` breaks IPVS on purpose, which is how the lane's own
tests show a broken feature failing).
"""
from __future__ import annotations

import contextlib
import fcntl
import io
import json
import os
import shutil
import sys
import tempfile
import threading
from typing import Any

import pytest

from cnmlab.errors import CnmError
from cnmlab.vm import boot

MARKERS = ("cnmlab_needs", "needs")
needs = pytest.mark.cnmlab_needs
PROPERTY = "cnmlab_vm"
LANE_PREFIX = "cnmlab-vmlane-"
#: plugins the guest's pytest does not load: each costs seconds of emulated CPU to import,
#: and nothing in the lane uses them (xdist: one process; snapshots: no TUI in the lane)
GUEST_NO_PLUGINS = ("cacheprovider", "randomly", "xdist", "xdist.looponfail",
                    "textual-snapshot", "syrupy")


def pytest_addoption(parser: pytest.Parser) -> None:
    g = parser.getgroup("cnmlab", "cnmlab: container networking checks")
    g.addoption("--cnmlab-vm", choices=("auto", "always", "off"), default="auto",
                help="tests marked needs(FEATURE): auto runs those whose feature this kernel "
                     "lacks in the full-kernel VM (one boot for all); always runs every one "
                     "there; off skips them instead (default: auto)")
    g.addoption("--cnmlab-vm-timeout", type=float, default=1800.0, metavar="SECONDS",
                help="stop the VM lane after this long (default 1800)")
    g.addoption("--cnmlab-vm-append", default="", metavar="ARGS",
                help="extra kernel command line for the lane's VM (e.g. module_blacklist=ip_vs)")
    g.addoption("--cnmlab-vm-guest", default=None, metavar="PATH",
                help="internal: this pytest runs inside the VM; write each report to PATH")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "cnmlab_needs(feature, ...): needs these kernel features (veth, bridge, "
                   "macvlan, ipvlan, vxlan, dummy, vlan, ipvs, iptables, nftables); run in the "
                   "full-kernel VM when this kernel lacks one (see cnmlab.checks.vmlane)")
    path = config.getoption("cnmlab_vm_guest", None)
    if path:
        config.pluginmanager.register(GuestReporter(config, path), "cnmlab-vm-guest")


def needed(item: pytest.Item) -> list[str]:
    """The features an item's ``needs`` markers name (module, class and function level)."""
    names: list[str] = []
    for marker in MARKERS:
        for mark in item.iter_markers(marker):
            names += [n for n in mark.args if n not in names]
    return names


def _features() -> Any:
    """``cnmlab.kernel.features``, imported only once a test needs one: it pulls in pyroute2, and this
    plugin loads in every pytest run where cnmlab is installed."""
    from cnmlab.kernel import features

    return features


def _unknown(names: list[str]) -> list[str]:
    features = _features()
    return [n for n in names if n not in features.DESCRIPTIONS]


def _guest(config: pytest.Config) -> bool:
    return bool(config.getoption("cnmlab_vm_guest", None))


# ---------------------------------------------------------------------------------------------
# the host side: choose the lane's tests, boot once, report each test's guest outcome


LANE = pytest.StashKey["Lane"]()


@pytest.hookimpl(trylast=True)  # after -k/-m deselection: the lane runs only selected tests
def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config,
                                  items: list[pytest.Item]) -> None:
    mode = config.getoption("cnmlab_vm", "auto")
    if mode == "off" or _guest(config) or boot.in_vm():
        return
    wanting = [(it, needed(it)) for it in items]
    wanting = [(it, names) for it, names in wanting if names and not _unknown(names)]
    if not wanting:
        return
    if mode == "always":
        chosen = [it for it, _ in wanting]
    else:
        try:
            have = _features().probe_all()
        except CnmError:
            return  # cannot probe (not root): setup skips them, saying why
        chosen = [it for it, names in wanting if not all(have.get(n) for n in names)]
    if chosen:
        config.stash[LANE] = Lane(config, chosen)


@pytest.hookimpl(tryfirst=True)
def pytest_runtestloop(session: pytest.Session) -> None:
    lane = session.config.stash.get(LANE, None)
    if lane is not None and not session.config.option.collectonly:
        lane.start()  # boots while the host's own tests run


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> bool | None:
    lane = item.config.stash.get(LANE, None)
    if lane is None or item.nodeid not in lane.nodeids:
        return None
    lane.report(item, nextitem)
    return True


def pytest_runtest_setup(item: pytest.Item) -> None:
    """A ``needs`` test that runs here: an unknown feature fails it; a missing one skips it
    (only when the lane is off or cannot probe; otherwise the lane took it)."""
    names = needed(item)
    if not names:
        return
    features = _features()
    bad = _unknown(names)
    if bad:
        pytest.fail(f"needs: unknown feature {bad[0]!r}; known: "
                    f"{', '.join(sorted(features.DESCRIPTIONS))}", pytrace=False)
    if _guest(item.config):
        return  # the VM must have it: run the test, which fails if the feature is broken
    for name in names:
        try:
            ok = features.has(name)
        except CnmError as e:
            pytest.skip(f"needs {name}: cannot probe it ({e})")
        if not ok:
            pytest.skip(f"needs {name} ({features.DESCRIPTIONS[name]}): this kernel lacks it "
                        f"and the VM lane is off (--cnmlab-vm=off)")


def pytest_report_teststatus(report: pytest.TestReport,
                             config: pytest.Config) -> tuple[str, str, str] | None:
    if report.when != "call" or hasattr(report, "wasxfail"):
        return None
    if not any(k == PROPERTY for k, _ in getattr(report, "user_properties", [])):
        return None
    letter = {"passed": ".", "failed": "F", "skipped": "s"}[report.outcome]
    return report.outcome, letter, f"{report.outcome.upper()} (vm)"


def pytest_sessionfinish(session: pytest.Session) -> None:
    lane = session.config.stash.get(LANE, None)
    if lane is not None:
        lane.stop()
    if not hasattr(session.config, "workerinput"):  # xdist's controller: the workers' folder
        shutil.rmtree(_shared_dir(os.getpid()), ignore_errors=True)


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    lane = config.stash.get(LANE, None)
    if lane is not None and lane.meta:
        terminalreporter.write_line(lane.summary())


def _shared_dir(controller_pid: int) -> str:
    return os.path.join(tempfile.gettempdir(), f"{LANE_PREFIX}{controller_pid}-xdist")


def _sweep() -> None:
    """Lane folders of runs that died (``kill -9``) without their ``sessionfinish``."""
    tmp = tempfile.gettempdir()
    for name in os.listdir(tmp):
        if name.startswith(LANE_PREFIX) and not _owner_alive(name[len(LANE_PREFIX):]):
            shutil.rmtree(os.path.join(tmp, name), ignore_errors=True)


def _owner_alive(suffix: str) -> bool:
    """Whether the run that made a lane folder still runs; a name we cannot read is kept."""
    try:
        os.kill(int(suffix.split("-")[0]), 0)
    except ProcessLookupError:
        return False
    except (ValueError, PermissionError):
        return True
    return True


class Lane:
    """One VM boot for all the lane's tests, its results, and who reads them.

    Under pytest-xdist every worker collects the same tests and starts a lane; the first to
    take the folder's lock boots the VM for all of them and the others read its results
    (the folder is keyed by the controller's PID, their parent, which removes it at the end).
    """

    def __init__(self, config: pytest.Config, items: list[pytest.Item]) -> None:
        self.config = config
        self.items = items
        self.nodeids = {it.nodeid for it in items}
        self.meta: dict[str, Any] = {}
        self.reports: dict[str, list[dict[str, Any]]] = {}
        self.collect_errors: list[tuple[str, str]] = []
        self.output = b""
        self._cancel = threading.Event()
        self._thread: threading.Thread | None = None
        _sweep()
        if hasattr(config, "workerinput"):
            self.dir = _shared_dir(os.getppid())
            os.makedirs(self.dir, exist_ok=True)
        else:
            self.dir = tempfile.mkdtemp(prefix=f"{LANE_PREFIX}{os.getpid()}-")

    # ---- running ---------------------------------------------------------------------------
    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._work, name="cnmlab-vm-lane",
                                            daemon=True)
            self._thread.start()

    def _work(self) -> None:
        try:
            with open(os.path.join(self.dir, ".lock"), "w") as lock:
                while True:  # a sibling worker may be booting: wait, unless cancelled
                    try:
                        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                        break
                    except BlockingIOError:
                        if self._cancel.wait(0.2):
                            return
                if not os.path.exists(os.path.join(self.dir, "done.json")):
                    self._boot()
            self._load()
        except Exception as e:  # anything at all: each lane test then fails saying so
            self.meta.setdefault("error", f"the VM lane failed: {type(e).__name__}: {e}")

    def _boot(self) -> None:
        cfg = self.config
        report = os.path.join(self.dir, "reports.jsonl")
        argv = [sys.executable, "-m", "pytest", "-q", "--color=no", "-rN",
                *[a for p in GUEST_NO_PLUGINS for a in ("-p", f"no:{p}")],
                f"--rootdir={cfg.rootpath}", f"--cnmlab-vm-guest={report}"]
        if cfg.inipath is not None:
            argv += ["-c", str(cfg.inipath)]
        argv += sorted(self.nodeids)
        env = {k: v for k, v in os.environ.items() if k not in ("PYTEST_ADDOPTS",)}
        out = io.BytesIO()
        meta: dict[str, Any] = {"tests": len(self.nodeids)}
        try:
            r = boot.run(argv, cwd=str(cfg.rootpath), results=self.dir, env=env,
                         timeout=cfg.getoption("cnmlab_vm_timeout"),
                         append=cfg.getoption("cnmlab_vm_append"), stdout=out, stderr=out,
                         cancel=self._cancel)
            meta.update(exit_code=r.exit_code, seconds=round(r.seconds, 2),
                        first_output=round(r.first_output or 0, 2), accel=r.accel,
                        kver=r.kver)
        except CnmError as e:
            meta["error"] = f"the VM lane could not run: {e}"
        with open(os.path.join(self.dir, "output.txt"), "wb") as f:
            f.write(out.getvalue())
        with open(os.path.join(self.dir, "done.json.tmp"), "w") as f:
            json.dump(meta, f)
        os.replace(os.path.join(self.dir, "done.json.tmp"), os.path.join(self.dir, "done.json"))

    def _load(self) -> None:
        with open(os.path.join(self.dir, "done.json")) as f:
            self.meta = json.load(f)
        with contextlib.suppress(OSError), open(os.path.join(self.dir, "output.txt"), "rb") as f:
            self.output = f.read()
        with contextlib.suppress(OSError), open(os.path.join(self.dir, "reports.jsonl")) as f:
            for line in f:
                with contextlib.suppress(ValueError):
                    d = json.loads(line)
                    if "collect" in d:
                        self.collect_errors.append((d["collect"], d["longrepr"]))
                    else:
                        self.reports.setdefault(d["nodeid"], []).append(d)

    def wait(self) -> None:
        if self._thread is None:
            self.start()
        assert self._thread is not None
        self._thread.join()

    def stop(self) -> None:
        self._cancel.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        if not hasattr(self.config, "workerinput"):
            shutil.rmtree(self.dir, ignore_errors=True)

    # ---- reporting -------------------------------------------------------------------------
    def label(self) -> str:
        return f"{self.meta.get('kver', '?')} ({self.meta.get('accel', '?')})"

    def summary(self) -> str:
        m = self.meta
        if "error" in m:
            return f"cnmlab vm lane: {m['error']}"
        return (f"cnmlab vm lane: {m['tests']} test(s) ran in the full-kernel VM "
                f"(kernel {self.label()}): first guest output after {m['first_output']:.1f} s, "
                f"whole VM run {m['seconds']:.1f} s")

    def report(self, item: pytest.Item, nextitem: pytest.Item | None) -> None:
        """Log a lane test's guest outcome as its outcome here.

        The test is not set up here, but the tests before it were: their fixtures (module,
        class, session scope) are torn down to what ``nextitem`` needs, as pytest's own
        protocol does after every test. Skipping that left pytest's setup state holding the
        previous module, and the next file's first test errored with "previous item was not
        torn down properly"."""
        self.wait()
        hook = item.ihook
        hook.pytest_runtest_logstart(nodeid=item.nodeid, location=item.location)
        found = self.reports.get(item.nodeid)
        if found:
            reports = [item.config.hook.pytest_report_from_serializable(config=item.config,
                                                                        data=data)
                       for data in found]
        else:
            reports = [pytest.TestReport(item.nodeid, item.location, {}, "failed",
                                         self._missing(item), "setup")]
        for rep in reports:
            rep.user_properties.append((PROPERTY, self.label()))
        here = self._teardown_here(item, nextitem)
        torn = [r for r in reports if r.when == "teardown"]
        if here.failed or not torn:  # one teardown report, unless both sides failed
            torn = [r for r in torn if r.failed] + [here]
        for rep in [r for r in reports if r.when != "teardown"] + torn:
            hook.pytest_runtest_logreport(report=rep)
        hook.pytest_runtest_logfinish(nodeid=item.nodeid, location=item.location)

    def _teardown_here(self, item: pytest.Item, nextitem: pytest.Item | None) -> pytest.TestReport:
        """Tear this host's fixtures down to ``nextitem``'s, as ``pytest_runtest_teardown``
        does (its plugins' wrappers are not called: they expect a setup that never ran here),
        with a failure reported as a teardown error like any test's."""
        setupstate = item.session._setupstate  # pytest's one SetupState: no public accessor
        call = pytest.CallInfo.from_call(
            lambda: setupstate.teardown_exact(nextitem),
            when="teardown", reraise=(pytest.exit.Exception, KeyboardInterrupt))
        rep = item.ihook.pytest_runtest_makereport(item=item, call=call)
        rep.user_properties.append((PROPERTY, self.label()))
        return rep

    def _missing(self, item: pytest.Item) -> str:
        """Why a lane test has no outcome from the guest, with what the guest said last."""
        why = self.meta.get("error") or "the VM ran, but its pytest reported nothing for this test"
        for nodeid, text in self.collect_errors:
            if item.nodeid.startswith(nodeid.split("::")[0]):
                why += f"\nthe guest could not collect {nodeid}:\n{text}"
        tail = self.output.decode(errors="replace").strip().splitlines()[-25:]
        if tail:
            why += "\n--- the guest's last output ---\n" + "\n".join(tail)
        return why


# ---------------------------------------------------------------------------------------------
# the guest side


class GuestReporter:
    """Inside the VM: every report (and collection error) as one JSON line, written as it
    happens, so a guest that dies half-way still tells the host what it finished."""

    def __init__(self, config: pytest.Config, path: str) -> None:
        self.config = config
        self.path = path

    def _write(self, data: dict[str, Any]) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(data) + "\n")

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        data = self.config.hook.pytest_report_to_serializable(config=self.config,
                                                              report=report)
        self._write(data)

    def pytest_collectreport(self, report: pytest.CollectReport) -> None:
        if report.failed:
            self._write({"collect": report.nodeid, "longrepr": str(report.longrepr)})
