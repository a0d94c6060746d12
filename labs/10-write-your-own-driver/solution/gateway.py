"""Lab 10, step 3 solved: the bridge holds the gateway, Join gives it, and the way out is NAT.

Everything of step 2, plus: CreateNetwork puts the gateway address on the bridge and adds a
MASQUERADE rule for the pool (what Docker's bridge driver does for its own networks); Join
answers the gateway, so Docker routes the container through it (and no longer adds
docker_gwbridge); DeleteNetwork removes the rule again.
"""
from __future__ import annotations

import subprocess

from cnmlab.plugin.sdk import NetworkDriver


class MyDriver(NetworkDriver):
    def __init__(self, host_ns: str) -> None:
        super().__init__()
        self.host_ns = host_ns
        self.networks: dict[str, dict] = {}  # NetworkID -> its pool and gateway

    def run(self, *argv: str, check: bool = True) -> str:
        proc = subprocess.run(argv, capture_output=True, text=True)
        if check and proc.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)}: {proc.stderr.strip()}")
        return proc.stdout

    def ip(self, *args: str, check: bool = True) -> str:
        return self.run("ip", "-n", self.host_ns, *args, check=check)

    def iptables(self, *args: str, check: bool = True) -> str:
        return self.run("ip", "netns", "exec", self.host_ns, "iptables", "-w", *args,
                        check=check)

    @staticmethod
    def bridge(req: dict) -> str:
        return "pl-" + req["NetworkID"][:8]

    @staticmethod
    def veth(req: dict) -> tuple[str, str]:
        return "pv" + req["EndpointID"][:8], "pc" + req["EndpointID"][:8]

    def masquerade(self, pool: str, br: str) -> list[str]:
        return ["POSTROUTING", "-s", pool, "!", "-o", br, "-j", "MASQUERADE"]

    def create_network(self, req: dict) -> dict:
        br = self.bridge(req)
        v4 = req["IPv4Data"][0]
        self.ip("link", "add", br, "type", "bridge")
        self.ip("addr", "add", v4["Gateway"], "dev", br)  # "10.78.0.1/24"
        self.ip("link", "set", br, "up")
        self.iptables("-t", "nat", "-A", *self.masquerade(v4["Pool"], br))
        self.networks[req["NetworkID"]] = {"pool": v4["Pool"],
                                           "gateway": v4["Gateway"].split("/")[0]}
        return {}

    def delete_network(self, req: dict) -> dict:
        br = self.bridge(req)
        net = self.networks.pop(req["NetworkID"], None)
        if net:
            self.iptables("-t", "nat", "-D", *self.masquerade(net["pool"], br), check=False)
        self.ip("link", "del", br, check=False)
        return {}

    def create_endpoint(self, req: dict) -> dict:
        host_end, ctr_end = self.veth(req)
        self.ip("link", "add", host_end, "type", "veth", "peer", "name", ctr_end)
        self.ip("link", "set", host_end, "master", self.bridge(req), "up")
        return {}

    def join(self, req: dict) -> dict:
        return {"InterfaceName": {"SrcName": self.veth(req)[1], "DstPrefix": "eth"},
                "Gateway": self.networks[req["NetworkID"]]["gateway"]}

    def leave(self, req: dict) -> dict:
        return {}

    def delete_endpoint(self, req: dict) -> dict:
        self.ip("link", "del", self.veth(req)[0], check=False)
        return {}
