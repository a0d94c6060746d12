"""``cnmlab diff``: the engine holds itself to zero unlisted differences against real Docker.

Every shipped scenario runs on the engine and on Debian's dockerd 20.10 (in a namespace), and
must differ only where ``known-differences.yaml`` says why. A deliberately wrong engine (two
rules swapped, a route flag added) must fail, naming the line; the known list must not hide a
regression next to a listed difference; and nothing is left behind on either side.
"""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from cnmlab.checks import diff, dockerd, kernelstate, scenario
from cnmlab.checks.dockerd import missing_tools
from cnmlab.errors import InvalidInput
from cnmlab.firewall import iptables
from cnmlab.kernel import netlink
from cnmlab.workshop import labfile
from cnmlab.workshop.runner import LabRun
from cnmlab.yamlsrc import parse

PID = str(os.getpid())
_missing = missing_tools()
needs_docker = pytest.mark.skipif(bool(_missing), reason=f"real Docker not installed: missing "
                                  f"{', '.join(_missing)}")


# ---- pure logic ------------------------------------------------------------------------
def test_scenario_errors_name_the_file_line_and_field():
    bad = {"steps:\n  - run: {nme: c1}\n": "x.yaml:2: steps.0.run.nme: unknown field",
           "steps:\n  - fly: {}\n": "x.yaml:2: steps.0: unknown step 'fly'",
           "steps:\n  - run: {name: c1, publish: 8080}\n": "steps.0.run.publish: 8080 has the "
                                                           "wrong type",
           "steps: []\n": "x.yaml:1: steps: a non-empty list",
           "steps:\n  - connect: {network: a}\n": "steps.0.connect: container is required"}
    for text, message in bad.items():
        with pytest.raises(InvalidInput, match=message.replace(".", r"\.")):
            scenario.parse(parse(text, "x.yaml"))


def test_every_shipped_scenario_loads_and_prints_its_docker_commands():
    names = scenario.available()
    assert {"default-bridge", "user-defined", "published-ports", "connect-disconnect",
            "removal", "options", "macvlan", "macvlan-modes", "nat-and-ports",
            "networks-and-isolation", "service-discovery", "overlay"} <= set(names)
    sc = scenario.load("published-ports")
    assert str(sc.steps[1]) == "docker run -d --name t1 --network web -p 8080:80 -p 8443:443/tcp busybox"
    mv = scenario.load("macvlan")
    assert str(mv.steps[0]) == ("docker network create -d macvlan --subnet 192.168.50.0/24 "
                                "--gateway 192.168.50.1 --ip-range 192.168.50.128/27 "
                                "-o parent=eth0 lan")
    assert str(mv.steps[2]) == "docker run -d --name m2 --network lan --ip 192.168.50.20 busybox"
    sd = scenario.load("service-discovery")
    assert str(sd.steps[5]) == "docker run -d --name cache --network app --network-alias redis busybox"


def test_the_ipvs_scenario_prints_its_swarm_commands_and_compares_only_its_sections():
    sc = scenario.load("ipvs")
    assert [str(s) for s in sc.steps] == [
        "docker network create -d overlay --attachable --subnet 10.90.0.0/24 app",
        "docker service create --name web --network app --replicas 2 busybox"]
    state = {"host iptables": ["x"], "services": ["web vip 10.90.0.2 on app"],
             "lb-app ipvs": ["FWM 256 rr"], "web.1 ipvs": [], "web.1 links": ["eth0"]}
    assert list(sc.compared(state)) == ["services", "lb-app ipvs", "web.1 ipvs"]
    assert scenario.load("default-bridge").compared(state) == state
    with pytest.raises(InvalidInput, match=r"x\.yaml:1: compare\.0: not a regular expression"):
        scenario.parse(parse("compare: ['(']\nsteps:\n  - rm: {name: a}\n", "x.yaml"))


def test_the_embedded_dns_ports_read_by_role():
    lines = ["-A DOCKER_OUTPUT -d 127.0.0.11/32 -p udp -m udp --dport 53 -j DNAT "
             "--to-destination 127.0.0.11:41251",
             "-A DOCKER_POSTROUTING -s 127.0.0.11/32 -p udp -m udp --sport 41251 -j SNAT "
             "--to-source :53",
             "-A INPUT -p tcp --sport 41251 -j ACCEPT"]
    out = kernelstate._dns_ports(lines)
    assert out[0].endswith("--to-destination 127.0.0.11:<dns udp port>")
    assert "--sport <dns udp port> -j SNAT" in out[1]
    assert kernelstate._dns_ports(lines[2:]) == lines[2:]  # no DNAT: nothing to map


def test_compare_names_moved_and_missing_lines():
    engine = {"host iptables": ["a", "b", "c"], "c1 routes": ["default via 1"]}
    docker = {"host iptables": ["b", "a", "c"], "c1 routes": ["default via 1"]}
    found = diff.compare("s", engine, docker, [])
    # one line moved: reported once on each side, in its section
    assert {d.side for d in found} == {"engine", "docker"} and len(found) == 2
    assert {d.section for d in found} == {"host iptables"} and len({d.line for d in found}) == 1
    assert diff.compare("s", engine, engine, []) == []


def test_a_known_difference_covers_only_its_own_scenario_section_and_line():
    known = diff.load_known()
    docker = {"p1 routes": ["default via 172.19.0.1 dev eth0"],
              "w1 routes": ["default via 172.18.0.1 dev eth0"]}
    engine: dict[str, list[str]] = {"p1 routes": [], "w1 routes": []}
    found = diff.compare("user-defined", engine, docker, known)
    assert [d.known is not None for d in found] == [True, False]  # w1 lost its route: caught
    assert all(d.known is None for d in diff.compare("removal", engine, docker, known))
    # what lab 03 leaves out on purpose is known for the lab (NAME@lab), never for the engine
    lab_docker = {"host iptables": [":FORWARD DROP"], "host sysctls": []}
    lab_mine = {"host iptables": [":FORWARD ACCEPT"],
                "host sysctls": ["net.bridge.bridge-nf-call-iptables = 0"]}
    as_lab = diff.compare(diff.against_lab("nat-and-ports"), lab_mine, lab_docker, known)
    assert len(as_lab) == 3 and all(d.known for d in as_lab)
    as_engine = diff.compare("nat-and-ports", lab_mine, lab_docker, known)
    assert len(as_engine) == 3 and not any(d.known for d in as_engine)


def test_a_labs_docker_diff_names_a_shipped_scenario_and_a_host(tmp_path):
    src = open(os.path.join(labfile.discover()[1].path, "lab.yaml")).read()
    assert "docker_diff: {scenario: default-bridge, host: host}" in src
    for i, (bad, message) in enumerate((("{scenario: nope, host: host}", "docker_diff.scenario: no shipped "
                                                         "scenario 'nope'"),
                         ("{scenario: default-bridge, host: h9}", "docker_diff.host: unknown "
                                                                  "host 'h9'"),
                         ("{scenario: default-bridge}", "docker_diff"))):
        folder = tmp_path / f"lab{i}"
        folder.mkdir(parents=True)
        (folder / "lab.yaml").write_text(src.replace(
            "docker_diff: {scenario: default-bridge, host: host}", f"docker_diff: {bad}"))
        with pytest.raises(InvalidInput, match=message.replace(".", r"\.")):
            labfile.load(str(folder))


def test_a_link_in_mid_change_is_waited_for():
    """A bridge whose last port just left: carrier off, operstate still UP (linkwatch lag)."""
    def link(name, flags, state, kind=None, master=None):
        return {"ifname": name, "flags": flags, "operstate": state, "master": master,
                "linkinfo": {"info_kind": kind} if kind else None}
    settled = [link("br0", ["BROADCAST", "UP"], "DOWN", "bridge"),
               link("lo", ["LOOPBACK", "UP", "LOWER_UP"], "UNKNOWN")]
    assert kernelstate._unsettled(settled) == []
    assert kernelstate._unsettled([link("br0", ["BROADCAST", "UP"], "UP", "bridge")]) == ["br0"]
    # carrier still on but no port left
    assert kernelstate._unsettled([link("br0", ["UP", "LOWER_UP"], "UP", "bridge")]) == ["br0"]
    assert kernelstate._unsettled([link("br0", ["UP", "LOWER_UP"], "UP", "bridge"),
                                   link("v1", ["UP", "LOWER_UP"], "UP", "veth", "br0")]) == []


# ---- real Docker ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def docker_states():
    """Docker's state per scenario, read once per test run: a daemon start costs 5-8 s, and
    the planted-difference tests compare a broken engine with the same Docker state."""
    if os.geteuid() != 0:
        pytest.skip("needs root")
    cache: dict[str, dict[str, list[str]]] = {}
    run_docker = diff.run_docker  # the real one: a test may stand this fixture in for it

    def state(name: str) -> dict[str, list[str]]:
        if name not in cache:
            cache[name] = run_docker(scenario.load(name), f"dfs{PID}")
        return cache[name]
    return state


@pytest.fixture(scope="module")
def docker_default_bridge(docker_states):
    return docker_states("default-bridge")


# Every shipped scenario runs in CI, read from the folder: the macvlan ones in
# test_diff_macvlan.py, the multi-host ones (a swarm) in test_diff_overlay.py, the IPVS ones
# in test_diff_ipvs.py (the VM lane: this kernel has no IPVS); their lists are the complement
# of this one, so none is left out, the rest here; separate files keep each well under two
# minutes on a loaded machine.
def is_macvlan(name: str) -> bool:
    return name.startswith("macvlan")


def is_swarm(name: str) -> bool:
    """A multi-host scenario (steps name hosts): test_diff_overlay.py runs it on a swarm."""
    return bool(scenario.load(name).hosts)
def is_ipvs(name: str) -> bool:
    return name.startswith("ipvs")


@pytest.mark.docker
@needs_docker
@pytest.mark.parametrize("name", [n for n in scenario.available()
                                  if not is_macvlan(n) and not is_swarm(n)
                                  and not is_ipvs(n)])
def test_engine_matches_docker(name, docker_states):
    result = diff.diff(scenario.load(name), docker=docker_states(name))
    assert result.ok, result.render()
    assert not os.path.exists(os.path.join(dockerd.DAEMONS_DIR, f"dfs{PID}"))


@pytest.mark.docker
@needs_docker
def test_swapped_rules_fail_naming_the_line(docker_default_bridge, monkeypatch):
    real = iptables.IptablesFirewall.render

    def swapped(self, host, user_rules=None):
        lines = real(self, host, user_rules).splitlines()
        i = lines.index("-A FORWARD -j DOCKER-USER")
        lines[i], lines[i + 1] = lines[i + 1], lines[i]
        return "\n".join(lines) + "\n"

    monkeypatch.setattr(iptables.IptablesFirewall, "render", swapped)
    engine = diff.run_engine(scenario.load("default-bridge"), f"dfw{PID}")
    found = diff.compare("default-bridge", engine, docker_default_bridge, diff.load_known())
    assert found and all(d.section == "host iptables" and d.known is None for d in found)
    assert {d.line for d in found} & {"-A FORWARD -j DOCKER-USER",
                                      "-A FORWARD -j DOCKER-ISOLATION-STAGE-1"}


@pytest.mark.docker
@needs_docker
def test_an_extra_route_flag_fails_naming_the_line(docker_default_bridge, monkeypatch):
    real = netlink.Netlink.add_route

    def with_metric(self, dst="default", gateway=None, dev=None):
        real(self, dst, gateway, dev)
        if dst == "default" and self.ns and ".c" in self.ns:  # the containers' routes only
            self._ip.route("replace", dst="0.0.0.0/0", gateway=gateway, priority=5, proto=3,
                           oif=self.index(dev) if dev else None)

    monkeypatch.setattr(netlink.Netlink, "add_route", with_metric)
    engine = diff.run_engine(scenario.load("default-bridge"), f"dfr{PID}")
    found = diff.compare("default-bridge", engine, docker_default_bridge, diff.load_known())
    assert ("c1 routes", "engine", "default via 172.17.0.1 dev eth0 metric 5") in {
        (d.section, d.side, d.line) for d in found}


@pytest.mark.docker
@needs_docker
def test_cli_prints_the_commands_and_exits_zero():
    r = subprocess.run([sys.executable, "-m", "cnmlab.cli", "diff", "default-bridge"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "$ docker run -d --name c2 -p 8080:80 busybox" in r.stdout
    assert "0 unlisted" in r.stdout


@pytest.mark.docker
@needs_docker
def test_a_hand_built_lab_against_docker(lab, docker_default_bridge, monkeypatch):
    """What would Docker have built here? A learner's docker0 and veths, by hand, no NAT."""
    host = lab.add_host("host", default_bridge=False, firewall="manual")
    for i, name in enumerate(("c1", "c2"), start=2):
        sb = host.run(name, "none")
        for cmd in (f"ip link add veth-{name} type veth peer name tmp-{name}",
                    f"ip link set tmp-{name} netns {sb.netns}",
                    f"ip link set veth-{name} master docker0 up"):
            if name == "c1" and cmd.endswith("up"):
                host.exec("ip link add docker0 type bridge".split(), timeout=10)
                host.exec("ip addr add 172.17.0.1/16 brd + dev docker0".split())
                host.exec("ip link set docker0 up".split())
            assert host.exec(cmd.split()).returncode == 0
        for cmd in (f"ip link set tmp-{name} name eth0", "ip link set eth0 up",
                    f"ip addr add 172.17.0.{i}/16 brd + dev eth0",
                    "ip route add default via 172.17.0.1"):
            assert sb.exec(cmd.split()).returncode == 0
    monkeypatch.setattr(diff, "run_docker", lambda *a: docker_default_bridge)
    result = diff.run_against(scenario.load("default-bridge"), lab.name)
    found = {(d.section, d.side, d.line) for d in result.differences}
    # what the learner left out is named, on Docker's side...
    assert ("host iptables", "docker",
            "-A POSTROUTING -s 172.17.0.0/16 ! -o <br:bridge> -j MASQUERADE") in found
    # ...and what they built as Docker does is not a difference, whatever they named it
    assert not [d for d in result.differences if d.section in ("c1 addresses", "c2 addresses")]
    assert not [d for d in result.differences
                if d.section == "host links" and "<veth:c1.eth0>" in d.line]


# ---- a learner's solved lab against Docker (labs 03-05, the workshop's D key) ----------------
def _solved(lab_id: str) -> LabRun:
    labdef = labfile.get(lab_id)
    run = LabRun(labdef, f"t{PID}-{lab_id[:2]}dd")
    run.start()
    try:
        run.solve(labdef.steps[-1])
        assert all(r.ok for r in run.check(labdef.steps[-1]))
    except BaseException:
        run.stop()
        raise
    return run


@pytest.fixture
def progress_file(tmp_path, monkeypatch):
    monkeypatch.setenv("CNMLAB_PROGRESS", str(tmp_path / "progress.json"))


@pytest.mark.docker
@needs_docker
@pytest.mark.parametrize("lab_id", ["02-default-bridge", "03-nat-and-ports",
                                    "04-user-defined-networks", "05-service-discovery"])
def test_a_solved_lab_matches_docker(lab_id, docker_states, progress_file, monkeypatch):
    """Every step solved: what is left against Docker is listed, each with its reason.

    Docker's side is the scenario's own run (read once, shared with test_engine_matches_docker).
    """
    name, host = labfile.get(lab_id).docker_diff
    monkeypatch.setattr(diff, "run_docker", lambda sc, _tag: docker_states(sc.name))
    run = _solved(lab_id)
    try:
        result = run.docker_diff()
    finally:
        run.stop()
    assert result.scenario == name and result.ok, result.render()
    assert "(- lab " in result.render().splitlines()[0]  # "-" is the learner's side here
    found = [(d.section, d.side, d.line) for d in result.differences]
    if lab_id.startswith("02"):  # no firewall at all yet (lab 03's), each line with its reason
        assert ("host iptables", "docker", "-A POSTROUTING -s 172.17.0.0/16 ! -o <br:bridge> "
                "-j MASQUERADE") in found
        assert [f for f in found if f[1] == "engine" and f[0] != "host links"] == []
    elif lab_id.startswith("03"):  # the lab's deliberate differences, each shown with its reason
        assert ("host iptables", "docker", ":FORWARD DROP") in found
    elif lab_id.startswith("04"):  # what the lab text says: one, secret's route (step 5)
        assert found == [("secret routes", "docker", "default via 10.40.0.1 dev eth0")]
    else:  # none; old1 joined app, so its resolv.conf names the embedded resolver
        assert found == []
        assert "nameserver 127.0.0.11" in docker_states(name)["old1 resolv.conf"]


@pytest.mark.docker
@needs_docker
def test_a_solved_lab_missing_a_published_port_fails_naming_the_rule(docker_states, progress_file,
                                                                      monkeypatch):
    """Lab 03 solved, then the DNAT of -p 8080:80 deleted by hand: the one unlisted line."""
    monkeypatch.setattr(diff, "run_docker", lambda sc, _tag: docker_states(sc.name))
    run = _solved("03-nat-and-ports")
    try:
        host = run.lab.host("host")
        assert host.exec(["iptables", "-t", "nat", "-D", "DOCKER", "!", "-i", "docker0", "-p",
                          "tcp", "-m", "tcp", "--dport", "8080", "-j", "DNAT",
                          "--to-destination", "172.17.0.2:80"]).returncode == 0
        result = run.docker_diff()
    finally:
        run.stop()
    assert not result.ok
    assert [(d.section, d.side, d.line) for d in result.unlisted] == [
        ("host iptables", "docker",
         "-A DOCKER ! -i <br:bridge> -p tcp -m tcp --dport 8080 -j DNAT "
         "--to-destination 172.17.0.2:80")], result.render()
