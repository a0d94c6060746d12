"""The kernel layer's facade on real namespaces: veth peers across namespaces, namespace ids,
and change events (what the TUI's topology and watcher used to parse by hand)."""
from __future__ import annotations

import os
import select
import time
from collections.abc import Iterator

import pytest

from cnmlab.kernel import netns
from cnmlab.kernel.netlink import (LINK_EVENTS, RESYNC, Event, EventSocket, Netlink,
                                   events_from)

pytestmark = pytest.mark.kernel
PID = os.getpid()


@pytest.fixture
def two_ns() -> Iterator[tuple[str, str]]:
    names = [f"kl{PID}a", f"kl{PID}b"]
    for n in names:
        netns.create(n)
    try:
        yield names[0], names[1]
    finally:
        for n in names:
            netns.delete(n)


def _events(sock: EventSocket, until: set[tuple[str, str, str]], timeout: float = 2.0
            ) -> list[Event]:
    """Read until every (kind, action, name) in ``until`` was seen (or the time is up)."""
    seen: list[Event] = []
    deadline = time.monotonic() + timeout
    while until - {(e.kind, e.action, e.name) for e in seen}:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        select.select([sock], [], [], left)
        seen += sock.read()
    return seen


def test_a_veth_knows_its_peer_across_namespaces(two_ns):
    a, b = two_ns
    fd_b, fd_a = netns.open_fd(b), netns.open_fd(a)
    try:
        with Netlink(a) as nl_a, Netlink(b) as nl_b:
            nl_a.add_veth("va", "vb", peer_ns_fd=fd_b)
            nl_a.add_veth("same0", "same1")
            links_a = {l.name: l for l in nl_a.links()}
            links_b = {l.name: l for l in nl_b.links()}
            va, vb = links_a["va"], links_b["vb"]
            # each end names the other's ifindex, in the namespace its netns id stands for
            assert va.peer_index == vb.index and vb.peer_index == va.index
            assert va.peer_netns_id is not None and va.peer_netns_id == nl_a.nsid_of(fd_b)
            assert vb.peer_netns_id is not None and vb.peer_netns_id == nl_b.nsid_of(fd_a)
            # a pair inside one namespace: peer index, no namespace id
            s0, s1 = links_a["same0"], links_a["same1"]
            assert s0.peer_index == s1.index and s0.peer_netns_id is None
            assert links_a["lo"].peer_index is None
    finally:
        os.close(fd_a)
        os.close(fd_b)


def test_nsid_of_a_namespace_never_linked_is_none(two_ns):
    a, b = two_ns
    fd = netns.open_fd(b)
    try:
        with Netlink(a) as nl:
            assert nl.nsid_of(fd) is None
    finally:
        os.close(fd)


def test_event_socket_names_each_change(two_ns):
    a, _ = two_ns
    with EventSocket(a) as sock, Netlink(a) as nl:
        nl.add_veth("e0", "e1")
        nl.add_bridge("br0")
        nl.set_link("e1", master="br0", up=True)
        nl.add_address("e0", "10.77.0.1/24")
        nl.set_link("e0", up=True)
        nl.add_route("10.78.0.0/16", dev="e0")
        nl.add_neighbour("e0", "10.77.0.9", "02:42:0a:4d:00:09")
        want = {("link", "new", "e0"), ("link", "new", "br0"), ("addr", "new", "10.77.0.1"),
                ("route", "new", "10.78.0.0/16"), ("neigh", "new", "10.77.0.9")}
        seen = _events(sock, want)
        got = {(e.kind, e.action, e.name) for e in seen}
        assert want <= got, sorted(got)
        assert all(e.ns == a for e in seen)
        # enslaving e1 put its MAC in the bridge's FDB: a neighbour message of the bridge family
        e1_mac = next(l.mac for l in nl.links() if l.name == "e1")
        assert ("fdb", "new", e1_mac) in got, sorted(got)
        nl.delete_neighbour("e0", "10.77.0.9")
        nl.delete_link("e0")
        seen = _events(sock, {("neigh", "del", "10.77.0.9"), ("link", "del", "e0")})
        got = {(e.kind, e.action, e.name) for e in seen}
        assert {("neigh", "del", "10.77.0.9"), ("link", "del", "e0")} <= got, sorted(got)


def test_event_socket_listens_only_to_its_groups_and_namespace(two_ns):
    a, b = two_ns
    with EventSocket(a, groups=LINK_EVENTS) as sock:
        with Netlink(b) as nl_b:
            nl_b.add_bridge("other0")  # another namespace: never seen here
        with Netlink(a) as nl:
            nl.add_bridge("br1")
            nl.add_address("br1", "10.79.0.1/24")  # an address event: not subscribed
        seen = _events(sock, {("link", "new", "br1")})
        assert ("link", "new", "br1") in {(e.kind, e.action, e.name) for e in seen}
        time.sleep(0.05)
        seen += sock.read()
        assert {e.kind for e in seen} == {"link"} and "other0" not in {e.name for e in seen}


def test_a_flood_that_overflows_the_buffer_reads_as_resync(two_ns):
    a, _ = two_ns
    with EventSocket(a, rcvbuf=4096) as sock, Netlink(a) as nl:
        for i in range(40):  # nobody reads meanwhile: the kernel drops and says ENOBUFS
            nl.add_bridge(f"fl{i}")
        events = sock.read()
    assert any(e.kind == RESYNC for e in events)


def test_events_from_a_datagram_skips_what_it_does_not_know():
    assert events_from("x", b"") == []
    # an NLMSG_DONE message (type 3): a valid datagram with nothing to report
    done = (20).to_bytes(4, "little") + (3).to_bytes(2, "little") + bytes(10) + bytes(4)
    assert events_from("x", done) == []
