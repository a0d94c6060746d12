"""What runs inside the VM: the initramfs's ``/init`` and the per-run job script.

The guest's root filesystem is the host's own ``/``, shared read-only over 9p, under an
overlayfs whose upper layer is a tmpfs: every program of the host (Python, the venv, cnmlab,
iproute2) is there, and whatever the guest writes vanishes with it. Two more 9p shares are
writable: the *job* folder (this run's scripts and its exit code; a private temporary folder of
the host) and, when asked, a *results* folder at the same path as on the host. The qemu side
refuses writes to the root share (``readonly=on``), so the guest cannot reach the host's files
even if it remounted the share read-write.

``/init`` (busybox, in the initramfs) loads the few modules needed to reach the shares, builds
that root, and ``switch_root``s into it, so the host's ``/bin/sh`` becomes PID 1 and runs the
job script. ``switch_root`` rather than ``chroot``: the kernel's module autoloader runs
``/sbin/modprobe`` in PID 1's root, which must be the one whose ``/lib/modules`` holds the
guest kernel's modules (with ``chroot`` ipvlan and IPVS fail with "Unknown device type").

Serial lines: ttyS0 is the kernel console (a log file in batch mode; the terminal in terminal
mode); in batch mode ttyS1 and ttyS2 carry the command's stdout and stderr, through pipes so the
command sees pipes (not a terminal) as it would under ``subprocess``.
"""
from __future__ import annotations

import re
import shlex
from collections.abc import Mapping, Sequence

#: 9p mount options. ``cache=loose`` on the read-only root: nothing else writes through it, and
#: every stat(2) of a Python import would otherwise cost a round trip to the host.
P9 = "trans=virtio,version=9p2000.L,msize=262144"
ROOT_TAG, JOB_TAG, RESULTS_TAG = "hostroot", "job", "results"
ENV_FILE, SCRIPT, RC_FILE = "vm.env", "run.sh", "rc"
HOSTNAME = "cnmlab-vm"
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def init_script(modules: Sequence[str]) -> str:
    """The initramfs's ``/init``; ``modules`` in load order (dependencies first)."""
    insmods = "\n".join(f"$bb insmod /modules/{m}.ko || fail 'load module {m}'"
                        for m in modules)
    return f"""#!/bin/busybox sh
# PID 1 of the cnmlab VM inside its initramfs (cnmlab/vm/guest.py): reach the host's shares,
# build the guest's root (host / read-only + tmpfs overlay), switch_root into the job script.
bb=/bin/busybox
fail() {{ echo "cnmlab-vm: init: $1 failed"; echo o > /proc/sysrq-trigger; $bb sleep 30; }}
$bb mount -t proc proc /proc
$bb mount -t devtmpfs dev /dev
{insmods}
$bb mount -t 9p -o {P9},cache=none {JOB_TAG} /job || fail 'mount the job folder'
. /job/{ENV_FILE}
$bb mount -t 9p -o {P9},ro,cache=loose {ROOT_TAG} /lower || fail 'mount the host root'
$bb mount -t tmpfs -o mode=0755 upper /upper
$bb mkdir /upper/data /upper/work
$bb mount -t overlay -o lowerdir=/lower,upperdir=/upper/data,workdir=/upper/work overlay \\
    /newroot || fail 'mount the overlay'
$bb mount --move /proc /newroot/proc
$bb mount --move /dev /newroot/dev
$bb mount -t sysfs sysfs /newroot/sys
$bb mkdir -p /newroot/dev/pts /newroot/dev/shm
$bb mount -t devpts -o gid=5,mode=620,ptmxmode=666 devpts /newroot/dev/pts
$bb mount -t tmpfs -o mode=1777 shm /newroot/dev/shm
$bb mount -t tmpfs -o mode=0755 run /newroot/run
# the host's per-namespace /etc files belong to its live namespaces, not to the guest's
$bb mkdir -p /newroot/etc/netns
$bb mount -t tmpfs -o mode=0755 netns /newroot/etc/netns
$bb mkdir -p "/newroot/lib/modules/$KVER"
$bb mount --bind "/newroot$MODULES" "/newroot/lib/modules/$KVER" || fail 'show the modules'
$bb mkdir -p "/newroot$JOB"
$bb mount --move /job "/newroot$JOB"
if [ -n "$RESULTS" ]; then
    $bb mkdir -p "/newroot$RESULTS"
    $bb mount -t 9p -o {P9},cache=none {RESULTS_TAG} "/newroot$RESULTS" \\
        || fail 'mount the results folder'
fi
exec $bb switch_root /newroot /bin/sh "$JOB/{SCRIPT}"
"""


def env_file(*, job: str, results: str | None, modules: str, kver: str) -> str:
    """Shell assignments ``/init`` sources from the job folder: where things are."""
    values = {"JOB": job, "RESULTS": results or "", "MODULES": modules, "KVER": kver}
    return "".join(f"{k}={shlex.quote(v)}\n" for k, v in values.items())


def job_script(argv: Sequence[str], *, job: str, cwd: str, env: Mapping[str, str],
               terminal: bool, rows: int = 24, cols: int = 80) -> str:
    """The guest's PID 1 after ``switch_root``: run ``argv``, write its exit code, power off.

    Batch mode: stdin is /dev/null, stdout and stderr are pipes drained to ttyS1/ttyS2 (raw,
    so no CR is added). Terminal mode: the command gets ttyS0 as its controlling terminal.
    The exit code goes to the job folder before anything that could hang; ``poweroff -f``
    then stops the machine at once (qemu exits).
    """
    exports = "".join(f"export {k}={shlex.quote(v)}\n" for k, v in sorted(env.items())
                      if _ENV_NAME.match(k))
    cmd = " ".join(shlex.quote(a) for a in argv)
    rc = shlex.quote(f"{job}/{RC_FILE}")
    if terminal:
        body = f"""stty -F /dev/ttyS0 sane rows {int(rows)} cols {int(cols)}
setsid -w -c {cmd} <>/dev/ttyS0 >&0 2>&0
echo $? > {rc}
stty -F /dev/ttyS0 sane
"""
    else:
        body = f"""stty -F /dev/ttyS1 raw -echo
stty -F /dev/ttyS2 raw -echo
mkfifo /run/cnmlab-vm.out /run/cnmlab-vm.err
cat /run/cnmlab-vm.out > /dev/ttyS1 & out=$!
cat /run/cnmlab-vm.err > /dev/ttyS2 & err=$!
{cmd} </dev/null >/run/cnmlab-vm.out 2>/run/cnmlab-vm.err
echo $? > {rc}
# a daemon the command left behind may hold the pipes open: do not wait for it for long
(sleep 3; kill $out $err) 2>/dev/null &
wait $out $err
# tcsetattr(TCSADRAIN): returns once the serial lines have sent everything
stty -F /dev/ttyS1 raw
stty -F /dev/ttyS2 raw
"""
    return f"""# cnmlab VM job (cnmlab/vm/guest.py): PID 1 of the guest after switch_root
umask 022
echo {HOSTNAME} > /proc/sys/kernel/hostname
ip link set lo up 2>/dev/null
# as on a Docker host (dockerd loads it): bridged traffic traverses iptables (icc=false...)
modprobe -q br_netfilter 2>/dev/null
{exports}cd {shlex.quote(cwd)} 2>/dev/null || cd /
{body}echo 0 > /proc/sys/kernel/printk
exec /bin/busybox poweroff -f
"""
