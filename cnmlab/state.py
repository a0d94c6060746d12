"""Lab state files under /run/cnmlab: what each lab made, written before it is made.

A namespace is recorded *before* it is created (write-ahead), so a ``kill -9`` at any moment
leaves a record that ``cnmlab clean`` can act on. Everything else a lab makes lives inside its
namespaces and goes with them; the only root-namespace change, the kernel's neighbour-table
limits, is refcounted in its own file and restored when the last lab that needed it goes.
"""
from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager

from cnmlab.errors import InvalidInput, ObjectNotFound
from cnmlab.model import LabState

STATE_DIR = os.environ.get("CNMLAB_STATE_DIR", "/run/cnmlab")
LAB_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,31}$")


def check_lab_name(name: str) -> None:
    if not LAB_NAME.match(name):
        raise InvalidInput(f"lab name {name!r}: use 1-32 lowercase letters, digits, '-' or '_'")


def _path(name: str) -> str:
    return os.path.join(STATE_DIR, f"{name}.json")


def exists(name: str) -> bool:
    return os.path.exists(_path(name)) or os.path.exists(_ns_log(name))


def _ns_log(name: str) -> str:
    return os.path.join(STATE_DIR, f"{name}.ns")


def record_namespace(name: str, ns: str) -> None:
    """Append a namespace to the lab's write-ahead log *before* it is created.

    An append is O(1) whatever the lab's size, so recording stays cheap at a thousand
    sandboxes, and a ``kill -9`` between this line and the next leaves a record behind.
    """
    os.makedirs(STATE_DIR, exist_ok=True)
    fd = os.open(_ns_log(name), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (ns + "\n").encode())
    finally:
        os.close(fd)


def recorded_namespaces(name: str) -> list[str]:
    try:
        with open(_ns_log(name)) as f:
            return [line.strip() for line in f if line.strip()]
    except FileNotFoundError:
        return []


def save(state: LabState) -> None:
    """Write the model atomically (/run is a tmpfs: no fsync needed to survive a kill)."""
    os.makedirs(STATE_DIR, exist_ok=True)
    tmp = _path(state.name) + f".{os.getpid()}.tmp"
    data = state.to_json()
    data.pop("namespaces", None)  # those live in the write-ahead log
    with open(tmp, "w") as f:
        json.dump(data, f, separators=(",", ":"), default=vars)
    os.replace(tmp, _path(state.name))


def load(name: str) -> LabState:
    try:
        with open(_path(name)) as f:
            data = json.load(f)
    except FileNotFoundError:
        if not os.path.exists(_ns_log(name)):
            raise ObjectNotFound(f"no lab named {name!r} is running (see 'cnmlab ls')") from None
        data = {"name": name}  # killed before its first save: the log is all there is
    except ValueError:
        data = {"name": name}
    data["namespaces"] = recorded_namespaces(name)
    try:
        return LabState.from_json(data)
    except (TypeError, KeyError, AttributeError, ValueError) as e:
        raise InvalidInput(f"lab {name}: its state file {_path(name)} is damaged or from another "
                           f"cnmlab version ({str(e).splitlines()[0]}); remove the lab with "
                           f"'cnmlab clean --lab {name}'") from None


def aux_path(name: str, suffix: str) -> str:
    """A helper file of a lab (e.g. the DNS resolver's progress); removed with the lab."""
    return os.path.join(STATE_DIR, f"_{name}.{suffix}")


def remove(name: str) -> None:
    aux = [os.path.join(STATE_DIR, f) for f in _listdir()
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
        return os.listdir(STATE_DIR)
    except FileNotFoundError:
        return []


def names() -> list[str]:
    try:
        return sorted({f.rsplit(".", 1)[0] for f in os.listdir(STATE_DIR)
                       if f.endswith((".json", ".ns")) and not f.startswith("_")})
    except FileNotFoundError:
        return []


@contextmanager
def locked(name: str) -> Iterator[None]:
    """Serialise changes to one lab across processes (CLI, TUI, tests)."""
    os.makedirs(STATE_DIR, exist_ok=True)
    with open(os.path.join(STATE_DIR, f"_{name}.lock"), "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def remove_lock(name: str) -> None:
    try:
        os.unlink(os.path.join(STATE_DIR, f"_{name}.lock"))
    except FileNotFoundError:
        pass
