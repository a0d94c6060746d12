"""Packet-level checks with Scapy, on real namespaces: who answers ARP, with which MAC."""
import pytest

from cnmlab.checks.kinds import run_check
from cnmlab.checks.targets import EngineTarget

pytestmark = pytest.mark.kernel


def test_arp_reply_names_the_mac_on_the_wire(lab):
    host = lab.add_host("h1")
    host.network_create("app", subnet="10.91.0.0/24")
    host.run("c1", "app")
    c2 = host.run("c2", "app")
    target = EngineTarget(lab)
    ok = run_check(target, {"arp-reply": {"from": "c1", "ip": "c2", "mac": "docker"}})
    assert ok.ok, ok
    assert ok.observed == "10.91.0.3 is-at 02:42:0a:5b:00:03"
    wrong = run_check(target, {"arp-reply": {"from": "c1", "ip": c2.ip(),
                                             "mac": "02:42:00:00:00:01"}})
    assert not wrong.ok and "not 02:42:00:00:00:01" in wrong.reason
    silent = run_check(target, {"arp-reply": {"from": "c1", "ip": "10.91.0.77", "timeout": 0.3}})
    assert not silent.ok and silent.observed == "no ARP reply" and silent.reason
    gateway = run_check(target, {"arp-reply": {"from": "c1", "ip": "10.91.0.1"}})
    assert gateway.ok  # the bridge answers for the gateway address


def test_arp_reply_params_are_validated():
    from cnmlab.checks.library import validate
    from cnmlab.errors import InvalidInput

    with pytest.raises(InvalidInput, match="missing parameter 'ip'"):
        validate("arp-reply", {"from": "c1"})
