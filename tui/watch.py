"""Kernel change events from inside lab namespaces, and the snapshot a view re-reads on change.

``NetlinkWatcher`` holds one raw rtnetlink socket per namespace, each *created inside* its
namespace (``netns.entered`` moves only the calling thread, and a socket stays bound to the
namespace it was made in) and bound to the link, IPv4 address, IPv4 route and neighbour groups.
It does not decode messages beyond the header and the one attribute that names the object: a
view re-reads the whole state with ``Netlink(ns)`` when something changed, so the watcher only
has to say *that* and roughly *what* changed.

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

import errno
import os
import select
import shutil
import socket
import struct
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from cnmlab.errors import CnmError
from cnmlab.kernel import netns
from cnmlab.kernel.netlink import FdbInfo, LinkInfo, NeighInfo, Netlink, RouteInfo

NETLINK_ROUTE = 0
RTMGRP_LINK = 0x1
RTMGRP_NEIGH = 0x4
RTMGRP_IPV4_IFADDR = 0x10
RTMGRP_IPV4_ROUTE = 0x40
DEFAULT_GROUPS = RTMGRP_LINK | RTMGRP_IPV4_IFADDR | RTMGRP_IPV4_ROUTE | RTMGRP_NEIGH

_NLMSG_HDR = struct.Struct("=IHHII")
_RTA_HDR = struct.Struct("=HH")
NLMSG_ERROR, NLMSG_DONE = 2, 3
NLM_F_REQUEST, NLM_F_DUMP = 0x1, 0x300
RTM_GETLINK, RTM_GETADDR, RTM_GETNSID = 18, 22, 90
# message type -> (kind, action, size of the fixed header before the attributes)
_TYPES = {16: ("link", "new", 16), 17: ("link", "del", 16),
          20: ("addr", "new", 8), 21: ("addr", "del", 8),
          24: ("route", "new", 12), 25: ("route", "del", 12),
          28: ("neigh", "new", 12), 29: ("neigh", "del", 12)}
_RCVBUF = 1 << 20


@dataclass(frozen=True)
class Event:
    """One kernel change: kind is link/addr/route/neigh (or "netns"), action new/del."""

    ns: str
    kind: str
    action: str
    name: str = ""  # link name, address, route destination, neighbour address

    def __str__(self) -> str:
        return f"{self.ns}: {self.action} {self.kind} {self.name}".rstrip()


RESYNC = "resync"  # Event.kind when the kernel dropped messages (ENOBUFS): re-read everything


def _attrs(data: bytes, start: int, end: int) -> Iterator[tuple[int, bytes]]:
    off = start
    while off + 4 <= end:
        rlen, rtype = _RTA_HDR.unpack_from(data, off)
        if rlen < 4:
            return
        yield rtype & 0x3FFF, data[off + 4:off + rlen]
        off += (rlen + 3) & ~3


def _cstr(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode(errors="replace")


def _ip(raw: bytes) -> str:
    if len(raw) == 4:
        return socket.inet_ntop(socket.AF_INET, raw)
    if len(raw) == 16:
        return socket.inet_ntop(socket.AF_INET6, raw)
    return ":".join(f"{b:02x}" for b in raw)


def parse_events(ns: str, data: bytes) -> list[Event]:
    """Split a datagram into events, decoding only the attribute that names each object."""
    out = []
    off = 0
    while off + 16 <= len(data):
        length, mtype, _flags, _seq, _pid = _NLMSG_HDR.unpack_from(data, off)
        if length < 16:
            break
        end = min(off + length, len(data))
        info = _TYPES.get(mtype)
        if info is not None:
            kind, action, fixed = info
            body = off + 16
            name = ""
            want = {"link": 3, "addr": 2, "route": 1, "neigh": 1}[kind]
            for rtype, val in _attrs(data, body + fixed, end):
                if rtype == want or (kind == "addr" and rtype == 1 and not name):
                    name = _cstr(val) if kind == "link" else _ip(val)
                    if rtype == want:
                        break
            if kind == "route" and body + 1 < end:
                dst_len = data[body + 1]
                name = f"{name or '0.0.0.0'}/{dst_len}" if dst_len or name else "default"
            elif kind == "neigh" and body < end and data[body] == 7:  # AF_BRIDGE: an FDB entry
                kind = "fdb"
                for rtype, val in _attrs(data, body + fixed, end):
                    if rtype == 2:
                        name = _ip(val)
            out.append(Event(ns, kind, action, name))
        off += (length + 3) & ~3
    return out


def _open_socket(ns: str | None, groups: int) -> socket.socket:
    """A raw rtnetlink socket made inside ``ns`` (this thread goes there and comes back)."""
    def make() -> socket.socket:
        s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_ROUTE)
        try:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _RCVBUF)
            s.bind((0, groups))
            s.setblocking(False)
        except BaseException:
            s.close()
            raise
        return s

    if ns is None:
        return make()
    with netns.entered(ns):
        return make()


class NetlinkWatcher:
    """Change events from one namespace (or several): thread-safe ``stop()``, merged bursts.

    ``NetlinkWatcher(ns)`` watches one namespace by name; ``watch(names)`` replaces the set
    (from any thread: the loop picks it up at once). Sockets are opened lazily in the thread
    that iterates, so the caller's thread never moves between namespaces.
    """

    def __init__(self, ns: str | Iterable[str] | None = None, *, groups: int = DEFAULT_GROUPS,
                 settle: float = 0.02, max_delay: float = 0.1) -> None:
        names = [ns] if isinstance(ns, str) else list(ns or [])
        self.groups = groups
        self.settle = settle
        self.max_delay = max_delay
        self._lock = threading.Lock()
        self._wanted: set[str] = set(names)
        self._socks: dict[str, tuple[socket.socket, int]] = {}  # ns -> (socket, inode)
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
                self._socks[name] = (_open_socket(name, self.groups), ino)
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
            s = self._socks[ns][0]
            while True:
                try:
                    data = s.recv(65536)
                except BlockingIOError:
                    break
                except OSError as e:
                    if e.errno == errno.ENOBUFS:  # overflow: events were lost
                        self.dropped += 1
                        out.append(Event(ns, RESYNC, "new"))
                        continue
                    raise
                if not data:
                    break
                out.extend(parse_events(ns, data))

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


# ---- raw dumps (topology needs veth peers, which the Netlink facade does not expose) ----------
@dataclass
class RawLink:
    index: int
    name: str
    kind: str
    state: str
    mac: str
    mtu: int
    master: int | None = None
    link: int | None = None  # IFLA_LINK: the peer's ifindex for a veth (in link_netnsid's ns)
    link_netnsid: int | None = None
    addresses: list[str] = field(default_factory=list)


_OPER = {0: "UNKNOWN", 1: "NOTPRESENT", 2: "DOWN", 3: "LOWERLAYERDOWN", 4: "TESTING",
         5: "DORMANT", 6: "UP"}


def _request(s: socket.socket, mtype: int, flags: int, body: bytes, seq: int) -> list[bytes]:
    msg = _NLMSG_HDR.pack(16 + len(body), mtype, flags, seq, 0) + body
    s.sendto(msg, (0, 0))
    out = []
    while True:
        data = s.recv(1 << 16)
        off = 0
        while off + 16 <= len(data):
            length, t, _f, sq, _pid = _NLMSG_HDR.unpack_from(data, off)
            if length < 16:
                return out
            if sq == seq:
                if t == NLMSG_DONE:
                    return out
                if t == NLMSG_ERROR:
                    code = struct.unpack_from("=i", data, off + 16)[0]
                    if code:
                        raise OSError(-code, os.strerror(-code))
                    return out
                out.append(data[off:off + length])
                if not flags & NLM_F_DUMP:
                    return out
            off += (length + 3) & ~3


class RawDumper:
    """Links (with veth peer indexes and netns ids) and addresses of one namespace, raw."""

    def __init__(self, ns: str | None) -> None:
        self.ns = ns
        self._seq = 0
        if ns is None:
            self._s = self._make()
        else:
            with netns.entered(ns):
                self._s = self._make()

    @staticmethod
    def _make() -> socket.socket:
        s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_ROUTE)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _RCVBUF)
        s.bind((0, 0))
        return s

    def close(self) -> None:
        self._s.close()

    def __enter__(self) -> "RawDumper":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _next(self) -> int:
        self._seq += 1
        return self._seq

    def links(self) -> list[RawLink]:
        msgs = _request(self._s, RTM_GETLINK, NLM_F_REQUEST | NLM_F_DUMP,
                        struct.pack("=BxHiII", 0, 0, 0, 0, 0), self._next())
        out: dict[int, RawLink] = {}
        for m in msgs:
            _fam, _type, index, _flags, _change = struct.unpack_from("=BxHiII", m, 16)
            link = RawLink(index=index, name="", kind="", state="UNKNOWN", mac="", mtu=0)
            for rtype, val in _attrs(m, 32, len(m)):
                if rtype == 3:
                    link.name = _cstr(val)
                elif rtype == 1:
                    link.mac = ":".join(f"{b:02x}" for b in val)
                elif rtype == 4:
                    link.mtu = struct.unpack("=I", val[:4])[0]
                elif rtype == 10:
                    link.master = struct.unpack("=I", val[:4])[0] or None
                elif rtype == 5:
                    link.link = struct.unpack("=I", val[:4])[0] or None
                elif rtype == 37:
                    link.link_netnsid = struct.unpack("=i", val[:4])[0]
                elif rtype == 16:
                    link.state = _OPER.get(val[0], str(val[0]))
                elif rtype == 18:  # IFLA_LINKINFO
                    for itype, ival in _attrs(val, 0, len(val)):
                        if itype == 1:
                            link.kind = _cstr(ival)
            if not link.kind:
                link.kind = "loopback" if link.name == "lo" else "device"
            out[index] = link
        amsgs = _request(self._s, RTM_GETADDR, NLM_F_REQUEST | NLM_F_DUMP,
                         struct.pack("=BBBBI", socket.AF_INET, 0, 0, 0, 0), self._next())
        for m in amsgs:
            _fam, plen, _fl, _scope, index = struct.unpack_from("=BBBBI", m, 16)
            addr = None
            for rtype, val in _attrs(m, 24, len(m)):
                if rtype == 2 or (rtype == 1 and addr is None):
                    addr = _ip(val)
            if addr and index in out:
                out[index].addresses.append(f"{addr}/{plen}")
        return list(out.values())

    def nsid_of(self, fd: int) -> int | None:
        """The id this namespace gives the namespace open at ``fd`` (None: not assigned)."""
        attr = struct.pack("=HHI", 8, 3, fd)  # NETNSA_FD
        try:
            msgs = _request(self._s, RTM_GETNSID, NLM_F_REQUEST,
                            struct.pack("=Bxxx", socket.AF_UNSPEC) + attr, self._next())
        except OSError:
            return None
        for m in msgs:
            for rtype, val in _attrs(m, 20, len(m)):
                if rtype == 1:
                    nsid = struct.unpack("=i", val[:4])[0]
                    return nsid if nsid >= 0 else None
        return None


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
    from cnmlab.firewall.iptables import IptablesFirewall

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
    from cnmlab.kernel import nsexec

    try:
        return nsexec.run(ns, ["ipvsadm", "-Ln"], check=False).stdout.strip() or "IPVS: empty"
    except CnmError as e:
        return f"IPVS: {e}"
