"""The engine on real kernel objects: reach, isolation, NAT, published ports, icc, internal.

Connectivity is observed with real probes from inside the namespaces (a failed probe, not only
the presence of a rule), using the checks' probe engine.
"""
import pytest

from cnmlab import inspection
from cnmlab.checks.probes import EchoServer, ping, tcp_connect
from cnmlab.errors import ActiveEndpoints, InvalidInput, ObjectExists, PoolOverlap
from cnmlab.kernel import netns

pytestmark = pytest.mark.kernel
WEB = "198.51.100.10"  # the upstream's "server on the internet"


def reaches(src, ip) -> bool:
    return ping(src.netns, ip, timeout=0.5).ok


def test_same_bridge_reach_and_other_bridge_isolated(lab):
    host = lab.add_host("h1")
    host.network_create("front")
    host.network_create("back")
    a, b = host.run("a1", "front"), host.run("b1", "front")
    c = host.run("c1", "back")
    assert reaches(a, b.ip()) and reaches(b, a.ip())
    assert not reaches(a, c.ip()) and not reaches(c, a.ip())
    # the isolation comes from the host firewall, not from routing: the gateway answers
    assert reaches(c, host.model.networks["front"].gateway)
    rules = host.iptables()
    assert "-A DOCKER-ISOLATION-STAGE-2 -o " + host.model.networks["front"].device + " -j DROP" in rules


def test_docker_names_and_defaults(lab):
    host = lab.add_host("h1")
    default = host.model.networks["bridge"]
    assert (default.device, default.subnet, default.gateway) == ("docker0", "172.17.0.0/16",
                                                                  "172.17.0.1")
    net = host.network_create("mynet")
    assert net.device == f"br-{net.id[:12]}" and net.subnet == "172.18.0.0/16"
    s = host.run("s1", "mynet")
    assert s.ip() == "172.18.0.2"
    links = {l["name"]: l for l in inspection.interfaces(s.netns)}
    assert links["eth0"]["mac"] == "02:42:ac:12:00:02"
    assert links["eth0"]["addresses"] == ["172.18.0.2/16"]
    host_links = {l["name"]: l for l in inspection.interfaces(host.netns)}
    veths = [n for n, l in host_links.items() if l["master"] == net.device]
    assert len(veths) == 1 and veths[0].startswith("veth") and len(veths[0]) == 11
    routes = inspection.routes(s.netns)
    assert {"dst": "default", "gateway": "172.18.0.1", "dev": "eth0", "scope": "global"} in routes


def test_egress_is_masqueraded_as_the_host(lab):
    host = lab.add_host("h1")
    host.network_create("masq")
    host.network_create("nomasq", masquerade=False)
    a = host.run("a1", "masq")
    b = host.run("b1", "nomasq")
    with EchoServer(lab.upstream_netns, "tcp", 8000, bind=WEB, name="internet"):
        seen = tcp_connect(a.netns, WEB, 8000, timeout=1, echo=True)
        assert seen.ok and seen.seen_as.split(":")[0] == host.public_ip
        # without masquerade the upstream has no route back to 172.x: no answer
        assert not tcp_connect(b.netns, WEB, 8000, timeout=0.5, echo=True).ok
    assert "-A POSTROUTING -s 172.19.0.0/16 ! -o" not in host.iptables()


def test_published_port_from_upstream_and_hairpin(lab):
    host = lab.add_host("h1")
    host.network_create("apps")
    web = host.run("web", "apps", publish=["8080:80/tcp"])
    peer = host.run("peer", "apps")
    other = host.run("other")  # default bridge
    with EchoServer(web.netns, "tcp", 80, name="web"):
        r = tcp_connect(lab.upstream_netns, host.public_ip, 8080, timeout=1, echo=True)
        assert r.ok and r.server == "web"
        # DNAT keeps the client's address for outside traffic
        assert r.seen_as.split(":")[0] == lab.upstream_ip
        # hairpin from the same bridge (through the userland proxy) and from another network
        assert tcp_connect(peer.netns, host.public_ip, 8080, timeout=1, echo=True).server == "web"
        assert tcp_connect(web.netns, host.public_ip, 8080, timeout=1, echo=True).server == "web"
        assert tcp_connect(other.netns, host.public_ip, 8080, timeout=1, echo=True).server == "web"
    assert not tcp_connect(lab.upstream_netns, host.public_ip, 8081, timeout=0.5).ok
    rules = host.iptables()
    assert f"--dport 8080 -j DNAT --to-destination {web.ip()}:80" in rules


def test_icc_false_blocks_same_bridge(lab):
    host = lab.add_host("h1")
    host.network_create("closed", icc=False)
    a, b = host.run("a1", "closed"), host.run("b1", "closed")
    assert not reaches(a, b.ip())
    with EchoServer(lab.upstream_netns, "tcp", 8000, bind=WEB):
        assert tcp_connect(a.netns, WEB, 8000, timeout=1).ok  # egress still works


def test_internal_network_has_no_default_route_and_no_egress(lab):
    host = lab.add_host("h1")
    host.network_create("priv", internal=True)
    a, b = host.run("a1", "priv"), host.run("b1", "priv")
    assert reaches(a, b.ip())
    routes = a.exec(["ip", "route"]).stdout
    assert "default" not in routes
    assert not reaches(a, WEB)
    assert not reaches(a, lab.upstream_ip)


def test_null_and_host_drivers(lab):
    host = lab.add_host("h1")
    none = host.run("lonely", "none")
    names = [l["name"] for l in inspection.interfaces(none.netns)]
    assert names == ["lo"]
    hostnet = host.run("hostnet", "host")
    assert hostnet.netns == host.netns and hostnet.ip() == host.public_ip


def test_connect_one_sandbox_to_two_networks(lab):
    host = lab.add_host("h1")
    host.network_create("n1")
    host.network_create("n2")
    a = host.run("a1", "n1")
    b = host.run("b1", "n2")
    assert not reaches(a, b.ip())
    ep = host.connect("n2", "a1")
    assert ep.ifname == "eth1"
    assert reaches(a, b.ip("n2"))
    host.disconnect("n2", "a1")
    assert not reaches(a, b.ip())
    assert "eth1" not in a.exec(["ip", "-o", "link"]).stdout


def test_lifecycle_rules(lab):
    host = lab.add_host("h1")
    host.network_create("n1", subnet="10.50.0.0/24")
    with pytest.raises(ObjectExists, match="network with name n1 already exists"):
        host.network_create("n1")
    with pytest.raises(PoolOverlap, match="Pool overlaps"):
        host.network_create("n2", subnet="10.50.0.128/25")
    with pytest.raises(InvalidInput, match="unknown network driver 'bridgex'"):
        host.network_create("n3", driver="bridgex")
    with pytest.raises(InvalidInput, match="longer than 15"):
        host.network_create("n4", bridge_name="a-very-long-bridge-name")
    with pytest.raises(ObjectExists, match="network with name bridge already exists"):
        host.network_create("bridge")
    with pytest.raises(InvalidInput, match="pre-defined network and cannot be removed"):
        host.network_rm("bridge")
    host.run("s1", "n1")
    with pytest.raises(ActiveEndpoints, match="has active endpoints"):
        host.network_rm("n1")
    host.rm("s1")
    host.network_rm("n1")
    assert "n1" not in host.networks()
    # nothing half-built: failed creations left no bridge behind
    bridges = [l for l in inspection.interfaces(host.netns)
               if l["kind"] == "bridge"]
    assert [b["name"] for b in bridges] == ["docker0"]


def test_failed_run_rolls_back(lab):
    host = lab.add_host("h1")
    host.network_create("n1", subnet="10.60.0.0/24")
    host.run("s1", "n1", ip="10.60.0.5")
    with pytest.raises(Exception, match="Address already in use"):
        host.run("s2", "n1", ip="10.60.0.5")
    assert "s2" not in host.model.sandboxes
    assert not any("s2" in n for n in netns.list_names()
                   if n.startswith(f"cnm-{lab.name}."))
    # the address is free again for a correct request, and the state on disk agrees
    from cnmlab.lab import Lab

    again = Lab.open(lab.name)
    assert set(again.host("h1").model.sandboxes) == {"s1"}
    again.close()


def test_mtu_option(lab):
    host = lab.add_host("h1")
    host.network_create("small", mtu=1400)
    s = host.run("s1", "small")
    eth0 = [l for l in inspection.interfaces(s.netns)
            if l["name"] == "eth0"][0]
    assert eth0["mtu"] == 1400


def test_two_labs_side_by_side(lab_name):
    from cnmlab.lab import Lab

    with Lab(lab_name + "a") as one, Lab(lab_name + "b") as two:
        h1, h2 = one.add_host("h1"), two.add_host("h1")
        a = h1.run("s1")
        b = h2.run("s1")
        assert a.ip() == b.ip() == "172.17.0.2"  # same addresses, separate worlds
        assert a.netns != b.netns
        assert reaches(a, "172.17.0.1") and reaches(b, "172.17.0.1")


def test_netlink_stays_in_its_namespace_from_any_thread(lab):
    """pyroute2 opens a socket per thread: the facade must still act in the lab's namespace."""
    import threading

    from cnmlab.kernel.netlink import Netlink

    host = lab.add_host("h1")
    root_before = {l.name for l in Netlink().links()}
    errors = []

    def worker():
        try:
            host.network_create("fromthread")
            host.run("t1", "fromthread")
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    t = threading.Thread(target=worker)
    t.start()
    t.join()
    assert not errors
    assert {l.name for l in Netlink().links()} == root_before
    dev = host.model.networks["fromthread"].device
    assert dev in {l.name for l in Netlink(host.netns).links()}
    assert reaches(host.sandbox("t1"), host.model.networks["fromthread"].gateway)
