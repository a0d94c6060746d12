"""Lab state files under /run/cnmlab: what each lab made, written before it is made.

A namespace is recorded *before* it is created (write-ahead), so a ``kill -9`` at any moment
leaves a record that ``cnmlab clean`` can act on. Every change to a lab is a load-modify-save
under the lab's lock (``locked``). The folder is private to root (see ``rundir``): root acts
on no state another user could have written. Everything else a lab makes lives inside its
namespaces and goes with them; the only root-namespace change, the kernel's neighbour-table
limits, is refcounted in its own file and restored when the last lab that needed it goes.
"""
from __future__ import annotations

import ipaddress
import json
import os
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from cnmlab.errors import InvalidInput, ObjectNotFound
from cnmlab.kernel import filelock, rundir
from cnmlab.model import LabState, Network

LAB_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,31}$")
# What a namespace name recorded in a log may look like: it becomes a path under /run/netns.
NETNS_NAME = re.compile(r"^(?!\.\.?$)[A-Za-z0-9_.-]{1,255}$")


def progress_path() -> str:
    """The learner's progress file (``$CNMLAB_PROGRESS`` or ~/.local/share/cnmlab/progress.json).

    Here, below the workshop, because the VM's CLI (engine layer) copies a guest workshop's
    results next to it as well as the workshop reading and writing it.
    """
    return os.environ.get("CNMLAB_PROGRESS") or os.path.join(
        os.path.expanduser("~"), ".local", "share", "cnmlab", "progress.json")


def check_lab_name(name: str) -> None:
    if not LAB_NAME.match(name):
        raise InvalidInput(f"lab name {name!r}: use 1-32 lowercase letters, digits, '-' or '_'")


def _path(name: str) -> str:
    return os.path.join(rundir.STATE_DIR, f"{name}.json")


def exists(name: str) -> bool:
    return any(os.path.exists(p) for p in files(name))


def files(name: str) -> list[str]:
    """The files whose presence means the lab exists (its model and its namespace log)."""
    return [_path(name), _ns_log(name)]


def _ns_log(name: str) -> str:
    return os.path.join(rundir.STATE_DIR, f"{name}.ns")


def record_namespace(name: str, ns: str) -> None:
    """Append a namespace to the lab's write-ahead log *before* it is created.

    An append is O(1) whatever the lab's size, so recording stays cheap at a thousand
    sandboxes, and a ``kill -9`` between this line and the next leaves a record behind.
    """
    if not NETNS_NAME.match(ns):
        raise InvalidInput(f"invalid network namespace name {ns!r}")
    fd = os.open(os.path.join(rundir.state_dir(), f"{name}.ns"),
                 os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    try:
        os.write(fd, (ns + "\n").encode())
    finally:
        os.close(fd)


def forget_namespace(name: str, ns: str) -> None:
    """Withdraw the last record of ``ns`` from the lab's log: it turned out not to be ours.

    Called with the lab's lock held when creating a recorded namespace failed because the
    name was taken, so that no rollback or ``cnmlab clean`` ever deletes somebody else's.
    """
    log = _ns_log(name)
    lines = recorded_namespaces(name)
    for i in range(len(lines) - 1, -1, -1):
        if lines[i] == ns:
            del lines[i]
            break
    else:
        return
    tmp = f"{log}.{os.getpid()}.tmp"
    with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600),
              "w") as f:
        f.write("".join(line + "\n" for line in lines))
    os.replace(tmp, log)


def recorded_namespaces(name: str) -> list[str]:
    """The lab's logged namespaces; a line that is no namespace name is never acted on."""
    if rundir.readable_dir() is None:
        return []
    try:
        with open(_ns_log(name)) as f:
            return [ns for ns in (line.strip() for line in f) if NETNS_NAME.match(ns)]
    except FileNotFoundError:
        return []


Stamp = tuple[int, int, int]


def stamp(name: str) -> Stamp | None:
    """Identifies the saved version of a lab's model (every save replaces the file)."""
    try:
        st = os.stat(_path(name))
    except FileNotFoundError:
        return None
    return (st.st_ino, st.st_mtime_ns, st.st_size)


def save(state: LabState) -> Stamp | None:
    """Write the model atomically (/run is a tmpfs: no fsync needed to survive a kill).

    Returns the new version's stamp. Callers hold the lab's lock (``locked``), so that no
    two processes ever save a model each loaded before the other's change.
    """
    folder = rundir.state_dir()
    path = os.path.join(folder, f"{state.name}.json")
    tmp = path + f".{os.getpid()}.tmp"
    data = state.to_json()
    data.pop("namespaces", None)  # those live in the write-ahead log
    with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600),
              "w") as f:
        # dumps, not dump: json.dump streams through the pure-Python encoder, dumps uses the
        # C one (several times faster on a big lab, and every change saves the model)
        f.write(json.dumps(data, separators=(",", ":"), default=vars))
    os.replace(tmp, path)
    return stamp(state.name)


def load(name: str) -> LabState:
    """The lab's saved model; a damaged or foreign file is a one-line ``InvalidInput``."""
    if rundir.readable_dir() is None:
        raise ObjectNotFound(f"no lab named {name!r} is running (see 'cnmlab ls')")
    path = _path(name)
    try:
        with open(path) as f:
            data = json.load(f)
    except FileNotFoundError:
        if not os.path.exists(_ns_log(name)):
            raise ObjectNotFound(f"no lab named {name!r} is running (see 'cnmlab ls')") from None
        data = {"name": name}  # killed before its first save: the log is all there is
    except (ValueError, UnicodeDecodeError) as e:
        raise damaged(path, name, f"not JSON ({e})") from None
    except OSError as e:
        raise InvalidInput(f"{path}: {e.strerror}") from None
    if not isinstance(data, dict):
        raise damaged(path, name, f"expected a mapping, got {type(data).__name__}")
    if "namespaces" in data:
        raise damaged(path, name, "namespaces: unknown field (they live in the .ns log)")
    if data.get("name") != name:
        raise damaged(path, name, f"name: {data.get('name')!r} is not {name!r}")
    data["namespaces"] = recorded_namespaces(name)
    try:
        lab = LabState.from_json(data)
        check_model(lab)
    except InvalidInput as e:
        raise damaged(path, name, str(e)) from None
    return lab


def damaged(path: str, name: str, problem: str) -> InvalidInput:
    """The one-line error for a state file this version cannot use."""
    return InvalidInput(f"{path}: {problem}; a damaged state, or one from another cnmlab "
                        f"version: 'cnmlab clean --lab {name}' removes the lab")


def check_model(lab: LabState) -> None:
    """What the types cannot say: addresses parse, names are names, references resolve."""
    for ns in [lab.upstream] + [h.netns for h in lab.hosts.values()] + [
            sb.netns for h in lab.hosts.values() for sb in h.sandboxes.values()]:
        if ns is not None and not NETNS_NAME.match(ns):
            raise InvalidInput(f"{ns!r} is not a network namespace name")
    _parse("upstream_subnet", lab.upstream_subnet, ipaddress.IPv4Network)
    for hname, h in lab.hosts.items():
        where = f"hosts.{hname}"
        if h.name != hname:
            raise InvalidInput(f"{where}.name: {h.name!r} is not {hname!r}")
        if h.public_ip is not None:
            _parse(f"{where}.public_ip", h.public_ip, ipaddress.IPv4Address)
        for nname, net in h.networks.items():
            nwhere = f"{where}.networks.{nname}"
            if net.name != nname:
                raise InvalidInput(f"{nwhere}.name: {net.name!r} is not {nname!r}")
            for key, kind in (("subnet", ipaddress.IPv4Network),
                              ("ip_range", ipaddress.IPv4Network),
                              ("gateway", ipaddress.IPv4Address)):
                value = getattr(net, key)
                if value is not None:
                    _parse(f"{nwhere}.{key}", value, kind)
            for eid, ep in net.endpoints.items():
                ewhere = f"{nwhere}.endpoints.{eid}"
                if ep.id != eid or ep.network != nname:
                    raise InvalidInput(f"{ewhere}: id or network does not match its place")
                if ep.ip is not None:
                    _parse(f"{ewhere}.ip", ep.ip, ipaddress.IPv4Interface)
                if ep.sandbox is not None and ep.sandbox not in h.sandboxes:
                    raise InvalidInput(f"{ewhere}.sandbox: no sandbox {ep.sandbox!r}")
        for sname, sb in h.sandboxes.items():
            if sb.name != sname:
                raise InvalidInput(f"{where}.sandboxes.{sname}.name: {sb.name!r} is not "
                                   f"{sname!r}")
            for ref in sb.endpoints:
                if ref.endpoint not in h.networks.get(ref.network, _NO_NETWORK).endpoints:
                    raise InvalidInput(f"{where}.sandboxes.{sname}.endpoints: "
                                       f"{ref.network}/{ref.endpoint} names no endpoint")


_NO_NETWORK = Network(id="", name="", driver="")


def _parse(where: str, value: str, kind: Any) -> None:
    try:
        kind(value)
    except ValueError as e:
        raise InvalidInput(f"{where}: {e}") from None


def aux_path(name: str, suffix: str) -> str:
    """A helper file of a lab (e.g. the DNS resolver's progress); removed with the lab."""
    return os.path.join(rundir.state_dir(), f"_{name}.{suffix}")


def remove(name: str) -> None:
    """Remove a lab's state files (its lock goes when its holder lets go: see ``locked``)."""
    aux = [os.path.join(rundir.STATE_DIR, f) for f in _listdir()
           if f.startswith(f"_{name}.") and not f.endswith(".lock")]
    for p in (_path(name), _ns_log(name), *aux):
        try:
            os.unlink(p)
        except IsADirectoryError:  # e.g. the embedded etcd's data
            shutil.rmtree(p, ignore_errors=True)
        except FileNotFoundError:
            pass


def _listdir() -> list[str]:
    try:
        folder = rundir.readable_dir()
        return os.listdir(folder) if folder else []
    except (FileNotFoundError, PermissionError):
        return []


def names() -> list[str]:
    return sorted({f.rsplit(".", 1)[0] for f in _listdir()
                   if f.endswith((".json", ".ns")) and not f.startswith("_")})


@contextmanager
def locked(name: str) -> Iterator[None]:
    """Serialise every load-modify-save of one lab across processes (CLI, TUI, tests).

    Re-entrant, and threads of one process queue too. The lock file is removed, by its
    holder, when the lab is gone; a process that was waiting on it then queues on a new one
    (see ``filelock``), so a teardown never lets two processes in at once.
    """
    check_lab_name(name)
    with filelock.locked(os.path.join(rundir.state_dir(), f"_{name}.lock"),
                         remove_if=lambda: not exists(name)):
        yield
