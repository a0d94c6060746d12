"""The userland port proxy, the counterpart of dockerd's ``docker-proxy``: starting and driving it.

Docker runs it so that the host itself and containers on the same bridge (hairpin) can reach a
published port: their packets never pass through PREROUTING's DNAT the way outside traffic does.
Docker starts one process per port; cnmlab runs one daemon per host namespace that serves all of
the host's published ports (``cnmlab.proxyd``, one asyncio process, ~20 MB instead of ~20 MB a
port) and adds or removes ports over a control socket without touching the others.

Runtime files live in ``<state dir>/proxy``, a folder that must be root's and mode 0700 (checked
before every use, so root never talks to a socket someone else planted): per host namespace a
control socket, a lock file that serialises the callers, and a PID file holding the daemon's PID
and start time. The daemon is signalled only after its start time in ``/proc/PID/stat`` still
matches the recorded one (PIDs are reused). Teardown and ``cnmlab clean`` stop it with every other
process of the host's namespace and then ``forget`` its files.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import select
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any

from cnmlab.errors import CnmError, KernelError
from cnmlab.kernel import rundir
from cnmlab.kernel.procs import live_start_time as start_time

SOCKET_PATH_MAX = 107  # sun_path is 108 bytes with its NUL
START_TIMEOUT = 10.0
REPLY_TIMEOUT = 10.0


@dataclass(frozen=True)
class Mapping:
    """One published port as the daemon serves it (``docker run -p``, after the binding)."""

    proto: str
    host_ip: str
    host_port: int
    container_ip: str
    container_port: int
    udp_timeout: float | None = None  # None: docker-proxy's 90 s


# ---- the private runtime folder --------------------------------------------------------------
def run_dir() -> str:
    """``<state dir>/proxy``, made root-only if missing; refused if anyone else could write it."""
    path = os.path.join(rundir.STATE_DIR, "proxy")
    os.makedirs(rundir.STATE_DIR, exist_ok=True)
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o077:
        what = ("is not a folder" if not stat.S_ISDIR(st.st_mode) else
                f"belongs to uid {st.st_uid}" if st.st_uid != os.geteuid() else
                f"has mode {stat.S_IMODE(st.st_mode):04o}")
        raise CnmError(f"{path} {what}: it must be a folder of root's with mode 0700; "
                       f"remove it and retry")
    return path


def _files(ns: str, create: bool = True) -> tuple[str, str, str]:
    """Control socket, lock file and PID file of the daemon of host namespace ``ns``."""
    folder = run_dir() if create else os.path.join(rundir.STATE_DIR, "proxy")
    base = ns
    if len(os.path.join(folder, base + ".sock")) > SOCKET_PATH_MAX:
        base = "h-" + hashlib.sha256(ns.encode()).hexdigest()[:24]
    stem = os.path.join(folder, base)
    return stem + ".sock", stem + ".lock", stem + ".pid"


@contextlib.contextmanager
def _locked(lock_path: str) -> Iterator[None]:
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


# ---- is the recorded process still ours? (PID + start time: cnmlab.kernel.procs) ---------------


def _recorded(pid_path: str) -> tuple[int, int] | None:
    try:
        with open(pid_path) as f:
            pid, start = (int(x) for x in f.read().split())
        return pid, start
    except (OSError, ValueError):
        return None


def _alive(rec: tuple[int, int] | None) -> bool:
    return rec is not None and start_time(rec[0]) == rec[1]


def _signal(rec: tuple[int, int], sig: int) -> bool:
    """Send ``sig`` only if the PID is still the recorded process (start time unchanged)."""
    if not _alive(rec):
        return False
    try:
        os.kill(rec[0], sig)
    except ProcessLookupError:
        return False
    return True


# ---- talking to the daemon -------------------------------------------------------------------
def _request(sock_path: str, req: dict[str, Any]) -> dict[str, Any] | None:
    """One request, one reply; None when no daemon answers on ``sock_path``."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(REPLY_TIMEOUT)
    try:
        s.connect(sock_path)
        s.sendall(json.dumps(req).encode() + b"\n")
        data = b""
        while not data.endswith(b"\n"):
            chunk = s.recv(65536)
            if not chunk:
                return None
            data += chunk
        reply: dict[str, Any] = json.loads(data)
        return reply
    except (OSError, ValueError):
        return None
    finally:
        s.close()


def _spawn(ns: str, sock_path: str, lock_path: str, pid_path: str) -> tuple[int, int]:
    """Start a daemon in ``ns`` and wait until its control socket listens."""
    for p in (sock_path, pid_path):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(p)
    r, w = os.pipe()
    proc = subprocess.Popen(
        [sys.executable, "-m", "cnmlab.proxyd", "--netns", ns, "--control", sock_path,
         "--lock", lock_path, "--ready-fd", str(w)],
        pass_fds=(w,), start_new_session=True, stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    os.close(w)
    line = b""
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while not line.endswith(b"\n") and (left := deadline - time.monotonic()) > 0:
            if not select.select([r], [], [], left)[0]:
                break
            chunk = os.read(r, 256)
            if not chunk:
                break
            line += chunk
    finally:
        os.close(r)
    if line.strip() != b"ready":
        proc.kill()
        proc.wait()
        why = line.decode(errors="replace").strip().removeprefix("error: ")
        raise KernelError(f"port proxy of {ns}: {why or 'did not start'}")
    threading.Thread(target=proc.wait, daemon=True).start()  # reap it if it ends before us
    start = start_time(proc.pid)
    rec = (proc.pid, start if start is not None else -1)
    tmp = f"{pid_path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        f.write(f"{rec[0]} {rec[1]}\n")
    os.replace(tmp, pid_path)
    return rec


def _ensure(ns: str, sock_path: str, lock_path: str, pid_path: str) -> tuple[int, int]:
    """The host's running daemon, or a new one (called with the host's lock held)."""
    rec = _recorded(pid_path)
    if _alive(rec) and os.path.exists(sock_path):
        return rec  # type: ignore[return-value]
    if rec is not None and _alive(rec):  # running without its socket: not usable, stop it
        _signal(rec, signal.SIGKILL)
    return _spawn(ns, sock_path, lock_path, pid_path)


# ---- the engine's API ------------------------------------------------------------------------
def publish(ns: str, m: Mapping) -> int:
    """Serve ``m`` from the proxy daemon of host namespace ``ns``; return the daemon's PID.

    Raises ``KernelError`` (one line, as Docker words it) when the port cannot be bound.
    """
    sock_path, lock_path, pid_path = _files(ns)
    req = {"op": "add", **asdict(m)}
    with _locked(lock_path):
        for _attempt in (1, 2):
            rec = _ensure(ns, sock_path, lock_path, pid_path)
            reply = _request(sock_path, req)
            if reply is not None:
                break
            _signal(rec, signal.SIGKILL)  # it took the request but never answered
        else:
            raise KernelError(f"port proxy of {ns} does not answer")
    if "error" in reply:
        raise KernelError(f"port proxy for {m.host_port}/{m.proto}: {reply['error']}")
    return rec[0]


def unpublish(ns: str, proto: str, host_ip: str, host_port: int) -> None:
    """Stop serving one port; the others keep their connections. The last one ends the daemon."""
    sock_path, lock_path, pid_path = _files(ns)
    with _locked(lock_path):
        if not os.path.exists(sock_path):
            return
        reply = _request(sock_path, {"op": "remove", "proto": proto, "host_ip": host_ip,
                                     "host_port": host_port})
        if reply is not None and reply.get("left") == 0:
            _wait_gone(_recorded(pid_path))
            with contextlib.suppress(FileNotFoundError):
                os.unlink(pid_path)


def published(ns: str) -> list[dict[str, Any]]:
    """What the host's daemon serves, with open TCP connections and live UDP flows per port."""
    sock_path, lock_path, _pid = _files(ns)
    with _locked(lock_path):
        reply = _request(sock_path, {"op": "list"}) if os.path.exists(sock_path) else None
    return list(reply.get("ports", [])) if reply else []


def daemon(ns: str) -> tuple[int, int] | None:
    """The daemon's (PID, start time) if it still runs, else None."""
    rec = _recorded(_files(ns)[2])
    return rec if _alive(rec) else None


def stop(ns: str, timeout: float = 2.0) -> None:
    """Stop the host's daemon: ask it, then SIGTERM, then SIGKILL, each only if still ours."""
    sock_path, lock_path, pid_path = _files(ns)
    with _locked(lock_path):
        rec = _recorded(pid_path)
        if os.path.exists(sock_path):
            _request(sock_path, {"op": "stop"})
        if rec is not None and not _wait_gone(rec, timeout):
            _signal(rec, signal.SIGTERM)
            if not _wait_gone(rec, timeout):
                _signal(rec, signal.SIGKILL)
                _wait_gone(rec, timeout)
        for p in (sock_path, pid_path):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(p)


def forget(ns: str) -> None:
    """Remove the runtime files of a namespace whose processes are gone (teardown, clean)."""
    for p in _files(ns, create=False):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(p)


def _wait_gone(rec: tuple[int, int] | None, timeout: float = 2.0) -> bool:
    if rec is None:
        return True
    deadline = time.monotonic() + timeout
    while _alive(rec):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True
