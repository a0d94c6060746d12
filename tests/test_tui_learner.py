"""What a new learner hit in labs 01 and 03 (issue 17), each reproduced against real labs.

* wrong wiring in lab 01 fails step 2 with which end pairs with which, and step 3 explains
  with the lab's own words (no ip_forward/MASQUERADE advice in a lab without a router);
* ``s`` means "show me" in every tab, and never starts a capture;
* ``Q`` with a lab shell open in another terminal asks first;
* the terminal follows the step's ``in:``; a step reset rebuilds up to the step before;
* the learner's own listener on the checked port does not fail the check;
* a step's command block pasted into the terminal runs only on Enter; Ctrl-C is the shell's
  while typing there, and asks before quitting elsewhere.
"""
from __future__ import annotations

import asyncio
import os
import subprocess
import time
from typing import Any

import pytest

from cnmlab.lab import ns_name
from cnmlab import shells, state
from cnmlab.workshop import labfile
from cnmlab.workshop.runner import LabRun
from cnmlab.tui.screens import ChoiceScreen, ConfirmScreen, SnippetScreen, StepScreen
from cnmlab.tui.terminal import TerminalView
from tests.test_tui_app import (FEATURES, PID, SIZE, RecordingApp, check, open_lab, plain,
                                screen_text, stop_lab, wait_for)

pytestmark = pytest.mark.kernel


@pytest.fixture(autouse=True)
def progress_file(tmp_path, monkeypatch):
    monkeypatch.setenv("CNMLAB_PROGRESS", str(tmp_path / "progress.json"))


def ns(lab: str, member: str) -> str:
    return ns_name(f"{lab}-{PID}", member)


def sh(netns: str, script: str) -> None:
    subprocess.run(["ip", "netns", "exec", netns, "sh", "-ec", script], check=True,
                   capture_output=True)


async def solve_current(pilot: Any, screen: StepScreen) -> None:
    before = screen.checks_done
    await pilot.press("s")
    await wait_for(pilot, lambda: isinstance(screen.app.screen, ConfirmScreen), 5, "confirm")
    await pilot.press("y")
    await wait_for(pilot, lambda: screen.checks_done > before, 120, "solve")


def test_wrong_wiring_fails_with_the_right_explanation():
    app = RecordingApp(features=FEATURES)

    async def scenario() -> None:
        async with app.run_test(size=SIZE) as pilot:
            screen = await open_lab(pilot, app, 1)
            await solve_current(pilot, screen)
            await pilot.press("n")
            assert screen.step.id == "veth-pair"
            red, blue = ns("lab01", "red"), ns("lab01", "blue")
            # the learner's typo: the peer is veth-blu; then a second pair made in blue
            await asyncio.to_thread(sh, red, f"ip link add veth-red type veth peer name "
                                    f"veth-blu netns {blue}")
            await asyncio.to_thread(sh, blue, "ip link add veth-blue type veth peer name "
                                    "veth-red")
            await check(pilot, screen)
            text = " ".join(screen_text(screen).split())
            assert "checks fail" in text
            assert "it pairs with veth-blu in blue, not with veth-blue in blue" in text, text
            assert "veth-blue in blue pairs with veth-red in blue" in text, text
            # step 3 on top of the wrong wiring: the lab's own explanation, no router advice
            await pilot.press("n")
            await asyncio.to_thread(sh, red, "ip addr add 10.0.0.1/24 dev veth-red; "
                                    "ip link set veth-red up")
            await asyncio.to_thread(sh, blue, "ip addr add 10.0.0.2/24 dev veth-blue; "
                                    "ip link set veth-blue up; ip link set veth-blu up")
            await check(pilot, screen)
            why = " ".join(plain(screen.query_one("#why"), width=200).split())
            assert "not wired as a red-blue cable" in why, why
            everything = why + " " + " ".join(screen_text(screen).split())
            assert "veth-red in red pairs with veth-blu in blue" in everything, everything
            for wrong in ("ip_forward", "MASQUERADE", "FORWARD", "bridge's address"):
                assert wrong not in everything, (wrong, everything)

    try:
        asyncio.run(scenario())
    finally:
        stop_lab("01")


def test_s_means_show_me_in_every_tab_and_terminal_keys():
    app = RecordingApp(features=FEATURES)

    async def scenario() -> None:
        async with app.run_test(size=(120, 40)) as pilot:
            screen = await open_lab(pilot, app, 1)
            for key, tab in (("1", "tab-step"), ("2", "tab-live"), ("3", "tab-topology"),
                             ("4", "tab-packets")):
                await pilot.press(key)
                await wait_for(pilot, lambda: screen.query_one("#tabs").active == tab, 5, tab)
                pane = screen.query_one(f"#{tab}")
                if tab != "tab-step":
                    await wait_for(pilot, lambda: pane.query(".live-view"), 10, "live view")
                focusable = [w for w in pane.query("*") if w.focusable]
                if focusable:  # focus inside the tab: a Select, a button, a scroll view
                    focusable[0].focus()
                    await pilot.pause(0.1)
                await pilot.press("s")
                await wait_for(pilot, lambda: isinstance(app.screen, ConfirmScreen), 5,
                               f"the solution from {tab}")
                assert "Show me" in str(app.screen._title)
                await pilot.press("n")
                await wait_for(pilot, lambda: app.screen is screen, 5, "back")
                if tab == "tab-packets":
                    panel = pane.query_one(".live-view")
                    assert not panel.running  # s never starts a capture
                    # 1-4 still switch tabs while the capture controls have the focus
                    await pilot.press("1")
                    await wait_for(pilot, lambda: screen.query_one("#tabs").active ==
                                   "tab-step", 5, "tab 1 from the packets controls")
            # in the terminal, s is a letter for the shell; F9 is "show me"
            await pilot.press("i")
            await wait_for(pilot, lambda: isinstance(app.screen.focused, TerminalView), 5,
                           "terminal focus")
            view = app.screen.focused
            await wait_for(pilot, lambda: "cnmlab" in view.text(), 10, "the lab prompt")
            assert f"cnmlab lab01-{PID}/red" in view.text()
            await pilot.press("s")
            await pilot.pause(0.3)
            assert app.screen is screen and view.text().rstrip().endswith("s")
            await pilot.press("f9")
            await wait_for(pilot, lambda: isinstance(app.screen, ConfirmScreen), 5, "F9")
            await pilot.press("n")
            await wait_for(pilot, lambda: app.screen is screen, 5, "back")
            await pilot.press("f6")  # out of the terminal: c checks again
            await pilot.pause(0.1)
            assert not isinstance(app.screen.focused, TerminalView)
            await check(pilot, screen)

    try:
        asyncio.run(scenario())
    finally:
        stop_lab("01")


def test_paste_waits_for_enter_and_ctrl_c_is_the_shells_while_typing():
    """A step's command block pasted into the terminal (F8) lands in the edit line and runs
    only on Enter; Ctrl-C while typing interrupts the shell's command (no quit question);
    out of the terminal, Ctrl-C asks before quitting because that terminal was used."""
    app = RecordingApp(features=FEATURES)

    async def scenario() -> None:
        async with app.run_test(size=(120, 40)) as pilot:
            screen = await open_lab(pilot, app, 1)
            await pilot.press("i")
            await wait_for(pilot, lambda: isinstance(app.screen.focused, TerminalView), 5,
                           "terminal focus")
            view = app.screen.focused
            await wait_for(pilot, lambda: f"lab01-{PID}/red" in view.text(), 15, "the prompt")
            await pilot.press("f8")
            await wait_for(pilot, lambda: isinstance(app.screen, SnippetScreen), 5, "snippets")
            await pilot.press("enter")
            await wait_for(pilot, lambda: "ip addr" in view.text(), 10, "the pasted block")
            await pilot.pause(0.5)
            assert "LOOPBACK" not in view.text()  # pasted, not run
            await pilot.press("enter")
            await wait_for(pilot, lambda: "LOOPBACK" in view.text(), 10, "ip link's output")

            for ch in "sleep 300":
                await pilot.press(ch if ch != " " else "space")
            await pilot.press("enter")
            await pilot.pause(0.3)
            await pilot.press("ctrl+c")
            await wait_for(pilot, lambda: "^C" in view.text(), 10, "the interrupt")
            assert app.screen is screen  # no quit question while typing

            await pilot.press("f6")
            await pilot.pause(0.1)
            assert not isinstance(app.screen.focused, TerminalView)
            await pilot.press("ctrl+c")
            await wait_for(pilot, lambda: isinstance(app.screen, ConfirmScreen), 5, "question")
            body = plain(app.screen.query_one("#confirm-body Static"), width=300)
            assert f"lab01-{PID}/red (the terminal here)" in body, body
            await pilot.press("n")
            await wait_for(pilot, lambda: app.screen is screen, 5, "back")
            assert app.return_code is None  # still running

    try:
        asyncio.run(scenario())
    finally:
        stop_lab("01")


def test_embedded_terminal_says_loudly_when_its_lab_goes_away():
    """The lab is stopped from another terminal while the embedded shell is open: the shell
    is gone, the terminal says so in the banner's words and offers a new shell on Enter."""
    app = RecordingApp(features=FEATURES)

    async def scenario() -> None:
        async with app.run_test(size=(120, 40)) as pilot:
            screen = await open_lab(pilot, app, 1)
            await pilot.press("i")
            await wait_for(pilot, lambda: isinstance(app.screen.focused, TerminalView), 5,
                           "terminal focus")
            view = app.screen.focused
            await wait_for(pilot, lambda: f"lab01-{PID}/red" in view.text(), 15, "the prompt")
            name = f"lab01-{PID}"
            await asyncio.to_thread(lambda: LabRun(labfile.get("01"), name).stop())
            await wait_for(pilot, lambda: "IS GONE" in view.text(), 20, "the banner")
            text = " ".join(view.text().split())
            assert f"THE LAB SHELL IN {name}/red IS GONE" in text, text
            assert "You are NOT in the lab any more" in text
            assert "Press Enter for a new shell in red" in text
            assert not view.running and screen is app.screen

    try:
        asyncio.run(scenario())
    finally:
        stop_lab("01")


def test_stop_and_quit_asks_when_a_shell_is_open_elsewhere():
    app = RecordingApp(features=FEATURES)
    proc = None

    async def scenario() -> None:
        nonlocal proc
        async with app.run_test(size=SIZE) as pilot:
            screen = await open_lab(pilot, app, 1)
            name = f"lab01-{PID}"
            red = ns("lab01", "red")
            # a learner's `cnmlab shell lab01/red` in another terminal
            proc = subprocess.Popen(["ip", "netns", "exec", red, "sleep", "300"])
            shells.register(name, "red", red, proc.pid, "cli")
            await pilot.press("Q")
            await wait_for(pilot, lambda: isinstance(app.screen, ConfirmScreen), 5, "ask")
            body = plain(app.screen.query_one("#confirm-body Static"), width=300)
            assert f"{name}/red (pid {proc.pid}, in another terminal)" in body, body
            await pilot.press("n")  # no: nothing happens
            await wait_for(pilot, lambda: app.screen is screen, 5, "back")
            assert state.exists(name) and proc.poll() is None
            await pilot.press("Q")
            await wait_for(pilot, lambda: isinstance(app.screen, ConfirmScreen), 5, "ask 2")
            await pilot.press("y")
            await wait_for(pilot, lambda: not app.is_running, 60, "stop and quit")
        assert not state.exists(f"lab01-{PID}")
        proc.wait(5)  # teardown killed it (and reaped it: the return code is lost)
        assert not os.path.exists(f"/proc/{proc.pid}")
        assert shells.open_shells(f"lab01-{PID}") == []

    try:
        asyncio.run(scenario())
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
        stop_lab("01")


def test_terminal_follows_in_and_reset_this_step():
    app = RecordingApp(features=FEATURES)

    async def scenario() -> None:
        async with app.run_test(size=SIZE) as pilot:
            screen = await open_lab(pilot, app, 3)
            assert screen.step.id == "ip-forward" and screen.step.where == ["host"]
            assert screen.target == "host"  # lab 03 step 1 is done in the host
            await wait_for(pilot, lambda: screen.pane.current is not None
                           and "cnmlab" in screen.pane.current.text(), 10, "host shell")
            assert f"lab03-{PID}/host" in screen.pane.current.text()
            await solve_current(pilot, screen)
            await pilot.press("n")
            await solve_current(pilot, screen)  # step 2 solved: the MASQUERADE rule
            host = ns("lab03", "host")
            await pilot.press("r")
            await wait_for(pilot, lambda: isinstance(app.screen, ChoiceScreen), 5, "choice")
            before = screen.resets_done
            await pilot.press("1")  # this step only
            await wait_for(pilot, lambda: screen.resets_done > before or app.errors(), 120,
                           "step reset")
            assert not app.errors(), app.errors()
            assert screen.step.id == "masquerade"
            out = subprocess.run(["ip", "netns", "exec", host, "iptables", "-t", "nat", "-S"],
                                 capture_output=True, text=True).stdout
            assert "MASQUERADE" not in out  # this step's work is undone...
            fwd = subprocess.run(["ip", "netns", "exec", host, "sysctl", "-n",
                                  "net.ipv4.ip_forward"], capture_output=True, text=True)
            assert fwd.stdout.strip() == "1"  # ...the step before it is applied
            assert "ip-forward" in screen.run.passed and "masquerade" not in screen.run.passed
            # the terminal's shell died with the old lab and came back
            await wait_for(pilot, lambda: screen.pane.current.running, 10, "new shell")

    try:
        asyncio.run(scenario())
    finally:
        stop_lab("03")


def test_learners_own_listener_does_not_fail_the_check():
    app = RecordingApp(features=FEATURES)
    server = None

    async def scenario() -> None:
        nonlocal server
        async with app.run_test(size=SIZE) as pilot:
            screen = await open_lab(pilot, app, 3)
            for _ in range(2):
                await solve_current(pilot, screen)
                await pilot.press("n")
            assert screen.step.id == "publish"
            server = subprocess.Popen(["ip", "netns", "exec", ns("lab03", "web"), "python3",
                                       "-m", "http.server", "80"], stdout=subprocess.DEVNULL,
                                      stderr=subprocess.DEVNULL)
            deadline = time.monotonic() + 10
            from cnmlab.checks.probes import port_owner

            while port_owner(ns("lab03", "web"), "tcp", 80) is None:
                assert time.monotonic() < deadline, "http.server did not start"
                await pilot.pause(0.1)
            await solve_current(pilot, screen)
            text = " ".join(screen_text(screen).split())
            assert screen.passed, text
            results = screen.results["publish"]
            assert "http.server 80" in results[0].observed, results[0].observed
            assert "{" not in text  # never an internal dict

    try:
        asyncio.run(scenario())
    finally:
        if server is not None:
            server.kill()
            server.wait()
        stop_lab("03")


def test_veth_peer_check_passes_the_right_wiring():
    """The peer-aware link check, with the right wiring: passes (the solution)."""
    app = RecordingApp(features=FEATURES)

    async def scenario() -> None:
        async with app.run_test(size=SIZE) as pilot:
            screen = await open_lab(pilot, app, 1)
            await solve_current(pilot, screen)
            await pilot.press("n")
            await solve_current(pilot, screen)
            assert screen.passed, screen_text(screen)
            out = subprocess.run(["ip", "-n", ns("lab01", "red"), "-d", "link", "show",
                                  "veth-red"], capture_output=True, text=True).stdout
            assert "veth" in out

    try:
        asyncio.run(scenario())
    finally:
        stop_lab("01")
