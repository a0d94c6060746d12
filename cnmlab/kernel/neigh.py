"""The kernel's neighbour-table limits: the one root-namespace setting cnmlab may change.

``net.ipv4.neigh.default.gc_thresh{1,2,3}`` are global (shared by every namespace) and only
writable from the root namespace. A full mesh of N sandboxes needs about N*(N-1) entries and the
default limit of 1024 makes probes fail silently at N=50. Labs reserve what they need; the
originals are saved once and restored when the last reservation is released, even by
``cnmlab clean`` after a crash: an owner that died without releasing is noticed (its files are
gone, or its process) and its room given back.
"""
from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from cnmlab.kernel import filelock, rundir, sysctl

KEYS = ("net.ipv4.neigh.default.gc_thresh1", "net.ipv4.neigh.default.gc_thresh2",
        "net.ipv4.neigh.default.gc_thresh3")
FILE = "_neigh.json"


def _alive(owner: str, files: list[str] | None) -> bool:
    """An owner with ``files`` lives while one of them exists (a lab: its state files);
    otherwise its name is ``KIND:PID:...`` and it lives while that process does."""
    if files:
        return any(os.path.exists(f) for f in files)
    pid = owner.partition(":")[2].split(":", 1)[0]
    return not pid.isdigit() or os.path.exists(f"/proc/{pid}")


def table_stats() -> dict[str, int]:
    """The kernel's global ARP table counters: ``entries`` and summed ``table_fulls`` etc."""
    with open("/proc/net/stat/arp_cache") as f:
        head = f.readline().split()
        rows = [[int(x, 16) for x in line.split()] for line in f if line.strip()]
    out = {k: sum(r[i] for r in rows) for i, k in enumerate(head)}
    if rows:
        out["entries"] = rows[0][0]  # a global count, repeated on every CPU's row
    return out


def limits() -> tuple[int, int, int]:
    """gc_thresh1, 2 and 3 as they are now."""
    return tuple(int(sysctl.read_root(k)) for k in KEYS)  # type: ignore[return-value]


def entries_for(sandboxes: int) -> int:
    """Entries a full mesh of ``sandboxes`` (plus gateways and upstream) may need."""
    return sandboxes * sandboxes + 4 * sandboxes + 256


@contextmanager
def _locked_record() -> Iterator[dict]:
    path = os.path.join(rundir.state_dir(), FILE)
    # the lock file goes with the record, removed by its holder (see filelock)
    with filelock.locked(path + ".lock", remove_if=lambda: not os.path.exists(path)):
        try:
            with open(path) as f:
                record = json.load(f)
        except (FileNotFoundError, json.JSONDecodeError):
            record = {"original": None, "needs": {}}
        alive_while = record.setdefault("alive_while", {})
        stale = [o for o in record["needs"] if not _alive(o, alive_while.get(o))]
        for owner in stale:  # killed before releasing: their room is not needed any more
            del record["needs"][owner]
            alive_while.pop(owner, None)
        if stale and record["original"] is not None:
            if record["needs"]:
                _apply(record)
            else:
                _restore(record["original"])
        yield record
        if record["needs"]:
            with open(path + ".tmp", "w") as f:
                json.dump(record, f)
            os.replace(path + ".tmp", path)
        else:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass


def _apply(record: dict) -> None:
    """thresh2 (where garbage collection gets eager) at the need, thresh3 half as much again.

    Thresholds are written from the top down or the bottom up so that 1 <= 2 <= 3 holds
    at every moment, as the kernel expects.
    """
    original = [int(v) for v in record["original"]]
    need = max(record["needs"].values(), default=0)
    values = [original[0], max(original[1], need), max(original[2], need + need // 2)]
    values[0] = min(values[0], values[1])
    current = [int(sysctl.read_root(k)) for k in KEYS]
    order = zip(KEYS, values)
    for key, value in (reversed(list(order)) if values[2] >= current[2] else order):
        sysctl.write_root(key, value)


def _restore(original: list[str]) -> None:
    for key, value in zip(KEYS, original):  # thresh1 first: every step lowers or keeps
        sysctl.write_root(key, value)


def reserve(owner: str, entries: int, alive_while: Sequence[str] = ()) -> None:
    """Make room for ``entries`` neighbours on behalf of ``owner`` (a lab or a probe run).

    ``alive_while``: files whose existence means the owner still needs the room (a lab's state
    files); without them ``owner`` must be ``KIND:PID:...`` and lives as long as that process.
    """
    with _locked_record() as record:
        if record["original"] is None:
            t2, t3 = int(sysctl.read_root(KEYS[1])), int(sysctl.read_root(KEYS[2]))
            if entries <= t2 and entries + entries // 2 <= t3:
                return
            record["original"] = [sysctl.read_root(k) for k in KEYS]
        record["needs"][owner] = max(entries, record["needs"].get(owner, 0))
        if alive_while:
            record["alive_while"][owner] = list(alive_while)
        _apply(record)


def release(owner: str) -> None:
    with _locked_record() as record:
        if record["original"] is None or owner not in record["needs"]:
            return
        del record["needs"][owner]
        record["alive_while"].pop(owner, None)
        if record["needs"]:
            _apply(record)
        else:
            _restore(record["original"])


def release_all() -> None:
    """Restore the saved originals whoever holds a reservation (``cnmlab clean``)."""
    with _locked_record() as record:
        if record["original"] is not None:
            _restore(record["original"])
        record["needs"] = {}
        record["alive_while"] = {}
