"""The labs' claims about the kernel, each shown on real namespaces (issue 17's audit).

Every claim a lab's text makes about what the kernel does is either tested here, corrected in
the text, or listed in ``labs/CLAIMS.md`` with the reason it cannot be tested on this machine.
A claim test shows what breaks without the rule or setting, and under which setting.
"""
from __future__ import annotations

import os
import subprocess

import pytest

from cnmlab.workshop import labfile

from cnmlab.workshop.progress import Progress

from cnmlab.workshop.runner import LabRun
from cnmlab.checks.kinds import run_check
from cnmlab.checks.targets import EngineTarget

PID = str(os.getpid())
pytestmark = pytest.mark.kernel

HAIRPIN = {"hairpin": {"host": "host", "port": 8080, "proto": "tcp", "to": "web",
                       "container_port": 80, "from": "client", "timeout": 0.5}}
DNAT_FROM_BRIDGE = ("iptables -t nat -I DOCKER 1 -i docker0 -p tcp -m tcp --dport 8080 "
                    "-j DNAT --to-destination 172.17.0.2:80")
HAIRPIN_MASQ = ("iptables -t nat -A POSTROUTING -s 172.17.0.0/16 -d 172.17.0.2/32 -p tcp "
                "-m tcp --dport 80 -j MASQUERADE")


def sh(ns: str, script: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", "netns", "exec", ns, "sh", "-ec", script], check=check,
                          capture_output=True, text=True)


@pytest.fixture
def ns_pair():
    """Two bare namespaces joined by a veth pair (a, b), both up."""
    a, b = f"cla{PID}", f"clb{PID}"
    subprocess.run(["ip", "netns", "add", a], check=True)
    subprocess.run(["ip", "netns", "add", b], check=True)
    try:
        sh(a, f"ip link add veth-a type veth peer name veth-b netns {b}")
        yield a, b
    finally:
        for n in (a, b):
            subprocess.run(["ip", "netns", "del", n], check=False)


@pytest.fixture
def lab03(tmp_path):
    run = LabRun(labfile.get("03"), f"lab03-{PID}", Progress(str(tmp_path / "p.json")))
    run.start()
    try:
        yield run
    finally:
        run.stop()


# ---- lab 01 --------------------------------------------------------------------------------
def test_lab01_fresh_namespace_has_lo_down(ns_pair):
    a, _ = ns_pair
    assert "state DOWN" in sh(a, "ip link show lo").stdout or \
        "LOOPBACK>" in sh(a, "ip link show lo").stdout  # flags without UP
    assert sh(a, "ping -c1 -W1 127.0.0.1", check=False).returncode != 0


def test_lab01_veth_passes_traffic_only_with_both_ends_up(ns_pair):
    a, b = ns_pair
    sh(a, "ip addr add 10.0.0.1/24 dev veth-a; ip link set veth-a up")
    sh(b, "ip addr add 10.0.0.2/24 dev veth-b")  # veth-b stays down
    assert "NO-CARRIER" in sh(a, "ip link show veth-a").stdout
    assert sh(a, "ping -c1 -W1 10.0.0.2", check=False).returncode != 0
    sh(b, "ip link set veth-b up")
    assert sh(a, "ping -c1 -W2 10.0.0.2", check=False).returncode == 0
    assert "lladdr" in sh(a, "ip neigh show 10.0.0.2").stdout  # ARP resolved blue's MAC


def test_lab01_an_address_adds_its_on_link_route(ns_pair):
    a, _ = ns_pair
    assert "10.0.0.0/24" not in sh(a, "ip route").stdout
    sh(a, "ip addr add 10.0.0.1/24 dev veth-a; ip link set veth-a up")
    assert "10.0.0.0/24 dev veth-a proto kernel scope link" in sh(a, "ip route").stdout


def test_lab01_ip_netns_exec_mounts_the_sandbox_resolv_conf(ns_pair):
    a, _ = ns_pair
    os.makedirs(f"/etc/netns/{a}", exist_ok=True)
    try:
        with open(f"/etc/netns/{a}/resolv.conf", "w") as f:
            f.write(f"nameserver 192.0.2.53 # claim{PID}\n")
        assert f"claim{PID}" in sh(a, "cat /etc/resolv.conf").stdout
    finally:
        subprocess.run(["rm", "-rf", f"/etc/netns/{a}"])


# ---- lab 02 --------------------------------------------------------------------------------
def test_lab02_link_down_removes_its_routes_veth_mac_changes_while_up(ns_pair):
    a, b = ns_pair
    sh(a, "ip addr add 172.17.0.2/16 dev veth-a; ip link set veth-a up")
    sh(b, "ip addr add 172.17.0.1/16 dev veth-b; ip link set veth-b up")
    sh(a, "ip route add default via 172.17.0.1")
    # corrected claim: a veth takes a new MAC while up
    sh(a, "ip link set veth-a address 02:42:ac:11:00:02")
    assert "02:42:ac:11:00:02" in sh(a, "ip link show veth-a").stdout
    assert "default via 172.17.0.1" in sh(a, "ip route").stdout
    # the claim that stays: taking the link down deletes the default route through it
    sh(a, "ip link set veth-a down; ip link set veth-a up")
    assert "default" not in sh(a, "ip route").stdout


def test_lab02_no_default_route_network_unreachable(ns_pair):
    a, _ = ns_pair
    sh(a, "ip addr add 172.17.0.2/16 dev veth-a; ip link set veth-a up")
    out = sh(a, "ping -c1 -W1 203.0.113.10", check=False)
    assert out.returncode != 0 and "Network is unreachable" in (out.stderr + out.stdout)


# ---- lab 03 --------------------------------------------------------------------------------
def test_lab03_hairpin_masquerade_needed_only_when_bridged_frames_skip_iptables(lab03):
    """The corrected step 4: DNAT alone works with bridge-nf-call-iptables=1 (conntrack sees
    web's bridged reply and un-DNATs it); with 0 the reply reaches client unrewritten and the
    connection fails; the hairpin MASQUERADE makes it work again under 0."""
    lab03.solve(lab03.labdef.step("publish"))
    host = lab03.lab.netns_of("host")
    target = EngineTarget(lab03.lab)
    assert sh(host, "sysctl -n net.bridge.bridge-nf-call-iptables").stdout.strip() == "1"
    assert not run_check(target, HAIRPIN).ok  # the RETURN skips the DNAT for docker0
    sh(host, DNAT_FROM_BRIDGE)
    r = run_check(target, HAIRPIN)
    assert r.ok and "seen as 172.17.0.3" in r.observed, r.observed  # no MASQUERADE needed
    sh(host, "sysctl -qw net.bridge.bridge-nf-call-iptables=0")
    r = run_check(target, HAIRPIN)
    assert not r.ok, r.observed  # web's reply bypasses conntrack: client resets it
    sh(host, HAIRPIN_MASQ)
    r = run_check(target, HAIRPIN)
    assert r.ok and "seen as 172.17.0.1" in r.observed, r.observed  # web answers the host


def test_lab03_forwarding_and_masquerade_are_both_needed(lab03):
    host = lab03.lab.netns_of("host")
    target = EngineTarget(lab03.lab)
    reach = {"reachable": {"from": "web", "to": "upstream", "timeout": 0.5}}
    sh(host, "iptables -t nat -A POSTROUTING -s 172.17.0.0/16 ! -o docker0 -j MASQUERADE")
    assert not run_check(target, reach).ok  # ip_forward=0: the host does not route
    sh(host, "sysctl -qw net.ipv4.ip_forward=1")
    assert run_check(target, reach).ok
    sh(host, "iptables -t nat -F POSTROUTING")
    assert not run_check(target, reach).ok  # no MASQUERADE: no way back to 172.17.0.2


def test_lab03_a_drop_after_return_never_sees_the_packet(lab03):
    lab03.solve(lab03.labdef.step("masquerade"))
    host = lab03.lab.netns_of("host")
    target = EngineTarget(lab03.lab)
    iso = {"isolated": {"from": "client", "to": "upstream", "timeout": 0.5}}
    sh(host, "iptables -N DOCKER-USER; iptables -A DOCKER-USER -j RETURN; "
             "iptables -I FORWARD 1 -j DOCKER-USER; "
             "iptables -A DOCKER-USER -s 172.17.0.3/32 -o eth0 -j DROP")  # appended: too late
    r = run_check(target, iso)
    assert not r.ok and "first rule that matches decides" in r.reason, r.reason
    order = {"iptables-rule": {"host": "host", "rule": "-A DOCKER-USER -s 172.17.0.3/32 -o "
                               "eth0 -j DROP", "before": "-A DOCKER-USER -j RETURN"}}
    r = run_check(target, order)
    assert not r.ok and "rule 2 of DOCKER-USER, after -A DOCKER-USER -j RETURN" in r.reason
    sh(host, "iptables -D DOCKER-USER -s 172.17.0.3/32 -o eth0 -j DROP; "
             "iptables -I DOCKER-USER 1 -s 172.17.0.3/32 -o eth0 -j DROP")
    assert run_check(target, iso).ok and run_check(target, order).ok
