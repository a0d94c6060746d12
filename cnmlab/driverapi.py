"""The driver contract, after libnetwork's ``driverapi``.

A driver owns what a network *is* on the host (a bridge, a parent link, a VXLAN device) and
what an endpoint is (a veth, a macvlan child). The sandbox side, moving the interface into the
container, naming it ``eth<N>``, giving it its address and routes, is the controller's job, as it
is libnetwork's ``osl`` package's: a driver only says, in ``JoinInfo``, which interface to move,
where it made it and which gateway to use.

What the controller does *around* a driver (IPAM, a default route, the embedded DNS, the host
firewall, one network only, kernel features) is decided by the driver's declared
``Capability``, never by its name: a new driver gets Docker's behaviour by declaring it.
Optional behaviour is a separate protocol checked with isinstance (``ExternalConnectivity``,
libnetwork's ExtConner; ``PeerAware``, its EventNotify for global-scope networks). The
registration table lives in ``cnmlab.drivers``.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from cnmlab.errors import CnmError
from cnmlab.kernel import netns
from cnmlab.kernel.netlink import Netlink

if TYPE_CHECKING:
    from cnmlab.cluster import Peer
    from cnmlab.cluster import Cluster
    from cnmlab.model import Endpoint, Host, Network, Sandbox

LOCAL = "local"
GLOBAL = "global"


@dataclass(frozen=True)
class Capability:
    """What a driver is, in the terms the controller acts on.

    ``data_scope``/``connectivity_scope`` are libnetwork's: a global data scope means the
    network's state (its address space, its peers) is cluster-wide, held by the control plane.
    """

    data_scope: str
    connectivity_scope: str | None
    needs_ipam: bool = True
    own_namespace: bool = True  # False: the sandbox shares the host's namespace (host driver)
    single_instance: bool = False  # only the predefined network may exist (host, null)
    gateway: bool = False  # its endpoints offer the network's gateway unless Join names one
    embedded_dns: bool = False  # its user-defined networks get the resolver on 127.0.0.11
    firewall: bool = False  # the host firewall renders rules for its networks
    # its endpoints give no default route: a non-internal network's sandbox gets a second
    # endpoint on docker_gwbridge for egress (libnetwork's needDefaultGW/setupDefaultGW)
    egress_bridge: bool = False
    kernel_features: tuple[str, ...] = ()  # checked when a network is created

    @property
    def global_scope(self) -> bool:
        return self.data_scope == GLOBAL


@dataclass
class JoinInfo:
    """A driver's answer to Join (libnetwork's JoinInfo): the interface and its routes.

    ``src_ns`` says where the driver made the interface: ``None`` is the host's namespace (the
    controller moves it into the sandbox); the sandbox's own namespace means it is in place.
    ``gateway`` overrides the network's gateway (``SetGateway``); a driver whose capability
    has ``gateway`` and that leaves it unset gets the network's, unless it sets
    ``disable_gateway``. A static route with no next hop is a device route (``dev eth<N>``).
    """

    src_name: str | None = None
    dst_prefix: str = "eth"
    src_ns: str | None = None
    gateway: str | None = None
    static_routes: list[tuple[str, str | None]] = field(default_factory=list)  # (dst, next hop)
    # libnetwork's DisableGatewayService: this endpoint gives no gateway at all, not even the
    # network's (ipvlan l3: its static route ``default dev eth0`` is the way out)
    disable_gateway: bool = False


@dataclass
class HostContext:
    """What a driver may use: the host's model, its netlink socket and an undo log.

    Every controller operation, deletes included, runs in one context; what a driver registers
    with ``undo`` runs newest first if a later step of the same operation fails.
    """

    host: "Host"
    nl: "Netlink"
    # The sandbox an endpoint being created will join at once (``docker run``): a driver may
    # then create the interface straight inside it, sparing the kernel a costly move.
    joining: "Sandbox | None" = None
    # Make a namespace the lab records first (write-ahead) and removes with itself; undone
    # if the operation fails. Set by the controller.
    make_namespace: "Callable[[str], None] | None" = None
    _undo: list[Callable[[], object]] = field(default_factory=list)
    _netlinks: "dict[str, Netlink]" = field(default_factory=dict)

    def undo(self, action: Callable[[], object]) -> None:
        self._undo.append(action)

    def rollback(self) -> None:
        """Run the undo log newest first; one failed undo does not stop the others (the caller
        re-raises the error that made it roll back, which is the one worth reporting)."""
        for action in reversed(self._undo):
            try:
                action()
            except CnmError:
                pass

    def new_namespace(self, name: str) -> None:
        """A namespace of the driver's own (overlay's per-network one), recorded and undone."""
        if self.make_namespace is None:
            raise RuntimeError("this context cannot make namespaces")
        self.make_namespace(name)
        self.undo(lambda: (self.forget_netlink(name), netns.delete(name)))

    def netlink(self, ns: str) -> "Netlink":
        """A netlink session in another namespace of this host (kept by whoever made the
        context: the controller keeps them across operations, as it keeps the host's)."""
        if ns not in self._netlinks:
            self._netlinks[ns] = Netlink(ns)
        return self._netlinks[ns]

    def forget_netlink(self, ns: str) -> None:
        """Close a kept session (before its namespace goes: an open socket would pin it)."""
        nl = self._netlinks.pop(ns, None)
        if nl is not None:
            nl.close()


class Driver(Protocol):
    name: str
    capability: Capability

    def create_network(self, ctx: HostContext, net: "Network") -> None: ...

    def delete_network(self, ctx: HostContext, net: "Network") -> None: ...

    def create_endpoint(self, ctx: HostContext, net: "Network", ep: "Endpoint") -> None: ...

    def delete_endpoint(self, ctx: HostContext, net: "Network", ep: "Endpoint") -> None: ...

    def join(self, ctx: HostContext, net: "Network", ep: "Endpoint",
             sb: "Sandbox") -> JoinInfo: ...

    def leave(self, ctx: HostContext, net: "Network", ep: "Endpoint", sb: "Sandbox") -> None: ...


@runtime_checkable
class ExternalConnectivity(Protocol):
    """libnetwork's ExtConner: publish an endpoint's ports once it has joined.

    Only drivers with this capability keep published ports; Docker ignores ``-p`` elsewhere.
    """

    def program_external_connectivity(self, ctx: HostContext, net: "Network",
                                      ep: "Endpoint") -> None: ...

    def revoke_external_connectivity(self, ctx: HostContext, net: "Network",
                                     ep: "Endpoint") -> None: ...


@runtime_checkable
class PeerAware(Protocol):
    """libnetwork's EventNotify/peerAdd for global-scope drivers: endpoints on other hosts.

    The control plane calls these on every host for every endpoint another host published
    in a network this host has; the driver programs its own kernel (e.g. a neighbour and an
    FDB entry on vxlan0), never another host's.
    """

    def peer_add(self, ctx: HostContext, net: "Network", peer: "Peer") -> None: ...

    def peer_delete(self, ctx: HostContext, net: "Network", peer: "Peer") -> None: ...

    def peers_programmed(self, ctx: HostContext,
                         net: "Network") -> dict[str, tuple[str, str | None]]:
        """What this host's kernel holds now: peer IP -> (MAC, VTEP or None if the driver
        programs none). Read back, not remembered, so an agent that restarts (or a kernel
        someone changed by hand) is reconciled against the truth."""
        ...


@runtime_checkable
class GlobalAllocator(Protocol):
    """swarm's NetworkAllocate: cluster-wide resources of a global network (a VNI), taken
    once when the network is declared and stored with it as options every host reads."""

    def network_allocate(self, cluster: "Cluster", net: "Network") -> dict[str, str]: ...

    def network_free(self, cluster: "Cluster", net: "Network") -> None: ...
