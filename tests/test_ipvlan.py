"""The ipvlan driver on real kernel objects (the full-kernel VM lane: this machine lacks ipvlan).

l2: children share the parent's MAC and sit on the LAN with the router as gateway. l3: the
sandbox gets ``default dev eth0`` and no gateway, and the LAN reaches the subnet only once its
router has a route to it via the Docker host. A custom MAC is refused in Docker's words.
"""
from __future__ import annotations

import pytest

from cnmlab.checks.probes import ping
from cnmlab.errors import FeatureMissing, InvalidInput
from cnmlab.kernel.netlink import Netlink

pytestmark = pytest.mark.kernel
SUBNET, GW = "192.168.50.0/24", "192.168.50.1"
RANGES = {"h1": "192.168.50.128/27", "h2": "192.168.50.160/27"}


def reaches(src_ns: str, ip: str, timeout: float = 1.0) -> bool:
    return ping(src_ns, ip, timeout=timeout).ok


@pytest.fixture
def rack(lab):
    lab.add_underlay("lan", subnet=SUBNET)
    return lab, lab.add_host("h1", underlay="lan"), lab.add_host("h2", underlay="lan")


def l2_network(host, name="lan"):
    return host.network_create(name, "ipvlan", subnet=SUBNET, gateway=GW,
                               ip_range=RANGES[host.name], options={"parent": "eth0"})


def link(ns: str, name: str = "eth0"):
    with Netlink(ns) as nl:
        return nl.link(name)


@pytest.mark.needs("ipvlan")
def test_l2_children_share_the_parent_mac(rack):
    lab, h1, h2 = rack
    net = l2_network(h1)
    l2_network(h2)
    assert net.driver_data == {"mode": "l2", "parent": "eth0"}
    a, b = h1.run("a1", "lan"), h1.run("b1", "lan")
    c = h2.run("c1", "lan")
    parent_mac = link(h1.netns).mac
    assert link(a.netns).kind == "ipvlan"
    assert link(a.netns).mac == link(b.netns).mac == parent_mac
    assert link(c.netns).mac == link(h2.netns).mac != parent_mac
    with Netlink(a.netns) as nl:
        assert [(r.gateway, r.dev) for r in nl.routes() if r.dst == "default"] == [(GW, "eth0")]
    for src, dst in ((a, b.ip()), (b, a.ip()), (a, c.ip()), (c, a.ip()), (a, GW),
                     (a, "198.51.100.10")):
        assert reaches(src.netns, dst), f"{src.name} -> {dst}"
    assert "nameserver 127.0.0.11" in a.exec(["cat", "/etc/resolv.conf"]).stdout


@pytest.mark.needs("ipvlan")
def test_a_custom_mac_is_refused(rack):
    lab, h1, _ = rack
    l2_network(h1)
    with pytest.raises(InvalidInput, match="ipvlan interfaces do not support custom mac "
                                           "address assigment"):
        h1.run("a1", "lan", mac="02:00:00:00:00:01")
    assert "a1" not in h1.model.sandboxes and not h1.model.networks["lan"].endpoints


@pytest.mark.needs("ipvlan")
@pytest.mark.parametrize("mode", ["l3", "l3s"])
def test_l3_routes_without_a_gateway_and_needs_the_lans_route(rack, mode):
    lab, h1, h2 = rack
    h1.network_create("l3net", "ipvlan", subnet="10.50.0.0/24",
                      options={"parent": "eth0", "ipvlan_mode": mode})
    a, b = h1.run("a1", "l3net"), h1.run("b1", "l3net")
    with Netlink(a.netns) as nl:
        defaults = [(r.gateway, r.dev, r.scope) for r in nl.routes() if r.dst == "default"]
    assert defaults == [(None, "eth0", "link")]  # `default dev eth0`, as libnetwork sets it
    assert reaches(a.netns, b.ip())  # children of one parent are routed to each other
    lan = lab.underlay("lan")
    # the LAN does not know 10.50.0.0/24 lives behind h1 ...
    assert not reaches(lan.netns, a.ip(), timeout=0.5)
    assert not reaches(h2.netns, a.ip(), timeout=0.5)
    # ... until its router has the route (what the network's admin adds for an l3 subnet)
    lan.add_route("10.50.0.0/24", via="h1")
    assert reaches(lan.netns, a.ip())
    assert reaches(h2.netns, a.ip())
    assert reaches(a.netns, "198.51.100.10")  # out through the router, masqueraded


@pytest.mark.needs("ipvlan")
def test_errors_in_dockers_words(rack):
    lab, h1, _ = rack
    with pytest.raises(InvalidInput, match="requested ipvlan mode 'l4' is not valid, 'l2' mode "
                                           "is the ipvlan driver default"):
        h1.network_create("bad", "ipvlan", subnet="10.51.0.0/24",
                          options={"parent": "eth0", "ipvlan_mode": "l4"})
    with pytest.raises(InvalidInput, match="loopback interface is not a valid ipvlan parent"):
        h1.network_create("bad", "ipvlan", subnet="10.51.0.0/24", options={"parent": "lo"})
    l2_network(h1)
    with pytest.raises(Exception, match=r"network di-[0-9a-f]{12} is already using parent "
                                        r"interface eth0"):
        h1.network_create("again", "ipvlan", subnet="10.52.0.0/24", options={"parent": "eth0"})
    assert set(h1.model.networks) == {"bridge", "host", "none", "lan"}


def test_without_ipvlan_the_error_is_one_line(rack, monkeypatch):
    """Here (no ipvlan) or anywhere with the feature masked: one line naming the feature."""
    from cnmlab.kernel import features

    lab, h1, _ = rack
    have = features.probe_all()
    monkeypatch.setattr(features, "probe_all", lambda refresh=False: {**have, "ipvlan": False})
    with pytest.raises(FeatureMissing) as e:
        l2_network(h1)
    assert "\n" not in str(e.value) and "network lan (driver ipvlan) needs ipvlan" in str(e.value)
    assert "cnmlab vm" in str(e.value)
    assert "lan" not in h1.model.networks
