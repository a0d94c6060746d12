"""The host programs the VM needs, each mapped to the Debian package that provides it.

A learner who lacks one gets a single line naming the program and the ``apt-get install`` that
brings it, before anything is downloaded or booted (``scripts/install.sh`` installs them all).
"""
from __future__ import annotations

import os
import shutil

from cnmlab.errors import FeatureMissing

#: program -> Debian package. The guest runs the host's own programs (its root filesystem is
#: the host's), so what the guest needs is listed here too.
PACKAGES = {
    "qemu-system-x86_64": "qemu-system-x86",   # the emulator
    "dpkg-deb": "dpkg",                         # unpacks the kernel package
    "apt-get": "apt",                           # downloads it without installing it
    "apt-cache": "apt",                         # which kernel linux-image-amd64 means today
    "depmod": "kmod",                           # the modules index, built once in the cache
    "modprobe": "kmod",                         # the guest kernel's module autoloader
    "setsid": "util-linux",                     # the guest shell's controlling terminal
    "stty": "coreutils",                        # raw serial lines in the guest
    "ip": "iproute2",                           # the guest's loopback
}
BUSYBOX = "/bin/busybox"  # the static one: it is the initramfs's only program


class ToolMissing(FeatureMissing):
    """A host program (or the static busybox) the VM needs is not installed."""


def package_for(program: str) -> str:
    return PACKAGES.get(program, program)


def need(*programs: str) -> dict[str, str]:
    """Full paths of ``programs``; a ``ToolMissing`` naming the apt package if one is absent."""
    found = {}
    for prog in programs:
        # PATH, plus the sbin folders a non-root PATH lacks (depmod, modprobe live there)
        path = shutil.which(prog, path=os.environ.get("PATH", "/usr/bin:/bin") +
                            ":/usr/sbin:/sbin")
        if path is None:
            raise ToolMissing(f"cnmlab vm needs {prog}: install it with "
                              f"'apt-get install --no-install-recommends {package_for(prog)}'")
        found[prog] = path
    return found


def is_static_elf(path: str) -> bool:
    """True when ``path`` is an ELF executable without a program interpreter (PT_INTERP).

    Debian's dynamic ``busybox`` package also installs /bin/busybox; inside the initramfs,
    where no libc exists, only ``busybox-static``'s build can run.
    """
    try:
        with open(path, "rb") as f:
            head = f.read(64)
            if head[:4] != b"\x7fELF" or head[4] != 2:  # 64-bit only: this is x86_64
                return False
            phoff = int.from_bytes(head[32:40], "little")
            phentsize = int.from_bytes(head[54:56], "little")
            phnum = int.from_bytes(head[56:58], "little")
            f.seek(phoff)
            table = f.read(phentsize * phnum)
    except OSError:
        return False
    for i in range(phnum):
        if int.from_bytes(table[i * phentsize:i * phentsize + 4], "little") == 3:  # PT_INTERP
            return False
    return True


def static_busybox() -> str:
    if not is_static_elf(BUSYBOX):
        raise ToolMissing(f"cnmlab vm needs a static {BUSYBOX} for its initramfs: install it "
                          f"with 'apt-get install --no-install-recommends busybox-static'")
    return BUSYBOX
