"""Run one command in the full-kernel VM and leave nothing behind.

One run = one private job folder (``/tmp/cnmlab-vm-<pid>-*``: the guest's scripts, its exit
code, the kernel's console log), one qemu process, and the threads relaying the guest's stdout
and stderr as they come. Whatever happens (the command ends, the guest hangs past the timeout,
Ctrl-C, the caller cancels), qemu is killed and waited for and the job folder removed before
``run`` returns or raises. qemu also gets ``PR_SET_PDEATHSIG``, so it dies with its parent even
after a ``kill -9``; job folders of dead parents are swept by the next run.
"""
from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import termios
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import IO, Any

from cnmlab.errors import CnmError, InvalidInput
from cnmlab.vm import guest, image, qemu, tools

JOB_PREFIX = "cnmlab-vm-"
#: host-only variables that mean nothing (or something wrong) inside the guest
HOST_ONLY = ("TMUX", "TMUX_PANE", "SSH_AUTH_SOCK", "SSH_AGENT_PID", "SSH_CONNECTION",
             "SSH_CLIENT", "SSH_TTY", "DBUS_SESSION_BUS_ADDRESS", "XDG_RUNTIME_DIR", "DISPLAY",
             "WAYLAND_DISPLAY", "PYTEST_CURRENT_TEST", "PYTEST_XDIST_WORKER",
             "PYTEST_XDIST_WORKER_COUNT", "PYTEST_XDIST_TESTRUNUID", "COLUMNS", "LINES",
             "OLDPWD", "PWD", "SHLVL", "_")
IN_VM = "CNMLAB_IN_VM"


class VmError(CnmError):
    """The VM did not run the command to its end (boot failure, crash); the message says why."""


class VmTimeout(VmError):
    pass


class VmCancelled(VmError):
    pass


@dataclass
class Result:
    exit_code: int
    seconds: float                    # qemu start to qemu gone
    first_output: float | None        # qemu start to the guest command's first byte
    accel: str                        # "tcg" or "kvm"
    kver: str


def guest_env(base: Mapping[str, str]) -> dict[str, str]:
    """The environment a guest command gets: the caller's, minus what only means something on
    the host, with this interpreter's bin folder (a venv's ``cnmlab``) first on PATH."""
    env = {k: v for k, v in base.items() if k not in HOST_ONLY}
    here = os.path.dirname(sys.executable)
    path = env.get("PATH") or "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    env["PATH"] = here + ":" + path if here not in path.split(":") else path
    env[IN_VM] = "1"
    env.setdefault("TERM", "linux")
    return env


def in_vm() -> bool:
    return os.environ.get(IN_VM) == "1"


def _die_with_parent() -> None:
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def sweep_stale_jobs(tmp: str | None = None) -> list[str]:
    """Remove job folders whose process is gone (a ``kill -9`` skips every ``finally``)."""
    tmp = tmp or tempfile.gettempdir()
    removed = []
    for name in os.listdir(tmp):
        if not name.startswith(JOB_PREFIX):
            continue
        try:
            pid = int(name[len(JOB_PREFIX):].split("-")[0])
            os.kill(pid, 0)
        except ProcessLookupError:
            shutil.rmtree(os.path.join(tmp, name), ignore_errors=True)
            removed.append(name)
        except (ValueError, PermissionError):
            continue
    return removed


def _writer(stream: IO[Any] | None, fallback: IO[Any]) -> Callable[[bytes], None]:
    target = stream if stream is not None else fallback
    buf = getattr(target, "buffer", None)
    if buf is not None or "b" in getattr(target, "mode", "b"):
        out = buf if buf is not None else target

        def write(data: bytes) -> None:
            out.write(data)
            out.flush()
    else:
        def write(data: bytes) -> None:
            target.write(data.decode(errors="replace"))
            target.flush()
    return write


class _Relay(threading.Thread):
    """Copies one pipe to a stream as bytes arrive; notes when the first byte came."""

    def __init__(self, fd: int, write: Callable[[bytes], None], first: list[float]) -> None:
        super().__init__(daemon=True)
        self.fd, self.write, self.first = fd, write, first

    def run(self) -> None:
        while True:
            try:
                data = os.read(self.fd, 65536)
            except OSError:
                break
            if not data:
                break
            if not self.first:
                self.first.append(time.monotonic())
            with contextlib.suppress(Exception):
                self.write(data)


def _last_words(job: str) -> str:
    """The most telling line the guest (or qemu) left: an init failure, a panic, qemu's error."""
    lines: list[str] = []
    for name in ("qemu.log", "console.log"):
        with contextlib.suppress(OSError), open(os.path.join(job, name), errors="replace") as f:
            lines += [l.strip() for l in f if l.strip()]
    for key in ("cnmlab-vm:", "Kernel panic", "qemu-system", "error", "Error"):
        hits = [l for l in lines if key in l]
        if hits:
            return hits[-1][:300]
    return lines[-1][:300] if lines else "no output at all"


def run(argv: Sequence[str], *, terminal: bool = False, cwd: str | None = None,
        results: str | None = None, env: Mapping[str, str] | None = None,
        timeout: float = 600.0, rebuild: bool = False, append: str = "",
        stdout: IO[Any] | None = None, stderr: IO[Any] | None = None,
        cancel: threading.Event | None = None,
        progress: image.Progress | None = None) -> Result:
    """Run ``argv`` in a fresh VM; returns its exit code once the VM is gone.

    ``terminal``: the command gets this process's terminal (a shell, the workshop app);
    otherwise its stdin is empty and its stdout/stderr are relayed to ``stdout``/``stderr``
    (default: this process's). ``results``: a host folder the guest may write (mounted at the
    same path); nothing else of the host is writable. ``cwd``: the guest command's working
    folder (default: the caller's). ``append``: extra kernel command line (``module_blacklist=
    ip_vs`` breaks IPVS on purpose). Raises ``VmTimeout`` after ``timeout`` seconds,
    ``VmCancelled`` when ``cancel`` is set, ``VmError`` when the guest stops early.
    """
    if not argv:
        raise InvalidInput("cnmlab vm run needs a command: cnmlab vm run -- CMD ...")
    found = tools.need("qemu-system-x86_64", "modprobe", "setsid", "stty", "ip")
    tools.static_busybox()
    if results is not None:
        results = os.path.realpath(results)
        if not os.path.isdir(results):
            raise InvalidInput(f"results folder {results}: no such directory")
        if results == "/":
            raise InvalidInput("the results folder cannot be / (the guest could then write "
                               "every host file): pick a folder")
    img = image.ensure(rebuild, progress=progress)
    kvm = qemu.kvm_usable(found["qemu-system-x86_64"])
    sweep_stale_jobs()
    job = tempfile.mkdtemp(prefix=f"{JOB_PREFIX}{os.getpid()}-")
    fds: list[int] = []
    proc: subprocess.Popen[bytes] | None = None
    saved_tty = None
    relays: list[_Relay] = []
    try:
        size = shutil.get_terminal_size()
        with open(os.path.join(job, guest.ENV_FILE), "w") as f:
            f.write(guest.env_file(job=job, results=results, modules=img.modules,
                                   kver=img.kver))
        with open(os.path.join(job, guest.SCRIPT), "w") as f:
            f.write(guest.job_script(argv, job=job, cwd=cwd or os.getcwd(),
                                     env=guest_env(os.environ if env is None else env),
                                     terminal=terminal, rows=size.lines, cols=size.columns))
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        fds += [out_r, out_w, err_r, err_w]
        argv_q = qemu.command(found["qemu-system-x86_64"], img, job=job, results=results,
                              terminal=terminal, out_fd=out_w, err_fd=err_w, kvm=kvm,
                              append=append)
        if terminal and sys.stdin.isatty():
            saved_tty = termios.tcgetattr(sys.stdin.fileno())
        log = open(os.path.join(job, "qemu.log"), "wb")
        start = time.monotonic()
        try:
            proc = subprocess.Popen(argv_q, stdin=None if terminal else subprocess.DEVNULL,
                                    stdout=None if terminal else log, stderr=log,
                                    pass_fds=(out_w, err_w), preexec_fn=_die_with_parent,
                                    start_new_session=not terminal)
        finally:
            log.close()
        for fd in (out_w, err_w):
            os.close(fd)
            fds.remove(fd)
        first: list[float] = []
        relays = [_Relay(out_r, _writer(stdout, sys.stdout), first),
                  _Relay(err_r, _writer(stderr, sys.stderr), first)]
        for r in relays:
            r.start()
        deadline = start + timeout
        while True:
            try:
                proc.wait(timeout=0.2)
                break
            except subprocess.TimeoutExpired:
                pass
            if cancel is not None and cancel.is_set():
                raise VmCancelled("the VM run was cancelled")
            if time.monotonic() > deadline:
                raise VmTimeout(f"the VM did not finish within {timeout:g} s and was stopped "
                                f"(allow more time with --timeout)")
        seconds = time.monotonic() - start
        for r in relays:
            r.join(timeout=5)
        try:
            with open(os.path.join(job, guest.RC_FILE)) as f:
                code = int(f.read().strip())
        except (OSError, ValueError):
            raise VmError(f"the VM stopped before the command finished: {_last_words(job)}") \
                from None
        return Result(exit_code=code, seconds=seconds,
                      first_output=(first[0] - start) if first else None,
                      accel="kvm" if kvm else "tcg", kver=img.kver)
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
        if saved_tty is not None:
            with contextlib.suppress(termios.error):
                termios.tcsetattr(sys.stdin.fileno(), termios.TCSADRAIN, saved_tty)
        for r in relays:
            r.join(timeout=5)
        for fd in fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        shutil.rmtree(job, ignore_errors=True)
