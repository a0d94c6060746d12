"""``cnmlab conform --target plugin:SOCKET``: a third-party plugin someone else started.

The plugin runs as a separate process in a network namespace of its own (one cnmlab made:
``cnmlab plugin host LAB -- COMMAND``); the run adopts that namespace as the lab's Docker host,
the bridge profile passes through it, a wrong plugin (Join without a gateway: lab 10's step-2
solution) is caught, and after every run the namespace is exactly as before (links, addresses,
routes, iptables-save, ip_forward) and still there, the plugin still serving. A plugin in the
root namespace is refused in one line, as are a missing socket, a socket nobody listens on, a
peer that is no NetworkDriver plugin and one that never answers. A crashed run's leftovers in
the adopted namespace go with ``cnmlab clean`` of its lab, which never deletes the namespace.
"""
from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from socketserver import ThreadingMixIn, UnixStreamServer

import pytest

from cnmlab import state
from cnmlab.checks import conformance
from cnmlab.checks.plugin_target import conform_plugin
from cnmlab.clean import clean
from cnmlab.errors import CnmError
from cnmlab.kernel import netns, nsexec
from cnmlab.lab import Lab
from cnmlab.plugin import client, discovery

pytestmark = pytest.mark.kernel
PID = os.getpid()
REPO = Path(__file__).resolve().parent.parent
NO_GATEWAY = REPO / "labs" / "10-write-your-own-driver" / "solution" / "interface.py"

if os.geteuid() != 0:
    pytest.skip("needs root", allow_module_level=True)


def _uid() -> str:
    return f"{PID}{uuid.uuid4().hex[:4]}"


def _ns_state(ns: str) -> dict[str, object]:
    """Everything a run could leave in a namespace, counters and comments aside."""
    def run(*argv: str) -> list[str]:
        return nsexec.run(ns, list(argv)).stdout.splitlines()

    ipt = [l.split(" [")[0] if l.startswith(":") else l
           for l in run("iptables-save") if not l.startswith("#")]
    # a bridge's running timers tick on their own; everything else about a link must not
    links = [re.sub(r"\w+_timer\s+[\d.]+", "", l) for l in run("ip", "-d", "-o", "link", "show")]
    return {"links": links,
            "addresses": run("ip", "-o", "address", "show"),
            "routes": run("ip", "route", "show", "table", "all"),
            "iptables": ipt,
            "ip_forward": run("sysctl", "-n", "net.ipv4.ip_forward")}


class RunningPlugin:
    """``cnmlab plugin host LAB -- cnmlab plugin serve ...``: a plugin process in a namespace
    of its own, started the way the README tells a user to."""

    def __init__(self, serve_args: list[str]) -> None:
        self.lab = f"ps{_uid()}"
        self.name = f"tp{_uid()}"
        self.netns = f"cnm-{self.lab}.host"
        self.socket = discovery.socket_path(self.name)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "cnmlab.cli", "plugin", "host", self.lab, "--",
             sys.executable, "-m", "cnmlab.cli", "plugin", "serve", *serve_args,
             "--name", self.name, "--netns", f"{self.lab}/host"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            start_new_session=True)
        deadline = time.monotonic() + 60
        while not self._answers():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise AssertionError(f"plugin did not start: {self.proc.stdout.read()}")
            time.sleep(0.1)
        self.pid = discovery.serving_pid(self.socket)

    def _answers(self) -> bool:
        try:
            client.PluginClient(self.name, self.socket, timeout=2).call("Plugin.Activate")
            return True
        except CnmError:
            return False

    def stop(self) -> str:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            out, _ = self.proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            out, _ = self.proc.communicate()
        return out


@pytest.fixture
def bridge_plugin():
    p = RunningPlugin(["--driver", "bridge"])
    try:
        yield p
    finally:
        p.stop()
    assert not netns.exists(p.netns) and not state.exists(p.lab)


@pytest.fixture
def no_gateway_plugin():
    p = RunningPlugin([f"{NO_GATEWAY}:MyDriver"])
    try:
        yield p
    finally:
        p.stop()
    assert not netns.exists(p.netns) and not state.exists(p.lab)


def _conform(target: str, tmp_path: Path, timeout: float = 300) -> tuple[
        subprocess.CompletedProcess[str], int]:
    proc = subprocess.Popen([sys.executable, "-m", "cnmlab.cli", "conform", "--target", target,
                             "--json", str(tmp_path / "sheet.json")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err), proc.pid


def _nothing_left(pid: int) -> None:
    assert not state.exists(f"conform{pid}")
    assert not [n for n in netns.list_names() if n.startswith(f"cnm-conform{pid}.")]
    assert not os.path.lexists(discovery.socket_path(f"conformsock{pid}"))


# ---- a plugin someone else runs, in its own namespace ----------------------------------------

def test_a_running_plugin_passes_the_bridge_profile_and_its_namespace_is_left_as_found(
        bridge_plugin, tmp_path):
    """By socket path: the namespace is found through the process behind the socket, adopted
    for the run, and given back exactly as it was; the plugin keeps serving."""
    assert netns.name_of_pid(bridge_plugin.pid) == bridge_plugin.netns
    before = _ns_state(bridge_plugin.netns)
    cp, pid = _conform(f"plugin:{bridge_plugin.socket}", tmp_path)
    assert cp.returncode == 0, cp.stdout + cp.stderr
    first = cp.stdout.splitlines()[0]
    assert first.startswith(f"profile bridge against plugin {bridge_plugin.socket} in "
                            f"namespace {bridge_plugin.netns}, driven by cnmlab's engine"), first
    total = len(conformance.load("bridge").checks)
    assert f"{total} passed, 0 failed" in cp.stdout, cp.stdout
    sheet = json.loads((tmp_path / "sheet.json").read_text())
    assert sheet["learners"][f"plugin:{bridge_plugin.socket}"]["failed"] == 0
    assert _ns_state(bridge_plugin.netns) == before
    assert netns.exists(bridge_plugin.netns) and bridge_plugin._answers()
    _nothing_left(pid)
    # the plugin was really called, from the engine, in its own process
    log = discovery.socket_path(bridge_plugin.name) + ".log"
    calls = [json.loads(l)["call"] for l in Path(log).read_text().splitlines() if l.strip()]
    for call in ("NetworkDriver.CreateNetwork", "NetworkDriver.Join",
                 "NetworkDriver.Leave", "NetworkDriver.DeleteNetwork"):
        assert call in calls, calls


def test_a_running_plugin_whose_join_gives_no_gateway_is_caught(no_gateway_plugin, tmp_path):
    """By name, through Docker's discovery rules: lab 10's step-2 driver (no Gateway in Join)
    fails egress and published ports, and its namespace is left as before. (Its bridge has no
    FORWARD rules either, so under Docker's FORWARD DROP policy its members do not reach each
    other: the plugin's business, as with real Docker.)"""
    before = _ns_state(no_gateway_plugin.netns)
    cp, pid = _conform(f"plugin:{no_gateway_plugin.name}", tmp_path)
    assert cp.returncode == 1, cp.stdout + cp.stderr
    sheet = json.loads((tmp_path / "sheet.json").read_text())
    rows = {r["check"]: r for r in sheet["rows"]}
    assert not rows["egress-nat-seen c1 -> upstream (host)"]["ok"], cp.stdout
    assert not rows["published-port upstream -> host:8080/tcp -> c1:80"]["ok"], cp.stdout
    # and nothing else went wrong on the way: the networks and containers were all made
    assert rows["dns-resolves c2 from c1"]["ok"], cp.stdout
    assert _ns_state(no_gateway_plugin.netns) == before
    assert no_gateway_plugin._answers()
    _nothing_left(pid)


HANGS = """
import time
from cnmlab.plugin.sdk import NetworkDriver


class Hangs(NetworkDriver):
    \"\"\"Activates, then takes longer than the caller waits to create a network.\"\"\"

    def __init__(self, host_ns: str) -> None:
        super().__init__()

    def create_network(self, req: dict) -> dict:
        time.sleep(4)
        return {}
"""


def test_a_running_plugin_that_hangs_mid_build_fails_in_one_line_and_leaves_nothing(
        tmp_path, monkeypatch):
    """Adopted, wired, then CreateNetwork gets no answer in time: one line, no conformance
    lab left, the plugin's namespace exactly as before and the plugin still serving."""
    (tmp_path / "hangs.py").write_text(HANGS)
    plugin = RunningPlugin([f"{tmp_path}/hangs.py:Hangs"])
    try:
        before = _ns_state(plugin.netns)
        monkeypatch.setattr(client, "DEFAULT_TIMEOUT", 1.0)
        with pytest.raises(CnmError) as e:
            conform_plugin("bridge", plugin.name)
        assert str(e.value).splitlines() == [
            f"plugin {plugin.name}: NetworkDriver.CreateNetwork: no answer within 1 s"]
        assert _ns_state(plugin.netns) == before
        _nothing_left(os.getpid())
        time.sleep(4)  # the hung call ends; the plugin serves on
        assert plugin._answers()
    finally:
        plugin.stop()
    assert not netns.exists(plugin.netns)


HERE = """
import runpy
import subprocess

MyDriver = runpy.run_path({path!r})["MyDriver"]


class Here(MyDriver):
    \"\"\"Lab 10's step-2 driver building in the namespace its process runs in.\"\"\"

    def __init__(self) -> None:
        super().__init__("")

    def ip(self, *args: str, check: bool = True) -> str:
        proc = subprocess.run(["ip", *args], capture_output=True, text=True)
        if check and proc.returncode != 0:
            raise RuntimeError(f"ip {{' '.join(args)}}: {{proc.stderr.strip()}}")
        return proc.stdout
"""


def test_a_plugin_in_an_unnamed_namespace_is_named_for_the_run_only(tmp_path):
    """``unshare -n``: no name under /run/netns. The lab names it for the run, and afterwards
    the name is gone, the namespace is as before and its plugin still serves."""
    (tmp_path / "here.py").write_text(HERE.format(path=str(NO_GATEWAY)))
    name = f"un{_uid()}"
    sock = discovery.socket_path(name)
    proc = subprocess.Popen(["unshare", "-n", sys.executable, "-m", "cnmlab.cli", "plugin",
                             "serve", f"{tmp_path}/here.py:Here", "--name", name],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not os.path.exists(sock):
            assert proc.poll() is None, proc.stderr.read()
            assert time.monotonic() < deadline
            time.sleep(0.05)
        ns_path = f"/proc/{proc.pid}/ns/net"
        assert netns.name_of_pid(proc.pid) is None and not netns.is_root_of(proc.pid)
        before = _ns_state(ns_path)
        what, results, _t = conform_plugin("bridge", name)
        assert what.startswith(f"plugin {name} ({sock}) in the unnamed namespace of pid "
                               f"{proc.pid}"), what
        failed = {r.check for r in results if not r.ok}
        assert "egress-nat-seen c1 -> upstream (host)" in failed
        assert _ns_state(ns_path) == before
        assert netns.name_of_pid(proc.pid) is None
        _nothing_left(os.getpid())
        client.PluginClient(name, sock, timeout=5).call("Plugin.Activate")
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert not os.path.exists(sock)


# ---- refusals, one line each --------------------------------------------------------------

def test_a_plugin_in_the_root_namespace_is_refused_in_one_line(tmp_path):
    sock = tmp_path / "rootplugin.sock"
    code = ("import sys\nfrom cnmlab.plugin.sdk import NetworkDriver, PluginServer\n"
            "PluginServer(NetworkDriver(), sys.argv[1], log=False).serve_forever()\n")
    plugin = subprocess.Popen([sys.executable, "-c", code, str(sock)])
    try:
        deadline = time.monotonic() + 30
        while not sock.exists():
            assert plugin.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        cp, pid = _conform(f"plugin:{sock}", tmp_path, timeout=120)
    finally:
        plugin.terminate()
        plugin.wait(timeout=10)
    assert cp.returncode == 1 and cp.stdout == ""
    assert cp.stderr.splitlines() == [
        f"cnmlab: plugin {sock} (pid {plugin.pid}) runs in the machine's root network "
        f"namespace, where cnmlab never builds: start it inside a namespace cnmlab made, e.g. "
        f"'cnmlab plugin host LAB -- COMMAND...' (a lab with one empty host; the command runs "
        f"there)"], cp.stderr
    _nothing_left(pid)


class _Answer(BaseHTTPRequestHandler):
    body = b"{}"
    hang = False

    def do_POST(self) -> None:  # noqa: N802 (http.server's name)
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if self.hang:
            time.sleep(5)
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/vnd.docker.plugins.v1+json")
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args: object) -> None:
        pass


class _Server(ThreadingMixIn, UnixStreamServer):
    daemon_threads = True


def _serve(path: str, **attrs: object) -> _Server:
    handler = type("Handler", (_Answer,), attrs)
    srv = _Server(path, handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv


@pytest.mark.parametrize("case,message", [
    ("missing", "plugin socket {sock} does not exist (is the plugin running? 'cnmlab plugin ls' "
                "lists the plugins discovery finds)"),
    ("not-listening", "nothing listens on {sock} (is the plugin running?)"),
    ("not-a-socket", "{sock} is not a unix socket: give a plugin's socket or its name"),
    ("ipam-only", "plugin {sock} does not implement NetworkDriver (it implements "
                  "['IpamDriver'])"),
    ("not-json", "plugin {sock}: Plugin.Activate: the answer is not JSON: b'hello'"),
    ("hangs", "plugin {sock}: Plugin.Activate: no answer within 1 s"),
    ("unknown-name", "plugin:nosuch{pid}: no plugin named nosuch{pid} is running"),
])
def test_a_socket_that_is_no_usable_plugin_fails_in_one_line(case, message, tmp_path,
                                                              monkeypatch):
    monkeypatch.setattr(client, "DEFAULT_TIMEOUT", 1.0)
    sock = str(tmp_path / "p.sock")
    srv = None
    raw = None
    spec = sock
    if case == "not-listening":  # bound, never listening: what a killed server leaves
        raw = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        raw.bind(sock)
    elif case == "not-a-socket":
        Path(sock).write_text("")
    elif case == "ipam-only":
        srv = _serve(sock, body=b'{"Implements": ["IpamDriver"]}')
    elif case == "not-json":
        srv = _serve(sock, body=b"hello")
    elif case == "hangs":
        srv = _serve(sock, hang=True)
    elif case == "unknown-name":
        spec = f"nosuch{PID}"
    try:
        with pytest.raises(CnmError) as e:
            conform_plugin("bridge", spec)
    finally:
        if srv is not None:
            srv.shutdown()
            srv.server_close()
        if raw is not None:
            raw.close()
    text = str(e.value)
    assert "\n" not in text
    assert text.startswith(message.format(sock=sock, pid=PID)), text
    _nothing_left(os.getpid())


# ---- the adopted namespace: wiring, refusal, crash recovery ---------------------------------

def test_clean_after_a_crashed_run_restores_the_adopted_namespace_and_never_deletes_it():
    """A run killed half-way (no down): ``cnmlab clean --lab`` of its lab puts the borrowed
    namespace back from the record written before anything was changed."""
    owner = Lab(f"own{_uid()}", upstream=False)
    try:
        ns = owner.add_host("host", default_bridge=False, firewall="manual").netns
        before = _ns_state(ns)
        borrower = Lab(f"brw{_uid()}")
        host = borrower.adopt_host("host", ns)
        host.network_create("app", subnet="10.93.0.0/24")
        host.run("c1", "app", publish=["8080:80/tcp"])
        assert _ns_state(ns) != before  # eth0, docker0, a bridge, a veth, rules: all there
        assert nsexec.run(host.sandbox("c1").netns, ["ping", "-c1", "-W2",
                                                     borrower.upstream_ip]).returncode == 0
        assert netns.pids_in(ns)  # the port proxy serving 8080 lives there
        borrower.close()  # "crash": the process forgets it, nothing is torn down
        removed = clean(only=[borrower.name])
        assert ns not in removed and netns.exists(ns)
        assert _ns_state(ns) == before
        assert not netns.pids_in(ns)  # the lab's port proxy stopped with its last port
        assert not state.exists(borrower.name)
    finally:
        owner.down()


def test_a_namespace_with_its_own_uplink_is_refused_and_left_alone(lab_name):
    """An ordinary lab host (eth0, default route) cannot be borrowed without clobbering it."""
    owner = Lab(lab_name)
    try:
        ns = owner.add_host("host").netns
        before = _ns_state(ns)
        borrower = Lab(f"brw{_uid()}")
        try:
            with pytest.raises(CnmError, match=f"namespace {ns} already has a link eth0: "
                                               f"cnmlab wires its upstream there"):
                borrower.adopt_host("host", ns)
        finally:
            borrower.down()
        assert _ns_state(ns) == before
    finally:
        owner.down()


def test_one_namespace_is_borrowed_by_one_lab_at_a_time():
    """Two labs restoring one namespace from two snapshots would undo each other's work."""
    owner = Lab(f"own{_uid()}", upstream=False)
    first = second = None
    try:
        ns = owner.add_host("host", default_bridge=False, firewall="manual").netns
        before = _ns_state(ns)
        first = Lab(f"one{_uid()}")
        first.adopt_host("host", ns)
        during = _ns_state(ns)
        second = Lab(f"two{_uid()}")
        with pytest.raises(CnmError, match=f"namespace {ns} is already borrowed by lab "
                                           f"{first.name}"):
            second.adopt_host("host", ns)
        second.down()
        second = None
        assert _ns_state(ns) == during  # the refused lab's teardown undid nothing of first's
        first.down()
        first = None
        assert _ns_state(ns) == before
        second = Lab(f"two{_uid()}")  # given back: borrowable again
        second.adopt_host("host", ns)
    finally:
        for lab in (second, first):
            if lab is not None:
                lab.down()
        assert _ns_state(ns) == before
        owner.down()


def test_plugin_host_runs_a_command_in_an_empty_lab_host_and_removes_the_lab():
    name = f"ph{_uid()}"
    cp = subprocess.run([sys.executable, "-m", "cnmlab.cli", "plugin", "host", name, "--",
                         "sh", "-c", "ip -o link show; exit 3"],
                        capture_output=True, text=True, timeout=60)
    assert cp.returncode == 3, cp.stdout + cp.stderr
    links = [l.split(":")[1].strip() for l in cp.stdout.splitlines() if l[:1].isdigit()]
    assert links == ["lo"], cp.stdout  # no uplink, no docker0: a plugin builds from nothing
    assert not state.exists(name) and not netns.exists(f"cnm-{name}.host")
    cp = subprocess.run([sys.executable, "-m", "cnmlab.cli", "plugin", "host", name],
                        capture_output=True, text=True, timeout=60)
    assert cp.returncode == 1 and cp.stderr.splitlines() == [
        "cnmlab: plugin host needs a command: cnmlab plugin host LAB -- COMMAND..."]
    assert not state.exists(name)
