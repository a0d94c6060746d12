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
    return os.path.exists(_path(name))


def save(state: LabState) -> None:
    os.makedirs(STATE_DIR, exist_ok=True)
    tmp = _path(state.name) + ".tmp"
    with open(tmp, "w") as f:
        json.dump(state.to_json(), f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, _path(state.name))


def load(name: str) -> LabState:
    try:
        with open(_path(name)) as f:
            return LabState.from_json(json.load(f))
    except FileNotFoundError:
        raise ObjectNotFound(f"no lab named {name!r} is running (see 'cnmlab ls')") from None


def remove(name: str) -> None:
    for p in (_path(name), _path(name) + ".tmp"):
        try:
            os.unlink(p)
        except FileNotFoundError:
            pass


def names() -> list[str]:
    try:
        return sorted(f[:-5] for f in os.listdir(STATE_DIR) if f.endswith(".json")
                      and not f.startswith("_"))
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
