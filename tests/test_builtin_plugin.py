"""cnmlab is a plugin: its own bridge driver (and IPAM) behind libnetwork's remote API.

Real dockerd 20.10 drives it (network create, run, connect, disconnect, rm, network rm) and the
bridge profile passes against that Docker; cnmlab's engine drives it and the same profile
passes; a plugin that answers Join without a gateway is caught. Bad requests from either
caller get a one-line error in the protocol's error field, and a call that fails half-way
leaves nothing behind.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid

import pytest

from cnmlab.kernel import nsexec
from cnmlab.checks import conformance, report
from cnmlab.checks.dockerd import DAEMONS_DIR, DockerDaemon, missing_tools
from cnmlab.errors import CnmError, KernelError
from cnmlab.firewall import reconcile
from cnmlab.firewall.iptables import IptablesFirewall
from cnmlab.kernel.netlink import Netlink
from cnmlab.plugin import discovery
from cnmlab.plugin import protocol as P
from cnmlab.plugin.adapter import DriverPlugin, builtin_plugin
from cnmlab.plugin.client import PluginClient, _UnixConnection
from cnmlab.plugin.sdk import PluginServer

pytestmark = pytest.mark.kernel
PID = os.getpid()

if os.geteuid() != 0:
    pytest.skip("needs root", allow_module_level=True)


def _assert_all_pass(results, name: str) -> None:
    text = report.render_results(results, title=f"bridge profile against {name}:",
                                 verbose=True)
    failed = [r.check for r in results if not r.ok]
    assert not failed, f"{len(failed)} check(s) failed:\n{text}"
    assert not [r for r in results if r.skipped], text  # even the optional ones hold
    assert len(results) == len(conformance.load("bridge").checks)


def _calls(plugin) -> list[str]:
    return [c["call"].split(".")[1] for c in plugin.calls]


def _kernel_rules(ns: str) -> list[str]:
    dump = nsexec.run(ns, ["iptables-save"]).stdout
    return reconcile.owned(reconcile.parse(dump))


def _plugin_rules_present(part: DriverPlugin) -> list[str]:
    """The plugin's rendered lines missing from its namespace (empty: all there)."""
    have = _kernel_rules(part.host.netns)
    want = reconcile.owned(reconcile.parse(IptablesFirewall().render(part.host)))
    return [r for r in want if r not in have]


# ---- cnmlab's engine drives cnmlab's plugin -------------------------------------------------

def test_engine_drives_cnmlabs_bridge_plugin_through_the_profile():
    from cnmlab.checks.plugin_target import conform_plugin

    name, results, _t = conform_plugin("bridge", "bridge")
    assert name == "cnmlab's bridge driver as a plugin driven by cnmlab's engine"
    _assert_all_pass(results, name)


class NoGateway(DriverPlugin):
    """Deliberately wrong: answers Join without the gateway."""

    def join(self, req):
        answer = super().join(req)
        answer.pop("Gateway")
        return answer


def test_a_plugin_join_without_gateway_fails_the_profile():
    from cnmlab.lab import Lab

    name = f"nogwb{PID}"
    servers = []
    lab = Lab(f"ngw{PID}")
    try:
        target = conformance.build_engine(
            lab, "bridge", driver=name, before=lambda h: servers.append(PluginServer(
                NoGateway("bridge", h.netns), discovery.socket_path(name)).start()))
        results = conformance.run_profile(target, "bridge")
    finally:
        lab.down()
        for s in servers:
            s.close()
    by = {r.check: r for r in results}
    failed = {r.check for r in results if not r.ok}
    assert {"egress-nat-seen c1 -> upstream (host)",
            "published-port upstream -> host:8080/tcp -> c1:80"} <= failed, report.render_results(
        results, verbose=True)
    assert by["reachable c1 -> c2 (icmp)"].ok  # same-network L2 still works


# ---- real Docker drives cnmlab's plugin -----------------------------------------------------

_missing = missing_tools()
needs_docker = pytest.mark.skipif(bool(_missing), reason=f"real Docker not installed: missing "
                                  f"{', '.join(_missing)}")


@pytest.fixture(scope="module")
def docker_with_plugin(tmp_path_factory):
    """dockerd in a lab's manual host; cnmlab's bridge plugin served there; the profile built."""
    from cnmlab.lab import Lab

    lab = Lab(f"bpd{PID}")
    name = f"cnmbr{PID}"
    plugin = server = daemon = None
    try:
        host = lab.add_host("docker", default_bridge=False, firewall="manual")
        plugin = builtin_plugin("bridge", host.netns, name)
        server = PluginServer(plugin, discovery.socket_path(name)).start()
        daemon = DockerDaemon(f"bpd{PID}", host.netns, tmp_path_factory.mktemp("bpd"),
                              cache_dir=tmp_path_factory.mktemp("bpd-cache"), quiet=True,
                              plugins_dir=discovery.CNMLAB_PLUGINS)
        daemon.start()
        target = conformance.build_docker(daemon, "bridge", upstream=lab.upstream_netns,
                                          driver=name)
        yield lab, daemon, target, plugin, name
    finally:
        try:
            if daemon is not None:
                daemon.stop()
        finally:
            if server is not None:
                server.close()
            if plugin is not None:
                plugin.parts[0].close()
            lab.down()


@pytest.mark.docker
@needs_docker
def test_real_docker_passes_the_profile_through_cnmlabs_plugin(docker_with_plugin):
    lab, daemon, target, plugin, name = docker_with_plugin
    results = conformance.run_profile(target, "bridge")
    _assert_all_pass(results, f"docker 20.10 driving {name}")
    # the profile's networks really are the plugin's: Docker reports the driver, the plugin
    # made the bridges, and Docker's own default bridge stands next to them
    nets = target.networks()
    assert {nets[n]["driver"] for n in ("app", "other", "priv")} == {name}
    driver = plugin.parts[0]
    assert len(driver.host.networks) == 3
    with Netlink(lab.host("docker").netns) as nl:
        assert {f"br-{nid[:12]}" for nid in driver.host.networks} <= {
            link.name for link in nl.links()}
        assert nl.has_link("docker0")
    assert _plugin_rules_present(driver) == []


@pytest.mark.docker
@needs_docker
def test_real_docker_lifecycle_through_cnmlabs_plugin(docker_with_plugin):
    """network create, run, connect, disconnect, rm, network rm: each reaches the plugin, and
    each leaves the kernel as Docker's own bridge driver would."""
    lab, daemon, target, plugin, name = docker_with_plugin
    driver = plugin.parts[0]
    ns = lab.host("docker").netns
    start = len(plugin.calls)
    nid = daemon.network_create("life", subnet="10.70.0.0/24", driver=name)
    br = f"br-{nid[:12]}"
    assert driver.host.networks[nid].subnet == "10.70.0.0/24"
    daemon.run("l1", "life")
    daemon.run("l2", "life", publish=["9090:80"])
    assert daemon.exec("l1", "ping", "-c1", "-W2", "10.70.0.3").returncode == 0
    assert daemon.exec("l1", "ping", "-c1", "-W2", "l2").returncode == 0  # Docker's DNS
    assert "default via 10.70.0.1 dev eth0" in daemon.exec("l1", "ip", "route").stdout
    mac = daemon.exec("l1", "cat", "/sys/class/net/eth0/address").stdout.strip()
    assert mac == "02:42:0a:46:00:02"  # the driver's MAC, set by Docker
    assert any("--dport 9090 -j DNAT --to-destination 10.70.0.3:80" in r
               for r in _kernel_rules(ns))
    # connect a container of another plugin network (c6 on "other"), then disconnect it
    daemon.docker("network", "connect", "life", "c6")
    assert daemon.exec("c6", "ping", "-c1", "-W2", "10.70.0.2").returncode == 0
    daemon.docker("network", "disconnect", "life", "c6")
    assert daemon.exec("c6", "ping", "-c1", "-W1", "10.70.0.2").returncode != 0
    assert "eth1" not in daemon.exec("c6", "ip", "-o", "link").stdout
    daemon.docker("rm", "-f", "l1", "l2")
    assert not driver.host.networks[nid].endpoints
    assert not [r for r in _kernel_rules(ns) if "9090" in r or "10.70.0.3" in r]
    daemon.docker("network", "rm", "life")
    assert nid not in driver.host.networks
    with Netlink(ns) as nl:
        assert not nl.has_link(br)
    assert not [r for r in _kernel_rules(ns) if br in r or "10.70.0." in r]
    seen = _calls(plugin)[start:]
    seen = [c for c in seen if c != "EndpointOperInfo"]
    assert seen[0] == "CreateNetwork" and seen[-1] == "DeleteNetwork"
    assert seen.count("Join") == 3 and seen.count("Leave") == 3
    assert seen.count("CreateEndpoint") == 3 and seen.count("DeleteEndpoint") == 3
    assert "ProgramExternalConnectivity" in seen and "RevokeExternalConnectivity" in seen
    assert _plugin_rules_present(driver) == []  # the profile's networks kept their rules


@pytest.mark.docker
@needs_docker
def test_dockers_own_rules_and_the_plugins_coexist(docker_with_plugin):
    """Docker's bridge driver inserts and deletes its rules one by one; the plugin reconciles
    its own. Neither wipes the other, and isolation holds across the two drivers."""
    lab, daemon, target, plugin, name = docker_with_plugin
    driver = plugin.parts[0]
    ns = lab.host("docker").netns
    nid = daemon.network_create("dock", subnet="10.71.0.0/24")  # Docker's own bridge driver
    try:
        daemon.run("d1", "dock", publish=["9191:80"])
        rules = _kernel_rules(ns)
        assert any(f"-A DOCKER-ISOLATION-STAGE-2 -o br-{nid[:12]} -j DROP" in r for r in rules)
        assert any("--dport 9191 -j DNAT" in r for r in rules)
        assert _plugin_rules_present(driver) == []
        c1 = target.sandboxes()["c1"].addresses["app"]
        assert daemon.exec("d1", "ping", "-c1", "-W1", c1).returncode != 0  # isolated
        # the plugin changes its rules (a new network): Docker's stay
        pid = daemon.network_create("late", subnet="10.72.0.0/24", driver=name)
        after = _kernel_rules(ns)
        assert [r for r in rules if r not in after] == []
        daemon.docker("network", "rm", "late")
        assert not [r for r in _kernel_rules(ns) if f"br-{pid[:12]}" in r]
    finally:
        daemon.docker("rm", "-f", "d1", check=False)
        daemon.docker("network", "rm", "dock", check=False)
    assert not [r for r in _kernel_rules(ns) if f"br-{nid[:12]}" in r]  # Docker's are gone
    assert _plugin_rules_present(driver) == []  # the plugin's are not


# ---- the protocol, as cnmlab's plugin answers it --------------------------------------------

@pytest.fixture
def served(lab):
    host = lab.add_host("h1", default_bridge=False)
    name = f"bp{PID}{uuid.uuid4().hex[:4]}"
    plugin = builtin_plugin("bridge", host.netns, name)
    server = PluginServer(plugin, discovery.socket_path(name)).start()
    try:
        yield host, plugin, name, server
    finally:
        server.close()
        plugin.parts[0].close()


def _post(server: PluginServer, call: str, body: bytes) -> tuple[int, dict]:
    conn = _UnixConnection(server.socket_path, 5)
    try:
        conn.request("POST", f"/{call}", body=body)
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read())
    finally:
        conn.close()


def _network(nid: str = "n" * 64, pool: str = "10.80.0.0/24", **extra) -> dict:
    return {"NetworkID": nid, "Options": {P.GENERIC_OPTIONS: extra},
            "IPv4Data": [{"AddressSpace": "LocalDefault", "Pool": pool,
                          "Gateway": pool.rsplit(".", 1)[0] + ".1/24"}]}


@pytest.mark.parametrize("call,body,error", [
    (P.CREATE_NETWORK, b"{not json", "the request is not a JSON object"),
    (P.CREATE_NETWORK, b"{}", "NetworkDriver.CreateNetwork: the request lacks NetworkID"),
    (P.CREATE_NETWORK, json.dumps({"NetworkID": "x" * 64, "IPv4Data": []}).encode(),
     "IPv4Data must hold one pool (driver bridge needs an IPv4 subnet)"),
    (P.CREATE_NETWORK, json.dumps({"NetworkID": "x" * 64, "IPv4Data": [
        {"Pool": "10.1.0.0/24", "Gateway": "10.2.0.1/24"}]}).encode(),
     "gateway 10.2.0.1 is not in pool 10.1.0.0/24"),
    (P.CREATE_NETWORK, json.dumps({"NetworkID": 7, "IPv4Data": []}).encode(),
     "NetworkID must be a str, not int"),
    (P.CREATE_NETWORK, json.dumps(_network(**{"com.docker.network.bridge.name":
                                              "a-much-too-long-name"})).encode(),
     "interface name 'a-much-too-long-name' is longer than 15 characters"),
    (P.JOIN, json.dumps({"NetworkID": "z" * 64, "EndpointID": "e" * 64,
                         "SandboxKey": "/x"}).encode(),
     "NetworkDriver.Join: network zzzzzzzzzzzz is unknown to this plugin"),
    (P.REQUEST_POOL, json.dumps({"AddressSpace": "LocalDefault",
                                                     "V6": True}).encode(),
     "IPv4 pools only"),
    (P.REQUEST_ADDRESS, json.dumps({"PoolID": "LocalDefault/10.9.9.0/24"}).encode(),
     "unknown pool LocalDefault/10.9.9.0/24"),
    ("NetworkDriver.Frobnicate", b"{}", "NetworkDriver.Frobnicate is not implemented"),
])
def test_bad_requests_get_one_line_errors_in_the_protocol(served, call, body, error):
    host, plugin, name, server = served
    status, answer = _post(server, call, body)
    field = P.ERROR_FIELD[call.split(".")[0]]
    assert status in (400, 500) and error in answer[field], answer
    assert "\n" not in answer[field]
    assert not plugin.parts[0].host.networks  # nothing was made
    with Netlink(host.netns) as nl:
        assert not [link.name for link in nl.links() if link.name.startswith("br-")]


def test_a_portmap_without_host_port_is_refused_and_the_endpoint_stays_usable(served):
    host, plugin, name, server = served
    nid, eid = "n" * 64, "e" * 64
    for call, body in ((P.CREATE_NETWORK, _network(nid)),
                       (P.CREATE_ENDPOINT, {"NetworkID": nid, "EndpointID": eid,
                                            "Interface": {"Address": "10.80.0.2/24"}}),
                       (P.JOIN, {"NetworkID": nid, "EndpointID": eid, "SandboxKey": "/x"})):
        assert _post(server, call, json.dumps(body).encode())[0] == 200
    status, answer = _post(server, P.PROGRAM_EXTERNAL, json.dumps({
        "NetworkID": nid, "EndpointID": eid, "Options": {P.PORTMAP: [
            {"Proto": 6, "Port": 80, "HostIP": "", "HostPort": 0, "HostPortEnd": 0}]}}).encode())
    assert status == 500 and "cnmlab publishes explicit host ports only (-p HOSTPORT:80)" in \
        answer["Err"]
    assert not plugin.parts[0].host.networks[nid].endpoints[eid].ports
    assert not [r for r in _kernel_rules(host.netns) if "DNAT" in r]


def test_a_failure_half_way_leaves_nothing(served, monkeypatch):
    """The bridge is made, then the firewall fails: the bridge goes, the model forgets."""
    host, plugin, name, server = served
    driver = plugin.parts[0]

    def broken(self, h):
        raise KernelError("iptables-restore in h1 failed: injected")

    monkeypatch.setattr(IptablesFirewall, "program", broken)
    status, answer = _post(server, P.CREATE_NETWORK, json.dumps(_network()).encode())
    assert status == 500 and answer["Err"] == "iptables-restore in h1 failed: injected"
    assert not driver.host.networks
    with Netlink(host.netns) as nl:
        assert not nl.has_link(f"br-{'n' * 12}")


def test_engine_gets_cnmlabs_plugin_errors_in_one_line_and_builds_nothing(served):
    host, plugin, name, server = served
    with pytest.raises(CnmError) as err:
        host.network_create("bad", name, subnet="10.81.0.0/24",
                            bridge_name="a-much-too-long-name")
    msg = str(err.value)
    assert msg.startswith(f"plugin {name}: NetworkDriver.CreateNetwork: ")
    assert "longer than 15 characters" in msg and "\n" not in msg
    assert "bad" not in host.model.networks and not plugin.parts[0].host.networks


def test_cnmlabs_ipam_served_hands_out_dockers_defaults(served):
    host, plugin, name, server = served
    net = host.network_create("pooled", name, ipam_driver=name)
    assert (net.subnet, net.gateway) == ("172.17.0.0/16", "172.17.0.1")
    a = host.run("a1", "pooled")
    assert a.ip() == "172.17.0.2"
    host.rm("a1")
    host.network_rm("pooled")
    ipam_calls = [c for c in _calls(plugin) if c in ("RequestPool", "RequestAddress",
                                                     "ReleaseAddress", "ReleasePool")]
    assert ipam_calls == ["RequestPool", "RequestAddress", "RequestAddress", "ReleaseAddress",
                          "ReleasePool"]


# ---- the command line ------------------------------------------------------------------------

def _cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cnmlab.cli", *args], capture_output=True,
                          text=True, timeout=timeout)


def test_plugin_serve_driver_cli(lab):
    host = lab.add_host("h1")
    name = f"cli{PID}"
    sock = discovery.socket_path(name)
    proc = subprocess.Popen([sys.executable, "-m", "cnmlab.cli", "plugin", "serve", "--driver",
                             "bridge", "--name", name, "--netns", f"{lab.name}/h1"],
                            stdout=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert f"plugin {name} (cnmlab's bridge driver and IPAM) on {sock}" in line
        assert PluginClient(name, sock).call(P.ACTIVATE)["Implements"] == [
            P.NETWORK_DRIVER, P.IPAM_DRIVER]
        host.network_create("viacli", name, subnet="10.82.0.0/24")
        a, b = host.run("a1", "viacli"), host.run("b1", "viacli")
        assert a.exec(["ping", "-c1", "-W2", b.ip()]).returncode == 0
        host.rm("a1")
        host.rm("b1")
        host.network_rm("viacli")
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=10)
    assert not os.path.exists(sock)  # SIGTERM stops it as Ctrl-C does
    assert os.path.exists(sock + ".log")  # its call log stays to be read...
    discovery.clean_stale()
    assert not os.path.exists(sock + ".log")  # ...until clean


@pytest.mark.parametrize("args,message", [
    (["--driver", "host", "--netns", "x/y"], "driver host cannot be served as a plugin: its "
                                             "containers share the host's namespace; "
                                             "servable: bridge"),
    (["--driver", "nope", "--netns", "x/y"], "unknown built-in driver 'nope': cnmlab "
                                             "implements bridge, host, "),
    ([], "plugin serve: give FILE.py:CLASS or --driver DRIVER (one of them)"),
    (["--driver", "bridge"], "plugin serve --driver: --netns LAB/HOST names the host namespace"),
    (["--driver", "bridge", "--netns", "x/y", "--name", "../evil"], "plugin name '../evil'"),
])
def test_plugin_serve_errors_are_one_line(args, message, lab):
    lab.add_host("y")
    args = [a.replace("x/y", f"{lab.name}/y") for a in args]
    cp = _cli("plugin", "serve", *args)
    lines = cp.stderr.strip().splitlines()
    assert cp.returncode != 0 and len(lines) == 1 and message in lines[0], cp.stderr


def test_plugin_stop_and_log_of_an_unknown_plugin_are_one_line():
    name = f"nosuch{PID}"
    for args, message in ((["stop", name], f"plugin {name} is not running"),
                          (["log", name], f"no call log for plugin {name}")):
        cp = _cli("plugin", *args)
        lines = cp.stderr.strip().splitlines()
        assert cp.returncode == 1 and len(lines) == 1 and message in lines[0], cp.stderr


def test_engine_drives_cnmlabs_macvlan_plugin(lab):
    """Any local driver of cnmlab's serves: macvlan children of the host's eth0, in place."""
    host = lab.add_host("h1")
    name = f"mvp{PID}"
    plugin = builtin_plugin("macvlan", host.netns, name)
    server = PluginServer(plugin, discovery.socket_path(name)).start()
    try:
        host.network_create("mv", name, subnet="10.140.0.0/24", options={"parent": "eth0"})
        a, b = host.run("a1", "mv"), host.run("b1", "mv")
        assert a.exec(["ping", "-c1", "-W2", b.ip()]).returncode == 0
        assert "macvlan mode bridge" in a.exec(["ip", "-d", "link", "show", "eth0"]).stdout
        host.rm("a1")
        host.rm("b1")
        host.network_rm("mv")
        assert _calls(plugin)[-1] == "DeleteNetwork" and _calls(plugin).count("Join") == 2
        assert not plugin.parts[0].host.networks
    finally:
        server.close()
        plugin.parts[0].close()


@pytest.mark.parametrize("target,what", [
    pytest.param("plugin:bridge", "cnmlab's bridge driver as a plugin driven by cnmlab's engine",
                 id="engine"),
    pytest.param("docker-plugin:bridge", "driving cnmlab's bridge driver as a plugin",
                 marks=[pytest.mark.docker, needs_docker], id="docker"),
])
def test_conform_cli_plugin_targets_pass_the_bridge_profile(target, what, tmp_path):
    """``cnmlab conform --target plugin:bridge`` (the engine drives cnmlab's plugin) and
    ``docker-plugin:bridge`` (real dockerd 20.10 drives it): the whole bridge profile passes,
    and the command leaves no plugin socket or daemon behind."""
    out = tmp_path / "sheet.json"
    proc = subprocess.Popen([sys.executable, "-m", "cnmlab.cli", "conform", "--target", target,
                             "--json", str(out)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        stdout, stderr = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, stdout + stderr
    assert stdout.startswith("profile bridge against ") and what in stdout.splitlines()[0], stdout
    total = len(conformance.load("bridge").checks)
    assert f"{total} passed, 0 failed" in stdout, stdout
    sheet = json.loads(out.read_text())
    assert sheet["learners"][target]["failed"] == 0
    for name in (f"conform{proc.pid}", f"conformplugin{proc.pid}"):
        assert not os.path.exists(discovery.socket_path(name))
    assert not os.path.exists(os.path.join(DAEMONS_DIR, f"conform{proc.pid}"))
