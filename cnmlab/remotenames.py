"""The names other hosts published: what a host's embedded DNS knows about remote endpoints.

Why a watch on the control plane and not the lab's state file: on a global-scope network
(overlay) the containers of other hosts may live on other machines, whose state this host can
never read. Docker's resolver learns them from the cluster (networkDB's endpoint table, each
record a container name, its aliases and its address); cnmlab's learns them from etcd, from the
peer records every host's engine publishes when one of its endpoints joins (``Peer.name``,
``Peer.aliases``). So the same code answers for hosts that are namespaces on one machine and for
hosts that are machines: the local state gives this host's own endpoints, the store gives every
other host's.

The table is read whole at revision R, then kept current by a watch from R + 1. When the store
cannot be reached the last table stays (names keep resolving, as Docker's do while gossip is
cut) and the watcher retries until it is back, then reads the table whole again.
"""
from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable

from cnmlab.cluster import Cluster, Peer
from cnmlab.errors import CnmError

RETRY = 0.5  # seconds between attempts while the store is away


class RemoteNames:
    """Every peer record the store holds (all hosts': the resolver filters out its own)."""

    def __init__(self, cluster: Cluster, changed: Callable[[], None]) -> None:
        self.cluster = cluster
        self.changed = changed  # called (from the watcher thread) after each change
        self._lock = threading.Lock()
        self._peers: dict[str, Peer] = {}  # "network_id/endpoint_id" -> record
        self.loaded = False  # the table was read whole at least once

    def snapshot(self) -> tuple[dict[str, Peer], bool]:
        with self._lock:
            return dict(self._peers), self.loaded

    def start(self) -> None:
        threading.Thread(target=self.run, name="remote-names", daemon=True).start()

    def _key(self, full: str) -> str:
        return full[len(self.cluster.prefix) + len("peers/"):]

    def run(self) -> None:
        prefix = f"{self.cluster.prefix}peers/"
        while True:
            try:
                rev = self.cluster.store.revision()
                table = {f"{p.network_id}/{p.endpoint_id}": p for p in self.cluster.peers()}
                with self._lock:
                    self._peers, self.loaded = table, True
                self.changed()
                for batch in self.cluster.store.watch(prefix, rev + 1):
                    with self._lock:
                        for ev in batch:
                            if ev.type == "PUT" and ev.value:
                                self._peers[self._key(ev.key)] = Peer(**json.loads(ev.value))
                            elif ev.type == "DELETE":
                                self._peers.pop(self._key(ev.key), None)
                    self.changed()
            except (CnmError, ValueError, TypeError):
                pass  # store away or a record we cannot read: keep the last table, retry
            time.sleep(RETRY)
