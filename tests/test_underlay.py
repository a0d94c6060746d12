"""The underlay: hosts on one shared LAN (a switch and its router in a namespace of their own).

macvlan, ipvlan and VXLAN overlays all need hosts that share an L2 segment, as real Docker hosts
in one rack do. Checked on real kernel objects: hosts reach each other and the router over
their ``eth0``, reach the upstream through the router's NAT, static routes on the router, the
topology-file form, and one-line errors that build nothing.
"""
from __future__ import annotations

import pytest

from cnmlab import topofile, yamlsrc
from cnmlab.checks.kinds import run_check
from cnmlab.checks.probes import EchoServer, ping, tcp_connect
from cnmlab.checks.targets import EngineTarget
from cnmlab.errors import InvalidInput, ObjectExists, ObjectNotFound
from cnmlab.kernel.netlink import Netlink

pytestmark = pytest.mark.kernel
WEB = "198.51.100.10"


def test_hosts_share_a_lan_with_a_router_that_nats_upstream(lab):
    lan = lab.add_underlay("lan", subnet="192.168.60.0/24")
    assert (lan.netns, lan.gateway, lan.bridge) == (lab.ns_name("lan"), "192.168.60.1", "sw0")
    h1 = lab.add_host("h1", underlay="lan")
    h2 = lab.add_host("h2", underlay="lan", underlay_ip="192.168.60.42")
    assert lan.hosts() == {"h1": "192.168.60.11", "h2": "192.168.60.42"}
    assert h1.public_ip == "192.168.60.11" and h1.model.underlay == "lan"
    with Netlink(h1.netns) as nl:
        eth0 = next(l for l in nl.links() if l.name == "eth0")
        assert eth0.addresses == ["192.168.60.11/24"]
        assert [(r.gateway, r.dev) for r in nl.routes() if r.dst == "default"] == [
            ("192.168.60.1", "eth0")]
    with Netlink(lan.netns) as nl:
        ports = {l.name: l.master for l in nl.links() if l.kind == "veth"}
    assert ports == {"p0-h1": "sw0", "p1-h2": "sw0", "up0": None}
    assert ping(h1.netns, "192.168.60.42", timeout=1).ok
    assert ping(h2.netns, lan.gateway, timeout=1).ok
    # out through the router: the upstream sees the router's uplink address, not the host's
    with EchoServer(lab.upstream_netns, "tcp", 8000, bind=WEB, name="internet"):
        seen = tcp_connect(h1.netns, WEB, 8000, timeout=1, echo=True)
    assert seen.ok and seen.seen_as.split(":")[0] == lab.state.underlays["lan"].uplink_ip
    assert lab.state.underlays["lan"].uplink_ip == "203.0.113.254"
    # the checks know the router as underlay:NAME
    target = EngineTarget(lab)
    assert run_check(target, {"reachable": {"from": "underlay:lan", "to": "host:h2"}}).ok
    r = run_check(target, {"reachable": {"from": "host:h1", "to": "underlay:lan"}})
    assert r.ok and "192.168.60.1" in r.expected
    bad = run_check(target, {"reachable": {"from": "underlay:wan", "to": "host:h2"}})
    assert not bad.ok and "no underlay 'wan'" in bad.reason


def test_router_static_route_to_a_subnet_behind_a_host(lab):
    lan = lab.add_underlay("lan", subnet="192.168.61.0/24")
    h1 = lab.add_host("h1", underlay="lan")
    with Netlink(h1.netns) as nl:
        nl.add_address("lo", "10.61.0.1/32")  # a subnet only h1 knows about
    assert not ping(lan.netns, "10.61.0.1", timeout=0.5).ok
    lan.add_route("10.61.0.0/24", via="h1")
    assert lab.state.underlays["lan"].routes == [["10.61.0.0/24", "192.168.61.11"]]
    assert ping(lan.netns, "10.61.0.1", timeout=1).ok
    lan.delete_route("10.61.0.0/24")
    assert not ping(lan.netns, "10.61.0.1", timeout=0.5).ok
    with pytest.raises(InvalidInput, match="route via 'h9': not a host on this LAN"):
        lan.add_route("10.62.0.0/24", via="h9")
    with pytest.raises(InvalidInput, match="the next hop must be on the LAN 192.168.61.0/24"):
        lan.add_route("10.62.0.0/24", via="10.0.0.1")
    with pytest.raises(ObjectNotFound, match="no route to 10.63.0.0/24"):
        lan.delete_route("10.63.0.0/24")


def test_errors_are_one_line_and_build_nothing(lab):
    lab.add_underlay("lan", subnet="192.168.62.0/24")
    before = set(lab.state.namespaces)
    with pytest.raises(InvalidInput, match="overlaps underlay lan"):
        lab.add_underlay("lan2", subnet="192.168.62.128/25")
    with pytest.raises(InvalidInput, match="overlaps the upstream"):
        lab.add_underlay("lan3", subnet="203.0.113.0/25")
    with pytest.raises(ObjectExists, match="the name lan is already used"):
        lab.add_host("lan")
    with pytest.raises(ObjectNotFound, match="underlay wan not found"):
        lab.add_host("h1", underlay="wan")
    with pytest.raises(InvalidInput, match="underlay_ip 10.0.0.5 is not a host address"):
        lab.add_host("h1", underlay="lan", underlay_ip="10.0.0.5")
    with pytest.raises(ObjectExists, match="underlay_ip 192.168.62.1 is already used"):
        lab.add_host("h1", underlay="lan", underlay_ip="192.168.62.1")
    assert set(lab.state.namespaces) == before and list(lab.state.hosts) == []


def test_topology_file_with_an_underlay(lab, tmp_path):
    path = tmp_path / "rack.yaml"
    path.write_text(
        "name: rack\n"
        "underlays:\n"
        "  lan:\n"
        "    subnet: 192.168.63.0/24\n"
        "    routes: [{subnet: 10.63.0.0/24, via: h2}]\n"
        "hosts:\n"
        "  h1: {underlay: lan, default_bridge: false}\n"
        "  h2: {underlay: lan, underlay_ip: 192.168.63.20}\n")
    topo = topofile.load(str(path))
    assert [(u.name, u.subnet, u.routes) for u in topo.underlays] == [
        ("lan", "192.168.63.0/24", [("10.63.0.0/24", "h2")])]
    topofile.build(topo, lab)
    lan = lab.underlay("lan")
    assert lan.hosts() == {"h1": "192.168.63.11", "h2": "192.168.63.20"}
    assert lab.state.underlays["lan"].routes == [["10.63.0.0/24", "192.168.63.20"]]
    assert ping(lab.host("h1").netns, "192.168.63.20", timeout=1).ok
    assert lab.netns_of("lan") == lan.netns


@pytest.mark.parametrize("text,message", [
    ("hosts:\n  h1: {underlay: lan}\n", "hosts.h1.underlay: no underlay 'lan'"),
    ("underlays:\n  lan: {subnet: 10.0.0.0/33}\nhosts:\n  h1: {underlay: lan}\n",
     "underlays.lan.subnet: '10.0.0.0/33' is not a valid IPv4 subnet"),
    ("underlays:\n  lan: {routes: [{subnet: 10.9.0.0/24, via: nowhere}]}\nhosts:\n  h1: {}\n",
     "underlays.lan.routes.0.via: 'nowhere' is neither a host"),
    ("underlays:\n  lan: {color: blue}\nhosts:\n  h1: {}\n",
     "underlays.lan.color: unknown field; known: routes, subnet"),
    ("underlays:\n  h1: {}\nhosts:\n  h1: {}\n", "underlays.h1: the name h1 is used twice"),
])
def test_topology_errors_name_the_field(text, message):
    src = yamlsrc.parse("name: x\n" + text, "t.yaml")
    with pytest.raises(InvalidInput, match=message.replace(".", r"\.").replace("(", r"\(")):
        topofile.parse(src)
