"""The qemu command line, and whether KVM can be used.

Measured on the CI machines (2 cores, no usable KVM): ``-smp 1`` boots faster than 2 under
software emulation (TCG); ``-cpu max`` beats ``qemu64`` (4.2 s -> 2.0 s to /init); qboot, when
qemu ships it, reaches the kernel sooner than SeaBIOS. No network device at all (``-nodefaults``
and ``-nic none``): a lab's packets cannot leave the guest.
"""
from __future__ import annotations

import os
import subprocess
import threading

from cnmlab.vm import guest
from cnmlab.vm.image import Image

QBOOT = "/usr/share/qemu/qboot.rom"
KERNEL_ARGS = "console=ttyS0 quiet panic=-1"
_kvm_lock = threading.Lock()
_kvm_ok: bool | None = None


def kvm_usable(qemu: str) -> bool:
    """Try KVM for real (about 0.05 s): ``/dev/kvm`` exists on machines where it cannot run a
    stock kernel ("failed to set MSR 0x10a" on a paravirtual layer). Probed once per process."""
    global _kvm_ok
    with _kvm_lock:
        if _kvm_ok is None:
            _kvm_ok = False
            if os.access("/dev/kvm", os.R_OK | os.W_OK):
                try:
                    r = subprocess.run([qemu, "-accel", "kvm", "-cpu", "host", "-machine", "q35",
                                        "-m", "64", "-display", "none", "-nodefaults", "-S",
                                        "-monitor", "stdio"], input="quit\n",
                                       capture_output=True, text=True, timeout=10)
                    _kvm_ok = r.returncode == 0
                except (OSError, subprocess.TimeoutExpired):
                    pass
        return _kvm_ok


def command(qemu: str, image: Image, *, job: str, results: str | None, terminal: bool,
            out_fd: int, err_fd: int, kvm: bool, memory_mb: int = 1024,
            append: str = "") -> list[str]:
    """qemu's argv. ``out_fd``/``err_fd``: qemu's own descriptors the guest's stdout/stderr go to."""
    accel = ["-accel", "kvm", "-cpu", "host"] if kvm else \
        ["-accel", "tcg,thread=multi", "-cpu", "max"]
    argv = [qemu, *accel, "-machine", "q35", "-m", str(memory_mb), "-smp", "1",
            "-nodefaults", "-no-user-config", "-display", "none", "-nic", "none", "-no-reboot"]
    if os.path.exists(QBOOT):
        argv += ["-bios", QBOOT]
    argv += ["-kernel", image.kernel, "-initrd", image.initrd,
             "-append", f"{KERNEL_ARGS} {append}".strip()]
    if terminal:
        argv += ["-chardev", "stdio,id=con,signal=off"]
    else:
        argv += ["-chardev", f"file,id=con,path={_opt(job)}/console.log"]
    argv += ["-serial", "chardev:con",
             "-chardev", f"file,id=out,path=/proc/self/fd/{out_fd},append=on",
             "-serial", "chardev:out",
             "-chardev", f"file,id=err,path=/proc/self/fd/{err_fd},append=on",
             "-serial", "chardev:err"]
    shares = [(guest.ROOT_TAG, "/", True), (guest.JOB_TAG, job, False)]
    if results:
        shares.append((guest.RESULTS_TAG, results, False))
    for tag, path, readonly in shares:
        argv += ["-fsdev", f"local,id={tag},path={_opt(path)},security_model=none,multidevs=remap"
                           + (",readonly=on" if readonly else ""),
                 "-device", f"virtio-9p-pci,fsdev={tag},mount_tag={tag}"]
    return argv


def _opt(value: str) -> str:
    """A value inside a qemu option list, where a comma must be doubled."""
    return value.replace(",", ",,")
