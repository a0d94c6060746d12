"""``cnmlab vm``: a full Debian kernel under qemu for the features this machine's kernel lacks.

Many learners' kernels (WSL, cloud images, this CI) lack IPVS, ipvlan, 802.1Q or dummy links.
Debian's stock kernel has them all as modules, and boots under qemu's software emulation in a
few seconds when its root filesystem is the host's own, shared read-only over 9p. So a command
run "in the VM" sees the same files, venv and cnmlab as on the host, but a different kernel;
nothing it writes reaches the host except in the results folder it is given.

Modules, one job each: ``tools`` (host programs and their apt packages), ``image`` (fetch and
cache the kernel, never install it), ``initramfs`` (the newc archive), ``guest`` (the scripts
that run inside), ``qemu`` (the command line, KVM probe), ``boot`` (one run, start to cleanup),
``cli`` (``cnmlab vm ...``). This package sits beside the kernel layer: it uses nothing of the
engine, and the test lane (``cnmlab.checks.vmlane``) and the CLI build on it.
"""
from __future__ import annotations

from cnmlab.vm.boot import Result, VmCancelled, VmError, VmTimeout, in_vm, run

__all__ = ["Result", "VmCancelled", "VmError", "VmTimeout", "in_vm", "run"]
