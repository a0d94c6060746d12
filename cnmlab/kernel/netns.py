"""Network namespaces made, entered and removed in-process.

``ip netns add`` forks a process per namespace and pyroute2's ``netns.create`` forks a helper;
doing the unshare/bind-mount/setns dance in the calling thread is several times cheaper, which
matters when a benchmark builds a thousand sandboxes. setns(2) only moves the calling thread,
so the other threads of the process (the TUI's event loop, say) stay where they are.
"""
from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import fcntl
import os
import signal
import threading
from collections.abc import Iterator

from cnmlab.errors import KernelError, ObjectExists, ObjectNotFound
from cnmlab.kernel import procs

NETNS_RUN_DIR = "/run/netns"
CLONE_NEWNET = 0x40000000
MS_BIND = 0x1000
MS_REC = 0x4000
MS_SHARED = 1 << 20
MNT_DETACH = 2
NS_GET_NSTYPE = 0xB703  # ioctl on an nsfs fd: which kind of namespace it is

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_run_dir_lock = threading.Lock()
_run_dir_ready = False


def _check(ret: int, what: str) -> None:
    if ret != 0:
        err = ctypes.get_errno()
        raise KernelError(f"{what}: {os.strerror(err)}")


def _mount(src: str, target: str, flags: int) -> int:
    return _libc.mount(src.encode(), target.encode(), b"none", ctypes.c_ulong(flags), None)


def path_of(name: str) -> str:
    return os.path.join(NETNS_RUN_DIR, name)


def exists(name: str) -> bool:
    return os.path.exists(path_of(name))


def list_names() -> list[str]:
    try:
        return sorted(os.listdir(NETNS_RUN_DIR))
    except FileNotFoundError:
        return []


def _prepare_run_dir() -> None:
    """Make /run/netns a shared mount point, as iproute2 does, so mounts propagate."""
    global _run_dir_ready
    with _run_dir_lock:
        if _run_dir_ready:
            return
        os.makedirs(NETNS_RUN_DIR, exist_ok=True)
        if _mount("", NETNS_RUN_DIR, MS_SHARED | MS_REC) != 0:
            if ctypes.get_errno() != errno.EINVAL:
                _check(-1, f"make {NETNS_RUN_DIR} shared")
            _check(_mount(NETNS_RUN_DIR, NETNS_RUN_DIR, MS_BIND | MS_REC), f"bind {NETNS_RUN_DIR}")
            _check(_mount("", NETNS_RUN_DIR, MS_SHARED | MS_REC), f"make {NETNS_RUN_DIR} shared")
        _run_dir_ready = True


def setns(fd: int) -> None:
    _check(_libc.setns(fd, CLONE_NEWNET), "setns")


def _claim_path(name: str) -> str:
    """The empty file a namespace is bind-mounted on, made exclusively (the name is ours)."""
    _prepare_run_dir()
    path = path_of(name)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CREAT | os.O_EXCL, 0o444)
    except FileExistsError:
        raise ObjectExists(f"network namespace {name} already exists (run 'cnmlab clean')") from None
    os.close(fd)
    return path


def create(name: str) -> None:
    """Create a named namespace, like ``ip netns add NAME``, without leaving this thread in it."""
    path = _claim_path(name)
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        if _libc.unshare(CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            os.unlink(path)
            raise KernelError(f"create namespace {name}: {os.strerror(err)}")
        try:
            if _mount("/proc/thread-self/ns/net", path, MS_BIND) != 0:
                err = ctypes.get_errno()
                os.unlink(path)
                raise KernelError(f"bind namespace {name}: {os.strerror(err)}")
        finally:
            setns(home)
    finally:
        os.close(home)


def attach(name: str, pid: int) -> None:
    """Name process ``pid``'s network namespace, like ``ip netns attach NAME PID``; ``delete``
    takes the name away again and the namespace lives on as long as the process does."""
    path = _claim_path(name)
    if _mount(f"/proc/{pid}/ns/net", path, MS_BIND) != 0:
        err = ctypes.get_errno()
        os.unlink(path)
        raise KernelError(f"name the namespace of process {pid} {name}: {os.strerror(err)}")


def delete(name: str) -> bool:
    """Unmount and unlink a named namespace; the kernel frees it once nothing holds it."""
    path = path_of(name)
    if not os.path.exists(path):
        return False
    _libc.umount2(path.encode(), MNT_DETACH)
    try:
        os.unlink(path)
    except FileNotFoundError:
        return False
    return True


def open_fd(name: str) -> int:
    try:
        return os.open(path_of(name), os.O_RDONLY)
    except FileNotFoundError:
        raise ObjectNotFound(f"network namespace {name} does not exist") from None


def is_network_namespace(fd: int) -> bool:
    """Whether ``fd`` is open on a network namespace (not a stale file, not another kind)."""
    try:
        return fcntl.ioctl(fd, NS_GET_NSTYPE) == CLONE_NEWNET
    except OSError:
        return False


def inode(name: str) -> int:
    return os.stat(path_of(name)).st_ino


def _ident(path: str) -> tuple[int, int]:
    st = os.stat(path)
    return st.st_dev, st.st_ino


def of_pid(pid: int) -> tuple[int, int]:
    """The identity (device, inode) of process ``pid``'s network namespace."""
    try:
        return _ident(f"/proc/{pid}/ns/net")
    except FileNotFoundError:
        raise ObjectNotFound(f"process {pid} is gone") from None


def is_root_of(pid: int) -> bool:
    """Whether ``pid`` lives in the machine's root network namespace, where cnmlab never
    builds: init's, or, where init's cannot be read (a container's PID 1 under another user
    namespace), the one this process runs in (cnmlab's commands run in the root namespace)."""
    ident = of_pid(pid)
    roots = [f"/proc/{os.getpid()}/ns/net", "/proc/1/ns/net"]
    for path in roots:
        try:
            if _ident(path) == ident:
                return True
        except OSError:
            continue
    return False


def name_of_pid(pid: int) -> str | None:
    """The name under /run/netns of ``pid``'s network namespace, if it has one."""
    ident = of_pid(pid)
    for name in list_names():
        try:
            if _ident(path_of(name)) == ident:
                return name
        except OSError:
            continue
    return None


@contextlib.contextmanager
def entered(name: str | None = None, fd: int | None = None) -> Iterator[None]:
    """Run the body with this thread inside a namespace (by name or fd); always come back."""
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    target = fd if fd is not None else open_fd(name or "")
    try:
        setns(target)
        try:
            yield
        finally:
            setns(home)
    finally:
        if fd is None:
            os.close(target)
        os.close(home)


@contextlib.contextmanager
def locked(name: str) -> Iterator[None]:
    """Serialise changes to one namespace's objects between processes (the lab process and
    a host's agent both create an overlay network's part). flock on the namespace's own bind
    mount: it exists exactly as long as the namespace, so there is no lock file to clean."""
    import fcntl

    fd = open_fd(name)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def pids_in(name: str) -> list[int]:
    """Processes whose network namespace is this named one (to stop them before deletion)."""
    return pids_in_many([name]).get(name, [])


def pids_in_many(names: list[str]) -> dict[str, list[int]]:
    """One pass over /proc for many namespaces (teardown of a big lab scans it once)."""
    wanted: dict[tuple[int, int], str] = {}
    for name in names:
        try:
            st = os.stat(path_of(name))
        except FileNotFoundError:
            continue
        wanted[(st.st_dev, st.st_ino)] = name
    found: dict[str, list[int]] = {}
    if not wanted:
        return found
    me = os.getpid()
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        try:
            ns = os.stat(f"/proc/{entry}/ns/net")
        except OSError:
            continue
        name = wanted.get((ns.st_dev, ns.st_ino))
        if name is not None:
            found.setdefault(name, []).append(int(entry))
    return found


def kill_processes(*names: str, timeout: float = 3.0) -> None:
    """SIGKILL every process in these namespaces and wait until they are gone.

    A namespace whose processes still run outlives its deletion, so teardown stops them first.
    """
    pids = [pid for found in pids_in_many(list(names)).values() for pid in found]
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    procs.wait_gone(pids, timeout)
