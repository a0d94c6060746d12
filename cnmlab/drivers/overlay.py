"""The overlay driver: one L2 segment across hosts, a VXLAN tunnel between their underlay NICs.

Built as Docker 20.10's ``drivers/overlay`` builds it on each host (docker-fidelity.md §4):

* per network a namespace (Docker's ``1-<10 chars of the id>``; here prefixed with the host's
  namespace, since every host of a lab shares one /run/netns) holding bridge ``br0`` with the
  gateway address, and ``vxlan0``: created in the *host* namespace as ``vx-<vni 6 hex>-<id5>``
  and then moved in, so its UDP socket stays on the host's underlay while the device sits on
  ``br0``. UDP 4789, VNI from 4096 (allocated cluster-wide), learning, proxy, l2miss and
  l3miss on (as ``createVxlan`` sets them), MTU 1500 - 50 = 1450 (the VXLAN, UDP, IP and inner Ethernet headers).
* per endpoint a veth: the host end (``veth<7 hex>``) on ``br0``, the container end becomes
  ``eth<N>`` with MAC ``02:42:<IPv4>``.
* per remote endpoint (``peer_add``) a PERMANENT neighbour entry (IP -> MAC on vxlan0) and a
  permanent FDB entry (MAC -> remote VTEP), as ``peerdb.go`` programs them, and nothing else: no
  multicast group, no flooding (learning is on, but it learns only from frames that arrive,
  and nothing is sent to an unknown VTEP). An address nobody announced stays unreachable.
* no gateway of its own: a container gets its default route from a second endpoint on
  ``docker_gwbridge`` (the controller does that for ``Capability.egress_bridge``).

The agent of each host calls ``create_network`` for every network the control plane declares
and ``peer_add``/``peer_delete`` for every endpoint the other hosts publish; the lab process may
create the same network for a ``docker run``. Both adopt what the other made (a per-host lock
serialises them), so the driver's state is the kernel's and nothing else.
"""
from __future__ import annotations

import ipaddress
import os
import time
from typing import TYPE_CHECKING

from cnmlab.kernel import features, netns
from cnmlab.driverapi import GLOBAL, Capability, HostContext, JoinInfo
from cnmlab.drivers import ipsec
from cnmlab.drivers.bridge import docker_mac, veth_name
from cnmlab.errors import InvalidInput, ObjectExists, ObjectNotFound

if TYPE_CHECKING:
    from cnmlab.cluster import Cluster, Peer
    from cnmlab.model import Endpoint, Host, Network, Sandbox

OPT_VNI = "com.docker.network.driver.overlay.vxlanid_list"
OPT_ENCRYPTED = ipsec.OPT_ENCRYPTED
VXLAN_PORT = 4789
VNI_FIRST = 4096
VNI_LAST = (1 << 24) - 1
UNDERLAY_MTU = 1500
VXLAN_OVERHEAD = 50  # outer IPv4 20 + UDP 8 + VXLAN 8 + inner Ethernet 14
BRIDGE = "br0"
VXLAN = "vxlan0"


def overlay_ns(host: "Host", net: "Network") -> str:
    """The network's namespace on this host: Docker's ``1-<id10>``, under the host's name."""
    return f"{host.netns}.1-{net.id[:10]}"


def vxlan_name(vni: int, net_id: str) -> str:
    """The name vxlan0 has before it moves into the overlay namespace (``ov_network.go``)."""
    return f"vx-{vni:06x}-{net_id[:5]}"


def vni_of(net: "Network") -> int:
    try:
        return int(net.options[OPT_VNI].split(",")[0])
    except (KeyError, ValueError):
        raise InvalidInput(f"network {net.name}: overlay needs a VNI ({OPT_VNI}); the control "
                           f"plane allocates it when the network is declared") from None


def encrypted(net: "Network") -> bool:
    """``--opt encrypted`` (any value, as Docker reads it: the key's presence)."""
    return OPT_ENCRYPTED in net.options and net.options[OPT_ENCRYPTED].lower() not in (
        "false", "0", "no", "off")


def inner_mtu(net: "Network") -> int:
    mtu = UNDERLAY_MTU - VXLAN_OVERHEAD
    return mtu - ipsec.ESP_OVERHEAD if encrypted(net) else mtu


class OverlayDriver:
    name = "overlay"
    capability = Capability(data_scope=GLOBAL, connectivity_scope=GLOBAL, gateway=False,
                            embedded_dns=True, egress_bridge=True,
                            kernel_features=("veth", "bridge", "vxlan"))

    # ---- cluster-wide allocation (swarm's NetworkAllocate) -------------------------------
    def network_allocate(self, cluster: "Cluster", net: "Network") -> dict[str, str]:
        opts: dict[str, str] = {}
        if encrypted(net):
            features.require(("ipsec",), f"network {net.name} (--opt encrypted)")
            opts[ipsec.OPT_KEY] = ipsec.cluster_key(cluster)
        opts[OPT_VNI] = str(cluster.allocate_id("vni", net.id, VNI_FIRST, VNI_LAST))
        return opts

    def network_free(self, cluster: "Cluster", net: "Network") -> None:
        cluster.release_ids("vni", net.id)

    # ---- the network's part on this host -------------------------------------------------
    def create_network(self, ctx: HostContext, net: Network) -> None:
        vni = vni_of(net)
        if encrypted(net):
            features.require(("ipsec",), f"network {net.name} (--opt encrypted)")
        net.mtu = inner_mtu(net)
        net.device = BRIDGE
        ns = net.netns = overlay_ns(ctx.host, net)
        with netns.locked(ctx.host.netns):
            if netns.exists(ns) and self._complete(ctx, ns):
                return  # the agent (or the lab) made it already: adopt it
            if netns.exists(ns):  # half-made (an agent killed while building it): start again
                ctx.forget_netlink(ns)  # its socket would still see the old namespace
                netns.delete(ns)
            ctx.new_namespace(ns)
            onl = ctx.netlink(ns)
            onl.add_bridge(BRIDGE, mtu=net.mtu)
            prefix = ipaddress.IPv4Network(net.subnet or "").prefixlen
            onl.add_address(BRIDGE, f"{net.gateway}/{prefix}")
            onl.set_link(BRIDGE, up=True)
            tmp = vxlan_name(vni, net.id)
            if ctx.nl.has_link(tmp):  # left in the host by the same kind of interruption
                ctx.nl.delete_link(tmp)
            self._add_vxlan(ctx, tmp, vni, net.mtu)
            ctx.undo(lambda: ctx.nl.delete_link(tmp) if ctx.nl.has_link(tmp) else None)
            fd = netns.open_fd(ns)
            try:
                ctx.nl.set_link(tmp, ns_fd=fd)
            finally:
                os.close(fd)
            onl.set_link(tmp, rename=VXLAN, master=BRIDGE, up=True)
            if encrypted(net):
                ipsec.prepare(ctx, vni)
                ctx.undo(lambda: ipsec.remove(ctx, vni))

    @staticmethod
    def _add_vxlan(ctx: HostContext, name: str, vni: int, mtu: int) -> None:
        """The VXLAN device, in the host's namespace. A namespace just deleted (a half-made
        one rebuilt) is freed by the kernel asynchronously, and until then its old vxlan0
        still holds the VNI on this host's UDP port: wait for it, briefly."""
        deadline = time.monotonic() + 30  # seconds on a loaded machine, normally ms
        while True:
            try:
                ctx.nl.add_link(name, "vxlan", vxlan_id=vni, vxlan_port=VXLAN_PORT,
                                vxlan_learning=1, vxlan_proxy=1, vxlan_l2miss=1,
                                vxlan_l3miss=1, mtu=mtu)
                return
            except ObjectExists:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.02)

    @staticmethod
    def _complete(ctx: HostContext, ns: str) -> bool:
        onl = ctx.netlink(ns)
        return onl.has_link(BRIDGE) and onl.has_link(VXLAN)

    def delete_network(self, ctx: HostContext, net: Network) -> None:
        ns = overlay_ns(ctx.host, net)
        with netns.locked(ctx.host.netns):
            vteps = {v for _, v in self.peers_programmed(ctx, net).values() if v}
            ctx.forget_netlink(ns)
            netns.delete(ns)  # br0, vxlan0 and any veth host end go with it
            if encrypted(net):
                ipsec.remove(ctx, vni_of(net))
                for vtep in vteps:
                    self._forget_vtep_if_unused(ctx, net, vtep)

    # ---- endpoints -----------------------------------------------------------------------
    def create_endpoint(self, ctx: HostContext, net: Network, ep: Endpoint) -> None:
        ns = overlay_ns(ctx.host, net)
        if not netns.exists(ns):
            raise ObjectNotFound(f"network {net.name}: its overlay namespace {ns} is gone from "
                                 f"host {ctx.host.name}")
        ep.mac = docker_mac(ep.ip or "")
        host_end, container_end = veth_name(), veth_name()
        target = ctx.joining.netns if ctx.joining and ctx.joining.netns else ctx.host.netns
        fd = netns.open_fd(target)
        onl = ctx.netlink(ns)
        try:  # the container end goes straight where it will live; the host end onto br0
            onl.add_veth(host_end, container_end, peer_ns_fd=fd, mtu=net.mtu, master=BRIDGE,
                         up=True, peer_mac=ep.mac)
        finally:
            os.close(fd)
        ctx.undo(lambda: onl.delete_link(host_end) if onl.has_link(host_end) else None)
        ep.host_ifname = host_end
        ep.driver_data["src"] = container_end
        if target != ctx.host.netns:
            ep.driver_data["src_ns"] = target

    def delete_endpoint(self, ctx: HostContext, net: Network, ep: Endpoint) -> None:
        ns = overlay_ns(ctx.host, net)
        if ep.host_ifname and netns.exists(ns):
            onl = ctx.netlink(ns)
            if onl.has_link(ep.host_ifname):
                onl.delete_link(ep.host_ifname)

    def join(self, ctx: HostContext, net: Network, ep: Endpoint, sb: Sandbox) -> JoinInfo:
        return JoinInfo(src_name=ep.driver_data["src"], dst_prefix="eth",
                        src_ns=ep.driver_data.get("src_ns"))

    def leave(self, ctx: HostContext, net: Network, ep: Endpoint, sb: Sandbox) -> None:
        pass

    # ---- peers (PeerAware) -----------------------------------------------------------------
    def peer_add(self, ctx: HostContext, net: Network, peer: "Peer") -> None:
        onl = ctx.netlink(overlay_ns(ctx.host, net))
        onl.add_neighbour(VXLAN, peer.ip.split("/")[0], peer.mac)
        onl.add_fdb(VXLAN, peer.mac, peer.vtep)
        if encrypted(net):
            ipsec.add_peer(ctx, net.options[ipsec.OPT_KEY], peer.vtep)

    def peer_delete(self, ctx: HostContext, net: Network, peer: "Peer") -> None:
        onl = ctx.netlink(overlay_ns(ctx.host, net))
        for action in (lambda: onl.delete_neighbour(VXLAN, peer.ip.split("/")[0]),
                       lambda: onl.delete_fdb(VXLAN, peer.mac, peer.vtep or None)):
            try:
                action()
            except ObjectNotFound:
                pass  # already gone: deleting is idempotent
        if encrypted(net) and peer.vtep:
            self._forget_vtep_if_unused(ctx, None, peer.vtep)

    def _forget_vtep_if_unused(self, ctx: HostContext, gone: "Network | None",
                               vtep: str) -> None:
        """Drop the SAs and policy towards ``vtep`` once no encrypted network here still
        has an endpoint behind it."""
        for other in ctx.host.networks.values():
            if other is gone or other.driver != self.name or not encrypted(other):
                continue
            if any(v == vtep for _, v in self.peers_programmed(ctx, other).values()):
                return
        ipsec.remove_peer(ctx, vtep)

    def peers_programmed(self, ctx: HostContext,
                         net: Network) -> dict[str, tuple[str, str | None]]:
        """What vxlan0 holds now: IP -> (MAC, VTEP), read back from the kernel."""
        ns = overlay_ns(ctx.host, net)
        if not netns.exists(ns):
            return {}
        onl = ctx.netlink(ns)
        vteps = {f.mac: f.dst for f in onl.fdb(VXLAN) if f.dst and f.permanent}
        return {n.ip: (n.mac or "", vteps.get(n.mac or ""))
                for n in onl.neighbours(VXLAN) if n.state == "PERMANENT"}
