"""The controller: libnetwork's lifecycle on one host, over the saved model.

create network -> create endpoint (reserves the address) -> join (moves the interface into the
sandbox as ``eth<N>``, addresses it, picks the default gateway) -> leave -> delete endpoint ->
delete network (refused while endpoints remain). Every public operation is a transaction: what
it made is undone, newest first, if any later step fails, so a failed command leaves nothing
half-built; operations called from inside another share its transaction. The host firewall is
re-rendered after each change that affects it.

Nothing here knows a driver by name: IPAM, the default route, the embedded DNS, the firewall,
published ports, one-instance networks and kernel features follow the driver's declared
``Capability``. Global-scope networks take their addresses from the cluster's IPAM and publish
their endpoints as peers through the control plane (``cnmlab.cluster``).
"""
from __future__ import annotations

import ipaddress
import os
import re
import secrets
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from cnmlab import drivers, firewall
from cnmlab.cluster import Cluster, NetworkRecord, Peer
from cnmlab.constants import EMBEDDED_DNS, UPSTREAM_DNS
from cnmlab.constants import GWBRIDGE, GWBRIDGE_ENDPOINT, GWBRIDGE_OPTIONS
from cnmlab.driverapi import (ExternalConnectivity, GlobalAllocator, HostContext, JoinInfo,
                              PeerAware)
from cnmlab.errors import (ActiveEndpoints, CnmError, InvalidInput, ObjectExists,
                           ObjectNotFound)
from cnmlab.ipam import LOCAL_DEFAULT, DefaultIpam, Ipam
from cnmlab.kernel import etcfiles, features, netns, sysctl
from cnmlab.kernel.netlink import Netlink
from cnmlab.model import (PREDEFINED, Endpoint, EndpointRef, Host, Network, PortMapping,
                          Sandbox)
from cnmlab.plugin import ipam as remote_ipam


HOSTS_HEADER = ("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"
                "fe00::0\tip6-localnet\nff00::0\tip6-mcastprefix\nff02::1\tip6-allnodes\n"
                "ff02::2\tip6-allrouters\n")


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


def bare_ip(cidr: str) -> str:
    return cidr.split("/")[0]


MAC = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")


def parse_mac(mac: str) -> str:
    """``docker run --mac-address``: a unicast MAC, lowercase."""
    m = mac.strip().lower()
    if not MAC.match(m) or int(m[:2], 16) & 1:
        raise InvalidInput(f"invalid MAC address {mac!r}: use a unicast address like "
                           f"02:42:0a:00:00:05")
    return m


class Controller:
    """One Docker host: its networks, endpoints and sandboxes, and the rules that bind them.

    ``make_ns(name, lo_up)`` records a namespace (write-ahead) and creates it, and ``save`` is
    called after every successful change, so state on disk always covers what exists.
    ``cluster`` is the control plane for global-scope networks (None: local networks only).
    """

    def __init__(self, host: Host, make_ns: Callable[[str, bool], None],
                 save: Callable[[], None], ns_name: Callable[[str], str],
                 cluster: Cluster | None = None) -> None:
        self.host = host
        self.cluster = cluster
        self._make_ns = make_ns
        self._save = save
        self._ns_name = ns_name
        self._nl: Netlink | None = None
        self._ctx: HostContext | None = None
        self._deleting_sandbox = False
        # netlink sessions in the host's other namespaces (overlay's), kept like self.nl; a
        # driver closes one before deleting its namespace (an open socket would pin it)
        self._netlinks: dict[str, Netlink] = {}
        self._fw_touched = False  # the current operation reprogrammed the host firewall
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
        for ns in list(self._netlinks):
            self._netlinks.pop(ns).close()
        if self._nl is not None:
            self._nl.close()
            self._nl = None

    def _ipam(self, net: Network) -> Ipam:
        """The network's IPAM driver: the default allocator, or a remote IPAM plugin."""
        return self.ipam if net.ipam_driver == "default" else remote_ipam.get(net.ipam_driver)

    def _rebuild_ipam(self) -> None:
        """The default allocator's state, from the saved model (a plugin keeps its own)."""
        for net in sorted(self.host.networks.values(), key=lambda n: n.created):
            if not net.pool_id or net.scope == "global" or net.ipam_driver != "default":
                continue
            pid, _ = self.ipam.request_pool(LOCAL_DEFAULT, net.subnet, net.ip_range)
            if net.gateway:
                self.ipam.request_address(pid, net.gateway)
            for ep in net.endpoints.values():
                if ep.ip:
                    self.ipam.request_address(pid, bare_ip(ep.ip))
            for svc in self.host.services.values():  # service VIPs hold pool addresses too
                if svc.vip and svc.network == net.name:
                    self.ipam.request_address(pid, svc.vip)

    @contextmanager
    def _transaction(self, joining: Sandbox | None = None) -> Iterator[HostContext]:
        """One operation's undo log; a nested operation joins the outer one's log."""
        if self._ctx is not None:
            outer = self._ctx
            saved, outer.joining = outer.joining, joining or outer.joining
            try:
                yield outer
            finally:
                outer.joining = saved
            return
        ctx = self._ctx = HostContext(self.host, self.nl, joining, self._make_namespace,
                                      _netlinks=self._netlinks)
        self._fw_touched = False
        try:
            yield ctx
        except BaseException:
            ctx.rollback()
            if self._fw_touched:  # the rules follow the model back: reconcile deletes what
                try:              # this operation added (host.firewall_rules knows it)
                    self.fw.program(self.host)
                except CnmError:
                    pass
            raise
        finally:
            self._ctx = None
        self._save()

    def _make_namespace(self, name: str) -> None:
        """For drivers (``ctx.make_namespace``): logged first, then made, as every namespace.
        Its ``lo`` comes up, as Docker's osl brings it up in every namespace it makes (an
        overlay's ``1-<id>``: ``cnmlab diff overlay`` compares it)."""
        self._make_ns(name, True)

    def _global(self, net: Network) -> Cluster:
        if self.cluster is None:
            raise InvalidInput(f"network {net.name} is global-scope ({net.driver}): the lab "
                               f"needs a control plane (cluster store) for it")
        return self.cluster

    # ---- networks ----------------------------------------------------------------------
    def network(self, name: str) -> Network:
        """A network of this host; a global one the control plane declares but this host does
        not have yet is attached now, as a swarm node gets an overlay when a task needs it."""
        try:
            return self.host.networks[name]
        except KeyError:
            pass
        record = self.cluster.network(name) if self.cluster is not None else None
        if record is not None and drivers.capability(record.driver).global_scope:
            return self.attach_global_network(record)
        raise ObjectNotFound(f"network {name} not found on host {self.host.name}")

    def create_network(self, name: str, driver: str = "bridge", *, subnet: str | None = None,
                       gateway: str | None = None, ip_range: str | None = None,
                       internal: bool = False, options: dict[str, str] | None = None,
                       predefined: bool = False, network_id: str | None = None,
                       ipam_driver: str = "default") -> Network:
        """``docker network create``; ``network_id`` attaches a global network's local part."""
        if not name or "/" in name or len(name) > 64:
            raise InvalidInput(f"invalid network name {name!r}")
        if name in self.host.networks:
            raise ObjectExists(f"network with name {name} already exists")
        if name in PREDEFINED and not predefined:
            raise InvalidInput(f"operation is not permitted on predefined {name} network")
        drv = drivers.get(driver)
        cap = drv.capability
        if cap.single_instance and not predefined:
            raise InvalidInput(f"only one instance of \"{driver}\" network is allowed")
        features.require(cap.kernel_features, f"network {name} (driver {driver})")
        net = Network(id=network_id or new_id(), name=name, driver=driver,
                      scope=cap.data_scope, internal=internal,
                      embedded_dns=cap.embedded_dns and not predefined, ipam_driver=ipam_driver,
                      options={k: str(v) for k, v in (options or {}).items()},
                      created=self.host.next_network)
        with self._transaction() as ctx:
            if cap.needs_ipam and cap.global_scope:
                self._global_pool(ctx, net, subnet, gateway)
            elif cap.needs_ipam:
                ipam = self._ipam(net)
                pid, pool = ipam.request_pool(LOCAL_DEFAULT, subnet, ip_range)
                ctx.undo(lambda: ipam.release_pool(pid))
                net.pool_id, net.subnet, net.ip_range = pid, pool, ip_range
                net.gateway = ipam.request_address(pid, gateway, gateway=True)
            drv.create_network(ctx, net)
            self.host.networks[name] = net
            ctx.undo(lambda: self.host.networks.pop(name, None))
            self.host.next_network += 1
            self._program_firewall()
        return net

    def _global_pool(self, ctx: HostContext, net: Network, subnet: str | None,
                     gateway: str | None) -> None:
        """A global network's address space comes from the cluster, the same on every host."""
        cluster = self._global(net)
        record = cluster.network(net.name)
        if record is not None and record.id == net.id:  # another host declared it: reuse
            net.subnet, net.gateway = record.subnet, record.gateway
            net.options.update(dict(record.options))
        else:
            net.subnet = cluster.ipam.request_pool(net.id, subnet)
            ctx.undo(lambda: cluster.ipam.release_pool(net.id))
            net.gateway = cluster.ipam.request_address(net.id, gateway)
            drv = drivers.get(net.driver)
            if isinstance(drv, GlobalAllocator):
                net.options.update(drv.network_allocate(cluster, net))
                ctx.undo(lambda: drv.network_free(cluster, net))
            cluster.declare_network(NetworkRecord(
                id=net.id, name=net.name, driver=net.driver, subnet=net.subnet,
                gateway=net.gateway, internal=net.internal,
                options=tuple(sorted(net.options.items()))))
            ctx.undo(lambda: cluster.store.delete(f"{cluster.prefix}networks/{net.name}"))
        net.pool_id = f"GlobalDefault/{net.subnet}"

    def attach_global_network(self, record: NetworkRecord) -> Network:
        """This host's part of a global network another host declared (as a swarm node does)."""
        if record.name in self.host.networks:
            return self.host.networks[record.name]
        return self.create_network(record.name, record.driver, subnet=record.subnet,
                                   gateway=record.gateway, internal=record.internal,
                                   options=dict(record.options), network_id=record.id)

    def delete_network(self, name: str) -> None:
        net = self.network(name)
        if name in PREDEFINED:
            raise InvalidInput(f"{name} is a pre-defined network and cannot be removed")
        if net.endpoints:
            raise ActiveEndpoints(f"error while removing network: network {name} id {net.id[:12]} "
                                  f"has active endpoints")
        with self._transaction() as ctx:
            drivers.get(net.driver).delete_network(ctx, net)
            if net.pool_id and net.scope != "global":
                self._ipam(net).release_pool(net.pool_id)
            del self.host.networks[name]
            ctx.undo(lambda: self.host.networks.__setitem__(name, net))
            self._program_firewall()

    def _program_firewall(self) -> None:
        if any(drivers.capability(n.driver).firewall for n in self.host.networks.values()):
            self._fw_touched = True
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
                self._make_ns(sb.netns, False)  # lo comes up when it joins
                ctx.undo(lambda: (netns.delete(sb.netns or ""), etcfiles.remove(sb.netns or "")))
            self.host.sandboxes[name] = sb
        return sb

    def delete_sandbox(self, name: str) -> None:
        sb = self.sandbox(name)
        with self._transaction():
            self._deleting_sandbox = True
            try:
                for net, ep in self.endpoints_of(sb):
                    self.leave(ep, sb)
                    self.delete_endpoint(net, ep.id)
            finally:
                self._deleting_sandbox = False
            if sb.netns:
                netns.kill_processes(sb.netns)
                netns.delete(sb.netns)
                etcfiles.remove(sb.netns)
            del self.host.sandboxes[name]

    def _write_sandbox_etc(self, sb: Sandbox) -> None:
        """resolv.conf and hosts as Docker 20.10 writes them (the hostname is the short ID)."""
        if not sb.netns:
            return
        resolv = (f"nameserver {EMBEDDED_DNS}\noptions ndots:0\n" if sb.dns
                  else f"nameserver {UPSTREAM_DNS}\n")
        hosts = HOSTS_HEADER + "".join(f"{ip}\t{sb.id[:12]}\n" for ip in sb.hosts)
        etcfiles.write(sb.netns, {"resolv.conf": resolv, "hosts": hosts})

    # ---- endpoints ---------------------------------------------------------------------
    def create_endpoint(self, net: Network, name: str, ip: str | None = None,
                        aliases: list[str] | None = None,
                        ports: list[PortMapping] | None = None,
                        joining: Sandbox | None = None, mac: str | None = None) -> Endpoint:
        drv = drivers.get(net.driver)
        if not isinstance(drv, ExternalConnectivity):
            ports = []  # Docker ignores published ports where the driver cannot publish them
        ep = Endpoint(id=new_id(), name=name, network=net.name, aliases=list(aliases or []),
                      ports=list(ports or []), created=self.host.next_endpoint,
                      mac=parse_mac(mac) if mac else None)
        self.host.next_endpoint += 1
        with self._transaction(joining) as ctx:
            if drv.capability.needs_ipam and net.pool_id:
                addr = self._request_address(ctx, net, ip)
                ep.ip = f"{addr}/{ipaddress.IPv4Network(net.subnet or '').prefixlen}"
            elif ip:
                raise InvalidInput(f"network {net.name} ({net.driver}) does not assign addresses")
            drv.create_endpoint(ctx, net, ep)
            net.endpoints[ep.id] = ep
            ctx.undo(lambda: net.endpoints.pop(ep.id, None))
        return ep

    def _request_address(self, ctx: HostContext, net: Network, ip: str | None) -> str:
        if net.scope == "global":
            ipam = self._global(net).ipam
            addr = ipam.request_address(net.id, ip)
            ctx.undo(lambda: ipam.release_address(net.id, addr))
        else:
            ipam = self._ipam(net)
            addr = ipam.request_address(net.pool_id or "", ip)
            ctx.undo(lambda: ipam.release_address(net.pool_id or "", addr))
        return addr

    def _release_address(self, net: Network, ip: str) -> None:
        if net.scope == "global":
            self._global(net).ipam.release_address(net.id, bare_ip(ip))
        elif net.pool_id:
            self._ipam(net).release_address(net.pool_id, bare_ip(ip))

    def reserve_address(self, network: str, ip: str | None = None) -> str:
        """An address of the network's pool that no endpoint holds: a service VIP (Docker's
        IPAM hands out VIPs from the same pool as the tasks' addresses)."""
        net = self.network(network)
        with self._transaction() as ctx:
            addr = self._request_address(ctx, net, ip)
        return addr

    def release_address(self, network: str, ip: str) -> None:
        self._release_address(self.network(network), ip)

    def delete_endpoint(self, net: Network, ep_id: str) -> None:
        ep = net.endpoints[ep_id]
        if ep.sandbox:
            raise ActiveEndpoints(f"endpoint {ep.name} is still joined to {ep.sandbox}")
        with self._transaction() as ctx:
            drivers.get(net.driver).delete_endpoint(ctx, net, ep)
            del net.endpoints[ep_id]
            ctx.undo(lambda: net.endpoints.__setitem__(ep_id, ep))
            if ep.ip:
                self._release_address(net, ep.ip)

    def join(self, ep: Endpoint, sb: Sandbox) -> None:
        net = self.network(ep.network)
        drv = drivers.get(net.driver)
        ref = EndpointRef(net.name, ep.id)
        with self._transaction() as ctx:
            info = drv.join(ctx, net, ep, sb)
            ep.sandbox = sb.name
            sb.endpoints.append(ref)
            ctx.undo(lambda: (sb.endpoints.remove(ref), setattr(ep, "sandbox", None)))
            if not net.internal and not info.disable_gateway:
                # the driver's SetGateway, else the network's if it gives one
                ep.gateway = info.gateway or (net.gateway if drv.capability.gateway else None)
            if info.src_name and sb.netns:
                self._plumb(sb, ep, info)
            elif sb.netns:  # no interface (null driver): the sandbox still has its lo
                with Netlink(sb.netns) as snl:
                    snl.set_link("lo", up=True)
            if ep.ip and net.name != GWBRIDGE:  # Docker 20.10 adds a line per network
                # joined, but none for the egress endpoint on docker_gwbridge (its address is
                # no name of the container's: ``cnmlab diff overlay`` shows Docker's hosts)...
                sb.hosts.append(bare_ip(ep.ip))
            if net.embedded_dns and not sb.dns:
                sb.dns = True  # user-defined network: the embedded resolver serves this sandbox
            self._write_sandbox_etc(sb)
            if ep.ports and isinstance(drv, ExternalConnectivity):
                drv.program_external_connectivity(ctx, net, ep)
                self._program_firewall()
            if net.scope == "global" and ep.ip:
                self._publish_peer(ctx, net, ep, sb)
            if net.name != GWBRIDGE:
                self._reconcile_gateway_bridge(sb)

    def _publish_peer(self, ctx: HostContext, net: Network, ep: Endpoint, sb: Sandbox) -> None:
        """The endpoint as every other host needs it: its kernel entries (IP, MAC, VTEP) and
        its names, which their embedded DNS learns from the store and nowhere else."""
        cluster = self._global(net)
        vtep = self.host.underlay_ip or self.host.public_ip or ""
        cluster.publish_peer(Peer(network_id=net.id, endpoint_id=ep.id, ip=ep.ip or "",
                                  mac=ep.mac or "", vtep=vtep, host=self.host.name,
                                  name=sb.name, aliases=(sb.id[:12], *ep.aliases)))
        ctx.undo(lambda: cluster.withdraw_peer(net.id, ep.id))

    def _plumb(self, sb: Sandbox, ep: Endpoint, info: JoinInfo) -> None:
        """The sandbox side of a join (libnetwork's osl): move, rename, address, route."""
        assert sb.netns and info.src_name
        if info.src_ns != sb.netns:  # not created in place: move it in
            fd = netns.open_fd(sb.netns)
            try:
                self.nl.set_link(info.src_name, ns_fd=fd)
            finally:
                os.close(fd)
        used = {e.ifname for _, e in self.endpoints_of(sb)}
        n = sb.next_ifindex.get(info.dst_prefix, 0)
        while f"{info.dst_prefix}{n}" in used:  # a sandbox saved before the counter existed
            n += 1
        sb.next_ifindex[info.dst_prefix] = n + 1
        ep.ifname = f"{info.dst_prefix}{n}"
        with Netlink(sb.netns) as snl:
            if len(sb.endpoints) == 1:
                snl.set_link("lo", up=True)
            snl.set_link(info.src_name, rename=ep.ifname, up=True)
            if ep.ip:
                snl.add_address(ep.ifname, ep.ip)
            for dst, via in info.static_routes:
                if via:
                    snl.add_route(dst, gateway=via)
                else:
                    snl.add_route(dst, dev=ep.ifname)
            others = [e for _, e in self.endpoints_of(sb) if e is not ep]
            if not any(e.gateway for e in others):  # no default route yet: nothing to replace
                if ep.gateway and self.gateway_endpoint(sb) is ep:
                    snl.add_route("default", gateway=ep.gateway, dev=ep.ifname)
            else:
                self._route_default(sb, snl)

    def gateway_endpoint(self, sb: Sandbox) -> Endpoint | None:
        """Docker's choice of the endpoint that gives the default route (``Endpoint.Less``)."""
        candidates = [(net.name, ep) for net, ep in self.endpoints_of(sb)
                      if ep.gateway and not net.internal and ep.ifname]
        candidates.sort(key=lambda c: c[0])
        return candidates[0][1] if candidates else None

    def _route_default(self, sb: Sandbox, snl: Netlink) -> None:
        gw_ep = self.gateway_endpoint(sb)
        current = [r for r in snl.routes() if r.dst == "default"]
        want = (gw_ep.gateway, gw_ep.ifname) if gw_ep else None
        have = (current[0].gateway, current[0].dev) if current else None
        if want == have or (want is None and current and current[0].gateway is None):
            return  # no gateway to give; a driver's device route (ipvlan l3) stays
        if current:
            snl.delete_default_route()
        if want:
            snl.add_route("default", gateway=want[0], dev=want[1])

    def leave(self, ep: Endpoint, sb: Sandbox) -> None:
        net = self.network(ep.network)
        drv = drivers.get(net.driver)
        with self._transaction() as ctx:
            if ep.ports and isinstance(drv, ExternalConnectivity):
                drv.revoke_external_connectivity(ctx, net, ep)
            drv.leave(ctx, net, ep, sb)
            if net.scope == "global":
                self._global(net).withdraw_peer(net.id, ep.id)
            sb.endpoints.remove(EndpointRef(net.name, ep.id))
            if sb.netns and ep.ifname:
                with Netlink(sb.netns) as snl:
                    if snl.has_link(ep.ifname):
                        snl.delete_link(ep.ifname)  # takes the host end of the veth with it
                    self._route_default(sb, snl)
            ep.sandbox, ep.ifname, ep.gateway = None, None, None
            # ...and on leave deletes every line of the container's hostname, all networks'
            # (libnetwork's deleteHostsEntries matches by name): what 20.10 really leaves.
            # Not on a swarm-scope network (the endpoint's names are withdrawn from the
            # cluster before the leave, so none is left to match) nor on docker_gwbridge (its
            # anonymous endpoints hold none): ``cnmlab diff overlay-removal`` shows it
            if net.scope != "global" and net.name != GWBRIDGE:
                sb.hosts.clear()
            self._write_sandbox_etc(sb)
            if ep.ports:
                self._program_firewall()
            if net.name != GWBRIDGE and not self._deleting_sandbox:
                self._reconcile_gateway_bridge(sb)

    # ---- global scope: peers from the control plane ----------------------------------
    def sync_peers(self, network_id: str | None = None) -> tuple[int, int]:
        """Make this host's kernel hold exactly the other hosts' endpoints (an agent's step).

        Reconciles what the store holds with what the kernel holds, read back through the
        driver (``peers_programmed``), so a restarted agent, or an entry someone deleted by
        hand, converges instead of trusting a memory of what was once programmed. Returns
        (added, removed).
        """
        if self.cluster is None:
            return 0, 0
        added = removed = 0
        with self._transaction() as ctx:
            for net in list(self.host.networks.values()):
                drv = drivers.get(net.driver)
                if (net.scope != "global" or not isinstance(drv, PeerAware)
                        or network_id not in (None, net.id)):
                    continue
                want = {bare_ip(p.ip): p for p in self.cluster.peers(net.id)
                        if p.host != self.host.name}
                have = drv.peers_programmed(ctx, net)
                for ip, (mac, vtep) in have.items():
                    if ip not in want:
                        drv.peer_delete(ctx, net, Peer(net.id, "", ip, mac, vtep or "", ""))
                        removed += 1
                for ip, peer in want.items():
                    cur = have.get(ip)
                    if cur is not None and cur[0] == peer.mac and cur[1] in (None, peer.vtep):
                        continue
                    if cur is not None:
                        drv.peer_delete(ctx, net, Peer(net.id, "", ip, cur[0], cur[1] or "", ""))
                    drv.peer_add(ctx, net, peer)
                    added += 1
        return added, removed

    def peer_table(self) -> list[tuple[Network, dict[str, Peer],
                                       dict[str, tuple[str, str | None]]]]:
        """For each global network here: what the store wants programmed (other hosts'
        endpoints by IP) next to what the kernel holds. Reads only; changes nothing."""
        out = []
        if self.cluster is None:
            return out
        ctx = HostContext(self.host, self.nl, _netlinks=self._netlinks)
        for net in self.host.networks.values():
            drv = drivers.get(net.driver)
            if net.scope != "global" or not isinstance(drv, PeerAware):
                continue
            want = {bare_ip(p.ip): p for p in self.cluster.peers(net.id)
                    if p.host != self.host.name}
            out.append((net, want, drv.peers_programmed(ctx, net)))
        return out

    def apply_peer(self, peer: Peer, present: bool) -> bool:
        """One change another host published (an agent's watch event): program or remove it.

        False when it is not for this host (its own endpoint, or a network it does not have).
        """
        net = next((n for n in self.host.networks.values() if n.id == peer.network_id), None)
        if net is None or peer.host == self.host.name:
            return False
        drv = drivers.get(net.driver)
        if not isinstance(drv, PeerAware):
            return False
        with self._transaction() as ctx:
            if present:
                drv.peer_add(ctx, net, peer)
            else:
                drv.peer_delete(ctx, net, peer)
        return True

    def detach_global_network(self, name: str) -> None:
        """Remove this host's part of a global network (the declaration was withdrawn)."""
        net = self.host.networks.get(name)
        if net is None or net.scope != "global":
            return
        self.delete_network(name)

    # ---- egress for networks without a gateway (docker_gwbridge) ------------------------
    def _needs_gateway_bridge(self, sb: Sandbox) -> bool:
        """libnetwork's needDefaultGW: an endpoint that gives no default route, on a network
        that is not internal, and no other endpoint of the sandbox that gives one."""
        need = False
        for net, ep in self.endpoints_of(sb):
            if net.name == GWBRIDGE or net.internal:
                continue
            if ep.gateway:
                return False
            if drivers.capability(net.driver).egress_bridge:
                need = True
        return need

    def _reconcile_gateway_bridge(self, sb: Sandbox) -> None:
        """Join or leave ``docker_gwbridge`` as the sandbox's other endpoints now need."""
        if not sb.netns:
            return
        joined = next((ep for net, ep in self.endpoints_of(sb) if net.name == GWBRIDGE), None)
        need = self._needs_gateway_bridge(sb)
        if need and joined is None:
            gw = self.host.networks.get(GWBRIDGE) or self.create_network(
                GWBRIDGE, "bridge", options=dict(GWBRIDGE_OPTIONS))
            ep = self.create_endpoint(gw, f"{GWBRIDGE_ENDPOINT}{sb.id[:12]}", joining=sb)
            self.join(ep, sb)
        elif joined is not None and not need:
            self.leave(joined, sb)
            self.delete_endpoint(self.host.networks[GWBRIDGE], joined.id)

    # ---- docker-like conveniences ------------------------------------------------------
    def connect(self, network: str, sandbox: str, ip: str | None = None,
                aliases: list[str] | None = None, ports: list[PortMapping] | None = None,
                mac: str | None = None) -> Endpoint:
        """``docker network connect``: create an endpoint and join it, as one transaction."""
        net = self.network(network)
        sb = self.sandbox(sandbox)
        if any(r.network == network for r in sb.endpoints):
            raise ObjectExists(f"endpoint with name {sandbox} already exists in network {network}")
        if not drivers.capability(net.driver).own_namespace and sb.netns:
            raise InvalidInput(f"{sandbox}: a container with its own namespace cannot join the "
                               f"host network")
        with self._transaction(joining=sb):
            ep = self.create_endpoint(net, sandbox, ip, aliases, ports, joining=sb, mac=mac)
            self.join(ep, sb)
        return ep

    def disconnect(self, network: str, sandbox: str) -> None:
        net = self.network(network)
        sb = self.sandbox(sandbox)
        for ref in list(sb.endpoints):
            if ref.network == network:
                ep = net.endpoints[ref.endpoint]
                with self._transaction():
                    self.leave(ep, sb)
                    self.delete_endpoint(net, ep.id)
                return
        raise ObjectNotFound(f"container {sandbox} is not connected to network {network}")

    def endpoints_of(self, sb: Sandbox) -> list[tuple[Network, Endpoint]]:
        out = []
        for ref in sb.endpoints:
            net = self.host.networks[ref.network]
            out.append((net, net.endpoints[ref.endpoint]))
        return out
