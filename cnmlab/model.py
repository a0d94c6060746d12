"""The CNM objects as saved state: Network, Endpoint, Sandbox, plus the Host that owns them.

They are plain dataclasses serialised to JSON in the lab's state file, so every cnmlab process
(the CLI, the TUI, a lab's solve step, pytest) sees the same model, and teardown works even
after the process that built a lab was killed.
"""
from __future__ import annotations

import dataclasses
import types
import typing
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
    mtu: int = 1500
    created: int = 0  # creation order on its host; firewall rules list newest first
    endpoints: dict[str, Endpoint] = field(default_factory=dict)
    # global scope: endpoints on other hosts this host has programmed (endpoint id -> Peer)
    peers: dict[str, dict[str, str]] = field(default_factory=dict)

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


@dataclass
class LabState:
    name: str
    upstream: str | None = None  # netns of the upstream ("internet")
    upstream_subnet: str = UPSTREAM_SUBNET
    hosts: dict[str, Host] = field(default_factory=dict)
    namespaces: list[str] = field(default_factory=list)  # write-ahead: recorded before creation
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
_HINTS: dict[type, dict[str, Any]] = {}


def _hints(cls: type) -> dict[str, Any]:
    if cls not in _HINTS:
        _HINTS[cls] = typing.get_type_hints(cls)
    return _HINTS[cls]


def _where(where: tuple[Any, ...]) -> str:
    return one_line(".".join(str(p) for p in where)) or "(top)"


def _build(cls: type, data: Any, where: tuple[Any, ...]) -> Any:
    if not isinstance(data, dict):
        raise InvalidInput(f"{_where(where)}: expected a mapping for {cls.__name__}, got "
                           f"{type(data).__name__}")
    hints = _hints(cls)
    known = {f.name: f for f in dataclasses.fields(cls)}
    for key in data:
        if key not in known:
            raise InvalidInput(f"{_where(where + (key,))}: unknown field of {cls.__name__}")
    kwargs = {}
    for name, f in known.items():
        if name not in data:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise InvalidInput(f"{_where(where)}: missing field {name!r} of {cls.__name__}")
            continue
        kwargs[name] = _convert(hints[name], data[name], where + (name,))
    return cls(**kwargs)


def _convert(tp: Any, value: Any, where: tuple[Any, ...]) -> Any:
    if tp is Any:
        return value
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        problems = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(arg, value, where)
            except InvalidInput as e:
                problems.append(str(e))
        raise InvalidInput(problems[0] if len(problems) == 1 else
                           f"{_where(where)}: unexpected {type(value).__name__} {value!r:.40}")
    if origin is list:
        if not isinstance(value, list):
            raise InvalidInput(f"{_where(where)}: expected a list, got {type(value).__name__}")
        (arg,) = typing.get_args(tp)
        return [_convert(arg, v, where + (i,)) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise InvalidInput(f"{_where(where)}: expected a mapping, got {type(value).__name__}")
        _, arg = typing.get_args(tp)
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise InvalidInput(f"{_where(where)}: key {k!r} is not a string")
            out[k] = _convert(arg, v, where + (k,))
        return out
    if tp is EndpointRef and isinstance(value, str) and "/" in value:
        return EndpointRef(*value.split("/", 1))  # "net/id", as written before 0.2
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, where)
    if tp is int and isinstance(value, bool) or not isinstance(value, tp):
        raise InvalidInput(f"{_where(where)}: expected {tp.__name__}, got "
                           f"{type(value).__name__} {value!r:.40}")
    return value
