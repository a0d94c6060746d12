"""Lab shells: registered while open, an unmistakable prompt, and a loud banner when the lab
goes away under them (the learner must never be left at a prompt that looks like the lab's).

The real ``cnmlab shell`` runs on a real pty; the lab is stopped from "another terminal"
(this test) and the shell's screen must say so.
"""
from __future__ import annotations

import os
import pty
import select
import subprocess
import sys
import time

import pytest

from cnmlab import shells, state

from cnmlab.workshop import labfile

from cnmlab.workshop.progress import Progress

from cnmlab.workshop.runner import LabRun

PID = str(os.getpid())
pytestmark = pytest.mark.kernel


def read_until(fd: int, text: str, timeout: float = 20.0) -> str:
    seen = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r, _, _ = select.select([fd], [], [], 0.1)
        if r:
            try:
                chunk = os.read(fd, 65536)
            except OSError:
                break
            if not chunk:
                break
            seen += chunk
            if text.encode() in seen:
                return seen.decode(errors="replace")
    raise AssertionError(f"{text!r} never showed up; got:\n{seen.decode(errors='replace')}")


def test_cli_shell_registered_prompt_and_banner(tmp_path, monkeypatch):
    monkeypatch.setenv("CNMLAB_PROGRESS", str(tmp_path / "progress.json"))
    name = f"lab01-{PID}"
    run = LabRun(labfile.get("01"), name)
    run.start()
    proc = None
    try:
        master, slave = pty.openpty()
        proc = subprocess.Popen([sys.executable, "-m", "cnmlab.cli", "shell", f"{name}/red"],
                                stdin=slave, stdout=slave, stderr=slave, start_new_session=True,
                                env=dict(os.environ, CNMLAB_PROGRESS=str(tmp_path / "progress.json")))
        os.close(slave)
        out = read_until(master, f"cnmlab {name}/red")  # the lab prompt, not a bare '#'
        assert "\x1b[1;30;43m" in out  # in colour
        deadline = time.monotonic() + 5
        while not shells.open_shells(name) and time.monotonic() < deadline:
            time.sleep(0.05)
        [info] = shells.open_shells(name)
        assert info.member == "red" and info.owner == "cli"
        os.write(master, b"echo typed-$((6*7))\r")
        read_until(master, "typed-42")
        hist_file = Progress().history_file("01-sandboxes-by-hand", "red")
        deadline = time.monotonic() + 10  # bash appends it when it prints the next prompt
        while time.monotonic() < deadline:
            if os.path.exists(hist_file) and "echo typed-" in open(hist_file).read():
                break
            time.sleep(0.05)
        # the lab goes away (Q in the app, 'cnmlab lab stop' elsewhere)
        run.stop()
        out = read_until(master, "Press Enter")
        assert f"THE LAB SHELL IN {name}/red IS GONE" in out
        assert "You are NOT in the lab any more" in out
        os.write(master, b"\r")
        assert proc.wait(10) == 1
        assert shells.open_shells(name) == []
        # the command typed is kept with the progress
        hist = Progress().history("01-sandboxes-by-hand")
        assert any("echo typed-" in l for l in hist.get("red", [])), hist
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
        if state.exists(name):
            run.stop()


def test_registry_prunes_dead_and_reused_pids(tmp_path):
    name = f"reg{PID}"
    p = subprocess.Popen(["sleep", "30"])
    try:
        shells.register(name, "web", "nons", p.pid, "cli")
        assert [s.pid for s in shells.open_shells(name)] == [p.pid]
        assert shells.others(name)[0].describe().endswith("in another terminal)")
    finally:
        p.kill()
        p.wait()
    assert shells.open_shells(name) == []  # dead: pruned on read
    assert not os.path.exists(shells.shells_dir(name))
