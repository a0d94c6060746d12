"""A reference to a network namespace: by netns name, by path, or by the PID of a process in it.

Checks run against sandboxes that cnmlab made (``/run/netns/NAME``), that a learner made by hand,
or that another implementation made (a Docker container found by its PID). ``open()`` turns the
reference into an fd for ``netns.entered(fd=...)``; a gone namespace is a one-line ``CnmError``,
never a hang.

A reference that came from a learner's submission is made with ``foreign=True``: it must never
lead into the machine's own network namespace (PID 1's, or the grader's), whatever name, path,
bind mount or PID it uses. Namespaces are compared by identity (the nsfs inode: ``st_dev`` and
``st_ino``), checked on the very fd that is opened, so a file swapped after loading cannot slip
through either.
"""
from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Iterator
from dataclasses import dataclass, field

from cnmlab.errors import CnmError, ObjectNotFound
from cnmlab.kernel import netns



class NamespaceGone(ObjectNotFound):
    """The namespace a check was pointed at does not exist (any more)."""


class NamespaceDenied(NamespaceGone):
    """The namespace file exists but this process may not open it."""


class MachineNamespace(CnmError):
    """A foreign reference leads into the machine's own network namespace."""


NsId = tuple[int, int]  # (st_dev, st_ino) of an nsfs file: a namespace's identity
INIT_NET_INO = 0xEFFFFFF9  # the initial namespace's fixed inode number (Linux >= 6.x)
MACHINE = "the machine's own network namespace"
GRADER = "the grader's own network namespace"
_machine: dict[str, NsId] = {}


def machine_namespaces() -> dict[NsId, str]:
    """Identity -> description of the namespaces a learner may never name: PID 1's and ours.

    Ours is read once (the first call comes before any thread enters another namespace) and
    kept, so a later call from a thread inside a sandbox still knows the grader's own. PID 1's
    may be unreadable (a container whose init belongs to another user namespace); the kernel's
    initial namespace is then still recognised by its fixed inode number (``is_initial``).
    """
    out: dict[NsId, str] = {}
    try:
        st = os.stat("/proc/1/ns/net")
        out[(st.st_dev, st.st_ino)] = MACHINE
    except OSError:
        pass
    if "self" not in _machine:
        st = os.stat("/proc/self/ns/net")
        _machine["self"] = (st.st_dev, st.st_ino)
    out.setdefault(_machine["self"], MACHINE if is_initial(_machine["self"]) else GRADER)
    return out


def is_initial(ident: NsId) -> bool:
    """The kernel's initial network namespace (``init_net``), on kernels that give it a fixed
    inode number; dynamic numbers never take that value, so this is never a false match."""
    return ident[1] == INIT_NET_INO


def forbidden(ident: NsId) -> str | None:
    """Why a learner may not name this namespace, or None."""
    if is_initial(ident):
        return MACHINE
    return machine_namespaces().get(ident)


def ns_identity(fd: int) -> NsId:
    st = os.fstat(fd)
    return (st.st_dev, st.st_ino)


@dataclass(frozen=True)
class NsRef:
    """Where a network namespace is: exactly one of ``name``, ``path`` or ``pid``."""

    name: str | None = None
    path: str | None = None
    pid: int | None = None
    foreign: bool = field(default=False, compare=False)  # never the machine's own namespace

    def __post_init__(self) -> None:
        if sum(x is not None for x in (self.name, self.path, self.pid)) != 1:
            raise ValueError("NsRef needs exactly one of name, path or pid")

    @classmethod
    def of(cls, ref: "NsRef | str | int") -> "NsRef":
        """Coerce: an NsRef, a PID (int), a path (str with '/'), or a netns name (str)."""
        if isinstance(ref, NsRef):
            return ref
        if isinstance(ref, int):
            return cls(pid=ref)
        if "/" in ref:
            return cls(path=ref)
        return cls(name=ref)

    @property
    def fspath(self) -> str:
        if self.name is not None:
            return netns.path_of(self.name)
        if self.pid is not None:
            return f"/proc/{self.pid}/ns/net"
        return self.path  # type: ignore[return-value]

    def __str__(self) -> str:
        if self.name is not None:
            return f"netns {self.name}"
        if self.pid is not None:
            return f"the netns of PID {self.pid}"
        return f"netns {self.path}"

    def open(self) -> int:
        """An fd on the namespace (the caller closes it); NamespaceGone if there is none."""
        try:
            fd = os.open(self.fspath, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as e:
            if e.errno in (errno.EACCES, errno.EPERM):
                raise NamespaceDenied(f"{self} cannot be entered ({e.strerror})") from None
            if self.pid is not None and e.errno in (errno.ENOENT, errno.ESRCH):
                raise NamespaceGone(f"process {self.pid} is gone: no network namespace to probe") from None
            raise NamespaceGone(f"{self} does not exist ({e.strerror})") from None
        if not netns.is_network_namespace(fd):
            os.close(fd)
            raise NamespaceGone(f"{self} is not a network namespace (a stale file?)")
        if self.foreign:
            what = forbidden(ns_identity(fd))
            if what is not None:
                os.close(fd)
                raise MachineNamespace(f"{self} is {what}: name a namespace you created")
        return fd

    def check_foreign(self) -> None:
        """Raise ``MachineNamespace`` if this reference leads into the machine's own namespace
        now, ``NamespaceDenied`` if it cannot be entered at all. A reference that does not
        exist (yet) passes: every later use is checked again."""
        try:
            fd = self.open()
        except NamespaceDenied:
            raise
        except NamespaceGone:
            return
        os.close(fd)

    @contextlib.contextmanager
    def opened(self) -> Iterator[int]:
        fd = self.open()
        try:
            yield fd
        finally:
            os.close(fd)

    @contextlib.contextmanager
    def pinned_path(self) -> Iterator[str]:
        """A path that names exactly the namespace opened now (``/proc/<us>/fd/N``), for a
        program run with ``nsenter --net=PATH``: what was checked is what it enters."""
        with self.opened() as fd:
            yield f"/proc/{os.getpid()}/fd/{fd}"

    def exists(self) -> bool:
        try:
            os.close(self.open())
        except NamespaceGone:
            return False
        return True
