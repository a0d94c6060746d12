"""The peer table, as the control plane holds it next to what each host's kernel has.

For every host and every global network on it: the endpoints other hosts published (the store)
and the neighbour/FDB entries the host's vxlan0 holds (the kernel), row by row, with the
host's agent's presence. A host whose kernel lacks a row, holds a stale one, or whose agent is
gone is *out of sync*: that is how a learner (``cnmlab peers LAB``) and ``Lab.converge`` see
whether the control plane has done its job.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from cnmlab.cluster import Cluster
from cnmlab.controller import Controller


@dataclass
class PeerRow:
    ip: str
    mac: str
    vtep: str
    owner: str  # the host that published it ("" when only the kernel has it)
    kernel: str  # "ok", "missing", "stale" (kernel has it, store does not), "wrong"


@dataclass
class NetworkPeers:
    host: str
    network: str
    network_id: str
    rows: list[PeerRow] = field(default_factory=list)

    @property
    def in_sync(self) -> bool:
        return all(r.kernel == "ok" for r in self.rows)


@dataclass
class HostPeers:
    host: str
    agent: bool  # its agent's lease is alive in the store
    networks: list[NetworkPeers] = field(default_factory=list)

    @property
    def in_sync(self) -> bool:
        return all(n.in_sync for n in self.networks)


def report(cluster: Cluster | None, controllers: Sequence[Controller]) -> list[HostPeers]:
    if cluster is None:
        return []
    agents = cluster.agents()
    out = []
    for ctl in controllers:
        hp = HostPeers(ctl.host.name, ctl.host.name in agents)
        for net, want, have in ctl.peer_table():
            np = NetworkPeers(ctl.host.name, net.name, net.id)
            for ip, peer in sorted(want.items()):
                cur = have.get(ip)
                if cur is None:
                    state = "missing"
                elif cur[0] != peer.mac or cur[1] not in (None, peer.vtep):
                    state = "wrong"
                else:
                    state = "ok"
                np.rows.append(PeerRow(ip, peer.mac, peer.vtep, peer.host, state))
            for ip, (mac, vtep) in sorted(have.items()):
                if ip not in want:
                    np.rows.append(PeerRow(ip, mac, vtep or "", "", "stale"))
            hp.networks.append(np)
        out.append(hp)
    return out


def out_of_sync(hosts: list[HostPeers]) -> list[str]:
    return [h.host for h in hosts if not h.in_sync]


def render(hosts: list[HostPeers]) -> str:
    """The table ``cnmlab peers`` prints."""
    lines = []
    for h in hosts:
        status = "in sync" if h.in_sync else "OUT OF SYNC"
        agent = "agent up" if h.agent else "AGENT DOWN"
        lines.append(f"host {h.host}: {status}, {agent}")
        for n in h.networks:
            lines.append(f"  network {n.network} ({n.network_id[:12]})")
            lines.append(f"    {'IP':<16} {'MAC':<18} {'VTEP':<16} {'FROM':<10} KERNEL")
            for r in n.rows:
                lines.append(f"    {r.ip:<16} {r.mac:<18} {r.vtep:<16} {r.owner or '-':<10} "
                             f"{r.kernel}")
            if not n.rows:
                lines.append("    (no remote endpoints)")
    return "\n".join(lines)
