"""Shells opened in a lab's namespaces: a registry, an unmistakable prompt, a loud goodbye.

A learner may keep ``cnmlab shell lab03/host`` open in another terminal while the app stops or
resets the lab. Teardown SIGKILLs every process in the lab's namespaces, so such a shell dies
mid-sentence and the learner lands back at the machine's own root prompt, where the next lab
command would run on the real host. Three things prevent that surprise:

* **registry**: every lab shell (from the CLI, the app's full-screen shell or its embedded
  terminal) is recorded as ``/run/cnmlab/_shells/<lab>/<pid>.json`` while it runs, so stop,
  reset and quit can ask first (``open_shells``); stale entries (a PID that died, or was
  reused: the start time is compared) are pruned on read.
* **prompt**: lab shells show ``cnmlab LAB/MEMBER`` in reverse colours (``prompt``), never a
  plain ``#`` that looks like the machine's own.
* **banner**: the process that waits for a shell (``run_shell`` for terminals, the app's
  terminal widget for embedded ones) prints ``gone_banner`` when the shell was killed or its
  lab vanished, and ``run_shell`` waits for Enter so the learner cannot miss it. The shell's
  own ``PROMPT_COMMAND`` also leaves (with the banner) if its namespace disappears under it.

The commands typed are appended to a history file after every command (``PROMPT_COMMAND``
runs ``history -a``), so they survive a SIGKILL; ``cnmlab.workshop.progress.Progress`` decides where.
"""
from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import termios
import time
from dataclasses import asdict, dataclass
from typing import Any

from cnmlab import state
from cnmlab.constants import DOCKERD_DIR
from cnmlab.kernel import netns, rundir

SHELL_EXIT_LAB_GONE = 111  # the exit code of a shell that left because its namespace vanished


def shells_dir(lab: str | None = None) -> str:
    base = os.path.join(rundir.STATE_DIR, "_shells")
    return base if lab is None else os.path.join(base, lab)


@dataclass
class ShellInfo:
    """One open lab shell."""

    pid: int
    lab: str
    member: str
    ns: str
    owner: str  # "cli", or "app:<pid>" for the workshop app's own shells
    start: int  # the process start time (clock ticks since boot): PIDs get reused

    @property
    def where(self) -> str:
        return f"{self.lab}/{self.member}"

    def describe(self) -> str:
        how = "in another terminal" if self.owner == "cli" else (
            "in this app" if self.owner == f"app:{os.getpid()}" else f"({self.owner})")
        return f"{self.where} (pid {self.pid}, {how})"


def _start_time(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(") ", 1)[1].split()
    except (OSError, IndexError):
        return None
    if fields[0] == "Z":
        return None  # a zombie is a dead shell
    return int(fields[19])


def register(lab: str, member: str, ns: str, pid: int, owner: str) -> ShellInfo:
    """Record a running shell; ``unregister`` (or its death) removes it."""
    info = ShellInfo(pid, lab, member, ns, owner, _start_time(pid) or 0)
    folder = shells_dir(lab)
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, f".{pid}.tmp")
    with open(tmp, "w") as f:
        json.dump(asdict(info), f)
    os.replace(tmp, os.path.join(folder, f"{pid}.json"))
    return info


def unregister(lab: str, pid: int) -> None:
    folder = shells_dir(lab)
    try:
        os.unlink(os.path.join(folder, f"{pid}.json"))
    except FileNotFoundError:
        pass
    try:
        os.rmdir(folder)  # only when empty
    except OSError:
        pass


def open_shells(lab: str) -> list[ShellInfo]:
    """The lab's shells that are still alive (dead or reused-PID entries are pruned)."""
    folder = shells_dir(lab)
    try:
        files = sorted(os.listdir(folder))
    except FileNotFoundError:
        return []
    out = []
    for name in files:
        if not name.endswith(".json"):
            continue
        try:
            with open(os.path.join(folder, name)) as f:
                info = ShellInfo(**json.load(f))
        except (OSError, ValueError, TypeError):
            continue
        if _start_time(info.pid) != info.start:
            unregister(lab, info.pid)
            continue
        out.append(info)
    return out


def others(lab: str) -> list[ShellInfo]:
    """Open shells of a lab that this process does not own (a stop or reset kills them)."""
    me = f"app:{os.getpid()}"
    return [s for s in open_shells(lab) if s.owner != me]


# ---------------------------------------------------------------------------------------------
# what a lab shell looks like


def prompt(lab: str, member: str) -> str:
    """PS1: ``cnmlab LAB/MEMBER`` in black on yellow, then the directory, then ``#``."""
    return f"\\[\\e[1;30;43m\\] cnmlab {lab}/{member} \\[\\e[0m\\] \\w # "


def gone_banner(lab: str, member: str, why: str = "") -> str:
    """The loud message shown where a lab shell was; ANSI colours, ends with a newline."""
    red = "\x1b[1;97;41m"
    off = "\x1b[0m"
    line = "!" * 66
    why = why or f"lab {lab} was stopped or rebuilt"
    return (f"\r\n{red}{line}{off}\r\n"
            f"{red}  THE LAB SHELL IN {lab}/{member} IS GONE: {why}.{off}\r\n"
            f"{red}  You are NOT in the lab any more. Commands typed now run elsewhere.{off}\r\n"
            f"{red}{line}{off}\r\n")


def shell_env(lab: str, member: str, ns: str, history: str | None = None,
              base: dict[str, str] | None = None) -> dict[str, str]:
    """Environment of a lab shell: prompt, history file, and the lab-gone guard."""
    env = dict(os.environ if base is None else base)
    env["PS1"] = prompt(lab, member)
    env["CNMLAB_LAB"] = lab
    env["CNMLAB_MEMBER"] = member
    # `cnmlab lab docker ...` and `cnmlab exec ...` work from inside a lab shell too
    here = os.path.dirname(sys.executable)
    if os.path.exists(os.path.join(here, "cnmlab")) and here not in env.get("PATH", ""):
        env["PATH"] = f"{here}:{env.get('PATH', '/usr/sbin:/usr/bin:/sbin:/bin')}"
    # a lab run against real Docker (lab 10): plain `docker ...` talks to the lab's dockerd
    docker_sock = os.path.join(DOCKERD_DIR, lab, "docker.sock")
    if os.path.exists(docker_sock):
        env["DOCKER_HOST"] = f"unix://{docker_sock}"
    guard = (f"[ -e {shlex.quote(netns.path_of(ns))} ] || {{ printf %b "
             f"{shlex.quote(gone_banner(lab, member, 'its namespace was deleted'))}; "
             f"exit {SHELL_EXIT_LAB_GONE}; }}")
    commands = [guard]
    if history:
        os.makedirs(os.path.dirname(history), exist_ok=True)
        env["HISTFILE"] = history
        env["HISTSIZE"] = env["HISTFILESIZE"] = "5000"
        env["HISTTIMEFORMAT"] = "%F %T "
        commands.append("history -a")
    env["PROMPT_COMMAND"] = "; ".join(commands)
    return env


def shell_argv(ns: str, shell: str | None = None) -> list[str]:
    """An interactive shell in a named cnmlab namespace (``ip netns exec``: own resolv.conf)."""
    from cnmlab.kernel.nsexec import shell_argv as ns_argv

    return ns_argv(ns, [shell or os.environ.get("CNMLAB_SHELL", "bash"), "--norc", "-i"])


def lab_alive(lab: str, ns: str) -> bool:
    return state.exists(lab) and netns.exists(ns)


def run_shell(lab: str, member: str, ns: str, *, owner: str = "cli",
              history: str | None = None, wait_enter: bool | None = None) -> int:
    """Run a lab shell on this terminal and wait for it; the loud banner if the lab went away.

    The calling process stays the shell's parent (instead of exec'ing it) so that someone is
    left to say what happened when teardown kills the shell. Returns the shell's exit status
    (negative: killed by that signal).
    """
    env = shell_env(lab, member, ns, history)
    old = {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGINT, signal.SIGQUIT,
                                                          signal.SIGTSTP, signal.SIGTTOU)}
    saved = _tty_modes()
    try:
        proc = subprocess.Popen(shell_argv(ns), env=env)
        register(lab, member, ns, proc.pid, owner)
        try:
            rc = proc.wait()
        finally:
            unregister(lab, proc.pid)
        _take_terminal_back(saved)
        gone = rc < 0 or rc == SHELL_EXIT_LAB_GONE or not lab_alive(lab, ns)
        if gone:
            why = ("its namespace was deleted" if rc == SHELL_EXIT_LAB_GONE
                   else f"lab {lab} was stopped or rebuilt" if not lab_alive(lab, ns)
                   else f"the shell was killed (signal {-rc})")
            sys.stdout.write(gone_banner(lab, member, why))
            sys.stdout.flush()
            if wait_enter is None:
                wait_enter = sys.stdin.isatty()
            if wait_enter:
                sys.stdout.write("Press Enter to continue. ")
                sys.stdout.flush()
                try:
                    sys.stdin.readline()
                except OSError:
                    time.sleep(3)
        return rc
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def _tty_modes() -> list[Any] | None:
    try:
        return termios.tcgetattr(0) if os.isatty(0) else None
    except termios.error:
        return None


def _take_terminal_back(saved: list[Any] | None) -> None:
    """A killed shell leaves the terminal as it had it: its own (dead) process group in the
    foreground, and readline's raw-ish modes (Enter would not end a line). Undo both."""
    if not os.isatty(0):
        return
    try:
        os.tcsetpgrp(0, os.getpgrp())
    except OSError:  # not our controlling terminal
        pass
    if saved is not None:
        try:
            termios.tcsetattr(0, termios.TCSANOW, saved)
        except termios.error:
            pass
