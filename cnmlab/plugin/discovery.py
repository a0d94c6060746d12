"""Find a plugin by name, as Docker's ``pkg/plugins`` discovery does, cnmlab's own folder first.

Docker looks for ``NAME.sock`` in ``/run/docker/plugins``, then for ``NAME.spec`` (one line:
an address) or ``NAME.json`` (``{"Name": ..., "Addr": ...}``) in ``/etc/docker/plugins`` and
``/usr/lib/docker/plugins``. cnmlab serves its own plugins from ``/run/cnmlab/plugins`` so that
nothing is written where a system dockerd would find it; that folder is searched first. Only
``unix://`` addresses are accepted: a lab's traffic, control traffic included, stays on this
machine.
"""
from __future__ import annotations

import json
import os
import re
import socket
import stat
import struct

from cnmlab.errors import InvalidInput
from cnmlab.plugin.client import PluginError

CNMLAB_PLUGINS = "/run/cnmlab/plugins"
SOCKET_DIRS = (CNMLAB_PLUGINS, "/run/docker/plugins")
SPEC_DIRS = ("/etc/docker/plugins", "/usr/lib/docker/plugins")


NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def socket_path(name: str) -> str:
    """Where ``cnmlab plugin serve`` puts plugin NAME's socket."""
    if not NAME.match(name):
        raise InvalidInput(f"plugin name {name!r}: use letters, digits, '-', '_' or '.' "
                           f"(it names the socket {CNMLAB_PLUGINS}/NAME.sock)")
    return os.path.join(CNMLAB_PLUGINS, f"{name}.sock")


def _address(spec: str, where: str) -> str:
    spec = spec.strip()
    if not spec.startswith("unix://"):
        raise InvalidInput(f"{where}: plugin address {spec!r}: cnmlab only talks to plugins on "
                           f"unix sockets (unix:///path)")
    return spec[len("unix://"):]


def find(name: str) -> str | None:
    """The socket path of plugin ``name``, or None when no plugin of that name is installed."""
    if not name or "/" in name or name.startswith("."):
        return None
    for d in SOCKET_DIRS:
        path = os.path.join(d, f"{name}.sock")
        if os.path.exists(path):
            return path
    for d in SPEC_DIRS:
        spec = os.path.join(d, f"{name}.spec")
        if os.path.isfile(spec):
            with open(spec) as f:
                return _address(f.read(), spec)
        js = os.path.join(d, f"{name}.json")
        if os.path.isfile(js):
            try:
                with open(js) as f:
                    return _address(str(json.load(f).get("Addr", "")), js)
            except (ValueError, AttributeError):
                raise InvalidInput(f"{js}: not a plugin spec ({{\"Name\": ..., \"Addr\": ...}})") from None
    return None


def serving_pid(path: str, timeout: float = 5.0) -> int:
    """The PID of the process listening on the unix socket ``path`` (SO_PEERCRED of a
    connection: the credentials the listener had when it called listen()).

    One-line errors for a socket that is missing, not a socket, or that nobody listens on.
    """
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise PluginError(f"plugin socket {path} does not exist (is the plugin running? "
                          f"'cnmlab plugin ls' lists the plugins discovery finds)") from None
    if not stat.S_ISSOCK(mode):
        raise PluginError(f"{path} is not a unix socket: give a plugin's socket or its name")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect(path)
        raw = s.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    except (ConnectionRefusedError, FileNotFoundError):
        raise PluginError(f"nothing listens on {path} (is the plugin running?)") from None
    except (TimeoutError, socket.timeout):
        raise PluginError(f"{path}: no connection within {timeout:g} s (the plugin is "
                          f"stuck)") from None
    finally:
        s.close()
    pid = struct.unpack("3i", raw)[0]
    if pid <= 0:
        raise PluginError(f"{path}: the process listening there is not visible from here "
                          f"(another PID namespace)")
    return pid


def installed() -> list[str]:
    names = set()
    for d in SOCKET_DIRS:
        if os.path.isdir(d):
            names |= {f[:-5] for f in os.listdir(d) if f.endswith(".sock")}
    for d in SPEC_DIRS:
        if os.path.isdir(d):
            names |= {f.rsplit(".", 1)[0] for f in os.listdir(d) if f.endswith((".spec", ".json"))}
    return sorted(names)


SIDE_FILES = (".log", ".pid", ".out")  # a served plugin's call log, PID file, output


def clean_stale() -> list[str]:
    """Sockets of plugins whose server is gone (what a killed one leaves), and the files
    beside sockets that are gone (the call log a stopped plugin left)."""
    removed: list[str] = []
    if not os.path.isdir(CNMLAB_PLUGINS):
        return removed
    for f in sorted(os.listdir(CNMLAB_PLUGINS)):
        path = os.path.join(CNMLAB_PLUGINS, f)
        if f.endswith(".sock"):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                s.connect(path)
            except OSError:
                for p in (path, *(path + x for x in SIDE_FILES)):
                    if os.path.exists(p):
                        os.unlink(p)
                removed.append(f"plugin socket {path}")
            finally:
                s.close()
        elif f.endswith(SIDE_FILES) and not os.path.exists(path.rsplit(".", 1)[0]):
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
    return removed
