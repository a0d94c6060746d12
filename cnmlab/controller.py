"""The controller: libnetwork's lifecycle on one host, over the saved model.

create network -> create endpoint (reserves the address) -> join (moves the interface into the
sandbox as ``eth<N>``, addresses it, picks the default gateway) -> leave -> delete endpoint ->
delete network (refused while endpoints remain). Every public operation is a transaction: what
it made is undone, newest first, if any later step fails, so a failed command leaves nothing
half-built. The host firewall is re-rendered after each change that affects it.
"""
from __future__ import annotations

import ipaddress
import os
import secrets
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from cnmlab import driverapi, firewall, netns, sysctl
from cnmlab.driverapi import ExternalConnectivity
from cnmlab.errors import (ActiveEndpoints, CnmError, InvalidInput, ObjectExists,
                           ObjectNotFound)
from cnmlab.ipam import LOCAL_DEFAULT, DefaultIpam
from cnmlab.model import PREDEFINED, Endpoint, Host, Network, PortMapping, Sandbox
from cnmlab.netlink import Netlink

DEFAULT_BRIDGE_OPTIONS = {"com.docker.network.bridge.name": "docker0",
                          "com.docker.network.bridge.default_bridge": "true",
                          "com.docker.network.bridge.enable_icc": "true",
                          "com.docker.network.bridge.enable_ip_masquerade": "true",
                          "com.docker.network.bridge.host_binding_ipv4": "0.0.0.0",
                          "com.docker.network.driver.mtu": "1500"}
UPSTREAM_DNS = "198.51.100.53"
EMBEDDED_DNS = "127.0.0.11"


@dataclass
class HostContext:
    """What a driver may use: the host's model, its netlink socket and an undo log."""

    host: Host
    nl: Netlink
    # The sandbox an endpoint being created will join at once (``docker run``): a driver may
    # then create the interface straight inside it, sparing the kernel a costly move.
    joining: Sandbox | None = None
    _undo: list[Callable[[], object]] = field(default_factory=list)

    def undo(self, action: Callable[[], object]) -> None:
        self._undo.append(action)


def new_id() -> str:
    return secrets.token_hex(32)


def setup_namespace(name: str, lo_up: bool = True) -> None:
    """A fresh namespace as cnmlab wants it: IPv6 off (no autoconf cost), ``lo`` up.

    ``lo_up=False`` leaves ``lo`` to the caller's own netlink session (one socket less).
    """
    netns.create(name)
    sysctl.disable_ipv6(name)
    if lo_up:
        with Netlink(name) as nl:
            nl.set_link("lo", up=True)


def write_etc(ns: str, resolv: str, hosts: str) -> None:
    """Files ``ip netns exec`` mounts over /etc, as Docker gives each container its own."""
    d = os.path.join("/etc/netns", ns)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "resolv.conf"), "w") as f:
        f.write(resolv)
    with open(os.path.join(d, "hosts"), "w") as f:
        f.write(hosts)


def remove_etc(ns: str) -> None:
    shutil.rmtree(os.path.join("/etc/netns", ns), ignore_errors=True)


class Controller:
    """One Docker host: its networks, endpoints and sandboxes, and the rules that bind them.

    ``record_ns`` is called with a namespace name *before* it is created (write-ahead), and
    ``save`` after every successful change, so state on disk always covers what exists.
    """

    def __init__(self, host: Host, record_ns: Callable[[str], None], save: Callable[[], None],
                 ns_name: Callable[[str], str]) -> None:
        self.host = host
        self._record_ns = record_ns
        self._save = save
        self._ns_name = ns_name
        self._nl: Netlink | None = None
        self.fw = firewall.get("iptables")
        self.ipam = DefaultIpam()
        self._rebuild_ipam()

    @property
    def nl(self) -> Netlink:
        """The host's netlink socket, opened on first use (``down`` of a broken lab needs none)."""
        if self._nl is None:
            self._nl = Netlink(self.host.netns)
        return self._nl

    def close(self) -> None:
        if self._nl is not None:
            self._nl.close()
            self._nl = None

    def _rebuild_ipam(self) -> None:
        for net in sorted(self.host.networks.values(), key=lambda n: n.created):
            if not net.pool_id:
                continue
            pid, _ = self.ipam.request_pool(LOCAL_DEFAULT, net.subnet, net.ip_range)
            if net.gateway:
                self.ipam.request_address(pid, net.gateway)
            for ep in net.endpoints.values():
                if ep.ip:
                    self.ipam.request_address(pid, ep.ip.split("/")[0])

    @contextmanager
    def _transaction(self, joining: Sandbox | None = None) -> Iterator[HostContext]:
        ctx = HostContext(self.host, self.nl, joining)
        try:
            yield ctx
        except BaseException:
            for action in reversed(ctx._undo):
                try:
                    action()
                except CnmError:
                    pass
            raise
        self._save()

    # ---- networks ----------------------------------------------------------------------
    def network(self, name: str) -> Network:
        try:
            return self.host.networks[name]
        except KeyError:
            raise ObjectNotFound(f"network {name} not found on host {self.host.name}") from None

    def create_network(self, name: str, driver: str = "bridge", *, subnet: str | None = None,
                       gateway: str | None = None, ip_range: str | None = None,
                       internal: bool = False, options: dict[str, str] | None = None,
                       predefined: bool = False) -> Network:
        if not name or "/" in name or len(name) > 64:
            raise InvalidInput(f"invalid network name {name!r}")
        if name in self.host.networks:
            raise ObjectExists(f"network with name {name} already exists")
        if name in PREDEFINED and not predefined:
            raise InvalidInput(f"operation is not permitted on predefined {name} network")
        drv = driverapi.get(driver)
        if drv.name in ("host", "null") and not predefined:
            raise InvalidInput(f"only one instance of \"{drv.name}\" network is allowed")
        net = Network(id=new_id(), name=name, driver=drv.name, internal=internal,
                      options={k: str(v) for k, v in (options or {}).items()},
                      created=self.host.next_network)
        with self._transaction() as ctx:
            if drv.capability.needs_ipam:
                pid, pool = self.ipam.request_pool(LOCAL_DEFAULT, subnet, ip_range)
                ctx.undo(lambda: self.ipam.release_pool(pid))
                net.pool_id, net.subnet, net.ip_range = pid, pool, ip_range
                net.gateway = self.ipam.request_address(pid, gateway)
            drv.create_network(ctx, net)
            self.host.networks[name] = net
            ctx.undo(lambda: self.host.networks.pop(name, None))
            self.host.next_network += 1
            self._program_firewall()
        return net

    def delete_network(self, name: str) -> None:
        net = self.network(name)
        if name in PREDEFINED:
            raise InvalidInput(f"{name} is a pre-defined network and cannot be removed")
        if net.endpoints:
            raise ActiveEndpoints(f"error while removing network: network {name} id {net.id[:12]} "
                                  f"has active endpoints")
        with self._transaction():
            driverapi.get(net.driver).delete_network(HostContext(self.host, self.nl), net)
            if net.pool_id:
                self.ipam.release_pool(net.pool_id)
            del self.host.networks[name]
            self._program_firewall()

    def _program_firewall(self) -> None:
        if any(n.driver == "bridge" for n in self.host.networks.values()):
            self.fw.program(self.host)

    # ---- sandboxes ---------------------------------------------------------------------
    def sandbox(self, name: str) -> Sandbox:
        try:
            return self.host.sandboxes[name]
        except KeyError:
            raise ObjectNotFound(f"sandbox {name} not found on host {self.host.name}") from None

    def create_sandbox(self, name: str, shares_host: bool = False) -> Sandbox:
        if name in self.host.sandboxes:
            raise ObjectExists(f"sandbox {name} already exists on host {self.host.name}")
        sb = Sandbox(id=new_id(), name=name, netns=None if shares_host else self._ns_name(name))
        with self._transaction() as ctx:
            if sb.netns:
                self._record_ns(sb.netns)
                setup_namespace(sb.netns, lo_up=False)  # lo comes up when it joins
                ctx.undo(lambda: (netns.delete(sb.netns or ""), remove_etc(sb.netns or "")))
            self.host.sandboxes[name] = sb
        return sb

    def delete_sandbox(self, name: str) -> None:
        sb = self.sandbox(name)
        with self._transaction():
            for ref in list(sb.endpoints):
                net_name, ep_id = ref.split("/", 1)
                net = self.network(net_name)
                self.leave(net.endpoints[ep_id], sb, save=False)
                self.delete_endpoint(net, ep_id, save=False)
            if sb.netns:
                netns.kill_processes(sb.netns)
                netns.delete(sb.netns)
                remove_etc(sb.netns)
            del self.host.sandboxes[name]

    def _write_sandbox_etc(self, sb: Sandbox) -> None:
        if not sb.netns:
            return
        resolv = (f"nameserver {EMBEDDED_DNS}\noptions ndots:0\n" if sb.dns
                  else f"nameserver {UPSTREAM_DNS}\n")
        hosts = "127.0.0.1\tlocalhost\n"
        for ref in sb.endpoints:
            net_name, ep_id = ref.split("/", 1)
            ep = self.host.networks[net_name].endpoints.get(ep_id)
            if ep and ep.ip:
                hosts += f"{ep.ip.split('/')[0]}\t{sb.id[:12]} {sb.name}\n"
        write_etc(sb.netns, resolv, hosts)

    # ---- endpoints ---------------------------------------------------------------------
    def create_endpoint(self, net: Network, name: str, ip: str | None = None,
                        aliases: list[str] | None = None,
                        ports: list[PortMapping] | None = None,
                        joining: Sandbox | None = None) -> Endpoint:
        drv = driverapi.get(net.driver)
        ep = Endpoint(id=new_id(), name=name, network=net.name, aliases=list(aliases or []),
                      ports=list(ports or []))
        if ports and net.driver != "bridge":
            ports = []  # Docker ignores published ports on host and none networks
            ep.ports = []
        with self._transaction(joining) as ctx:
            if drv.capability.needs_ipam and net.pool_id:
                addr = self.ipam.request_address(net.pool_id, ip)
                ctx.undo(lambda: self.ipam.release_address(net.pool_id or "", addr))
                ep.ip = f"{addr}/{ipaddress.IPv4Network(net.subnet or '').prefixlen}"
            elif ip:
                raise InvalidInput(f"network {net.name} ({net.driver}) does not assign addresses")
            drv.create_endpoint(ctx, net, ep)
            net.endpoints[ep.id] = ep
            ctx.undo(lambda: net.endpoints.pop(ep.id, None))
        return ep

    def delete_endpoint(self, net: Network, ep_id: str, save: bool = True) -> None:
        ep = net.endpoints[ep_id]
        if ep.sandbox:
            raise ActiveEndpoints(f"endpoint {ep.name} is still joined to {ep.sandbox}")
        ctx = HostContext(self.host, self.nl)
        driverapi.get(net.driver).delete_endpoint(ctx, net, ep)
        if ep.ip and net.pool_id:
            self.ipam.release_address(net.pool_id, ep.ip.split("/")[0])
        del net.endpoints[ep_id]
        if save:
            self._save()

    def join(self, ep: Endpoint, sb: Sandbox) -> None:
        net = self.network(ep.network)
        drv = driverapi.get(net.driver)
        with self._transaction() as ctx:
            info = drv.join(ctx, net, ep, sb)
            ep.sandbox = sb.name
            sb.endpoints.append(f"{net.name}/{ep.id}")
            ctx.undo(lambda: (sb.endpoints.remove(f"{net.name}/{ep.id}"),
                              setattr(ep, "sandbox", None)))
            if info.src_name and sb.netns:
                self._plumb(sb, ep, info)
            elif sb.netns:  # no interface (null driver): the sandbox still has its lo
                with Netlink(sb.netns) as snl:
                    snl.set_link("lo", up=True)
            if net.driver == "bridge" and net.name != "bridge" and not sb.dns:
                sb.dns = True  # user-defined network: the embedded resolver serves this sandbox
            self._write_sandbox_etc(sb)
            if ep.ports and isinstance(drv, ExternalConnectivity):
                drv.program_external_connectivity(ctx, net, ep)
                self._program_firewall()

    def _plumb(self, sb: Sandbox, ep: Endpoint, info: driverapi.JoinInfo) -> None:
        """The sandbox side of a join (libnetwork's osl): move, rename, address, route."""
        assert sb.netns and info.src_name
        if ep.driver_data.get("src_ns") != sb.netns:  # not created in place: move it in
            fd = netns.open_fd(sb.netns)
            try:
                self.nl.set_link(info.src_name, ns_fd=fd)
            finally:
                os.close(fd)
            ep.driver_data["src_ns"] = sb.netns
        used = {self.host.networks[r.split("/")[0]].endpoints[r.split("/", 1)[1]].ifname
                for r in sb.endpoints}
        n = 0
        while f"{info.dst_prefix}{n}" in used:
            n += 1
        ep.ifname = f"{info.dst_prefix}{n}"
        with Netlink(sb.netns) as snl:
            if len(sb.endpoints) == 1:
                snl.set_link("lo", up=True)
            snl.set_link(info.src_name, rename=ep.ifname, up=True)
            if ep.ip:
                snl.add_address(ep.ifname, ep.ip)
            for dst, via in info.static_routes:
                snl.add_route(dst, gateway=via)
            if len(sb.endpoints) == 1:  # first interface: no route to replace
                if info.gateway and self.gateway_endpoint(sb) is ep:
                    snl.add_route("default", gateway=info.gateway, dev=ep.ifname)
            else:
                self._route_default(sb, snl)

    def gateway_endpoint(self, sb: Sandbox) -> Endpoint | None:
        """Docker's choice of the endpoint that gives the default route (``Endpoint.Less``)."""
        candidates = []
        for ref in sb.endpoints:
            net_name, ep_id = ref.split("/", 1)
            net = self.host.networks[net_name]
            ep = net.endpoints[ep_id]
            if net.gateway and not net.internal and net.driver == "bridge" and ep.ifname:
                candidates.append((net.name, ep))
        candidates.sort(key=lambda c: c[0])
        return candidates[0][1] if candidates else None

    def _route_default(self, sb: Sandbox, snl: Netlink) -> None:
        gw_ep = self.gateway_endpoint(sb)
        current = [r for r in snl.routes() if r.dst == "default"]
        want = (self.network(gw_ep.network).gateway, gw_ep.ifname) if gw_ep else None
        have = (current[0].gateway, current[0].dev) if current else None
        if want == have:
            return
        if current:
            snl.delete_default_route()
        if want:
            snl.add_route("default", gateway=want[0], dev=want[1])

    def leave(self, ep: Endpoint, sb: Sandbox, save: bool = True) -> None:
        net = self.network(ep.network)
        drv = driverapi.get(net.driver)
        ctx = HostContext(self.host, self.nl)
        if ep.ports and isinstance(drv, ExternalConnectivity):
            drv.revoke_external_connectivity(ctx, net, ep)
        drv.leave(ctx, net, ep, sb)
        sb.endpoints.remove(f"{net.name}/{ep.id}")
        if sb.netns and ep.ifname:
            with Netlink(sb.netns) as snl:
                if snl.has_link(ep.ifname):
                    snl.delete_link(ep.ifname)  # takes the host end of the veth with it
                self._route_default(sb, snl)
        ep.sandbox, ep.ifname = None, None
        self._write_sandbox_etc(sb)
        if ep.ports:
            self._program_firewall()
        if save:
            self._save()

    # ---- docker-like conveniences ------------------------------------------------------
    def connect(self, network: str, sandbox: str, ip: str | None = None,
                aliases: list[str] | None = None, ports: list[PortMapping] | None = None) -> Endpoint:
        """``docker network connect``: create an endpoint and join it, as one transaction."""
        net = self.network(network)
        sb = self.sandbox(sandbox)
        if any(r.split("/")[0] == network for r in sb.endpoints):
            raise ObjectExists(f"endpoint with name {sandbox} already exists in network {network}")
        drv = driverapi.get(net.driver)
        if not drv.capability.own_namespace and sb.netns:
            raise InvalidInput(f"{sandbox}: a container with its own namespace cannot join the "
                               f"host network")
        ep = self.create_endpoint(net, sandbox, ip, aliases, ports, joining=sb)
        try:
            self.join(ep, sb)
        except BaseException:
            self.delete_endpoint(net, ep.id)
            raise
        return ep

    def disconnect(self, network: str, sandbox: str) -> None:
        net = self.network(network)
        sb = self.sandbox(sandbox)
        for ref in list(sb.endpoints):
            if ref.split("/")[0] == network:
                ep = net.endpoints[ref.split("/", 1)[1]]
                self.leave(ep, sb, save=False)
                self.delete_endpoint(net, ep.id)
                return
        raise ObjectNotFound(f"container {sandbox} is not connected to network {network}")

    def endpoints_of(self, sb: Sandbox) -> list[tuple[Network, Endpoint]]:
        out = []
        for ref in sb.endpoints:
            net_name, ep_id = ref.split("/", 1)
            net = self.host.networks[net_name]
            out.append((net, net.endpoints[ep_id]))
        return out
