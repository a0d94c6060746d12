"""A host's agent: watches the control plane, programs this host's kernel, and nothing else.

``python -m cnmlab.agent --lab L --host H --netns NS --store URL --prefix P --vtep IP``

What swarm's per-node networking does from gossip, an agent does from etcd:

* every network the store declares with a global-scope driver gets its part on this host
  (overlay: the namespace with br0 and vxlan0), and loses it when the declaration goes;
* every endpoint another host publishes becomes a peer entry here (neighbour + FDB), and goes
  when it is withdrawn;
* every service with a published port (``mesh/``) gets this host's part of the ingress routing
  mesh: the DNAT in nat DOCKER-INGRESS, the mark and the IPVS fwmark service with every task of
  the service as a real server, wherever it runs (``cnmlab.ingress``).

It reads nothing but the store and its own host's kernel: no lab state file, no memory shared
with the process that runs containers, so the same agent works with hosts on one machine or on
many. It starts by reconciling everything (the store at revision R against the kernel), then
applies changes from R + 1 as they arrive; when the store drops away it says so in one line
and reconciles again once it is back. Its presence is a key under ``agents/`` bound to an etcd
lease: when the agent dies the key expires, and ``cnmlab peers`` shows the host as unwatched.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time

from cnmlab import drivers, ingress, state
from cnmlab.cluster import Cluster, NetworkRecord, Peer, WatchEvent
from cnmlab.constants import NS_PREFIX, NS_SEP
from cnmlab.controller import Controller, setup_namespace
from cnmlab.errors import CnmError
from cnmlab.etcd import EtcdStore, StoreUnreachable
from cnmlab.model import Host

LEASE_TTL = 3  # seconds without a keepalive before the store forgets the agent


class Agent:
    def __init__(self, lab: str, host: str, host_ns: str, cluster: Cluster, vtep: str) -> None:
        self.lab = lab
        self.cluster = cluster
        self.store: EtcdStore = cluster.store  # type: ignore[assignment]
        # An in-memory model of this host's global networks only, rebuilt from the store and
        # the kernel at each start: the agent never writes the lab's state.
        self.host = Host(name=host, netns=host_ns, public_ip=vtep, underlay_ip=vtep,
                         default_bridge=False)
        self.ctl = Controller(self.host, make_ns=self._make_ns, save=lambda: None,
                              ns_name=lambda o: f"{NS_PREFIX}{lab}{NS_SEP}{o}", cluster=cluster)
        self.lease = 0
        self.revision = 0

    def _make_ns(self, ns: str, lo_up: bool = True) -> None:
        """Logged (write-ahead) before it is made, so 'cnmlab clean' finds it after a crash."""
        state.record_namespace(self.lab, ns)
        setup_namespace(ns, lo_up=lo_up)

    def log(self, msg: str) -> None:
        print(f"agent {self.host.name}: {msg}", flush=True)

    # ---- presence ----------------------------------------------------------------------
    def announce(self) -> None:
        self.lease = self.store.lease_grant(LEASE_TTL)
        self.store.put(f"{self.cluster.prefix}agents/{self.host.name}",
                       json.dumps({"pid": os.getpid(), "vtep": self.host.underlay_ip,
                                   "revision": self.revision}), lease=self.lease)

    def keepalive(self) -> None:
        while True:
            time.sleep(LEASE_TTL / 3)
            try:
                if not self.lease or not self.store.lease_keepalive(self.lease):
                    self.announce()
            except CnmError:
                self.lease = 0  # store away: announce again once it answers

    # ---- reconcile ---------------------------------------------------------------------
    def _global(self, record: NetworkRecord) -> bool:
        try:
            return drivers.capability(record.driver).global_scope
        except CnmError:
            return False  # a driver this host does not have: not ours to build

    def attach(self, record: NetworkRecord) -> tuple[int, int]:
        net = self.host.networks.get(record.name)
        if net is not None and net.id != record.id:  # replaced under the same name
            self.ctl.detach_global_network(record.name)
        self.ctl.attach_global_network(record)
        return self.ctl.sync_peers(record.id)

    def full_sync(self) -> int:
        rev = self.store.revision()
        declared = {r.name: r for r in self.cluster.networks() if self._global(r)}
        for name in [n for n in self.host.networks if n not in declared]:
            self.ctl.detach_global_network(name)
        added = removed = 0
        for record in declared.values():
            a, r = self.attach(record)
            added, removed = added + a, removed + r
        self.log(f"in sync at revision {rev}: {len(declared)} network(s), "
                 f"{added} peer(s) added, {removed} removed")
        self.sync_mesh()
        return rev

    def sync_mesh(self) -> None:
        """This host's part of the routing mesh, from the store (all of it: idempotent)."""
        summary = ingress.program_host(self.lab, self.host.name, self.host.netns, self.cluster)
        if summary:  # nothing to say on a host of a lab without published services
            self.log(summary)

    def handle(self, ev: WatchEvent) -> None:
        rel = ev.key[len(self.cluster.prefix):]
        kind, _, rest = rel.partition("/")
        if kind == "networks":
            if ev.type == "PUT" and ev.value:
                data = json.loads(ev.value)
                data["options"] = tuple(tuple(o) for o in data.get("options", ()))
                record = NetworkRecord(**data)
                if self._global(record):
                    self.attach(record)
            elif ev.type == "DELETE":
                self.ctl.detach_global_network(rest)
        elif kind == "peers":
            raw = ev.value if ev.type == "PUT" else ev.prev_value
            if raw:
                self.ctl.apply_peer(Peer(**json.loads(raw)), present=ev.type == "PUT")
        # mesh/ events: run() reprograms the mesh once per batch of events

    def run(self) -> None:
        threading.Thread(target=self.keepalive, daemon=True).start()
        down_since: float | None = None
        while True:
            try:
                self.revision = self.full_sync()
                self.announce()
                down_since = None
                first, end = self.cluster.watched_range
                mesh = f"{self.cluster.prefix}mesh/"
                for batch in self.store.watch(first, self.revision + 1, end):
                    for ev in batch:
                        try:
                            self.handle(ev)
                        except CnmError as e:  # one bad event must not stop the host
                            self.log(f"{ev.type} {ev.key}: {e}")
                        self.revision = ev.revision
                    if any(ev.key.startswith(mesh) for ev in batch):
                        try:
                            self.sync_mesh()
                        except CnmError as e:
                            self.log(f"routing mesh: {e}")
            except StoreUnreachable as e:
                if down_since is None:
                    down_since = time.monotonic()
                    self.log(str(e))
                time.sleep(0.5)
            except CnmError as e:  # the kernel refused something: say so, reconcile again
                self.log(f"reconcile failed: {e}")
                time.sleep(0.5)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="cnmlab-agent", description=__doc__.splitlines()[0])
    p.add_argument("--lab", required=True)
    p.add_argument("--host", required=True)
    p.add_argument("--netns", required=True, help="the host's namespace (under /run/netns)")
    p.add_argument("--store", required=True, help="etcd://HOST:PORT")
    p.add_argument("--store-netns-fd", type=int, default=None,
                   help="talk to the store from this namespace (an inherited fd: the machine's "
                        "own, for an external cluster), not from the host's (the lab's etcd)")
    p.add_argument("--prefix", required=True)
    p.add_argument("--vtep", required=True, help="this host's underlay address")
    args = p.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    fd = args.store_netns_fd
    store = EtcdStore(args.store, netns_name=f"/proc/self/fd/{fd}" if fd is not None else None)
    agent = Agent(args.lab, args.host, args.netns, Cluster(store, args.prefix), args.vtep)
    try:
        agent.run()
    except KeyboardInterrupt:
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
