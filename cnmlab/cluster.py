"""The seam for global-scope networks: cluster-wide state through a key-value store only.

A global-scope network (overlay) spans hosts. Three things about it must be the same on every
host, so they live in the control plane and nowhere else, as libnetwork keeps them in its
global datastore and gossips its peers:

* the network itself (id, driver, subnet, options): ``declare_network``, read by every host;
* its address space: one pool and one address set for all hosts (``GlobalIpam``), allocated
  with compare-and-swap so two hosts never hand out the same address;
* its peers: every joined endpoint is published (``publish_peer``) and every other host's
  agent programs its own kernel from what it reads (``Agent.sync``), through the driver's
  ``PeerAware`` calls.

The store is a small etcd-shaped protocol (``KeyValueStore``: get, create-if-absent, put,
delete, prefix range, revision and watch). ``MemoryStore`` implements it for unit tests of the
seam only: it lives in one process, so it can never span machines. Real labs use etcd
(``cnmlab.etcd.EtcdStore``, a private etcd per lab or an existing cluster, see
``cnmlab.controlplane``), and every host runs an agent (``cnmlab.agent``) that watches the
store and programs its own kernel, so the same code runs with hosts as namespaces on one
machine or as separate machines: nothing here reads another host's memory or files.
"""
from __future__ import annotations

import ipaddress
import json
import threading
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Protocol

from cnmlab.errors import AddressInUse, InvalidInput, ObjectExists, PoolExhausted, PoolOverlap

if TYPE_CHECKING:
    from cnmlab.model import Network


@dataclass(frozen=True)
class WatchEvent:
    """One change seen by a watcher: a PUT with its new value, or a DELETE with the old one."""

    type: str  # "PUT" or "DELETE"
    key: str
    value: str | None
    prev_value: str | None
    revision: int


class KeyValueStore(Protocol):
    """What the control plane must offer (etcd v3's KV model, reduced)."""

    def get(self, key: str) -> str | None: ...

    def create(self, key: str, value: str) -> bool:
        """Put ``key`` only if it does not exist; False when another writer was first."""

    def put(self, key: str, value: str) -> None: ...

    def delete(self, key: str) -> bool: ...

    def range(self, prefix: str) -> dict[str, str]: ...

    def revision(self) -> int:
        """Grows with every change: an agent that saw revision R has nothing newer to read."""

    def watch(self, prefix: str, start_revision: int,
              end: str | None = None) -> Iterator[list[WatchEvent]]:
        """Every change under ``prefix`` (or in the key range [prefix, end)) from
        ``start_revision`` on, in batches, as they come.

        An agent reads the current state at revision R, then watches from R + 1: nothing
        happens between the read and the watch that it would miss.
        """


class MemoryStore:
    """A KeyValueStore in this process's memory, for unit tests of the seam."""

    def __init__(self) -> None:
        self._data: dict[str, str] = {}
        self._rev = 0
        self._log: list[WatchEvent] = []
        self._lock = threading.Condition()

    def _changed(self, kind: str, key: str, value: str | None, prev: str | None) -> None:
        self._rev += 1
        self._log.append(WatchEvent(kind, key, value, prev, self._rev))
        self._lock.notify_all()

    def get(self, key: str) -> str | None:
        with self._lock:
            return self._data.get(key)

    def create(self, key: str, value: str) -> bool:
        with self._lock:
            if key in self._data:
                return False
            self._data[key] = value
            self._changed("PUT", key, value, None)
            return True

    def put(self, key: str, value: str, lease: int | None = None) -> None:
        with self._lock:
            prev = self._data.get(key)
            self._data[key] = value
            self._changed("PUT", key, value, prev)

    def delete(self, key: str) -> bool:
        with self._lock:
            prev = self._data.pop(key, None)
            if prev is None:
                return False
            self._changed("DELETE", key, None, prev)
            return True

    def watch(self, prefix: str, start_revision: int,
              end: str | None = None) -> Iterator[list[WatchEvent]]:
        seen = start_revision - 1
        while True:
            with self._lock:
                self._lock.wait_for(lambda: self._rev > seen)
                batch = [e for e in self._log[seen:]
                         if (prefix <= e.key < end if end else e.key.startswith(prefix))]
                seen = self._rev
            if batch:
                yield batch

    def range(self, prefix: str) -> dict[str, str]:
        with self._lock:
            return {k: v for k, v in self._data.items() if k.startswith(prefix)}

    def revision(self) -> int:
        with self._lock:
            return self._rev


@dataclass(frozen=True)
class Peer:
    """One endpoint as other hosts need to know it (libnetwork's peerEntry)."""

    network_id: str
    endpoint_id: str
    ip: str  # address/prefix
    mac: str
    vtep: str  # the publishing host's underlay address
    host: str  # the publishing host's name
    # what the other hosts' embedded DNS answers for it (libnetwork's EndpointRecord: the
    # container's name and its aliases, the short container ID among them)
    name: str = ""
    aliases: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "aliases", tuple(self.aliases))  # a JSON list read back


@dataclass(frozen=True)
class NetworkRecord:
    """A global network as the control plane holds it; each host creates its local part."""

    id: str
    name: str
    driver: str
    subnet: str
    gateway: str
    internal: bool = False
    options: tuple[tuple[str, str], ...] = ()


class Cluster:
    """One lab's (or one real cluster's) view of the store, under a key prefix."""

    def __init__(self, store: KeyValueStore, prefix: str) -> None:
        self.store = store
        self.prefix = prefix.rstrip("/") + "/"
        self._ipam: GlobalIpam | None = None

    # ---- networks ----------------------------------------------------------------------
    def declare_network(self, record: NetworkRecord) -> None:
        if not self.store.create(f"{self.prefix}networks/{record.name}",
                                 json.dumps(asdict(record))):
            raise ObjectExists(f"network with name {record.name} already exists")

    def network(self, name: str) -> NetworkRecord | None:
        raw = self.store.get(f"{self.prefix}networks/{name}")
        if raw is None:
            return None
        data = json.loads(raw)
        data["options"] = tuple(tuple(o) for o in data.get("options", ()))
        return NetworkRecord(**data)

    def networks(self) -> list[NetworkRecord]:
        out = []
        for key in self.store.range(f"{self.prefix}networks/"):
            rec = self.network(key.rsplit("/", 1)[1])
            if rec:
                out.append(rec)
        return out

    def withdraw_network(self, record: NetworkRecord) -> None:
        self.store.delete(f"{self.prefix}networks/{record.name}")
        self.ipam.release_pool(record.id)

    @property
    def ipam(self) -> "GlobalIpam":
        if self._ipam is None:
            self._ipam = GlobalIpam(self.store, self.prefix + "ipam/")
        return self._ipam

    # ---- peers -------------------------------------------------------------------------
    def publish_peer(self, peer: Peer) -> None:
        self.store.put(f"{self.prefix}peers/{peer.network_id}/{peer.endpoint_id}",
                       json.dumps(asdict(peer)))

    def withdraw_peer(self, network_id: str, endpoint_id: str) -> None:
        self.store.delete(f"{self.prefix}peers/{network_id}/{endpoint_id}")

    def peers(self, network_id: str | None = None) -> list[Peer]:
        prefix = f"{self.prefix}peers/" + (f"{network_id}/" if network_id else "")
        return [Peer(**json.loads(v)) for v in self.store.range(prefix).values()]

    # ---- cluster-wide numbers (a network's VNI) ---------------------------------------
    def allocate_id(self, kind: str, owner: str, first: int, last: int) -> int:
        """The lowest free number in [first, last] for ``owner``, by create-if-absent (as
        swarm's allocator hands out VXLAN IDs from 4096 up); the same owner gets its own back."""
        for _ in range(64):
            taken = self.store.range(f"{self.prefix}ids/{kind}/")
            for key, who in taken.items():
                if who == owner:
                    return int(key.rsplit("/", 1)[1])
            used = {int(k.rsplit("/", 1)[1]) for k in taken}
            n = next((i for i in range(first, last + 1) if i not in used), None)
            if n is None:
                raise PoolExhausted(f"no free {kind} left in {first}..{last}")
            if self.store.create(f"{self.prefix}ids/{kind}/{n}", owner):
                return n
        raise PoolExhausted(f"{kind}: the numbers kept being taken")

    def release_ids(self, kind: str, owner: str) -> None:
        for key, who in self.store.range(f"{self.prefix}ids/{kind}/").items():
            if who == owner:
                self.store.delete(key)

    # ---- agents: which hosts are listening -------------------------------------------
    def agents(self) -> dict[str, dict[str, str]]:
        """Host name -> what its live agent announced (the key dies with the agent's lease)."""
        return {k.rsplit("/", 1)[1]: json.loads(v)
                for k, v in self.store.range(f"{self.prefix}agents/").items()}

    @property
    def watched_range(self) -> tuple[str, str]:
        """What agents watch: the routing mesh's services and tasks, the declarations and the
        peers, ``mesh/`` up to and with ``peers/`` (keys sort so: mesh/ < networks/ <
        peers/), not the IPAM's, the id allocator's or the agents' own keys."""
        return f"{self.prefix}mesh/", f"{self.prefix}peers0"


class GlobalIpam:
    """One address space per global network across all hosts, allocated by compare-and-swap.

    Pools come from swarm's default, 10.0.0.0/8 in /24s (or the subnet asked for), and must not
    overlap another global network's; addresses are first-free, gateway first. Each
    allocation is a key created only if absent, so two hosts racing for one address cannot
    both win: the loser retries with the next free one.
    """

    BASE = ipaddress.IPv4Network("10.0.0.0/8")

    def __init__(self, store: KeyValueStore, prefix: str) -> None:
        self.store = store
        self.prefix = prefix
        # what this client last saw taken, per network: a hint to try first (one request),
        # never trusted (the create still decides; a lost race re-reads the store)
        self._seen: dict[str, set[str]] = {}
        self._pool_of: dict[str, ipaddress.IPv4Network] = {}

    def _pools(self) -> dict[str, ipaddress.IPv4Network]:
        return {k.split("/")[-2]: ipaddress.IPv4Network(v)
                for k, v in self.store.range(self.prefix).items() if k.endswith("/pool")}

    def request_pool(self, network_id: str, subnet: str | None = None) -> str:
        for _ in range(64):  # lost races retry against the newer pool set
            taken = self._pools()
            if network_id in taken:
                return str(taken[network_id])
            if subnet:
                try:
                    want = ipaddress.IPv4Network(subnet)
                except ValueError as e:
                    raise InvalidInput(f"subnet: {subnet!r} is not a valid IPv4 subnet ({e})") from None
                if any(want.overlaps(p) for p in taken.values()):
                    raise PoolOverlap(f"invalid pool request: Pool overlaps with other one on "
                                      f"this address space ({want})")
            else:
                want = next((s for s in self.BASE.subnets(new_prefix=24)
                             if not any(s.overlaps(p) for p in taken.values())), None)
                if want is None:
                    raise PoolExhausted("could not find an available, non-overlapping IPv4 "
                                        "address pool among the defaults to assign to the network")
            if self.store.create(f"{self.prefix}{network_id}/pool", str(want)):
                return str(want)
        raise PoolExhausted(f"network {network_id[:12]}: the address pool kept changing")

    def release_pool(self, network_id: str) -> None:
        self._seen.pop(network_id, None)
        self._pool_of.pop(network_id, None)
        for key in self.store.range(f"{self.prefix}{network_id}/"):
            self.store.delete(key)

    def _pool(self, network_id: str) -> ipaddress.IPv4Network:
        """A network's pool, read once: it is set when the network is made and never changes
        while the network exists (an id is never reused), so asking the store again for every
        address would be a round trip for nothing."""
        pool = self._pool_of.get(network_id)
        if pool is None:
            raw = self.store.get(f"{self.prefix}{network_id}/pool")
            if raw is None:
                raise InvalidInput(f"network {network_id[:12]} has no address pool")
            pool = self._pool_of[network_id] = ipaddress.IPv4Network(raw)
        return pool

    def request_address(self, network_id: str, ip: str | None = None) -> str:
        pool = self._pool(network_id)
        if ip:
            addr = ipaddress.IPv4Address(ip)
            if addr not in pool:
                raise InvalidInput(f"address {ip} is not in the network's subnet {pool}")
            if not self.store.create(f"{self.prefix}{network_id}/addr/{addr}", "1"):
                raise AddressInUse(f"Address already in use: {addr}")
            return str(addr)
        used = self._seen.get(network_id)
        for _ in range(64):
            if used is None:
                used = {k.rsplit("/", 1)[1]
                        for k in self.store.range(f"{self.prefix}{network_id}/addr/")}
            free = next((a for a in pool.hosts() if str(a) not in used), None)
            if free is None:
                if network_id in self._seen:  # the hint may be stale: read the truth once
                    self._seen.pop(network_id)
                    used = None
                    continue
                raise PoolExhausted(f"no available IPv4 addresses on this network's address "
                                    f"pools: {pool}")
            used.add(str(free))
            self._seen[network_id] = used
            if self.store.create(f"{self.prefix}{network_id}/addr/{free}", "1"):
                return str(free)
            used = None  # someone else took it: read what is taken now
        raise PoolExhausted(f"network {network_id[:12]}: addresses kept being taken")

    def release_address(self, network_id: str, ip: str) -> None:
        addr = ip.split("/")[0]
        self.store.delete(f"{self.prefix}{network_id}/addr/{addr}")
        self._seen.get(network_id, set()).discard(addr)


def record_of(net: "Network") -> NetworkRecord:
    return NetworkRecord(id=net.id, name=net.name, driver=net.driver, subnet=net.subnet or "",
                         gateway=net.gateway or "", internal=net.internal,
                         options=tuple(sorted(net.options.items())))
