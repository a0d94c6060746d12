"""The CNM objects as saved state: Network, Endpoint, Sandbox, plus the Host that owns them.

They are plain dataclasses serialised to JSON in the lab's state file, so every cnmlab process
(the CLI, the TUI, a lab's solve step, pytest) sees the same model, and teardown works even
after the process that built a lab was killed.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from cnmlab.constants import UPSTREAM_SUBNET

# The predefined networks Docker creates at start and that users can neither create nor remove.
PREDEFINED = ("bridge", "host", "none")


@dataclass
class PortMapping:
    host_port: int
    container_port: int
    proto: str = "tcp"
    host_ip: str = "0.0.0.0"

    def __str__(self) -> str:
        return f"{self.host_port}:{self.container_port}/{self.proto}"


@dataclass(frozen=True)
class EndpointRef:
    """Which endpoint of which network (by name) a sandbox holds: the typed "net/id"."""

    network: str
    endpoint: str


@dataclass
class Endpoint:
    id: str
    name: str
    network: str  # network name
    ip: str | None = None  # address/prefix
    mac: str | None = None
    host_ifname: str | None = None  # host end of the veth
    ifname: str | None = None  # name inside the sandbox once joined (eth0, eth1...)
    sandbox: str | None = None
    gateway: str | None = None  # the default route this endpoint offers once joined
    created: int = 0  # creation order on its host: published-port rules follow it
    aliases: list[str] = field(default_factory=list)
    ports: list[PortMapping] = field(default_factory=list)
    driver_data: dict[str, Any] = field(default_factory=dict)


@dataclass
class Network:
    id: str
    name: str
    driver: str
    scope: str = "local"  # "global": the network spans the lab's hosts (control plane)
    embedded_dns: bool = False  # its sandboxes resolve names through 127.0.0.11
    subnet: str | None = None
    gateway: str | None = None
    ip_range: str | None = None
    pool_id: str | None = None
    ipam_driver: str = "default"  # or a remote IPAM plugin's name
    internal: bool = False
    options: dict[str, str] = field(default_factory=dict)
    device: str | None = None  # e.g. docker0, br-<id12>
    # where its devices live when that is not the host's namespace (overlay: its own, which
    # a learner names NETWORK@HOST)
    netns: str | None = None
    mtu: int = 1500
    created: int = 0  # creation order on its host; firewall rules list newest first
    endpoints: dict[str, Endpoint] = field(default_factory=dict)

    def option_bool(self, key: str, default: bool) -> bool:
        value = self.options.get(key)
        if value is None:
            return default
        return str(value).lower() in ("1", "true", "yes", "on")


@dataclass
class Sandbox:
    id: str
    name: str
    netns: str | None  # None: shares the host's namespace (host driver)
    endpoints: list[EndpointRef] = field(default_factory=list)  # in join order
    dns: bool = False  # embedded resolver wanted (a user-defined network is attached)
    hosts: list[str] = field(default_factory=list)  # addresses in /etc/hosts, as Docker keeps them


@dataclass
class Host:
    name: str
    netns: str
    public_ip: str | None
    underlay_ip: str | None = None  # its address on the lab's underlay (VTEP for overlays)
    firewall: str = "iptables"  # "iptables", or "manual" when the learner programs it by hand
    default_bridge: bool = True
    networks: dict[str, Network] = field(default_factory=dict)
    sandboxes: dict[str, Sandbox] = field(default_factory=dict)
    proxies: dict[str, int] = field(default_factory=dict)  # "proto/port" -> pid of its proxy
    next_network: int = 0
    next_endpoint: int = 0
    underlay: str | None = None  # the underlay its eth0 is plugged into (public_ip is on it)


@dataclass
class Underlay:
    """A shared L2 segment for a lab's hosts: the "physical" LAN a data centre gives them.

    One namespace holds the switch (a bridge) and plays the LAN's router too: the gateway
    address on the switch, forwarding, and NAT out of an uplink into the lab's upstream. Each
    host on it gets a NIC ``eth0`` with an address of ``subnet``. ``routes`` are what the
    network's admin configured on the router (``[subnet, next hop]``), e.g. for an ipvlan l3
    subnet behind a Docker host.
    """

    name: str
    netns: str
    subnet: str
    gateway: str  # the router's address on the switch (the subnet's first address)
    bridge: str = "sw0"
    uplink_ip: str | None = None  # the router's address on the upstream, None without one
    hosts: dict[str, str] = field(default_factory=dict)  # host name -> its address (no prefix)
    ports: dict[str, str] = field(default_factory=dict)  # host name -> its switch port
    routes: list[list[str]] = field(default_factory=list)  # [subnet, next hop]


@dataclass
class LabState:
    name: str
    upstream: str | None = None  # netns of the upstream ("internet")
    upstream_subnet: str = UPSTREAM_SUBNET
    hosts: dict[str, Host] = field(default_factory=dict)
    namespaces: list[str] = field(default_factory=list)  # write-ahead: recorded before creation
    underlays: dict[str, Underlay] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """A shallow dict; json's ``default=vars`` serialises the nested dataclasses fast."""
        return dict(vars(self))

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "LabState":
        hosts = {}
        for hname, h in data.get("hosts", {}).items():
            nets = {}
            for nname, n in h.get("networks", {}).items():
                eps = {}
                for eid, e in n.get("endpoints", {}).items():
                    e = dict(e)
                    e["ports"] = [PortMapping(**p) for p in e.get("ports", [])]
                    eps[eid] = Endpoint(**e)
                n = dict(n)
                n.pop("peers", None)  # 0.2 kept programmed peers here; the kernel is the truth
                n["endpoints"] = eps
                nets[nname] = Network(**n)
            h = dict(h)
            h["networks"] = nets
            sbs = {}
            for k, v in h.get("sandboxes", {}).items():
                v = dict(v)
                v["endpoints"] = [EndpointRef(**r) if isinstance(r, dict)
                                  else EndpointRef(*str(r).split("/", 1))  # before 0.2
                                  for r in v.get("endpoints", [])]
                sbs[k] = Sandbox(**v)
            h["sandboxes"] = sbs
            hosts[hname] = Host(**h)
        d = dict(data)
        d["hosts"] = hosts
        d["underlays"] = {k: Underlay(**v) for k, v in data.get("underlays", {}).items()}
        return cls(**d)
