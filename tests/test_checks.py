"""The built-in check kinds against real kernel objects built by the engine (and by hand).

One lab, one host ``h1``: ``front`` (icc on) with web (publishes 8080->80) and api, ``back``
(icc off) with db and db2, and ``old`` on the default bridge. Every kind must pass where the
topology says so, and its opposite must fail with a reason.
"""
from __future__ import annotations

import os
import subprocess
import textwrap
import time

import pytest

from cnmlab import frames
from cnmlab.checks import library, probes, targets
from cnmlab.checks.api import CheckResult
from cnmlab.checks.kinds import kinds, run_check, run_checks
from cnmlab.checks.submission import SubmissionTarget
from cnmlab.checks.targets import EngineTarget, make_target
from cnmlab.errors import CnmError, InvalidInput
from cnmlab.kernel import netns, nsexec
from cnmlab.kernel.netlink import Netlink
from cnmlab.lab import Lab

pytestmark = pytest.mark.kernel

if os.geteuid() != 0:
    pytest.skip("needs root", allow_module_level=True)

FRONT, BACK = "10.61.0.0/24", "10.62.0.0/24"


@pytest.fixture(scope="module")
def lab():
    lab = Lab(f"chk{os.getpid()}")
    try:
        h = lab.add_host("h1")
        h.network_create("front", subnet=FRONT)
        h.network_create("back", subnet=BACK, icc=False)
        h.run("web", "front", publish=["8080:80/tcp"])
        h.run("api", "front")
        h.run("db", "back")
        h.run("db2", "back")
        h.run("old", "bridge")
        yield lab
    finally:
        lab.down()


@pytest.fixture(scope="module")
def target(lab):
    return EngineTarget(lab)


def check(target, kind, /, **params) -> CheckResult:
    r = run_check(target, {kind: params})
    assert r.kind == kind
    return r


def passes(target, kind, /, **params) -> CheckResult:
    r = check(target, kind, **params)
    assert r.ok, f"{r.check}: expected {r.expected}, observed {r.observed}: {r.reason}"
    assert r.reason == ""
    return r


def fails(target, kind, /, **params) -> CheckResult:
    r = check(target, kind, **params)
    assert not r.ok, f"{r.check} passed: {r.observed}"
    assert r.reason and "\n" not in r.reason
    return r


# ---- targets -------------------------------------------------------------------------------

def test_engine_target_model(lab, target):
    sbs = target.sandboxes()
    assert set(sbs) == {"web", "api", "db", "db2", "old"}
    assert sbs["web"].ns.name == lab.sandbox("web").netns
    assert sbs["web"].addresses == {"front": lab.sandbox("web").ip("front")}
    assert sbs["web"].host == "h1"
    hosts = target.hosts()
    assert hosts["h1"].public_ip == "203.0.113.10"
    assert hosts["h1"].ns.name == lab.host("h1").netns
    up = target.upstream()
    assert up.name == "upstream" and up.ip() == "198.51.100.10"
    assert up.ns.name == lab.upstream_netns
    assert ("web", "h1", 8080, 80, "tcp") in target.published()
    assert target.profile == frozenset()


def test_make_target(lab):
    t = make_target("engine", lab.name)
    assert set(t.sandboxes()) == {"web", "api", "db", "db2", "old"}
    with pytest.raises(CnmError, match="unknown target .cni.; known: docker, engine, manifest, submission"):
        make_target("cni", "x")


def test_every_kind_is_registered():
    assert set(library.PARAMS) <= set(kinds())
    for k in ("reachable", "isolated", "matrix", "egress-nat-seen", "published-port", "hairpin",
              "dns-resolves", "dns-absent", "mtu", "mac", "default-route", "link",
              "iptables-rule", "sysctl", "vxlan-on-wire", "lb-spread", "python"):
        assert k in kinds()


# ---- reachability --------------------------------------------------------------------------

def test_same_network_reachable_not_isolated(target):
    r = passes(target, "reachable", **{"from": "api", "to": "web"})
    assert r.check == "reachable api -> web (icmp)"
    r = fails(target, "isolated", **{"from": "api", "to": "web"})
    assert "front" in r.reason and "icc" in r.reason


def test_udp_check_steps_around_the_learners_own_listener(lab, target):
    """``nc -u -l`` in web holds the port a UDP check wants. nc sets SO_REUSEADDR, so the
    check's echo server could bind beside it and the kernel would hand datagrams to either:
    the check must not send into the learner's listener, must never pass (not even as
    ``isolated``), and must say which process holds the port; once it is gone, it passes."""
    web = lab.sandbox("web").netns
    out = open(os.devnull, "wb")
    got = subprocess.Popen(["ip", "netns", "exec", web, "nc", "-u", "-l", "-p", "5003"],
                           stdout=subprocess.PIPE, stderr=out)
    try:
        deadline = time.monotonic() + 20
        while probes.port_owner(web, "udp", 5003) is None:
            assert time.monotonic() < deadline, "nc -u -l did not start"
            time.sleep(0.05)
        spec = {"from": "api", "to": "web", "proto": "udp", "port": 5003}
        r = fails(target, "reachable", **spec)
        assert r.observed.startswith("not probed: 5003/udp in web is held by nc -u -l -p 5003 "
                                     f"(pid "), r.observed
        assert "Ctrl-C" in r.reason and "{" not in r.observed + r.reason + r.expected
        r = fails(target, "isolated", **spec)  # not probed is never "isolated"
        assert "held by nc" in r.observed
        # the learner's nc got none of the check's datagrams
        os.set_blocking(got.stdout.fileno(), False)
        assert got.stdout.read() in (None, b"")
    finally:
        got.kill()
        got.wait()
        got.stdout.close()
        out.close()
    deadline = time.monotonic() + 20
    while probes.port_owner(web, "udp", 5003) is not None:
        assert time.monotonic() < deadline, "nc -u -l did not go away"
        time.sleep(0.05)
    r = passes(target, "reachable", **spec)
    assert "echo from web" in r.observed


def test_across_networks_isolated(target):
    passes(target, "isolated", **{"from": "api", "to": "db"})
    r = fails(target, "reachable", **{"from": "api", "to": "db"})
    assert "share no network" in r.reason


def test_icc_disabled_isolates_members(target):
    passes(target, "isolated", **{"from": "db", "to": "db2"})
    r = fails(target, "reachable", **{"from": "db", "to": "db2"})
    assert "icc disabled" in r.reason


def test_tcp_and_udp_with_echo_server(target):
    r = passes(target, "reachable", **{"from": "api", "to": "web", "proto": "tcp", "port": 5000})
    assert "echo from web" in r.observed
    passes(target, "reachable", **{"from": "api", "to": "web", "proto": "udp", "port": 5001})
    passes(target, "isolated", **{"from": "api", "to": "db", "proto": "tcp", "port": 5000,
                                  "timeout": 0.5})
    # no server: nothing listens, the connection is refused, so it is not "reachable"
    r = fails(target, "reachable", **{"from": "api", "to": "web", "proto": "tcp", "port": 5002,
                                      "server": False})
    assert "refus" in r.reason


def test_to_upstream_host_and_literal(target):
    passes(target, "reachable", **{"from": "old", "to": "upstream"})
    passes(target, "reachable", **{"from": "api", "to": "198.51.100.53"})
    passes(target, "reachable", **{"from": "upstream", "to": "host:h1"})
    passes(target, "isolated", **{"from": "upstream", "to": "web", "timeout": 0.5})
    passes(target, "reachable", **{"from": "host:h1", "to": "db", "network": "back"})


def test_unknown_names_are_errors(target):
    r = check(target, "reachable", **{"from": "nobody", "to": "web"})
    assert not r.ok and r.observed == "the check could not run"
    assert "{" not in r.expected and r.expected == "reachable from=nobody to=web"  # no dicts
    assert "no sandbox 'nobody'" in r.reason and "known: api, db" in r.reason


# ---- matrix --------------------------------------------------------------------------------

NAMES = ["web", "api", "db", "db2", "old"]


def test_matrix_groups(target):
    r = passes(target, "matrix", sandboxes=NAMES, groups=[["web", "api"]])
    assert r.observed == "0 wrong, 20 correct"
    t = r.table
    assert t.expected[("web", "api")] is True and t.expected[("db", "db2")] is False
    assert t.observed[("api", "web")] is True and t.observed[("web", "db")] is False
    assert r.to_json()["table"] is not None


def test_matrix_wrong_expectation(target):
    r = fails(target, "matrix", sandboxes=NAMES, groups=[["web", "api", "db"]])
    assert set(r.table.wrong) == {("web", "db"), ("db", "web"), ("api", "db"), ("db", "api")}
    assert r.observed == "4 wrong, 16 correct"
    assert "X" in r.table.render_text()


def test_matrix_reach_pairs(target):
    passes(target, "matrix", sandboxes=["web", "api", "db"],
           reach=[["web", "api"], ["api", "web"]])
    r = fails(target, "matrix", sandboxes=["web", "api"], reach=[["web", "api"]])
    assert r.table.wrong == [("api", "web")]


# ---- NAT, published ports ------------------------------------------------------------------

def test_egress_nat_seen(target):
    r = passes(target, "egress-nat-seen", **{"from": "api"})
    assert r.observed == "upstream saw 203.0.113.10"
    passes(target, "egress-nat-seen", **{"from": "old", "host": "h1", "expect": "host"})
    r = fails(target, "egress-nat-seen", **{"from": "api", "expect": "sandbox"})
    fails(target, "egress-nat-seen", **{"from": "api", "expect": "none"})


def test_published_port_and_hairpin(target):
    r = passes(target, "published-port", port=8080, to="web")
    assert "echo from web" in r.observed
    passes(target, "published-port", port=8080, to="web", container_port=80, host="h1")
    passes(target, "hairpin", **{"from": "api", "port": 8080, "to": "web"})
    passes(target, "published-port", **{"from": "web", "port": 8080, "to": "web"})
    # the port goes to web, not api: web's own server answers, api's never does
    with probes.EchoServer(target.sandboxes()["web"].ns, "tcp", 80, name="web"):
        r = fails(target, "published-port", port=8080, to="api", container_port=80)
    assert "web answered instead of api" in r.reason
    r = fails(target, "published-port", port=8081, to="web", container_port=80, timeout=0.5)
    assert "DNAT" in r.reason


# ---- DNS -----------------------------------------------------------------------------------

def _wait_dns(target, name="web", src="api"):
    deadline = time.monotonic() + 5
    while True:
        r = check(target, "dns-resolves", **{"from": src, "name": name, "expect": name})
        if r.ok or time.monotonic() > deadline:
            return r
        time.sleep(0.2)


def test_dns(target, lab):
    r = _wait_dns(target)
    assert r.ok, r
    passes(target, "dns-resolves", **{"from": "api", "name": "web",
                                      "expect": lab.sandbox("web").ip()})
    passes(target, "dns-resolves", **{"from": "api", "name": "web.front", "expect": ["web"]})
    r = fails(target, "dns-resolves", **{"from": "api", "name": "web", "expect": "api"})
    assert "api missing" in r.reason
    passes(target, "dns-absent", **{"from": "api", "name": "db"})
    r = fails(target, "dns-absent", **{"from": "api", "name": "web"})
    r = fails(target, "dns-resolves", **{"from": "api", "name": "db", "expect": "db"})
    assert "NXDOMAIN" in r.observed
    # the default bridge has no embedded DNS: old's resolv.conf names the upstream server
    assert library.nameserver_of(target.sandboxes()["old"].ns) == "198.51.100.53"


# ---- kernel state --------------------------------------------------------------------------

def test_kernel_state(target, lab):
    web_ip = lab.sandbox("web").ip()
    passes(target, "mtu", sandbox="web", mtu=1500)
    fails(target, "mtu", sandbox="web", mtu=1450)
    fails(target, "mtu", sandbox="web", interface="eth9", mtu=1500)
    passes(target, "mtu", ns="host:h1", interface="eth0", mtu=1500)
    passes(target, "mac", sandbox="web", mac="docker")
    passes(target, "mac", sandbox="web", mac=library.docker_mac(web_ip).upper())
    fails(target, "mac", sandbox="web", mac="02:42:00:00:00:01")
    passes(target, "default-route", sandbox="web", via="10.61.0.1")
    fails(target, "default-route", sandbox="web", via="10.61.0.254")
    fails(target, "default-route", sandbox="web", via=None)
    passes(target, "default-route", sandbox="upstream", via=None)
    passes(target, "link", ns="host:h1", name="docker0", kind="bridge", up=True,
           address="172.17.0.1/16", mtu=1500)
    passes(target, "link", ns="web", name="eth0", kind="veth", address=f"{web_ip}/24")
    r = fails(target, "link", ns="host:h1", name="docker0", kind="vxlan", master="x")
    assert "not a vxlan" in r.reason and "master" in r.reason
    fails(target, "link", ns="upstream", name="nope0")
    passes(target, "iptables-rule", host="h1",
           rule="-A DOCKER-ISOLATION-STAGE-2 -o docker0 -j DROP")
    passes(target, "iptables-rule", host="h1", table="nat",
           rule="-A POSTROUTING -s 172.17.0.0/16 ! -o docker0 -j MASQUERADE")
    # -C understands a rule written without the implicit "-m tcp"
    bridge = target.networks()["front"]["device"]
    passes(target, "iptables-rule", host="h1", table="nat",
           rule=f"-A DOCKER ! -i {bridge} -p tcp --dport 8080 -j DNAT "
                f"--to-destination {web_ip}:80")
    fails(target, "iptables-rule", host="h1", rule="-A FORWARD -j DROP")
    passes(target, "iptables-rule", host="h1", rule="-A FORWARD -j DROP", present=False)
    passes(target, "iptables-rule", host="h1", rule="-P FORWARD DROP")
    passes(target, "sysctl", ns="host:h1", key="net.ipv4.ip_forward", value=1)
    r = fails(target, "sysctl", ns="web", key="net.ipv4.ip_forward", value=1)
    assert "sysctl -w" in r.reason


# ---- python, validation --------------------------------------------------------------------

def pyfn_true(target, params):
    return "web" in target.sandboxes() and params["want"] == 1


def pyfn_result(target, params):
    return CheckResult("custom", "python", False, "x", "y", "look at z")


def test_python_kind(target):
    passes(target, "python", call=f"{__name__}:pyfn_true", want=1)
    r = fails(target, "python", call=f"{__name__}:pyfn_true", want=2)
    assert r.reason
    r = run_check(target, {"python": {"call": f"{__name__}:pyfn_result"}})
    assert r.check == "custom" and r.reason == "look at z"
    r = run_check(target, {"python": {"call": "nonexistent_mod:fn"}})
    assert not r.ok and "cannot load" in r.reason


def test_validate():
    library.validate("reachable", {"from": "a", "to": "b", "proto": "tcp", "port": 80})
    with pytest.raises(InvalidInput, match="unknown parameter 'form'"):
        library.validate("reachable", {"form": "a", "to": "b"})
    with pytest.raises(InvalidInput, match="missing parameter 'from'"):
        library.validate("reachable", {"to": "b"})
    with pytest.raises(InvalidInput, match="needs a port"):
        library.validate("isolated", {"from": "a", "to": "b", "proto": "tcp"})
    with pytest.raises(InvalidInput, match="port must be a port number"):
        library.validate("published-port", {"port": "x", "to": "b"})
    with pytest.raises(InvalidInput, match="exactly one of groups: or reach:"):
        library.validate("matrix", {"sandboxes": ["a"]})
    with pytest.raises(InvalidInput, match="'c' in groups is not in sandboxes"):
        library.validate("matrix", {"sandboxes": ["a", "b"], "groups": [["a", "c"]]})
    with pytest.raises(InvalidInput, match="expect must be host, sandbox, masqueraded or none"):
        library.validate("egress-nat-seen", {"from": "a", "expect": "nat"})
    with pytest.raises(InvalidInput, match="via must be"):
        library.validate("default-route", {"sandbox": "a", "via": "gw"})
    library.validate("default-route", {"sandbox": "a", "via": None})
    with pytest.raises(InvalidInput, match="unknown check"):
        library.validate("pingpong", {})


def test_bad_params_are_a_failed_result(target):
    r = run_check(target, {"reachable": {"from": "api"}})
    assert not r.ok and "missing parameter 'to'" in r.reason


# ---- submission (a learner's hand-built namespaces) ----------------------------------------

SAME_CHECKS = [
    {"reachable": {"from": "api", "to": "web"}},
    {"isolated": {"from": "api", "to": "web"}},
    {"isolated": {"from": "api", "to": "db"}},
    {"reachable": {"from": "api", "to": "db"}},
    {"isolated": {"from": "db", "to": "db2"}},
    {"reachable": {"from": "api", "to": "web", "proto": "tcp", "port": 5000}},
    {"matrix": {"sandboxes": NAMES, "groups": [["web", "api"]]}},
    {"egress-nat-seen": {"from": "api"}},
    {"egress-nat-seen": {"from": "api", "expect": "sandbox"}},
    {"published-port": {"port": 8080, "to": "web", "container_port": 80}},
    {"hairpin": {"from": "api", "port": 8080, "to": "web", "container_port": 80}},
    {"dns-resolves": {"from": "api", "name": "web", "expect": "web"}},
    {"dns-absent": {"from": "api", "name": "db"}},
    {"mtu": {"sandbox": "web", "mtu": 1500}},
    {"mac": {"sandbox": "web", "mac": "docker"}},
    {"default-route": {"sandbox": "web", "via": "10.61.0.1"}},
    {"default-route": {"sandbox": "api", "via": "10.61.0.9"}},
    {"link": {"ns": "host:h1", "name": "docker0", "kind": "bridge", "up": True}},
    {"iptables-rule": {"host": "h1", "rule": "-A DOCKER-ISOLATION-STAGE-2 -o docker0 -j DROP"}},
    {"sysctl": {"ns": "host:h1", "key": "net.ipv4.ip_forward", "value": 1}},
]


def _submission(lab, path, api_pid=None):
    sbs = {}
    for sb in lab.sandboxes():
        ref = {"pid": api_pid} if sb.name == "api" and api_pid else {"netns": sb.netns}
        sbs[sb.name] = {**ref, "addresses": {n.name: ep.ip.split("/")[0]
                                             for n, ep in sb.endpoints()}}
    import yaml

    doc = {"sandboxes": sbs,
           "hosts": {"h1": {"netns": lab.host("h1").netns, "public_ip": "203.0.113.10"}},
           "upstream": {"path": netns.path_of(lab.upstream_netns), "ip": "198.51.100.10"},
           "extra_checks": SAME_CHECKS[:2]}
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return str(path)


def test_submission_target_gives_the_same_results(lab, target, tmp_path):
    assert _wait_dns(target).ok
    # api by PID: a process living in its namespace (with its own resolv.conf mounted)
    proc = subprocess.Popen(["ip", "netns", "exec", lab.sandbox("api").netns, "sleep", "60"])
    try:
        time.sleep(0.3)
        m = SubmissionTarget(_submission(lab, tmp_path / "alice.yaml", api_pid=proc.pid))
        assert m.learner == "alice" and m.profile == frozenset()
        assert m.sandboxes()["api"].ns.pid == proc.pid
        assert m.sandboxes()["api"].ns.foreign
        assert m.sandboxes()["web"].host == "h1"
        assert m.upstream().ns.path == netns.path_of(lab.upstream_netns)
        by_submission = run_checks(m, SAME_CHECKS)
        by_engine = run_checks(target, SAME_CHECKS)
        got = [(r.check, r.ok) for r in by_submission]
        want = [(r.check, r.ok) for r in by_engine]
        assert got == want
        assert [ok for _, ok in got] == [True, False, True, False, True, True, True, True, False,
                                         True, True, True, True, True, True, True, False, True,
                                         True, True]
        assert make_target("manifest", str(tmp_path / "alice.yaml")).extra_checks == \
            SAME_CHECKS[:2]
    finally:
        proc.kill()
        proc.wait()


@pytest.mark.parametrize("body, where", [
    ("sandboxes:\n  web:\n    netns: a\n    pid: 3\n", "p.yaml:4: sandboxes.web.pid: give exactly one"),
    ("sandboxes:\n  web:\n    netns: a\n    addresses:\n      front: 10.0.0.999\n",
     "p.yaml:5: sandboxes.web.addresses.front: '10.0.0.999' is not an IPv4"),
    ("sandboxes:\n  web: {netns: a}\nextra_checks:\n  - reachable: {from: web}\n",
     "p.yaml:4: extra_checks.0.reachable.to: check reachable: missing parameter 'to'"),
    ("sandboxes:\n  web: {netns: a}\nextra_checks:\n  - reachable:\n      from: web\n      too: x\n",
     "p.yaml:6: extra_checks.0.reachable.too: check reachable: unknown parameter 'too'"),
    ("sandboxes:\n  web: {netns: a}\nextra_checks:\n  - pingpong: {}\n",
     "p.yaml:4: extra_checks.0: unknown check 'pingpong'"),
    ("hosts:\n  h1:\n    netns: a\n    public_ip: nope\n",
     "p.yaml:4: hosts.h1.public_ip: 'nope' is not an IPv4"),
    ("sandbox:\n  web: {netns: a}\n", "p.yaml:1: sandbox: unknown field"),
    ("sandboxes:\n  web:\n    pid: -4\n", "p.yaml:3: sandboxes.web.pid: -4 is not a process id"),
    ("sandboxes: [web, db]\n", "p.yaml:1: sandboxes: must be a mapping of sandboxes, got list"),
    ("sandboxes:\n  web: {pid: '12'}\n", "p.yaml:2: sandboxes.web.pid: '12' is not a process id"),
    ("sandboxes:\n  web: {netns: a, addresses: {front: 10}}\n",
     "p.yaml:2: sandboxes.web.addresses.front: 10 is not an IPv4 address"),
    ("sandboxes:\n  upstream: {netns: a}\n", "p.yaml:2: sandboxes.upstream: 'upstream' is not a "
                                              "usable sandbox name"),
    ("sandboxes:\n  web: {netns: a, host: h9}\n", "p.yaml:2: sandboxes.web.host: no host 'h9'"),
    ("- a\n", "p.yaml:1: a submission is a mapping"),
])
def test_submission_errors_name_file_line_field(tmp_path, body, where):
    p = tmp_path / "p.yaml"
    p.write_text(body)
    with pytest.raises(InvalidInput) as e:
        SubmissionTarget(str(p))
    assert str(e.value).startswith(f"{tmp_path}/{where}"), str(e.value)
    assert "\n" not in str(e.value)


# ---- vxlan and load balancing -----------------------------------------------------------------

@pytest.fixture
def two_hosts():
    lab = Lab(f"chkv{os.getpid()}")
    try:
        hosts = [lab.add_host("h1", default_bridge=False), lab.add_host("h2", default_bridge=False)]
        for me, peer, addr in ((hosts[0], hosts[1], "10.99.0.1/24"),
                               (hosts[1], hosts[0], "10.99.0.2/24")):
            with Netlink(me.netns) as nl:
                nl.add_link("vx42", "vxlan", vxlan_id=42, vxlan_local=me.public_ip,
                            vxlan_group=peer.public_ip, vxlan_port=4789)
                nl.add_address("vx42", addr)
                nl.set_link("vx42", up=True)
        yield lab
    finally:
        lab.down()


def test_vxlan_on_wire(two_hosts):
    t = EngineTarget(two_hosts)
    r = passes(t, "vxlan-on-wire", ns="host:h1", interface="eth0", vni=42,
               traffic={"from": "host:h1", "to": "10.99.0.2"})
    assert "VNIs seen: 42" in r.observed
    r = fails(t, "vxlan-on-wire", ns="host:h2", interface="eth0", vni=43, timeout=1.0,
              traffic={"from": "host:h1", "to": "10.99.0.2"})
    assert "VNIs seen: 42" in r.observed and "another VNI" in r.reason
    r = fails(t, "vxlan-on-wire", ns="host:h1", interface="eth0", vni=42, timeout=0.5)
    assert "no VXLAN" in r.observed


def test_vxlan_vni():
    import struct
    eth = b"\x00" * 12 + b"\x08\x00"
    ip = bytes([0x45, 0, 0, 0, 0, 0, 0, 0, 64, 17, 0, 0]) + b"\x01\x02\x03\x04" * 2
    udp = struct.pack("!HHHH", 5555, 4789, 0, 0)
    vx = bytes([0x08, 0, 0, 0]) + (4242).to_bytes(3, "big") + b"\0"
    assert frames.vxlan_vni(eth + ip + udp + vx) == 4242
    assert frames.vxlan_vni(eth + ip + udp + vx, port=8472) is None
    assert frames.vxlan_vni(b"\x00" * 12 + b"\x86\xdd" + b"\0" * 60) is None


def test_lb_spread_with_nth_dnat(lab, target):
    """IPVS is missing on this kernel: a DNAT "balancer" with -m statistic --mode nth."""
    host = lab.host("h1").netns
    web, api = lab.sandbox("web").ip(), lab.sandbox("api").ip()
    vip = "203.0.113.10"
    rules = [
        ["-t", "nat", "-I", "PREROUTING", "1", "-d", vip, "-p", "tcp", "--dport", "9090", "-m",
         "statistic", "--mode", "nth", "--every", "2", "--packet", "0", "-j", "DNAT",
         "--to-destination", f"{web}:7070"],
        ["-t", "nat", "-I", "PREROUTING", "2", "-d", vip, "-p", "tcp", "--dport", "9090", "-j",
         "DNAT", "--to-destination", f"{api}:7070"],
        ["-I", "DOCKER-USER", "-p", "tcp", "--dport", "7070", "-j", "ACCEPT"],
    ]
    for rule in rules:
        nsexec.run(host, ["iptables", *rule])
    try:
        r = passes(target, "lb-spread", **{"from": "upstream", "vip": vip, "port": 9090,
                                           "backends": ["web", "api"], "backend_port": 7070,
                                           "requests": 10})
        assert r.observed == "web 5, api 5"
        r = fails(target, "lb-spread", **{"from": "upstream", "vip": vip, "port": 9090,
                                          "backends": ["web", "api", "old"],
                                          "backend_port": 7070, "requests": 6})
        assert "old never answered" in r.reason and "old 0" in r.observed
    finally:
        for rule in rules:
            nsexec.run(host, ["iptables", *_delete_form(rule)], check=False)


def _delete_form(rule: list[str]) -> list[str]:
    i = rule.index("-I")
    rest = rule[i + 2:]
    if rest and rest[0].isdigit():
        rest = rest[1:]
    return rule[:i] + ["-D", rule[i + 1]] + rest


def test_docker_adapter_shape(lab):
    """DockerAdapter over a stand-in with DockerTarget's interface (real Docker: test_dockerd)."""

    class Info:
        def __init__(self, name, pid, addrs):
            self.name, self.pid, self.addresses = name, pid, addrs
            self.netns_path = f"/proc/{pid}/ns/net"

    class Fake:
        socket_path = "/run/fake.sock"
        host_netns_path = netns.path_of(lab.host("h1").netns)

        def sandboxes(self):
            return {"c1": Info("c1", os.getpid(), {"bridge": "172.17.0.2"})}

        def published(self):
            return [("c1", 8080, 80, "tcp")]

        def networks(self):
            return {}

    a = targets.DockerAdapter(Fake())
    sb = a.sandboxes()["c1"]
    assert sb.ns.pid == os.getpid() and sb.host == "docker" and sb.ip() == "172.17.0.2"
    h = a.hosts()["docker"]
    assert h.ns.path == Fake.host_netns_path
    assert h.public_ip == "203.0.113.10"  # its uplink's address, found by itself
    assert targets.DockerAdapter(Fake(), public_ip="192.0.2.1").hosts()["docker"].public_ip \
        == "192.0.2.1"
    assert a.published() == [("c1", "docker", 8080, 80, "tcp")]
    assert a.upstream() is None
