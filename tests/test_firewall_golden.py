"""The iptables renderer against golden text, as libnetwork's iptabler_test.go does."""
from pathlib import Path

from cnmlab.firewall.iptables import IptablesFirewall
from cnmlab.model import Endpoint, Host, Network, PortMapping

GOLDEN = Path(__file__).parent / "golden"


def _host() -> Host:
    h = Host(name="h1", netns="x", public_ip="203.0.113.10")
    h.networks["bridge"] = Network(id="0" * 64, name="bridge", driver="bridge",
                                   subnet="172.17.0.0/16", gateway="172.17.0.1",
                                   device="docker0", created=2)
    app = Network(id="a" * 64, name="app", driver="bridge", subnet="172.18.0.0/16",
                  gateway="172.18.0.1", device="br-aaaaaaaaaaaa", created=3)
    app.endpoints["e1"] = Endpoint(id="e1", name="web", network="app", ip="172.18.0.2/16",
                                   sandbox="web", ports=[PortMapping(8080, 80, "tcp")])
    h.networks["app"] = app
    h.networks["priv"] = Network(id="b" * 64, name="priv", driver="bridge",
                                 subnet="172.19.0.0/16", gateway="172.19.0.1",
                                 device="br-bbbbbbbbbbbb", internal=True, created=4)
    h.networks["closed"] = Network(id="c" * 64, name="closed", driver="bridge",
                                   subnet="172.20.0.0/16", gateway="172.20.0.1",
                                   device="br-cccccccccccc", created=5,
                                   options={"com.docker.network.bridge.enable_icc": "false",
                                            "com.docker.network.bridge.enable_ip_masquerade":
                                                "false"})
    h.networks["host"] = Network(id="d" * 64, name="host", driver="host", created=0)
    return h


def test_render_matches_golden():
    text = IptablesFirewall().render(_host(), ["-A DOCKER-USER -s 10.0.0.0/8 -j DROP"])
    golden = GOLDEN / "iptables-classic.rules"
    assert text == golden.read_text()


def test_render_is_what_iptables_restore_accepts_shape():
    text = IptablesFirewall().render(_host())
    assert text.count("COMMIT") == 2
    assert text.splitlines()[0] == "*filter"
    assert "-A DOCKER-USER -j RETURN" in text
