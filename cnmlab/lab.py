"""The Python API: a lab is hosts on an upstream "internet", each running Docker-like networks.

    with Lab("demo") as lab:
        host = lab.add_host("host1")
        host.network_create("backend", subnet="10.10.0.0/24")
        web = host.run("web", network="backend", publish=["8080:80/tcp"])
        db = host.run("db", network="backend")
        print(web.ip(), lab.upstream_ip)

Hosts may instead share a LAN, an **underlay**, as real Docker hosts in one rack do (macvlan,
ipvlan and VXLAN overlays need one):

    with Lab("rack") as lab:
        lan = lab.add_underlay("lan", subnet="192.168.50.0/24")   # router .1, NAT upstream
        h1 = lab.add_host("h1", underlay="lan")                    # eth0 192.168.50.11
        h2 = lab.add_host("h2", underlay="lan")                    # eth0 192.168.50.12
        lan.add_route("10.50.0.0/24", via="h1")                    # the admin's static route

Every namespace is named ``cnm-<lab>.<name>`` and recorded in the lab's state file before it is
created; everything else lives inside those namespaces. ``down()`` (or leaving the ``with``)
removes exactly that, and so does ``cnmlab clean`` after a crash.

Several processes may act on one lab at once (the workshop app, a learner's CLI, a test): every
change runs under the lab's lock with the model reloaded first if another process saved a newer
one (``Lab.locked``), so no change is lost and IPAM never hands out an address twice.
"""
from __future__ import annotations

import contextlib
import dataclasses
import ipaddress
import os
import re
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from cnmlab import adopted, controlplane, dns, drivers, ingress, peers, proxy, state
from cnmlab.cluster import Cluster
from cnmlab.constants import (CONTROL_PLANE_KEY, DEFAULT_BRIDGE_OPTIONS, NS_PREFIX, NS_SEP,
                              OPT_BRIDGE_NAME, OPT_ICC, OPT_MASQUERADE, OPT_MTU, UNDERLAY_BRIDGE,
                              UNDERLAY_HOST_BASE, UNDERLAY_UPLINK, UPSTREAM, UPSTREAM_GW,
                              UPSTREAM_SERVICES)
from cnmlab.controller import Controller, setup_namespace
from cnmlab.driverapi import GlobalAllocator
from cnmlab.errors import (ActiveEndpoints, CnmError, InvalidInput, IpamError, NotRootError,
                           ObjectExists,
                           ObjectNotFound)
from cnmlab.ipam import DefaultIpam
from cnmlab.kernel import etcfiles, neigh, netns, nsexec, sysctl
from cnmlab.kernel.netlink import Netlink
from cnmlab.model import (Endpoint, Host, LabState, Network, PortMapping, Sandbox, Service,
                          Underlay)
from cnmlab.services import Services

OBJ_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,38}$")
UNDERLAY_BRIDGE = "sw0"  # the "physical switch" inside an underlay's namespace
UNDERLAY_UPLINK = "up0"  # the router's link into the upstream
UNDERLAY_HOST_BASE = 11  # hosts on an underlay get .11, .12, ... (the router is .1)
PORT_SPEC = re.compile(r"^(?:(?P<ip>[0-9.]+):)?(?P<host>\d+):(?P<ctr>\d+)(?:/(?P<proto>tcp|udp))?$")


def parse_port(spec: str) -> PortMapping:
    """``8080:80/tcp`` (docker run -p), optionally ``127.0.0.1:8080:80``."""
    m = PORT_SPEC.match(spec.strip())
    if not m:
        raise InvalidInput(f"invalid port mapping {spec!r}: use HOSTPORT:CONTAINERPORT[/tcp|udp]")
    hp, cp = int(m["host"]), int(m["ctr"])
    for port in (hp, cp):
        if not 1 <= port <= 65535:
            raise InvalidInput(f"invalid port mapping {spec!r}: port {port} is out of range")
    return PortMapping(host_port=hp, container_port=cp, proto=m["proto"] or "tcp",
                       host_ip=m["ip"] or "0.0.0.0")


def ns_name(lab: str, obj: str) -> str:
    """The namespace of a lab's host, sandbox or upstream: ``cnm-<lab>.<name>``.

    Injective: lab names have no '.', so two (lab, name) pairs never share a namespace name.
    (With '-' as the separator, lab ``x``'s host ``y-upstream`` and lab ``x-y``'s upstream were
    both ``cnm-x-y-upstream``.) At most 4 + 32 + 1 + 39 characters: well within NAME_MAX.
    """
    return f"{NS_PREFIX}{lab}{NS_SEP}{obj}"


def split_ns_name(ns: str) -> tuple[str, str] | None:
    """(lab, name) of a namespace cnmlab names, None for any other namespace."""
    if not ns.startswith(NS_PREFIX) or NS_SEP not in ns:
        return None
    lab, _, obj = ns[len(NS_PREFIX):].partition(NS_SEP)
    return (lab, obj) if lab and obj else None


def check_name(kind: str, name: str) -> None:
    if not OBJ_NAME.match(name):
        raise InvalidInput(f"{kind} name {name!r}: use lowercase letters, digits, '-', '_' or "
                           f"'.', starting with a letter or digit, at most 39 characters")


class SandboxHandle:
    """A container as a lab sees it: its namespace, its addresses, a way to run commands."""

    def __init__(self, host: "HostHandle", sb: Sandbox) -> None:
        self.host = host
        self._name = sb.name
        self._last = sb

    @property
    def model(self) -> Sandbox:
        """The sandbox in the lab's current model (another process may have reloaded it)."""
        sb = self.host.model.sandboxes.get(self._name)
        if sb is not None:
            self._last = sb
        return self._last

    @property
    def name(self) -> str:
        return self._name

    @property
    def netns(self) -> str:
        return self.model.netns or self.host.netns

    def endpoints(self) -> list[tuple[Network, Endpoint]]:
        return self.host.controller.endpoints_of(self.model)

    def ip(self, network: str | None = None) -> str:
        """The sandbox's address (without prefix) on ``network`` or on its first network."""
        for net, ep in self.endpoints():
            if (network is None or net.name == network) and ep.ip:
                return ep.ip.split("/")[0]
        if self.model.netns is None and self.host.public_ip:
            return self.host.public_ip
        raise ObjectNotFound(f"sandbox {self.name} has no address"
                             + (f" on network {network}" if network else ""))

    def exec(self, argv: Sequence[str], timeout: float = 30, check: bool = False,
             input: str | None = None) -> subprocess.CompletedProcess[str]:
        """Run a command inside the sandbox, with its own resolv.conf and hosts."""
        try:
            return subprocess.run(nsexec.shell_argv(self.netns, argv), capture_output=True,
                                  text=True, timeout=timeout, check=check, input=input)
        except subprocess.TimeoutExpired:
            raise CnmError(f"{' '.join(argv)} in {self.name}: no answer after {timeout:g} s") from None

    def __repr__(self) -> str:
        return f"<sandbox {self.name} on {self.host.name}>"


class HostHandle:
    """A Docker host: a namespace with its own bridges, firewall and sysctls."""

    def __init__(self, lab: "Lab", host: Host) -> None:
        self.lab = lab
        self.model = host
        self.controller = self._controller(host)

    def _controller(self, host: Host) -> Controller:
        return Controller(host, self.lab._make_ns, self.lab._save, self.lab.ns_name,
                          self.lab.cluster)

    def _adopt(self, host: Host) -> None:
        """Follow a model reloaded from disk: a fresh controller (IPAM rebuilt from it)."""
        old = self.controller
        self.model = host
        self.controller = self._controller(host)
        old.close()

    @property
    def name(self) -> str:
        return self.model.name

    @property
    def netns(self) -> str:
        return self.model.netns

    @property
    def public_ip(self) -> str | None:
        return self.model.public_ip

    def network_create(self, name: str, driver: str = "bridge", *, subnet: str | None = None,
                       gateway: str | None = None, ip_range: str | None = None,
                       internal: bool = False, options: dict[str, Any] | None = None,
                       icc: bool | None = None, masquerade: bool | None = None,
                       mtu: int | None = None, bridge_name: str | None = None,
                       ipam_driver: str = "default") -> Network:
        """``docker network create``; the keyword shortcuts set Docker's option keys."""
        opts = {k: str(v).lower() if isinstance(v, bool) else str(v)
                for k, v in (options or {}).items()}
        for key, value in ((OPT_ICC, icc), (OPT_MASQUERADE, masquerade), (OPT_MTU, mtu),
                           (OPT_BRIDGE_NAME, bridge_name)):
            if value is not None:
                opts[key] = str(value).lower() if isinstance(value, bool) else str(value)
        with self.lab.locked():
            return self.controller.create_network(name, driver, subnet=subnet, gateway=gateway,
                                                  ip_range=ip_range, internal=internal,
                                                  options=opts, ipam_driver=ipam_driver)

    def network_rm(self, name: str) -> None:
        with self.lab.locked():
            self.controller.delete_network(name)

    def networks(self) -> dict[str, Network]:
        return self.model.networks

    def run(self, name: str, network: str = "bridge", *, ip: str | None = None,
            publish: Sequence[str] = (), aliases: Sequence[str] = (),
            mac: str | None = None) -> SandboxHandle:
        """``docker run --network NETWORK``: a sandbox, an endpoint, a join."""
        check_name("sandbox", name)
        ports = [parse_port(p) for p in publish]
        with self.lab.locked():
            self.lab._check_free(name)
            net = self.controller.network(network)
            shares_host = not drivers.capability(net.driver).own_namespace
            sb = self.controller.create_sandbox(name, shares_host=shares_host)
            try:
                self.controller.connect(network, name, ip=ip, aliases=list(aliases), ports=ports,
                                        mac=mac)
            except BaseException:
                self.controller.delete_sandbox(name)
                raise
            self.lab._sandbox_added()
            self.lab._announce_dns(sb)
            self.lab._serve_dns()
        return SandboxHandle(self, sb)

    def connect(self, network: str, sandbox: str, ip: str | None = None,
                aliases: Sequence[str] = (), mac: str | None = None) -> Endpoint:
        with self.lab.locked():
            ep = self.controller.connect(network, sandbox, ip=ip, aliases=list(aliases),
                                         mac=mac)
            self.lab._serve_dns()
        return ep

    def disconnect(self, network: str, sandbox: str) -> None:
        with self.lab.locked():
            self.controller.disconnect(network, sandbox)
            self.lab._serve_dns()

    def rm(self, sandbox: str) -> None:
        with self.lab.locked():
            self.controller.delete_sandbox(sandbox)
            self.lab._serve_dns()

    # ---- services (cnmlab.services: one host, no swarm) ---------------------------------
    def _services(self) -> Services:
        return Services(self.controller, self.lab._save, self.lab._check_free)

    def service_create(self, name: str, network: str, *, replicas: int = 1,
                       endpoint_mode: str = "vip", port: int = 80,
                       proto: str = "tcp") -> Service:
        """``docker service create``: N task sandboxes, and in vip mode a VIP balanced by IPVS
        in the network's ``lb-<network>`` sandbox (needs IPVS: ``cnmlab vm`` where missing)."""
        check_name("service", name)
        with self.lab.locked():
            svc = self._services().create(name, network, replicas, endpoint_mode, port, proto)
            self.lab._sandbox_added()
            self.lab._serve_dns()
        return svc

    def service_scale(self, name: str, replicas: int) -> Service:
        with self.lab.locked():
            svc = self._services().scale(name, replicas)
            self.lab._serve_dns()
        return svc

    def service_rm(self, name: str) -> None:
        with self.lab.locked():
            self._services().remove(name)
            self.lab._serve_dns()

    def service_tasks(self, name: str) -> list[str]:
        """The addresses of a service's tasks on its network, in slot order."""
        svc = self._services()
        return svc.task_ips(svc.get(name))

    def sync_peers(self) -> tuple[int, int]:
        """One agent step for global-scope networks (see ``Controller.sync_peers``)."""
        with self.lab.locked():
            return self.controller.sync_peers()

    def sandbox(self, name: str) -> SandboxHandle:
        return SandboxHandle(self, self.controller.sandbox(name))

    def sandboxes(self) -> list[SandboxHandle]:
        return [SandboxHandle(self, sb) for sb in self.model.sandboxes.values()]

    def iptables(self) -> str:
        """``iptables -S`` and ``iptables -t nat -S`` inside the host."""
        return self.controller.fw.dump(self.netns)

    def exec(self, argv: Sequence[str], timeout: float = 30) -> subprocess.CompletedProcess[str]:
        return subprocess.run(nsexec.shell_argv(self.netns, argv), capture_output=True,
                              text=True, timeout=timeout)

    def __repr__(self) -> str:
        return f"<host {self.name} {self.public_ip}>"


class UnderlayHandle:
    """A LAN shared by hosts: a switch (``sw0``) and the LAN's router, in one namespace.

    The router holds the gateway address (``.1``) on the switch, forwards, and masquerades
    the LAN out of ``up0`` into the lab's upstream, like the edge router of an office or a
    rack. Hosts plugged in with ``lab.add_host(NAME, underlay=...)`` see the LAN as their
    ``eth0``. Everything lives in the underlay's own namespace ``cnm-<lab>-<name>``.
    """

    def __init__(self, lab: "Lab", model: Underlay) -> None:
        self.lab = lab
        self.model = model

    @property
    def name(self) -> str:
        return self.model.name

    @property
    def netns(self) -> str:
        return self.model.netns

    @property
    def subnet(self) -> str:
        return self.model.subnet

    @property
    def gateway(self) -> str:
        """The router's address on the LAN: what macvlan/ipvlan networks use as --gateway."""
        return self.model.gateway

    @property
    def bridge(self) -> str:
        return self.model.bridge

    def ip_of(self, host: str) -> str:
        try:
            return self.model.hosts[host]
        except KeyError:
            raise ObjectNotFound(f"host {host} is not on underlay {self.name}") from None

    def hosts(self) -> dict[str, str]:
        """host name -> its address on the LAN."""
        return dict(self.model.hosts)

    def port_of(self, host: str) -> str:
        """The switch port (in the underlay's namespace) a host's eth0 is plugged into."""
        try:
            return self.model.ports[host]
        except KeyError:
            raise ObjectNotFound(f"host {host} is not on underlay {self.name}") from None

    def add_route(self, subnet: str, via: str) -> None:
        """A static route on the router (what the LAN's admin configures), e.g. an ipvlan l3
        subnet that lives behind a Docker host. ``via``: a host on this LAN or an address."""
        net = _parse_net(subnet, f"underlay {self.name}: route")
        with self.lab.locked():
            self.model = self.lab.state.underlays[self.model.name]  # as another process left it
            self._add_route(net, via)

    def _add_route(self, net: ipaddress.IPv4Network, via: str) -> None:
        hop = self.model.hosts.get(via, via)
        try:
            addr = ipaddress.IPv4Address(hop)
        except ValueError:
            raise InvalidInput(f"underlay {self.name}: route via {via!r}: not a host on this "
                               f"LAN ({', '.join(sorted(self.model.hosts)) or 'none'}) nor an "
                               f"IPv4 address") from None
        if addr not in ipaddress.IPv4Network(self.subnet):
            raise InvalidInput(f"underlay {self.name}: route via {addr}: the next hop must be "
                               f"on the LAN {self.subnet}")
        with Netlink(self.netns) as nl:
            nl.add_route(str(net), gateway=str(addr))
        self.model.routes.append([str(net), str(addr)])
        self.lab._save()

    def delete_route(self, subnet: str) -> None:
        net = str(_parse_net(subnet, f"underlay {self.name}: route"))
        with self.lab.locked():
            self.model = self.lab.state.underlays[self.model.name]
            self._delete_route(net)

    def _delete_route(self, net: str) -> None:
        if not any(r[0] == net for r in self.model.routes):
            raise ObjectNotFound(f"underlay {self.name} has no route to {net}")
        nsexec.run(self.netns, ["ip", "route", "del", net])
        self.model.routes = [r for r in self.model.routes if r[0] != net]
        self.lab._save()

    def exec(self, argv: Sequence[str], timeout: float = 30) -> subprocess.CompletedProcess[str]:
        """Run a command on the LAN's router (e.g. ``ping``, ``ip neigh``, ``tcpdump``)."""
        return subprocess.run(nsexec.shell_argv(self.netns, argv), capture_output=True,
                              text=True, timeout=timeout)

    def __repr__(self) -> str:
        return f"<underlay {self.name} {self.subnet}>"


def _parse_net(text: str, what: str) -> ipaddress.IPv4Network:
    try:
        return ipaddress.IPv4Network(str(text))
    except ValueError as e:
        raise InvalidInput(f"{what}: {text!r} is not a valid IPv4 subnet ({e})") from None


ON_DEMAND_KEY = "control_plane_on_demand"


def _wait_until(deadline: float, pending: Callable[[], str | None],
                failure: Callable[[str], str], pause: float = 0.005) -> None:
    """Poll ``pending`` (what is still missing, or None when nothing is) until nothing is;
    past ``deadline`` raise CnmError with ``failure`` of what is still missing."""
    while (missing := pending()) is not None:
        if time.monotonic() > deadline:
            raise CnmError(failure(missing))
        time.sleep(pause)


class Lab:
    """A running lab. ``Lab(name)`` creates it; ``Lab.open(name)`` attaches to a running one."""

    def __init__(self, name: str, *, upstream: bool = True, cluster: Cluster | None = None,
                 _state: LabState | None = None, _stamp: state.Stamp | None = None) -> None:
        if os.geteuid() != 0:
            raise NotRootError("cnmlab needs root to create namespaces: run it with sudo")
        self.cluster = cluster  # the control plane for global-scope networks, if any
        self._hosts: dict[str, HostHandle] = {}
        self._batch = 0
        self._announcer: dns.Announcer | None = None
        self._dirty = False
        self._depth = 0  # nesting of locked() in this object
        self._stamp = _stamp  # the saved version self.state matches
        if _state is not None:
            self.state = _state
            for h in self.state.hosts.values():
                self._hosts[h.name] = self._handle(h)
            return
        state.check_lab_name(name)
        self.state = LabState(name=name)
        with self.locked(refresh=False):
            if state.exists(name):
                raise ObjectExists(f"lab {name} is already running: 'cnmlab down {name}' first")
            self._save()
            try:
                if upstream:
                    self._build_upstream()
            except BaseException:
                self.down()
                raise

    @classmethod
    def open(cls, name: str, cluster: Cluster | None = None) -> "Lab":
        stamp = state.stamp(name)  # before loading: a save in between only costs a reload
        lab_state = state.load(name)
        info = lab_state.extra.get(CONTROL_PLANE_KEY)
        if cluster is None and info:
            cluster = controlplane.cluster_of(info)
        return cls(name, cluster=cluster, _state=lab_state, _stamp=stamp)

    # ---- control plane -------------------------------------------------------------------
    @property
    def control_plane(self) -> dict[str, Any] | None:
        """What the lab's control plane is (url, namespace, pid, agents), if it has one."""
        return self.state.extra.get(CONTROL_PLANE_KEY)

    def start_control_plane(self, store: str | None = None) -> Cluster:
        """etcd for global-scope networks, and an agent on every host (now and later).

        ``store=None`` starts a private etcd inside the lab: in the first underlay's
        namespace on its router address, else in the upstream on the internet gateway's.
        ``etcd://HOST:PORT`` uses an existing cluster instead.
        """
        with self.locked():  # agents never write the lab's state: waiting for them here is safe
            return self._start_control_plane(store)

    def _start_control_plane(self, store: str | None) -> Cluster:
        if self.control_plane:
            raise ObjectExists(f"lab {self.name} already has a control plane "
                               f"({self.control_plane['url']})")
        if store:
            info = controlplane.external(self.name, store)
        elif self.state.underlays:
            lan = next(iter(self.state.underlays.values()))
            info = controlplane.start_embedded(self.name, lan.netns, lan.gateway)
        elif self.state.upstream:
            info = controlplane.start_embedded(self.name, self.state.upstream, UPSTREAM_GW)
        else:
            raise InvalidInput(f"lab {self.name}: an embedded control plane needs an underlay "
                               f"or the upstream to live on; pass store='etcd://HOST:PORT'")
        info["agents"] = {}
        self.state.extra[CONTROL_PLANE_KEY] = info
        self._save()
        self.cluster = controlplane.cluster_of(info)
        for h in self._hosts.values():
            h.controller.cluster = self.cluster
            self._start_agent(h.model)
        self._save()
        self._wait_agents(list(self._hosts))
        return self.cluster

    def _wait_agents(self, hosts: list[str], timeout: float = 240.0) -> None:
        """Until each agent announced itself (it has reconciled and is about to watch).

        The bound is generous: in the full-kernel VM (software-emulated CPU) an agent's Python
        start alone takes tens of seconds; a dead agent is still reported at once.
        """
        info = self.control_plane
        if not info or self.cluster is None or not hosts:
            return
        deadline = time.monotonic() + timeout
        while True:
            seen = self.cluster.agents()
            waiting = [h for h in hosts
                       if (seen.get(h) or {}).get("pid") != info["agents"].get(h)]
            if not waiting:
                return
            dead = [h for h in waiting if not controlplane.alive(info["agents"].get(h))]
            if dead or time.monotonic() > deadline:
                host = (dead or waiting)[0]
                log = state.aux_path(self.name, f"agent-{host}.log")
                try:
                    with open(log) as f:
                        last = (f.read().strip().splitlines() or ["(empty log)"])[-1]
                except OSError:
                    last = "(no log)"
                raise CnmError(f"lab {self.name}: the agent of {host} "
                               f"{'exited' if dead else 'did not announce itself'}: {last}")
            time.sleep(0.02)

    def _start_agent(self, host: Host) -> None:
        info = self.control_plane
        if not info:
            return
        vtep = host.underlay_ip or host.public_ip
        if not vtep:
            raise InvalidInput(f"host {host.name} has no underlay address for its agent")
        info["agents"][host.name] = controlplane.start_agent(self.name, info, host.name,
                                                             host.netns, vtep)

    def restart_agent(self, host: str) -> None:
        """Start a host's agent again (after it died): it reconciles its kernel first."""
        with self.locked():
            h = self.host(host).model
            info = self.control_plane
            if not info:
                raise InvalidInput(f"lab {self.name} has no control plane")
            controlplane.stop_agent(info["agents"].get(host), self.name, host)
            self._start_agent(h)
            self._save()
            self._wait_agents([host])

    def stop_agent(self, host: str) -> None:
        """Kill a host's agent (a fault to look at: its kernel stops following the store)."""
        info = self.control_plane or {}
        controlplane.stop_agent((info.get("agents") or {}).get(host), self.name, host)

    def converge(self, timeout: float = 5.0) -> None:
        """Wait until every host's kernel holds what the store says (agents at work), and
        the embedded DNS knows every endpoint the store holds (names of other hosts'
        containers come from the store, through the resolver's watch)."""
        if self.cluster is None:
            return
        cluster = self.cluster
        deadline = time.monotonic() + timeout

        def hosts_lagging() -> str | None:
            lagging = peers.out_of_sync(peers.report(cluster, [h.controller for h in
                                                               self.hosts()]))
            return ", ".join(lagging) or None

        def names_missing() -> str | None:
            want = {f"{p.network_id}/{p.endpoint_id}" for p in cluster.peers()}
            seen = dns.remote_names_seen(self.name, self.state)
            return None if seen is None or want <= seen else str(len(want - seen))

        _wait_until(deadline, hosts_lagging, lambda lagging: (
            f"lab {self.name}: hosts {lagging} did not converge within {timeout:g} s "
            f"(see 'cnmlab peers {self.name}')"))
        _wait_until(deadline, names_missing, lambda missing: (
            f"lab {self.name}: the embedded DNS did not learn {missing} endpoint(s) from the "
            f"control plane within {timeout:g} s (see {dns.remote_seen_path(self.name)})"))

    # ---- services across hosts: the ingress routing mesh (through the control plane) -----
    def control_plane_on_demand(self) -> None:
        """Start the embedded control plane only when a step first needs it (what
        ``docker swarm init`` and a ``join`` per node would do at that moment)."""
        with self.locked():
            self.state.extra[ON_DEMAND_KEY] = True
            self._save()

    def _mesh(self) -> ingress.Mesh:
        if self.cluster is None and self.state.extra.get(ON_DEMAND_KEY):
            self._start_control_plane(None)
        if self.cluster is None:
            raise InvalidInput(f"lab {self.name}: a service with a published port spans every "
                               f"host through the control plane; give the lab one (topology: "
                               f"control_plane: embedded)")
        return ingress.Mesh(self.cluster, {h.name: h.controller for h in self.hosts()},
                            self._check_free)

    def mesh_services(self) -> dict[str, ingress.MeshService]:
        """The services the control plane holds (none without one)."""
        return ingress.MeshStore(self.cluster).services() if self.cluster else {}

    def init_ingress(self) -> None:
        """What ``docker swarm init`` and each node's ``join`` leave on every node before any
        service exists: the overlay network ``ingress`` and each host's ingress sandbox (on
        ``ingress`` and ``docker_gwbridge``). ``cnmlab diff`` builds it as a swarm does, so
        the two sides' gwbridge and VNI allocations start from the same point."""
        with self.locked():
            self._init_ingress()
            self._sandbox_added()

    def _init_ingress(self) -> ingress.Mesh:
        mesh = self._mesh()
        assert self.cluster is not None
        if self.cluster.network(ingress.INGRESS) is None:  # swarm init makes it
            self.network_create(ingress.INGRESS, "overlay")
        mesh.ensure_sandboxes()
        return mesh

    def service_create(self, name: str, *, replicas: int = 1, publish: str | int,
                       timeout: float = 120.0) -> ingress.MeshService:
        """``docker service create --publish P:T --replicas N NAME`` on a swarm: the service
        and its tasks go into the control plane, tasks spread over the hosts; every host's
        agent then programs its part of the routing mesh (waited for, up to ``timeout``)."""
        check_name("service", name)
        with self.locked():
            mesh = self._init_ingress()
            svc = mesh.create(name, replicas, publish)
            self._sandbox_added()
        self.converge_mesh(timeout)
        return svc

    def service_scale(self, name: str, replicas: int, timeout: float | None = 120.0) -> None:
        """``docker service scale NAME=N``: placed by spread; a removed task leaves every
        host's IPVS (through the store) before its sandbox goes. ``timeout=None``: do not
        wait for the agents."""
        with self.locked():
            self._mesh().scale(name, replicas)
        if timeout is not None:
            self.converge_mesh(timeout)

    def service_rm(self, name: str, timeout: float = 120.0) -> None:
        with self.locked():
            self._mesh().remove(name)
        self.converge_mesh(timeout)

    def service_tasks(self, name: str) -> list[ingress.MeshTask]:
        """A published service's tasks as the control plane holds them (host, address)."""
        return ingress.MeshStore(self.cluster).tasks(name) if self.cluster else []

    def mesh_out_of_sync(self, host: str) -> str | None:
        """Why ``host``'s kernel does not hold the routing mesh the store describes, or None."""
        if self.cluster is None:
            return None
        h = self.host(host)
        return ingress.host_out_of_sync(self.name, h.name, h.netns, self.cluster)

    def converge_mesh(self, timeout: float = 120.0, hosts: Sequence[str] | None = None) -> None:
        """Until every host's (or each of ``hosts``') kernel holds the routing mesh the store
        describes (its agent programs it; this only reads). Generous: the VM's agents are
        slow."""
        if self.cluster is None:
            return
        names = list(hosts) if hosts is not None else [h.name for h in self.hosts()]

        def first_lagging() -> str | None:
            return next((why for h in names if (why := self.mesh_out_of_sync(h))), None)

        _wait_until(time.monotonic() + timeout, first_lagging, lambda why: (
            f"lab {self.name}: the routing mesh did not converge within {timeout:g} s: {why} "
            f"(see the agents' logs, {state.aux_path(self.name, 'agent-HOST.log')})"),
            pause=0.05)

    @property
    def name(self) -> str:
        return self.state.name

    def __enter__(self) -> "Lab":
        return self

    def __exit__(self, *exc: object) -> None:
        self.down()

    def ns_name(self, obj: str) -> str:
        return ns_name(self.name, obj)

    # ---- one change at a time, on the latest model ---------------------------------------
    @contextlib.contextmanager
    def locked(self, refresh: bool = True) -> Iterator["Lab"]:
        """Hold the lab's lock for the body, with ``self.state`` reloaded first if another
        process (the CLI, the workshop app) saved a newer model since this one was read.

        Every change to the lab runs inside: a load-modify-save that is never interleaved
        with another's. Re-entrant; the reload happens only at the outermost level.
        """
        with state.locked(self.name):
            if self._depth == 0 and refresh:
                self._refresh()
            self._depth += 1
            try:
                yield self
            finally:
                self._depth -= 1

    def refresh(self) -> None:
        """Bring the model up to date with the saved one (another process may have acted)."""
        with self.locked():
            pass

    def _refresh(self) -> None:
        now = state.stamp(self.name)
        if now is not None and now == self._stamp:
            return
        if now is None and not state.exists(self.name):
            raise ObjectNotFound(f"lab {self.name} is not running any more (another process "
                                 f"tore it down)")
        self._adopt(state.load(self.name), now)

    def _adopt(self, fresh: LabState, stamp: state.Stamp | None) -> None:
        self.state, self._stamp = fresh, stamp
        for name, h in fresh.hosts.items():
            if name in self._hosts:
                with self._saved_model_errors():
                    self._hosts[name]._adopt(h)
            else:
                self._hosts[name] = self._handle(h)
        for name in [n for n in self._hosts if n not in fresh.hosts]:
            self._hosts.pop(name).controller.close()

    def _handle(self, host: Host) -> HostHandle:
        with self._saved_model_errors():
            return HostHandle(self, host)

    @contextlib.contextmanager
    def _saved_model_errors(self) -> Iterator[None]:
        """IPAM rebuilt from a saved model that contradicts itself: a damaged state file."""
        try:
            yield
        except IpamError as e:
            raise state.damaged(state._path(self.name), self.name, f"hosts: {e}") from None

    def _make_ns(self, ns: str, lo_up: bool = True) -> None:
        """Record a namespace (write-ahead), then create it.

        If the name is taken, the record is withdrawn before the error is raised: a rollback
        or ``cnmlab clean`` removes only namespaces this lab made, never one it found.
        """
        state.record_namespace(self.name, ns)
        self.state.namespaces.append(ns)
        try:
            setup_namespace(ns, lo_up=lo_up)
        except ObjectExists:
            state.forget_namespace(self.name, ns)
            self.state.namespaces.remove(ns)
            raise ObjectExists(f"network namespace {ns} already exists and lab {self.name} did "
                               f"not make it: 'ip netns delete {ns}' removes it if it is a "
                               f"leftover") from None

    def _save(self) -> None:
        if self._batch:
            self._dirty = True
        else:
            self._write()

    def _write(self) -> None:
        if not self._depth:
            raise RuntimeError(f"cnmlab bug: lab {self.name} saved outside Lab.locked()")
        self._stamp = state.save(self.state)

    @contextlib.contextmanager
    def batch(self) -> Iterator["Lab"]:
        """Save the model once at the end instead of after every change (big topologies).

        The lab stays locked for the whole batch. Namespaces are still logged before they are
        made, so a crash inside a batch is as recoverable by ``cnmlab clean`` as anywhere else.
        """
        with self.locked():
            self._batch += 1
            try:
                # each sandbox's /etc files are written in the background (see etcfiles),
                # and all on disk before the model that names their sandboxes is saved
                with etcfiles.deferred():
                    yield self
            finally:
                self._batch -= 1
                if not self._batch:
                    if self._announcer is not None:
                        self._announcer.close()
                        self._announcer = None
                    if self._dirty:
                        self._dirty = False
                        self._write()
                        self._serve_dns()

    def _announce_dns(self, sb: Any) -> None:
        """Inside a batch, let the resolver prepare this sandbox while the batch goes on."""
        if not (self._batch and sb.dns and sb.netns):
            return
        if self._announcer is None:
            self._announcer = dns.Announcer(self.name)
        self._announcer.announce(self.state, sb.netns)

    def _serve_dns(self) -> None:
        """Docker's embedded DNS (127.0.0.11) for sandboxes on user-defined networks.

        The resolver follows the saved state, so inside a batch it is told once, at the end.
        """
        if self._batch or not dns.wants_dns(self.state):
            return
        recorded = dict(self.state.extra)
        dns.ensure_running(self.name, self.state)
        if self.state.extra != recorded:  # a resolver started now: its PID is saved. Else
            self._write()  # nothing changed, and a save would only make it re-read the state

    def _check_free(self, name: str) -> None:
        if name == UPSTREAM or name in self.state.hosts or name in self.state.underlays or any(
                name in h.sandboxes for h in self.state.hosts.values()):
            raise ObjectExists(f"the name {name} is already used in lab {self.name}")

    # ---- topology ----------------------------------------------------------------------
    @property
    def upstream_ip(self) -> str:
        return UPSTREAM_GW

    @property
    def upstream_netns(self) -> str:
        if not self.state.upstream:
            raise ObjectNotFound(f"lab {self.name} has no upstream namespace")
        return self.state.upstream

    def _build_upstream(self) -> None:
        ns = self.ns_name(UPSTREAM)
        self._make_ns(ns)
        prefix = ipaddress.IPv4Network(self.state.upstream_subnet).prefixlen
        with Netlink(ns) as nl:
            nl.add_bridge("wan0")
            nl.add_address("wan0", f"{UPSTREAM_GW}/{prefix}")
            nl.set_link("wan0", up=True)
            for ip in UPSTREAM_SERVICES.values():
                nl.add_address("lo", f"{ip}/32")
        self.state.upstream = ns
        self._save()

    def add_underlay(self, name: str, subnet: str = "192.168.50.0/24") -> UnderlayHandle:
        """A LAN for hosts (``add_host(..., underlay=name)``): a switch and its router.

        The router takes the subnet's first address and, if the lab has an upstream, an
        address there, a default route to it and a MASQUERADE rule for what leaves through
        it, so hosts and anything on the LAN (macvlan/ipvlan containers, subnets routed
        behind a host) reach the "internet".
        """
        check_name("underlay", name)
        with self.locked():
            return self._add_underlay(name, subnet)

    def _add_underlay(self, name: str, subnet: str) -> UnderlayHandle:
        self._check_free(name)
        net = _parse_net(subnet, f"underlay {name}: subnet")
        if net.num_addresses < 8:
            raise InvalidInput(f"underlay {name}: subnet {net} is too small (at least /29)")
        for other in self.state.underlays.values():
            if ipaddress.IPv4Network(other.subnet).overlaps(net):
                raise InvalidInput(f"underlay {name}: subnet {net} overlaps underlay "
                                   f"{other.name} ({other.subnet})")
        if self.state.upstream and net.overlaps(ipaddress.IPv4Network(
                self.state.upstream_subnet)):
            raise InvalidInput(f"underlay {name}: subnet {net} overlaps the upstream "
                               f"{self.state.upstream_subnet}")
        ns = self.ns_name(name)
        model = Underlay(name=name, netns=ns, subnet=str(net),
                         gateway=str(net.network_address + 1), bridge=UNDERLAY_BRIDGE)
        self._make_ns(ns)
        try:
            sysctl.write_many({"net.ipv4.ip_forward": 1}, ns)
            with Netlink(ns) as nl:
                nl.add_bridge(UNDERLAY_BRIDGE)
                nl.add_address(UNDERLAY_BRIDGE, f"{model.gateway}/{net.prefixlen}")
                nl.set_link(UNDERLAY_BRIDGE, up=True)
            if self.state.upstream:
                self._underlay_uplink(model, len(self.state.underlays))
        except BaseException:
            netns.delete(ns)  # the uplink's upstream end goes with its peer
            raise
        self.state.underlays[name] = model
        self._save()
        return UnderlayHandle(self, model)

    def _underlay_uplink(self, model: Underlay, index: int) -> None:
        """The router's way out: a veth into the upstream's switch, a default route, NAT."""
        up_net = ipaddress.IPv4Network(self.state.upstream_subnet)
        model.uplink_ip = str(up_net.broadcast_address - 1 - index)  # .254, .253, ...
        up_end = f"u{index}-{model.name}"[:15]
        fd = netns.open_fd(model.netns)
        try:
            with Netlink(self.upstream_netns) as up:
                up.add_veth(up_end, UNDERLAY_UPLINK, peer_ns_fd=fd, master="wan0", up=True)
        finally:
            os.close(fd)
        with Netlink(model.netns) as nl:
            nl.add_address(UNDERLAY_UPLINK, f"{model.uplink_ip}/{up_net.prefixlen}")
            nl.set_link(UNDERLAY_UPLINK, up=True)
            nl.add_route("default", gateway=UPSTREAM_GW)
        # like an office's edge router: whatever leaves for the internet is masqueraded, the
        # LAN itself and any subnet routed behind a host on it (ipvlan l3)
        nsexec.run(model.netns, ["iptables", "-w", "-t", "nat", "-A", "POSTROUTING", "-o",
                                 UNDERLAY_UPLINK, "-j", "MASQUERADE"])

    def underlay(self, name: str | None = None) -> UnderlayHandle:
        if name is None:
            if len(self.state.underlays) != 1:
                raise InvalidInput(f"lab {self.name} has {len(self.state.underlays)} "
                                   f"underlays: name one")
            return UnderlayHandle(self, next(iter(self.state.underlays.values())))
        try:
            return UnderlayHandle(self, self.state.underlays[name])
        except KeyError:
            raise ObjectNotFound(f"underlay {name} not found in lab {self.name}; underlays: "
                                 f"{', '.join(sorted(self.state.underlays)) or 'none'}") from None

    def underlays(self) -> list[UnderlayHandle]:
        return [UnderlayHandle(self, u) for u in self.state.underlays.values()]

    def add_host(self, name: str = "host", *, default_bridge: bool = True,
                 firewall: str = "iptables", bip: str | None = None,
                 underlay: str | None = None, underlay_ip: str | None = None) -> HostHandle:
        """A Docker host, with ``docker0`` unless told otherwise.

        Without ``underlay`` its ``eth0`` is plugged straight into the upstream (public
        address 203.0.113.10, .11, ...). With ``underlay`` its ``eth0`` is a NIC on that LAN
        (address ``underlay_ip`` or the next of .11, .12, ...), its default route goes via
        the LAN's router, and that address is the host's public address. In a lab whose
        swarm has the ingress network, the new host joins it at once (its ingress sandbox and
        every published port, waited for), as a node joining a swarm does.
        """
        check_name("host", name)
        with self.locked():
            handle = self._add_host(name, default_bridge, firewall, bip, underlay, underlay_ip)
            joined = self._join_ingress()
        if joined:  # the other hosts' agents learn its ingress endpoint, its agent the mesh
            self.converge(timeout=120.0)
            self.converge_mesh(hosts=[name])
        return handle

    def _join_ingress(self) -> bool:
        """A node joining a swarm that has the ingress network gets its ingress sandbox at
        once, and with it every published port (its agent programs them from the store), as
        a Docker node does when it joins; True if it joined one now."""
        if self.cluster is None or self.cluster.network(ingress.INGRESS) is None:
            return False
        joined = bool(self._mesh().join())
        self._sandbox_added()
        return joined

    def adopt_host(self, name: str, ns: str | None = None, *,
                   pid: int | None = None) -> HostHandle:
        """A Docker host in a namespace someone else made (a third-party plugin's), wired to
        the upstream as ``add_host`` wires its own: the namespace named ``ns``, or, with
        ``pid``, that process's (named ``cnm-LAB.NAME`` for the lab's lifetime if unnamed).

        The lab never deletes that namespace nor stops its processes: its state is recorded
        first (``cnmlab.adopted``) and teardown puts it back as it was (the uplink, docker0,
        the firewall rules and ``ip_forward`` go; the plugin and its namespace stay).
        """
        check_name("host", name)
        with self.locked():
            alias = ns is None
            if ns is None:
                if pid is None:
                    raise InvalidInput(f"host {name}: adopt a namespace by name or by pid")
                ns = self.ns_name(name)
                self._check_free(name)
                adopted.record(self.name, adopted.Snapshot(ns, alias=True, taken=False))
                netns.attach(ns, pid)
            elif ns in self.state.namespaces or any(
                    h.netns == ns for h in self.state.hosts.values()):
                raise InvalidInput(f"namespace {ns} already belongs to lab {self.name}")
            if not alias:  # a name the lab gave is recorded already
                adopted.record(self.name, adopted.Snapshot(ns, taken=False))
            adopted.claim(self.name, ns)
            adopted.check_usable(ns)
            adopted.record(self.name, dataclasses.replace(adopted.take(ns), alias=alias))
            return self._add_host(name, True, "iptables", None, None, None, adopt=ns)

    def _add_host(self, name: str, default_bridge: bool, firewall: str, bip: str | None,
                  underlay: str | None, underlay_ip: str | None,
                  adopt: str | None = None) -> HostHandle:
        self._check_free(name)
        if firewall not in ("iptables", "manual"):
            raise InvalidInput(f"host {name}: firewall must be 'iptables' or 'manual'")
        lan = self.underlay(underlay).model if underlay is not None else None
        if underlay_ip is not None and lan is None:
            raise InvalidInput(f"host {name}: underlay_ip needs underlay")
        ns = adopt or self.ns_name(name)
        index = len(self.state.hosts)
        public_ip = None
        if lan is not None:
            public_ip = self._underlay_address(lan, name, underlay_ip)
        elif self.state.upstream:
            net = ipaddress.IPv4Network(self.state.upstream_subnet)
            public_ip = str(net.network_address + 10 + index)
        host = Host(name=name, netns=ns, public_ip=public_ip, firewall=firewall,
                    default_bridge=default_bridge, underlay=lan.name if lan else None,
                    underlay_ip=public_ip if lan else None)
        if adopt is None:
            self._make_ns(ns)
        sysctl.write_many({"net.ipv4.ip_forward": 1}, ns)
        if lan is not None:
            self._plug_into_underlay(host, lan)
        elif public_ip:
            self._uplink(host, index)
        self.state.hosts[name] = host
        self._save()
        handle = HostHandle(self, host)
        self._hosts[name] = handle
        if self.control_plane:
            self._start_agent(host)
            self._save()
            self._wait_agents([name])
        c = handle.controller
        c.create_network("none", "null", predefined=True)
        c.create_network("host", "host", predefined=True)
        if default_bridge:
            c.create_network("bridge", "bridge", subnet=bip or str(DefaultIpam().request_pool(
                "LocalDefault")[1]), options=dict(DEFAULT_BRIDGE_OPTIONS), predefined=True)
        elif firewall == "iptables":
            c.fw.program(host)
        return handle

    def network_create(self, name: str, driver: str, *, subnet: str | None = None,
                       gateway: str | None = None, internal: bool = False,
                       options: dict[str, str] | None = None,
                       hosts: Sequence[str] | None = None) -> Network:
        """A global-scope network (overlay): declared once in the control plane, and each host
        creates its own part from that declaration, as a swarm node does.

        Local-scope drivers make networks per host: use ``host.network_create``.
        """
        if not drivers.capability(driver).global_scope:
            raise InvalidInput(f"network {name}: driver {driver} is local-scope; create it on "
                               f"a host (host.network_create)")
        with self.locked():
            targets = [self.host(h) for h in hosts] if hosts else self.hosts()
            if not targets:
                raise InvalidInput(f"network {name}: lab {self.name} has no hosts yet")
            net = targets[0].controller.create_network(name, driver, subnet=subnet,
                                                       gateway=gateway, internal=internal,
                                                       options=options)
            record = targets[0].controller._global(net).network(name)
            assert record is not None
            for h in targets[1:]:
                h.controller.attach_global_network(record)
        return net

    def network_rm(self, name: str) -> None:
        """Remove a global network from every host and from the control plane; refused
        while any host still has an endpoint on it (the store's peers say so)."""
        with self.locked():
            self._network_rm(name)

    def _network_rm(self, name: str) -> None:
        if self.cluster is None or (record := self.cluster.network(name)) is None:
            raise ObjectNotFound(f"network {name} not found in lab {self.name}'s control plane")
        busy = sorted({p.host for p in self.cluster.peers(record.id)})
        if busy:
            raise ActiveEndpoints(f"error while removing network: network {name} id "
                                  f"{record.id[:12]} has active endpoints (on {', '.join(busy)})")
        for h in self.hosts():
            h.controller.detach_global_network(name)
        drv = drivers.get(record.driver)
        if isinstance(drv, GlobalAllocator):
            probe = Network(id=record.id, name=record.name, driver=record.driver,
                            options=dict(record.options))
            drv.network_free(self.cluster, probe)
        self.cluster.withdraw_network(record)

    @staticmethod
    def _underlay_address(lan: Underlay, host: str, wanted: str | None) -> str:
        net = ipaddress.IPv4Network(lan.subnet)
        taken = {lan.gateway, *lan.hosts.values()}
        if wanted is not None:
            try:
                addr = ipaddress.IPv4Address(wanted)
            except ValueError:
                raise InvalidInput(f"host {host}: underlay_ip {wanted!r} is not an IPv4 "
                                   f"address") from None
            if addr not in net or addr in (net.network_address, net.broadcast_address):
                raise InvalidInput(f"host {host}: underlay_ip {addr} is not a host address of "
                                   f"underlay {lan.name} ({lan.subnet})")
            if str(addr) in taken:
                raise ObjectExists(f"host {host}: underlay_ip {addr} is already used on "
                                   f"underlay {lan.name}")
            return str(addr)
        n = UNDERLAY_HOST_BASE
        while str(net.network_address + n) in taken:
            n += 1
        addr = net.network_address + n
        if addr >= net.broadcast_address:
            raise InvalidInput(f"underlay {lan.name} ({lan.subnet}) has no address left for "
                               f"host {host}")
        return str(addr)

    def _plug_into_underlay(self, host: Host, lan: Underlay) -> None:
        """A NIC for the host: ``eth0`` in the host, its other end a port of the LAN's switch."""
        assert host.public_ip
        prefix = ipaddress.IPv4Network(lan.subnet).prefixlen
        port = f"p{len(lan.ports)}-{host.name}"[:15]
        fd = netns.open_fd(host.netns)
        try:
            with Netlink(lan.netns) as sw:
                sw.add_veth(port, "eth0", peer_ns_fd=fd, master=lan.bridge, up=True)
        finally:
            os.close(fd)
        with Netlink(host.netns) as nl:
            nl.add_address("eth0", f"{host.public_ip}/{prefix}")
            nl.set_link("eth0", up=True)
            nl.add_route("default", gateway=lan.gateway)
        lan.hosts[host.name] = host.public_ip
        lan.ports[host.name] = port

    def _uplink(self, host: Host, index: int) -> None:
        prefix = ipaddress.IPv4Network(self.state.upstream_subnet).prefixlen
        up_end = f"h{index}-{host.name}"[:15]
        fd = netns.open_fd(host.netns)
        try:
            with Netlink(self.upstream_netns) as up:
                up.add_veth(up_end, "eth0", peer_ns_fd=fd)
                up.set_link(up_end, master="wan0", up=True)
        finally:
            os.close(fd)
        with Netlink(host.netns) as nl:
            nl.add_address("eth0", f"{host.public_ip}/{prefix}")
            nl.set_link("eth0", up=True)
            nl.add_route("default", gateway=UPSTREAM_GW)

    def host(self, name: str | None = None) -> HostHandle:
        if name is None:
            if len(self._hosts) != 1:
                raise InvalidInput(f"lab {self.name} has {len(self._hosts)} hosts: name one")
            return next(iter(self._hosts.values()))
        try:
            return self._hosts[name]
        except KeyError:
            raise ObjectNotFound(f"host {name} not found in lab {self.name}") from None

    def hosts(self) -> list[HostHandle]:
        return list(self._hosts.values())

    def sandbox(self, name: str) -> SandboxHandle:
        for h in self._hosts.values():
            if name in h.model.sandboxes:
                return h.sandbox(name)
        raise ObjectNotFound(f"sandbox {name} not found in lab {self.name}")

    def sandboxes(self) -> Iterator[SandboxHandle]:
        for h in self._hosts.values():
            yield from h.sandboxes()

    def netns_of(self, name: str) -> str:
        """The namespace of a host, sandbox, underlay (its router) or ``upstream`` by name."""
        if name == UPSTREAM:
            return self.upstream_netns
        if name in self._hosts:
            return self._hosts[name].netns
        if name in self.state.underlays:
            return self.state.underlays[name].netns
        if "@" in name:  # NETWORK@HOST: a network's own namespace on a host (overlay)
            net_name, host = name.split("@", 1)
            net = self.host(host).controller.network(net_name)
            if not net.netns:
                raise ObjectNotFound(f"network {net_name} on host {host} has no namespace of "
                                     f"its own (its devices are in the host's)")
            return net.netns
        return self.sandbox(name).netns

    def _sandbox_added(self) -> None:
        n = sum(len(h.sandboxes) for h in self.state.hosts.values())
        if n >= 24 and n % 16 == 0:
            neigh.reserve(f"lab:{self.name}", neigh.entries_for(n + 16),
                          alive_while=state.files(self.name))

    # ---- teardown ----------------------------------------------------------------------
    def close(self) -> None:
        """Forget the lab in this process (netlink sockets) without tearing it down."""
        for h in self._hosts.values():
            h.controller.close()

    def down(self) -> None:
        self.close()
        if self.cluster is not None and hasattr(self.cluster.store, "close"):
            self.cluster.store.close()
        teardown(self.name, self.state)


def teardown(name: str, lab_state: LabState | None) -> list[str]:
    """Remove a lab's namespaces (processes first), its /etc/netns files and its state."""
    removed = []
    with state.locked(name):
        # what this process knows plus what any other process logged for the same lab
        known = list(lab_state.namespaces if lab_state else [])
        known += [ns for ns in state.recorded_namespaces(name) if ns not in known]
        namespaces = list(reversed(known))
        if lab_state is not None:
            controlplane.stop_all(lab_state)  # agents by their recorded pids, wherever they are
            controlplane.withdraw_hosts(lab_state)  # an external store outlives the lab
        netns.kill_processes(*namespaces)  # port proxies and resolvers live in them
        for ns in namespaces:
            if netns.delete(ns):
                removed.append(ns)
            etcfiles.remove(ns)
            proxy.forget(ns)
        for snap in adopted.recorded(name):  # borrowed: put back as found, never deleted
            if lab_state is not None:
                _unpublish_borrowed(lab_state, snap.netns)
            adopted.restore(snap)
            adopted.forget(name, snap)
        neigh.release(f"lab:{name}")
        state.remove(name)
    return removed


def _unpublish_borrowed(lab_state: LabState, ns: str) -> None:
    """The ports the lab's hosts published through the port proxy of a namespace it borrowed
    (the proxy is the namespace's, shared with whoever else publishes there: only ours go)."""
    ours = {key for h in lab_state.hosts.values() if h.netns == ns for key in h.proxies}
    if not ours:
        return
    for m in proxy.published(ns):
        if f"{m.get('proto')}/{m.get('host_port')}" in ours:
            proxy.unpublish(ns, str(m["proto"]), str(m["host_ip"]), int(m["host_port"]))


def running() -> list[str]:
    return state.names()


def resolve(target: str) -> tuple[str, str]:
    """(lab, namespace) of ``LAB/NAME`` or a bare ``NAME`` (a sandbox, host or ``upstream`` of
    a running lab): how the CLI's ``exec``/``shell`` and a plugin's ``--netns`` name a place."""
    if "/" in target:
        lab_name, name = target.split("/", 1)
        return lab_name, Lab.open(lab_name).netns_of(name)
    found = []
    for lab_name in state.names():
        try:
            lab = Lab.open(lab_name)
        except CnmError:
            continue  # removed meanwhile, or another version's lab: it cannot hold ours
        try:
            found.append((lab_name, lab.netns_of(target)))
        except CnmError:
            pass
        finally:
            lab.close()
    if not found:
        raise ObjectNotFound(f"no sandbox or host named {target!r} in a running lab "
                             f"(see 'cnmlab ls')")
    if len(found) > 1:
        raise InvalidInput(f"{target!r} is in several labs ({', '.join(f[0] for f in found)}): "
                           f"write LAB/{target}")
    return found[0]
