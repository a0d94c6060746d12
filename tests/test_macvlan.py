"""The macvlan driver on real kernel objects: two Docker hosts on one underlay LAN.

What Docker 20.10 does (seen with the real daemon here, see checks/profiles/macvlan.yaml):
children get ``02:42`` + IPv4 MACs, the LAN's router as gateway, embedded DNS, no iptables
rules, published ports ignored; the host cannot reach its own children; one network per
parent; errors in Docker's words. 802.1Q and dummy parents need kernel features this machine
lacks: those tests are marked ``needs`` and run in the full-kernel VM lane.
"""
from __future__ import annotations

import subprocess

import pytest

from cnmlab.kernel import features
from cnmlab.checks.kinds import run_check
from cnmlab.checks.probes import ping
from cnmlab.checks.targets import EngineTarget
from cnmlab.errors import FeatureMissing, InvalidInput, ObjectExists, PoolOverlap
from cnmlab.kernel.netlink import Netlink

pytestmark = pytest.mark.kernel
SUBNET, GW = "192.168.50.0/24", "192.168.50.1"
RANGES = {"h1": "192.168.50.128/27", "h2": "192.168.50.160/27"}


def reaches(src_ns: str, ip: str, timeout: float = 0.5) -> bool:
    return ping(src_ns, ip, timeout=timeout).ok


def lan_network(host, name="lan", mode=None, parent="eth0", **kw):
    opts = {"parent": parent} if parent is not None else {}
    if mode:
        opts["macvlan_mode"] = mode
    return host.network_create(name, "macvlan", subnet=SUBNET, gateway=GW,
                               ip_range=RANGES[host.name], options=opts, **kw)


@pytest.fixture
def rack(lab):
    lab.add_underlay("lan", subnet=SUBNET)
    return lab, lab.add_host("h1", underlay="lan"), lab.add_host("h2", underlay="lan")


def links(ns: str) -> dict:
    with Netlink(ns) as nl:
        return {l.name: l for l in nl.links()}


def test_children_are_machines_on_the_lan(rack):
    lab, h1, h2 = rack
    net = lan_network(h1)
    lan_network(h2)
    assert net.device == "eth0" and net.driver_data == {"mode": "bridge", "parent": "eth0"}
    m1, m2 = h1.run("m1", "lan"), h1.run("m2", "lan", publish=["8080:80"])
    m3 = h2.run("m3", "lan")
    assert (m1.ip(), m2.ip(), m3.ip()) == ("192.168.50.128", "192.168.50.129", "192.168.50.160")
    eth0 = links(m1.netns)["eth0"]
    assert eth0.kind == "macvlan" and eth0.mac == "02:42:c0:a8:32:80"
    assert eth0.addresses == ["192.168.50.128/24"]
    assert links(m3.netns)["eth0"].mac == "02:42:c0:a8:32:a0"
    assert links(h1.netns)["eth0"].mac not in (eth0.mac, links(m2.netns)["eth0"].mac)
    # the gateway is the LAN's router, never the host
    with Netlink(m1.netns) as nl:
        assert [(r.gateway, r.dev) for r in nl.routes() if r.dst == "default"] == [(GW, "eth0")]
    for src, dst in ((m1, m2.ip()), (m2, m1.ip()), (m1, m3.ip()), (m3, m1.ip()), (m1, GW),
                     (m3, "198.51.100.10")):
        assert reaches(src.netns, dst), f"{src.name} -> {dst}"
    assert reaches(h2.netns, m1.ip())  # another machine on the LAN reaches it directly
    # user-defined network: Docker's embedded DNS (seen on 20.10: nameserver 127.0.0.11)
    assert "nameserver 127.0.0.11" in m1.exec(["cat", "/etc/resolv.conf"]).stdout
    target = EngineTarget(lab)
    assert run_check(target, {"dns-resolves": {"from": "m1", "name": "m2", "expect": "m2"}}).ok
    # no firewall work and no port publishing: -p is accepted and ignored, as Docker does
    assert "192.168.50" not in h1.iptables()
    assert all(not ep.ports for ep in h1.model.networks["lan"].endpoints.values())
    assert h1.model.proxies == {}


def test_the_host_cannot_reach_its_children_until_a_shim(rack):
    lab, h1, h2 = rack
    lan_network(h1)
    m1 = h1.run("m1", "lan")
    assert not reaches(h1.netns, m1.ip())
    assert not reaches(m1.netns, h1.public_ip)
    r = run_check(EngineTarget(lab), {"reachable": {"from": "host:h1", "to": "m1"}})
    assert not r.ok and "give it a shim" in r.reason
    # the usual fix: a macvlan of the host's own on the same parent, routed to the children
    for cmd in (["ip", "link", "add", "shim", "link", "eth0", "type", "macvlan", "mode", "bridge"],
                ["ip", "addr", "add", "192.168.50.254/32", "dev", "shim"],
                ["ip", "link", "set", "shim", "up"],
                ["ip", "route", "add", RANGES["h1"], "dev", "shim"]):
        assert h1.exec(cmd).returncode == 0, cmd
    assert reaches(h1.netns, m1.ip(), timeout=1)


def test_private_mode_blocks_children_of_one_parent(rack):
    lab, h1, h2 = rack
    lan_network(h1, mode="private")
    lan_network(h2)
    a, b = h1.run("a1", "lan"), h1.run("b1", "lan")
    c = h2.run("c1", "lan")
    assert links(a.netns)["eth0"].kind == "macvlan"
    assert not reaches(a.netns, b.ip()) and not reaches(b.netns, a.ip())
    # private only cuts siblings: the LAN and other hosts' containers are still reached
    assert reaches(a.netns, GW) and reaches(a.netns, c.ip()) and reaches(c.netns, b.ip())


def test_vepa_needs_a_switch_that_hairpins(rack):
    lab, h1, h2 = rack
    lan_network(h1, mode="vepa")
    a, b = h1.run("a1", "lan"), h1.run("b1", "lan")
    assert not reaches(a.netns, b.ip())
    lan = lab.underlay("lan")
    # the switch port sends frames back where they came from (802.1Qbg reflective relay)
    r = subprocess.run(["ip", "netns", "exec", lan.netns, "bridge", "link", "set", "dev",
                        lan.port_of("h1"), "hairpin", "on"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert reaches(a.netns, b.ip(), timeout=1)


def test_passthru_gives_the_parent_to_one_child(rack):
    lab, h1, h2 = rack
    parent_mac = links(h1.netns)["eth0"].mac
    lan_network(h1, mode="passthru")
    m1 = h1.run("m1", "lan")
    assert links(m1.netns)["eth0"].mac == parent_mac
    assert reaches(m1.netns, GW)
    with pytest.raises(Exception, match="failed to create the macvlan port: Invalid argument"):
        h1.run("m2", "lan")
    assert "m2" not in h1.model.sandboxes
    # passthru parents cannot be shared (in 20.10 no macvlan parent can)
    with pytest.raises(ObjectExists, match=r"network dm-[0-9a-f]{12} is already using parent "
                                           r"interface eth0"):
        h1.network_create("lan2", "macvlan", subnet="10.70.0.0/24", options={"parent": "eth0"})


def test_errors_in_dockers_words_and_nothing_left(rack):
    lab, h1, h2 = rack
    before = set(h1.model.networks)
    cases = [
        ({"parent": "eth0", "macvlan_mode": "foo"}, InvalidInput,
         "requested macvlan mode 'foo' is not valid, 'bridge' mode is the macvlan driver default"),
        ({"parent": "lo"}, InvalidInput, "loopback interface is not a valid macvlan parent link"),
        ({"parent": "eth9"}, InvalidInput,
         "invalid subinterface vlan name eth9, example formatting is eth0.10"),
        ({"parent": "eth9.10"}, InvalidInput,
         "-o parent interface does was not found on the host: eth9"),
        ({"parent": "eth0.5000"}, InvalidInput, "vlan id must be between 1-4094, received: 5000"),
        ({"parent": "eth0.x"}, InvalidInput,
         r"unable to parse a valid vlan id from: x \(ex. eth0.10 for vlan 10\)"),
        ({"parent": "eth0.1.2"}, InvalidInput,
         "required interface name format is: name.vlan_id, ex. eth0.10 for vlan 10"),
    ]
    for opts, exc, msg in cases:
        with pytest.raises(exc, match=msg):
            h1.network_create("bad", "macvlan", subnet="10.80.0.0/24", options=opts)
    assert set(h1.model.networks) == before
    # IPAM was given back each time: the same subnet is still free
    lan_network(h1)
    with pytest.raises(ObjectExists, match=r"network dm-[0-9a-f]{12} is already using parent "
                                           r"interface eth0"):
        h1.network_create("again", "macvlan", subnet="10.81.0.0/24", options={"parent": "eth0"})
    with pytest.raises(PoolOverlap, match="Pool overlaps with other one on this address space"):
        h1.network_create("clash", "macvlan", subnet="192.168.50.0/25",
                          options={"parent": "docker0"})
    if not features.has("vlan"):
        with pytest.raises(FeatureMissing,
                           match=r"-o parent=eth0.10 \(a VLAN trunk\) needs vlan .*cnmlab vm"):
            h1.network_create("trunk", "macvlan", subnet="10.82.0.0/24",
                              options={"parent": "eth0.10"})
    if not features.has("dummy"):
        with pytest.raises(FeatureMissing, match="without -o parent .* needs dummy"):
            h1.network_create("alone", "macvlan", subnet="10.83.0.0/24")
    with Netlink(h1.netns) as nl:
        names = {l.name for l in nl.links()}
    assert not [n for n in names if "." in n or n.startswith("dm-")]
    assert set(h1.model.networks) == before | {"lan"}
    # a parent that disappears after network create: Docker's words at run time
    with Netlink(h1.netns) as nl:
        nl.add_veth("par0", "par1")
    h1.network_create("gone", "macvlan", subnet="10.84.0.0/24", options={"parent": "par0"})
    with Netlink(h1.netns) as nl:
        nl.delete_link("par0")
    with pytest.raises(InvalidInput, match="the requested parent interface par0 was not found "
                                           "on the Docker host h1"):
        h1.run("x1", "gone")
    assert "x1" not in h1.model.sandboxes and not h1.model.networks["gone"].endpoints


def test_a_missing_kernel_feature_is_one_line(rack, monkeypatch):
    lab, h1, h2 = rack
    have = features.probe_all()
    monkeypatch.setattr(features, "probe_all", lambda refresh=False: {**have, "macvlan": False})
    with pytest.raises(FeatureMissing) as e:
        lan_network(h1)
    msg = str(e.value)
    assert "\n" not in msg and "network lan (driver macvlan) needs macvlan" in msg
    assert "cnmlab vm" in msg and "lan" not in h1.model.networks


@pytest.mark.needs("vlan")
def test_parent_dot_vid_is_a_trunk_made_and_removed_with_the_network(rack):
    lab, h1, h2 = rack
    for h in (h1, h2):
        h.network_create("v10", "macvlan", subnet="10.10.10.0/24", ip_range=(
            "10.10.10.32/28" if h is h1 else "10.10.10.48/28"), options={"parent": "eth0.10"})
    with Netlink(h1.netns) as nl:
        sub = nl.link("eth0.10")
        assert sub is not None and sub.kind == "vlan" and sub.state in ("UP", "UNKNOWN")
    a, b = h1.run("a1", "v10"), h2.run("b1", "v10")
    assert reaches(a.netns, b.ip(), timeout=1)  # tagged frames cross the LAN's switch
    h1.rm("a1")
    h1.network_rm("v10")
    with Netlink(h1.netns) as nl:
        assert nl.link("eth0.10") is None
        # a sub-interface the user made stays when the network that used it goes
        nl.add_vlan("eth0.20", "eth0", 20)
    h1.network_create("v20", "macvlan", subnet="10.10.20.0/24", options={"parent": "eth0.20"})
    h1.network_rm("v20")
    with Netlink(h1.netns) as nl:
        assert nl.link("eth0.20") is not None


@pytest.mark.needs("dummy")
def test_no_parent_is_a_dummy_and_an_internal_network(rack):
    lab, h1, h2 = rack
    net = h1.network_create("alone", "macvlan", subnet="10.83.0.0/24")
    assert net.internal and net.driver_data["parent"] == f"dm-{net.id[:12]}"
    with Netlink(h1.netns) as nl:
        assert nl.link(f"dm-{net.id[:12]}").kind == "dummy"
    a, b = h1.run("a1", "alone"), h1.run("b1", "alone")
    assert reaches(a.netns, b.ip(), timeout=1)
    with Netlink(a.netns) as nl:
        assert not [r for r in nl.routes() if r.dst == "default"]
    h1.rm("a1")
    h1.rm("b1")
    h1.network_rm("alone")
    with Netlink(h1.netns) as nl:
        assert nl.link(f"dm-{net.id[:12]}") is None
