"""cnmlab drives remote plugins as libnetwork does, and a learner's plugin written with the SDK.

The plugin here is what lab 10's learner writes (a bridge per network, a veth per endpoint,
made in the lab's host namespace); the engine finds it by name, calls it in Docker's order,
and plumbs what Join answers. A plugin that answers wrong (no gateway, garbage, an error,
nothing at all) gives a one-line error or a failing check, and leaves nothing half-built.
"""
from __future__ import annotations

import ipaddress
import json
import os
import socket
import threading
import time

import pytest

from cnmlab import drivers
from cnmlab.checks.kinds import run_check
from cnmlab.checks.probes import ping
from cnmlab.checks.targets import EngineTarget
from cnmlab.drivers.bridge import random_docker_mac
from cnmlab.errors import CnmError
from cnmlab.kernel import nsexec, rundir
from cnmlab.kernel.netlink import Netlink
from cnmlab.plugin import discovery
from cnmlab.plugin.sdk import IpamDriver, NetworkDriver, PluginServer

pytestmark = pytest.mark.kernel
PID = os.getpid()


class LearnerDriver(NetworkDriver):
    """A driver a learner writes: bridge pl-<id8> with the gateway, veth pv/pc per endpoint."""

    def __init__(self, host_ns: str, give_gateway: bool = True) -> None:
        super().__init__()
        self.ns = host_ns
        self.give_gateway = give_gateway
        self.nets: dict[str, dict[str, str]] = {}

    def create_network(self, req):
        v4 = req["IPv4Data"][0]
        br = f"pl-{req['NetworkID'][:8]}"
        with Netlink(self.ns) as nl:
            nl.add_bridge(br, mac=random_docker_mac())
            nl.add_address(br, v4["Gateway"])
            nl.set_link(br, up=True)
        # Docker's FORWARD policy is DROP and bridged frames cross iptables: a plugin accepts
        # its own traffic where Docker keeps others' rules, in DOCKER-USER
        nsexec.run(self.ns, ["iptables", "-I", "DOCKER-USER", *self._rule(br)])
        self.nets[req["NetworkID"]] = {"bridge": br, "gateway": v4["Gateway"].split("/")[0]}

    @staticmethod
    def _rule(br: str) -> list[str]:
        return ["-i", br, "-o", br, "-j", "ACCEPT"]

    def delete_network(self, req):
        br = self.nets.pop(req["NetworkID"])["bridge"]
        nsexec.run(self.ns, ["iptables", "-D", "DOCKER-USER", *self._rule(br)])
        with Netlink(self.ns) as nl:
            nl.delete_link(br)

    def create_endpoint(self, req):
        eid, net = req["EndpointID"], self.nets[req["NetworkID"]]
        with Netlink(self.ns) as nl:
            nl.add_veth(f"pv{eid[:8]}", f"pc{eid[:8]}", master=net["bridge"], up=True,
                        peer_mac=req["Interface"]["MacAddress"] or None)

    def join(self, req):
        answer = {"InterfaceName": {"SrcName": f"pc{req['EndpointID'][:8]}", "DstPrefix": "eth"}}
        if self.give_gateway:
            answer["Gateway"] = self.nets[req["NetworkID"]]["gateway"]
        return answer

    def leave(self, req):
        return {}

    def delete_endpoint(self, req):
        with Netlink(self.ns) as nl:
            if nl.has_link(f"pv{req['EndpointID'][:8]}"):
                nl.delete_link(f"pv{req['EndpointID'][:8]}")


@pytest.fixture
def serve():
    servers = []

    def start(plugin, name):
        srv = PluginServer(plugin, discovery.socket_path(name)).start()
        servers.append(srv)
        return srv

    yield start
    for srv in servers:
        srv.close()


def calls(plugin) -> list[str]:
    return [c["call"].split(".")[1] for c in plugin.calls]


def test_engine_drives_a_learners_plugin(lab, serve):
    host = lab.add_host("h1")
    name = f"learner{PID}"
    plugin = LearnerDriver(host.netns)
    serve(plugin, name)
    assert name in drivers.known()
    host.network_create("plug", name, subnet="10.88.0.0/24")
    a, b = host.run("a1", "plug"), host.run("b1", "plug")
    assert (a.ip(), b.ip()) == ("10.88.0.2", "10.88.0.3")
    assert ping(a.netns, b.ip(), timeout=1).ok
    target = EngineTarget(lab)
    assert run_check(target, {"default-route": {"sandbox": "a1", "via": "10.88.0.1"}}).ok
    create = next(c for c in plugin.calls if c["call"].endswith("CreateNetwork"))
    assert create["request"]["IPv4Data"][0]["Pool"] == "10.88.0.0/24"
    assert create["request"]["IPv4Data"][0]["Gateway"] == "10.88.0.1/24"
    ep = next(c for c in plugin.calls if c["call"].endswith("CreateEndpoint"))
    assert ep["request"]["Interface"] == {"Address": "10.88.0.2/24", "AddressIPv6": "",
                                          "MacAddress": ""}
    host.rm("b1")
    host.rm("a1")
    host.network_rm("plug")
    assert calls(plugin) == ["Activate", "GetCapabilities", "CreateNetwork",
                             "CreateEndpoint", "Join", "CreateEndpoint", "Join",
                             "Leave", "DeleteEndpoint", "Leave", "DeleteEndpoint",
                             "DeleteNetwork"]
    log = [json.loads(l)["call"] for l in open(discovery.socket_path(name) + ".log")]
    assert log == [c["call"] for c in plugin.calls]  # what the workshop app follows


def test_a_join_without_gateway_is_caught_by_the_check(lab, serve):
    host = lab.add_host("h1")
    name = f"nogw{PID}"
    serve(LearnerDriver(host.netns, give_gateway=False), name)
    host.network_create("plug", name, subnet="10.89.0.0/24")
    host.run("a1", "plug")
    result = run_check(EngineTarget(lab), {"default-route": {"sandbox": "a1", "via": "10.89.0.1"}})
    assert not result.ok and result.observed == "no default route"


class Broken(NetworkDriver):
    def __init__(self, mode: str) -> None:
        super().__init__()
        self.mode = mode

    def create_network(self, req):
        if self.mode == "error":
            raise RuntimeError("no bridges on Tuesdays")
        return {}

    def create_endpoint(self, req):
        return {}

    def join(self, req):
        if self.mode == "no-interface":
            return {"Gateway": "10.90.0.1"}
        if self.mode == "ghost":
            return {"InterfaceName": {"SrcName": "nosuchveth", "DstPrefix": "eth"}}
        return {}

    def delete_endpoint(self, req):
        return {}

    def leave(self, req):
        return {}

    def delete_network(self, req):
        return {}


@pytest.mark.parametrize("mode,message", [
    ("error", "CreateNetwork: no bridges on Tuesdays"),
    ("no-interface", "Join: the answer lacks InterfaceName"),
    ("ghost", "Join: interface nosuchveth does not exist in host h1"),
])
def test_plugin_errors_are_one_line_and_nothing_is_half_built(lab, serve, mode, message):
    host = lab.add_host("h1")
    name = f"broken{PID}{mode[:2]}"
    plugin = Broken(mode)
    serve(plugin, name)
    with pytest.raises(CnmError) as err:
        host.network_create("plug", name, subnet="10.90.0.0/24")
        host.run("a1", "plug")
    assert message in str(err.value) and "\n" not in str(err.value)
    assert f"plugin {name}" in str(err.value)
    if mode != "error":  # the network stays; the failed run left no sandbox nor endpoint
        assert "a1" not in host.model.sandboxes
        assert not host.model.networks["plug"].endpoints
        assert calls(plugin)[-2:] == ["Leave", "DeleteEndpoint"] or calls(plugin)[-1] == \
            "DeleteEndpoint"
    else:
        assert "plug" not in host.model.networks


def _read_request(conn: socket.socket) -> None:
    """Read one whole HTTP request (headers, then Content-Length bytes of body)."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += conn.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(next((l.split(b":")[1] for l in head.split(b"\r\n")
                       if l.lower().startswith(b"content-length")), b"0"))
    while len(body) < length:
        body += conn.recv(65536)


def _raw_server(path: str, reply: bytes | None) -> threading.Thread:
    """A 'plugin' that answers ``reply`` verbatim, or hangs when it is None."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(path)
    srv.listen(4)

    def run() -> None:
        conn, _ = srv.accept()
        _read_request(conn)
        if reply is None:
            time.sleep(3)
        else:
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(reply), reply))
        conn.close()
        srv.close()

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


@pytest.mark.parametrize("reply,message", [(b"<html>", "the answer is not JSON"),
                                           (b"[1]", "not a JSON object"),
                                           (None, "no answer within 0.5 s")])
def test_garbage_or_silence_gives_a_one_line_error(reply, message):
    from cnmlab.plugin.client import PluginClient

    path = discovery.socket_path(f"raw{PID}{abs(hash(reply)) % 1000}")
    try:
        _raw_server(path, reply)
        with pytest.raises(CnmError, match=message):
            PluginClient("raw", path, timeout=0.5).call("Plugin.Activate")
    finally:
        os.unlink(path)


class LearnerIpam(IpamDriver):
    """A custom pool, handed out from the top down, to show that the plugin decides."""

    def request_pool(self, req):
        self.pool = ipaddress.IPv4Network(req["Pool"] or "10.123.0.0/24")
        self.next = int(self.pool.broadcast_address) - 1
        return {"PoolID": f"learner/{self.pool}", "Pool": str(self.pool), "Data": {}}

    def request_address(self, req):
        if req["Options"].get("RequestAddressType") == "com.docker.network.gateway":
            return {"Address": f"{self.pool.network_address + 1}/{self.pool.prefixlen}"}
        addr = ipaddress.IPv4Address(self.next)
        self.next -= 1
        return {"Address": f"{addr}/{self.pool.prefixlen}"}

    def release_address(self, req):
        return {}

    def release_pool(self, req):
        return {}


def test_remote_ipam_hands_out_the_addresses(lab, serve):
    host = lab.add_host("h1")
    name = f"ipam{PID}"
    ipam = LearnerIpam()
    serve(ipam, name)
    net = host.network_create("custom", ipam_driver=name)
    assert (net.subnet, net.gateway) == ("10.123.0.0/24", "10.123.0.1")
    a = host.run("a1", "custom")
    assert a.ip() == "10.123.0.254"
    assert run_check(EngineTarget(lab), {"default-route": {"sandbox": "a1", "via": "10.123.0.1"}}).ok
    host.rm("a1")
    host.network_rm("custom")
    assert calls(ipam) == ["Activate", "GetDefaultAddressSpaces", "RequestPool",
                           "RequestAddress", "RequestAddress", "ReleaseAddress", "ReleasePool"]


@pytest.mark.docker
def test_real_docker_calls_the_learners_plugin(lab, serve, tmp_path):
    """dockerd 20.10 finds the plugin by name, and its containers get connectivity from it."""
    from cnmlab.checks.dockerd import DockerDaemon, missing_tools

    if missing_tools():
        pytest.skip(f"real Docker not installed: missing {', '.join(missing_tools())}")
    host = lab.add_host("docker", default_bridge=False, firewall="manual")
    name = f"learner{PID}d"
    plugin = LearnerDriver(host.netns)
    serve(plugin, name)
    with DockerDaemon(f"rd{PID}", host.netns, tmp_path / "d", cache_dir=tmp_path / "cache",
                      quiet=True, plugins_dir=discovery.CNMLAB_PLUGINS) as daemon:
        daemon.network_create("plug", subnet="10.77.0.0/24", driver=name)
        daemon.run("p1", "plug")
        daemon.run("p2", "plug")
        assert daemon.exec("p1", "ping", "-c1", "-W2", "10.77.0.3").returncode == 0
        assert daemon.exec("p1", "ping", "-c1", "-W2", "p2").returncode == 0  # Docker's DNS
        route = daemon.exec("p1", "ip", "route").stdout
        assert "default via 10.77.0.1 dev eth0" in route
        daemon.docker("rm", "-f", "p1", "p2")
        daemon.docker("network", "rm", "plug")
    seen = calls(plugin)
    assert seen[:2] == ["Activate", "GetCapabilities"] and "CreateNetwork" in seen
    assert seen.count("Join") == 2 and seen.count("Leave") == 2 and seen[-1] == "DeleteNetwork"


PLUGIN_FILE = '''
from cnmlab.plugin.sdk import NetworkDriver


class Hello(NetworkDriver):
    """The lab 10 skeleton's first step: answer, create nothing."""

    def __init__(self, host_ns):
        super().__init__()
        self.host_ns = host_ns

    def create_network(self, req):
        return {}

    def delete_network(self, req):
        return {}
'''


def test_plugin_serve_cli_and_clean_after_kill_9(lab, tmp_path):
    import signal
    import subprocess
    import sys

    host = lab.add_host("h1")
    (tmp_path / "hello.py").write_text(PLUGIN_FILE)
    name = f"hello{PID}"
    sock = discovery.socket_path(name)
    proc = subprocess.Popen([sys.executable, "-m", "cnmlab.cli", "plugin", "serve",
                             f"{tmp_path}/hello.py:Hello", "--name", name,
                             "--netns", f"{lab.name}/h1"], stdout=subprocess.PIPE, text=True)
    try:
        assert "on " + sock in proc.stdout.readline()
        host.network_create("hi", name, subnet="10.91.0.0/24")
        host.network_rm("hi")
        host.network_create("left", name, subnet="10.92.0.0/24")  # live when the plugin dies
        log = subprocess.run([sys.executable, "-m", "cnmlab.cli", "plugin", "log", name],
                             capture_output=True, text=True, timeout=30).stdout
        assert "NetworkDriver.CreateNetwork" in log and '"Pool": "10.91.0.0/24"' in log
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    assert os.path.exists(sock)  # a killed plugin leaves its socket and its log...
    ns = host.netns
    lab.close()  # this process's netlink sockets would pin the namespace
    cp = subprocess.run([sys.executable, "-m", "cnmlab.cli", "clean", "--lab", lab.name],
                        capture_output=True, text=True, timeout=120)
    assert cp.returncode == 0 and f"plugin socket {sock}" in cp.stdout, cp.stdout + cp.stderr
    # ...which 'cnmlab clean --lab' removes, with the lab and the network the plugin made
    assert not os.path.exists(sock) and not os.path.exists(sock + ".log")
    assert not os.path.exists(f"/run/netns/{ns}")
    assert not os.path.exists(os.path.join(rundir.STATE_DIR, f"{lab.name}.json"))


def test_sdk_answers_bad_requests_in_the_protocol(serve):
    import http.client

    from cnmlab.plugin.client import _UnixConnection

    name = f"sdk{PID}"
    srv = serve(LearnerDriver("unused"), name)
    conn = _UnixConnection(srv.socket_path, 5)
    conn.request("POST", "/NetworkDriver.CreateNetwork", body=b"{not json")
    resp = conn.getresponse()
    assert resp.status == 400 and "not a JSON object" in json.loads(resp.read())["Err"]
    conn.close()
    conn = _UnixConnection(srv.socket_path, 5)
    conn.request("POST", "/IpamDriver.RequestPool", body=b"{}")
    resp = conn.getresponse()
    assert resp.status == 500 and "does not implement IpamDriver" in json.loads(resp.read())["Error"]
    conn.close()


def test_conform_through_a_plugin_reports_what_it_does_not_do(tmp_path):
    """A plugin that wires L2/L3 only: reach passes; egress NAT and published ports fail."""
    import inspect

    from cnmlab.checks.plugin_target import conform_plugin

    src = ("import ipaddress\nfrom cnmlab.kernel import nsexec\n"
           "from cnmlab.kernel.netlink import Netlink\n"
           "from cnmlab.drivers.bridge import random_docker_mac\n"
           "from cnmlab.plugin.sdk import NetworkDriver\n\n" + inspect.getsource(LearnerDriver))
    (tmp_path / "learner.py").write_text(src)
    _name, results, _t = conform_plugin("bridge", f"{tmp_path}/learner.py:LearnerDriver")
    by_id = {r.check: r for r in results}
    ok = {r.kind for r in results if r.ok and not r.skipped}
    failed = {r.kind for r in results if not r.ok}
    assert "reachable" in ok
    assert "egress-nat-seen" in failed and "published-port" in failed, by_id


# ---- cnmlab calling a bad plugin: more ways to be wrong -------------------------------------

class Misbehaving(LearnerDriver):
    """A working driver (the learner's) that goes wrong in one call, as ``mode`` says."""

    def __init__(self, host_ns: str, mode: str) -> None:
        super().__init__(host_ns)
        self.mode = mode

    def create_endpoint(self, req):
        super().create_endpoint(req)
        if self.mode == "moves-address":
            return {"Interface": {"Address": "10.92.0.200/24"}}
        return {}

    def join(self, req):
        if self.mode == "hangs-in-join":
            time.sleep(3)
        answer = super().join(req)
        if self.mode == "route-without-nexthop":
            answer["StaticRoutes"] = [{"Destination": "10.99.0.0/16", "RouteType": 0}]
        if self.mode == "interface-not-object":
            answer["InterfaceName"] = "pc-something"
        return answer


@pytest.mark.parametrize("mode,message", [
    ("hangs-in-join", "NetworkDriver.Join: no answer within 1 s"),
    ("moves-address", "CreateEndpoint: it may not change the address cnmlab's IPAM gave "
                      "(10.92.0.2/24 -> 10.92.0.200/24)"),
    ("route-without-nexthop", "Join: route 10.99.0.0/16 has no NextHop"),
    ("interface-not-object", "Join: InterfaceName needs SrcName and DstPrefix"),
])
def test_a_wrong_answer_mid_lifecycle_rolls_back_the_endpoint(lab, serve, monkeypatch, mode,
                                                              message):
    """The plugin made its veth, then answered wrong (or not at all): the run fails in one
    line, the engine keeps no sandbox or endpoint, and the plugin was told to delete what it
    made (DeleteEndpoint), so its veth is gone too."""
    from cnmlab.plugin import client

    monkeypatch.setattr(client, "DEFAULT_TIMEOUT", 1.0)
    host = lab.add_host("h1")
    name = f"mis{PID}{mode[:3]}"
    plugin = Misbehaving(host.netns, mode)
    serve(plugin, name)
    host.network_create("plug", name, subnet="10.92.0.0/24")
    with pytest.raises(CnmError) as err:
        host.run("a1", "plug")
    assert message in str(err.value) and "\n" not in str(err.value), str(err.value)
    assert "a1" not in host.model.sandboxes and not host.model.networks["plug"].endpoints
    deadline = time.monotonic() + 5  # a hung Join returns later, on the plugin's own thread
    while time.monotonic() < deadline and "DeleteEndpoint" not in calls(plugin):
        time.sleep(0.1)
    assert "DeleteEndpoint" in calls(plugin)
    with Netlink(host.netns) as nl:
        assert not [l.name for l in nl.links() if l.name.startswith(("pv", "pc"))]
    host.network_rm("plug")  # and the network is still usable to the end


class BadIpam(LearnerIpam):
    def __init__(self, mode: str) -> None:
        super().__init__()
        self.mode = mode

    def request_pool(self, req):
        answer = super().request_pool(req)
        if self.mode == "no-pool-id":
            del answer["PoolID"]
        return answer

    def request_address(self, req):
        if self.mode == "garbage-address":
            return {"Address": "ten.one.two.three"}
        if self.mode == "error":
            raise RuntimeError("pool is dry")
        return super().request_address(req)


@pytest.mark.parametrize("mode,message,calls_after", [
    ("no-pool-id", "IpamDriver.RequestPool: the answer lacks PoolID", ["RequestPool"]),
    ("garbage-address", "IpamDriver.RequestAddress: 'ten.one.two.three' is not an IPv4 address",
     ["RequestPool", "RequestAddress", "ReleasePool"]),
    ("error", "IpamDriver.RequestAddress: pool is dry",
     ["RequestPool", "RequestAddress", "ReleasePool"]),
])
def test_a_wrong_ipam_answer_makes_no_network(lab, serve, mode, message, calls_after):
    host = lab.add_host("h1")
    name = f"bipam{PID}{mode[:3]}"
    ipam = BadIpam(mode)
    serve(ipam, name)
    with pytest.raises(CnmError) as err:
        host.network_create("custom", ipam_driver=name)
    assert f"plugin {name}: {message}" in str(err.value) and "\n" not in str(err.value)
    assert "custom" not in host.model.networks
    assert calls(ipam)[2:] == calls_after  # after Activate, GetDefaultAddressSpaces


def _http(status: str, body: bytes, length: int | None = None) -> bytes:
    n = len(body) if length is None else length
    return b"HTTP/1.1 %s\r\nContent-Length: %d\r\n\r\n%s" % (status.encode(), n, body)


@pytest.mark.parametrize("reply,message", [
    (_http("500 Internal Server Error", b"{}"), "HTTP 500 Internal Server Error"),
    (_http("200 OK", b'{"Implements": ["IpamDriver"]}'),
     "does not implement NetworkDriver (it implements ['IpamDriver'])"),
    (_http("200 OK", b'{"Err": "line one\\nline two"}'), "Plugin.Activate: line one"),
    (_http("200 OK", b'{"Implements": []', length=40), "IncompleteRead"),
])
def test_a_bad_activation_is_one_line_and_registers_nothing(reply, message):
    """Raw answers no SDK would give: an error status without Err, the wrong API, a
    multi-line error (only its first line is shown)."""
    name = f"rawact{PID}{abs(hash(reply)) % 1000}"
    path = discovery.socket_path(name)
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    srv.bind(path)
    srv.listen(1)

    def answer_once() -> None:
        conn, _ = srv.accept()
        _read_request(conn)
        conn.sendall(reply)
        conn.close()

    threading.Thread(target=answer_once, daemon=True).start()
    try:
        with pytest.raises(CnmError) as err:
            drivers.capability(name)
        assert message in str(err.value) and "\n" not in str(err.value), str(err.value)
        assert not any(n == name for n, _p in drivers._remote)
    finally:
        srv.close()
        os.unlink(path)


def test_a_plugin_that_died_gives_one_line_and_clean_removes_its_socket(lab, serve):
    """The plugin stops between two calls: the engine says so in one line; the network it
    made lives on in the host namespace until the lab goes, as with Docker."""
    host = lab.add_host("h1")
    name = f"died{PID}"
    srv = serve(LearnerDriver(host.netns), name)
    host.network_create("plug", name, subnet="10.93.0.0/24")
    srv.shutdown()
    srv.server_close()  # the socket file stays, nothing listens: a crashed plugin
    with pytest.raises(CnmError) as err:
        host.run("a1", "plug")
    assert f"plugin {name}: NetworkDriver.CreateEndpoint: nothing listens on" in str(err.value)
    assert "a1" not in host.model.sandboxes
    assert os.path.exists(srv.socket_path)
    discovery.clean_stale()  # (another suite's clean may have swept it first: both are right)
    assert not os.path.exists(srv.socket_path)
