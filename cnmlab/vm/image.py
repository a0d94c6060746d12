"""Debian's stock kernel for the VM, fetched and unpacked into a cache, never installed.

Installing ``linux-image-amd64`` on a learner's machine would touch its bootloader, so the
package that ``linux-image-amd64`` depends on today is fetched with ``apt-get download`` and
unpacked with ``dpkg-deb -x`` into ``/var/cache/cnmlab/vm/<package>_<version>/``. There, once
per kernel version:

* ``lib/modules/<kver>`` is pruned of what a network lab never loads (GPU, sound, media,
  wireless...: 400 MB -> about 100 MB) and indexed with ``depmod`` (the package ships no
  ``modules.dep``; its postinst would make it). The guest sees it at ``/lib/modules/<kver>``.
* the compressed ``vmlinuz`` is inflated to an ELF ``vmlinux``: qemu boots that directly through
  its PVH entry point, which skips the kernel's self-decompression. Under software emulation
  that decompression took longer than the rest of the boot (about 4.7 s -> 2.2 s to /init).
* the initramfs is built (``initramfs.py``), once per version of cnmlab's ``/init``.

The cache is keyed by the package's name and version, so a new kernel in Debian's archive is
fetched on the next run after ``apt-get update``; asking apt costs a second or two, so it is
asked only when its package lists changed since the last answer.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import lzma
import os
import re
import shutil
import subprocess
import tempfile
import time
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from cnmlab.errors import CnmError
from cnmlab.vm import guest, initramfs, tools

META_PACKAGE = "linux-image-amd64"
APT_LISTS = "/var/lib/apt/lists"
#: module trees a container-networking lab never needs; pruned to save the learner's disk
PRUNE = ("kernel/sound", "kernel/drivers/gpu", "kernel/drivers/media",
         "kernel/drivers/infiniband", "kernel/drivers/staging", "kernel/drivers/iio",
         "kernel/drivers/usb", "kernel/drivers/scsi", "kernel/drivers/hid",
         "kernel/drivers/input", "kernel/drivers/hwmon", "kernel/drivers/video",
         "kernel/drivers/bluetooth", "kernel/drivers/net/wireless",
         "kernel/drivers/net/ethernet", "kernel/drivers/net/usb", "kernel/drivers/net/can",
         "kernel/drivers/net/wwan", "kernel/drivers/isdn", "kernel/drivers/nfc",
         "kernel/net/mac80211", "kernel/net/wireless", "kernel/net/bluetooth")


class ImageError(CnmError):
    """The kernel could not be fetched or prepared; the message says what to do."""


@dataclass(frozen=True)
class Image:
    """A prepared kernel: what qemu boots and what the guest mounts."""
    dir: str
    package: str
    version: str
    kver: str
    kernel: str    # vmlinux (PVH) or, when it could not be inflated, vmlinuz
    initrd: str
    modules: str   # .../lib/modules/<kver>, shown in the guest at /lib/modules/<kver>

    @classmethod
    def load(cls, d: str) -> "Image":
        """The image in ``d``, with an initramfs for *this* cnmlab's ``/init``.

        The init script is code of cnmlab, not of the kernel: an initramfs is kept per script
        (``initrd-<digest>.cpio``), so a newer cnmlab never boots an older init, and two
        versions sharing the cache (two worktrees) do not rebuild each other's.
        """
        with open(os.path.join(d, "image.json")) as f:
            meta = json.load(f)
        moddir = os.path.join(d, "lib", "modules", meta["kver"])
        order = initramfs.module_order(moddir, initramfs.MODULES)
        init = guest.init_script([n for n, _ in order])
        digest = hashlib.sha256(init.encode()).hexdigest()[:16]
        initrd = os.path.join(d, f"initrd-{digest}.cpio")
        if not os.path.exists(initrd):
            tmp = f"{initrd}.{os.getpid()}.tmp"
            with open(tmp, "wb") as f:
                f.write(initramfs.build(tools.static_busybox(), order, init))
            os.replace(tmp, initrd)
            for old in os.listdir(d):  # other versions' initramfs, unused for a day
                p = os.path.join(d, old)
                if old.startswith("initrd-") and p != initrd and \
                        time.time() - os.path.getmtime(p) > 86400:
                    os.unlink(p)
        return cls(dir=d, package=meta["package"], version=meta["version"], kver=meta["kver"],
                   kernel=os.path.join(d, meta["kernel"]), initrd=initrd, modules=moddir)


def cache_root() -> str:
    """``$CNMLAB_VM_CACHE``, else /var/cache/cnmlab/vm as root, else the user's cache."""
    if os.environ.get("CNMLAB_VM_CACHE"):
        return os.environ["CNMLAB_VM_CACHE"]
    if os.geteuid() == 0:
        return "/var/cache/cnmlab/vm"
    base = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    return os.path.join(base, "cnmlab", "vm")


def _apt_stamp() -> int:
    try:
        return os.stat(APT_LISTS).st_mtime_ns
    except OSError:
        return 0


def wanted_package() -> tuple[str, str]:
    """``(package, version)`` of the kernel ``linux-image-amd64`` depends on, per apt."""
    apt = tools.need("apt-cache")["apt-cache"]
    r = subprocess.run([apt, "show", "--no-all-versions", META_PACKAGE], capture_output=True,
                       text=True, timeout=120)
    m = re.search(r"^Depends:.*?\b(linux-image-[0-9][^\s,(]*)\s*\(=\s*([^)\s]+)\)", r.stdout,
                  re.M)
    if r.returncode != 0 or not m:
        why = (r.stderr.strip().splitlines() or ["no Depends line"])[-1]
        raise ImageError(f"cannot tell which kernel {META_PACKAGE} means ({why}): "
                         f"run 'apt-get update' (Debian's main archive must be in apt's sources)")
    return m.group(1), m.group(2)


@contextmanager
def _locked(root: str) -> Iterator[None]:
    """One builder at a time: two test workers may want the image at the same moment."""
    os.makedirs(root, exist_ok=True)
    with open(os.path.join(root, ".lock"), "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


def _complete(d: str) -> bool:
    return os.path.exists(os.path.join(d, "image.json"))


def ensure(rebuild: bool = False, *, progress: "Progress | None" = None) -> Image:
    """The current kernel image, fetched and prepared first if needed.

    ``rebuild`` forces a fresh download and build. Offline (apt cannot answer) with an image in
    the cache, that image is used.
    """
    root = cache_root()
    with _locked(root):
        current = os.path.join(root, "current.json")
        try:
            with open(current) as f:
                cur = json.load(f)
        except (OSError, ValueError):
            cur = {}
        stamp = _apt_stamp()
        cur_dir = os.path.join(root, cur.get("dir", "-"))
        if not rebuild and cur.get("apt_stamp") == stamp and _complete(cur_dir):
            return Image.load(cur_dir)
        try:
            package, version = wanted_package()
        except ImageError:
            if not rebuild and _complete(cur_dir):
                return Image.load(cur_dir)
            raise
        name = f"{package}_{version}"
        d = os.path.join(root, name)
        if rebuild or not _complete(d):
            _build(root, d, package, version, progress)
        with open(current + ".tmp", "w") as f:
            json.dump({"dir": name, "apt_stamp": stamp}, f)
        os.replace(current + ".tmp", current)
        for old in os.listdir(root):  # an older kernel's image is dead weight
            if old != name and not old.startswith(".") and os.path.isdir(os.path.join(root, old)):
                shutil.rmtree(os.path.join(root, old), ignore_errors=True)
        return Image.load(d)


class Progress:
    """Where ``ensure`` reports its (rare, slow) steps; the CLI prints them to stderr."""

    def step(self, text: str) -> None:  # pragma: no cover - overridden
        pass


def _build(root: str, final: str, package: str, version: str,
           progress: Progress | None) -> None:
    t = tools.need("apt-get", "dpkg-deb", "depmod")
    tools.static_busybox()  # before a long download, not after
    say = progress.step if progress else (lambda text: None)
    work = tempfile.mkdtemp(prefix=".build-", dir=root)
    try:
        say(f"fetching {package} {version} (apt-get download)")
        r = subprocess.run([t["apt-get"], "download", f"{package}={version}"], cwd=work,
                           capture_output=True, text=True, timeout=1800)
        debs = [f for f in os.listdir(work) if f.endswith(".deb")]
        if r.returncode != 0 or not debs:
            why = ([l for l in r.stderr.splitlines() if l.startswith("E:")] or
                   r.stderr.strip().splitlines() or ["no .deb"])[-1]
            raise ImageError(f"cannot download {package} {version}: {why}")
        deb = os.path.join(work, debs[0])
        tree = os.path.join(work, "tree")
        say(f"unpacking {debs[0]} (dpkg-deb -x)")
        r = subprocess.run([t["dpkg-deb"], "-x", deb, tree], capture_output=True, text=True,
                           timeout=600)
        if r.returncode != 0:
            raise ImageError(f"cannot unpack {debs[0]}: {r.stderr.strip()[-200:]}")
        os.unlink(deb)
        kvers = os.listdir(os.path.join(tree, "lib", "modules"))
        if len(kvers) != 1:
            raise ImageError(f"{package}: expected one kernel in lib/modules, found {kvers}")
        kver = kvers[0]
        moddir = os.path.join(tree, "lib", "modules", kver)
        for sub in PRUNE:
            shutil.rmtree(os.path.join(moddir, sub), ignore_errors=True)
        say(f"indexing the modules of {kver} (depmod)")
        r = subprocess.run([t["depmod"], "-b", tree, kver], capture_output=True, text=True,
                           timeout=600)
        if r.returncode != 0:
            raise ImageError(f"depmod failed for {kver}: {r.stderr.strip()[-200:]}")
        vmlinuz = os.path.join(tree, "boot", f"vmlinuz-{kver}")
        kernel = f"boot/vmlinuz-{kver}"
        if _pvh_capable(os.path.join(tree, "boot", f"config-{kver}")):
            say("inflating the kernel for a direct (PVH) boot")
            elf = inflate(vmlinuz)
            if elf is not None:
                with open(os.path.join(tree, "vmlinux"), "wb") as f:
                    f.write(elf)
                kernel = "vmlinux"
        initramfs.module_order(moddir, initramfs.MODULES)  # all there? (built by Image.load)
        with open(os.path.join(tree, "image.json"), "w") as f:
            json.dump({"package": package, "version": version, "kver": kver, "kernel": kernel,
                       "built": time.strftime("%Y-%m-%dT%H:%M:%S")}, f, indent=1)
        if os.path.exists(final):
            old = final + f".old-{os.getpid()}"
            os.replace(final, old)
            shutil.rmtree(old, ignore_errors=True)
        os.replace(tree, final)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _pvh_capable(config: str) -> bool:
    try:
        with open(config) as f:
            return any(line.strip() == "CONFIG_PVH=y" for line in f)
    except OSError:
        return False


def inflate(vmlinuz: str) -> bytes | None:
    """The ELF kernel inside a bzImage, or None if its compression is not one we can undo.

    The x86 boot protocol (2.08+) records where the compressed payload sits: ``setup_sects``
    at 0x1f1, ``payload_offset``/``payload_length`` at 0x248/0x24c, relative to the start of
    the protected-mode code at ``(setup_sects + 1) * 512``.
    """
    with open(vmlinuz, "rb") as f:
        data = f.read()
    if len(data) < 0x250 or data[0x202:0x206] != b"HdrS":
        return None
    setup = (data[0x1f1] or 4) + 1
    off = int.from_bytes(data[0x248:0x24c], "little") + setup * 512
    length = int.from_bytes(data[0x24c:0x250], "little")
    payload = data[off:off + length]
    try:
        if payload[:6] == b"\xfd7zXZ\x00":
            out = lzma.LZMADecompressor().decompress(payload)
        elif payload[:2] == b"\x1f\x8b":
            out = zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(payload)
        else:
            return None  # zstd, lz4, lzo...: not in the standard library; boot the bzImage
    except (lzma.LZMAError, zlib.error):
        return None
    return out if out[:4] == b"\x7fELF" else None
