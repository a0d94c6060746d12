"""Per-namespace sysctls.

Network sysctls under /proc/sys/net resolve against the namespace of the thread that opens
them, so writing from inside ``netns.entered`` changes only that namespace.
"""
from __future__ import annotations

from cnmlab.errors import KernelError
from cnmlab.kernel import netns


def _path(key: str) -> str:
    return "/proc/sys/" + key.replace(".", "/")


def read(key: str, ns: str | None = None, *, fd: int | None = None) -> str:
    """A sysctl's value in the namespace named ``ns`` or open at ``fd`` (else this thread's)."""
    def _read() -> str:
        try:
            with open(_path(key)) as f:
                return f.read().strip()
        except OSError as e:
            raise KernelError(f"sysctl {key}: {e.strerror}") from None

    if ns is None and fd is None:
        return _read()
    with netns.entered(ns, fd=fd):
        return _read()


def write(key: str, value: str | int, ns: str | None = None) -> None:
    def _write() -> None:
        try:
            with open(_path(key), "w") as f:
                f.write(str(value))
        except OSError as e:
            raise KernelError(f"sysctl {key}={value}: {e.strerror}") from None

    if ns is None:
        _write()
    else:
        with netns.entered(ns):
            _write()


IPV6_OFF = {"net.ipv6.conf.all.disable_ipv6": 1, "net.ipv6.conf.default.disable_ipv6": 1}


def disable_ipv6(ns: str) -> None:
    """Before any link exists: no IPv6 autoconfiguration, which doubles the cost at scale."""
    write_many(IPV6_OFF, ns)


def write_many(values: dict[str, str | int], ns: str) -> None:
    with netns.entered(ns):
        for key, value in values.items():
            write(key, value)


def _in_root(fn):  # type: ignore[no-untyped-def]
    """Run ``fn`` where the initial namespace's global sysctls are visible.

    The neighbour-table limits exist only in the initial namespace. The calling thread is
    normally there; if it was moved into a lab namespace, go to the process's main one.
    """
    import os

    if os.path.exists("/proc/sys/net/ipv4/neigh/default/gc_thresh3"):
        return fn()
    fd = os.open("/proc/self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        with netns.entered(fd=fd):
            return fn()
    finally:
        os.close(fd)


def read_root(key: str) -> str:
    return _in_root(lambda: read(key))  # type: ignore[no-any-return]


def write_root(key: str, value: str | int) -> None:
    _in_root(lambda: write(key, value))
