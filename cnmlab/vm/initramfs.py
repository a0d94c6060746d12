"""The VM's initramfs: a static busybox, a few kernel modules and ``/init``, as a newc cpio.

Written here rather than with ``cpio``: the format is a 110-byte text header per file, and one
fewer host program means one fewer thing a learner has to install. It stays uncompressed: the
kernel would otherwise spend emulated CPU time inflating it at every boot.
"""
from __future__ import annotations

import os
import stat
from collections.abc import Iterable
from dataclasses import dataclass

#: what the guest needs to reach its root over 9p and build the overlay (dependencies are
#: added from the kernel's modules.dep)
MODULES = ("virtio_pci", "9pnet_virtio", "9p", "overlay")


@dataclass(frozen=True)
class Entry:
    name: str
    mode: int
    data: bytes = b""
    rdev: tuple[int, int] = (0, 0)


def _header(ino: int, e: Entry) -> bytes:
    name = e.name.encode() + b"\0"
    fields = [ino, e.mode, 0, 0, 2 if stat.S_ISDIR(e.mode) else 1, 0, len(e.data), 0, 0,
              e.rdev[0], e.rdev[1], len(name), 0]
    head = b"070701" + b"".join(f"{v:08x}".encode() for v in fields) + name
    return head + b"\0" * (-len(head) % 4)


def cpio(entries: Iterable[Entry]) -> bytes:
    """A newc ("070701") archive of ``entries``, as the kernel unpacks an initramfs."""
    out = bytearray()
    ino = 0
    for ino, e in enumerate(list(entries) + [Entry("TRAILER!!!", 0)], start=1):
        out += _header(ino if e.name != "TRAILER!!!" else 0, e)
        out += e.data + b"\0" * (-len(e.data) % 4)
    return bytes(out)


def module_order(moddir: str, wanted: Iterable[str]) -> list[tuple[str, str]]:
    """``(name, path)`` of ``wanted`` and their dependencies, dependencies first.

    Read from ``modules.dep`` (``kernel/fs/9p/9p.ko: kernel/net/9p/9pnet.ko ...``, each
    line's dependencies listed so that loading them right to left works).
    """
    paths: dict[str, str] = {}
    deps: dict[str, list[str]] = {}
    with open(os.path.join(moddir, "modules.dep")) as f:
        for line in f:
            mod, _, rest = line.partition(":")
            paths[_name(mod)] = mod
            deps[_name(mod)] = rest.split()
    order: list[tuple[str, str]] = []
    seen: set[str] = set()
    for name in wanted:
        if name not in paths:
            raise FileNotFoundError(f"module {name} is not in {moddir}/modules.dep")
        for path in [*reversed(deps[name]), paths[name]]:
            n = _name(path)
            if n not in seen:
                seen.add(n)
                order.append((n, os.path.join(moddir, path)))
    return order


def _name(path: str) -> str:
    base = os.path.basename(path.strip())
    return base.split(".ko")[0].replace("-", "_")


def build(busybox: str, modules: list[tuple[str, str]], init: str) -> bytes:
    entries = [Entry(d, stat.S_IFDIR | 0o755) for d in
               ("bin", "dev", "proc", "sys", "job", "lower", "upper", "newroot", "modules")]
    entries.append(Entry("dev/console", stat.S_IFCHR | 0o600, rdev=(5, 1)))
    with open(busybox, "rb") as f:
        entries.append(Entry("bin/busybox", stat.S_IFREG | 0o755, f.read()))
    for name, path in modules:
        with open(path, "rb") as f:
            entries.append(Entry(f"modules/{name}.ko", stat.S_IFREG | 0o644, f.read()))
    entries.append(Entry("init", stat.S_IFREG | 0o755, init.encode()))
    return cpio(entries)
