"""An exclusive lock on a file, across processes and threads, that may be removed safely.

``flock(2)`` locks an inode, not a path. The naive "lock, work, unlock, unlink" lets a process
that opened the file before the unlink acquire the lock on the removed inode while a newcomer
creates a fresh file and locks that one: both believe they hold the lock. So a holder that got
the lock checks that the path still names the inode it locked, and starts again if not; and a
lock file is only ever unlinked by its holder, before it unlocks. A waiter on the old inode
then wakes, sees the mismatch and queues on the new file: removing a lock file can never let
two holders in.

The lock is re-entrant within a process (a lab operation calls other lab operations) and
serialises the threads of one process too (the workshop app runs engine work in threads):
``flock`` alone would do neither, since every ``open`` gives a new, independent lock.
"""
from __future__ import annotations

import fcntl
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field


@dataclass
class _Held:
    """This process's hold on one lock file: a thread lock, the file and the nesting depth."""

    thread_lock: threading.RLock = field(default_factory=threading.RLock)
    fd: int = -1
    depth: int = 0
    remove_if: list[Callable[[], bool]] = field(default_factory=list)


_held: dict[str, _Held] = {}
_held_guard = threading.Lock()


def _acquire(path: str) -> int:
    """flock ``path``, retrying until the inode locked is the one the path names."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                now = os.stat(path, follow_symlinks=False)
            except FileNotFoundError:
                now = None
            mine = os.fstat(fd)
        except BaseException:
            os.close(fd)
            raise
        if now is not None and (now.st_dev, now.st_ino) == (mine.st_dev, mine.st_ino):
            return fd
        os.close(fd)  # its holder removed it while we waited: queue on the new one


@contextmanager
def locked(path: str, remove_if: Callable[[], bool] | None = None) -> Iterator[None]:
    """Hold the lock on ``path`` for the body.

    ``remove_if`` is asked when the outermost hold ends, while the lock is still held: if it
    says so, the lock file is unlinked (e.g. the lab it guards is gone).
    """
    path = os.path.abspath(path)
    with _held_guard:
        held = _held.setdefault(path, _Held())
    with held.thread_lock:
        if held.depth == 0:
            held.fd = _acquire(path)
        held.depth += 1
        if remove_if is not None:
            held.remove_if.append(remove_if)
        try:
            yield
        finally:
            held.depth -= 1
            if held.depth == 0:
                checks, held.remove_if = held.remove_if, []
                fd, held.fd = held.fd, -1
                try:
                    if any(check() for check in checks):
                        try:
                            os.unlink(path)
                        except FileNotFoundError:
                            pass
                finally:
                    fcntl.flock(fd, fcntl.LOCK_UN)
                    os.close(fd)

