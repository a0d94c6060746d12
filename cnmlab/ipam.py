"""IPAM: the contract from libnetwork's ipamapi and Docker's default allocator.

Pools are requested per address space (``LocalDefault`` for local-scope drivers), identified by
a pool ID such as ``LocalDefault/172.18.0.0/16`` (with ``/<sub-pool>`` appended when an IP range
is given), and addresses are handed out first-free from the sub-pool, skipping the network and
broadcast addresses. The allocator's own state is just the set of pools and addresses in use,
so a controller can rebuild it from its saved endpoints.
"""
from __future__ import annotations

import ipaddress
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Protocol

from cnmlab.errors import AddressInUse, InvalidInput, IpamError, PoolExhausted, PoolOverlap

LOCAL_DEFAULT = "LocalDefault"
GLOBAL_DEFAULT = "GlobalDefault"

Net = ipaddress.IPv4Network
Addr = ipaddress.IPv4Address


def default_local_pools() -> list[Net]:
    """Docker's predefined local pools, in Docker's order (``ipamutils/utils.go``)."""
    pools = [ipaddress.IPv4Network(f"172.{n}.0.0/16") for n in (17, 18, 19)]
    for base in ("172.20.0.0/14", "172.24.0.0/14", "172.28.0.0/14"):
        pools.extend(ipaddress.IPv4Network(base).subnets(new_prefix=16))
    pools.extend(ipaddress.IPv4Network("192.168.0.0/16").subnets(new_prefix=20))
    return pools


def default_global_pools() -> list[Net]:
    """Swarm's default: 10.0.0.0/8 split into /24s (generated lazily by the allocator)."""
    return [ipaddress.IPv4Network("10.0.0.0/8")]


def parse_network(text: str, field_name: str) -> Net:
    try:
        return ipaddress.IPv4Network(text, strict=True)
    except ValueError as e:
        raise InvalidInput(f"{field_name}: {text!r} is not a valid IPv4 subnet ({e})") from None


def parse_address(text: str, field_name: str) -> Addr:
    try:
        return ipaddress.IPv4Address(text)
    except ValueError:
        raise InvalidInput(f"{field_name}: {text!r} is not a valid IPv4 address") from None


class Ipam(Protocol):
    """The IPAM driver contract (``ipamapi.Ipam``), IPv4 only."""

    def request_pool(self, space: str, pool: str | None = None, sub_pool: str | None = None,
                     exclude: list[str] | None = None) -> tuple[str, str]: ...

    def release_pool(self, pool_id: str) -> None: ...

    def request_address(self, pool_id: str, ip: str | None = None,
                        gateway: bool = False) -> str: ...

    def release_address(self, pool_id: str, ip: str) -> None: ...


@dataclass
class _Pool:
    network: Net
    sub_pool: Net | None
    used: set[Addr] = field(default_factory=set)
    low: int = 0  # no free address below this offset in range(): first-free stays O(1)

    def range(self) -> Net:
        return self.sub_pool or self.network


class DefaultIpam:
    """Docker's built-in allocator: predefined pools first-fit, addresses first-free."""

    def __init__(self, local_pools: list[Net] | None = None) -> None:
        self._predefined = {LOCAL_DEFAULT: local_pools or default_local_pools(),
                            GLOBAL_DEFAULT: default_global_pools()}
        self._pools: dict[str, _Pool] = {}

    @staticmethod
    def pool_id(space: str, network: Net, sub_pool: Net | None) -> str:
        return f"{space}/{network}" + (f"/{sub_pool}" if sub_pool else "")

    def _overlaps(self, space: str, net: Net) -> bool:
        return any(pid.startswith(space + "/") and p.network.overlaps(net)
                   for pid, p in self._pools.items())

    def request_pool(self, space: str, pool: str | None = None, sub_pool: str | None = None,
                     exclude: list[str] | None = None) -> tuple[str, str]:
        if space not in self._predefined:
            raise IpamError(f"unknown address space {space!r}")
        if sub_pool and not pool:
            raise InvalidInput("ip_range needs an explicit subnet")
        if pool:
            net = parse_network(pool, "subnet")
            if self._overlaps(space, net):
                raise PoolOverlap(f"invalid pool request: Pool overlaps with other one on this "
                                  f"address space ({net})")
        else:
            net = self._first_free(space, [parse_network(e, "exclude") for e in exclude or []])
        sub = None
        if sub_pool:
            sub = parse_network(sub_pool, "ip_range")
            if not sub.subnet_of(net):
                raise InvalidInput(f"ip_range {sub} is not inside subnet {net}")
        pid = self.pool_id(space, net, sub)
        self._pools[pid] = _Pool(net, sub)
        return pid, str(net)

    def _first_free(self, space: str, exclude: list[Net]) -> Net:
        for candidate in self._predefined[space]:
            if space == GLOBAL_DEFAULT:
                for sub in candidate.subnets(new_prefix=24):
                    if not self._overlaps(space, sub) and not any(sub.overlaps(e) for e in exclude):
                        return sub
                continue
            if not self._overlaps(space, candidate) and not any(candidate.overlaps(e)
                                                                for e in exclude):
                return candidate
        raise PoolExhausted("could not find an available, non-overlapping IPv4 address pool "
                            "among the defaults to assign to the network")

    def release_pool(self, pool_id: str) -> None:
        self._pools.pop(pool_id, None)

    def _get(self, pool_id: str) -> _Pool:
        try:
            return self._pools[pool_id]
        except KeyError:
            raise IpamError(f"unknown pool {pool_id}") from None

    def request_address(self, pool_id: str, ip: str | None = None,
                        gateway: bool = False) -> str:
        pool = self._get(pool_id)
        if ip is not None:
            addr = parse_address(ip, "ip")
            if addr not in pool.network:
                raise IpamError(f"address {addr} is not in subnet {pool.network}")
            if addr in pool.used or addr in (pool.network.network_address,
                                             pool.network.broadcast_address):
                raise AddressInUse(f"Address already in use: {addr}")
            pool.used.add(addr)
            return str(addr)
        rng = pool.range()
        start = int(rng.network_address)
        for addr in _usable(rng, pool.network, pool.low):
            if addr not in pool.used:
                pool.used.add(addr)
                pool.low = int(addr) - start + 1
                return str(addr)
        raise PoolExhausted(f"no available addresses in {rng}")

    def release_address(self, pool_id: str, ip: str) -> None:
        pool = self._get(pool_id)
        addr = ipaddress.IPv4Address(ip)
        pool.used.discard(addr)
        offset = int(addr) - int(pool.range().network_address)
        if 0 <= offset < pool.low:
            pool.low = offset


def _usable(rng: Net, network: Net, skip: int = 0) -> Iterator[Addr]:
    """Addresses of ``rng`` from offset ``skip``, minus the subnet's network and broadcast."""
    reserved = set() if network.prefixlen >= 31 else {network.network_address,
                                                        network.broadcast_address}
    first = int(rng.network_address)
    for n in range(first + skip, int(rng.broadcast_address) + 1):
        addr = ipaddress.IPv4Address(n)
        if addr not in reserved:
            yield addr
