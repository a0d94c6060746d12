"""A served plugin as a process: its PID file, running it in the background, stopping it.

A learner restarts their plugin after every change, often from a script or a lab's solution,
so ``cnmlab plugin serve --detach`` returns once the socket answers (Docker would otherwise
wait and retry for seconds) and ``cnmlab plugin stop NAME`` ends it. Every serving process
records ``PID START_TIME`` beside its socket (``NAME.sock.pid``); a signal is sent only while
``/proc/PID/stat`` still shows that start time, since PIDs are reused. What the detached
process prints (a learner's tracebacks and prints) goes to ``NAME.sock.out``.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence

from cnmlab.errors import CnmError, ObjectNotFound
from cnmlab.kernel.procs import live_start_time as start_time

START_TIMEOUT = 30.0  # a fresh interpreter on a loaded machine


def pid_path(sock: str) -> str:
    return sock + ".pid"


def out_path(sock: str) -> str:
    return sock + ".out"


def record(sock: str) -> None:
    """Write this process's identity beside its socket."""
    me = os.getpid()
    with open(pid_path(sock), "w") as f:
        f.write(f"{me} {start_time(me)}\n")


def recorded(sock: str) -> tuple[int, int] | None:
    try:
        with open(pid_path(sock)) as f:
            pid, start = (int(x) for x in f.read().split())
        return pid, start
    except (OSError, ValueError):
        return None


def answers(sock: str) -> bool:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.connect(sock)
        return True
    except OSError:
        return False
    finally:
        s.close()


def detach(argv: Sequence[str], sock: str) -> int:
    """Run ``cnmlab`` with ``argv`` in a new session, output to ``NAME.sock.out``; return its
    PID once ``sock`` answers, or raise with the last line it printed."""
    os.makedirs(os.path.dirname(sock), mode=0o700, exist_ok=True)
    with open(out_path(sock), "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "cnmlab.cli", *argv],
                                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        if proc.poll() is not None:
            with open(out_path(sock)) as f:
                lines = [line.strip() for line in f if line.strip()]
            raise CnmError(lines[-1] if lines else f"the plugin exited ({proc.returncode})")
        if os.path.exists(sock) and answers(sock) and recorded(sock):
            return proc.pid
        if time.monotonic() > deadline:
            proc.kill()
            raise CnmError(f"the plugin did not answer on {sock} within {START_TIMEOUT:g} s "
                           f"(see {out_path(sock)})")
        time.sleep(0.05)


def stop(name: str, sock: str, timeout: float = 5.0) -> int:
    """End the process serving ``sock`` (SIGTERM, then SIGKILL); its PID."""
    rec = recorded(sock)
    if rec is None or start_time(rec[0]) != rec[1]:
        raise ObjectNotFound(f"plugin {name} is not running (no live process recorded in "
                             f"{pid_path(sock)})")
    pid = rec[0]
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 2.0)):
        if start_time(pid) == rec[1]:
            os.kill(pid, sig)
        deadline = time.monotonic() + wait
        while start_time(pid) == rec[1] and time.monotonic() < deadline:
            time.sleep(0.05)
        if start_time(pid) != rec[1]:
            break
    forget(sock)
    return pid


def forget(sock: str) -> None:
    """Remove the socket and the files beside it (the call log stays: it is the record)."""
    for path in (sock, pid_path(sock)):
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
