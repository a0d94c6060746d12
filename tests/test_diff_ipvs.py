"""``cnmlab diff`` for service VIPs (IPVS): the engine's load balancer against a swarm's.

The ``ipvs`` scenario creates a service with two tasks on the engine (one host, lab 09) and on
dockerd 20.10 as a single-node swarm, and compares what the load balancers hold: IPVS services
and real servers, the lb namespace's firewall, addresses, routes and sysctls, and the tasks'
IPVS and firewall; known differences (fwmark against VIP:port, allocation order, forwarding)
are listed with their reasons. This kernel has no IPVS, so the module runs in the full-kernel VM
(``needs("ipvs")``); Docker's side takes about 100 s there (tasks start in 40-50 s under TCG).
A wrong scheduler and a missing real server must fail, naming the line.
"""
from __future__ import annotations

import os

import pytest

from cnmlab import services
from cnmlab.checks import diff, dockerd, scenario
from cnmlab.checks.vmlane import needs
from cnmlab.kernel.ipvs import Ipvs
from tests.test_diff import PID, is_ipvs, needs_docker

pytestmark = [pytest.mark.docker, needs_docker, needs("ipvs")]

IPVS = [n for n in scenario.available() if is_ipvs(n)]


@pytest.fixture(scope="module")
def docker_state():
    """Docker's side, read once: a swarm service costs ~100 s in the VM."""
    if os.geteuid() != 0:
        pytest.skip("needs root")
    return diff.run_docker(scenario.load("ipvs"), f"dfi{PID}")


def test_the_ipvs_scenario_is_shipped():
    assert IPVS == ["ipvs"]


def test_engine_matches_docker(docker_state):
    # Docker's side did balance: a fwmark service over both tasks, masqueraded
    assert docker_state["lb-app ipvs"] == ["FWM 256 rr",
                                           "  -> <task:web.1>:<client port> masq weight 1",
                                           "  -> <task:web.2>:<client port> masq weight 1"]
    result = diff.diff(scenario.load("ipvs"), docker=docker_state)
    assert result.ok, result.render()
    assert {d.section for d in result.differences} >= {"lb-app ipvs", "services"}
    assert not os.path.exists(os.path.join(dockerd.DAEMONS_DIR, f"dfi{PID}"))


def test_a_wrong_scheduler_fails_naming_the_line(docker_state, monkeypatch):
    monkeypatch.setattr(services, "SCHEDULER", "wrr")
    result = diff.diff(scenario.load("ipvs"), docker=docker_state)
    found = {(d.section, d.side, d.line) for d in result.unlisted}
    assert found == {("lb-app ipvs", "engine", "TCP <vip:web>:80 wrr")}, result.render()
    assert "- TCP <vip:web>:80 wrr" in result.render()


def test_a_missing_real_server_fails_naming_the_line(docker_state, monkeypatch):
    real = Ipvs.add_server
    added: list[str] = []

    def first_only(self, svc, ip, port, forward="masq", weight=1):
        added.append(ip)
        if len(added) == 1:
            real(self, svc, ip, port, forward, weight)

    monkeypatch.setattr(Ipvs, "add_server", first_only)
    result = diff.diff(scenario.load("ipvs"), docker=docker_state)
    found = {(d.section, d.side, d.line) for d in result.unlisted}
    assert found == {("lb-app ipvs", "docker", "  -> <task:web.2>:<client port> masq weight 1")}, \
        result.render()
