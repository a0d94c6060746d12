"""The bridge driver: a Linux bridge per network, a veth per endpoint, NAT by the host firewall.

Names and defaults follow Docker: the default network's device is ``docker0``; user-defined
networks get ``br-<first 12 hex of the network ID>`` unless ``com.docker.network.bridge.name``
says otherwise; endpoints are veth pairs whose host end is ``veth`` + 7 hex characters; the MAC
is ``02:42`` followed by the IPv4 address bytes (Docker before v28). The firewall rules are not
written here: the controller re-renders the host's whole ruleset after every change.
"""
from __future__ import annotations

import ipaddress
import os
import secrets
from typing import TYPE_CHECKING

from cnmlab import proxy
from cnmlab.constants import OPT_BRIDGE_NAME as OPT_NAME
from cnmlab.constants import OPT_HOST_BINDING as OPT_BINDING
from cnmlab.constants import OPT_MTU
from cnmlab.driverapi import LOCAL, Capability, HostContext, JoinInfo
from cnmlab.errors import InvalidInput, ObjectNotFound
from cnmlab.kernel import netns

if TYPE_CHECKING:
    from cnmlab.model import Endpoint, Network, PortMapping, Sandbox


def veth_name() -> str:
    return "veth" + secrets.token_hex(4)[:7]


def random_docker_mac() -> str:
    """A bridge's MAC as libnetwork sets it (``GenerateRandomMAC``): 02:42 and 4 random bytes;
    without it the kernel would take the lowest port's MAC and change it as ports come and go."""
    return "02:42:" + ":".join(f"{b:02x}" for b in secrets.token_bytes(4))


def docker_mac(ip: str) -> str:
    """``02:42:ac:11:00:02`` for 172.17.0.2: Docker's MAC before v28."""
    raw = ipaddress.IPv4Address(ip.split("/")[0]).packed
    return "02:42:" + ":".join(f"{b:02x}" for b in raw)


class BridgeDriver:
    name = "bridge"
    capability = Capability(data_scope=LOCAL, connectivity_scope=LOCAL, gateway=True,
                            embedded_dns=True, firewall=True,
                            kernel_features=("veth", "bridge", "iptables"))

    def create_network(self, ctx: HostContext, net: Network) -> None:
        device = net.options.get(OPT_NAME) or f"br-{net.id[:12]}"
        if len(device) > 15:
            raise InvalidInput(f"{OPT_NAME}: interface name {device!r} is longer than 15 "
                               f"characters")
        if OPT_MTU in net.options:
            try:
                net.mtu = int(net.options[OPT_MTU])
            except ValueError:
                raise InvalidInput(f"{OPT_MTU}: {net.options[OPT_MTU]!r} is not a number") from None
            if not 68 <= net.mtu <= 65535:
                raise InvalidInput(f"{OPT_MTU}: {net.mtu} is outside 68..65535")
        if ctx.nl.has_link(device):
            raise InvalidInput(f"bridge device {device} already exists on host {ctx.host.name}")
        net.device = device
        ctx.nl.add_bridge(device, mtu=net.mtu, mac=random_docker_mac())
        ctx.undo(lambda: ctx.nl.delete_link(device))
        prefix = ipaddress.IPv4Network(net.subnet or "").prefixlen
        ctx.nl.add_address(device, f"{net.gateway}/{prefix}")
        ctx.nl.set_link(device, up=True)

    def delete_network(self, ctx: HostContext, net: Network) -> None:
        if net.device and ctx.nl.has_link(net.device):
            ctx.nl.delete_link(net.device)

    def create_endpoint(self, ctx: HostContext, net: Network, ep: Endpoint) -> None:
        host_end, container_end = veth_name(), veth_name()
        if ep.ip and not ep.mac:
            ep.mac = docker_mac(ep.ip)
        sandbox_ns = ctx.joining.netns if ctx.joining else None
        fd = netns.open_fd(sandbox_ns) if sandbox_ns else None
        try:  # joins at once: the container end goes straight into the sandbox
            ctx.nl.add_veth(host_end, container_end, peer_ns_fd=fd, mtu=net.mtu,
                            master=net.device, up=True, peer_mac=ep.mac)
        finally:
            if fd is not None:
                os.close(fd)
        if sandbox_ns:
            ep.driver_data["src_ns"] = sandbox_ns
        ctx.undo(lambda: ctx.nl.delete_link(host_end) if ctx.nl.has_link(host_end) else None)
        ep.host_ifname = host_end
        ep.driver_data["src"] = container_end

    def delete_endpoint(self, ctx: HostContext, net: Network, ep: Endpoint) -> None:
        if ep.host_ifname and ctx.nl.has_link(ep.host_ifname):
            ctx.nl.delete_link(ep.host_ifname)

    def join(self, ctx: HostContext, net: Network, ep: Endpoint, sb: Sandbox) -> JoinInfo:
        src = ep.driver_data.get("src")
        if not src or (not ep.driver_data.get("src_ns") and not ctx.nl.has_link(src)):
            raise ObjectNotFound(f"endpoint {ep.name}: its veth {src} is gone from host "
                                 f"{ctx.host.name}")
        return JoinInfo(src_name=src, dst_prefix="eth", src_ns=ep.driver_data.get("src_ns"),
                        gateway=None if net.internal else net.gateway)

    def leave(self, ctx: HostContext, net: Network, ep: Endpoint, sb: Sandbox) -> None:
        pass

    # ExtConner: published ports get a userland proxy, as dockerd's docker-proxy (here one
    # daemon per host serves them all).
    def program_external_connectivity(self, ctx: HostContext, net: Network,
                                      ep: Endpoint) -> None:
        for p in ep.ports:
            key = f"{p.proto}/{p.host_port}"
            binding = _binding(net, p)
            if key in ctx.host.proxies:
                raise InvalidInput(f"port {p.host_port}/{p.proto} is already published on host "
                                   f"{ctx.host.name}: Bind for {binding}:{p.host_port} failed: "
                                   f"port is already allocated")
            pid = proxy.publish(ctx.host.netns, proxy.Mapping(
                p.proto, binding, p.host_port, (ep.ip or "").split("/")[0], p.container_port))
            ctx.host.proxies[key] = pid
            ctx.undo(lambda p=p, key=key, binding=binding: self._unpublish(ctx, key, p, binding))

    def revoke_external_connectivity(self, ctx: HostContext, net: Network,
                                     ep: Endpoint) -> None:
        for p in ep.ports:
            self._unpublish(ctx, f"{p.proto}/{p.host_port}", p, _binding(net, p))

    @staticmethod
    def _unpublish(ctx: HostContext, key: str, p: PortMapping, binding: str) -> None:
        if ctx.host.proxies.pop(key, None) is not None:
            proxy.unpublish(ctx.host.netns, p.proto, binding, p.host_port)


def _binding(net: Network, p: PortMapping) -> str:
    """The address a port is bound to: its own (``-p 127.0.0.1:8080:80``), else the network's
    ``host_binding_ipv4`` (Docker's default binding IP, 0.0.0.0)."""
    if p.host_ip and p.host_ip != "0.0.0.0":
        return p.host_ip
    return net.options.get(OPT_BINDING, "0.0.0.0")
