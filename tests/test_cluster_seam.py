"""The global-scope seam: one address space across hosts and peers through the control plane.

A fake global driver (a bridge per network per host; a remote endpoint becomes a PERMANENT
neighbour entry on it, as overlay's peerAdd programs vxlan0) is enough to show that a network
declared once spans the lab's hosts, that its addresses never collide across hosts, and that
each host programs its own kernel from what the store holds, converging after a restart.
The in-memory store stands in for etcd here; nothing crosses between hosts but the store.
"""
from __future__ import annotations

import ipaddress
import threading

import pytest

from cnmlab import drivers
from cnmlab.cluster import Cluster, GlobalIpam, MemoryStore, Peer
from cnmlab.driverapi import GLOBAL, Capability, HostContext, JoinInfo
from cnmlab.drivers.bridge import docker_mac, random_docker_mac, veth_name
from cnmlab.errors import AddressInUse, InvalidInput, PoolOverlap
from cnmlab.kernel.netlink import Netlink
from cnmlab.lab import Lab
from cnmlab.model import Endpoint, Network, Sandbox


class FakeOverlay:
    name = "fakeoverlay"
    capability = Capability(data_scope=GLOBAL, connectivity_scope=GLOBAL, gateway=True,
                            embedded_dns=True)

    def create_network(self, ctx: HostContext, net: Network) -> None:
        net.device = f"fo-{net.id[:8]}"
        # a fixed MAC, as libnetwork gives its bridges: were the kernel to take a new port's
        # MAC, the address change would flush every neighbour entry, permanent ones included
        ctx.nl.add_bridge(net.device, mac=random_docker_mac())
        ctx.undo(lambda: ctx.nl.delete_link(net.device or ""))
        prefix = ipaddress.IPv4Network(net.subnet or "").prefixlen
        ctx.nl.add_address(net.device, f"{net.gateway}/{prefix}")
        # a bridge whose MAC follows its ports changes it when a lower one joins, and the
        # kernel then flushes every neighbour entry on it, PERMANENT ones too: pin it
        ctx.nl.set_link(net.device, up=True, mac="02:42:00:00:00:01")

    def delete_network(self, ctx: HostContext, net: Network) -> None:
        ctx.nl.delete_link(net.device or "")

    def create_endpoint(self, ctx: HostContext, net: Network, ep: Endpoint) -> None:
        ep.mac = docker_mac(ep.ip or "")
        ep.host_ifname, ep.driver_data["src"] = veth_name(), veth_name()
        ctx.nl.add_veth(ep.host_ifname, ep.driver_data["src"], master=net.device, up=True,
                        peer_mac=ep.mac)
        ctx.undo(lambda: ctx.nl.delete_link(ep.host_ifname or ""))

    def delete_endpoint(self, ctx: HostContext, net: Network, ep: Endpoint) -> None:
        if ep.host_ifname and ctx.nl.has_link(ep.host_ifname):
            ctx.nl.delete_link(ep.host_ifname)

    def join(self, ctx: HostContext, net: Network, ep: Endpoint, sb: Sandbox) -> JoinInfo:
        return JoinInfo(src_name=ep.driver_data["src"])

    def leave(self, ctx: HostContext, net: Network, ep: Endpoint, sb: Sandbox) -> None:
        pass

    def peer_add(self, ctx: HostContext, net: Network, peer: Peer) -> None:
        ctx.nl.add_neighbour(net.device or "", peer.ip.split("/")[0], peer.mac)

    def peer_delete(self, ctx: HostContext, net: Network, peer: Peer) -> None:
        ctx.nl.delete_neighbour(net.device or "", peer.ip.split("/")[0])

    def peers_programmed(self, ctx: HostContext, net: Network) -> dict[str, tuple[str, None]]:
        return {n.ip: (n.mac or "", None) for n in ctx.nl.neighbours()
                if n.dev == net.device and n.state == "PERMANENT"}


@pytest.fixture
def fake_overlay():
    drivers.register("fakeoverlay", FakeOverlay)
    yield
    drivers.unregister("fakeoverlay")


def permanent_neighbours(ns: str, dev: str) -> dict[str, str]:
    with Netlink(ns) as nl:
        return {n.ip: n.mac for n in nl.neighbours() if n.dev == dev and n.state == "PERMANENT"}


@pytest.mark.kernel
def test_global_network_spans_hosts_and_peers_follow_the_store(lab_name, fake_overlay):
    cluster = Cluster(MemoryStore(), f"/cnmlab/{lab_name}")
    with Lab(lab_name, cluster=cluster) as lab:
        h1, h2 = lab.add_host("h1"), lab.add_host("h2")
        net = lab.network_create("ov", "fakeoverlay")
        n1, n2 = h1.networks()["ov"], h2.networks()["ov"]
        assert n1.id == n2.id == net.id and n1.subnet == n2.subnet == "10.0.0.0/24"
        assert n1.scope == "global" and n1.gateway == "10.0.0.1"
        a = h1.run("a1", "ov")
        b = h2.run("b1", "ov")
        c = h2.run("c1", "ov")
        assert [a.ip(), b.ip(), c.ip()] == ["10.0.0.2", "10.0.0.3", "10.0.0.4"]
        assert len(cluster.peers(net.id)) == 3
        assert h1.sync_peers() == (2, 0)
        assert h2.sync_peers() == (1, 0)
        assert permanent_neighbours(h1.netns, n1.device) == {
            "10.0.0.3": "02:42:0a:00:00:03", "10.0.0.4": "02:42:0a:00:00:04"}
        assert permanent_neighbours(h2.netns, n2.device) == {"10.0.0.2": "02:42:0a:00:00:02"}
        assert h1.sync_peers() == (0, 0)  # in sync: nothing to do

        h2.rm("c1")
        assert h1.sync_peers() == (0, 1)
        assert permanent_neighbours(h1.netns, n1.device) == {"10.0.0.3": "02:42:0a:00:00:03"}
        # the freed address goes back to the one global space
        assert h1.run("d1", "ov").ip() == "10.0.0.4"

        # an agent that restarts (a new process reading its saved state) converges
        h2.run("e1", "ov")
        again = Lab.open(lab_name, cluster=cluster)
        assert again.host("h1").sync_peers() == (1, 0)
        assert set(permanent_neighbours(h1.netns, n1.device)) == {"10.0.0.3", "10.0.0.5"}


@pytest.mark.kernel
def test_global_network_needs_a_control_plane(lab, fake_overlay):
    lab.add_host("h1")
    with pytest.raises(InvalidInput, match="needs a control plane"):
        lab.network_create("ov", "fakeoverlay")
    with pytest.raises(InvalidInput, match="local-scope"):
        lab.network_create("br", "bridge")


def test_global_ipam_never_hands_one_address_to_two_hosts():
    store = MemoryStore()
    ipam = GlobalIpam(store, "/lab/ipam/")
    assert ipam.request_pool("net1") == "10.0.0.0/24"
    assert ipam.request_pool("net2") == "10.0.1.0/24"
    with pytest.raises(PoolOverlap):
        ipam.request_pool("net3", "10.0.1.0/25")
    got: list[str] = []

    def host() -> None:  # each "host" its own client of the same store
        mine = GlobalIpam(store, "/lab/ipam/")
        for _ in range(40):
            got.append(mine.request_address("net1"))

    threads = [threading.Thread(target=host) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(got) == 160 and len(set(got)) == 160
    with pytest.raises(AddressInUse):
        ipam.request_address("net1", got[0])
    ipam.release_address("net1", got[0])
    assert ipam.request_address("net1", got[0]) == got[0]
    ipam.release_pool("net1")
    assert ipam.request_pool("net4") == "10.0.0.0/24"


def test_memory_store_watch_sees_changes_in_order_from_a_revision():
    store = MemoryStore()
    store.put("/c/networks/a", "1")
    rev = store.revision()
    store.put("/c/ipam/x", "1")
    store.put("/c/peers/n/e", "p")
    store.delete("/c/peers/n/e")
    cluster = Cluster(store, "/c")
    first, end = cluster.watched_range
    events = next(store.watch(first, rev + 1, end))
    assert [(e.type, e.key, e.value, e.prev_value) for e in events] == [
        ("PUT", "/c/peers/n/e", "p", None), ("DELETE", "/c/peers/n/e", None, "p")]
    assert [e.key for e in next(store.watch("/c/", rev))] == [
        "/c/networks/a", "/c/ipam/x", "/c/peers/n/e", "/c/peers/n/e"]
