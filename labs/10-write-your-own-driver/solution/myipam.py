"""Lab 10, step 4 solved: a pool of your choice, addresses from the top down."""
from __future__ import annotations

import ipaddress

from cnmlab.plugin.sdk import IpamDriver


class MyIpam(IpamDriver):
    def __init__(self, host_ns: str | None = None) -> None:
        super().__init__()
        self.pools: dict[str, dict] = {}  # PoolID -> {"net": IPv4Network, "used": set()}

    def request_pool(self, req: dict) -> dict:
        net = ipaddress.IPv4Network(req.get("Pool") or "10.123.0.0/24")
        pool_id = f"myipam/{net}"
        if pool_id in self.pools:
            raise ValueError(f"pool {net} is in use")
        self.pools[pool_id] = {"net": net, "used": set()}
        return {"PoolID": pool_id, "Pool": str(net), "Data": {}}

    def request_address(self, req: dict) -> dict:
        pool = self.pools[req["PoolID"]]
        net, used = pool["net"], pool["used"]
        if req.get("Address"):
            addr = ipaddress.IPv4Address(req["Address"])
        elif (req.get("Options") or {}).get("RequestAddressType") == \
                "com.docker.network.gateway":
            addr = net.network_address + 1
        else:  # from the top down, skipping the broadcast address
            addr = next((a for a in reversed(list(net.hosts())) if a not in used), None)
            if addr is None:
                raise ValueError(f"no free address left in {net}")
        if addr in used:
            raise ValueError(f"address {addr} is in use")
        used.add(addr)
        return {"Address": f"{addr}/{net.prefixlen}", "Data": {}}

    def release_address(self, req: dict) -> dict:
        pool = self.pools.get(req["PoolID"])
        if pool:
            pool["used"].discard(ipaddress.IPv4Address(req["Address"].split("/")[0]))
        return {}

    def release_pool(self, req: dict) -> dict:
        self.pools.pop(req["PoolID"], None)
        return {}
