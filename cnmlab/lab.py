"""The Python API: a lab is hosts on an upstream "internet", each running Docker-like networks.

    with Lab("demo") as lab:
        host = lab.add_host("host1")
        host.network_create("backend", subnet="10.10.0.0/24")
        web = host.run("web", network="backend", publish=["8080:80/tcp"])
        db = host.run("db", network="backend")
        print(web.ip(), lab.upstream_ip)

Every namespace is named ``cnm-<lab>.<name>`` and recorded in the lab's state file before it is
created; everything else lives inside those namespaces. ``down()`` (or leaving the ``with``)
removes exactly that, and so does ``cnmlab clean`` after a crash.

Several processes may act on one lab at once (the workshop app, a learner's CLI, a test): every
change runs under the lab's lock with the model reloaded first if another process saved a newer
one (``Lab.locked``), so no change is lost and IPAM never hands out an address twice.
"""
from __future__ import annotations

import contextlib
import ipaddress
import os
import re
import subprocess
from collections.abc import Iterator, Sequence
from typing import Any

from cnmlab import dns, drivers, proxy, state
from cnmlab.cluster import Cluster
from cnmlab.constants import (DEFAULT_BRIDGE_OPTIONS, NS_PREFIX, NS_SEP, OPT_BRIDGE_NAME,
                              OPT_ICC, OPT_MASQUERADE, OPT_MTU, UPSTREAM, UPSTREAM_GW,
                              UPSTREAM_SERVICES)
from cnmlab.controller import Controller, remove_etc, setup_namespace
from cnmlab.errors import (CnmError, InvalidInput, IpamError, NotRootError, ObjectExists,
                           ObjectNotFound)
from cnmlab.ipam import DefaultIpam
from cnmlab.kernel import neigh, netns, nsexec, sysctl
from cnmlab.kernel.netlink import Netlink
from cnmlab.model import Endpoint, Host, LabState, Network, PortMapping, Sandbox

OBJ_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,38}$")
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
            publish: Sequence[str] = (), aliases: Sequence[str] = ()) -> SandboxHandle:
        """``docker run --network NETWORK``: a sandbox, an endpoint, a join."""
        check_name("sandbox", name)
        ports = [parse_port(p) for p in publish]
        with self.lab.locked():
            self.lab._check_free(name)
            net = self.controller.network(network)
            shares_host = not drivers.capability(net.driver).own_namespace
            sb = self.controller.create_sandbox(name, shares_host=shares_host)
            try:
                self.controller.connect(network, name, ip=ip, aliases=list(aliases), ports=ports)
            except BaseException:
                self.controller.delete_sandbox(name)
                raise
            self.lab._sandbox_added()
            self.lab._serve_dns()
        return SandboxHandle(self, sb)

    def connect(self, network: str, sandbox: str, ip: str | None = None,
                aliases: Sequence[str] = ()) -> Endpoint:
        with self.lab.locked():
            ep = self.controller.connect(network, sandbox, ip=ip, aliases=list(aliases))
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


class Lab:
    """A running lab. ``Lab(name)`` creates it; ``Lab.open(name)`` attaches to a running one."""

    def __init__(self, name: str, *, upstream: bool = True, cluster: Cluster | None = None,
                 _state: LabState | None = None, _stamp: state.Stamp | None = None) -> None:
        if os.geteuid() != 0:
            raise NotRootError("cnmlab needs root to create namespaces: run it with sudo")
        self.cluster = cluster  # the control plane for global-scope networks, if any
        self._hosts: dict[str, HostHandle] = {}
        self._batch = 0
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
        return cls(name, cluster=cluster, _state=state.load(name), _stamp=stamp)

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
                yield self
            finally:
                self._batch -= 1
                if not self._batch and self._dirty:
                    self._dirty = False
                    self._write()
                    self._serve_dns()

    def _serve_dns(self) -> None:
        """Docker's embedded DNS (127.0.0.11) for sandboxes on user-defined networks.

        The resolver follows the saved state, so inside a batch it is told once, at the end.
        """
        if self._batch or not dns.wants_dns(self.state):
            return
        dns.ensure_running(self.name, self.state)
        self._write()

    def _check_free(self, name: str) -> None:
        if name == UPSTREAM or name in self.state.hosts or any(
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

    def add_host(self, name: str = "host", *, default_bridge: bool = True,
                 firewall: str = "iptables", bip: str | None = None) -> HostHandle:
        """A Docker host on the upstream network, with ``docker0`` unless told otherwise."""
        check_name("host", name)
        with self.locked():
            return self._add_host(name, default_bridge, firewall, bip)

    def _add_host(self, name: str, default_bridge: bool, firewall: str,
                  bip: str | None) -> HostHandle:
        self._check_free(name)
        if firewall not in ("iptables", "manual"):
            raise InvalidInput(f"host {name}: firewall must be 'iptables' or 'manual'")
        ns = self.ns_name(name)
        index = len(self.state.hosts)
        public_ip = None
        if self.state.upstream:
            net = ipaddress.IPv4Network(self.state.upstream_subnet)
            public_ip = str(net.network_address + 10 + index)
        host = Host(name=name, netns=ns, public_ip=public_ip, firewall=firewall,
                    default_bridge=default_bridge)
        self._make_ns(ns)
        sysctl.write_many({"net.ipv4.ip_forward": 1}, ns)
        if public_ip:
            self._uplink(host, index)
        self.state.hosts[name] = host
        self._save()
        handle = HostHandle(self, host)
        self._hosts[name] = handle
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
        """The namespace of a host, sandbox or ``upstream`` by its lab name."""
        if name == UPSTREAM:
            return self.upstream_netns
        if name in self._hosts:
            return self._hosts[name].netns
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
        teardown(self.name, self.state)


def teardown(name: str, lab_state: LabState | None) -> list[str]:
    """Remove a lab's namespaces (processes first), its /etc/netns files and its state."""
    removed = []
    with state.locked(name):
        # what this process knows plus what any other process logged for the same lab
        known = list(lab_state.namespaces if lab_state else [])
        known += [ns for ns in state.recorded_namespaces(name) if ns not in known]
        namespaces = list(reversed(known))
        netns.kill_processes(*namespaces)  # port proxies and resolvers live in them
        for ns in namespaces:
            if netns.delete(ns):
                removed.append(ns)
            remove_etc(ns)
            proxy.forget(ns)
        neigh.release(f"lab:{name}")
        state.remove(name)
    return removed


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
