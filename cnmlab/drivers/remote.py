"""The remote driver: a network driver that is another program, reached over the plugin protocol.

As libnetwork's ``drivers/remote``: activation asks whether the plugin implements
``NetworkDriver``; its capability (scope) comes from ``GetCapabilities``; every lifecycle call
forwards to the plugin, and what the plugin answers to ``Join`` (the interface it made in the
host's namespace, the prefix for its name in the sandbox, the gateway, static routes) is what
the controller plumbs, nothing more: a plugin that gives no gateway gives no default route.
Docker's embedded DNS serves remote networks; Docker's firewall does not (the plugin programs
its own), so the capability says so.
"""
from __future__ import annotations

import ipaddress
from typing import TYPE_CHECKING, Any

from cnmlab.driverapi import LOCAL, Capability, HostContext, JoinInfo
from cnmlab.kernel.netns import path_of
from cnmlab.plugin import protocol as P
from cnmlab.plugin.client import PluginClient, PluginError

if TYPE_CHECKING:
    from cnmlab.model import Endpoint, Network, Sandbox

ROUTE_NEXTHOP, ROUTE_CONNECTED = 0, 1  # libnetwork's types.NEXTHOP / types.CONNECTED


class RemoteDriver:
    def __init__(self, name: str, socket_path: str, timeout: float | None = None) -> None:
        self.name = name
        self.client = PluginClient(name, socket_path, timeout)
        implements = self.client.call(P.ACTIVATE, required=("Implements",))["Implements"]
        if not isinstance(implements, list) or P.NETWORK_DRIVER not in implements:
            raise PluginError(f"plugin {name} does not implement {P.NETWORK_DRIVER} "
                              f"(it implements {implements!r})")
        caps = self.client.call(P.GET_CAPABILITIES)
        scope = str(caps.get("Scope") or LOCAL)
        if scope not in ("local", "global"):
            raise PluginError(f"plugin {name}: GetCapabilities: unknown Scope {scope!r}")
        self.capability = Capability(data_scope=scope,
                                     connectivity_scope=str(caps.get("ConnectivityScope")
                                                            or scope),
                                     embedded_dns=True)

    def create_network(self, ctx: HostContext, net: Network) -> None:
        prefix = ipaddress.IPv4Network(net.subnet or "0.0.0.0/0").prefixlen
        ipv4 = [{"AddressSpace": "LocalDefault" if net.scope == "local" else "GlobalDefault",
                 "Pool": net.subnet, "Gateway": f"{net.gateway}/{prefix}",
                 "AuxAddresses": {}}] if net.subnet else []
        self.client.call(P.CREATE_NETWORK, {
            "NetworkID": net.id, "IPv4Data": ipv4, "IPv6Data": [],
            "Options": {P.GENERIC_OPTIONS: dict(net.options),
                        "com.docker.network.enable_ipv6": False,
                        **({P.INTERNAL: True} if net.internal else {})}})
        ctx.undo(lambda: self.client.call(P.DELETE_NETWORK, {"NetworkID": net.id}))

    def delete_network(self, ctx: HostContext, net: Network) -> None:
        self.client.call(P.DELETE_NETWORK, {"NetworkID": net.id})

    def create_endpoint(self, ctx: HostContext, net: Network, ep: Endpoint) -> None:
        answer = self.client.call(P.CREATE_ENDPOINT, {
            "NetworkID": net.id, "EndpointID": ep.id, "Options": _port_options(ep),
            "Interface": {"Address": ep.ip or "", "AddressIPv6": "",
                          "MacAddress": ep.mac or ""}})
        ctx.undo(lambda: self.client.call(P.DELETE_ENDPOINT,
                                          {"NetworkID": net.id, "EndpointID": ep.id}))
        iface = answer.get("Interface") or {}
        if not isinstance(iface, dict):
            raise PluginError(f"plugin {self.name}: {P.CREATE_ENDPOINT}: Interface is not an "
                              f"object")
        if iface.get("Address") and ep.ip and iface["Address"] != ep.ip:
            raise PluginError(f"plugin {self.name}: {P.CREATE_ENDPOINT}: it may not change the "
                              f"address cnmlab's IPAM gave ({ep.ip} -> {iface['Address']})")
        if iface.get("MacAddress") and not ep.mac:
            ep.mac = str(iface["MacAddress"])

    def delete_endpoint(self, ctx: HostContext, net: Network, ep: Endpoint) -> None:
        self.client.call(P.DELETE_ENDPOINT, {"NetworkID": net.id, "EndpointID": ep.id})

    def join(self, ctx: HostContext, net: Network, ep: Endpoint, sb: Sandbox) -> JoinInfo:
        answer = self.client.call(P.JOIN, {
            "NetworkID": net.id, "EndpointID": ep.id, "Options": _port_options(ep),
            "SandboxKey": path_of(sb.netns) if sb.netns else ""}, required=("InterfaceName",))
        ctx.undo(lambda: self.client.call(P.LEAVE, {"NetworkID": net.id, "EndpointID": ep.id}))
        names = answer["InterfaceName"]
        if not isinstance(names, dict) or not names.get("SrcName") or not names.get("DstPrefix"):
            raise PluginError(f"plugin {self.name}: {P.JOIN}: InterfaceName needs SrcName and "
                              f"DstPrefix")
        src = str(names["SrcName"])
        if not ctx.nl.has_link(src):
            raise PluginError(f"plugin {self.name}: {P.JOIN}: interface {src} does not exist "
                              f"in host {ctx.host.name}'s namespace")
        return JoinInfo(src_name=src, dst_prefix=str(names["DstPrefix"]),
                        gateway=str(answer["Gateway"]) if answer.get("Gateway") else None,
                        static_routes=[_route(self.name, r)
                                       for r in answer.get("StaticRoutes") or []])

    def leave(self, ctx: HostContext, net: Network, ep: Endpoint, sb: Sandbox) -> None:
        self.client.call(P.LEAVE, {"NetworkID": net.id, "EndpointID": ep.id})

    # ExtConner: the plugin publishes ports itself, Docker only tells it which
    def program_external_connectivity(self, ctx: HostContext, net: Network,
                                      ep: Endpoint) -> None:
        self.client.call(P.PROGRAM_EXTERNAL, {
            "NetworkID": net.id, "EndpointID": ep.id, "Options": _port_options(ep)})
        ctx.undo(lambda: self.client.call(P.REVOKE_EXTERNAL,
                                          {"NetworkID": net.id, "EndpointID": ep.id}))

    def revoke_external_connectivity(self, ctx: HostContext, net: Network,
                                     ep: Endpoint) -> None:
        self.client.call(P.REVOKE_EXTERNAL, {"NetworkID": net.id, "EndpointID": ep.id})


def _port_options(ep: Endpoint) -> dict[str, Any]:
    """Published ports as Docker 20.10 sends them (types.PortBinding, protocol numbers)."""
    return {P.EXPOSED_PORTS: [{"Proto": P.PROTO_NUMBERS[p.proto], "Port": p.container_port}
                              for p in ep.ports],
            P.PORTMAP: [{"Proto": P.PROTO_NUMBERS[p.proto], "IP": "", "Port": p.container_port,
                         "HostIP": "" if p.host_ip == "0.0.0.0" else p.host_ip,
                         "HostPort": p.host_port, "HostPortEnd": p.host_port}
                        for p in ep.ports]}


def _route(plugin: str, r: Any) -> tuple[str, str | None]:
    if not isinstance(r, dict) or not r.get("Destination"):
        raise PluginError(f"plugin {plugin}: {P.JOIN}: a static route needs a Destination")
    if r.get("RouteType", ROUTE_NEXTHOP) == ROUTE_CONNECTED:
        return str(r["Destination"]), None
    if not r.get("NextHop"):
        raise PluginError(f"plugin {plugin}: {P.JOIN}: route {r['Destination']} has no NextHop")
    return str(r["Destination"]), str(r["NextHop"])
