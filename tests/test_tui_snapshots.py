"""Snapshot tests of the workshop app's screens (pytest-textual-snapshot), at 80x24 and 120x40.

Deterministic state: the labs come from the repo's ``labs/``, the kernel features and "am I
root" are given, progress is a tmp file with one step passed, no lab is running and the live
kernel views are off (``live=False``). Check results are made up (including a truth table), so
no kernel is needed. Regenerate after a deliberate UI change with::

    pytest tests/test_tui_snapshots.py --snapshot-update
"""
from __future__ import annotations

import json

import pytest

from cnmlab.checks.api import CheckResult
from cnmlab.checks.truth import TruthTable
from cnmlab.tui.app import CnmlabApp
from cnmlab.tui.screens import StepScreen
from cnmlab.workshop import labfile
from cnmlab.workshop.progress import Progress
from cnmlab.workshop.runner import LabRun

FEATURES = {"veth": True, "bridge": True, "iptables": True, "nftables": True, "vxlan": True,
            "macvlan": True, "ipvlan": False, "ipvs": False, "dummy": True, "vlan": True}
SIZES = [(80, 24), (120, 40)]


@pytest.fixture
def progress(tmp_path, monkeypatch):
    path = tmp_path / "progress.json"
    path.write_text(json.dumps({"labs": {
        "01-sandboxes-by-hand": {"passed": ["look-inside"], "hints": {"veth-pair": 1}},
        "02-default-bridge": {"passed": ["a", "b"], "hints": {}}}}))
    monkeypatch.setenv("CNMLAB_PROGRESS", str(path))
    return Progress(str(path))


def make_app(progress: Progress, **kw) -> CnmlabApp:
    kw.setdefault("features", FEATURES)
    return CnmlabApp(instance_suffix="snap", live=False, root=True, progress=progress, **kw)


# what a learner's terminal shows after two commands (fed to the real pyte widget: no shell)
TRANSCRIPT = (b"\x1b[1;30;43m cnmlab lab01-snap/red \x1b[0m ~ # ip link set lo up\r\n"
              b"\x1b[1;30;43m cnmlab lab01-snap/red \x1b[0m ~ # ip -br link\r\n"
              b"lo               \x1b[32mUNKNOWN\x1b[0m        00:00:00:00:00:00 "
              b"<LOOPBACK,UP,LOWER_UP>\r\n"
              b"\x1b[1;30;43m cnmlab lab01-snap/red \x1b[0m ~ # ping -c1 127.0.0.1")


def open_step(app: CnmlabApp, lab: str, results: list[CheckResult] | None = None,
              transcript: bytes | None = None):
    """run_before: show a lab's current step without starting the lab."""

    async def before(pilot) -> None:
        labdef = labfile.get(lab)
        run = LabRun(labdef, app.instance_name(labdef), app.progress)
        screen = StepScreen(run)
        await app.push_screen(screen)
        await pilot.pause()
        if transcript is not None:
            screen.target = labdef.steps[0].where[0]
            view = screen.pane.show(screen.target)
            await pilot.pause()
            view.feed(transcript)
            view.focus()
            await pilot.pause()
        if results is not None:
            screen.results[screen.step.id] = results
            screen.show_results(results)
            screen.passed = all(r.ok for r in results)
            await pilot.pause()
            screen._scroll_to("#verdict")
        await pilot.pause()
        await pilot.pause()

    return before


def fake_results() -> list[CheckResult]:
    names = ["web", "api", "db"]
    expected = {(s, d): (s != "db" and d != "db") for s in names for d in names if s != d}
    observed = dict(expected)
    observed[("web", "db")] = True  # isolation broken
    table = TruthTable(names, expected, observed, title="icmp",
                       details={("web", "db"): "1 echo reply"})
    return [
        CheckResult("matrix web, api, db (icmp)", "matrix", False, "see table", "see table",
                    "web reaches db: is DOCKER-ISOLATION dropping br-a -> br-b?", table),
        CheckResult("default-route web via 172.18.0.1", "default-route", True,
                    "default via 172.18.0.1", "default via 172.18.0.1", ""),
        CheckResult("reachable web -> upstream (icmp)", "reachable", False,
                    "web reaches 203.0.113.1", "timeout after 1 s",
                    "no MASQUERADE rule for 172.18.0.0/16 in the host's nat table"),
    ]


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_lab_list(snap_compare, progress, size):
    assert snap_compare(make_app(progress), terminal_size=size)


def test_lab_list_missing_feature(snap_compare, progress):
    app = make_app(progress, features={**FEATURES, "iptables": False})
    assert snap_compare(app, press=["down", "down"], terminal_size=(80, 24))


def test_lab_list_not_root(snap_compare, progress):
    app = CnmlabApp(live=False, root=False, progress=progress, features=FEATURES)
    assert snap_compare(app, terminal_size=(80, 24))


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_step_screen(snap_compare, progress, size):
    app = make_app(progress)
    assert snap_compare(app, terminal_size=size, run_before=open_step(app, "01"))


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_step_screen_results_with_truth_table(snap_compare, progress, size):
    app = make_app(progress)
    assert snap_compare(app, terminal_size=size,
                        run_before=open_step(app, "04", fake_results()))


def test_help_screen(snap_compare, progress):
    app = make_app(progress)
    assert snap_compare(app, terminal_size=(80, 24), run_before=open_step(app, "01"),
                        press=["question_mark"])


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_side_by_side_terminal(snap_compare, progress, size):
    """The step beside a live terminal that has the focus: the footer shows the F-keys."""
    app = make_app(progress)
    assert snap_compare(app, terminal_size=size,
                        run_before=open_step(app, "01", transcript=TRANSCRIPT))


def fake_diff():
    from cnmlab.checks.diff import Difference, DiffResult

    return DiffResult("default-bridge", [
        Difference("host iptables", "docker",
                   "-A POSTROUTING -s 172.17.0.0/16 ! -o <br:bridge> -j MASQUERADE"),
        Difference("c1 addresses", "engine", "eth0 172.17.0.2/16 scope global"),
        Difference("c1 addresses", "docker", "eth0 172.17.0.2/16 brd 172.17.255.255 scope "
                                             "global"),
        Difference("p1 routes", "docker", "default via 172.19.0.1 dev eth0",
                   "internal networks: cnmlab follows Docker 23+")], sections=12)


def test_docker_diff_dialog(snap_compare, progress):
    """D's dialog: the commands Docker ran, then yours (-) and Docker's (+) lines, per section."""
    from cnmlab.tui.dockerdiff import DockerDiffScreen

    app = make_app(progress)

    async def before(pilot) -> None:
        await app.push_screen(DockerDiffScreen(
            fake_diff(), ["docker run -d --name c1 busybox",
                          "docker run -d --name c2 -p 8080:80 busybox"], "host"))
        await pilot.pause()
        await pilot.pause()

    assert snap_compare(app, terminal_size=(120, 40), run_before=before)
