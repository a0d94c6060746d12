"""cnmlab's own drivers and IPAM as remote plugins: what Docker calls, translated to driver calls.

``cnmlab plugin serve --driver bridge`` puts one of cnmlab's drivers behind libnetwork's remote
API, so real dockerd (or cnmlab's engine, through its remote driver) creates networks and
containers with it. Docker keeps the CNM bookkeeping (IPAM, sandboxes, moving the interface
into the container, naming it, its address and routes); the driver does what a driver does
in the host's namespace: the bridge, a veth per endpoint, the firewall rules, the published
ports. So the adapter holds a ``Host`` model of its own (the networks and endpoints Docker
told it about), runs each call in a transaction whose undo log rolls back what the driver
made if the call fails, and answers ``Join`` with what the driver's ``JoinInfo`` says: the
interface's name in the host (``SrcName``), the prefix for its name in the container
(``DstPrefix``) and the gateway.

The host firewall is reconciled from this model alone (``cnmlab.firewall.reconcile``): the
rules it renders sit next to dockerd's or the engine's in the same namespace, and neither
side wipes the other's.

Docker does not send the network's name, only its ID; the model uses the ID as the name. The
model lives in the plugin's memory: a restarted plugin forgets its networks, as a restarted
third-party plugin does unless it keeps state of its own.
"""
from __future__ import annotations

import ipaddress
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from cnmlab import drivers, firewall
from cnmlab.driverapi import LOCAL, ExternalConnectivity, HostContext
from cnmlab.errors import ActiveEndpoints, CnmError, InvalidInput, ObjectNotFound
from cnmlab.ipam import GLOBAL_DEFAULT, LOCAL_DEFAULT, DefaultIpam
from cnmlab.model import Endpoint, Host, Network, PortMapping, Sandbox
from cnmlab.kernel.netlink import Netlink
from cnmlab.plugin import protocol as P
from cnmlab.plugin.sdk import IpamDriver, NetworkDriver, PluginSet

INTERNAL, PORTMAP = P.INTERNAL, P.PORTMAP
PROTOCOLS = {n: name for name, n in P.PROTO_NUMBERS.items()}

T = TypeVar("T")


def _field(call: str, req: dict[str, Any], key: str, kind: type[T]) -> T:
    """``req[key]`` of type ``kind``, or a one-line error naming the call and the field."""
    value = req.get(key)
    if value is None or value == "":
        raise InvalidInput(f"{call}: the request lacks {key}")
    if not isinstance(value, kind):
        raise InvalidInput(f"{call}: {key} must be a {kind.__name__}, not "
                           f"{type(value).__name__}")
    return value


def unservable(driver: str) -> str:
    """Why a driver makes no sense behind the remote API ("" when it does)."""
    cap = drivers.local(driver).capability
    return ("its containers share the host's namespace" if not cap.own_namespace
            else "it needs no IPAM (Docker's remote networks always have a pool)"
            if not cap.needs_ipam
            else "it is a single-instance driver" if cap.single_instance
            else "it is global-scope (it needs cnmlab's control plane)"
            if cap.data_scope != LOCAL else "")


def servable(driver: str) -> None:
    """Refuse, in one line, a driver that cannot be served."""
    why = unservable(driver)
    if why:
        ok = [d for d in drivers.registered() if not unservable(d)]
        raise InvalidInput(f"driver {driver} cannot be served as a plugin: {why}; servable: "
                           f"{', '.join(ok) or 'none'}")


class DriverPlugin(NetworkDriver):
    """One of cnmlab's drivers behind the NetworkDriver API, building in ``host_ns``."""

    def __init__(self, driver: str, host_ns: str, name: str | None = None) -> None:
        super().__init__()
        servable(driver)
        self.driver_name = driver
        self.driver = drivers.local(driver)
        self.capability = self.driver.capability
        self.host = Host(name=name or f"plugin {driver}", netns=host_ns, public_ip=None)
        self.fw = firewall.get("iptables")
        self._nl: Netlink | None = None
        self._fw_touched = False  # the current call reprogrammed the host firewall
        self._mutex = threading.Lock()  # calls arrive on threads; the model is one

    @property
    def nl(self) -> Netlink:
        if self._nl is None:
            self._nl = Netlink(self.host.netns)
        return self._nl

    def close(self) -> None:
        if self._nl is not None:
            self._nl.close()
            self._nl = None

    def answer(self, call: str, request: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        with self._mutex:
            return super().answer(call, request)

    @contextmanager
    def _transaction(self) -> Iterator[HostContext]:
        """What the driver made is undone, newest first, if the call fails half-way."""
        ctx = HostContext(self.host, self.nl)
        self._fw_touched = False
        try:
            yield ctx
        except BaseException:
            ctx.rollback()
            if self._fw_touched:  # the rules follow the model back
                try:
                    self.fw.program(self.host)
                except CnmError:
                    pass
            raise

    def _program_firewall(self) -> None:
        if self.capability.firewall:
            self._fw_touched = True
            self.fw.program(self.host)

    def _net(self, call: str, req: dict[str, Any]) -> Network:
        nid = _field(call, req, "NetworkID", str)
        try:
            return self.host.networks[nid]
        except KeyError:
            raise ObjectNotFound(f"{call}: network {nid[:12]} is unknown to this plugin "
                                 f"(was it created before the plugin started?)") from None

    def _ep(self, call: str, req: dict[str, Any]) -> tuple[Network, Endpoint]:
        net = self._net(call, req)
        eid = _field(call, req, "EndpointID", str)
        try:
            return net, net.endpoints[eid]
        except KeyError:
            raise ObjectNotFound(f"{call}: endpoint {eid[:12]} is unknown to network "
                                 f"{net.id[:12]}") from None

    # ---- the NetworkDriver API ---------------------------------------------------------
    def get_capabilities(self, req: dict[str, Any]) -> dict[str, Any]:
        cap = self.capability
        return {"Scope": cap.data_scope, "ConnectivityScope": cap.connectivity_scope
                or cap.data_scope}

    def create_network(self, req: dict[str, Any]) -> dict[str, Any]:
        call = P.CREATE_NETWORK
        nid = _field(call, req, "NetworkID", str)
        if nid in self.host.networks:
            raise InvalidInput(f"{call}: network {nid[:12]} exists already")
        v4 = req.get("IPv4Data") or []
        if not isinstance(v4, list) or not v4 or not isinstance(v4[0], dict):
            raise InvalidInput(f"{call}: IPv4Data must hold one pool (driver "
                               f"{self.driver_name} needs an IPv4 subnet)")
        pool = _field(call, v4[0], "Pool", str)
        gateway = _field(call, v4[0], "Gateway", str)
        try:
            subnet = ipaddress.IPv4Network(pool)
            gw = ipaddress.IPv4Interface(gateway).ip
        except ValueError as e:
            raise InvalidInput(f"{call}: IPv4Data: {e}") from None
        if gw not in subnet:
            raise InvalidInput(f"{call}: gateway {gw} is not in pool {subnet}")
        opts = req.get("Options") or {}
        if not isinstance(opts, dict):
            raise InvalidInput(f"{call}: Options must be an object")
        generic = opts.get(P.GENERIC_OPTIONS) or {}
        if not isinstance(generic, dict):
            raise InvalidInput(f"{call}: Options.{P.GENERIC_OPTIONS} must be an object")
        net = Network(id=nid, name=nid, driver=self.driver_name,
                      scope=self.capability.data_scope, subnet=str(subnet), gateway=str(gw),
                      pool_id=f"{v4[0].get('AddressSpace') or LOCAL_DEFAULT}/{subnet}",
                      internal=bool(opts.get(INTERNAL)),
                      options={str(k): str(v) for k, v in generic.items()},
                      created=self.host.next_network)
        with self._transaction() as ctx:
            self.driver.create_network(ctx, net)
            self.host.networks[nid] = net
            ctx.undo(lambda: self.host.networks.pop(nid, None))
            self.host.next_network += 1
            self._program_firewall()
        return {}

    def delete_network(self, req: dict[str, Any]) -> dict[str, Any]:
        net = self._net(P.DELETE_NETWORK, req)
        if net.endpoints:
            raise ActiveEndpoints(f"{P.DELETE_NETWORK}: network {net.id[:12]} has active "
                                  f"endpoints")
        with self._transaction() as ctx:
            self.driver.delete_network(ctx, net)
            del self.host.networks[net.id]
            ctx.undo(lambda: self.host.networks.__setitem__(net.id, net))
            self._program_firewall()
        return {}

    def create_endpoint(self, req: dict[str, Any]) -> dict[str, Any]:
        call = P.CREATE_ENDPOINT
        net = self._net(call, req)
        eid = _field(call, req, "EndpointID", str)
        if eid in net.endpoints:
            raise InvalidInput(f"{call}: endpoint {eid[:12]} exists already")
        iface = req.get("Interface") or {}
        if not isinstance(iface, dict):
            raise InvalidInput(f"{call}: Interface must be an object")
        address = _field(call, iface, "Address", str)
        try:
            ip = ipaddress.IPv4Interface(address)
        except ValueError as e:
            raise InvalidInput(f"{call}: Interface.Address: {e}") from None
        if ip.ip not in ipaddress.IPv4Network(net.subnet or "0.0.0.0/0"):
            raise InvalidInput(f"{call}: address {ip.ip} is not in the network's pool "
                               f"{net.subnet}")
        mac = iface.get("MacAddress") or None
        ep = Endpoint(id=eid, name=eid[:12], network=net.id, ip=str(ip),
                      mac=str(mac) if mac else None, created=self.host.next_endpoint)
        with self._transaction() as ctx:
            self.driver.create_endpoint(ctx, net, ep)
            net.endpoints[eid] = ep
            self.host.next_endpoint += 1
        # a MAC the driver chose (the bridge's 02:42:<IPv4>) goes back for Docker to set
        return {"Interface": {"MacAddress": ep.mac}} if ep.mac and not mac else {}

    def delete_endpoint(self, req: dict[str, Any]) -> dict[str, Any]:
        net, ep = self._ep(P.DELETE_ENDPOINT, req)
        with self._transaction() as ctx:
            if ep.ports:  # Docker revokes first; a caller that did not must not leak rules
                self._revoke(ctx, net, ep)
            self.driver.delete_endpoint(ctx, net, ep)
            del net.endpoints[ep.id]
        return {}

    def join(self, req: dict[str, Any]) -> dict[str, Any]:
        call = P.JOIN
        net, ep = self._ep(call, req)
        key = _field(call, req, "SandboxKey", str)
        sb = Sandbox(id=key, name=key.rsplit("/", 1)[-1], netns=None)
        with self._transaction() as ctx:
            info = self.driver.join(ctx, net, ep, sb)
        if not info.src_name:
            raise InvalidInput(f"{call}: driver {self.driver_name} made no interface")
        ep.sandbox = key
        gateway = None if net.internal else (info.gateway or (
            net.gateway if self.capability.gateway else None))
        answer: dict[str, Any] = {
            "InterfaceName": {"SrcName": info.src_name, "DstPrefix": info.dst_prefix},
            "Gateway": gateway or "",
            "StaticRoutes": [{"Destination": dst, "RouteType": 0 if via else 1,
                              **({"NextHop": via} if via else {})}
                             for dst, via in info.static_routes]}
        return answer

    def leave(self, req: dict[str, Any]) -> dict[str, Any]:
        net, ep = self._ep(P.LEAVE, req)
        sb = Sandbox(id=ep.sandbox or "", name=(ep.sandbox or "").rsplit("/", 1)[-1],
                     netns=None)
        with self._transaction() as ctx:
            if ep.ports:
                self._revoke(ctx, net, ep)
            self.driver.leave(ctx, net, ep, sb)
        ep.sandbox = None
        return {}

    def program_external_connectivity(self, req: dict[str, Any]) -> dict[str, Any]:
        call = P.PROGRAM_EXTERNAL
        net, ep = self._ep(call, req)
        ports = parse_portmap(call, (req.get("Options") or {}).get(PORTMAP))
        if not isinstance(self.driver, ExternalConnectivity) or net.internal:
            return {}  # Docker ignores -p where the driver cannot publish
        with self._transaction() as ctx:
            if ep.ports:  # the gateway endpoint came back: publish afresh
                self._revoke(ctx, net, ep)
            if not ports:
                return {}
            ep.ports = ports
            ctx.undo(lambda: setattr(ep, "ports", []))
            self.driver.program_external_connectivity(ctx, net, ep)
            self._program_firewall()
        return {}

    def revoke_external_connectivity(self, req: dict[str, Any]) -> dict[str, Any]:
        net, ep = self._ep(P.REVOKE_EXTERNAL, req)
        if ep.ports:
            with self._transaction() as ctx:
                self._revoke(ctx, net, ep)
        return {}

    def _revoke(self, ctx: HostContext, net: Network, ep: Endpoint) -> None:
        if isinstance(self.driver, ExternalConnectivity):
            self.driver.revoke_external_connectivity(ctx, net, ep)
        ep.ports = []
        self._program_firewall()


def parse_portmap(call: str, raw: Any) -> list[PortMapping]:
    """libnetwork's ``com.docker.network.portmap`` (types.PortBinding) -> port mappings."""
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise InvalidInput(f"{call}: {PORTMAP} must be a list")
    out = []
    for b in raw:
        if not isinstance(b, dict):
            raise InvalidInput(f"{call}: {PORTMAP}: each binding is an object")
        proto = PROTOCOLS.get(b.get("Proto", 6))  # type: ignore[arg-type]
        if proto is None:
            raise InvalidInput(f"{call}: {PORTMAP}: protocol {b.get('Proto')} is not tcp (6) "
                               f"or udp (17)")
        port, host_port = b.get("Port"), b.get("HostPort")
        if not isinstance(port, int) or not 1 <= port <= 65535:
            raise InvalidInput(f"{call}: {PORTMAP}: Port {port!r} is not a port number")
        if not isinstance(host_port, int) or not 1 <= host_port <= 65535:
            raise InvalidInput(f"{call}: {PORTMAP}: HostPort {host_port!r}: cnmlab publishes "
                               f"explicit host ports only (-p HOSTPORT:{port})")
        if b.get("HostPortEnd") not in (None, 0, host_port):
            raise InvalidInput(f"{call}: {PORTMAP}: host port ranges are not supported "
                               f"({host_port}-{b.get('HostPortEnd')})")
        out.append(PortMapping(host_port=host_port, container_port=port, proto=proto,
                               host_ip=str(b.get("HostIP") or "0.0.0.0")))
    return out


class IpamPlugin(IpamDriver):
    """cnmlab's default IPAM (Docker's allocator) behind the IpamDriver API."""

    def __init__(self) -> None:
        super().__init__()
        self.ipam = DefaultIpam()
        self._mutex = threading.Lock()

    def answer(self, call: str, request: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        with self._mutex:
            return super().answer(call, request)

    def get_default_address_spaces(self, req: dict[str, Any]) -> dict[str, Any]:
        return {"LocalDefaultAddressSpace": LOCAL_DEFAULT,
                "GlobalDefaultAddressSpace": GLOBAL_DEFAULT}

    def request_pool(self, req: dict[str, Any]) -> dict[str, Any]:
        if req.get("V6"):
            raise InvalidInput(f"{P.REQUEST_POOL}: cnmlab's IPAM hands out IPv4 pools only")
        space = _field(P.REQUEST_POOL, req, "AddressSpace", str)
        pid, pool = self.ipam.request_pool(space, req.get("Pool") or None,
                                           req.get("SubPool") or None)
        return {"PoolID": pid, "Pool": pool, "Data": {}}

    def release_pool(self, req: dict[str, Any]) -> dict[str, Any]:
        self.ipam.release_pool(_field(P.RELEASE_POOL, req, "PoolID", str))
        return {}

    def request_address(self, req: dict[str, Any]) -> dict[str, Any]:
        pid = _field(P.REQUEST_ADDRESS, req, "PoolID", str)
        opts = req.get("Options") or {}
        gateway = isinstance(opts, dict) and opts.get("RequestAddressType") == \
            P.GATEWAY_REQUEST["RequestAddressType"]
        addr = self.ipam.request_address(pid, req.get("Address") or None, gateway=gateway)
        prefix = pid.split("/")[2] if pid.count("/") >= 2 else "32"
        return {"Address": f"{addr}/{prefix}", "Data": {}}

    def release_address(self, req: dict[str, Any]) -> dict[str, Any]:
        self.ipam.release_address(_field(P.RELEASE_ADDRESS, req, "PoolID", str),
                                  _field(P.RELEASE_ADDRESS, req, "Address", str).split("/")[0])
        return {}


def builtin_plugin(driver: str, host_ns: str, name: str | None = None) -> PluginSet:
    """What ``cnmlab plugin serve --driver DRIVER`` serves: the driver and cnmlab's IPAM."""
    return PluginSet(DriverPlugin(driver, host_ns, name), IpamPlugin())

