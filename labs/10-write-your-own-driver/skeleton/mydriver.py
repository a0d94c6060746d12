"""Lab 10: a network driver of your own, called by real Docker.

Docker's remote driver POSTs JSON to your plugin's socket, one call at a time:

    Plugin.Activate -> NetworkDriver.GetCapabilities -> CreateNetwork
    -> CreateEndpoint -> Join (-> ProgramExternalConnectivity) -> ... -> Leave
    -> DeleteEndpoint -> DeleteNetwork

cnmlab's SDK turns each call into a method call: ``NetworkDriver.CreateNetwork`` goes to
``create_network(req)`` with the decoded JSON, and what you return is the answer (an exception
becomes ``{"Err": "..."}``, which Docker prints). ``cnmlab plugin log NAME -f`` shows every
call and its JSON. After each change: ``cnmlab plugin stop NAME`` and serve again.

You build in the Docker host's network namespace, ``self.host_ns``: ``self.ip(...)`` runs
``ip -n HOST ...`` there. Docker does the container side: it moves the interface Join names
into the container, renames it, gives it its address and routes.
"""
from __future__ import annotations

import subprocess

from cnmlab.plugin.sdk import NetworkDriver


class MyDriver(NetworkDriver):
    def __init__(self, host_ns: str) -> None:
        super().__init__()
        self.host_ns = host_ns  # the Docker host's network namespace: build here

    def ip(self, *args: str, check: bool = True) -> str:
        """``ip -n HOST ARGS...``; a failure becomes an error Docker prints."""
        proc = subprocess.run(["ip", "-n", self.host_ns, *args], capture_output=True, text=True)
        if check and proc.returncode != 0:
            raise RuntimeError(f"ip {' '.join(args)}: {proc.stderr.strip()}")
        return proc.stdout

    # GetCapabilities is answered for you: {"Scope": "local", "ConnectivityScope": "local"}.

    def create_network(self, req: dict) -> dict:
        # req = {"NetworkID": "9f3c...", "Options": {...},
        #        "IPv4Data": [{"AddressSpace": "LocalDefault", "Pool": "10.77.0.0/24",
        #                      "Gateway": "10.77.0.1/24"}], "IPv6Data": []}
        # Step 1: answering is enough; Docker records the network.
        # TODO step 2: a bridge for this network (name it from the ID, at most 15 characters,
        #              e.g. "pl-" + NetworkID[:8]), up.
        # TODO step 3: the bridge holds the network's gateway address (IPv4Data[0]["Gateway"]).
        return {}

    def delete_network(self, req: dict) -> dict:
        # TODO step 2: delete the network's bridge (it may not exist).
        return {}

    def create_endpoint(self, req: dict) -> dict:
        # req = {"NetworkID": ..., "EndpointID": "5a1e...",
        #        "Interface": {"Address": "10.77.0.2/24", "MacAddress": ""}, "Options": {...}}
        # TODO step 2: a veth pair: one end on the network's bridge (up), the other end for the
        #              container (Docker moves it in at Join). Name both from the EndpointID.
        raise NotImplementedError("CreateEndpoint: make a veth pair (lab 10, step 2)")

    def join(self, req: dict) -> dict:
        # req = {"NetworkID": ..., "EndpointID": ..., "SandboxKey": "/var/run/docker/netns/..."}
        # TODO step 2: answer {"InterfaceName": {"SrcName": <the container's end>,
        #                                        "DstPrefix": "eth"}}
        # TODO step 3: and "Gateway": the network's gateway address (without /prefix).
        raise NotImplementedError("Join: answer InterfaceName (lab 10, step 2)")

    def leave(self, req: dict) -> dict:
        return {}

    def delete_endpoint(self, req: dict) -> dict:
        # TODO step 2: delete your veth (deleting one end deletes both; it may be gone).
        return {}
