"""The checks must catch deliberately broken setups, naming the check that failed.

Each test builds the same topology with the engine, runs the suite once to see it pass, breaks
one thing by hand (an iptables rule, a route, an MTU: the mistakes learners make) and asserts
that exactly the checks that depend on it fail, each with a reason to act on.
"""
from __future__ import annotations

import os
import signal

import pytest

from cnmlab.checks.api import CheckResult
from cnmlab.checks.kinds import run_checks
from cnmlab.checks.targets import EngineTarget
from cnmlab.kernel import nsexec
from cnmlab.kernel.netlink import Netlink
from cnmlab.lab import Lab

pytestmark = pytest.mark.kernel

if os.geteuid() != 0:
    pytest.skip("needs root", allow_module_level=True)

FAST = 0.5  # seconds: the probes expected to time out

SUITE = [
    {"reachable": {"from": "api", "to": "web"}},
    {"isolated": {"from": "api", "to": "db", "timeout": FAST}},
    {"isolated": {"from": "db", "to": "api", "timeout": FAST}},
    {"isolated": {"from": "db", "to": "db2", "timeout": FAST}},
    {"egress-nat-seen": {"from": "api", "timeout": FAST}},
    {"egress-nat-seen": {"from": "db", "timeout": FAST}},
    {"published-port": {"port": 8080, "to": "web", "timeout": FAST}},
    {"default-route": {"sandbox": "api", "via": "10.71.0.1"}},
    {"mtu": {"sandbox": "api", "mtu": 1500}},
]

ISOLATED_API_DB = "isolated api -> db (icmp)"
ISOLATED_DB_API = "isolated db -> api (icmp)"
ISOLATED_DB_DB2 = "isolated db -> db2 (icmp)"
EGRESS_API = "egress-nat-seen api -> upstream (host)"
DEFAULT_ROUTE_API = "default-route api via 10.71.0.1"
MTU_API = "mtu api eth0 = 1500"
PUBLISHED = "published-port upstream -> h1:8080/tcp -> web:80"


@pytest.fixture
def lab():
    lab = Lab(f"brk{os.getpid()}")
    try:
        h = lab.add_host("h1")
        h.network_create("front", subnet="10.71.0.0/24")
        h.network_create("back", subnet="10.72.0.0/24", icc=False)
        h.run("web", "front", publish=["8080:80/tcp"])
        h.run("api", "front")
        h.run("db", "back")
        h.run("db2", "back")
        yield lab
    finally:
        lab.down()


def run_suite(lab) -> dict[str, CheckResult]:
    results = run_checks(EngineTarget(lab), SUITE)
    return {r.check: r for r in results}


def failing(lab) -> dict[str, CheckResult]:
    return {name: r for name, r in run_suite(lab).items() if not r.ok}


def assert_fails(bad: dict[str, CheckResult], *names: str) -> None:
    for name in names:
        assert name in bad, f"{name} did not fail; failing: {sorted(bad)}"
        r = bad[name]
        assert r.ok is False
        assert r.reason and "\n" not in r.reason, r


def iptables(lab, *args: str) -> None:
    nsexec.run(lab.host("h1").netns, ["iptables", "-w", *args])


def bridge(lab, network: str) -> str:
    return lab.host("h1").networks()[network].device


def test_intact_setup_passes(lab):
    results = run_suite(lab)
    assert len(results) == len(SUITE)
    bad = {n: (r.observed, r.reason) for n, r in results.items() if not r.ok}
    assert not bad


def test_isolation_rule_deleted(lab):
    """Without the DOCKER-ISOLATION-STAGE-2 DROPs, back and front reach each other."""
    assert not failing(lab)
    for net in ("front", "back"):
        iptables(lab, "-D", "DOCKER-ISOLATION-STAGE-2", "-o", bridge(lab, net), "-j", "DROP")
    bad = failing(lab)
    assert_fails(bad, ISOLATED_API_DB, ISOLATED_DB_API)
    assert "DOCKER-ISOLATION" in bad[ISOLATED_API_DB].reason
    assert ISOLATED_DB_DB2 not in bad  # icc on back still holds


def test_masquerade_deleted(lab):
    iptables(lab, "-t", "nat", "-D", "POSTROUTING", "-s", "10.71.0.0/24", "!", "-o",
             bridge(lab, "front"), "-j", "MASQUERADE")
    bad = failing(lab)
    assert_fails(bad, EGRESS_API)
    assert "MASQUERADE" in bad[EGRESS_API].reason
    assert "egress-nat-seen db -> upstream (host)" not in bad  # back still masquerades
    assert set(bad) == {EGRESS_API}


def test_icc_not_enforced(lab):
    """icc=false on back, but an ACCEPT for -i br -o br was inserted above the DROP."""
    br = bridge(lab, "back")
    iptables(lab, "-I", "FORWARD", "-i", br, "-o", br, "-j", "ACCEPT")
    bad = failing(lab)
    assert_fails(bad, ISOLATED_DB_DB2)
    assert "icc" in bad[ISOLATED_DB_DB2].reason and br in bad[ISOLATED_DB_DB2].reason
    assert set(bad) == {ISOLATED_DB_DB2}


def test_wrong_gateway(lab):
    with Netlink(lab.sandbox("api").netns) as nl:
        nl.delete_default_route()
        nl.add_route("default", gateway="10.71.0.254")
    bad = failing(lab)
    assert_fails(bad, DEFAULT_ROUTE_API, EGRESS_API)
    assert "10.71.0.1" in bad[DEFAULT_ROUTE_API].reason
    assert "default via 10.71.0.254" in bad[DEFAULT_ROUTE_API].observed
    assert "default route" in bad[EGRESS_API].reason


def test_wrong_mtu(lab):
    with Netlink(lab.sandbox("api").netns) as nl:
        nl.set_link("eth0", mtu=1400)
    bad = failing(lab)
    assert_fails(bad, MTU_API)
    assert bad[MTU_API].observed == "mtu 1400"
    assert set(bad) == {MTU_API}


def test_dnat_deleted(lab):
    """No DNAT and no userland proxy (ours, started by this lab): nothing answers 8080."""
    web = lab.sandbox("web").ip()
    for pid in set(lab.host("h1").model.proxies.values()):  # one daemon serves them all
        os.kill(pid, signal.SIGKILL)
    iptables(lab, "-t", "nat", "-D", "DOCKER", "!", "-i", bridge(lab, "front"), "-p", "tcp",
             "-m", "tcp", "--dport", "8080", "-j", "DNAT", "--to-destination", f"{web}:80")
    bad = failing(lab)
    assert_fails(bad, PUBLISHED)
    assert "DNAT" in bad[PUBLISHED].reason
