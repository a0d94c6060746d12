"""The CNM objects as saved state: Network, Endpoint, Sandbox, plus the Host that owns them.

They are plain dataclasses serialised to JSON in the lab's state file, so every cnmlab process
(the CLI, the TUI, a lab's solve step, pytest) sees the same model, and teardown works even
after the process that built a lab was killed.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from cnmlab.constants import UPSTREAM_SUBNET
from cnmlab.errors import InvalidInput, one_line

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
    driver_data: dict[str, Any] = field(default_factory=dict)  # the driver's own (e.g. parent)

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
    # the next interface number per prefix ("eth" -> 2): libnetwork's osl counts up and never
    # reuses a number, so after a disconnect the next connect gets eth2, not the freed eth0
    next_ifindex: dict[str, int] = field(default_factory=dict)


@dataclass
class Service:
    """A swarm-style service on one host (``cnmlab.services``): N task sandboxes on a network.

    ``vip`` mode: a VIP (an address of the network's pool held by no endpoint) on the
    network's load-balancer sandbox ``lb-<network>``, balanced by IPVS to the tasks.
    ``dnsrr``: no VIP; the service name resolves to the task addresses.
    """

    name: str
    network: str
    port: int = 80
    proto: str = "tcp"
    endpoint_mode: str = "vip"
    vip: str | None = None  # bare address (vip mode)
    tasks: list[str] = field(default_factory=list)  # task sandbox names, in slot order
    next_slot: int = 1


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
    services: dict[str, Service] = field(default_factory=dict)
    # the iptables lines this host model last installed ("TABLE -A CHAIN ..."): what its next
    # reconcile may delete; everyone else's rules in the namespace are left alone
    firewall_rules: list[str] = field(default_factory=list)
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
    def from_json(cls, data: Any) -> "LabState":
        """Rebuild the model from a saved file, refusing what this version did not write.

        Every field is checked against the dataclasses' annotations (types, unknown or missing
        fields), so a damaged file or one from another cnmlab version is a one-line
        ``InvalidInput`` naming the field, never a ``TypeError`` deep inside an operation.
        """
        return _build(cls, data, ())


# ---- strict decoding ------------------------------------------------------------------------
# One checking function per annotation, made once: decoding a thousand-sandbox lab then costs
# a few plain calls per field, not a walk through ``typing`` for every value.
Check = Callable[[Any, tuple[Any, ...]], Any]
_CHECKS: dict[Any, Check] = {}


def _where(where: tuple[Any, ...]) -> str:
    return one_line(".".join(str(p) for p in where)) or "(top)"


def _build(cls: type, data: Any, where: tuple[Any, ...]) -> Any:
    return _check_for(cls)(data, where)


def _check_for(tp: Any) -> Check:
    check = _CHECKS.get(tp)
    if check is None:
        check = _CHECKS[tp] = _make_check(tp)
    return check


def _make_check(tp: Any) -> Check:
    if tp is Any:
        return lambda value, where: value
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return _union_check([a for a in typing.get_args(tp) if a is not type(None)],
                            type(None) in typing.get_args(tp))
    if origin is list:
        item = _check_for(typing.get_args(tp)[0])

        def check_list(value: Any, where: tuple[Any, ...]) -> list[Any]:
            if type(value) is not list:
                raise InvalidInput(f"{_where(where)}: expected a list, got "
                                   f"{type(value).__name__}")
            return [item(v, where + (i,)) for i, v in enumerate(value)]
        return check_list
    if origin is dict:
        item = _check_for(typing.get_args(tp)[1])

        def check_dict(value: Any, where: tuple[Any, ...]) -> dict[str, Any]:
            if type(value) is not dict:
                raise InvalidInput(f"{_where(where)}: expected a mapping, got "
                                   f"{type(value).__name__}")
            for k in value:
                if type(k) is not str:
                    raise InvalidInput(f"{_where(where)}: key {k!r} is not a string")
            return {k: item(v, where + (k,)) for k, v in value.items()}
        return check_dict
    if dataclasses.is_dataclass(tp):
        return _dataclass_check(tp)

    def check_scalar(value: Any, where: tuple[Any, ...]) -> Any:
        if type(value) is not tp:  # exact: a bool is no int, an int no float
            raise InvalidInput(f"{_where(where)}: expected {tp.__name__}, got "
                               f"{type(value).__name__} {value!r:.40}")
        return value
    return check_scalar


def _union_check(args: list[Any], optional: bool) -> Check:
    checks = [_check_for(a) for a in args]
    plain = {a for a in args if a in (str, int, bool, float)}

    def check_union(value: Any, where: tuple[Any, ...]) -> Any:
        if value is None and optional or type(value) in plain:
            return value
        problems = []
        for check in checks:
            try:
                return check(value, where)
            except InvalidInput as e:
                problems.append(str(e))
        raise InvalidInput(problems[0] if len(problems) == 1 else
                           f"{_where(where)}: unexpected {type(value).__name__} {value!r:.40}")
    return check_union


def _dataclass_check(cls: type) -> Check:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    required = [n for n, f in fields.items() if f.default is dataclasses.MISSING
                and f.default_factory is dataclasses.MISSING]
    checks: dict[str, Check] = {}

    def check_dataclass(data: Any, where: tuple[Any, ...]) -> Any:
        if cls is EndpointRef and type(data) is str and "/" in data:
            return EndpointRef(*data.split("/", 1))  # "net/id", as written before 0.2
        if type(data) is not dict:
            raise InvalidInput(f"{_where(where)}: expected a mapping for {cls.__name__}, got "
                               f"{type(data).__name__}")
        for name in required:
            if name not in data:
                raise InvalidInput(f"{_where(where)}: missing field {name!r} of {cls.__name__}")
        kwargs = {}
        for key, value in data.items():
            if key not in fields:
                raise InvalidInput(f"{_where(where + (key,))}: unknown field of {cls.__name__}")
            check = checks.get(key)
            if check is None:  # resolved on first use: the classes refer to each other
                check = checks[key] = _check_for(hints[key])
            kwargs[key] = check(value, where + (key,))
        return cls(**kwargs)
    return check_dataclass
