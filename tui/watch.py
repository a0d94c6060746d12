"""Kernel change events from inside lab namespaces, and the snapshot a view re-reads on change.

``NetlinkWatcher`` holds one ``EventSocket`` (the kernel layer's rtnetlink event socket, made
inside its namespace) per namespace, bound to the link, IPv4 address, IPv4 route and neighbour
groups. A view re-reads the whole state with ``Netlink(ns)`` when something changed, so the
watcher only has to say *that* and roughly *what* changed.

It is built for a Textual thread worker (pyroute2's sync API cannot run on the asyncio thread):

    watcher = NetlinkWatcher(ns)
    for batch in watcher.batches():      # blocks in select(); ends when stop() is called
        post(Changed(batch))             # one message per burst, however many events
    ...
    watcher.stop()                       # from any thread (e.g. on_unmount): wakes select()

Floods are merged: after the first event, ``batches`` keeps reading until the socket has been
quiet for ``settle`` seconds or ``max_delay`` seconds have passed, so 100 events in 50 ms give one
batch, and the first event is never held back longer than ``max_delay``. A namespace that
disappears (the lab was torn down) is dropped and reported, so the watcher never keeps a dead
namespace alive through its socket.
"""
from __future__ import annotations

import os
import select
import shutil
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from cnmlab.errors import CnmError
from cnmlab.firewall.iptables import IptablesFirewall
from cnmlab.kernel import netns, nsexec
from cnmlab.kernel.netlink import (EVENT_GROUPS, RESYNC, Event, EventSocket, FdbInfo, LinkInfo,
                                   NeighInfo, Netlink, RouteInfo)


class NetlinkWatcher:
    """Change events from one namespace (or several): thread-safe ``stop()``, merged bursts.

    ``NetlinkWatcher(ns)`` watches one namespace by name; ``watch(names)`` replaces the set
    (from any thread: the loop picks it up at once). Sockets are opened lazily in the thread
    that iterates, so the caller's thread never moves between namespaces.
    """

    def __init__(self, ns: str | Iterable[str] | None = None, *, groups: int = EVENT_GROUPS,
                 settle: float = 0.02, max_delay: float = 0.1) -> None:
        names = [ns] if isinstance(ns, str) else list(ns or [])
        self.groups = groups
        self.settle = settle
        self.max_delay = max_delay
        self._lock = threading.Lock()
        self._wanted: set[str] = set(names)
        self._socks: dict[str, tuple[EventSocket, int]] = {}  # ns -> (socket, inode)
        self._rpipe, self._wpipe = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._stopped = False
        self.errors: dict[str, str] = {}  # namespaces that could not be watched, and why
        self.dropped = 0  # ENOBUFS overflows seen (each one asks for a full re-read)

    # ---- control (any thread) ----------------------------------------------------------
    def watch(self, names: Iterable[str]) -> None:
        with self._lock:
            self._wanted = set(names)
        self._poke()

    @property
    def namespaces(self) -> set[str]:
        with self._lock:
            return set(self._wanted)

    def stop(self) -> None:
        self._stopped = True
        self._poke()

    @property
    def stopped(self) -> bool:
        return self._stopped

    def _poke(self) -> None:
        try:
            os.write(self._wpipe, b"x")
        except (BlockingIOError, OSError):
            pass

    def __enter__(self) -> "NetlinkWatcher":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
        self.close()

    def close(self) -> None:
        for s, _ in self._socks.values():
            s.close()
        self._socks.clear()
        for fd in (self._rpipe, self._wpipe):
            try:
                os.close(fd)
            except OSError:
                pass
        self._rpipe = self._wpipe = -1

    # ---- the loop (one thread) ---------------------------------------------------------
    def _sync(self) -> list[Event]:
        """Open sockets for new namespaces, close those no longer wanted or gone."""
        with self._lock:
            wanted = set(self._wanted)
        events = []
        for name in list(self._socks):
            s, ino = self._socks[name]
            try:
                alive = netns.inode(name) == ino
            except OSError:
                alive = False
            if name not in wanted or not alive:
                s.close()
                del self._socks[name]
                if not alive:
                    events.append(Event(name, "netns", "del", name))
        for name in wanted - set(self._socks):
            try:
                ino = netns.inode(name)
                self._socks[name] = (EventSocket(name, self.groups), ino)
                self.errors.pop(name, None)
            except (OSError, CnmError) as e:
                self.errors[name] = str(e)
        return events

    def ready(self) -> None:
        """Open the sockets now (events before this call are not seen)."""
        self._sync()

    def _drain_pipe(self) -> None:
        try:
            while os.read(self._rpipe, 512):
                pass
        except (BlockingIOError, OSError):
            pass

    def _read(self, fds: list[int], by_fd: dict[int, str], out: list[Event]) -> None:
        for fd in fds:
            if fd == self._rpipe:
                self._drain_pipe()
                out.extend(self._sync())
                continue
            ns = by_fd.get(fd)
            if ns is None or ns not in self._socks:
                continue
            events = self._socks[ns][0].read()
            self.dropped += sum(1 for e in events if e.kind == RESYNC)
            out.extend(events)

    def _select(self, timeout: float | None) -> tuple[list[int], dict[int, str]]:
        by_fd = {s.fileno(): ns for ns, (s, _) in self._socks.items()}
        try:
            r, _, _ = select.select([self._rpipe, *by_fd], [], [], timeout)
        except InterruptedError:
            r = []
        return r, by_fd

    def batches(self, timeout: float | None = None, check: float = 1.0) -> Iterator[list[Event]]:
        """Yield merged bursts of events until ``stop()``.

        With ``timeout``, an empty list is yielded after that long without events (a poll tick
        for state that has no netlink events, such as iptables). Every ``check`` seconds the
        watched namespaces are checked for deletion.
        """
        pending = self._sync()
        last_check = last_tick = time.monotonic()
        while not self._stopped:
            now = time.monotonic()
            wait = check - (now - last_check)
            if timeout is not None:
                wait = min(wait, timeout - (now - last_tick))
            started = now
            batch, pending = pending, []
            deadline = started + self.max_delay if batch else None
            while not self._stopped:
                now = time.monotonic()
                if deadline is None:
                    remaining = wait - (now - started)
                    if remaining <= 0:
                        break
                    r, by_fd = self._select(remaining)
                else:
                    remaining = deadline - now
                    if remaining <= 0:
                        break
                    r, by_fd = self._select(min(self.settle, remaining))
                    if not r:
                        break  # quiet for `settle`: the burst is over
                self._read(r, by_fd, batch)
                if batch and deadline is None:
                    deadline = time.monotonic() + self.max_delay
            if self._stopped:
                return
            now = time.monotonic()
            if now - last_check >= check:
                last_check = now
                batch.extend(self._sync())
            if batch:
                last_tick = now
                yield batch
            elif timeout is not None and now - last_tick >= timeout - 1e-3:
                last_tick = now
                yield []

    def __iter__(self) -> Iterator[Event]:
        for batch in self.batches():
            yield from batch


# ---- the snapshot a view shows -----------------------------------------------------------------
IPVS_MISSING = "IPVS: not available in this kernel"


@dataclass
class Snapshot:
    """What a namespace holds now, read with ``Netlink(ns)`` (plus iptables/ipvsadm if asked)."""

    ns: str
    links: list[LinkInfo] = field(default_factory=list)
    routes: list[RouteInfo] = field(default_factory=list)
    fdb: list[FdbInfo] = field(default_factory=list)
    neighbours: list[NeighInfo] = field(default_factory=list)
    firewall: str | None = None  # iptables -S (filter then nat); None when not asked
    ipvs: str = IPVS_MISSING
    error: str | None = None
    taken: float = 0.0  # time.time() of the read

    @property
    def vxlan_peers(self) -> list[FdbInfo]:
        """FDB entries with a remote (``dst``) on VXLAN links: where each MAC is tunnelled to."""
        kinds = {l.name: l.kind for l in self.links}
        return [f for f in self.fdb if f.dst and kinds.get(f.dev) == "vxlan"]

    @property
    def bridge_fdb(self) -> list[FdbInfo]:
        """Entries learned or set on bridge ports (not the VXLAN remotes, not multicast)."""
        kinds = {l.name: l.kind for l in self.links}
        return [f for f in self.fdb
                if f.master and kinds.get(f.master) == "bridge" and f.mac
                and not int(f.mac.split(":")[0], 16) & 1]

    @classmethod
    def read(cls, ns: str, firewall: bool = False, ipvs: bool = True, *,
             nl: Netlink | None = None, parts: set[str] | None = None,
             base: "Snapshot | None" = None) -> "Snapshot":
        """Read it all; call from a thread (pyroute2's sync API refuses an asyncio thread).

        A follower passes its open ``nl``, the ``parts`` a burst of events touched (see
        ``parts_for``) and the previous snapshot as ``base``: the other parts are reused.
        """
        snap = cls(ns=ns, taken=time.time())
        if base is not None and parts is not None and base.error is None:
            snap.links, snap.routes = base.links, base.routes
            snap.neighbours, snap.fdb, snap.ipvs = base.neighbours, base.fdb, base.ipvs
        else:
            parts = set(PARTS)
        try:
            own = nl is None
            if own:
                nl = Netlink(ns)
            try:
                if "links" in parts:
                    snap.links = nl.links()
                if "routes" in parts:
                    snap.routes = nl.routes()
                if "neighbours" in parts:
                    snap.neighbours = nl.neighbours()
                if "fdb" in parts:
                    snap.fdb = nl.fdb()
            finally:
                if own:
                    nl.close()
        except (CnmError, OSError) as e:
            snap.error = str(e)
            return snap
        if ipvs and (base is None or "links" in parts):
            snap.ipvs = read_ipvs(ns)
        if firewall:
            snap.firewall = read_firewall(ns)
        return snap


PARTS = ("links", "routes", "neighbours", "fdb")
_EVENT_PARTS = {("link", "new"): {"links", "fdb"}, ("link", "del"): set(PARTS),
                ("addr", "new"): {"links"}, ("addr", "del"): {"links"},
                ("route", "new"): {"routes"}, ("route", "del"): {"routes"},
                ("neigh", "new"): {"neighbours"}, ("neigh", "del"): {"neighbours"},
                ("fdb", "new"): {"fdb"}, ("fdb", "del"): {"fdb"}}


def parts_for(events: Iterable[Event]) -> set[str]:
    """Which parts of a snapshot a burst of events can have changed."""
    out: set[str] = set()
    for e in events:
        out |= _EVENT_PARTS.get((e.kind, e.action), set(PARTS))
    return out


def read_firewall(ns: str) -> str:
    try:
        return IptablesFirewall().dump(ns)
    except CnmError as e:
        return f"# iptables: {e}\n"


def read_ipvs(ns: str) -> str:
    try:
        with netns.entered(ns):
            present = os.path.exists("/proc/net/ip_vs")
    except (CnmError, OSError):
        present = False
    if not present:
        return IPVS_MISSING
    if not shutil.which("ipvsadm"):
        return "IPVS: in the kernel, but ipvsadm is not installed"
    try:
        return nsexec.run(ns, ["ipvsadm", "-Ln"], check=False).stdout.strip() or "IPVS: empty"
    except CnmError as e:
        return f"IPVS: {e}"
