"""Recorded processes and PID reuse: signal a PID only while it is still the process we started.

A state file outlives the processes it names (a reboot-less week, a ``kill -9``), and the
kernel hands a freed PID to the next process that asks. A PID is therefore recorded with the
process's start time (field 22 of ``/proc/PID/stat``, clock ticks since boot), and a process
is "still ours" only if both match: no other process can have that PID and that start time.
"""
from __future__ import annotations

import os
import signal
import time


def start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot, or None if there is no such process."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            # comm (field 2) may hold spaces and parentheses: split after its last ')'
            return int(f.read().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def live_start_time(pid: int) -> int | None:
    """The start time of a running process; None when it is gone, a zombie or dying.

    The form a PID + start-time record is checked against: a zombie no longer serves.
    """
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return None if fields[0] in ("Z", "X") else int(fields[19])


def started_at(ticks: int) -> float:
    """The wall-clock time (seconds since the epoch) of a start time in ticks since boot."""
    with open("/proc/stat") as f:
        btime = next(int(line.split()[1]) for line in f if line.startswith("btime "))
    return btime + ticks / os.sysconf("SC_CLK_TCK")


def is_zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return False


def same_process(pid: object, start: object) -> bool:
    """Whether ``pid`` still names the live (not zombie) process that started at ``start``."""
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        return False
    if not isinstance(start, int) or isinstance(start, bool):
        return False
    return start_time(pid) == start and not is_zombie(pid)


def signal_if_same(pid: object, start: object, sig: int = signal.SIGTERM) -> bool:
    """Send ``sig`` only if ``pid`` is still the process that started at ``start``.

    The process is pinned with a pidfd before its start time is checked, so the signal can
    only reach the process that was checked, even if it exits and its PID is reused meanwhile.
    Returns whether the signal was sent.
    """
    if not same_process(pid, start):
        return False
    assert isinstance(pid, int)
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return False
    try:
        if not same_process(pid, start):  # the PID changed hands before we pinned it
            return False
        signal.pidfd_send_signal(pidfd, sig)
    except ProcessLookupError:
        return False
    finally:
        os.close(pidfd)
    return True


def wait_gone(pids: list[int], timeout: float, poll: float = 0.005) -> None:
    """Wait (at most ``timeout`` s in all) until each process has exited or is a zombie.

    Our own children are reaped on the way; a zombie that is not our child still shows in
    /proc, but it no longer holds its namespaces, which is what callers wait for.
    """
    deadline = time.monotonic() + timeout
    for pid in pids:
        while os.path.exists(f"/proc/{pid}") and time.monotonic() < deadline:
            try:
                if os.waitpid(pid, os.WNOHANG)[0]:
                    break
            except ChildProcessError:
                pass
            if is_zombie(pid) or not os.path.exists(f"/proc/{pid}"):
                break
            time.sleep(poll)
