"""End to end: the real ``cnmlab`` command in a real terminal (tmux), driven like a learner.

Lab list -> open lab 1 -> check -> ``x`` opens a shell in a sandbox -> ``ip -br link`` shows
``lo`` -> ``exit`` comes back to the same step -> back -> quit. The lab runs as
``lab01-<pid>`` (``CNMLAB_INSTANCE_SUFFIX``), progress goes to a tmp file; the tmux server
(its own socket) and the lab are cleaned up whatever happens.
"""
from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import time

import pytest

from cnmlab import state
from cnmlab.workshop import labfile
from cnmlab.workshop.progress import Progress
from cnmlab.workshop.runner import LabRun
from cnmlab.lab import ns_name

PID = str(os.getpid())
SOCKET = f"cnmlab{PID}"
SESSION = "e2e"

pytestmark = [pytest.mark.kernel,
              pytest.mark.skipif(shutil.which("tmux") is None, reason="needs tmux")]


def cnmlab_argv() -> list[str]:
    """This checkout's entry point: the one next to the interpreter running the tests (a
    ``cnmlab`` on PATH may belong to another checkout, whose state files differ)."""
    exe = os.path.join(os.path.dirname(sys.executable), "cnmlab")
    if not os.access(exe, os.X_OK):
        exe = shutil.which("cnmlab") or ""
    return [exe] if exe else [sys.executable, "-m", "cnmlab.cli"]


def tmux(*args: str, check: bool = True) -> str:
    return subprocess.run(["tmux", "-L", SOCKET, *args], capture_output=True, text=True,
                          check=check, timeout=20).stdout


def screen() -> str:
    return tmux("capture-pane", "-p", "-t", SESSION)


def wait_screen(text: str, timeout: float = 60.0) -> str:
    deadline = time.monotonic() + timeout
    seen = ""
    while time.monotonic() < deadline:
        seen = screen()
        if text in seen:
            return seen
        time.sleep(0.1)
    raise AssertionError(f"{text!r} never showed up; the screen was:\n{seen}")


def wait_footer(text: str, timeout: float = 90.0) -> str:
    """Wait for the key bar (the screen's last line) to show ``text``: which keys it lists
    says where the keys go (the step or the terminal beside it)."""
    deadline = time.monotonic() + timeout
    seen = ""
    while time.monotonic() < deadline:
        lines = screen().rstrip().splitlines()
        seen = lines[-1] if lines else ""
        if text in seen:
            return seen
        time.sleep(0.1)
    raise AssertionError(f"the key bar never showed {text!r}; it was:\n{seen}")


def keys(*k: str) -> None:
    tmux("send-keys", "-t", SESSION, *k)


def test_learner_session_in_tmux(tmp_path):
    progress = tmp_path / "progress.json"
    done = tmp_path / "exit-code"
    env = f"CNMLAB_PROGRESS={shlex.quote(str(progress))} CNMLAB_INSTANCE_SUFFIX={PID}"
    command = (f"{env} {shlex.join(cnmlab_argv())}; echo $? > {shlex.quote(str(done))}; "
               "sleep 60")
    name = f"lab01-{PID}"
    try:
        tmux("new-session", "-d", "-s", SESSION, "-x", "100", "-y", "30", command)
        wait_screen("Sandboxes and endpoints by hand", 20)  # the lab list
        assert "Service discovery" in screen()

        keys("Enter")  # lab 1 is highlighted first
        wait_screen("Step 1/4", 120)
        assert state.exists(name)

        keys("c")
        wait_screen("FAIL", 60)  # the results, scrolled into view

        keys("x")  # a real full-screen shell in the target sandbox
        wait_screen("goes back to the lab", 20)
        wait_screen(f"cnmlab {name}/red", 20)
        keys("ip -br link", "Enter")
        out = wait_screen("lo ", 10)
        assert "LOOPBACK" in out
        keys("exit", "Enter")
        wait_screen("Step 1/4", 20)  # back in the app, same step

        keys("q")  # back to the list: the lab keeps running
        wait_screen("running", 10)
        keys("q")  # quit
        deadline = time.monotonic() + 20
        while not done.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert done.exists(), screen()
        assert done.read_text().strip() == "0"
        assert "keeps running as" in screen()  # the app says how to stop the lab
        assert state.exists(name)
    finally:
        tmux("kill-server", check=False)
        if state.exists(name):
            LabRun(labfile.get("01"), name).stop()


def literal(text: str) -> None:
    tmux("send-keys", "-t", SESSION, "-l", text)


def test_lab01_typed_into_the_embedded_terminal(tmp_path):
    """Lab 1 from start to end typed into the terminal beside the step: no full-screen shell.

    The terminal follows each step's ``in:`` (red, then blue with F4), F2 checks while typing,
    F6 leaves the terminal so n moves on; the progress file ends with every step passed.
    """
    progress = tmp_path / "progress.json"
    done = tmp_path / "exit-code"
    env = f"CNMLAB_PROGRESS={shlex.quote(str(progress))} CNMLAB_INSTANCE_SUFFIX={PID}"
    command = (f"{env} {shlex.join(cnmlab_argv())}; echo $? > {shlex.quote(str(done))}; "
               "sleep 60")
    name = f"lab01-{PID}"
    blue_ns = ns_name(name, "blue")

    marks = iter(range(1000, 2000))

    def typed(*lines: str) -> None:
        """Type the lines, then wait until the shell has run them all: a last ``echo`` whose
        output (``typed-N``) differs from what is typed (``typed-$((N-1+1))``) shows on screen
        only once the shell got to it. (A check pressed before a slow shell ran the command
        sees the step undone.)"""
        for line in lines:
            literal(line)
            keys("Enter")
        n = next(marks)
        literal(f"echo typed-$(({n - 1}+1))")
        keys("Enter")
        wait_screen(f"typed-{n}", 90)

    def enter_terminal() -> None:
        keys("i")
        wait_footer("F2 Check")  # the footer lists the function keys only while typing

    def leave_terminal() -> None:
        keys("F6")
        wait_footer("c Check")  # letters again: n, End... go to the step, not the shell

    def check_passes(n_checks: int) -> None:
        keys("F2")
        wait_screen(f"all {n_checks} checks pass", 120)

    try:
        tmux("new-session", "-d", "-s", SESSION, "-x", "160", "-y", "45", command)
        wait_screen("Sandboxes and endpoints by hand", 90)
        keys("Enter")
        wait_screen("Step 1/4", 120)
        enter_terminal()  # a shell in red, the step's first 'in:'
        wait_screen(f"cnmlab {name}/red", 90)
        typed("ip link set lo up")
        keys("F4")  # the next member: blue
        wait_screen(f"cnmlab {name}/blue", 90)
        typed("ip link set lo up", "ping -c1 -W1 127.0.0.1")
        check_passes(3)

        leave_terminal()
        keys("n")  # next step: it is done in red
        wait_screen("Step 2/4", 90)
        wait_screen("Terminal: red", 90)
        enter_terminal()
        typed(f"ip link add veth-red type veth peer name veth-blue netns {blue_ns}")
        check_passes(2)

        leave_terminal()
        keys("n")
        wait_screen("Step 3/4", 90)
        enter_terminal()
        typed("ip addr add 10.0.0.1/24 dev veth-red", "ip link set veth-red up")
        keys("F4")
        wait_screen("Terminal: blue", 90)
        typed("ip addr add 10.0.0.2/24 dev veth-blue", "ip link set veth-blue up",
              "ping -c1 -W1 10.0.0.1")
        check_passes(4)

        leave_terminal()
        keys("n")
        wait_screen("Step 4/4", 90)
        wait_screen("Terminal: red", 90)
        enter_terminal()
        typed("ip route add default via 10.0.0.2")
        keys("F2")  # the last step passes: the app scrolls its recap into view
        wait_screen("Recap: Sandboxes and endpoints", 120)
        leave_terminal()
        keys("End")  # the recap closes the last step: it stays in view at the end
        wait_screen("Recap: Sandboxes and endpoints", 120)

        import json

        passed = json.loads(progress.read_text())["labs"]["01-sandboxes-by-hand"]["passed"]
        assert passed == ["look-inside", "veth-pair", "address-and-ping", "routes-and-resolv"]
        history = Progress(str(progress)).history("01-sandboxes-by-hand")
        assert "ip route add default via 10.0.0.2" in history["red"], history

        keys("Q")  # stop the lab and quit
        deadline = time.monotonic() + 60
        while not done.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert done.exists(), screen()
        assert done.read_text().strip() == "0"
        assert not state.exists(name)
    finally:
        tmux("kill-server", check=False)
        if state.exists(name):
            LabRun(labfile.get("01"), name).stop()


def _running(pid: int) -> bool:
    """Whether a process still runs (a zombie waiting for its reaper has exited)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_the_app_exits_when_its_terminal_goes_away(tmp_path):
    """Its terminal closed (the tmux server killed), the app exits instead of spinning on a
    hung-up tty. Started as in the tests above, as a child of the pane's shell: the kernel
    hangs up the session leader, not the app, so the app must notice the terminal itself."""
    pidfile = tmp_path / "pid"
    env = f"CNMLAB_PROGRESS={shlex.quote(str(tmp_path / 'progress.json'))} " \
          f"CNMLAB_INSTANCE_SUFFIX={PID}"
    app = (f"trap '' HUP; echo $$ > {shlex.quote(str(pidfile))}; "
           f"{env} exec {shlex.join(cnmlab_argv())}")
    command = f"sh -c {shlex.quote(app)}; sleep 60"
    pid = 0
    try:
        tmux("new-session", "-d", "-s", SESSION, "-x", "100", "-y", "30", command)
        wait_screen("Sandboxes and endpoints by hand", 90)  # the app runs
        # its features probed (the worker that probes them would hold its exit back)
        wait_screen("needs: veth ✔", 120)
        pid = int(pidfile.read_text())
        assert _running(pid)
        tmux("kill-server", check=False)
        deadline = time.monotonic() + 60  # generous: a loaded machine; a spinning app never exits
        while _running(pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not _running(pid), ("the app kept running after its terminal went away: "
                                   + open(f"/proc/{pid}/stat").read())
    finally:
        tmux("kill-server", check=False)
        if pid and _running(pid):
            os.kill(pid, 9)
