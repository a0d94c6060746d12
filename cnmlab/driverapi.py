"""The driver contract, after libnetwork's ``driverapi``, and the explicit driver registry.

A driver owns what a network *is* on the host (a bridge, a parent link, a VXLAN device) and
what an endpoint is (a veth, a macvlan child). The sandbox side, moving the interface into the
container, naming it ``eth<N>``, giving it its address and routes, is the controller's job, as it
is libnetwork's ``osl`` package's: a driver only says, in ``JoinInfo``, which interface to move and
which gateway to use. Optional capabilities are separate protocols, checked with isinstance.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from cnmlab.errors import InvalidInput

if TYPE_CHECKING:
    from cnmlab.controller import HostContext
    from cnmlab.model import Endpoint, Network, Sandbox

LOCAL = "local"
GLOBAL = "global"


@dataclass(frozen=True)
class Capability:
    data_scope: str
    connectivity_scope: str | None
    needs_ipam: bool = True
    own_namespace: bool = True  # False: the sandbox shares the host's namespace (host driver)
    kernel_features: tuple[str, ...] = ()


@dataclass
class JoinInfo:
    src_name: str | None = None  # interface (in the host namespace) to move into the sandbox
    dst_prefix: str = "eth"
    gateway: str | None = None
    static_routes: list[tuple[str, str]] = field(default_factory=list)  # (dst, next hop)


class Driver(Protocol):
    name: str
    capability: Capability

    def create_network(self, ctx: "HostContext", net: "Network") -> None: ...

    def delete_network(self, ctx: "HostContext", net: "Network") -> None: ...

    def create_endpoint(self, ctx: "HostContext", net: "Network", ep: "Endpoint") -> None: ...

    def delete_endpoint(self, ctx: "HostContext", net: "Network", ep: "Endpoint") -> None: ...

    def join(self, ctx: "HostContext", net: "Network", ep: "Endpoint",
             sb: "Sandbox") -> JoinInfo: ...

    def leave(self, ctx: "HostContext", net: "Network", ep: "Endpoint", sb: "Sandbox") -> None: ...


@runtime_checkable
class ExternalConnectivity(Protocol):
    """libnetwork's ExtConner: publish an endpoint's ports once it has joined."""

    def program_external_connectivity(self, ctx: "HostContext", net: "Network",
                                      ep: "Endpoint") -> None: ...

    def revoke_external_connectivity(self, ctx: "HostContext", net: "Network",
                                     ep: "Endpoint") -> None: ...


def _builtin() -> dict[str, type]:
    """The registration table (libnetwork's ``drivers_linux.go``): add new drivers here."""
    from cnmlab.drivers.bridge import BridgeDriver
    from cnmlab.drivers.host import HostDriver
    from cnmlab.drivers.null import NullDriver

    return {"bridge": BridgeDriver, "host": HostDriver, "null": NullDriver}


_registry: dict[str, type] = {}


def register(name: str, factory: type) -> None:
    """Add a driver (a plug-in, or a test's deliberately broken one)."""
    _registry[name] = factory


def known() -> list[str]:
    return sorted({**_builtin(), **_registry})


def get(name: str) -> Driver:
    table = {**_builtin(), **_registry}
    try:
        return table[name]()
    except KeyError:
        raise InvalidInput(f"unknown network driver {name!r}: known drivers are "
                           f"{', '.join(sorted(table))}") from None
