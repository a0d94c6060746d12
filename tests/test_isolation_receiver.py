"""Isolation is judged at the receiver: a packet that arrives at the destination is a breach.

Before, ``isolated`` and the truth matrix counted a pair as blocked when no reply came back,
so a setup that lets packets through one way and only drops the replies passed. Here, on real
namespaces built by hand (``_handbuilt``: a, b on br0; c on br1; the host routes between
them), the setups that leak one way must FAIL and name the direction that leaked, while real
isolation (packets stopped before they reach the destination) passes.
"""
from __future__ import annotations

import os

import pytest

from _handbuilt import HandBuilt
from cnmlab.checks import probes
from cnmlab.checks.kinds import run_check
from cnmlab.checks.submission import SubmissionTarget

pytestmark = pytest.mark.kernel

if os.geteuid() != 0:
    pytest.skip("needs root", allow_module_level=True)

T = 0.5  # probe timeout: every negative probe waits this long


@pytest.fixture(scope="module")
def hb():
    hb = HandBuilt("iso").build()
    hb.forward(True)
    try:
        yield hb
    finally:
        hb.teardown()


@pytest.fixture
def target(hb, tmp_path):
    hb.flush()
    yield SubmissionTarget(hb.submission(tmp_path / "learner.yaml"))
    hb.flush()


def isolated(target, src, dst, **kw):
    return run_check(target, {"isolated": {"from": src, "to": dst, "timeout": T, **kw}})


def matrix(target):
    return run_check(target, {"matrix": {"sandboxes": ["a", "b", "c"], "groups": [["a", "b"]],
                                         "timeout": T}})


def test_routed_without_isolation_fails(target):
    r = isolated(target, "a", "c")
    assert not r.ok and r.observed.startswith("reply from 10.78.0.2")


def test_destination_drops_only_its_replies(hb, target):
    """c's OUTPUT drops everything: a's pings arrive at c and go unanswered."""
    hb.iptables("c", "-A", "OUTPUT", "-j", "DROP")
    # what the old judgement saw: no reply, so "blocked"
    old = probes.ping(target.sandboxes()["a"].ns, "10.78.0.2", timeout=T)
    assert not old.ok
    r = isolated(target, "a", "c")
    assert not r.ok, r
    assert "c received 3 of a's packets, no reply came back (one-way: a -> c)" in r.observed
    assert r.reason.startswith("a -> c leaks one way: only the replies are lost")
    assert "\n" not in r.reason
    # the same over TCP (the SYN arrives, the SYN-ACK is dropped) and UDP
    r = isolated(target, "a", "c", proto="tcp", port=8081)
    assert not r.ok and "one-way: a -> c" in r.observed
    r = isolated(target, "a", "c", proto="udp", port=8081)
    assert not r.ok and "one-way: a -> c" in r.observed


def test_one_way_forward_rule_names_the_leaking_direction(hb, target):
    """The host drops br1 -> br0 only: a -> c requests get through, their replies do not."""
    hb.iptables("h", "-A", "FORWARD", "-i", "br1", "-o", "br0", "-j", "DROP")
    r = isolated(target, "a", "c")
    assert not r.ok and "one-way: a -> c" in r.observed and "a -> c leaks one way" in r.reason
    back = isolated(target, "c", "a")
    assert back.ok, back  # c's own packets never reach a: that direction is isolated
    m = matrix(target)
    assert not m.ok
    table = m.table
    assert table.one_way == {("a", "c"), ("b", "c")}
    assert set(table.wrong) == {("a", "c"), ("b", "c")}
    text = table.render_text()
    assert "a -> c: expected blocked, observed one way: c received a's packets, no reply" in text
    assert "> one way (arrived, no reply)" in text
    assert "a->c reached one way (replies lost)" in m.reason
    d = table.to_dict()
    assert {"src": "a", "dst": "c"} in d["one_way"] and d["wrong_count"] == 2


def test_refused_connection_is_not_isolation(target):
    """Nothing listens on c:9 and the RST comes back: c received the SYN, so it is reached."""
    r = isolated(target, "a", "c", proto="tcp", port=9, server=False)
    assert not r.ok and "c received" in r.observed and "answered (refused)" in r.reason


def test_dropping_on_the_way_in_is_isolation(hb, target):
    """Docker's way: the host drops both directions between the bridges."""
    hb.iptables("h", "-A", "FORWARD", "-i", "br0", "-o", "br1", "-j", "DROP")
    hb.iptables("h", "-A", "FORWARD", "-i", "br1", "-o", "br0", "-j", "DROP")
    assert isolated(target, "a", "c").ok
    assert isolated(target, "c", "a").ok
    assert isolated(target, "a", "c", proto="tcp", port=8081).ok
    m = matrix(target)
    assert m.ok, m.table.render_text()
    assert not m.table.one_way


def test_input_drop_at_the_destination_counts_as_not_arrived(hb, target):
    """c's INPUT drops a's packets: its stack never takes them in (the raw socket sees what
    passed INPUT), so the pair is blocked; a reachable check then says why."""
    hb.iptables("c", "-A", "INPUT", "-s", "10.77.0.0/24", "-j", "DROP")
    assert isolated(target, "a", "c").ok
    r = run_check(target, {"reachable": {"from": "a", "to": "c", "timeout": T}})
    assert not r.ok and "one-way" not in r.observed


def test_reachable_hint_when_only_replies_are_lost(hb, target):
    hb.iptables("b", "-A", "OUTPUT", "-p", "icmp", "--icmp-type", "echo-reply", "-j", "DROP")
    r = run_check(target, {"reachable": {"from": "a", "to": "b", "timeout": T}})
    assert not r.ok and "one-way: a -> b" in r.observed
    assert r.reason.startswith("b receives a's packets but its answers never come back")
