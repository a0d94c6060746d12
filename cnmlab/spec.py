"""Topology files: the YAML that ``cnmlab up FILE`` builds.

    name: demo
    underlays:                     # optional: a LAN the hosts share (switch + router .1)
      lan: {subnet: 192.168.50.0/24, routes: [{subnet: 10.50.0.0/24, via: host1}]}
    hosts:
      host1:
        underlay: lan              # eth0 on the LAN (192.168.50.11) instead of the upstream
        networks:
          backend: {subnet: 10.10.0.0/24, icc: false}
        sandboxes:
          web: {networks: [backend], publish: ["8080:80/tcp"]}
          db:  {networks: {backend: {ip: 10.10.0.50, aliases: [database]}}}

Everything is checked before anything is built, and errors name the file, line and field.
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Any

from cnmlab import drivers, yamlsrc
from cnmlab.errors import CnmError, InvalidInput
from cnmlab.lab import Lab, check_name, parse_port
from cnmlab.netlink import IFNAMSIZ
from cnmlab.yamlsrc import Source

NETWORK_KEYS = {"driver", "subnet", "gateway", "ip_range", "internal", "icc", "masquerade",
                "mtu", "bridge_name", "options"}
SANDBOX_KEYS = {"network", "networks", "publish", "ip", "aliases"}
HOST_KEYS = {"default_bridge", "bip", "firewall", "networks", "sandboxes", "underlay",
             "underlay_ip"}
UNDERLAY_KEYS = {"subnet", "routes"}


@dataclass
class SandboxSpec:
    name: str
    networks: list[tuple[str, dict[str, Any]]]
    publish: list[str]
    where: tuple[Any, ...]


@dataclass
class HostSpec:
    name: str
    options: dict[str, Any]
    networks: dict[str, dict[str, Any]] = field(default_factory=dict)
    sandboxes: list[SandboxSpec] = field(default_factory=list)


@dataclass
class UnderlaySpec:
    name: str
    subnet: str
    routes: list[tuple[str, str]]  # (subnet, via: a host name or an address)
    where: tuple[Any, ...]


@dataclass
class Topology:
    name: str
    hosts: list[HostSpec]
    source: Source
    underlays: list[UnderlaySpec] = field(default_factory=list)
    # global-scope networks (overlay), declared once for every host, and the control plane
    # that holds them: "embedded" (a private etcd inside the lab) or "etcd://HOST:PORT"
    networks: dict[str, dict[str, Any]] = field(default_factory=dict)
    control_plane: str | None = None


def _mapping(src: Source, value: Any, where: tuple[Any, ...], allowed: set[str] | None) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise src.error(where, f"expected a mapping, got {type(value).__name__}")
    if allowed is not None:
        for key in value:
            if key not in allowed:
                raise src.error(where + (key,), f"unknown field; known: {', '.join(sorted(allowed))}")
    return value


def _check_net(src: Source, name: str, spec: dict[str, Any], where: tuple[Any, ...]) -> None:
    for key in ("subnet", "ip_range"):
        if key in spec:
            try:
                ipaddress.IPv4Network(str(spec[key]))
            except ValueError as e:
                raise src.error(where + (key,), f"{spec[key]!r} is not a valid IPv4 subnet "
                                f"({e})") from None
    if "gateway" in spec:
        try:
            ipaddress.IPv4Address(str(spec["gateway"]))
        except ValueError:
            raise src.error(where + ("gateway",), f"{spec['gateway']!r} is not an IPv4 "
                            f"address") from None
    try:
        drivers.capability(str(spec.get("driver", "bridge")))
    except InvalidInput as e:
        raise src.error(where + ("driver",), str(e)) from None
    bname = spec.get("bridge_name")
    if bname is not None and len(str(bname)) > IFNAMSIZ:
        raise src.error(where + ("bridge_name",), f"interface name {bname!r} is longer than "
                        f"{IFNAMSIZ} characters")
    for key in ("internal", "icc", "masquerade"):
        if key in spec and not isinstance(spec[key], bool):
            raise src.error(where + (key,), "expected true or false")


def _parse_underlays(src: Source, raw: Any, host_names: set[str]) -> list[UnderlaySpec]:
    out = []
    for uname, uval in _mapping(src, raw, ("underlays",), None).items():
        where = ("underlays", uname)
        try:
            check_name("underlay", str(uname))
        except CnmError as e:
            raise src.error(where, str(e)) from None
        if uname in host_names:
            raise src.error(where, f"the name {uname} is used twice in this lab")
        uraw = _mapping(src, uval, where, UNDERLAY_KEYS)
        subnet = str(uraw.get("subnet", "192.168.50.0/24"))
        try:
            ipaddress.IPv4Network(subnet)
        except ValueError as e:
            raise src.error(where + ("subnet",), f"{subnet!r} is not a valid IPv4 subnet "
                            f"({e})") from None
        routes = []
        rlist = uraw.get("routes") or []
        if not isinstance(rlist, list):
            raise src.error(where + ("routes",), "expected a list of {subnet: S, via: HOST}")
        for i, r in enumerate(rlist):
            rwhere = where + ("routes", i)
            r = _mapping(src, r, rwhere, {"subnet", "via"})
            if "subnet" not in r or "via" not in r:
                raise src.error(rwhere, "a route needs subnet: and via: (a host or an address)")
            try:
                ipaddress.IPv4Network(str(r["subnet"]))
            except ValueError as e:
                raise src.error(rwhere + ("subnet",), f"{r['subnet']!r} is not a valid IPv4 "
                                f"subnet ({e})") from None
            routes.append((str(r["subnet"]), str(r["via"])))
        out.append(UnderlaySpec(str(uname), subnet, routes, where))
    return out


def parse_store(value: str) -> str:
    """``embedded`` or ``etcd://HOST:PORT``, else a one-line InvalidInput."""
    if value != "embedded" and not value.startswith("etcd://"):
        raise InvalidInput(f"store {value!r}: use 'embedded' or etcd://HOST:PORT")
    return value


def parse(src: Source, name: str | None = None) -> Topology:
    top = _mapping(src, src.data, (), {"name", "hosts", "description", "underlays",
                                       "networks", "control_plane"})
    lab_name = name or top.get("name")
    if not lab_name:
        raise src.error((), "missing field 'name' (or pass --name)")
    hosts_raw = _mapping(src, top.get("hosts"), ("hosts",), None)
    if not hosts_raw:
        raise src.error(("hosts",), "a topology needs at least one host")
    underlays = _parse_underlays(src, top.get("underlays"), {str(h) for h in hosts_raw})
    global_nets: dict[str, dict[str, Any]] = {}
    for nname, nval in _mapping(src, top.get("networks"), ("networks",), None).items():
        nwhere = ("networks", nname)
        nspec = _mapping(src, nval, nwhere, {"driver", "subnet", "gateway", "internal",
                                             "options"})
        _check_net(src, str(nname), nspec, nwhere)
        if not drivers.capability(str(nspec.get("driver", "bridge"))).global_scope:
            raise src.error(nwhere + ("driver",), "lab-wide networks are global-scope "
                            "(driver: overlay); define local ones under hosts.NAME.networks")
        global_nets[str(nname)] = nspec
    control_plane = top.get("control_plane")
    if control_plane is not None:
        try:
            parse_store(str(control_plane))
        except InvalidInput as e:
            raise src.error(("control_plane",), str(e)) from None
    if global_nets and control_plane is None:
        control_plane = "embedded"
    hosts = []
    seen: set[str] = set()
    for hname, hval in hosts_raw.items():
        where = ("hosts", hname)
        try:
            check_name("host", str(hname))
        except CnmError as e:
            raise src.error(where, str(e)) from None
        hraw = _mapping(src, hval, where, HOST_KEYS)
        host = HostSpec(name=str(hname), options={k: hraw[k] for k in hraw
                                                  if k in ("default_bridge", "bip", "firewall",
                                                           "underlay", "underlay_ip")})
        if "underlay" in hraw and str(hraw["underlay"]) not in {u.name for u in underlays}:
            raise src.error(where + ("underlay",), f"no underlay {hraw['underlay']!r} in "
                            f"underlays: ({', '.join(u.name for u in underlays) or 'none'})")
        nets = _mapping(src, hraw.get("networks"), where + ("networks",), None)
        for nname, nval in nets.items():
            nwhere = where + ("networks", nname)
            nspec = _mapping(src, nval, nwhere, NETWORK_KEYS)
            _check_net(src, str(nname), nspec, nwhere)
            host.networks[str(nname)] = nspec
        known_nets = set(host.networks) | set(global_nets) | {"bridge", "host", "none"}
        sbs = _mapping(src, hraw.get("sandboxes"), where + ("sandboxes",), None)
        for sname, sval in sbs.items():
            swhere = where + ("sandboxes", sname)
            sraw = _mapping(src, sval, swhere, SANDBOX_KEYS)
            try:
                check_name("sandbox", str(sname))
            except CnmError as e:
                raise src.error(swhere, str(e)) from None
            if sname in seen or sname in hosts_raw or sname in {u.name for u in underlays}:
                raise src.error(swhere, f"the name {sname} is used twice in this lab")
            seen.add(str(sname))
            nets_raw = sraw.get("networks", sraw.get("network", "bridge"))
            if isinstance(nets_raw, str):
                attached = [(nets_raw, {"ip": sraw.get("ip"), "aliases": sraw.get("aliases", [])})]
            elif isinstance(nets_raw, list):
                attached = [(str(n), {}) for n in nets_raw]
                if attached:
                    attached[0][1].update({"ip": sraw.get("ip"), "aliases": sraw.get("aliases", [])})
            else:
                attached = [(str(n), _mapping(src, v, swhere + ("networks", n), {"ip", "aliases"}))
                            for n, v in _mapping(src, nets_raw, swhere + ("networks",), None).items()]
            for i, (n, _) in enumerate(attached):
                if n not in known_nets:
                    raise src.error(swhere + ("networks",), f"network {n!r} is not defined on "
                                    f"host {hname}")
            publish = [str(p) for p in sraw.get("publish", []) or []]
            for i, p in enumerate(publish):
                try:
                    parse_port(p)
                except CnmError as e:
                    raise src.error(swhere + ("publish", i), str(e)) from None
            host.sandboxes.append(SandboxSpec(str(sname), attached, publish, swhere))
        hosts.append(host)
    for u in underlays:
        for i, (_, via) in enumerate(u.routes):
            if via not in hosts_raw:
                try:
                    ipaddress.IPv4Address(via)
                except ValueError:
                    raise src.error(u.where + ("routes", i, "via"), f"{via!r} is neither a host "
                                    f"of this lab nor an IPv4 address") from None
    return Topology(name=str(lab_name), hosts=hosts, source=src, underlays=underlays,
                    networks=global_nets, control_plane=control_plane)


def load(path: str, name: str | None = None) -> Topology:
    return parse(yamlsrc.load(path), name)


def build(topo: Topology, lab: Lab | None = None) -> Lab:
    """Build a topology; on any error, everything already built is removed."""
    own = lab is None
    lab = lab or Lab(topo.name)
    src = topo.source
    try:
        with lab.batch():
            _build_hosts(topo, lab, src)
        lab.converge()  # the agents have programmed every host's peers
    except BaseException:
        if own:
            lab.down()
        raise
    return lab


def _build_hosts(topo: Topology, lab: Lab, src: Source) -> None:
    for u in topo.underlays:
        try:
            lab.add_underlay(u.name, u.subnet)
        except CnmError as e:
            raise src.error(u.where, str(e)) from None
    _build_host_list(topo, lab, src)
    for u in topo.underlays:
        for i, (subnet, via) in enumerate(u.routes):
            try:
                lab.underlay(u.name).add_route(subnet, via)
            except CnmError as e:
                raise src.error(u.where + ("routes", i), str(e)) from None


def _build_host_list(topo: Topology, lab: Lab, src: Source) -> None:
    for hspec in topo.hosts:
        where: tuple[Any, ...] = ("hosts", hspec.name)
        try:
            host = lab.add_host(hspec.name, **hspec.options)
        except CnmError as e:
            raise src.error(where, str(e)) from None
        for nname, nspec in hspec.networks.items():
            try:
                host.network_create(nname, **nspec)
            except CnmError as e:
                raise src.error(where + ("networks", nname), str(e)) from None
    if topo.control_plane and not lab.control_plane:
        try:
            lab.start_control_plane(None if topo.control_plane == "embedded"
                                    else topo.control_plane)
        except CnmError as e:
            raise src.error(("control_plane",), str(e)) from None
    for nname, nspec in topo.networks.items():
        kw = dict(nspec)
        try:
            lab.network_create(nname, str(kw.pop("driver")), **kw)
        except CnmError as e:
            raise src.error(("networks", nname), str(e)) from None
    for hspec in topo.hosts:
        host = lab.host(hspec.name)
        for sb in hspec.sandboxes:
            try:
                (first, opts), rest = sb.networks[0], sb.networks[1:]
                host.run(sb.name, first, ip=opts.get("ip"), publish=sb.publish,
                         aliases=opts.get("aliases") or [])
                for n, o in rest:
                    host.connect(n, sb.name, ip=o.get("ip"), aliases=o.get("aliases") or [])
            except CnmError as e:
                raise src.error(sb.where, str(e)) from None
