"""``cnmlab diff`` for the overlay driver: the engine against a real two-node Docker swarm.

The multi-host scenarios (``overlay``: an attachable overlay, a container on each of two hosts
on one underlay) run on the engine (embedded etcd + agents, ingress as ``swarm init`` leaves
it) and on two dockerd 20.10 joined in a swarm (``checks.swarm``). Both hosts' kernel state is
compared, the overlay's own namespaces included (br0, vxlan0 with its VNI/port/flags, the
permanent neighbour and FDB entries of the remote endpoints). The swarm is started once for
the file; the planted differences (a missing FDB/neighbour entry, a wrong VXLAN port) are
compared with that same Docker state and must fail, naming the line.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from cnmlab.checks import diff, dockerd, scenario
from cnmlab.drivers import overlay
from cnmlab.errors import InvalidInput
from cnmlab.kernel import nsexec
from cnmlab.kernel.netlink import Netlink
from cnmlab.yamlsrc import parse
from tests.test_diff import PID, is_swarm, needs_docker

SWARM = [n for n in scenario.available() if is_swarm(n)]
needs_etcd = pytest.mark.skipif(not shutil.which("etcd"), reason="needs etcd-server")


def test_the_swarm_scenarios_are_shipped_and_name_their_hosts():
    assert SWARM == ["overlay", "overlay-removal"]
    sc = scenario.load("overlay")
    assert sc.hosts == ["h1", "h2"]
    assert str(sc.steps[0]) == ("docker network create -d overlay --attachable "
                                "--subnet 10.0.9.0/24 ov")
    assert str(sc.steps[2]) == "(on h2) docker run -d --name c2 --network ov --ip 10.0.9.20 busybox"
    assert str(sc.steps[4]) == "(on h1) docker network connect --ip 10.0.9.30 ov c3"


def test_a_steps_host_is_checked_and_the_first_named_host_is_the_manager():
    with pytest.raises(InvalidInput, match=r"x\.yaml:2: steps\.0\.run\.host: 5 has the wrong type"):
        scenario.parse(parse("steps:\n  - run: {name: c1, host: 5}\n", "x.yaml"))
    sc = scenario.parse(parse("steps:\n  - network_create: {name: n, driver: overlay}\n"
                              "  - run: {name: c1, network: n, host: b}\n"
                              "  - run: {name: c2, network: n, host: a}\n", "x.yaml"))
    assert sc.hosts == ["b", "a"]
    assert str(sc.steps[0]) == "docker network create -d overlay --attachable n"
    assert scenario.parse(parse("steps:\n  - run: {name: c1}\n", "x.yaml")).hosts == []


@pytest.fixture(scope="module")
def swarm_states():
    """Docker's state per swarm scenario, read once per file: the two daemons and the swarm
    cost most of this file's time."""
    if os.geteuid() != 0:
        pytest.skip("needs root")
    cache: dict[str, dict[str, list[str]]] = {}

    def state(name: str) -> dict[str, list[str]]:
        if name not in cache:
            cache[name] = diff.run_docker(scenario.load(name), f"dfo{PID}")
        return cache[name]
    return state


def _no_daemon_left() -> bool:
    return not [d for d in os.listdir(dockerd.DAEMONS_DIR) if d.startswith(f"dfo{PID}")] \
        if os.path.isdir(dockerd.DAEMONS_DIR) else True


def _processes(*tags: str) -> list[str]:
    """Command lines naming one of ``tags`` (a lab's etcd, agents and DNS; a swarm's
    dockerd and its workdir)."""
    out = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if any(t in cmd for t in tags):
            out.append(cmd)
    return out


def _covers_overlay(state: dict[str, list[str]]) -> None:
    """Both hosts, the overlay's namespace, its remote peers, the late connect."""
    for h, other in (("h1", "192.168.50.12"), ("h2", "192.168.50.11")):
        assert any(l.startswith("vxlan0 kind=vxlan id=4097 port=4789 ")
                   for l in state[f"{h}: network ov links"])
        assert any(f"dev vxlan0 dst {other} self permanent" in l
                   for l in state[f"{h}: network ov fdb"])
    assert "eth1 10.0.9.30/24 brd 10.0.9.255 scope global" in state["h1: c3 addresses"]
    assert "10.0.9.30 dev vxlan0 lladdr 02:42:0a:00:09:1e PERMANENT" in \
        state["h2: network ov neighbours"]  # the connect reached the other host


def _covers_removal(state: dict[str, list[str]]) -> None:
    """The peers of a removed and of a disconnected container are gone from the other host,
    and the node with no container left on the overlay has no part of it any more."""
    assert state["h1: network ov neighbours"] == []
    assert not [l for l in state["h1: network ov fdb"] if " dst " in l]
    assert "h2: network ov links" not in state
    assert [l.split(" ")[0] for l in state["h2: c3 links"]] == ["lo"]


COVERS = {"overlay": _covers_overlay, "overlay-removal": _covers_removal}


@pytest.mark.docker
@needs_docker
@needs_etcd
@pytest.mark.parametrize("name", SWARM)
def test_engine_matches_a_docker_swarm(name, swarm_states):
    docker_state = swarm_states(name)
    COVERS[name](docker_state)  # what the comparison is about is there to compare
    result = diff.diff(scenario.load(name), docker=docker_state)
    assert result.ok, result.render()
    assert result.differences  # the listed ones (learning, lb-ov) are printed, not dropped
    assert _no_daemon_left()
    assert not _processes(f"df{PID}e", f"dfo{PID}")  # no etcd, agent, dockerd left


@pytest.mark.docker
@needs_docker
@needs_etcd
def test_cli_runs_the_overlay_scenario_and_exits_zero():
    r = subprocess.run([sys.executable, "-m", "cnmlab.cli", "diff", "overlay"],
                       capture_output=True, text=True, timeout=400)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "$ (on h1) docker network connect --ip 10.0.9.30 ov c3" in r.stdout
    assert "0 unlisted" in r.stdout
    assert "(known: Docker 19.03+ gives an attachable swarm overlay one load-balancer" in r.stdout


def _break_fdb(lab) -> None:
    """h1 forgets c2: its permanent neighbour and FDB entries on vxlan0 (agent stopped first,
    or it would put them back)."""
    lab.stop_agent("h1")
    c2 = lab.sandbox("c2")
    with Netlink(lab.host("h1").networks()["ov"].netns) as nl:
        nl.delete_neighbour("vxlan0", c2.ip())
        nl.delete_fdb("vxlan0", "02:42:0a:00:09:14", lab.host("h2").model.underlay_ip)


@pytest.mark.docker
@needs_docker
@needs_etcd
def test_a_missing_fdb_entry_fails_naming_the_line(swarm_states):
    docker_state = swarm_states("overlay")
    engine = diff.run_engine(scenario.load("overlay"), f"dfb{PID}", after=_break_fdb)
    result = diff.diff(scenario.load("overlay"), engine=engine, docker=docker_state)
    found = {(d.section, d.side, d.line) for d in result.unlisted}
    assert found == {
        ("h1: network ov fdb", "docker",
         "02:42:0a:00:09:14 dev vxlan0 dst 192.168.50.12 self permanent"),
        ("h1: network ov neighbours", "docker",
         "10.0.9.20 dev vxlan0 lladdr 02:42:0a:00:09:14 PERMANENT")}, result.render()
    assert "+ 02:42:0a:00:09:14 dev vxlan0 dst 192.168.50.12 self permanent" in result.render()


def _wrong_port(lab) -> None:
    """h1's vxlan0 of ov made again on UDP 4790: everything else as the driver makes it."""
    lab.stop_agent("h1")
    host = lab.host("h1")
    net = host.networks()["ov"]
    ns = net.netns
    nsexec.run(ns, ["ip", "link", "del", "vxlan0"])
    nsexec.run(host.netns, ["ip", "link", "add", "vxbad", "type", "vxlan", "id",
                            overlay.vni_of(net).__str__(), "dstport", "4790",
                            "proxy", "l2miss", "l3miss"])
    nsexec.run(host.netns, ["ip", "link", "set", "vxbad", "netns", nsexec.netns_path(ns)])
    nsexec.run(ns, ["ip", "link", "set", "vxbad", "name", "vxlan0", "mtu", "1450",
                    "master", "br0", "up"])
    # c2's entries went with the old device: put them back, so the port is all that differs
    nsexec.run(ns, ["ip", "neigh", "add", "10.0.9.20", "lladdr", "02:42:0a:00:09:14", "dev",
                    "vxlan0", "nud", "permanent"])
    nsexec.run(ns, ["bridge", "fdb", "add", "02:42:0a:00:09:14", "dev", "vxlan0", "dst",
                    lab.host("h2").model.underlay_ip, "self", "permanent"])


@pytest.mark.docker
@needs_docker
@needs_etcd
def test_a_wrong_vxlan_port_fails_naming_the_line(swarm_states):
    docker_state = swarm_states("overlay")
    engine = diff.run_engine(scenario.load("overlay"), f"dfp{PID}", after=_wrong_port)
    result = diff.diff(scenario.load("overlay"), engine=engine, docker=docker_state)
    lines = {(d.section, d.side, d.line.split(" master=")[0]) for d in result.unlisted}
    assert ("h1: network ov links", "engine",
            "vxlan0 kind=vxlan id=4097 port=4790 learning=true proxy=true l2miss=true "
            "l3miss=true") in lines, result.render()
    assert ("h1: network ov links", "docker",
            "vxlan0 kind=vxlan id=4097 port=4789 learning=true proxy=true l2miss=true "
            "l3miss=true") in lines, result.render()
    # the port is all that is wrong: h2 and the other sections still match
    assert {d.section for d in result.unlisted} == {"h1: network ov links"}, result.render()
