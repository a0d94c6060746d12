"""Probes against real kernel objects: a bridge in a host namespace and sandboxes on veths."""
from __future__ import annotations

import os
import socket
import struct
import subprocess
import threading
import time

import pytest

from cnmlab.checks import probes
from cnmlab.checks.nsref import NamespaceGone, NsRef
from cnmlab.errors import CnmError
from cnmlab.kernel import neigh, netns, sysctl
from cnmlab.kernel.netlink import Netlink

pytestmark = pytest.mark.kernel

PREFIX = f"cnmt-probe-{os.getpid()}-"


def _ip(i: int) -> str:
    return f"10.231.0.{i + 2}"


def _no_ipv6(name: str) -> None:
    sysctl.disable_ipv6(name)


class BridgeLab:
    """A host namespace with bridge br0 (10.231.0.1/24) and n sandboxes s0..s(n-1)."""

    def __init__(self, n: int) -> None:
        self.host = PREFIX + "host"
        self.names = [f"s{i}" for i in range(n)]
        self.ns = {s: PREFIX + s for s in self.names}
        self.ips = {s: _ip(i) for i, s in enumerate(self.names)}
        netns.create(self.host)
        _no_ipv6(self.host)
        with Netlink(self.host) as nl:
            nl.set_link("lo", up=True)
            nl.add_bridge("br0")
            nl.add_address("br0", "10.231.0.1/24")
            nl.set_link("br0", up=True)
            for i, s in enumerate(self.names):
                netns.create(self.ns[s])
                _no_ipv6(self.ns[s])
                fd = netns.open_fd(self.ns[s])
                try:
                    nl.add_veth(f"v{i}", "eth0", peer_ns_fd=fd)
                finally:
                    os.close(fd)
                nl.set_link(f"v{i}", master="br0", up=True)
                with Netlink(self.ns[s]) as sl:
                    sl.set_link("lo", up=True)
                    sl.set_link("eth0", up=True)
                    sl.add_address("eth0", self.ips[s] + "/24")

    def refs(self) -> dict[str, NsRef]:
        return {s: NsRef(name=self.ns[s]) for s in self.names}

    def delete(self) -> None:
        for name in netns.list_names():
            if name.startswith(PREFIX):
                netns.delete(name)


def _ours() -> list[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return [l for l in out.splitlines() if l.startswith(PREFIX)]


@pytest.fixture
def lab_factory():
    made: list[BridgeLab] = []

    def make(n: int) -> BridgeLab:
        try:
            lab = BridgeLab(n)
        except BaseException:
            for name in netns.list_names():
                if name.startswith(PREFIX):
                    netns.delete(name)
            raise
        made.append(lab)
        return lab

    try:
        yield make
    finally:
        for lab in made:
            lab.delete()
        for name in netns.list_names():
            if name.startswith(PREFIX):
                netns.delete(name)
    assert _ours() == []


@pytest.fixture
def lab4(lab_factory):
    return lab_factory(4)


def test_ping_matrix_all_reach(lab4):
    m = probes.ping_matrix(lab4.refs(), lab4.ips, timeout=1.0)
    assert len(m) == 12
    assert all(m.values()), m


def test_ping_results_say_what_was_seen(lab4):
    res = probes.ping_results(lab4.refs(), lab4.ips, count=2)
    r = res[("s0", "s1")]
    assert r.ok and r.reason == "reply" and "2 replies from 10.231.0.3" in r.observed
    assert r.rtt_ms is not None and r.rtt_ms < 100


def test_ping_link_down_blocks_exactly_its_row_and_column(lab4):
    with Netlink(lab4.ns["s2"]) as sl:
        sl.set_link("eth0", up=False)
    t = time.monotonic()
    res = probes.ping_results(lab4.refs(), lab4.ips, timeout=0.6)
    assert time.monotonic() - t < 1.5
    for (s, d), r in res.items():
        assert r.ok == ("s2" not in (s, d)), (s, d, r)
    assert res[("s0", "s2")].reason == "timeout"
    assert res[("s2", "s0")].reason == "unreachable"  # no route once its link is down
    assert "unreachable" in res[("s2", "s0")].observed


def test_ping_other_subnet_without_route(lab4):
    # s3 moves to another subnet: nobody has a route to it and it has none back
    with Netlink(lab4.ns["s3"]) as sl:
        sl.add_address("eth0", "10.232.0.9/24")
    ips = dict(lab4.ips, s3="10.232.0.9")
    res = probes.ping_results(lab4.refs(), ips, timeout=2.0)  # reachable pairs must not lose a race with a loaded machine
    for (s, d), r in res.items():
        assert r.ok == (d != "s3" or s == "s3"), (s, d, r)
    assert "unreachable" in res[("s0", "s3")].observed


def test_ping_respects_pairs_and_single(lab4):
    m = probes.ping_matrix(lab4.refs(), lab4.ips, pairs=[("s0", "s1"), ("s1", "s1")])
    assert m == {("s0", "s1"): True, ("s1", "s1"): True}
    assert probes.ping(NsRef(name=lab4.ns["s0"]), "10.231.0.1")  # the bridge address


def test_tcp_echo_server_tells_peer_address(lab4):
    refs = lab4.refs()
    with probes.EchoServer(refs["s1"], "tcp", port=7007, name="web") as srv:
        assert srv.port == 7007
        r = probes.tcp_connect(refs["s0"], lab4.ips["s1"], 7007, timeout=1.0, echo=True)
        assert r.ok, r
        assert r.server == "web"
        assert r.seen_as.startswith(lab4.ips["s0"] + ":")
        assert "seen as 10.231.0.2:" in r.observed
        plain = probes.tcp_connect(refs["s2"], lab4.ips["s1"], 7007)
        assert plain.ok and plain.reason == "connected"


def test_tcp_refused_and_timeout(lab4):
    refs = lab4.refs()
    r = probes.tcp_connect(refs["s0"], lab4.ips["s1"], 7999, timeout=1.0)
    assert not r.ok and r.reason == "refused" and "refused" in r.observed
    t = time.monotonic()
    r = probes.tcp_connect(refs["s0"], "10.231.0.250", 80, timeout=0.4)  # nobody has it
    took = time.monotonic() - t
    assert not r.ok and r.reason == "timeout" and "timeout after 0.4 s" in r.observed
    assert 0.35 < took < 0.8


def test_tcp_matrix_mixed(lab4):
    refs = lab4.refs()
    with probes.EchoServer(refs["s3"], "tcp", port=8080):
        targets = {"s3": (lab4.ips["s3"], 8080), "s1": (lab4.ips["s1"], 8080)}
        res = probes.tcp_matrix({"s0": refs["s0"], "s2": refs["s2"]}, targets, timeout=0.5)
    assert res[("s0", "s3")].ok and res[("s2", "s3")].ok
    assert res[("s0", "s1")].reason == "refused" and res[("s2", "s1")].reason == "refused"


def test_udp_echo_and_refused(lab4):
    refs = lab4.refs()
    with probes.EchoServer(refs["s2"], "udp", port=5353, name="udpecho"):
        r = probes.udp_probe(refs["s0"], lab4.ips["s2"], 5353, timeout=1.0)
        assert r.ok, r
        assert r.server == "udpecho" and r.seen_as.startswith("10.231.0.2:")
    r = probes.udp_probe(refs["s0"], lab4.ips["s2"], 5353, timeout=0.5)
    assert not r.ok and r.reason == "refused"
    t = time.monotonic()
    r = probes.udp_probe(refs["s0"], "10.231.0.250", 5353, timeout=0.3)
    assert not r.ok and r.reason == "timeout" and time.monotonic() - t < 0.7


def test_missing_namespace_and_dead_pid_fail_fast():
    t = time.monotonic()
    with pytest.raises(NamespaceGone, match="does not exist"):
        probes.ping(NsRef(name=PREFIX + "nope"), "10.231.0.1")
    p = subprocess.Popen(["true"])
    p.wait()
    with pytest.raises(CnmError, match=f"process {p.pid} is gone"):
        probes.tcp_connect(NsRef(pid=p.pid), "10.231.0.1", 80)
    stale = f"/tmp/{PREFIX}stale"
    open(stale, "w").close()
    try:
        with pytest.raises(NamespaceGone, match="not a network namespace"):
            NsRef.of(stale).open()
    finally:
        os.unlink(stale)
    with pytest.raises(NamespaceGone):
        probes.EchoServer(NsRef(name=PREFIX + "nope")).start()
    assert time.monotonic() - t < 1.0


def test_nsref_by_pid_and_path(lab4):
    assert NsRef.of(netns.path_of(lab4.ns["s1"])).exists()
    assert NsRef.of(os.getpid()).exists()
    # a process inside s1, found by PID
    p = subprocess.Popen(["ip", "netns", "exec", lab4.ns["s1"], "sleep", "5"])
    try:
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            if os.stat(f"/proc/{p.pid}/ns/net").st_ino == netns.inode(lab4.ns["s1"]):
                break
            time.sleep(0.01)
        m = probes.ping_matrix({"p": NsRef(pid=p.pid)}, {"s0": lab4.ips["s0"]})
        assert m == {("p", "s0"): True}
    finally:
        p.kill()
        p.wait()


# ---- DNS ------------------------------------------------------------------------------------

class FakeDns:
    """A tiny UDP DNS responder in a namespace: answers A queries from a dict, else NXDOMAIN."""

    def __init__(self, ns: str, records: dict[str, str], silent: set[str] = frozenset()):
        self.records, self.silent = records, silent
        with netns.entered(ns):
            self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("0.0.0.0", 53))
        self.sock.settimeout(0.05)
        self.stopping = False
        self.thread = threading.Thread(target=self.run, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stopping = True
        self.thread.join(2)
        self.sock.close()

    def run(self):
        while not self.stopping:
            try:
                msg, peer = self.sock.recvfrom(512)
            except (socket.timeout, OSError):
                continue
            qid, flags = struct.unpack("!HH", msg[:4])
            i, labels = 12, []
            while msg[i]:
                labels.append(msg[i + 1:i + 1 + msg[i]].decode())
                i += 1 + msg[i]
            question = msg[12:i + 5]
            name = ".".join(labels)
            if name in self.silent:
                continue
            if name in self.records:
                ans = (b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, 60, 4)
                       + socket.inet_aton(self.records[name]))
                head = struct.pack("!HHHHHH", qid, 0x8180, 1, 1, 0, 0)
                self.sock.sendto(head + question + ans, peer)
            else:
                head = struct.pack("!HHHHHH", qid, 0x8183, 1, 0, 0, 0)
                self.sock.sendto(head + question, peer)


def test_dns_query(lab4):
    refs = lab4.refs()
    with FakeDns(lab4.ns["s3"], {"web.lab": "10.231.0.3"}, silent={"slow.lab"}):
        assert probes.dns_query(refs["s0"], "web.lab", lab4.ips["s3"]) == ["10.231.0.3"]
        with pytest.raises(probes.DnsNameError, match="NXDOMAIN"):
            probes.dns_query(refs["s0"], "nope.lab", lab4.ips["s3"])
        t = time.monotonic()
        with pytest.raises(probes.DnsTimeout, match="no answer after 0.3 s"):
            probes.dns_query(refs["s0"], "slow.lab", lab4.ips["s3"], timeout=0.3)
        assert time.monotonic() - t < 0.6
        r = probes.dns_probe(refs["s1"], "web.lab", lab4.ips["s3"])
        assert r.ok and r.observed == "web.lab -> 10.231.0.3"
    with pytest.raises(probes.DnsError, match="port unreachable"):
        probes.dns_query(refs["s0"], "web.lab", lab4.ips["s3"], timeout=0.5)


# ---- the neighbour table --------------------------------------------------------------------

def test_ensure_neighbour_capacity_raises_and_restores():
    before = neigh.limits()
    restore = probes.ensure_neighbour_capacity(before[2] * 2)
    try:
        during = neigh.limits()
        assert during[2] > before[2] and during[1] >= before[2] * 2
        inner = probes.ensure_neighbour_capacity(10)  # nested: shares the saved originals
        inner()
        assert neigh.limits() == during
    finally:
        restore()
        restore()  # idempotent
    assert neigh.limits() == before
    assert probes.ensure_neighbour_capacity(1) is not None


def test_ping_matrix_bigger_mesh_restores_limits(lab_factory):
    before = neigh.limits()
    lab = lab_factory(24)
    m = probes.ping_matrix(lab.refs(), lab.ips)
    assert len(m) == 24 * 23 and all(m.values())
    assert neigh.limits() == before


def test_ping_sends_again_after_the_sources_own_arp_gave_up(lab_factory):
    """ARP attempts made before the path existed must not fail a probe made after: a check
    right after a peer was programmed (lab 08's peer-by-hand) met the source's neighbour
    entry still INCOMPLETE from the previous check, with its last ARP probe spent; it went
    FAILED a moment later and the kernel answered the new echo with its own "host
    unreachable", which ended the probe as unreachable. Made exact here: s1 ignores ARP until
    s0 has sent its last probe, then answers."""
    lab = lab_factory(2)
    s0, s1 = lab.ns["s0"], lab.ns["s1"]
    ip = lab.ips["s1"]

    def ip_in(ns: str, *args: str) -> str:
        return subprocess.run(["ip", "netns", "exec", ns, "ip", *args], capture_output=True,
                              text=True, check=True, timeout=30).stdout

    # the probes an INCOMPLETE entry sends before it goes FAILED (one a second)
    last = sum(int(sysctl.read(f"net.ipv4.neigh.eth0.{k}", s0))
               for k in ("ucast_solicit", "app_solicit", "mcast_solicit"))
    ip_in(s1, "link", "set", "eth0", "arp", "off")  # no ARP answers from s1
    subprocess.run(["ip", "netns", "exec", s0, "ping", "-c1", "-W1", ip],
                   capture_output=True, timeout=30)
    deadline = time.monotonic() + 60
    entry = ""
    while time.monotonic() < deadline:  # s0 spent its probes; the entry is not FAILED yet
        entry = ip_in(s0, "-s", "neigh", "show", ip, "dev", "eth0")
        if "INCOMPLETE" in entry and f"probes {last} " in entry:
            break
        time.sleep(0.02)
    assert "INCOMPLETE" in entry and f"probes {last} " in entry, entry
    ip_in(s1, "link", "set", "eth0", "arp", "on")  # the path exists now
    res = probes.ping(NsRef(name=s0), ip, timeout=5)
    assert res.ok, res.observed
