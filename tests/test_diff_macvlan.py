"""``cnmlab diff`` for the macvlan driver: the engine holds itself to zero unlisted differences.

The ``macvlan*`` scenarios (a macvlan network on the host's uplink ``eth0``: bridge mode with a
gateway, an ip-range and a fixed ``--ip`` next to a bridge network; vepa then private mode on
one parent, connect/disconnect, removal) run on the engine and on dockerd 20.10, each host in a
namespace of its own lab. Planted differences (children in the wrong mode, a freed ``eth0``
handed to the next connect) must fail, naming the line. Not here: a macvlan network with no
parent or ``--internal`` (it needs dummy links, which this kernel lacks, on both sides).
"""
from __future__ import annotations

import os

import pytest

from cnmlab.checks import diff, dockerd, scenario
from cnmlab.kernel import netlink
from tests.test_diff import PID, docker_states, is_macvlan, needs_docker  # noqa: F401

MACVLAN = [n for n in scenario.available() if is_macvlan(n)]


def test_the_macvlan_scenarios_are_shipped():
    assert MACVLAN == ["macvlan", "macvlan-modes"]


@pytest.mark.docker
@needs_docker
@pytest.mark.parametrize("name", MACVLAN)
def test_engine_matches_docker(name, docker_states):
    result = diff.diff(scenario.load(name), docker=docker_states(name))
    assert result.ok, result.render()
    assert not os.path.exists(os.path.join(dockerd.DAEMONS_DIR, f"dfs{PID}"))


@pytest.mark.docker
@needs_docker
def test_a_wrong_macvlan_mode_fails_naming_the_line(docker_states, monkeypatch):
    """The driver's children made in private mode where the network asks for bridge."""
    real = netlink.Netlink.add_macvlan

    def private(self, name, parent, mode, **kw):
        return real(self, name, parent, "private" if mode == "bridge" else mode, **kw)

    monkeypatch.setattr(netlink.Netlink, "add_macvlan", private)
    result = diff.diff(scenario.load("macvlan"), docker=docker_states("macvlan"))
    assert not result.ok
    found = {(d.section, d.side, d.line) for d in result.unlisted}
    line = "eth0 kind=macvlan mode={} master=- mtu=1500 state=UP flags=BROADCAST,MULTICAST,UP " \
           "mac=02:42:c0:a8:32:80"
    assert ("m1 links", "engine", line.format("private")) in found
    assert ("m1 links", "docker", line.format("bridge")) in found
    assert "- " + line.format("private") in result.render()


@pytest.mark.docker
@needs_docker
def test_reused_interface_names_fail_naming_the_line(docker_states, monkeypatch):
    """An engine that hands a freed eth0 to the next connect (libnetwork never does)."""
    from cnmlab.model import Sandbox

    monkeypatch.setattr(Sandbox, "next_ifindex", property(lambda self: {},
                                                          lambda self, v: None), raising=False)
    result = diff.diff(scenario.load("macvlan-modes"), docker=docker_states("macvlan-modes"))
    links = {(d.side, d.line.split(" mtu=")[0]) for d in result.unlisted
             if d.section == "a1 links"}
    assert links == {("engine", "eth0 kind=macvlan mode=private master=-"),
                     ("docker", "eth2 kind=macvlan mode=private master=-")}, result.render()
    assert "  [a1 links]" in result.render()
