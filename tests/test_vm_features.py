"""IPVS, ipvlan, 802.1Q and dummy links, each exercised for real in namespaces.

This kernel (CI's) lacks all four, so the VM lane (``cnmlab.checks.vmlane``) runs these tests
inside the full-kernel VM and reports their outcomes here; on a kernel that has them they run
on the host. Each asserts what the feature is for (traffic spread over two backends, children
sharing their parent's MAC, isolation by VLAN tag, a parent-less macvlan network), so a broken
feature fails it: ``test_vmlane.py`` boots the VM with the four modules blacklisted and shows
all four failing.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator

import pytest

from cnmlab.kernel import netns, nsexec
from cnmlab.checks.vmlane import needs
from cnmlab.controller import setup_namespace
from cnmlab.kernel.netlink import Netlink

pytestmark = pytest.mark.kernel
PID = os.getpid()


@pytest.fixture
def make_ns(request: pytest.FixtureRequest) -> Iterator[Callable[..., dict[str, str]]]:
    """``make_ns("a", "b")`` -> {"a": netns name, ...}: named after this process and test,
    set up as cnmlab does (IPv6 off, lo up), all removed afterwards."""
    made: list[str] = []
    short = re.sub(r"[^a-z]", "", request.node.name.removeprefix("test_"))[:4]

    def make(*names: str) -> dict[str, str]:
        out = {}
        for n in names:
            out[n] = f"cnmt-vm{PID}-{short}-{n}"
            made.append(out[n])
            setup_namespace(out[n])
        return out

    try:
        yield make
    finally:
        for ns in made:
            netns.kill_processes(ns)
            netns.delete(ns)


def _veth(a_ns: str, a_if: str, b_ns: str, b_if: str) -> None:
    fd = netns.open_fd(b_ns)
    try:
        with Netlink(a_ns) as nl:
            nl.add_veth(a_if, b_if, peer_ns_fd=fd, up=True)
    finally:
        os.close(fd)
    with Netlink(b_ns) as nl:
        nl.set_link(b_if, up=True)


def _addr(ns: str, link: str, cidr: str, gateway: str | None = None) -> None:
    with Netlink(ns) as nl:
        nl.add_address(link, cidr)
        nl.set_link(link, up=True)
        if gateway:
            nl.add_route("default", gateway=gateway)


def _pings(ns: str, ip: str) -> bool:
    return nsexec.run(ns, ["ping", "-c1", "-W2", ip], check=False, timeout=20).returncode == 0


def _move(src_ns: str, link: str, dst_ns: str, rename: str) -> None:
    fd = netns.open_fd(dst_ns)
    try:
        with Netlink(src_ns) as nl:
            nl.set_link(link, ns_fd=fd)
    finally:
        os.close(fd)
    with Netlink(dst_ns) as nl:
        nl.set_link(link, rename=rename)


@needs("ipvs")
def test_ipvs_masquerade_round_robin_spreads_over_two_backends(make_ns, tmp_path):
    """Docker's service load balancing in miniature: a virtual service (masquerade, rr) on a
    director namespace, two real servers behind it; four requests from a client reach both,
    and the kernel's IPVS connection table shows a connection to each real server."""
    ipvsadm = shutil.which("ipvsadm")
    assert ipvsadm, "ipvsadm is missing: apt-get install --no-install-recommends ipvsadm"
    ns = make_ns("lb", "cl", "r1", "r2")
    _veth(ns["lb"], "to-cl", ns["cl"], "eth0")
    _addr(ns["lb"], "to-cl", "10.61.0.1/24")
    _addr(ns["cl"], "eth0", "10.61.0.2/24")
    servers = []
    try:
        for i, r in enumerate(("r1", "r2"), start=1):
            _veth(ns["lb"], f"to-{r}", ns[r], "eth0")
            _addr(ns["lb"], f"to-{r}", f"10.62.{i}.1/24")
            _addr(ns[r], "eth0", f"10.62.{i}.2/24", gateway=f"10.62.{i}.1")
            www = tmp_path / r
            www.mkdir()
            (www / "index.html").write_text(f"{r}\n")
            servers.append(subprocess.Popen(
                ["nsenter", f"--net={netns.path_of(ns[r])}", "--", "busybox", "httpd", "-f",
                 "-p", "80", "-h", str(www)], stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL))
        nsexec.run(ns["lb"], ["sysctl", "-qw", "net.ipv4.ip_forward=1"])
        vip = "10.61.0.1:8080"
        nsexec.run(ns["lb"], [ipvsadm, "-A", "-t", vip, "-s", "rr"])
        for i in (1, 2):
            nsexec.run(ns["lb"], [ipvsadm, "-a", "-t", vip, "-r", f"10.62.{i}.2:80", "-m"])
        answers = []
        for _ in range(4):
            for _attempt in range(20):  # the httpds may still be starting
                # (busybox-static 1.35's wget segfaults; netcat speaks HTTP/1.0 well enough)
                r = nsexec.run(ns["cl"], ["nc", "-w", "3", *vip.split(":")], check=False,
                               input="GET / HTTP/1.0\r\n\r\n", timeout=20)
                body = r.stdout.strip().splitlines()[-1:] if " 200 " in r.stdout else []
                if body:
                    answers += body
                    break
                time.sleep(0.3)
        assert sorted(answers) == ["r1", "r1", "r2", "r2"], answers
        table = nsexec.run(ns["lb"], ["cat", "/proc/net/ip_vs_conn"]).stdout
        # /proc/net/ip_vs_conn is in hex: 0A3E0102 = 10.62.1.2, 0050 = port 80
        assert "0A3E0102 0050" in table and "0A3E0202 0050" in table, table
    finally:
        for p in servers:
            p.kill()
            p.wait()


@needs("ipvlan")
def test_ipvlan_l2_children_in_two_namespaces_reach_each_other(make_ns):
    """Two ipvlan (L2 mode) children of one parent, each moved into its own namespace: they
    ping each other, and both carry the parent's MAC (what sets ipvlan apart from macvlan)."""
    ns = make_ns("h", "a", "b", "x")
    _veth(ns["h"], "parent0", ns["x"], "eth0")
    with Netlink(ns["h"]) as h:
        parent = h.index("parent0")
        parent_mac = next(l.mac for l in h.links() if l.name == "parent0")
        for child in ("ipv-a", "ipv-b"):
            h.add_link(child, "ipvlan", link=parent, ipvlan_mode=0)
    _move(ns["h"], "ipv-a", ns["a"], "eth0")
    _move(ns["h"], "ipv-b", ns["b"], "eth0")
    _addr(ns["a"], "eth0", "10.63.0.2/24")
    _addr(ns["b"], "eth0", "10.63.0.3/24")
    for side in ("a", "b"):
        with Netlink(ns[side]) as nl:
            link = next(l for l in nl.links() if l.name == "eth0")
        assert link.kind == "ipvlan" and link.mac == parent_mac
    assert _pings(ns["a"], "10.63.0.3")
    assert _pings(ns["b"], "10.63.0.2")


@needs("vlan")
def test_vlan_subinterfaces_carry_traffic_only_within_their_tag(make_ns):
    """802.1Q sub-interfaces on both ends of one veth (a trunk): the two VLAN 10 ends ping
    each other; a VLAN 20 end in the same subnet as a VLAN 30 end does not (tags isolate)."""
    ns = make_ns("a", "b")
    _veth(ns["a"], "eth0", ns["b"], "eth0")
    for side, tags in (("a", (10, 20)), ("b", (10, 30))):
        with Netlink(ns[side]) as nl:
            trunk = nl.index("eth0")
            for tag in tags:
                nl.add_link(f"eth0.{tag}", "vlan", link=trunk, vlan_id=tag)
    _addr(ns["a"], "eth0.10", "10.64.10.1/24")
    _addr(ns["b"], "eth0.10", "10.64.10.2/24")
    _addr(ns["a"], "eth0.20", "10.64.20.1/24")
    _addr(ns["b"], "eth0.30", "10.64.20.2/24")
    detail = nsexec.run(ns["a"], ["ip", "-d", "link", "show", "eth0.10"]).stdout
    assert "vlan protocol 802.1Q id 10" in detail, detail
    assert _pings(ns["a"], "10.64.10.2")
    assert not _pings(ns["a"], "10.64.20.2")


@needs("dummy")
def test_dummy_parent_carries_a_parentless_macvlan_network(make_ns):
    """What Docker does for a macvlan network without ``-o parent``: a dummy link as the
    parent; two bridge-mode macvlan children in their own namespaces ping each other."""
    ns = make_ns("h", "a", "b")
    with Netlink(ns["h"]) as h:
        h.add_link("dm-parent", "dummy")
        h.set_link("dm-parent", up=True)
        kind = next(l.kind for l in h.links() if l.name == "dm-parent")
        parent = h.index("dm-parent")
        for child in ("mv-a", "mv-b"):
            h.add_link(child, "macvlan", link=parent, macvlan_mode="bridge")
    assert kind == "dummy"
    _move(ns["h"], "mv-a", ns["a"], "eth0")
    _move(ns["h"], "mv-b", ns["b"], "eth0")
    _addr(ns["a"], "eth0", "10.65.0.2/24")
    _addr(ns["b"], "eth0", "10.65.0.3/24")
    assert _pings(ns["a"], "10.65.0.3")
