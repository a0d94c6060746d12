"""A sandbox's own /etc files where ``ip netns exec`` mounts them from: /etc/netns/NAME/.

Docker gives every container its own resolv.conf and hosts; cnmlab writes them where
``ip netns exec`` (and so ``cnmlab exec`` and the workshop's shells) finds them. A directory
and two files per sandbox cost little on an idle disk, but while ext4's journal is busy (online
discard, just after a thousand namespaces and their files went) each creation took up to
0.7 ms here: more than all of the sandbox's kernel work. So:

* where /dev/shm is a tmpfs, the files live there (``STORE``, a private folder) and
  /etc/netns/NAME is a symlink to them: one entry on the disk per sandbox instead of three
  (``ip netns exec`` follows it; a real folder left by an older cnmlab is written in place);
* a thread that builds many sandboxes at once (``Lab.batch``) defers them: one background
  thread writes and removes them, in order, while the build goes on, and leaving
  ``deferred()`` waits until every one is done and raises the first failure, so callers find
  the files in place exactly as before.
"""
from __future__ import annotations

import os
import queue
import shutil
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager

from cnmlab.errors import KernelError
from cnmlab.kernel import rundir

ETC_NETNS = "/etc/netns"
STORE = "/dev/shm/cnmlab-etc"  # used only where /dev/shm is a tmpfs (see _store)
_store_ok: bool | None = None


def path(ns: str) -> str:
    """Where ``ip netns exec`` looks (a symlink into ``STORE``, or a folder)."""
    return os.path.join(ETC_NETNS, ns)


def _is_tmpfs(mount_point: str) -> bool:
    try:
        with open("/proc/self/mounts") as f:
            found = [fields[2] for fields in (line.split() for line in f)
                     if len(fields) > 2 and fields[1] == mount_point]
    except OSError:
        return False
    return bool(found) and found[-1] == "tmpfs"  # the last mount on a point is the visible one


def _store() -> str | None:
    """The private folder on tmpfs for the files, or None (then they go under /etc/netns)."""
    global _store_ok
    if _store_ok is None:
        _store_ok = _is_tmpfs(os.path.dirname(STORE))
    if not _store_ok:
        return None
    return rundir.private_dir(STORE)  # made 0700, or refused if someone else's (/dev/shm: 1777)


def _write_now(ns: str, files: Mapping[str, str]) -> None:
    link = path(ns)
    d = link
    try:
        os.makedirs(ETC_NETNS, exist_ok=True)
        store = None if os.path.isdir(link) and not os.path.islink(link) else _store()
        if store is not None:
            d = os.path.join(store, ns)
        os.makedirs(d, exist_ok=True)
        for name, text in files.items():
            with open(os.path.join(d, name), "w") as f:
                f.write(text)
        if store is not None:
            if os.path.islink(link):
                if os.readlink(link) == d:
                    return
                os.unlink(link)  # dangling, or pointing elsewhere: ours now
            os.symlink(d, link)
    except OSError as e:
        raise KernelError(f"write {e.filename or d}: {e.strerror} (is /etc writable?)") from None


def _remove_now(ns: str) -> None:
    link = path(ns)
    if os.path.islink(link):
        os.unlink(link)  # first: nothing mounts from a half-removed folder
    else:
        shutil.rmtree(link, ignore_errors=True)
    if _store() is not None:
        shutil.rmtree(os.path.join(STORE, ns), ignore_errors=True)


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
    """Remove the namespace's files: its link and the store's folder, or its folder
    (nothing if it has none)."""
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
