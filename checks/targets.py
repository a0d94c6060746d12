"""Targets: where the sandboxes a check probes are, whoever built them.

Three kinds, all in the ``api.Target`` shape:

- ``EngineTarget(lab)``: a running cnmlab lab (a ``Lab`` or its name), read from the engine's
  model. Every check kind applies.
- ``SubmissionTarget(path)`` (``cnmlab.checks.submission``): a learner's YAML submission
  naming hand-built namespaces (for instructor grading; what is checked comes from the
  instructor's assignment, never from this file).
- ``DockerAdapter(docker_target, public_ip=...)``: real Docker, through
  ``cnmlab.checks.docker_target.DockerTarget``; containers are entered by PID.

``make_target(kind, arg)`` builds one by name, for the CLI and the pytest plugin (``manifest``
and ``submission`` are the same kind).
"""
from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from cnmlab.constants import OPT_ICC
from cnmlab.checks.api import UPSTREAM, UPSTREAM_NET, UPSTREAM_WEB, HostRef, SandboxRef, Target
from cnmlab.checks.nsref import NsRef
from cnmlab.checks.submission import SubmissionTarget
from cnmlab.errors import CnmError

__all__ = ["UPSTREAM", "UPSTREAM_NET", "UPSTREAM_WEB", "UNDERLAY_NET", "EngineTarget",
           "SubmissionTarget", "DockerAdapter", "DockerHosts", "make_target", "uplink_address"]
UNDERLAY_NET = "underlay"  # the network name under which an underlay router's address is listed

# (sandbox, host, host port, container port, proto): what a target says it published
Published = tuple[str, str, int, int, str]


# ---------------------------------------------------------------------------------------------
# the cnmlab engine


class EngineTarget:
    """A running cnmlab lab as a check target (all check kinds apply).

    Given a ``Lab``, it reads that object's live model; given a lab name, it re-reads the lab's
    state file on every question, so changes made by another process (the TUI, a solve step)
    are seen. It opens no sockets of its own.
    """

    def __init__(self, lab: Any, profile: frozenset[str] | None = None) -> None:
        from cnmlab import state

        self._lab = None if isinstance(lab, str) else lab
        self.lab_name: str = lab if isinstance(lab, str) else lab.name
        if self._lab is None:
            state.load(self.lab_name)  # fail now, with the state module's message
        self.name = f"cnmlab lab {self.lab_name}"
        self.profile: frozenset[str] = frozenset(profile or ())

    def _state(self) -> Any:
        from cnmlab import state

        return self._lab.state if self._lab is not None else state.load(self.lab_name)

    def sandboxes(self) -> dict[str, SandboxRef]:
        out: dict[str, SandboxRef] = {}
        for hname, host in self._state().hosts.items():
            for sb in host.sandboxes.values():
                addrs: dict[str, str] = {}
                for ref in sb.endpoints:
                    net = host.networks.get(ref.network)
                    ep = net.endpoints.get(ref.endpoint) if net else None
                    if ep and ep.ip:
                        addrs[ref.network] = ep.ip.split("/")[0]
                ns = sb.netns or host.netns  # host driver: the host's own namespace
                if sb.netns is None and host.public_ip and not addrs:
                    addrs["host"] = host.public_ip
                out[sb.name] = SandboxRef(sb.name, NsRef(name=ns), addrs, hname)
        return out

    def hosts(self) -> dict[str, HostRef]:
        return {h.name: HostRef(h.name, NsRef(name=h.netns), h.public_ip)
                for h in self._state().hosts.values()}

    def upstream(self) -> SandboxRef | None:
        ns = self._state().upstream
        if not ns:
            return None
        return SandboxRef(UPSTREAM, NsRef(name=ns), {UPSTREAM_NET: UPSTREAM_WEB})

    def underlays(self) -> dict[str, SandboxRef]:
        """Each underlay's router (``underlay:NAME`` in checks), at its gateway address."""
        return {u.name: SandboxRef(f"underlay:{u.name}", NsRef(name=u.netns),
                                   {UNDERLAY_NET: u.gateway})
                for u in self._state().underlays.values()}

    def network_namespaces(self) -> dict[str, SandboxRef]:
        """``NETWORK@HOST``: the namespace a network keeps its devices in on a host (overlay's
        br0 and vxlan0), where it has one."""
        return {f"{n.name}@{h.name}": SandboxRef(f"{n.name}@{h.name}", NsRef(name=n.netns),
                                                 {n.name: (n.gateway or "").split("/")[0]},
                                                 h.name)
                for h in self._state().hosts.values() for n in h.networks.values() if n.netns}

    def published(self) -> list[Published]:
        out = []
        for h in self._state().hosts.values():
            for net in h.networks.values():
                for ep in net.endpoints.values():
                    for p in ep.ports:
                        out.append((ep.sandbox or ep.name, h.name, p.host_port,
                                    p.container_port, p.proto))
        return out

    def networks(self) -> dict[str, dict[str, Any]]:
        """network name -> {"host", "device", "subnet", "gateway", "icc", "internal"} (hints)."""
        out: dict[str, dict[str, Any]] = {}
        for h in self._state().hosts.values():
            for n in h.networks.values():
                out.setdefault(n.name, {
                    "host": h.name, "device": n.device, "subnet": n.subnet,
                    "gateway": (n.gateway or "").split("/")[0] or None,
                    "icc": n.option_bool(OPT_ICC, True),
                    "internal": n.internal, "driver": n.driver,
                    # a network stacked on a parent link (macvlan, ipvlan): for hints
                    "parent": n.driver_data.get("parent"), "mode": n.driver_data.get("mode"),
                    "vni": _vni(n.options)})
        return out


def _vni(options: dict[str, Any]) -> int | None:
    raw = str(options.get("com.docker.network.driver.overlay.vxlanid_list") or "")
    return int(raw.split(",")[0]) if raw.split(",")[0].isdigit() else None


# ---------------------------------------------------------------------------------------------
# real Docker


def uplink_address(ns_path: str) -> str | None:
    """The IPv4 address of the interface that carries the default route in a namespace."""
    from cnmlab.kernel.netlink import Netlink

    ref = NsRef.of(ns_path)
    with ref.opened() as fd:
        nl = Netlink(fd=fd)
    try:
        dev = next((r.dev for r in nl.routes() if r.dst == "default"), None)
        if dev is None:
            return None
        for link in nl.links():
            if link.name == dev and link.addresses:
                return link.addresses[0].split("/")[0]
    finally:
        nl.close()
    return None


class DockerAdapter:
    """``DockerTarget`` (the Engine API) in the ``api.Target`` shape.

    Containers are entered by PID; the Docker host is one ``HostRef`` named ``docker`` on the
    daemon's network namespace, whose public address (where published ports answer) is
    ``public_ip`` or, if not given, the address of its default-route interface.
    """

    HOST = "docker"

    def __init__(self, docker: Any, public_ip: str | None = None,
                 upstream: SandboxRef | None = None,
                 profile: frozenset[str] | None = None) -> None:
        self.docker = docker
        self.name = f"docker at {getattr(docker, 'socket_path', docker)}"
        self._public_ip = public_ip
        self._upstream = upstream
        self.profile: frozenset[str] = frozenset(profile or ())

    def _host_ns(self) -> str:
        path = getattr(self.docker, "host_netns_path", None)
        if not path:
            raise CnmError(f"{self.name}: the Docker host's network namespace is unknown "
                           "(give host_netns_path to DockerTarget)")
        return path

    def sandboxes(self) -> dict[str, SandboxRef]:
        out = {}
        for name, sb in self.docker.sandboxes().items():
            pid = getattr(sb, "pid", None)
            ns = NsRef(pid=pid) if pid else NsRef(path=sb.netns_path)
            out[name] = SandboxRef(name, ns, dict(sb.addresses), self.HOST)
        return out

    def hosts(self) -> dict[str, HostRef]:
        path = self._host_ns()
        ip = self._public_ip
        if ip is None:
            ip = self._public_ip = uplink_address(path)
        return {self.HOST: HostRef(self.HOST, NsRef(path=path), ip)}

    def upstream(self) -> SandboxRef | None:
        return self._upstream

    def published(self) -> list[Published]:
        return [(c, self.HOST, hp, cp, proto) for c, hp, cp, proto in self.docker.published()]

    def networks(self) -> dict[str, dict[str, Any]]:
        out = {}
        for name, n in self.docker.networks().items():
            out[name] = {"host": self.HOST, "device": n.bridge, "subnet": n.subnet,
                         "gateway": n.gateway, "internal": n.internal, "driver": n.driver,
                         "icc": str(n.options.get(OPT_ICC,
                                                  "true")).lower() != "false"}
        return out


class DockerHosts:
    """Several Docker hosts, one dockerd each, judged as one target (macvlan across a LAN).

    Each ``DockerAdapter`` answers for its own daemon; here its sandboxes carry the host's
    name, and the lab that holds the hosts lends its upstream and its underlay routers.
    """

    def __init__(self, adapters: dict[str, DockerAdapter], upstream: SandboxRef | None = None,
                 underlays: dict[str, SandboxRef] | None = None,
                 profile: frozenset[str] | None = None) -> None:
        self.adapters = adapters
        self.name = "docker on " + ", ".join(adapters)
        self._upstream = upstream
        self._underlays = dict(underlays or {})
        self.profile: frozenset[str] = frozenset(profile or ())

    def sandboxes(self) -> dict[str, SandboxRef]:
        out: dict[str, SandboxRef] = {}
        for host, a in self.adapters.items():
            for name, ref in a.sandboxes().items():
                out[name] = SandboxRef(name, ref.ns, ref.addresses, host)
        return out

    def hosts(self) -> dict[str, HostRef]:
        out = {}
        for host, a in self.adapters.items():
            ref = a.hosts()[DockerAdapter.HOST]
            out[host] = HostRef(host, ref.ns, ref.public_ip)
        return out

    def upstream(self) -> SandboxRef | None:
        return self._upstream

    def underlays(self) -> dict[str, SandboxRef]:
        return dict(self._underlays)

    def published(self) -> list[Published]:
        return [(c, host, hp, cp, proto) for host, a in self.adapters.items()
                for c, _h, hp, cp, proto in a.published()]

    def networks(self) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        for host, a in self.adapters.items():
            for name, info in a.networks().items():
                out.setdefault(name, {**info, "host": host})
        return out


class LabDockerTarget:
    """A lab whose host runs real dockerd: the lab's hosts and upstream from the engine, the
    containers, networks and published ports from Docker's API (containers entered by PID).

    Lab 10 ("write your own driver") is checked this way: Docker calls the learner's plugin,
    and the checks probe what Docker built with it.
    """

    def __init__(self, lab: Any, host: str, socket_path: str) -> None:
        from cnmlab.checks.docker_target import DockerTarget

        self.engine = EngineTarget(lab)
        self.host = host
        ns = self.engine.hosts()[host].ns
        self.docker = DockerAdapter(DockerTarget(socket_path, host_netns_path=ns.fspath),
                                    upstream=self.engine.upstream())
        self.name = f"lab {self.engine.lab_name} (dockerd in host {host})"
        self.profile: frozenset[str] = frozenset()

    def sandboxes(self) -> dict[str, SandboxRef]:
        out = self.engine.sandboxes()
        for name, ref in self.docker.sandboxes().items():
            out[name] = SandboxRef(name, ref.ns, ref.addresses, self.host)
        return out

    def hosts(self) -> dict[str, HostRef]:
        return self.engine.hosts()

    def upstream(self) -> SandboxRef | None:
        return self.engine.upstream()

    def underlays(self) -> dict[str, SandboxRef]:
        return self.engine.underlays()

    def published(self) -> list[Published]:
        return [(c, self.host, hp, cp, proto) for c, _h, hp, cp, proto in self.docker.published()]

    def networks(self) -> dict[str, dict[str, Any]]:
        out = self.engine.networks()
        for name, n in self.docker.networks().items():
            out[name] = {**n, "host": self.host}
        return out


# ---------------------------------------------------------------------------------------------
# the registry


def _engine(arg: str) -> Target:
    return EngineTarget(arg)


def _submission(arg: str) -> Target:
    return SubmissionTarget(arg)


def _docker(arg: str) -> Target:
    from cnmlab.checks.docker_target import DockerTarget

    sock = arg
    if os.path.isdir(arg):
        sock = os.path.join(arg, "docker.sock")
    return DockerAdapter(DockerTarget(sock))


TARGETS: dict[str, Callable[[str], Target]] = {
    "engine": _engine,
    "manifest": _submission,
    "submission": _submission,
    "docker": _docker,
}


def make_target(kind: str, arg: str) -> Target:
    """A target by kind: ``engine`` (lab name), ``manifest`` (path), ``docker`` (socket/workdir)."""
    try:
        factory = TARGETS[kind]
    except KeyError:
        raise CnmError(f"unknown target {kind!r}; known: {', '.join(sorted(TARGETS))}") from None
    return factory(arg)
