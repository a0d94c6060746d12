"""Real Docker (Debian's docker.io 20.10) run inside a network namespace, as a reference.

The conformance checks hold cnmlab's labs against the real thing. ``DockerDaemon`` starts a
private dockerd whose "host" is a network namespace the caller made with ``cnmlab.kernel.netns``:

* ``nsenter --net=/run/netns/NAME`` (not ``ip netns exec``, which remounts /sys and hides the
  cgroup mount), then ``unshare --mount --propagation private``: every mount dockerd makes (the
  containers' namespace bind mounts, shm, ...) stays in that private mount namespace and goes
  away with its last process.
* In there a launcher script mounts a fresh sysfs (the namespace's own view), makes the
  daemon's cgroup v2 subtree ``cnmlab-dockerd-NAME`` (``daemon/`` for the processes, ``ctr/``
  for the containers) and enters a cgroup namespace rooted there: runc enables controllers in
  every ancestor's ``cgroup.subtree_control``, and rooted there it cannot touch the real root.
* Then a small Python supervisor (stage 2, stdlib only) mounts cgroup v2 at /sys/fs/cgroup (the
  hybrid default makes dockerd fail "Devices cgroup isn't mounted") and tmpfs over /run and
  /etc/docker, so containerd's shim sockets, runc state, libnetwork's sockets, iptables' lock
  and dockerd's key file land in throwaway memory (and the D-Bus socket of firewalld and any
  system containerd socket are hidden). It brings ``lo`` up, starts containerd (config, root,
  state and socket under the workdir, CRI and the ``opt`` plugin disabled) and dockerd with its
  own ``--data-root``, ``--exec-root``, ``--pidfile``, ``--config-file``,
  ``-H unix://WORKDIR/docker.sock``, ``--storage-driver vfs`` and ``--cgroup-parent``. As a
  child subreaper it reaps the shims and containers they orphan; on SIGTERM it kills the
  containers, stops dockerd and containerd and kills the rest. iptables rules land in the host
  namespace, not in the root one.
* ``cleanup_workdir`` (what ``stop()`` and ``cnmlab clean`` use) needs only the workdir: it
  signals the supervisor, then writes ``cgroup.kill`` on the daemon's cgroup and kills what is
  left in the host namespace, so nothing keeps running even if the supervisor was SIGKILLed.

Images cannot be pulled here: ``cnmlab/busybox`` is imported from a folder holding Debian's
busybox-static and its applet links (the tarball is cached).
"""
from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

from cnmlab.constants import DOCKERD_DIR, UPSTREAM_DNS
from cnmlab.errors import CnmError, FeatureMissing, InvalidInput, NotRootError, ObjectExists
from cnmlab.kernel import netns, procs, rundir

DOCKERD = "/usr/sbin/dockerd"
CONTAINERD = "/usr/bin/containerd"
# Debian's 20.10 CLI: a newer client may be first on PATH (/usr/local/bin/docker).
DOCKER_CLI = "/usr/bin/docker"
BUSYBOX = "/bin/busybox"
IMAGE = "cnmlab/busybox"
STATE_FILE = "cnmlab-dockerd.json"
# Where ``cnmlab conform`` keeps its daemons' workdirs (not under /run: the daemon gets a
# tmpfs there) and the busybox image it builds once; ``clean_all`` sweeps this folder. /tmp is
# world-writable: the folder is root's alone (0700), checked before every use (``rundir``).
DAEMONS_DIR = DOCKERD_DIR
IMAGE_CACHE = os.path.join(DAEMONS_DIR, "cache")
CGROUP_PREFIX = "cnmlab-dockerd-"
SOCKET_PATH_MAX = 100  # sun_path is 108 bytes; containerd appends ".ttrpc"

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
MNT_DETACH = 2


def missing_tools() -> list[str]:
    """Executables this module needs and the machine lacks (empty when real Docker can run)."""
    tools = [DOCKERD, CONTAINERD, DOCKER_CLI, BUSYBOX, "/usr/sbin/runc"]
    missing = [t for t in tools if not os.access(t, os.X_OK)]
    for name in ("nsenter", "unshare", "mount", "iptables"):
        if shutil.which(name) is None:
            missing.append(name)
    return missing


def require_tools(what: str = "cannot run real Docker: missing") -> None:
    """One line naming what is missing and the packages that bring it (FeatureMissing)."""
    missing = missing_tools()
    if missing:
        raise FeatureMissing(f"{what} {', '.join(missing)} "
                             "(apt-get install docker.io busybox-static)")


def _clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DOCKER_")}
    path = env.get("PATH", "")
    for d in ("/usr/local/sbin", "/usr/sbin", "/sbin", "/usr/bin", "/bin"):
        if d not in path.split(":"):
            path = f"{path}:{d}" if path else d
    env["PATH"] = path
    return env


def _tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.strip().splitlines()[-lines:])


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def _cgroup2_root() -> str | None:
    """Where the unified (v2) hierarchy is mounted in our mount namespace, if anywhere."""
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            if right.split()[0] == "cgroup2" and left.split()[3] == "/":
                return left.split()[4]
    return None


@contextlib.contextmanager
def _cgroup2_mounted():
    root = _cgroup2_root()
    if root is not None:
        yield root
        return
    tmp = tempfile.mkdtemp(prefix="cnmlab-cg2-")
    try:
        if subprocess.run(["mount", "-t", "cgroup2", "cgroup2", tmp],
                          capture_output=True).returncode != 0:
            yield None
            return
        try:
            yield tmp
        finally:
            _libc.umount2(tmp.encode(), MNT_DETACH)
    finally:
        with contextlib.suppress(OSError):
            os.rmdir(tmp)


def _cgroup_pids(path: str) -> list[int]:
    pids = []
    for dirpath, _dirs, files in os.walk(path):
        if "cgroup.procs" in files:
            try:
                with open(os.path.join(dirpath, "cgroup.procs")) as f:
                    pids += [int(x) for x in f.read().split()]
            except OSError:
                pass
    return pids


def _kill_cgroup(cgroup: str, timeout: float = 10.0) -> None:
    """Kill every process in a cgroup v2 subtree, wait for them to go, remove the subtree."""
    with _cgroup2_mounted() as root:
        if root is None:
            return
        path = os.path.join(root, cgroup)
        if not os.path.isdir(path):
            return
        deadline = time.monotonic() + timeout
        while True:
            pids = _cgroup_pids(path)
            if not pids:
                break
            try:
                with open(os.path.join(path, "cgroup.kill"), "w") as f:
                    f.write("1")
            except OSError:
                for pid in pids:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
            if time.monotonic() > deadline:
                raise CnmError(f"processes {pids} in cgroup {cgroup} did not die")
            time.sleep(0.05)
        for dirpath, _dirs, _files in sorted(os.walk(path), key=lambda w: -len(w[0])):
            for _ in range(50):
                try:
                    os.rmdir(dirpath)
                    break
                except FileNotFoundError:
                    break
                except OSError:  # EBUSY while the last exits are accounted
                    time.sleep(0.02)


def _terminate(pid: int, start: int, timeout: float) -> None:
    """SIGTERM, then SIGKILL, a process known by its PID and start time (never a PID reuse)."""
    if not procs.signal_if_same(pid, start, signal.SIGTERM):
        return
    deadline = time.monotonic() + timeout
    while procs.same_process(pid, start) and time.monotonic() < deadline:
        time.sleep(0.05)
    if procs.signal_if_same(pid, start, signal.SIGKILL):
        deadline = time.monotonic() + 5
        while procs.same_process(pid, start) and time.monotonic() < deadline:
            time.sleep(0.02)


def _mounts_under(path: str) -> list[str]:
    prefix = path.rstrip("/") + "/"
    found = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            point = line.split()[4].replace("\\040", " ")
            if point == path or point.startswith(prefix):
                found.append(point)
    return found


def cleanup_workdir(workdir: str | os.PathLike, *, remove: bool = True,
                    keep: Iterable[str] = ()) -> bool:
    """Emergency cleanup of a daemon given only its workdir (``cnmlab clean`` calls this).

    Stops dockerd (SIGTERM, then SIGKILL) and containerd, kills everything left in the daemon's
    cgroup (shims, docker-proxy, containers) and in its host network namespace, unmounts what
    is mounted under the workdir and, with ``remove``, deletes it (except the names in
    ``keep``). Idempotent; returns whether there was anything to clean.
    """
    workdir = Path(workdir).absolute()
    try:
        state = json.loads((workdir / STATE_FILE).read_text())
    except (OSError, ValueError):
        state = {}
    if not isinstance(state, dict):
        state = {}
    found = bool(state)
    supervisor = _recorded(state, "pid", workdir)
    if supervisor:
        found = True
        _terminate(*supervisor, timeout=40)  # it stops containers, dockerd, containerd, shims
    for key, pidfile, timeout in (("dockerd", "docker.pid", 15),
                                  ("containerd", "containerd.pid", 5)):
        # in case the supervisor was killed with SIGKILL
        proc = _recorded(state, key, workdir) or _from_pidfile(workdir / pidfile, workdir)
        if proc:
            found = True
            _terminate(*proc, timeout=timeout)
    if state.get("cgroup"):
        _kill_cgroup(state["cgroup"])
    ns = state.get("netns")
    if ns:
        left = netns.pids_in(ns)
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 5
        while left and time.monotonic() < deadline:
            left = [p for p in left if _alive(p)]
            time.sleep(0.02)
    for point in sorted(_mounts_under(str(workdir)), key=len, reverse=True):
        found = True
        _libc.umount2(point.encode(), MNT_DETACH)
    if remove and workdir.exists():
        keep = set(keep)
        for child in workdir.iterdir():
            if child.name in keep:
                continue
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child, ignore_errors=True)
            else:
                child.unlink(missing_ok=True)
        if not keep:
            with contextlib.suppress(OSError):
                workdir.rmdir()
    return found


def clean_all() -> list[str]:
    """Stop every daemon cnmlab started under ``DAEMONS_DIR`` (``cnmlab clean``)."""
    cleaned = []
    if not os.path.lexists(DAEMONS_DIR):
        return cleaned
    rundir.check_private(DAEMONS_DIR)  # never act on workdirs someone else could have made
    entries = sorted(os.listdir(DAEMONS_DIR))
    for entry in entries:
        workdir = os.path.join(DAEMONS_DIR, entry)
        if not os.path.isfile(os.path.join(workdir, STATE_FILE)) or _in_use_elsewhere(workdir):
            continue
        if cleanup_workdir(workdir):
            cleaned.append(f"dockerd {entry}")
    return cleaned


def _in_use_elsewhere(workdir: str) -> bool:
    """Whether another live process (a running 'cnmlab conform', a test session) owns the daemon.

    Only a daemon whose owner is gone is a leftover; stopping a live one would break another
    command's run in the middle (two suites on one machine did see that).
    """
    try:
        state = json.loads(Path(workdir, STATE_FILE).read_text())
        owner, start = state["owner"], state["owner_start"]
    except (OSError, ValueError, KeyError, TypeError):
        return False  # written before owners were recorded, or unreadable: a leftover
    return owner != os.getpid() and procs.same_process(owner, start)


def _private(path: Path) -> None:
    """Make ``path`` a private folder (see ``rundir``); under ``DAEMONS_DIR`` that one too."""
    if path.parent == Path(DAEMONS_DIR):
        rundir.private_dir(DAEMONS_DIR)
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
    rundir.private_dir(str(path))


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _recorded(state: dict, key: str, workdir: Path) -> tuple[int, int] | None:
    """(pid, start time) of a process recorded in the state file, if it still is that process.

    A PID alone may have been reused by now; with its start time it names one process only.
    """
    pid, start = state.get(key), state.get(f"{key}_start")
    if isinstance(start, str) and start.isdigit():  # written as text by older versions
        start = int(start)
    if procs.same_process(pid, start) and str(workdir) in _cmdline(pid):
        return pid, start
    return None


def _from_pidfile(path: Path, workdir: Path) -> tuple[int, int] | None:
    """A daemon's pidfile, when the state file never got its start time (killed early).

    Trusted only if the process runs from this workdir and started before the pidfile was
    written (a reused PID belongs to a process started later).
    """
    pid = _read_pid(path)
    if not pid:
        return None
    start = procs.start_time(pid)
    try:
        written = path.stat().st_mtime
    except OSError:
        return None
    if start is None or str(workdir) not in _cmdline(pid):
        return None
    if procs.started_at(start) > written + 1:  # btime has a one-second resolution
        return None
    return pid, start


_LAUNCHER = r"""#!/bin/sh
# Stage 1: inside the host network namespace, in a fresh private mount namespace.
set -e
mount -t sysfs sysfs /sys
mount -t cgroup2 cgroup2 /sys/fs/cgroup
mkdir -p /sys/fs/cgroup/{cgroup}/daemon /sys/fs/cgroup/{cgroup}/ctr
echo $$ > /sys/fs/cgroup/{cgroup}/cgroup.procs
umount /sys/fs/cgroup
# A cgroup namespace rooted at {cgroup}: runc enables controllers in every ancestor's
# cgroup.subtree_control of a container's cgroup; rooted here, it cannot touch the real root.
exec unshare --cgroup -- {python} -I -S {workdir}/supervisor.py {workdir}/supervisor.json
"""

_SUPERVISOR = r"""
# Stage 2 (cnmlab): in the cgroup namespace rooted at the daemon's cgroup. Starts containerd
# and dockerd, and as a child subreaper reaps everything they orphan (shims, containers), so
# nothing is left as a zombie of the machine's init. SIGTERM: kill the containers, stop
# dockerd, then containerd, then whatever is left (shims, docker-proxy), reap all, exit.
import ctypes, json, os, signal, stat, subprocess, sys, time

cfg = json.load(open(sys.argv[1]))
ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
SIGS = {signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD}
signal.pthread_sigmask(signal.SIG_BLOCK, SIGS)
exited = {}


def unblock():
    signal.pthread_sigmask(signal.SIG_UNBLOCK, SIGS)


def say(msg):
    print("cnmlab-supervisor: " + msg, file=sys.stderr, flush=True)


def reap():
    # Collect every exited child; False once there are no children left at all.
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return False
        if pid == 0:
            return True
        exited[pid] = status


def wait_gone(pid, timeout):
    deadline = time.monotonic() + timeout
    while True:
        reap()
        if pid in exited or time.monotonic() > deadline:
            return pid in exited
        signal.sigtimedwait(SIGS, 0.05)


def stop(pid, timeout):
    reap()
    if pid in exited:
        return
    os.kill(pid, signal.SIGTERM)
    if not wait_gone(pid, timeout):
        say(f"{pid} ignored SIGTERM for {timeout}s: SIGKILL")
        os.kill(pid, signal.SIGKILL)
        wait_gone(pid, 5)


def kill_cgroup(rel):
    try:
        with open(f"/sys/fs/cgroup/{rel}/cgroup.kill", "w") as f:
            f.write("1")
    except OSError:
        pass


def kill_rest():
    kill_cgroup("ctr")
    me = os.getpid()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with open("/sys/fs/cgroup/daemon/cgroup.procs") as f:
            pids = [int(p) for p in f.read().split() if int(p) != me]
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if not reap() and not pids:
            return
        signal.sigtimedwait(SIGS, 0.02)


def main():
    for cmd in cfg["setup"]:
        subprocess.run(cmd, check=True, preexec_fn=unblock)
    with open("/sys/fs/cgroup/daemon/cgroup.procs", "w") as f:
        f.write(str(os.getpid()))
    with open(cfg["containerd_log"], "ab") as log:
        ctd = subprocess.Popen(cfg["containerd"], stdin=subprocess.DEVNULL, stdout=log,
                               stderr=subprocess.STDOUT, preexec_fn=unblock)
    with open(cfg["containerd_pidfile"], "w") as f:
        f.write(f"{ctd.pid}\n")
    deadline = time.monotonic() + 30
    while True:
        try:
            if stat.S_ISSOCK(os.stat(cfg["containerd_socket"]).st_mode):
                break
        except FileNotFoundError:
            pass
        reap()
        if ctd.pid in exited or time.monotonic() > deadline:
            say("containerd did not start:")
            with open(cfg["containerd_log"], errors="replace") as f:
                sys.stderr.write("".join(f.readlines()[-5:]))
            kill_rest()
            return 1
        time.sleep(0.02)
    dockerd = subprocess.Popen(cfg["dockerd"], stdin=subprocess.DEVNULL, preexec_fn=unblock)
    code = 0
    while True:
        info = signal.sigtimedwait(SIGS, 1.0)
        if info is not None and info.si_signo != signal.SIGCHLD:
            break
        reap()
        if dockerd.pid in exited:
            say(f"dockerd exited (status {exited[dockerd.pid]})")
            code = 1
            break
    kill_cgroup("ctr")  # the containers first: dockerd would wait 10 s for each to stop
    stop(dockerd.pid, 15)
    stop(ctd.pid, 5)
    kill_rest()
    return code


sys.exit(main())
"""

_CONTAINERD_TOML = """version = 2
root = "{workdir}/containerd/root"
state = "{workdir}/containerd/state"
disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.internal.v1.opt",
  "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs",
  "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.aufs",
  "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]

[grpc]
  address = "{ctd_sock}"

[debug]
  level = "warn"
"""


class DockerDaemon:
    """A private dockerd whose host is the network namespace ``netns_name``.

    Use as a context manager or call ``start()``/``stop()``. ``workdir`` holds everything it
    writes (and is deleted by ``stop()``); ``cache_dir`` (default ``workdir/cache``) holds the
    busybox image tarball: point several daemons at one cache to build it once.
    """

    def __init__(self, name: str, netns_name: str, workdir: str | os.PathLike, *,
                 cache_dir: str | os.PathLike | None = None, start_timeout: float = 60.0,
                 extra_args: Sequence[str] = (), quiet: bool = False,
                 plugins_dir: str | os.PathLike | None = None):
        if not name or not all(c.isalnum() or c in "-_." for c in name):
            raise InvalidInput(f"daemon name {name!r}: use letters, digits, '-', '_', '.'")
        self.name = name
        self.netns_name = netns_name
        self.workdir = Path(workdir).absolute()
        self.cache_dir = Path(cache_dir).absolute() if cache_dir else self.workdir / "cache"
        self.start_timeout = start_timeout
        self.extra_args = list(extra_args)
        self.quiet = quiet
        # bind-mounted at /run/docker/plugins in the daemon's private mount namespace, so the
        # daemon finds plugins cnmlab serves without anything written to the machine's /run
        self.plugins_dir = Path(plugins_dir).absolute() if plugins_dir else None
        self.socket = self.workdir / "docker.sock"
        self.pidfile = self.workdir / "docker.pid"
        self.data_root = self.workdir / "data"
        self.exec_root = self.workdir / "exec"
        self.log = self.workdir / "dockerd.log"
        self.containerd_socket = self.workdir / "containerd" / "containerd.sock"
        self.cgroup = f"{CGROUP_PREFIX}{name}"
        self.host = f"unix://{self.socket}"
        self.timings: dict[str, float] = {}
        self.image_source = ""  # how start() got the image: built, cached tarball, present
        self._proc: subprocess.Popen | None = None
        self._dockerd_pid: int | None = None

    # -- lifecycle ---------------------------------------------------------------------------
    def __enter__(self) -> DockerDaemon:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def pid(self) -> int | None:
        """dockerd's pid (its parent is a small supervisor, ``supervisor_pid``)."""
        return self._dockerd_pid or _read_pid(self.pidfile)

    @property
    def supervisor_pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    @property
    def host_netns_path(self) -> str:
        return netns.path_of(self.netns_name)

    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def _dockerd_args(self) -> list[str]:
        return [
            f"--host={self.host}",
            f"--data-root={self.data_root}",
            f"--exec-root={self.exec_root}",
            f"--pidfile={self.pidfile}",
            f"--config-file={self.workdir / 'daemon.json'}",
            f"--containerd={self.containerd_socket}",
            "--containerd-namespace=moby",
            "--containerd-plugins-namespace=plugins.moby",
            "--storage-driver=vfs",
            "--exec-opt=native.cgroupdriver=cgroupfs",
            "--cgroup-parent=/ctr",  # in the cgroup namespace rooted at self.cgroup
            "--log-level=info",
            *self.extra_args,
        ]

    def _check_can_start(self) -> None:
        if os.geteuid() != 0:
            raise NotRootError("real Docker needs root")
        require_tools()
        if not netns.exists(self.netns_name):
            raise CnmError(f"network namespace {self.netns_name} does not exist")
        longest = str(self.containerd_socket) + ".ttrpc"
        if len(longest) > SOCKET_PATH_MAX:
            raise InvalidInput(f"workdir {self.workdir} is too long for unix sockets "
                               f"({len(longest)} > {SOCKET_PATH_MAX} characters)")
        if self.running():
            raise ObjectExists(f"dockerd {self.name} is already running")
        if (self.workdir / STATE_FILE).exists():
            raise ObjectExists(f"{self.workdir} holds another daemon's state "
                               "(run 'cnmlab clean' or cleanup_workdir)")
        with _cgroup2_mounted() as root:
            if root is not None and os.path.isdir(os.path.join(root, self.cgroup)):
                raise ObjectExists(f"cgroup {self.cgroup} exists: another dockerd named "
                                   f"{self.name} is running (or was not cleaned up)")

    def start(self) -> DockerDaemon:
        self._check_can_start()
        t0 = time.monotonic()
        _private(self.workdir)  # everything below is created inside a folder only root can touch
        if self.plugins_dir:
            self.plugins_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        for d in (self.workdir, self.data_root, self.exec_root, self.containerd_socket.parent,
                  self.workdir / "cli", self.workdir / "plugins"):
            d.mkdir(parents=True, exist_ok=True)
        fmt = dict(workdir=self.workdir, cgroup=self.cgroup, python=sys.executable,
                   ctd_sock=self.containerd_socket)
        (self.workdir / "containerd.toml").write_text(_CONTAINERD_TOML.format(**fmt))
        (self.workdir / "daemon.json").write_text(
            json.dumps({"deprecated-key-path": str(self.workdir / "key.json")}) + "\n")
        launcher = self.workdir / "launch.sh"
        launcher.write_text(_LAUNCHER.format(**fmt))
        (self.workdir / "supervisor.py").write_text(_SUPERVISOR)
        # The daemon copies the host's resolv.conf into containers: give it the lab's fake
        # internet DNS, so no probe ever aims at a nameserver of the real machine.
        (self.workdir / "resolv.conf").write_text(f"nameserver {UPSTREAM_DNS}\n")
        (self.workdir / "supervisor.json").write_text(json.dumps({
            "setup": [
                ["mount", "-t", "cgroup2", "cgroup2", "/sys/fs/cgroup"],
                # the plugins folder may live under /run, which the next mount hides: keep a
                # handle on it in the workdir first
                *([["mount", "--bind", str(self.plugins_dir), str(self.workdir / "plugins")]]
                  if self.plugins_dir else []),
                ["mount", "-t", "tmpfs", "-o", "mode=0755", "cnmlab-run", "/run"],
                *([["mount", "-t", "tmpfs", "-o", "mode=0755", "cnmlab-etc-docker",
                    "/etc/docker"]] if os.path.isdir("/etc/docker") else []),
                ["mount", "--bind", str(self.workdir / "resolv.conf"), "/etc/resolv.conf"],
                *([["mkdir", "-p", "/run/docker/plugins"],
                   ["mount", "--bind", str(self.workdir / "plugins"), "/run/docker/plugins"]]
                  if self.plugins_dir else []),
                ["ip", "link", "set", "lo", "up"],
            ],
            "containerd": [CONTAINERD, "--config", str(self.workdir / "containerd.toml")],
            "containerd_log": str(self.workdir / "containerd.log"),
            "containerd_pidfile": str(self.workdir / "containerd.pid"),
            "containerd_socket": str(self.containerd_socket),
            "dockerd": [DOCKERD, *self._dockerd_args()],
        }, indent=1))
        state = {"name": self.name, "netns": self.netns_name, "cgroup": self.cgroup,
                 "socket": str(self.socket),
                 # who uses it: a full 'cnmlab clean' leaves a live user's daemon alone
                 "owner": os.getpid(), "owner_start": procs.start_time(os.getpid())}
        self._write_state(state)
        with open(self.log, "ab") as log:
            self._proc = subprocess.Popen(
                ["nsenter", f"--net={netns.path_of(self.netns_name)}", "--",
                 "unshare", "--mount", "--propagation", "private", "--",
                 "/bin/sh", str(launcher)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                env=_clean_env(), start_new_session=True)
        state.update(pid=self._proc.pid, pid_start=procs.start_time(self._proc.pid))
        self._write_state(state)
        try:
            self._wait_ready()
            for key, pid in (("dockerd", self._dockerd_pid),
                             ("containerd", _read_pid(self.workdir / "containerd.pid"))):
                if pid:  # from now on cleanup knows them by PID and start time
                    state.update({key: pid, f"{key}_start": procs.start_time(pid)})
            self._write_state(state)
            t1 = time.monotonic()
            self.image_source = self.ensure_image()
        except BaseException:
            self.stop()
            raise
        t2 = time.monotonic()
        self.timings = {"daemon": t1 - t0, "image": t2 - t1, "total": t2 - t0}
        if not self.quiet:
            print(f"cnmlab: dockerd {self.name} ready in {t2 - t0:.2f}s (daemon {t1 - t0:.2f}s,"
                  f" image {t2 - t1:.2f}s, {self.image_source})", file=sys.stderr)
        return self

    def _write_state(self, state: dict) -> None:
        tmp = self.workdir / (STATE_FILE + ".tmp")
        tmp.write_text(json.dumps(state, indent=1) + "\n")
        tmp.replace(self.workdir / STATE_FILE)

    def _ping(self) -> bool:
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.settimeout(2)
                s.connect(str(self.socket))
                s.sendall(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
                data = s.recv(64)
            return data.startswith(b"HTTP/1.") and b" 200 " in data
        except OSError:
            return False

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.start_timeout
        while True:
            if self._proc.poll() is not None:
                raise CnmError(f"dockerd {self.name} exited with status {self._proc.returncode}"
                               f"; last lines of {self.log}:\n{_tail(self.log)}")
            if self._ping():
                break
            if time.monotonic() > deadline:
                raise CnmError(f"dockerd {self.name} did not answer on {self.socket} within "
                               f"{self.start_timeout:.0f}s; last lines of {self.log}:\n"
                               f"{_tail(self.log)}")
            time.sleep(0.05)
        self._dockerd_pid = _read_pid(self.pidfile)
        info = self.docker("info", "--format", "{{.ServerVersion}}", check=False, timeout=30)
        if info.returncode != 0:
            raise CnmError(f"docker info failed: {info.stderr.strip()}; last lines of "
                           f"{self.log}:\n{_tail(self.log)}")

    def stop(self, *, remove_workdir: bool = True) -> None:
        """Remove the containers, stop everything, unmount and delete the workdir. Idempotent."""
        if self.running() and self._ping():
            ids = self.docker("ps", "-aq", check=False, timeout=15).stdout.split()
            if ids:
                self.docker("rm", "-f", *ids, check=False, timeout=60)
        cleanup_workdir(self.workdir, remove=remove_workdir)
        if not remove_workdir:
            (self.workdir / STATE_FILE).unlink(missing_ok=True)
        if self._proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._proc.wait(timeout=5)
            self._proc = None

    # -- CLI helpers -------------------------------------------------------------------------
    def docker(self, *args: str, check: bool = True, timeout: float = 120,
               input: bytes | str | None = None) -> subprocess.CompletedProcess:
        """Run Debian's docker CLI against this daemon; ``check`` raises CnmError on failure."""
        env = _clean_env()
        env["DOCKER_CONFIG"] = str(self.workdir / "cli")
        cmd = [DOCKER_CLI, "-H", self.host, *args]
        try:
            cp = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout,
                                input=input)
        except subprocess.TimeoutExpired:
            raise CnmError(f"docker {' '.join(args)}: no answer within {timeout:.0f}s") from None
        if check and cp.returncode != 0:
            raise CnmError(f"docker {' '.join(args)}: "
                           f"{cp.stderr.strip().splitlines()[-1] if cp.stderr.strip() else cp.returncode}")
        return cp

    def run(self, name: str, network: str | None = None, publish: Iterable[str] = (),
            command: str | Sequence[str] = "sleep 3600", *, image: str = IMAGE,
            extra: Sequence[str] = ()) -> str:
        """``docker run -d --name NAME``; returns the container id."""
        if len(name) < 2:
            raise InvalidInput(f"container name {name!r}: Docker 20.10 needs two or more characters")
        args = ["run", "-d", "--name", name, "--hostname", name]
        if network:
            args += ["--network", network]
        for p in publish:
            args += ["-p", str(p)]
        args += [*extra, image]
        args += shlex.split(command) if isinstance(command, str) else list(command)
        return self.docker(*args).stdout.strip()

    def network_create(self, name: str, subnet: str | None = None, internal: bool = False,
                       options: dict[str, str] | None = None, driver: str = "bridge",
                       gateway: str | None = None, ip_range: str | None = None) -> str:
        """``docker network create``; returns the network id."""
        args = ["network", "create", "--driver", driver]
        if subnet:
            args += ["--subnet", subnet]
        if gateway:
            args += ["--gateway", gateway]
        if ip_range:
            args += ["--ip-range", ip_range]
        if internal:
            args.append("--internal")
        for k, v in (options or {}).items():
            args += ["-o", f"{k}={v}"]
        return self.docker(*args, name).stdout.strip()

    def exec(self, container: str, *cmd: str, check: bool = False,
             timeout: float = 30) -> subprocess.CompletedProcess:
        return self.docker("exec", container, *cmd, check=check, timeout=timeout)

    # -- the offline image -------------------------------------------------------------------
    def image_tarball(self) -> tuple[Path, bool]:
        """The busybox rootfs tarball (built once into ``cache_dir``); (path, was cached)."""
        tar_path = self.cache_dir / "busybox-rootfs.tar"
        _private(self.cache_dir)
        if tar_path.exists():
            return tar_path, True
        build_tarball(tar_path)
        return tar_path, False

    def ensure_image(self) -> str:
        """Import ``cnmlab/busybox`` unless present: "present", "cached tarball" or "built"."""
        if self.docker("image", "inspect", IMAGE, check=False).returncode == 0:
            return "present"
        tar_path, cached = self.image_tarball()
        self.docker("import", "--change", 'CMD ["sh"]', str(tar_path), IMAGE, timeout=120)
        return "cached tarball" if cached else "built"


def build_tarball(tar_path: Path) -> None:
    """A root filesystem with static busybox and a link per applet, as a tar file."""
    applets = subprocess.run([BUSYBOX, "--list-full"], capture_output=True, text=True,
                             check=True).stdout.split()
    tmp = tar_path.with_suffix(".tmp")
    with tempfile.TemporaryDirectory(dir=tar_path.parent) as root:
        r = Path(root)
        for d in ("bin", "sbin", "usr/bin", "usr/sbin", "etc", "tmp", "root", "proc", "sys",
                  "dev", "var/www"):
            (r / d).mkdir(parents=True, exist_ok=True)
        shutil.copy2(BUSYBOX, r / "bin/busybox")
        for applet in applets:
            link = r / applet
            if link.name == "busybox" or link.exists() or link.is_symlink():
                continue
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to("/bin/busybox")
        (r / "tmp").chmod(0o1777)
        (r / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/sh\n"
                                      "nobody:x:65534:65534:nobody:/:/bin/false\n")
        (r / "etc/group").write_text("root:x:0:\nnogroup:x:65534:\n")
        (r / "var/www/index.html").write_text("cnmlab\n")
        with tarfile.open(tmp, "w") as tar:
            for child in sorted(r.iterdir()):
                tar.add(child, arcname=child.name)
    tmp.replace(tar_path)
