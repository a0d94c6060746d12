"""Lab 10, step 2 solved: a bridge per network, a veth per endpoint, Join names the interface.

No gateway yet: Docker, seeing a container without one, attaches it to a second network of
its own (docker_gwbridge) for the way out. Step 3 gives the gateway.
"""
from __future__ import annotations

import subprocess

from cnmlab.plugin.sdk import NetworkDriver


class MyDriver(NetworkDriver):
    def __init__(self, host_ns: str) -> None:
        super().__init__()
        self.host_ns = host_ns

    def ip(self, *args: str, check: bool = True) -> str:
        proc = subprocess.run(["ip", "-n", self.host_ns, *args], capture_output=True, text=True)
        if check and proc.returncode != 0:
            raise RuntimeError(f"ip {' '.join(args)}: {proc.stderr.strip()}")
        return proc.stdout

    @staticmethod
    def bridge(req: dict) -> str:
        return "pl-" + req["NetworkID"][:8]

    @staticmethod
    def veth(req: dict) -> tuple[str, str]:
        """(host end, container end) of the endpoint's veth pair."""
        return "pv" + req["EndpointID"][:8], "pc" + req["EndpointID"][:8]

    def create_network(self, req: dict) -> dict:
        br = self.bridge(req)
        self.ip("link", "add", br, "type", "bridge")
        self.ip("link", "set", br, "up")
        return {}

    def delete_network(self, req: dict) -> dict:
        self.ip("link", "del", self.bridge(req), check=False)
        return {}

    def create_endpoint(self, req: dict) -> dict:
        host_end, ctr_end = self.veth(req)
        self.ip("link", "add", host_end, "type", "veth", "peer", "name", ctr_end)
        self.ip("link", "set", host_end, "master", self.bridge(req), "up")
        return {}

    def join(self, req: dict) -> dict:
        return {"InterfaceName": {"SrcName": self.veth(req)[1], "DstPrefix": "eth"}}

    def leave(self, req: dict) -> dict:
        return {}

    def delete_endpoint(self, req: dict) -> dict:
        self.ip("link", "del", self.veth(req)[0], check=False)
        return {}
