"""kernel.nftcopy on real namespaces: a table iptables-restore made, copied over nfnetlink with
ports rewritten, reads back exactly as iptables-restore would have written it; a copy the
kernel refuses leaves nothing; the resolver learns only from a namespace holding its own rules.
"""
from __future__ import annotations

import os
import socket
import struct
import subprocess
from collections.abc import Iterator
from typing import Any, Callable

import pytest

from cnmlab import dns
from cnmlab.kernel import netns, nftcopy

pytestmark = pytest.mark.kernel
PID = os.getpid()


@pytest.fixture
def three_ns() -> Iterator[list[str]]:
    names = [f"nfc{PID}{c}" for c in "abc"]
    for n in names:
        netns.create(n)
    try:
        yield names
    finally:
        for n in names:
            netns.delete(n)


def inside(ns: str, fn: Callable[[], Any]) -> Any:
    return dns.in_netns(ns, fn)


def restore(ns: str, text: str) -> None:
    subprocess.run(["nsenter", f"--net=/run/netns/{ns}", "iptables-restore", "--noflush"],
                   input=text, text=True, check=True, capture_output=True)


def saved(ns: str) -> list[str]:
    out = subprocess.run(["nsenter", f"--net=/run/netns/{ns}", "iptables-save", "-t", "nat"],
                         text=True, check=True, capture_output=True).stdout
    return [l.split(" [")[0] for l in out.splitlines() if not l.startswith("#")]


def be16(port: int) -> bytes:
    return struct.pack("!H", port)


def test_a_copy_with_rewritten_ports_reads_like_iptables_restore(three_ns):
    a, b, c = three_ns
    restore(a, dns.nat_rules(40000, 40001, with_jumps=True))
    table = inside(a, lambda: nftcopy.read(socket.AF_INET, "nat"))
    assert table is not None and table.rule_count == 6
    assert set(table.chains()) == {"OUTPUT", "POSTROUTING", "DOCKER_OUTPUT",
                                   "DOCKER_POSTROUTING"}
    assert (table.count(be16(40000)), table.count(be16(40001))) == (3, 3)
    copy = table.patched({be16(40000): be16(51111), be16(40001): be16(52222)})
    assert inside(b, lambda: nftcopy.has_chain(socket.AF_INET, "nat", "DOCKER_OUTPUT")) is False
    inside(b, lambda: nftcopy.write(copy))
    assert inside(b, lambda: nftcopy.has_chain(socket.AF_INET, "nat", "DOCKER_OUTPUT"))
    restore(c, dns.nat_rules(51111, 52222, with_jumps=True))
    assert saved(b) == saved(c)
    assert "--to-destination 127.0.0.11:52222" in "\n".join(saved(b))
    # the source namespace is untouched by the rewrite
    assert "--to-destination 127.0.0.11:40001" in "\n".join(saved(a))


def test_a_copy_the_kernel_refuses_leaves_nothing_behind(three_ns):
    a, b, _ = three_ns
    restore(a, dns.nat_rules(40000, 40001, with_jumps=True))
    table = inside(a, lambda: nftcopy.read(socket.AF_INET, "nat"))
    # without the DOCKER_OUTPUT chain, the jump to it cannot be made: the batch must fail whole
    broken = nftcopy.TableCopy(tuple(
        m for m in table.messages
        if not (m.kind == nftcopy.NFT_MSG_NEWCHAIN and b"DOCKER_OUTPUT\0" in dict(
            (t & nftcopy.NLA_TYPE_MASK, v) for t, v in m.attrs).get(3, b""))))
    with pytest.raises(OSError):
        inside(b, lambda: nftcopy.write(broken))
    assert inside(b, lambda: nftcopy.read(socket.AF_INET, "nat")) is None
    assert "DOCKER" not in "\n".join(saved(b))


def test_a_replacement_must_keep_its_length():
    with pytest.raises(ValueError):
        nftcopy.TableCopy(()).patched({b"\x9c\x40": b"\x01"})


def test_the_resolver_learns_only_from_its_own_rules(three_ns):
    a, b, c = three_ns
    learner = "-A OUTPUT -d 10.9.9.9/32 -j ACCEPT\n"
    text = dns.nat_rules(40000, 40001, with_jumps=True).replace("COMMIT", learner + "COMMIT")
    restore(a, text)  # a learner's own rule beside Docker's: must never be copied elsewhere
    polluted = dns.NatCopy()
    inside(a, lambda: polluted.learn(40000, 40001))
    assert polluted.learnt is None
    assert inside(b, lambda: polluted.write(41000, 41001)) is False
    restore(b, dns.nat_rules(40000, 40001, with_jumps=True))
    clean = dns.NatCopy()
    inside(b, lambda: clean.learn(40000, 40001))
    assert clean.learnt is not None
    inside(c, lambda: clean.write(41000, 41001))
    assert "-A DOCKER_POSTROUTING -s 127.0.0.11/32 -p udp -m udp --sport 41000 -j SNAT " \
           "--to-source :53" in saved(c)


def test_install_copies_once_learnt_and_keeps_jumps_single(three_ns, monkeypatch):
    """install_nat_here: the first namespace through iptables, the next by copy (no process
    started: iptables is made unrunnable for it); a namespace that holds the rules already (a
    previous resolver's) gets fresh ports through iptables, not a second jump."""
    a, b, _ = three_ns
    monkeypatch.setattr(dns, "_NAT_COPY", dns.NatCopy())
    assert inside(a, lambda: dns.install_nat_here(40000, 40001))
    assert dns._NAT_COPY.learnt is not None
    real_run = subprocess.run

    def no_fork(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError(f"a copy should need no process: {args}")

    monkeypatch.setattr(dns.subprocess, "run", no_fork)
    assert inside(b, lambda: dns.install_nat_here(42000, 42001))
    monkeypatch.setattr(dns.subprocess, "run", real_run)
    assert inside(b, lambda: dns.install_nat_here(43000, 43001))  # a restarted resolver
    seen = saved(b)
    assert seen.count("-A OUTPUT -d 127.0.0.11/32 -j DOCKER_OUTPUT") == 1
    assert "-A DOCKER_OUTPUT -d 127.0.0.11/32 -p udp -m udp --dport 53 -j DNAT " \
           "--to-destination 127.0.0.11:43000" in seen
    assert not any("42000" in l for l in seen)


def test_the_jumps_go_first_as_dockers_resolver_inserts_them(three_ns, monkeypatch):
    """A load balancer's IPVS SNAT rule is there before the resolver: Docker's ``iptables -I``
    puts the DNS jump in front of it; the first namespace (iptables) and a copy alike."""
    a, b, _ = three_ns
    snat = "-A POSTROUTING -d 10.90.0.0/24 -j SNAT --to-source 10.90.0.2"
    for ns in (a, b):
        restore(ns, f"*nat\n{snat}\nCOMMIT\n")
    monkeypatch.setattr(dns, "_NAT_COPY", dns.NatCopy())
    assert inside(a, lambda: dns.install_nat_here(40000, 40001))  # iptables: nothing learnt
    assert dns._NAT_COPY.learnt is None  # (its table holds a rule that is not the resolver's)
    clean = dns.NatCopy()
    c = three_ns[2]
    restore(c, dns.nat_rules(40000, 40001, with_jumps=True))
    inside(c, lambda: clean.learn(40000, 40001))
    monkeypatch.setattr(dns, "_NAT_COPY", clean)

    def no_fork(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError(f"a copy should need no process: {args}")

    real_run = subprocess.run
    monkeypatch.setattr(dns.subprocess, "run", no_fork)
    assert inside(b, lambda: dns.install_nat_here(41000, 41001))  # a copy
    monkeypatch.setattr(dns.subprocess, "run", real_run)
    for ns in (a, b):
        post = [l for l in saved(ns) if l.startswith("-A POSTROUTING")]
        assert post == ["-A POSTROUTING -d 127.0.0.11/32 -j DOCKER_POSTROUTING", snat], (ns, post)
