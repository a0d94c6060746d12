"""A remote IPAM driver, reached over the plugin protocol (libnetwork's ``ipams/remote``).

It answers to the same contract as the default allocator (``cnmlab.ipam.Ipam``), so the
controller asks it for a network's pool, gateway and addresses exactly as it asks its own;
what the plugin answers must parse as a pool and an address inside it, or the network is not
made.
"""
from __future__ import annotations

import ipaddress

from cnmlab.errors import InvalidInput
from cnmlab.plugin import discovery
from cnmlab.plugin import protocol as P
from cnmlab.plugin.client import PluginClient, PluginError


class RemoteIpam:
    def __init__(self, name: str, socket_path: str, timeout: float | None = None) -> None:
        self.name = name
        self.client = PluginClient(name, socket_path, timeout)
        implements = self.client.call(P.ACTIVATE, required=("Implements",))["Implements"]
        if not isinstance(implements, list) or P.IPAM_DRIVER not in implements:
            raise PluginError(f"plugin {name} does not implement {P.IPAM_DRIVER} "
                              f"(it implements {implements!r})")
        spaces = self.client.call(P.IPAM_SPACES, required=("LocalDefaultAddressSpace",))
        self.local_space = str(spaces["LocalDefaultAddressSpace"])

    def request_pool(self, space: str, pool: str | None = None, sub_pool: str | None = None,
                     exclude: list[str] | None = None) -> tuple[str, str]:
        answer = self.client.call(P.REQUEST_POOL, {
            "AddressSpace": self.local_space, "Pool": pool or "", "SubPool": sub_pool or "",
            "Options": {}, "V6": False}, required=("PoolID", "Pool"))
        try:
            net = ipaddress.IPv4Network(str(answer["Pool"]))
        except ValueError:
            raise PluginError(f"plugin {self.name}: {P.REQUEST_POOL}: {answer['Pool']!r} is not "
                              f"an IPv4 subnet") from None
        return str(answer["PoolID"]), str(net)

    def release_pool(self, pool_id: str) -> None:
        self.client.call(P.RELEASE_POOL, {"PoolID": pool_id})

    def request_address(self, pool_id: str, ip: str | None = None,
                        gateway: bool = False) -> str:
        answer = self.client.call(P.REQUEST_ADDRESS, {
            "PoolID": pool_id, "Address": ip or "",
            "Options": dict(P.GATEWAY_REQUEST) if gateway else {}}, required=("Address",))
        try:
            return str(ipaddress.IPv4Interface(str(answer["Address"])).ip)
        except ValueError:
            raise PluginError(f"plugin {self.name}: {P.REQUEST_ADDRESS}: {answer['Address']!r} "
                              f"is not an IPv4 address") from None

    def release_address(self, pool_id: str, ip: str) -> None:
        self.client.call(P.RELEASE_ADDRESS, {"PoolID": pool_id, "Address": ip})


_cache: dict[tuple[str, str], RemoteIpam] = {}


def get(name: str) -> RemoteIpam:
    path = discovery.find(name)
    if path is None:
        raise InvalidInput(f"unknown IPAM driver {name!r}: use 'default' or a plugin found in "
                           f"{discovery.CNMLAB_PLUGINS} or Docker's plugin folders")
    if (name, path) not in _cache:
        _cache[(name, path)] = RemoteIpam(name, path)
    return _cache[(name, path)]
