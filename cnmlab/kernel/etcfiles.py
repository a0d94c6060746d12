"""A sandbox's own /etc files where ``ip netns exec`` mounts them from: /etc/netns/NAME/.

Docker gives every container its own resolv.conf and hosts; cnmlab writes them where
``ip netns exec`` (and so ``cnmlab exec`` and the workshop's shells) finds them. A directory
and two files per sandbox cost little on an idle disk, but while ext4's journal is busy (online
discard, just after a thousand namespaces and their files went) each creation took up to
0.7 ms here: more than all of the sandbox's kernel work. A thread that builds many sandboxes
at once (``Lab.batch``) therefore defers them: one background thread writes and removes them,
in order, while the build goes on, and leaving ``deferred()`` waits until every one is done and
raises the first failure, so callers find the files in place exactly as before.
"""
from __future__ import annotations

import os
import queue
import shutil
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager

from cnmlab.errors import KernelError

ETC_NETNS = "/etc/netns"


def path(ns: str) -> str:
    return os.path.join(ETC_NETNS, ns)


def _write_now(ns: str, files: Mapping[str, str]) -> None:
    d = path(ns)
    try:
        os.makedirs(d, exist_ok=True)
        for name, text in files.items():
            with open(os.path.join(d, name), "w") as f:
                f.write(text)
    except OSError as e:
        raise KernelError(f"write {e.filename or d}: {e.strerror} (is /etc writable?)") from None


def _remove_now(ns: str) -> None:
    shutil.rmtree(path(ns), ignore_errors=True)


class _Writer:
    """One background thread running file jobs in the order they were given."""

    def __init__(self) -> None:
        # a file job, an Event to set once every job before it ran (``settle``), or None: stop
        self.jobs: queue.SimpleQueue[Callable[[], None] | threading.Event | None] = \
            queue.SimpleQueue()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._work, name="cnmlab-etcfiles", daemon=True)
        self.thread.start()

    def _work(self) -> None:
        while (job := self.jobs.get()) is not None:
            if isinstance(job, threading.Event):
                job.set()
            elif self.error is None:  # after a failure the rest would only build on it
                try:
                    job()
                except BaseException as e:  # noqa: BLE001 - handed to the waiting thread
                    self.error = e

    def finish(self) -> BaseException | None:
        self.jobs.put(None)
        self.thread.join()
        return self.error


_local = threading.local()
# every thread's writer while its block runs: ``settle`` waits for them all (a shell started
# from another thread of the workshop app during a batch must find its sandbox's files too)
_active: set[_Writer] = set()
_active_lock = threading.Lock()


def _writer() -> _Writer | None:
    return getattr(_local, "writer", None)


def write(ns: str, files: Mapping[str, str]) -> None:
    """Replace the namespace's files (name -> text); later, if this thread defers them."""
    w = _writer()
    if w is None:
        _write_now(ns, files)
    else:
        content = dict(files)
        w.jobs.put(lambda: _write_now(ns, content))


def remove(ns: str) -> None:
    """Remove the namespace's directory (nothing if it has none)."""
    w = _writer()
    if w is None:
        _remove_now(ns)
    else:
        w.jobs.put(lambda: _remove_now(ns))


def settle() -> None:
    """Wait until the writes deferred so far, by any thread, are on disk (at once when none
    are): ``ip netns exec`` mounts what the namespace's folder holds when it starts, so a
    command run in a sandbox in the middle of a batch must find its files there first.
    Raises this thread's own writer's failure; another thread's is its own to report."""
    with _active_lock:  # a writer still listed has not been told to stop: it will answer
        marks = []
        for w in _active:
            done = threading.Event()
            w.jobs.put(done)
            marks.append(done)
    for done in marks:
        done.wait()
    w = _writer()
    if w is not None and w.error is not None:
        raise w.error


@contextmanager
def deferred() -> Iterator[None]:
    """This thread's writes and removals run in the background until the block ends, which
    waits for all of them. Re-entrant: an inner block joins the outer one."""
    if _writer() is not None:
        yield
        return
    w = _local.writer = _Writer()
    with _active_lock:
        _active.add(w)
    try:
        yield
    except BaseException:
        _stop(w)  # the body's own error is the one to report
        raise
    error = _stop(w)
    if error is not None:
        raise error


def _stop(w: _Writer) -> BaseException | None:
    _local.writer = None
    with _active_lock:
        _active.discard(w)
    return w.finish()
