"""The workshop app driven with Textual's Pilot at 80x24, against real labs (root).

Every lab runs as ``labNN-<pid>`` (``CnmlabApp(instance_suffix=PID)``) with the progress file in
a tmp dir, and is stopped in ``finally`` (the conftest fails a test that leaves a namespace
whose name carries the pid).
"""
from __future__ import annotations

import asyncio
import os
import subprocess
import time
from typing import Any

import pytest

from cnmlab import state
from cnmlab.tui.app import CnmlabApp
from cnmlab.tui.screens import (ChoiceScreen, ConfirmScreen, HelpScreen, LabListScreen,
                                StepScreen)
from cnmlab.workshop import labfile
from cnmlab.workshop.progress import Progress
from cnmlab.workshop.runner import LabRun

PID = str(os.getpid())
SIZE = (80, 24)
FEATURES = {"veth": True, "bridge": True, "iptables": True, "nftables": True, "vxlan": True,
            "macvlan": True, "ipvlan": True, "ipvs": True, "dummy": True, "vlan": True}


class RecordingApp(CnmlabApp):
    """The app, recording its notifications (what the learner sees instead of tracebacks)."""

    def __init__(self, **kw: Any) -> None:
        kw.setdefault("instance_suffix", PID)
        super().__init__(**kw)
        self.notes: list[tuple[str, str]] = []

    def notify(self, message: str, *, severity: str = "information", **kw: Any) -> None:
        self.notes.append((severity, str(message)))
        super().notify(message, severity=severity, **kw)  # type: ignore[arg-type]

    def errors(self) -> list[str]:
        return [m for s, m in self.notes if s == "error"]


@pytest.fixture(autouse=True)
def progress_file(tmp_path, monkeypatch):
    path = tmp_path / "progress.json"
    monkeypatch.setenv("CNMLAB_PROGRESS", str(path))
    return path


async def wait_for(pilot: Any, cond: Any, timeout: float = 60.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        await pilot.pause(0.05)
        if cond():
            return
    raise AssertionError(f"timed out waiting for {what or cond}")


def stop_lab(lab_ref: str) -> None:
    labdef = labfile.get(lab_ref)
    name = f"{labdef.default_name}-{PID}"
    if state.exists(name):
        LabRun(labdef, name).stop()


async def open_lab(pilot: Any, app: RecordingApp, number: int) -> StepScreen:
    await wait_for(pilot, lambda: isinstance(app.screen, LabListScreen), 10, "the lab list")
    for _ in range(number - 1):
        await pilot.press("down")
    await pilot.press("enter")
    await wait_for(pilot, lambda: isinstance(app.screen, StepScreen) or app.errors(), 120,
                   "the step screen")
    assert not app.errors(), app.errors()
    screen = app.screen
    assert isinstance(screen, StepScreen)
    await pilot.pause(0.2)
    return screen


async def check(pilot: Any, screen: StepScreen) -> None:
    before = screen.checks_done
    await pilot.press("c")
    await wait_for(pilot, lambda: screen.checks_done > before or screen.app.errors(), 120,
                   "check results")


def result_classes(screen: StepScreen) -> list[set[str]]:
    return [set(w.classes) for w in screen.query(".result")]


def plain(*widgets: Any, width: int = 78) -> str:
    """What Static widgets show, as plain text."""
    from rich.console import Console

    with open(os.devnull, "w") as devnull:
        console = Console(width=width, record=True, color_system=None, file=devnull)
        for w in widgets:
            console.print(w.content)
        return console.export_text()


def screen_text(screen: Any) -> str:
    """What the step screen's results and verdict show, as plain text."""
    return plain(screen.query_one("#verdict"), *screen.query(".result"))


# ---- a whole lab: open, check (fails), solve, check (passes), truth table, next, reset -------
@pytest.mark.kernel
def test_lab_flow_check_solve_truth_table_next_reset():
    app = RecordingApp(features=FEATURES)

    async def scenario() -> None:
        async with app.run_test(size=SIZE) as pilot:
            screen = await open_lab(pilot, app, 4)  # lab 04: its first step has a matrix check
            assert screen.run.name == f"lab04-{PID}"
            assert screen.step_index == 0
            assert "Step 1/" in plain(screen.query_one("#status"))

            await check(pilot, screen)
            classes = result_classes(screen)
            assert classes and any("-fail" in c for c in classes), classes
            assert screen.query_one("#status").has_class("-failed") and not screen.passed
            assert "checks fail" in screen_text(screen)

            await pilot.press("s")  # show me: the commands first...
            await wait_for(pilot, lambda: isinstance(app.screen, ConfirmScreen), 5, "confirm")
            assert "network" in plain(screen.query_one("#solution"))
            before = screen.checks_done
            await pilot.press("y")  # ...then apply
            await wait_for(pilot, lambda: screen.checks_done > before or app.errors(), 120,
                           "solve")
            assert not app.errors(), app.errors()
            assert all("-ok" in c for c in result_classes(screen)), screen_text(screen)
            assert screen.passed and screen.query_one("#status").has_class("-passed")
            results = screen.results[screen.step.id]
            tables = [r.table for r in results if r.table is not None]
            assert tables, "the matrix check should come with a truth table"
            text = screen_text(screen)
            assert "expected" in text and "observed" in text
            assert tables[0].summary in text  # "0 wrong, 2 correct"
            assert Progress().lab("04-user-defined-networks")["passed"] == ["user-network"]

            await pilot.press("n")
            await pilot.pause(0.2)
            assert screen.step_index == 1
            assert not screen.query(".result")  # a new step starts without results
            assert "Step 2/" in plain(screen.query_one("#status"))

            await pilot.press("r")  # reset: this step or the whole lab
            await wait_for(pilot, lambda: isinstance(app.screen, ChoiceScreen), 5, "choice")
            await pilot.press("2")  # the whole lab
            await wait_for(pilot, lambda: screen.step_index == 0 and not screen.busy
                           or app.errors(), 120, "reset")
            assert not app.errors(), app.errors()
            assert Progress().lab("04-user-defined-networks")["passed"] == []
            assert state.exists(f"lab04-{PID}")

            await pilot.press("q")  # back to the list: the lab keeps running
            await wait_for(pilot, lambda: isinstance(app.screen, LabListScreen), 5, "list")
            assert state.exists(f"lab04-{PID}")

    try:
        asyncio.run(scenario())
    finally:
        stop_lab("04")


@pytest.mark.kernel
def test_watch_mode_turns_green_and_stop_quit():
    app = RecordingApp(features=FEATURES, watch_poll=0.5)

    async def scenario() -> None:
        async with app.run_test(size=SIZE) as pilot:
            screen = await open_lab(pilot, app, 1)
            assert screen.step.id == "look-inside"
            # the live views are the other engineer's widgets, mounted on first use
            await pilot.press("2")
            await wait_for(pilot, lambda: screen.query("#tab-live .live-view"), 10, "LiveState")
            live = screen.query_one("#tab-live .live-view")
            assert type(live).__name__ == "LiveState" and live.target == screen.target
            await pilot.press("t")
            await pilot.pause(0.1)
            assert live.target == screen.target != "red"
            await pilot.press("1")
            await pilot.press("w")
            await wait_for(pilot, lambda: screen.checks_done >= 1, 30, "first watch check")
            assert not screen.passed
            # the learner fixes it in a shell of their own: no key pressed in the app
            for sb in ("red", "blue"):
                subprocess.run(["ip", "netns", "exec", f"cnm-lab01-{PID}.{sb}", "ip", "link",
                                "set", "lo", "up"], check=True)
            await wait_for(pilot, lambda: screen.passed, 30, "watch mode to see the fix")
            assert screen.query_one("#status").has_class("-passed") and screen.query_one("#status").has_class("-watching")
            await pilot.press("w")
            assert not screen.watching
            await pilot.press("Q")  # stop the lab and quit
            await wait_for(pilot, lambda: not app.is_running, 60, "stop and quit")
        assert not state.exists(f"lab01-{PID}")

    try:
        asyncio.run(scenario())
    finally:
        stop_lab("01")


# ---- errors become notifications, never tracebacks -------------------------------------------
@pytest.mark.kernel
def test_engine_errors_are_notifications():
    app = RecordingApp(features=FEATURES)

    async def scenario() -> None:
        async with app.run_test(size=SIZE) as pilot:
            screen = await open_lab(pilot, app, 1)
            # the lab disappears behind the app's back (another terminal: cnmlab lab stop 1)
            await asyncio.to_thread(stop_lab, "01")
            await pilot.press("c")
            await wait_for(pilot, lambda: app.errors(), 30, "an error notification")
            assert "not running" in app.errors()[-1], app.errors()
            assert app.is_running and app.screen is screen and not screen.busy

            # an unexpected exception in a worker: still a notification
            def boom(step: Any = None) -> Any:
                raise RuntimeError("kaboom")

            screen.run.check = boom
            n = len(app.errors())
            await pilot.press("c")
            await wait_for(pilot, lambda: len(app.errors()) > n, 30, "a second notification")
            assert "unexpected error" in app.errors()[-1] and "kaboom" in app.errors()[-1]
            assert app.is_running

            # no terminal to suspend under the Pilot: the shell key says what to do instead
            n = len(app.errors())
            await pilot.press("x")
            await pilot.pause(0.1)
            assert len(app.errors()) > n
            assert app.return_code is None  # nothing crashed the app

    try:
        asyncio.run(scenario())
    finally:
        stop_lab("01")


def test_help_screen_lists_every_key():
    app = RecordingApp(features=FEATURES, root=True)

    async def scenario() -> None:
        async with app.run_test(size=SIZE) as pilot:
            await pilot.press("question_mark")
            await wait_for(pilot, lambda: isinstance(app.screen, HelpScreen), 5, "help")
            text = plain(app.screen.query_one("#help-keys"), width=100)
            for screen_cls in (LabListScreen, StepScreen):
                for b in screen_cls.BINDINGS:
                    assert b.tooltip and b.tooltip.split("(")[0].strip()[:20] in " ".join(
                        text.split()), (b.key, b.tooltip)
            for key in ("c ", "h ", "s ", "n ", "p ", "w ", "x ", "t ", "r ", "? ", "Q ", "q ",
                        "i ", "y ", "F2 ", "F6 "):
                assert f" {key}" in text, key
            await pilot.press("escape")
            await wait_for(pilot, lambda: isinstance(app.screen, LabListScreen), 5, "closed")

    asyncio.run(scenario())


def test_not_root_is_read_only():
    app = RecordingApp(features=FEATURES, root=False)

    async def scenario() -> None:
        async with app.run_test(size=SIZE) as pilot:
            await pilot.pause(0.1)
            banner = app.screen.query_one("#banner")
            assert "run as root to start labs" in plain(banner)
            assert not banner.has_class("-empty")
            await pilot.press("enter")
            await pilot.pause(0.2)
            assert isinstance(app.screen, LabListScreen)
            assert any("root" in e for e in app.errors())

    asyncio.run(scenario())


def test_missing_feature_is_marked_with_remedy():
    from cnmlab.kernel.features import REMEDY

    app = RecordingApp(features={**FEATURES, "bridge": False}, root=True)

    async def scenario() -> None:
        async with app.run_test(size=SIZE) as pilot:
            await pilot.press("down")  # lab 02 needs bridge
            await pilot.pause(0.1)
            detail = plain(app.screen.query_one("#lab-detail"), width=200)
            assert "missing here" in detail and "Linux bridges" in detail
            assert app.screen.has_class("-missing")
            await pilot.press("enter")
            await pilot.pause(0.2)
            assert isinstance(app.screen, LabListScreen)  # not started half-way
            assert any(REMEDY in e for e in app.errors()), app.errors()

    asyncio.run(scenario())


def test_missing_feature_offers_the_vm_key(monkeypatch):
    """The lab list offers ``v`` (``cnmlab vm``) for a lab whose features are missing; headless,
    where the app cannot hand the terminal over, ``v`` says what to type instead; inside the
    VM it says so (test_vm.py presses ``v`` in a real terminal)."""
    from cnmlab.tui.screens import VM_KEY

    monkeypatch.delenv("CNMLAB_IN_VM", raising=False)
    app = RecordingApp(features={**FEATURES, "bridge": False}, root=True)

    async def scenario() -> None:
        async with app.run_test(size=(120, 30)) as pilot:
            await pilot.press("down")  # lab 02 needs bridge
            await pilot.pause(0.1)
            assert VM_KEY in plain(app.screen.query_one("#lab-detail"), width=200)
            await pilot.press("enter")
            await pilot.pause(0.2)
            assert any(VM_KEY in e for e in app.errors()), app.errors()
            await pilot.press("v")
            await pilot.pause(0.2)
            assert any("in a terminal run: cnmlab vm" in e for e in app.errors()), app.errors()
            monkeypatch.setenv("CNMLAB_IN_VM", "1")
            await pilot.press("v")
            await pilot.pause(0.2)
            assert ("information", "this is the full-kernel VM already") in app.notes

    asyncio.run(scenario())
