"""Names across hosts come from the control plane, not from the lab's state file.

On an overlay, a container of another host may live on another machine, whose state this
machine never reads; what the embedded DNS answers for it must come from etcd (the endpoint
record that host's engine published). These tests make the store and the state disagree and
show the answers follow the store: a record withdrawn from etcd stops resolving on the other
hosts while the state file still holds the container; a record published for a host that
exists nowhere on this machine (another machine's container) resolves.
"""
from __future__ import annotations

import shutil
import time

import pytest

from cnmlab.checks import probes
from cnmlab.cluster import Peer
from cnmlab.constants import EMBEDDED_DNS
from cnmlab.lab import Lab

pytestmark = [pytest.mark.kernel,
              pytest.mark.skipif(not shutil.which("etcd"), reason="needs etcd-server")]


def answer(ns: str, name: str) -> list[str] | None:
    """The A records ``name`` gets at 127.0.0.11 from ``ns``; None for NXDOMAIN."""
    try:
        return sorted(probes.dns_query(ns, name, EMBEDDED_DNS, timeout=2.0, retries=2))
    except probes.DnsNameError:
        return None


def settles(ns: str, name: str, want: list[str] | None, within: float = 10.0) -> bool:
    """The answer becomes ``want`` within ``within`` s (the resolver's watch is asynchronous:
    nothing tells this test when it saw a change made behind the engine's back)."""
    deadline = time.monotonic() + within
    while True:
        if answer(ns, name) == want:
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)


@pytest.fixture
def ovlab(lab_name):
    lab = Lab(lab_name)
    try:
        lab.add_underlay("lan", subnet="192.168.50.0/24")
        lab.add_host("h1", underlay="lan")
        lab.add_host("h2", underlay="lan")
        lab.start_control_plane()
        lab.network_create("ov", "overlay")
    except BaseException:
        lab.down()
        raise
    yield lab
    lab.down()


def test_other_hosts_names_and_aliases_resolve_from_the_store(ovlab):
    a = ovlab.host("h1").run("a1", "ov")
    b = ovlab.host("h2").run("b1", "ov", aliases=["web"])
    ovlab.converge()
    b_ip = b.ip("ov")
    short = ovlab.sandbox("b1").model.id[:12]
    for name in ("b1", "web", "b1.ov", short):
        assert answer(a.netns, name) == [b_ip], name
    assert answer(b.netns, "a1") == [a.ip("ov")]
    record = next(p for p in ovlab.cluster.peers() if p.ip.split("/")[0] == b_ip)
    assert record.name == "b1" and set(record.aliases) == {"web", short}


def test_a_record_withdrawn_from_the_store_stops_resolving_on_other_hosts(ovlab):
    """The state file still holds b1 on h2; only etcd loses it. h1's answers follow etcd
    (a resolver reading the state file, as before, would keep answering and fail this);
    h2's own container still resolves on h2 (local names come from the host's state)."""
    a = ovlab.host("h1").run("a1", "ov")
    b = ovlab.host("h2").run("b1", "ov", aliases=["web"])
    c = ovlab.host("h2").run("c1", "ov")
    ovlab.converge()
    b_ip = b.ip("ov")
    assert answer(a.netns, "web") == [b_ip]
    record = next(p for p in ovlab.cluster.peers() if p.ip.split("/")[0] == b_ip)
    ovlab.cluster.withdraw_peer(record.network_id, record.endpoint_id)
    assert settles(a.netns, "b1", None) and answer(a.netns, "web") is None
    assert "b1" in ovlab.state.hosts["h2"].sandboxes  # the state file did not change
    assert answer(c.netns, "b1") == [b_ip]  # same host: from h2's own state
    ovlab.cluster.publish_peer(record)  # back in the store: back in h1's answers
    assert settles(a.netns, "web", [b_ip])


def test_a_container_of_a_host_this_machine_has_no_state_for_resolves(ovlab):
    """Another machine's container: its host exists only in etcd (no namespace, no state
    file here), as with the lab spread over several machines. Its record resolves on every
    host of this machine, by name, alias and name.network, and in reverse; withdrawn, it goes."""
    a = ovlab.host("h1").run("a1", "ov")
    b = ovlab.host("h2").run("b1", "ov")
    ovlab.converge()
    net_id = ovlab.cluster.network("ov").id
    far = Peer(network_id=net_id, endpoint_id="f" * 64, ip="10.0.0.200/24",
               mac="02:42:0a:00:00:c8", vtep="192.168.50.99", host="elsewhere",
               name="far1", aliases=("db",))
    ovlab.cluster.publish_peer(far)
    assert "elsewhere" not in ovlab.state.hosts
    for sb in (a, b):
        assert settles(sb.netns, "far1", ["10.0.0.200"])
        assert answer(sb.netns, "db") == ["10.0.0.200"]
        assert answer(sb.netns, "far1.ov") == ["10.0.0.200"]
    ovlab.converge()  # the agents programmed it too (neighbour + FDB towards its VTEP)
    ovlab.cluster.withdraw_peer(net_id, far.endpoint_id)
    assert settles(a.netns, "far1", None)
