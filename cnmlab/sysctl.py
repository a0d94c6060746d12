"""Per-namespace sysctls.

Network sysctls under /proc/sys/net resolve against the namespace of the thread that opens
them, so writing from inside ``netns.entered`` changes only that namespace.
"""
from __future__ import annotations

from cnmlab import netns
from cnmlab.errors import KernelError


def _path(key: str) -> str:
    return "/proc/sys/" + key.replace(".", "/")


def read(key: str, ns: str | None = None) -> str:
    if ns is None:
        with open(_path(key)) as f:
            return f.read().strip()
    with netns.entered(ns):
        with open(_path(key)) as f:
            return f.read().strip()


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


def write_many(values: dict[str, str | int], ns: str) -> None:
    with netns.entered(ns):
        for key, value in values.items():
            write(key, value)
