"""A reference to a network namespace: by netns name, by path, or by the PID of a process in it.

Checks run against sandboxes that cnmlab made (``/run/netns/NAME``), that a learner made by hand,
or that another implementation made (a Docker container found by its PID). ``open()`` turns the
reference into an fd for ``netns.entered(fd=...)``; a gone namespace is a one-line ``CnmError``,
never a hang.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import os
from collections.abc import Iterator
from dataclasses import dataclass

from cnmlab import netns
from cnmlab.errors import ObjectNotFound

NS_GET_NSTYPE = 0xB703  # ioctl on an nsfs fd: which kind of namespace it is
CLONE_NEWNET = 0x40000000


class NamespaceGone(ObjectNotFound):
    """The namespace a check was pointed at does not exist (any more)."""


@dataclass(frozen=True)
class NsRef:
    """Where a network namespace is: exactly one of ``name``, ``path`` or ``pid``."""

    name: str | None = None
    path: str | None = None
    pid: int | None = None

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
            if self.pid is not None and e.errno in (errno.ENOENT, errno.ESRCH, errno.EACCES):
                raise NamespaceGone(f"process {self.pid} is gone: no network namespace to probe") from None
            raise NamespaceGone(f"{self} does not exist ({e.strerror})") from None
        try:
            kind = fcntl.ioctl(fd, NS_GET_NSTYPE)
        except OSError:
            kind = None
        if kind != CLONE_NEWNET:
            os.close(fd)
            raise NamespaceGone(f"{self} is not a network namespace (a stale file?)")
        return fd

    @contextlib.contextmanager
    def opened(self) -> Iterator[int]:
        fd = self.open()
        try:
            yield fd
        finally:
            os.close(fd)

    def exists(self) -> bool:
        try:
            os.close(self.open())
        except NamespaceGone:
            return False
        return True
