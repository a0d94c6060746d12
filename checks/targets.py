"""Targets: where the sandboxes a check probes are, whoever built them.

Three kinds, all in the ``api.Target`` shape:

- ``EngineTarget(lab)``: a running cnmlab lab (a ``Lab`` or its name), read from the engine's
  model. Every check kind applies.
- ``ManifestTarget(path)``: a YAML manifest naming hand-built namespaces (for instructor
  grading), plus the checks that say how they must behave.
- ``DockerAdapter(docker_target, public_ip=...)``: real Docker, through
  ``cnmlab.checks.docker_target.DockerTarget``; containers are entered by PID.

``make_target(kind, arg)`` builds one by name, for the CLI and the pytest plugin.
"""
from __future__ import annotations

import ipaddress
import os
from collections.abc import Callable
from typing import Any

from cnmlab.constants import OPT_ICC, UPSTREAM_WEB
from cnmlab.checks.api import HostRef, SandboxRef, Target, parse_spec
from cnmlab.checks.nsref import NsRef
from cnmlab.errors import CnmError, InvalidInput

UPSTREAM = "upstream"
UPSTREAM_NET = "internet"       # the network name under which the upstream's address is listed

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
                    "internal": n.internal, "driver": n.driver})
        return out


# ---------------------------------------------------------------------------------------------
# a manifest of hand-built namespaces

_TOP = {"name", "sandboxes", "hosts", "upstream", "checks", "profile"}
_NS_KEYS = ("netns", "pid", "path")


def _ipv4(src: Any, where: tuple[Any, ...], value: Any) -> str:
    try:
        return str(ipaddress.IPv4Address(str(value)))
    except ValueError:
        raise src.error(where, f"{value!r} is not an IPv4 address") from None


def _nsref(src: Any, where: tuple[Any, ...], spec: dict[str, Any]) -> NsRef:
    given = [k for k in _NS_KEYS if k in spec]
    if len(given) != 1:
        raise src.error(where + tuple(given[1:2]),
                        "give exactly one of netns: NAME, pid: N or path: P"
                        + (f" (got {', '.join(given)})" if given else ""))
    key = given[0]
    value = spec[key]
    if key == "pid":
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise src.error(where + ("pid",), f"{value!r} is not a process id")
        return NsRef(pid=value)
    if not isinstance(value, str) or not value:
        raise src.error(where + (key,), f"{value!r} is not a {'path' if key == 'path' else 'name'}")
    if key == "path":
        if not value.startswith("/"):
            raise src.error(where + ("path",), f"{value!r} must be an absolute path")
        return NsRef(path=value)
    if "/" in value:
        raise src.error(where + ("netns",), f"{value!r}: a netns name has no '/' (use path:)")
    return NsRef(name=value)


def _mapping(src: Any, where: tuple[Any, ...], value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise src.error(where, f"must be a mapping of {what}")
    return value


def _unknown(src: Any, where: tuple[Any, ...], spec: dict[str, Any], known: set[str]) -> None:
    for k in spec:
        if k not in known:
            raise src.error(where + (k,), f"unknown field; known: {', '.join(sorted(known))}")


class ManifestTarget:
    """Hand-built namespaces described in YAML::

        name: alice
        sandboxes:
          web: {netns: web, addresses: {front: 10.0.0.2}, host: h1}
          db:  {pid: 4242, addresses: {front: 10.0.0.3}}
        hosts:
          h1: {netns: h1, public_ip: 203.0.113.10}
        upstream: {netns: inet, ip: 198.51.100.10}     # optional
        checks:
          - reachable: {from: web, to: db}
        profile: [reachable, isolated]                  # optional: kinds that apply

    Every error names the file, the line and the field.
    """

    def __init__(self, path: str) -> None:
        from cnmlab import yamlsrc

        self.path = path
        src = yamlsrc.load(path)
        data = src.data
        if not isinstance(data, dict):
            raise src.error((), "a manifest is a mapping with sandboxes:, hosts:, checks:")
        _unknown(src, (), data, _TOP)
        self.name = str(data.get("name") or os.path.splitext(os.path.basename(path))[0])
        self._hosts: dict[str, HostRef] = {}
        for hname, spec in _mapping(src, ("hosts",), data.get("hosts") or {}, "hosts").items():
            where = ("hosts", hname)
            spec = _mapping(src, where, spec, "fields")
            _unknown(src, where, spec, {*_NS_KEYS, "public_ip"})
            public = spec.get("public_ip")
            self._hosts[str(hname)] = HostRef(
                str(hname), _nsref(src, where, spec),
                _ipv4(src, where + ("public_ip",), public) if public is not None else None)
        self._sandboxes: dict[str, SandboxRef] = {}
        sbs = _mapping(src, ("sandboxes",), data.get("sandboxes") or {}, "sandboxes")
        for sname, spec in sbs.items():
            where = ("sandboxes", sname)
            spec = _mapping(src, where, spec, "fields")
            _unknown(src, where, spec, {*_NS_KEYS, "addresses", "host"})
            addrs = _mapping(src, where + ("addresses",), spec.get("addresses") or {},
                             "network: IPv4")
            host = spec.get("host")
            if host is None and len(self._hosts) == 1:
                host = next(iter(self._hosts))
            if host is not None and str(host) not in self._hosts:
                raise src.error(where + ("host",), f"no host {host!r} in hosts:")
            self._sandboxes[str(sname)] = SandboxRef(
                str(sname), _nsref(src, where, spec),
                {str(n): _ipv4(src, where + ("addresses", n), ip) for n, ip in addrs.items()},
                str(host) if host is not None else None)
        self._upstream: SandboxRef | None = None
        if data.get("upstream") is not None:
            spec = _mapping(src, ("upstream",), data["upstream"], "fields")
            _unknown(src, ("upstream",), spec, {*_NS_KEYS, "ip"})
            ip = _ipv4(src, ("upstream", "ip"), spec.get("ip", UPSTREAM_WEB))
            self._upstream = SandboxRef(UPSTREAM, _nsref(src, ("upstream",), spec),
                                        {UPSTREAM_NET: ip})
        profile = data.get("profile") or []
        if not isinstance(profile, list):
            raise src.error(("profile",), "must be a list of check kinds")
        from cnmlab.checks import api, library

        for i, kind in enumerate(profile):
            if kind not in api.kinds():
                raise src.error(("profile", i), f"unknown check {kind!r}")
        self.profile: frozenset[str] = frozenset(profile)
        checks = data.get("checks") or []
        if not isinstance(checks, list):
            raise src.error(("checks",), "must be a list of checks ({kind: {params}})")
        self.checks: list[dict[str, Any]] = []
        for i, spec in enumerate(checks):
            try:
                kind, params = parse_spec(spec)
            except InvalidInput as e:
                raise src.error(("checks", i), str(e)) from None
            try:
                library.validate(kind, params)
            except InvalidInput as e:
                field = getattr(e, "param", None)
                where = ("checks", i, kind) + ((field,) if field else ())
                raise src.error(where, str(e)) from None
            self.checks.append({kind: params})

    def sandboxes(self) -> dict[str, SandboxRef]:
        return dict(self._sandboxes)

    def hosts(self) -> dict[str, HostRef]:
        return dict(self._hosts)

    def upstream(self) -> SandboxRef | None:
        return self._upstream


# ---------------------------------------------------------------------------------------------
# real Docker


def uplink_address(ns_path: str) -> str | None:
    """The IPv4 address of the interface that carries the default route in a namespace."""
    from cnmlab.netlink import Netlink

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


# ---------------------------------------------------------------------------------------------
# the registry


def _engine(arg: str) -> Target:
    return EngineTarget(arg)


def _manifest(arg: str) -> Target:
    return ManifestTarget(arg)


def _docker(arg: str) -> Target:
    from cnmlab.checks.docker_target import DockerTarget

    sock = arg
    if os.path.isdir(arg):
        sock = os.path.join(arg, "docker.sock")
    return DockerAdapter(DockerTarget(sock))


TARGETS: dict[str, Callable[[str], Target]] = {
    "engine": _engine,
    "manifest": _manifest,
    "docker": _docker,
}


def make_target(kind: str, arg: str) -> Target:
    """A target by kind: ``engine`` (lab name), ``manifest`` (path), ``docker`` (socket/workdir)."""
    try:
        factory = TARGETS[kind]
    except KeyError:
        raise CnmError(f"unknown target {kind!r}; known: {', '.join(sorted(TARGETS))}") from None
    return factory(arg)
