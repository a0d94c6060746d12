"""A fake of the netlink facade, so a driver's logic can be unit-tested without root.

In the spirit of pyroute2's own test fixtures: the calls drivers make (links, veth pairs,
bridges, addresses, routes, neighbours) act on in-memory namespaces with the kernel's rules
that drivers rely on (names are unique per namespace and at most 15 characters, deleting one
end of a veth deletes both, a master must exist, an address needs its link). It supplements
the real-kernel tests, never replaces them: ``tests/test_fake_netlink.py`` runs the same driver
sequence on both and compares what they report, so the fake cannot drift from the kernel.
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field, replace
from typing import Any

from cnmlab.driverapi import HostContext
from cnmlab.errors import KernelError, ObjectExists, ObjectNotFound
from cnmlab.kernel.netlink import IFNAMSIZ, LinkInfo, NeighInfo, RouteInfo
from cnmlab.model import Host


@dataclass
class FakeNamespace:
    name: str
    links: dict[str, LinkInfo] = field(default_factory=dict)
    peers: dict[str, tuple[str, str]] = field(default_factory=dict)  # veth -> (ns, peer name)
    routes: list[RouteInfo] = field(default_factory=list)
    neighbours: list[NeighInfo] = field(default_factory=list)


class FakeKernel:
    """Namespaces by name; ``FakeNetlink(kernel, ns)`` is a facade bound to one of them."""

    def __init__(self) -> None:
        self.namespaces: dict[str, FakeNamespace] = {}
        self._next_index = 2
        self._next_mac = 1

    def ns(self, name: str) -> FakeNamespace:
        if name not in self.namespaces:
            ns = self.namespaces[name] = FakeNamespace(name)
            ns.links["lo"] = LinkInfo(index=1, name="lo", kind="loopback", state="DOWN",
                                      mac="00:00:00:00:00:00", mtu=65536)
        return self.namespaces[name]

    def new_index(self) -> int:
        self._next_index += 1
        return self._next_index

    def new_mac(self) -> str:
        self._next_mac += 1
        n = self._next_mac
        return "aa:bb:cc:" + ":".join(f"{(n >> s) & 0xff:02x}" for s in (16, 8, 0))


class FakeNetlink:
    """The ``Netlink`` facade's driver-facing methods, over a ``FakeKernel`` namespace."""

    def __init__(self, kernel: FakeKernel, ns: str = "host") -> None:
        self.kernel = kernel
        self.ns = ns

    @property
    def _ns(self) -> FakeNamespace:
        return self.kernel.ns(self.ns)

    def close(self) -> None:
        pass

    def __enter__(self) -> "FakeNetlink":
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    # ---- links -------------------------------------------------------------------------
    def _new(self, ns: FakeNamespace, name: str, kind: str, mtu: int | None = None,
             mac: str | None = None) -> LinkInfo:
        if not name or len(name) > IFNAMSIZ or "/" in name or " " in name:
            raise KernelError(f"create {kind} {name} in {ns.name}: Invalid argument")
        if name in ns.links:
            raise ObjectExists(f"create {kind} {name} in {ns.name}: already exists")
        link = LinkInfo(index=self.kernel.new_index(), name=name, kind=kind, state="DOWN",
                        mac=mac or self.kernel.new_mac(), mtu=mtu or 1500)
        ns.links[name] = link
        return link

    def _get(self, name: str) -> LinkInfo:
        try:
            return self._ns.links[name]
        except KeyError:
            raise ObjectNotFound(f"link {name} not found in {self.ns}") from None

    def index(self, name: str, fresh: bool = False) -> int:
        return self._get(name).index

    def has_link(self, name: str) -> bool:
        return name in self._ns.links

    def add_bridge(self, name: str, mtu: int | None = None, mac: str | None = None) -> int:
        return self._new(self._ns, name, "bridge", mtu, mac).index

    def add_veth(self, name: str, peer: str, peer_ns_fd: int | None = None,
                 mtu: int | None = None, master: str | None = None, up: bool = False,
                 peer_mac: str | None = None, peer_ns: str | None = None) -> None:
        """``peer_ns`` names the fake namespace for the peer (a real fd means nothing here)."""
        if master is not None:
            self._get(master)
        other = self.kernel.ns(peer_ns) if peer_ns else self._ns
        if peer in other.links or (other is self._ns and peer == name):
            raise ObjectExists(f"create veth {name}/{peer} in {self.ns}: already exists")
        end = self._new(self._ns, name, "veth", mtu)
        end.master, end.state, end.admin_up = master, ("UP" if up else "DOWN"), up
        self._new(other, peer, "veth", mtu, peer_mac)
        self._ns.peers[name] = (other.name, peer)
        other.peers[peer] = (self._ns.name, name)

    def add_link(self, name: str, kind: str, **attrs: Any) -> int:
        return self._new(self._ns, name, kind, attrs.get("mtu"), attrs.get("address")).index

    def set_link(self, name: str, *, up: bool | None = None, master: str | None = None,
                 nomaster: bool = False, mtu: int | None = None, mac: str | None = None,
                 rename: str | None = None, ns_fd: int | None = None,
                 to_ns: str | None = None) -> None:
        """``to_ns`` names the fake namespace to move to (``ns_fd`` is a real kernel's)."""
        link = self._get(name)
        if master is not None:
            self._get(master)
            link.master = master
        if nomaster:
            link.master = None
        if up is not None:
            link.state, link.admin_up = ("UP" if up else "DOWN"), up
        if mtu is not None:
            link.mtu = mtu
        if mac is not None:
            link.mac = mac
        new_name = rename or name
        target = self.kernel.ns(to_ns) if to_ns else self._ns
        if (new_name, target.name) != (name, self._ns.name):
            if new_name in target.links:
                raise ObjectExists(f"set link {name} in {self.ns}: {new_name} already exists")
            del self._ns.links[name]
            target.links[new_name] = replace(link, name=new_name,
                                             master=link.master if target is self._ns else None)
            peer = self._ns.peers.pop(name, None)
            if peer:
                target.peers[new_name] = peer
                self.kernel.ns(peer[0]).peers[peer[1]] = (target.name, new_name)

    def delete_link(self, name: str) -> None:
        self._get(name)
        del self._ns.links[name]
        for slave in self._ns.links.values():
            if slave.master == name:
                slave.master = None
        peer = self._ns.peers.pop(name, None)
        if peer:  # one end of a veth takes the other with it
            other = self.kernel.ns(peer[0])
            other.links.pop(peer[1], None)
            other.peers.pop(peer[1], None)
        self._ns.routes = [r for r in self._ns.routes if r.dev != name]
        self._ns.neighbours = [n for n in self._ns.neighbours if n.dev != name]

    def links(self) -> list[LinkInfo]:
        return sorted(self._ns.links.values(), key=lambda l: l.index)

    # ---- addresses and routes ----------------------------------------------------------
    def add_address(self, link: str, cidr: str) -> None:
        ipaddress.ip_interface(cidr)
        target = self._get(link)
        if cidr in target.addresses:
            raise ObjectExists(f"add address {cidr} to {link} in {self.ns}: already exists")
        target.addresses.append(cidr)

    def addresses(self) -> list[tuple[int, str]]:
        return [(l.index, a) for l in self.links() for a in l.addresses]

    def add_route(self, dst: str = "default", gateway: str | None = None,
                  dev: str | None = None) -> None:
        if dev:
            self._get(dev)
        if any(r.dst == dst for r in self._ns.routes):
            raise ObjectExists(f"add route {dst} in {self.ns}: already exists")
        self._ns.routes.append(RouteInfo(dst=dst, gateway=gateway, dev=dev, scope="global"))

    def delete_default_route(self) -> None:
        self._ns.routes = [r for r in self._ns.routes if r.dst != "default"]

    def routes(self) -> list[RouteInfo]:
        return list(self._ns.routes)

    # ---- neighbours ----------------------------------------------------------------------
    def add_neighbour(self, link: str, ip: str, mac: str) -> None:
        self._get(link)
        self.delete_neighbour(link, ip, missing_ok=True)
        self._ns.neighbours.append(NeighInfo(ip=ip, mac=mac, dev=link, state="PERMANENT"))

    def delete_neighbour(self, link: str, ip: str, missing_ok: bool = False) -> None:
        before = len(self._ns.neighbours)
        self._ns.neighbours = [n for n in self._ns.neighbours if (n.dev, n.ip) != (link, ip)]
        if before == len(self._ns.neighbours) and not missing_ok:
            raise ObjectNotFound(f"delete neighbour {ip} on {link} in {self.ns}: no such entry")

    def neighbours(self) -> list[NeighInfo]:
        return list(self._ns.neighbours)


def fake_context(host: Host | None = None, kernel: FakeKernel | None = None) -> HostContext:
    """A driver's ``HostContext`` over a fake kernel: ``ctx.nl`` is a ``FakeNetlink``."""
    host = host or Host(name="h1", netns="host", public_ip="203.0.113.10")
    return HostContext(host, FakeNetlink(kernel or FakeKernel(), host.netns))  # type: ignore[arg-type]
