"""The overlay conformance profile against cnmlab's engine and a real two-node Docker swarm.

One topology (``checks/profiles/overlay.yaml``: two hosts on one underlay, two overlays),
built by the engine (embedded etcd + agents) and by two dockerd 20.10 joined in a swarm. Both
must pass every check. Broken overlays must be caught, each by the checks that exist for it: a
missing peer entry, an inner MTU that leaves no room for the VXLAN header, VXLAN blocked on
the underlay.
"""
from __future__ import annotations

import os
import shutil

import pytest

from cnmlab.checks import conformance, report
from cnmlab.checks.dockerd import missing_tools
from cnmlab.checks.swarm import SwarmTarget
from cnmlab.lab import Lab
from cnmlab.kernel.netlink import Netlink

pytestmark = [pytest.mark.kernel,
              pytest.mark.skipif(not shutil.which("etcd"), reason="needs etcd-server")]

if os.geteuid() != 0:
    pytest.skip("needs root", allow_module_level=True)


def _failed(results) -> set[str]:
    return {r.check for r in results if not r.ok}


def _text(results, name: str) -> str:
    return report.render_results(results, title=f"overlay profile against {name}:",
                                 verbose=True)


def test_profile_loads():
    p = conformance.load("overlay")
    assert p.hosts == ["h1", "h2"]
    assert {n: s["driver"] for n, s in p.networks.items()} == {"ov": "overlay",
                                                               "ov2": "overlay"}
    assert {c: (x.network, x.host) for c, x in p.containers.items()} == {
        "c1": ("ov", "h1"), "c2": ("ov", "h1"), "c3": ("ov", "h2"), "c4": ("ov2", "h2")}
    assert {c.kind for c in p.checks} >= {"reachable", "isolated", "matrix", "vxlan-on-wire",
                                          "mtu", "path-mtu", "egress-nat-seen",
                                          "dns-resolves", "dns-absent"}


@pytest.fixture
def engine_target(lab_name):
    lab = Lab(lab_name)
    try:
        yield conformance.build_engine(lab, "overlay")
    finally:
        lab.down()


def test_engine_passes_the_overlay_profile(engine_target):
    results = conformance.run_profile(engine_target, "overlay")
    assert not _failed(results), _text(results, "engine")


def test_a_missing_peer_entry_is_caught(engine_target):
    lab = engine_target._lab
    lab.stop_agent("h1")  # or it would put the entry back
    c3 = lab.sandbox("c3")
    h1 = lab.host("h1")
    with Netlink(h1.networks()["ov"].netns) as nl:
        nl.delete_neighbour("vxlan0", c3.ip())
        nl.delete_fdb("vxlan0", "02:42:" + ":".join(f"{int(b):02x}" for b in c3.ip().split(".")),
                      lab.host("h2").model.underlay_ip)
    results = conformance.run_profile(engine_target, "overlay")
    failed = _failed(results)
    assert {"reachable c1 -> c3 (icmp)", "matrix c1 c2 c3 (icmp)",
            "path-mtu from=c1 mtu=1450 to=c3"} <= failed, _text(results, "broken engine")
    assert "reachable c3 -> c1 (icmp)" in failed  # the reply cannot find its way either
    assert "dns-resolves c3 from c1" not in failed  # names still resolve: only the peer is gone


def test_an_inner_mtu_without_room_for_vxlan_is_caught(engine_target):
    """Everything inside at 1500, as if VXLAN cost nothing. This kernel's PMTU handling for
    bridged tunnels answers a too-big DF packet with "fragmentation needed, mtu 1450", so the
    path itself still carries 1450 (path-mtu holds); the sandbox's MTU is what is wrong."""
    lab = engine_target._lab
    for host, sb in (("h1", "c1"), ("h2", "c3")):
        with Netlink(lab.host(host).networks()["ov"].netns) as nl:
            for link in nl.links():
                if link.name != "lo":
                    nl.set_link(link.name, mtu=1500)
        with Netlink(lab.sandbox(sb).netns) as nl:
            nl.set_link("eth0", mtu=1500)
    results = conformance.run_profile(engine_target, "overlay")
    failed = _failed(results)
    assert "mtu c1 eth0 = 1450" in failed, _text(results, "broken engine")
    assert not failed & {"reachable c1 -> c3 (icmp)", "path-mtu from=c1 mtu=1450 to=c3",
                         "vxlan-on-wire host:h2 eth0 vni ov"}, _text(results, "broken engine")


def test_vxlan_blocked_on_the_underlay_is_caught(engine_target):
    lab = engine_target._lab
    lab.underlay("lan").exec(["iptables", "-A", "FORWARD", "-p", "udp", "--dport", "4789",
                              "-j", "DROP"])
    results = conformance.run_profile(engine_target, "overlay")
    failed = _failed(results)
    assert {"reachable c1 -> c3 (icmp)", "reachable c3 -> c1 (icmp)",
            "matrix c1 c2 c3 (icmp)", "vxlan-on-wire host:h2 eth0 vni ov",
            "path-mtu from=c1 mtu=1450 to=c3"} <= failed, _text(results, "broken engine")
    # what stays on one host still works
    assert "egress-nat-seen c1 -> upstream (masqueraded)" not in failed


@pytest.mark.docker
@pytest.mark.skipif(bool(missing_tools()), reason="needs docker.io and busybox-static")
def test_a_real_two_node_swarm_passes_the_overlay_profile(lab_name):
    lab = Lab(lab_name)
    target = None
    try:
        target = conformance.build_swarm(lab, "overlay")
        assert isinstance(target, SwarmTarget)
        nets = target.networks()
        assert nets["ov"]["driver"] == "overlay" and nets["ov"]["vni"] >= 4096
        results = conformance.run_profile(target, "overlay")
        assert not _failed(results), _text(results, "swarm")
        # the swarm's overlay namespace reads like the engine's: br0 + vxlan0, permanent peers
        daemon = target.swarm.daemons["h1"]
        out = daemon.docker("network", "inspect", "ov", "--format", "{{.Id}}").stdout.strip()
        assert out
    finally:
        if target is not None:
            target.swarm.stop()
        lab.down()
