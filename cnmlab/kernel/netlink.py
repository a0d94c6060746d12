"""The only module that imports pyroute2: a small typed facade over rtnetlink.

Each ``Netlink`` object holds one rtnetlink socket opened *inside* a namespace (the socket stays
bound to the namespace it was created in), so a controller keeps one per namespace and never
forks. Netlink errors become ``KernelError`` naming the object and the errno text.

``EventSocket`` is the other half: change events (links, IPv4 addresses and routes, neighbours
and bridge FDB entries) from one namespace, decoded by pyroute2 into one ``Event`` each. A view
re-reads what it shows with ``Netlink`` when an event says *that* something changed.
"""
from __future__ import annotations

import errno
import ipaddress
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from pyroute2 import IPVS, IPRoute
from pyroute2.netlink import rtnl
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.rtnl.marshal import MarshalRtnl

from cnmlab.errors import FeatureMissing, KernelError, ObjectExists, ObjectNotFound
from cnmlab.kernel import netns

IFNAMSIZ = 15
IFF_UP = 0x1


@dataclass
class LinkInfo:
    index: int
    name: str
    kind: str
    state: str
    mac: str
    mtu: int
    master: str | None = None
    peer_netns_id: int | None = None  # IFLA_LINK_NETNSID: the namespace peer_index lives in
    addresses: list[str] = field(default_factory=list)
    # IFLA_LINK: a veth's peer ifindex (a macvlan's or VXLAN's parent), in this namespace or,
    # when peer_netns_id is set, in the namespace this one calls by that id (see ``nsid_of``)
    peer_index: int | None = None
    admin_up: bool = False  # IFF_UP: set up by someone (``state`` says whether it works)


@dataclass
class RouteInfo:
    dst: str
    gateway: str | None
    dev: str | None
    scope: str


@dataclass
class NeighInfo:
    ip: str
    mac: str | None
    dev: str
    state: str


@dataclass
class FdbInfo:
    mac: str
    dev: str
    master: str | None
    dst: str | None
    permanent: bool


_NUD = {0x01: "INCOMPLETE", 0x02: "REACHABLE", 0x04: "STALE", 0x08: "DELAY", 0x10: "PROBE",
        0x20: "FAILED", 0x40: "NOARP", 0x80: "PERMANENT"}
_NTF_SELF = 0x02
_SCOPE = {0: "global", 200: "site", 253: "link", 254: "host", 255: "nowhere"}


def check_ifname(name: str) -> None:
    if not name or len(name) > IFNAMSIZ or "/" in name or " " in name:
        raise ValueError(name)


def _kernel_error(e: NetlinkError, what: str) -> Exception:
    if e.code == errno.EEXIST:
        return ObjectExists(f"{what}: already exists")
    if e.code in (errno.ENODEV, errno.ENOENT):
        return ObjectNotFound(f"{what}: no such device or entry")
    if e.code == errno.EOPNOTSUPP:
        return FeatureMissing(f"{what}: the running kernel does not support this")
    return KernelError(f"{what}: {os.strerror(e.code) if e.code else e}")


class _Pinned:
    """pyroute2's IPRoute with every call made from inside one namespace.

    pyroute2 0.9 opens a socket per *thread*, lazily, in whatever namespace that thread is in
    at the time: an IPRoute made inside a lab namespace and then used from another thread
    would quietly change the root namespace. Entering the pinned namespace around every call
    (two setns(2), a few microseconds) makes the facade safe from any thread; generators are
    drained inside, since they would otherwise run after we left.
    """

    def __init__(self, fd: int) -> None:
        self._fd = fd
        with netns.entered(fd=fd):
            self._ip = IPRoute()

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._ip, name)
        if not callable(attr):
            return attr

        def pinned(*args: Any, **kwargs: Any) -> Any:
            with netns.entered(fd=self._fd):
                result = attr(*args, **kwargs)
                if hasattr(result, "__next__"):
                    result = list(result)
                return result

        return pinned

    def close(self) -> None:
        try:
            with netns.entered(fd=self._fd):
                self._ip.close()
        finally:
            os.close(self._fd)


class Netlink:
    """An rtnetlink session pinned to one namespace, usable from any thread.

    ``ns`` names a namespace under /run/netns; ``fd`` is an open namespace file (a PID's, a
    path's; it is duplicated); with neither, the namespace the calling thread is in now.
    """

    def __init__(self, ns: str | None = None, *, fd: int | None = None) -> None:
        self.ns = ns
        self._index: dict[str, int] = {}
        if ns is not None:
            pin = netns.open_fd(ns)
        elif fd is not None:
            pin = os.dup(fd)
        else:
            pin = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
        try:
            self._ip = _Pinned(pin)
        except BaseException:
            os.close(pin)
            raise

    def close(self) -> None:
        self._ip.close()

    def __enter__(self) -> "Netlink":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _call(self, what: str) -> Iterator[None]:
        try:
            yield
        except NetlinkError as e:
            raise _kernel_error(e, f"{what} in {self.ns or 'the root namespace'}") from None

    # ---- links -------------------------------------------------------------------------
    def _lookup(self, name: str, fresh: bool = False) -> int | None:
        """Name -> ifindex, remembered: a lookup costs a round trip and a decode.

        The cache only ever holds links this socket saw by name; renames, moves and deletions
        made through this object update it, and ``_set`` retries once with a fresh lookup if
        someone else changed a link behind our back (the kernel does not reuse ifindexes soon).
        """
        if not fresh and name in self._index:
            return self._index[name]
        if name == "lo" and self.ns is not None:
            self._index[name] = 1  # the loopback is always ifindex 1 in a namespace
            return 1
        try:
            idx = int(self._ip.link("get", ifname=name)[0]["index"])
        except NetlinkError as e:
            self._index.pop(name, None)
            if e.code in (errno.ENODEV, errno.ENOENT):
                return None
            raise _kernel_error(e, f"look up link {name} in {self.ns or 'the root namespace'}")
        self._index[name] = idx
        return idx

    def index(self, name: str, fresh: bool = False) -> int:
        found = self._lookup(name, fresh)
        if found is None:
            raise ObjectNotFound(f"link {name} not found in {self.ns or 'the root namespace'}")
        return found

    def has_link(self, name: str) -> bool:
        return self._lookup(name, fresh=True) is not None

    def add_bridge(self, name: str, mtu: int | None = None, mac: str | None = None) -> int:
        with self._call(f"create bridge {name}"):
            attrs: dict[str, Any] = {"ifname": name, "kind": "bridge"}
            if mtu:
                attrs["mtu"] = mtu
            if mac:
                attrs["address"] = mac
            self._ip.link("add", **attrs)
        return self.index(name)

    def add_veth(self, name: str, peer: str, peer_ns_fd: int | None = None,
                 mtu: int | None = None, master: str | None = None, up: bool = False,
                 peer_mac: str | None = None) -> None:
        """Create a veth pair in one request: the peer may go straight into another namespace
        with its MAC, and this end may be enslaved and brought up at birth (what ``ip link
        add ... master BR up`` does), which spares three round trips per endpoint."""
        peer_attrs: dict[str, Any] = {"ifname": peer}
        if peer_ns_fd is not None:
            peer_attrs["net_ns_fd"] = peer_ns_fd
        if peer_mac is not None:
            peer_attrs["address"] = peer_mac
        attrs: dict[str, Any] = {"ifname": name, "kind": "veth", "peer": peer_attrs}
        if mtu:
            attrs["mtu"] = mtu
            peer_attrs["mtu"] = mtu
        if master is not None:
            attrs["master"] = self.index(master)
        if up:
            attrs["state"] = "up"
        with self._call(f"create veth {name}/{peer}"):
            self._ip.link("add", **attrs)

    def add_macvlan(self, name: str, parent: str, mode: str = "bridge",
                    ns_fd: int | None = None, mac: str | None = None,
                    mtu: int | None = None) -> None:
        """A macvlan child of ``parent`` (a link here), born in ``ns_fd``'s namespace if given:
        one request instead of create + move, as ``ip link add ... netns NS`` does."""
        attrs: dict[str, Any] = {"ifname": name, "kind": "macvlan",
                                 "link": self.index(parent), "macvlan_mode": mode}
        self._child(attrs, ns_fd, mac, mtu)

    def add_ipvlan(self, name: str, parent: str, mode: int = 0, ns_fd: int | None = None,
                   mtu: int | None = None) -> None:
        """An ipvlan child (mode 0 l2, 1 l3, 2 l3s); it always has its parent's MAC."""
        attrs: dict[str, Any] = {"ifname": name, "kind": "ipvlan",
                                 "link": self.index(parent), "ipvlan_mode": mode}
        self._child(attrs, ns_fd, None, mtu)

    def _child(self, attrs: dict[str, Any], ns_fd: int | None, mac: str | None,
               mtu: int | None) -> None:
        if ns_fd is not None:
            attrs["net_ns_fd"] = ns_fd
        if mac is not None:
            attrs["address"] = mac
        if mtu:
            attrs["mtu"] = mtu
        with self._call(f"create {attrs['kind']} link {attrs['ifname']}"):
            self._ip.link("add", **attrs)

    def add_vlan(self, name: str, parent: str, vlan_id: int) -> int:
        """An 802.1Q sub-interface (``eth0.10``)."""
        return self.add_link(name, "vlan", link=self.index(parent), vlan_id=vlan_id)

    def link(self, name: str) -> LinkInfo | None:
        """One link by name (kind, MAC, state...), or None."""
        return next((l for l in self.links() if l.name == name), None)

    def add_link(self, name: str, kind: str, **attrs: Any) -> int:
        """Any other link kind (macvlan, vxlan, ...), for drivers that need one."""
        with self._call(f"create {kind} link {name}"):
            self._ip.link("add", ifname=name, kind=kind, **attrs)
        return self.index(name)

    def set_link(self, name: str, *, up: bool | None = None, master: str | None = None,
                 nomaster: bool = False, mtu: int | None = None, mac: str | None = None,
                 rename: str | None = None, ns_fd: int | None = None) -> None:
        idx = self.index(name)
        attrs: dict[str, Any] = {}
        if up is not None:
            attrs["state"] = "up" if up else "down"
        if master is not None:
            attrs["master"] = self.index(master)
        if nomaster:
            attrs["master"] = 0
        if mtu is not None:
            attrs["mtu"] = mtu
        if mac is not None:
            attrs["address"] = mac
        if rename is not None:
            attrs["ifname"] = rename
        if ns_fd is not None:
            attrs["net_ns_fd"] = ns_fd
        try:
            self._ip.link("set", index=idx, **attrs)
        except NetlinkError as e:
            if e.code != errno.ENODEV:
                raise _kernel_error(e, f"set link {name} in {self.ns or 'the root namespace'}")
            with self._call(f"set link {name}"):
                self._ip.link("set", index=self.index(name, fresh=True), **attrs)
        if rename is not None or ns_fd is not None:
            self._index.pop(name, None)
        if rename is not None and ns_fd is None:
            self._index[rename] = idx

    def set_hairpin(self, name: str, on: bool = True) -> None:
        with self._call(f"set hairpin on {name}"):
            self._ip.brport("set", index=self.index(name), hairpin_mode=1 if on else 0)

    def delete_link(self, name: str) -> None:
        with self._call(f"delete link {name}"):
            self._ip.link("del", index=self.index(name, fresh=True))
        self._index.pop(name, None)

    def links(self) -> list[LinkInfo]:
        with self._call("list links"):
            raw = list(self._ip.get_links())
        names = {m["index"]: m.get_attr("IFLA_IFNAME") for m in raw}
        out = []
        for m in raw:
            info = m.get_attr("IFLA_LINKINFO")
            kind = info.get_attr("IFLA_INFO_KIND") if info else None
            master = m.get_attr("IFLA_MASTER")
            out.append(LinkInfo(
                index=m["index"], name=m.get_attr("IFLA_IFNAME"),
                kind=kind or ("loopback" if m.get_attr("IFLA_IFNAME") == "lo" else "device"),
                state=(m.get_attr("IFLA_OPERSTATE") or "UNKNOWN"),
                mac=m.get_attr("IFLA_ADDRESS") or "", mtu=m.get_attr("IFLA_MTU") or 0,
                master=names.get(master) if master else None,
                peer_netns_id=m.get_attr("IFLA_LINK_NETNSID"),
                peer_index=m.get_attr("IFLA_LINK") or None,
                admin_up=bool(m["flags"] & IFF_UP)))
        by_index = {l.index: l for l in out}
        for a in self.addresses():
            if a[0] in by_index:
                by_index[a[0]].addresses.append(a[1])
        return out

    def nsid_of(self, fd: int) -> int | None:
        """The id this namespace gives the namespace open at ``fd`` (what ``peer_netns_id``
        values mean here), or None when it has given it none."""
        try:
            found = self._ip.get_netnsid(fd=fd)
        except NetlinkError:
            return None
        nsid = found.get("nsid") if found else None
        if nsid is not None and nsid >= 1 << 31:  # decoded unsigned; the kernel means -1 (none)
            nsid -= 1 << 32
        return nsid if nsid is not None and nsid >= 0 else None

    # ---- addresses and routes ----------------------------------------------------------
    def add_address(self, link: str, cidr: str) -> None:
        """With the broadcast address, as Docker's netlink library and ``ip addr add ... brd +``
        set it (below /31, where a subnet has one)."""
        iface = ipaddress.ip_interface(cidr)
        attrs: dict[str, Any] = {}
        if iface.version == 4 and iface.network.prefixlen < 31:
            attrs["broadcast"] = str(iface.network.broadcast_address)
        with self._call(f"add address {cidr} to {link}"):
            self._ip.addr("add", index=self.index(link), address=str(iface.ip),
                          prefixlen=iface.network.prefixlen, **attrs)

    def addresses(self) -> list[tuple[int, str]]:
        """(link index, address/prefix) for every IPv4 address."""
        with self._call("list addresses"):
            return [(m["index"], f"{m.get_attr('IFA_ADDRESS')}/{m['prefixlen']}")
                    for m in self._ip.get_addr(family=2)]

    def add_route(self, dst: str = "default", gateway: str | None = None,
                  dev: str | None = None) -> None:
        # proto boot (3), what ``ip route add`` and Docker's netlink library leave on a route
        attrs: dict[str, Any] = {"dst": "0.0.0.0/0" if dst == "default" else dst, "proto": 3}
        if gateway:
            attrs["gateway"] = gateway
        if dev:
            attrs["oif"] = self.index(dev)
            if not gateway:
                attrs["scope"] = 253  # a device route: on-link, as `ip route add ... dev` makes
        with self._call(f"add route {dst}"):
            self._ip.route("add", **attrs)

    def delete_default_route(self) -> None:
        with self._call("delete default route"):
            self._ip.route("del", dst="0.0.0.0/0")

    def routes(self) -> list[RouteInfo]:
        names = {l.index: l.name for l in self._links_min()}
        out = []
        with self._call("list routes"):
            raw = list(self._ip.get_routes(family=2, table=254))
        for m in raw:
            dst = m.get_attr("RTA_DST")
            out.append(RouteInfo(
                dst=f"{dst}/{m['dst_len']}" if dst else "default",
                gateway=m.get_attr("RTA_GATEWAY"), dev=names.get(m.get_attr("RTA_OIF")),
                scope=_SCOPE.get(m["scope"], str(m["scope"]))))
        return out

    def _links_min(self) -> list[LinkInfo]:
        with self._call("list links"):
            return [LinkInfo(index=m["index"], name=m.get_attr("IFLA_IFNAME"), kind="",
                             state="", mac="", mtu=0) for m in self._ip.get_links()]

    # ---- neighbours and FDB ------------------------------------------------------------
    def neighbours(self, link: str | None = None) -> list[NeighInfo]:
        """The IPv4 neighbour table; with ``link``, only that link's entries (no dump of the
        links to name them: an overlay's peer check reads vxlan0's alone, often)."""
        names = self._names_for(link)
        with self._call("list neighbours"):
            raw = list(self._ip.get_neighbours(family=2))
        return [NeighInfo(ip=m.get_attr("NDA_DST"), mac=m.get_attr("NDA_LLADDR"),
                          dev=names.get(m["ifindex"], "?"),
                          state=_NUD.get(m["state"], hex(m["state"]))) for m in raw
                if link is None or m["ifindex"] in names]

    def _names_for(self, link: str | None) -> dict[int, str]:
        """ifindex -> name: of every link, or of ``link`` only (none if it is gone)."""
        if link is None:
            return {l.index: l.name for l in self._links_min()}
        idx = self._lookup(link, fresh=True)
        return {idx: link} if idx is not None else {}

    def add_neighbour(self, link: str, ip: str, mac: str) -> None:
        """A PERMANENT entry (``ip neigh replace IP lladdr MAC dev LINK nud permanent``).

        Replace, not add: a peer that moved (new MAC) must overwrite its old entry.
        """
        with self._call(f"add neighbour {ip} on {link}"):
            self._ip.neigh("replace", dst=ip, lladdr=mac, ifindex=self.index(link),
                           state=0x80)

    def delete_neighbour(self, link: str, ip: str) -> None:
        with self._call(f"delete neighbour {ip} on {link}"):
            self._ip.neigh("del", dst=ip, ifindex=self.index(link))

    def flush_neighbours(self) -> None:
        with self._call("flush neighbours"):
            for m in list(self._ip.get_neighbours(family=2)):
                if m["state"] & 0x80:  # keep PERMANENT entries: drivers own them
                    continue
                try:
                    self._ip.neigh("del", dst=m.get_attr("NDA_DST"), ifindex=m["ifindex"])
                except NetlinkError:
                    pass

    def add_fdb(self, link: str, mac: str, dst: str) -> None:
        """A permanent forwarding entry on a VXLAN device: ``bridge fdb replace MAC dev LINK
        dst VTEP self permanent``, what overlay's peerAdd programs for a remote endpoint.

        Replace, not append: a VXLAN FDB may hold several destinations for one MAC (flooding
        lists), and a peer that moved to another VTEP must not keep its old one.
        """
        with self._call(f"add fdb {mac} dst {dst} on {link}"):
            self._ip.fdb("replace", ifindex=self.index(link), lladdr=mac, dst=dst,
                         state=0x80, flags=_NTF_SELF)

    def delete_fdb(self, link: str, mac: str, dst: str | None = None) -> None:
        attrs: dict[str, Any] = {"ifindex": self.index(link), "lladdr": mac,
                                 "flags": _NTF_SELF}
        if dst:
            attrs["dst"] = dst
        with self._call(f"delete fdb {mac} on {link}"):
            self._ip.fdb("del", **attrs)

    def vxlan(self, name: str) -> dict[str, Any]:
        """A VXLAN link's attributes as ``ip -d link show`` prints them (id, port, flags)."""
        with self._call(f"show vxlan {name}"):
            msg = self._ip.link("get", index=self.index(name, fresh=True))[0]
        info = msg.get_attr("IFLA_LINKINFO")
        data = info.get_attr("IFLA_INFO_DATA") if info else None
        if data is None or info.get_attr("IFLA_INFO_KIND") != "vxlan":
            raise ObjectNotFound(f"{name} in {self.ns or 'the root namespace'} is not a vxlan link")
        return {"id": data.get_attr("IFLA_VXLAN_ID"), "port": data.get_attr("IFLA_VXLAN_PORT"),
                "learning": bool(data.get_attr("IFLA_VXLAN_LEARNING")),
                "proxy": bool(data.get_attr("IFLA_VXLAN_PROXY")),
                "l2miss": bool(data.get_attr("IFLA_VXLAN_L2MISS")),
                "l3miss": bool(data.get_attr("IFLA_VXLAN_L3MISS")),
                "mtu": msg.get_attr("IFLA_MTU")}

    def fdb(self, link: str | None = None) -> list[FdbInfo]:
        """The bridge FDB; with ``link``, only the entries on that link (``master`` is then
        not named: the links are not dumped)."""
        names = self._names_for(link)
        out = []
        with self._call("list bridge fdb"):
            raw = list(self._ip.fdb("dump"))
        for m in raw:
            if link is not None and m["ifindex"] not in names:
                continue
            master = m.get_attr("NDA_MASTER")
            out.append(FdbInfo(mac=m.get_attr("NDA_LLADDR"), dev=names.get(m["ifindex"], "?"),
                               master=names.get(master) if master else None,
                               dst=m.get_attr("NDA_DST"), permanent=bool(m["state"] & 0x80)))
        return out


def ipvs_answers() -> bool:
    """Whether IPVS answers in the calling thread's namespace.

    Asking for the "IPVS" generic-netlink family makes the kernel load ``ip_vs`` when it is a
    module (its alias ``net-pf-16-proto-16-family-IPVS``), so a modular kernel is not mistaken
    for one without IPVS, as looking for ``/proc/net/ip_vs`` alone would.
    """
    try:
        sock = IPVS()
    except (NetlinkError, OSError):
        return False
    sock.close()
    return True


# ---- change events ---------------------------------------------------------------------------
LINK_EVENTS = rtnl.RTMGRP_LINK
ADDR_EVENTS = rtnl.RTMGRP_IPV4_IFADDR
ROUTE_EVENTS = rtnl.RTMGRP_IPV4_ROUTE
NEIGH_EVENTS = rtnl.RTMGRP_NEIGH  # neighbours and bridge/VXLAN FDB entries
EVENT_GROUPS = LINK_EVENTS | ADDR_EVENTS | ROUTE_EVENTS | NEIGH_EVENTS
RESYNC = "resync"  # Event.kind when the kernel dropped messages (ENOBUFS): re-read everything
_EVENT_TYPES = {rtnl.RTM_NEWLINK: ("link", "new"), rtnl.RTM_DELLINK: ("link", "del"),
                rtnl.RTM_NEWADDR: ("addr", "new"), rtnl.RTM_DELADDR: ("addr", "del"),
                rtnl.RTM_NEWROUTE: ("route", "new"), rtnl.RTM_DELROUTE: ("route", "del"),
                rtnl.RTM_NEWNEIGH: ("neigh", "new"), rtnl.RTM_DELNEIGH: ("neigh", "del")}


@dataclass(frozen=True)
class Event:
    """One kernel change: kind is link/addr/route/neigh/fdb (or "netns", RESYNC), action
    new/del, name what names the object (link name, address, route destination, neighbour
    address, FDB MAC)."""

    ns: str
    kind: str
    action: str
    name: str = ""

    def __str__(self) -> str:
        return f"{self.ns}: {self.action} {self.kind} {self.name}".rstrip()


def _event(ns: str, msg: Any) -> Event | None:
    known = _EVENT_TYPES.get(msg["header"]["type"])
    if known is None:
        return None
    kind, action = known
    if kind == "link":
        name = msg.get_attr("IFLA_IFNAME") or ""
    elif kind == "addr":
        name = msg.get_attr("IFA_LOCAL") or msg.get_attr("IFA_ADDRESS") or ""
    elif kind == "route":
        dst, plen = msg.get_attr("RTA_DST"), msg["dst_len"]
        name = f"{dst or '0.0.0.0'}/{plen}" if plen or dst else "default"
    elif msg["family"] == socket.AF_BRIDGE:  # a neighbour message about a bridge/VXLAN FDB
        kind, name = "fdb", msg.get_attr("NDA_LLADDR") or ""
    else:
        name = msg.get_attr("NDA_DST") or ""
    return Event(ns, kind, action, str(name))


def events_from(ns: str, data: bytes) -> list[Event]:
    """The events in one datagram read from an rtnetlink multicast socket."""
    return [e for e in (_event(ns, m) for m in MarshalRtnl().parse(data)) if e is not None]


class EventSocket:
    """Change events of one namespace, from an rtnetlink socket bound to ``groups``.

    The socket is made *inside* ``ns`` (the calling thread goes there and comes back) and stays
    bound to it; it is non-blocking, so many of them can share one ``select``. ``read`` drains
    what is queued. A full receive buffer (a flood) loses events: that is reported as one
    ``RESYNC`` event, which means "re-read everything".
    """

    def __init__(self, ns: str | None, groups: int = EVENT_GROUPS,
                 rcvbuf: int = 1 << 20) -> None:
        self.ns = ns or ""

        def make() -> socket.socket:
            s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC,
                              socket.NETLINK_ROUTE)
            try:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
                s.bind((0, groups))
                s.setblocking(False)
            except BaseException:
                s.close()
                raise
            return s

        if ns is None:
            self._sock = make()
        else:
            with netns.entered(ns):
                self._sock = make()
        self._marshal = MarshalRtnl()

    def fileno(self) -> int:
        return self._sock.fileno()

    def read(self) -> list[Event]:
        out: list[Event] = []
        while True:
            try:
                data = self._sock.recv(1 << 16)
            except BlockingIOError:
                return out
            except OSError as e:
                if e.errno == errno.ENOBUFS:  # overflow: events were lost
                    out.append(Event(self.ns, RESYNC, "new"))
                    continue
                raise
            if not data:
                return out
            for msg in self._marshal.parse(data):
                event = _event(self.ns, msg)
                if event is not None:
                    out.append(event)

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> "EventSocket":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
