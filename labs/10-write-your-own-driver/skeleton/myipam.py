"""Lab 10, step 4: an IPAM driver of your own, handing out addresses from a pool you choose.

Docker asks an IPAM plugin (``docker network create --ipam-driver NAME``) for the network's
pool, then for one address per endpoint: first the gateway's (Options
``{"RequestAddressType": "com.docker.network.gateway"}``), then one per container. Errors go
back in ``{"Error": "..."}`` (the SDK does it when you raise).

    cnmlab plugin serve myipam.py:MyIpam --name NAME --detach
"""
from __future__ import annotations

from cnmlab.plugin.sdk import IpamDriver


class MyIpam(IpamDriver):
    def __init__(self, host_ns: str | None = None) -> None:
        super().__init__()  # an IPAM builds nothing in the host: host_ns is not needed

    # GetDefaultAddressSpaces is answered for you: {"LocalDefaultAddressSpace": "local", ...}.

    def request_pool(self, req: dict) -> dict:
        # req = {"AddressSpace": "local", "Pool": "" (or --subnet's), "SubPool": "",
        #        "Options": {}, "V6": false}
        # TODO step 4: the pool: req["Pool"] if given, else 10.123.0.0/24. Answer
        #              {"PoolID": <your name for it>, "Pool": "10.123.0.0/24", "Data": {}}
        raise NotImplementedError("RequestPool: choose a pool (lab 10, step 4)")

    def request_address(self, req: dict) -> dict:
        # req = {"PoolID": ..., "Address": "" (or a fixed --ip), "Options": {...}}
        # TODO step 4: the gateway gets .1; containers get .254, .253, ... (from the top).
        #              Answer {"Address": "10.123.0.254/24", "Data": {}}
        raise NotImplementedError("RequestAddress: hand out an address (lab 10, step 4)")

    def release_address(self, req: dict) -> dict:
        return {}

    def release_pool(self, req: dict) -> dict:
        return {}
