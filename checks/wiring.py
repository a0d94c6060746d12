"""How a lab is wired, read from the kernel: which veth end pairs with which, who holds an
address, and where the path from a sandbox to an address breaks.

Checks use it for two things. The ``link`` check's ``peer:`` asks which end pairs with which
(a name that exists and is a veth proves nothing: a typo'd peer and a second pair made in the
wrong namespace pass a name check). And a failed reachability check asks ``explain_path`` for
the first broken hop, so its explanation names what the kernel shows in *this* lab (no route,
a link down, the peer down, the address on another end, a router that does not forward)
instead of a list of bridge-lab suspects.

A veth's peer is given as (IFLA_LINK_NETNSID, IFLA_LINK): the peer's ifindex in the namespace
that *this* namespace calls by that id. The id is local to the asking namespace, so each lab
member is looked up with RTM_GETNSID to find which one it is.
"""
from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from cnmlab.kernel import nsexec
from cnmlab.checks.api import Target
from cnmlab.checks.nsref import NsRef
from cnmlab.errors import CnmError


@contextlib.contextmanager
def _netlink(ref: NsRef) -> Iterator[Any]:
    from cnmlab.kernel.netlink import Netlink

    with ref.opened() as fd:
        nl = Netlink(fd=fd)
    try:
        yield nl
    finally:
        nl.close()


def members(target: Target) -> dict[str, NsRef]:
    """Every namespace of the target by label: sandboxes, ``host:NAME``, ``upstream``."""
    out: dict[str, NsRef] = {}
    for name, h in target.hosts().items():
        out[f"host:{name}"] = h.ns
    for name, sb in target.sandboxes().items():
        if sb.ns not in out.values():  # host-driver sandboxes share their host's namespace
            out[name] = sb.ns
    up = target.upstream()
    if up is not None:
        out["upstream"] = up.ns
    return out


def pretty(label: str) -> str:
    """``host:host`` -> ``host``; labels as a learner reads them."""
    return label[5:] if label.startswith("host:") else label


@dataclass
class End:
    """One end of a link: which member, which interface."""

    member: str | None  # label; None: a namespace outside the lab
    name: str | None
    kind: str | None = None
    up: bool | None = None

    def __str__(self) -> str:
        where = pretty(self.member) if self.member else "a namespace outside the lab"
        return f"{self.name or '?'} in {where}"


def links_of(ref: NsRef) -> list[Any]:
    with _netlink(ref) as nl:
        return nl.links()


def veth_peer(target: Target, member: str, ifname: str) -> End | None:
    """The other end of veth ``ifname`` in ``member``; None when it is not a veth."""
    ns = members(target)
    ref = ns[member]
    with _netlink(ref) as nl:
        links = nl.links()
        me = next((l for l in links if l.name == ifname), None)
        if me is None or me.kind != "veth" or me.peer_index is None:
            return None
        if me.peer_netns_id is None:
            peer = next((l for l in links if l.index == me.peer_index), None)
            return End(member, peer.name if peer else None, peer and peer.kind,
                       peer is not None and peer.state != "DOWN")
        owner = None
        for label, other in ns.items():
            if other == ref:
                continue
            try:
                with other.opened() as fd:
                    got = nl._ip.get_netnsid(fd=fd)
            except (CnmError, OSError):
                continue
            if isinstance(got, dict) and got.get("nsid") == me.peer_netns_id:
                owner = label
                break
    if owner is None:
        return End(None, None)
    peer = next((l for l in links_of(ns[owner]) if l.index == me.peer_index), None)
    return End(owner, peer.name if peer else None, peer.kind if peer else None,
               peer is not None and peer.state != "DOWN")


def holders(target: Target, ip: str) -> list[End]:
    """Which member and interface carry the address ``ip`` (any prefix length)."""
    out = []
    for label, ref in members(target).items():
        try:
            links = links_of(ref)
        except CnmError:
            continue
        for l in links:
            if any(a.split("/")[0] == ip for a in l.addresses):
                out.append(End(label, l.name, l.kind, l.state != "DOWN"))
    return out


def route_get(ref: NsRef, ip: str) -> dict[str, Any] | str:
    """``ip route get`` inside the namespace: the route as a dict, or the kernel's error."""
    proc = nsexec.run(ref.fspath, ["ip", "-j", "route", "get", ip], check=False)
    if proc.returncode != 0:
        return (proc.stderr or proc.stdout).strip().splitlines()[-1] if (
            proc.stderr or proc.stdout).strip() else "no route"
    try:
        data = json.loads(proc.stdout)
        return data[0] if data else "no route"
    except (ValueError, IndexError):
        return "no route"


def _sysctl(ref: NsRef, key: str) -> str | None:
    from cnmlab.kernel import netns

    try:
        with ref.opened() as fd:
            with netns.entered(fd=fd):
                with open("/proc/sys/" + key.replace(".", "/")) as f:
                    return f.read().strip()
    except (OSError, CnmError):
        return None


def _link_state(ref: NsRef, ifname: str) -> tuple[str, bool]:
    """(operstate, admin up) of a link."""
    proc = nsexec.run(ref.fspath, ["ip", "-j", "link", "show", "dev", ifname], check=False)
    try:
        info = json.loads(proc.stdout)[0]
    except (ValueError, IndexError):
        return "ABSENT", False
    return info.get("operstate", "UNKNOWN"), "UP" in info.get("flags", [])


def explain_path(target: Target, src: str, ip: str) -> str | None:
    """The first broken hop from member ``src`` towards ``ip``, in the kernel's own terms.

    None when every hop this function can see looks fine (the cause is then further on:
    firewall, NAT, the far end's own route back), so the caller says something about those.
    """
    ns = members(target)
    if src not in ns:
        return None
    ref = ns[src]
    who = pretty(src)
    where = holders(target, ip)
    at = f" ({ip} is on {', '.join(str(h) for h in where)})" if where else ""
    route = route_get(ref, ip)
    if isinstance(route, str):
        if "unreachable" in route.lower():
            return (f"{who} has no route to {ip} (ip route: '{route}'): an address on the "
                    f"link towards it adds the on-link route, or add a route/default route"
                    f"{at}")
        return f"{who} cannot route to {ip}: {route}{at}"
    dev = route.get("dev")
    gateway = route.get("gateway")
    if dev is None or dev == "lo":
        return None
    oper, admin = _link_state(ref, dev)
    if not admin:
        return f"{dev} in {who} is down (ip link set {dev} up in {who})"
    peer = veth_peer(target, src, dev)
    if oper in ("LOWERLAYERDOWN", "DOWN") and peer is not None:
        return (f"{dev} in {who} has no carrier: its peer {peer} is down "
                f"(ip link set {peer.name} up there)")
    hop = gateway or ip
    if peer is not None and peer.member is not None:
        far = holders(target, hop)
        far_links = {(h.member, h.name) for h in far}
        peer_links = links_of(ns[peer.member])
        peer_link = next((l for l in peer_links if l.name == peer.name), None)
        master = peer_link.master if peer_link else None
        if (peer.member, peer.name) not in far_links and master is None:
            where_hop = (f"{hop} is on {', '.join(str(h) for h in far)}" if far
                         else f"no lab namespace has {hop}")
            return (f"{dev} in {who} pairs with {peer}, which does not have {hop}: "
                    f"{where_hop}. Check which end pairs with which (ip -d link; "
                    f"ip link show {dev} names its peer after the @)")
        if master is not None and not any(h.member == peer.member for h in far) and not far:
            return (f"{dev} in {who} is plugged into bridge {master} in {pretty(peer.member)}, "
                    f"but no lab namespace has {hop}")
    if gateway:
        router = next((h for h in holders(target, gateway)), None)
        if router is not None and router.member is not None and router.member != src:
            fwd = _sysctl(ns[router.member], "net.ipv4.ip_forward")
            dest = holders(target, ip)
            if fwd == "0" and not any(h.member == router.member for h in dest):
                return (f"{who} sends {ip} to its gateway {gateway} in "
                        f"{pretty(router.member)}, which does not forward "
                        f"(net.ipv4.ip_forward=0 there)")
    return None
