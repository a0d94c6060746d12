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
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from cnmlab import drivers, state, yamlsrc
from cnmlab.errors import CnmError, InvalidInput
from cnmlab.kernel.netlink import IFNAMSIZ
from cnmlab.lab import Lab, check_name, parse_port
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


def _want(src: Source, where: tuple[Any, ...], value: Any, kind: type | tuple[type, ...],
          what: str) -> Any:
    """``value`` if it is of ``kind`` (a bool is no int here), else a one-line error."""
    if isinstance(value, kind) and not (isinstance(value, bool) and kind in (int, (int,))):
        return value
    raise src.error(where, f"expected {what}, got {type(value).__name__} {value!r:.40}")


def _str_list(src: Source, where: tuple[Any, ...], value: Any, what: str) -> list[str]:
    if value is None:
        return []
    _want(src, where, value, list, f"a list of {what}")
    return [_want(src, where + (i,), v, str, what) for i, v in enumerate(value)]


def _subnet(src: Source, where: tuple[Any, ...], value: Any) -> None:
    _want(src, where, value, str, "an IPv4 subnet such as 10.10.0.0/24")
    try:
        ipaddress.IPv4Network(value)
    except ValueError as e:
        raise src.error(where, f"{value!r} is not a valid IPv4 subnet ({e})") from None


def _address(src: Source, where: tuple[Any, ...], value: Any) -> None:
    _want(src, where, value, str, "an IPv4 address such as 10.10.0.5")
    try:
        ipaddress.IPv4Address(value)
    except ValueError:
        raise src.error(where, f"{value!r} is not an IPv4 address") from None


def _bool(src: Source, where: tuple[Any, ...], value: Any) -> None:
    if not isinstance(value, bool):
        raise src.error(where, "expected true or false")


def _mtu(src: Source, where: tuple[Any, ...], value: Any) -> None:
    _want(src, where, value, int, "an MTU (an integer)")
    if not MTU_MIN <= value <= MTU_MAX:
        raise src.error(where, f"MTU {value} is out of range ({MTU_MIN}-{MTU_MAX})")


def _bridge_name(src: Source, where: tuple[Any, ...], value: Any) -> None:
    _want(src, where, value, str, "an interface name")
    if not value or len(value) > IFNAMSIZ:
        raise src.error(where, f"interface name {value!r} is longer than {IFNAMSIZ} "
                        f"characters" if value else "an interface name cannot be empty")
    if any(c in value for c in "/ :\t\n") or value in (".", ".."):
        raise src.error(where, f"{value!r} is not a valid interface name")


def _options(src: Source, where: tuple[Any, ...], value: Any) -> None:
    opts = _mapping(src, value, where, None)
    for k, v in opts.items():
        _want(src, where + (k,), k, str, "an option name")
        if v is not None and not isinstance(v, (str, int, float, bool)):
            raise src.error(where + (k,), f"expected a string, number or boolean, got "
                            f"{type(v).__name__}")


def _driver(src: Source, where: tuple[Any, ...], value: Any) -> None:
    _want(src, where, value, str, "a driver name")
    try:
        drivers.capability(value)
    except InvalidInput as e:
        raise src.error(where, str(e)) from None


# How each network field is checked: nothing reaches the engine with a type it does not expect.
NETWORK_CHECKS: dict[str, Callable[[Source, tuple[Any, ...], Any], None]] = {
    "driver": _driver, "subnet": _subnet, "ip_range": _subnet, "gateway": _address,
    "internal": _bool, "icc": _bool, "masquerade": _bool, "mtu": _mtu,
    "bridge_name": _bridge_name, "options": _options,
}
MTU_MIN, MTU_MAX = 68, 65535


def _check_net(src: Source, name: str, spec: dict[str, Any], where: tuple[Any, ...]) -> None:
    if not name or "/" in name or len(name) > 64:
        raise src.error(where, f"invalid network name {name!r}")
    for key, value in spec.items():
        check = NETWORK_CHECKS.get(key)
        if check is not None:
            check(src, where + (key,), value)


def _check_host(src: Source, hraw: dict[str, Any], where: tuple[Any, ...]) -> None:
    if "default_bridge" in hraw:
        _bool(src, where + ("default_bridge",), hraw["default_bridge"])
    if "bip" in hraw:
        _want(src, where + ("bip",), hraw["bip"], str, "a subnet such as 172.17.0.0/16")
        _subnet(src, where + ("bip",), hraw["bip"])
    if "firewall" in hraw and hraw["firewall"] not in ("iptables", "manual"):
        raise src.error(where + ("firewall",), "firewall must be 'iptables' or 'manual'")
    if "underlay" in hraw:
        _want(src, where + ("underlay",), hraw["underlay"], str, "an underlay's name")
    if "underlay_ip" in hraw:
        _address(src, where + ("underlay_ip",), hraw["underlay_ip"])


def _attachments(src: Source, sraw: dict[str, Any], swhere: tuple[Any, ...]
                 ) -> list[tuple[str, dict[str, Any]]]:
    """The networks a sandbox joins, in order, each with its ``ip`` and ``aliases``."""
    first = {"ip": sraw.get("ip"), "aliases": _str_list(src, swhere + ("aliases",),
                                                        sraw.get("aliases"), "alias names")}
    if first["ip"] is not None:
        _address(src, swhere + ("ip",), first["ip"])
    if "networks" in sraw and "network" in sraw:
        raise src.error(swhere, "give 'network' or 'networks', not both")
    nets_raw = sraw.get("networks", sraw.get("network", "bridge"))
    nwhere = swhere + ("networks" if "networks" in sraw else "network",)
    if isinstance(nets_raw, str):
        attached = [(nets_raw, first)]
    elif isinstance(nets_raw, list):
        attached = [(n, {}) for n in _str_list(src, nwhere, nets_raw, "network names")]
        if attached:
            attached[0] = (attached[0][0], first)
    elif isinstance(nets_raw, dict):
        if first["ip"] is not None or first["aliases"]:
            raise src.error(swhere, "with a 'networks' mapping, give ip and aliases per network")
        attached = []
        for n, v in nets_raw.items():
            _want(src, nwhere, n, str, "a network name")
            opts = dict(_mapping(src, v, nwhere + (n,), {"ip", "aliases"}))
            if opts.get("ip") is not None:
                _address(src, nwhere + (n, "ip"), opts["ip"])
            opts["aliases"] = _str_list(src, nwhere + (n, "aliases"), opts.get("aliases"),
                                        "alias names")
            attached.append((n, opts))
    else:
        raise src.error(nwhere, f"expected a network name, a list or a mapping of networks, "
                        f"got {type(nets_raw).__name__}")
    if not attached:
        raise src.error(nwhere, "a sandbox joins at least one network")
    return attached


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


#: ``control_plane: on-demand``: the embedded one, started when a step first needs it (a
#: service publishing a port), so steps that never do pay nothing for etcd and the agents
ON_DEMAND = "on-demand"


def parse_store(value: str) -> str:
    """``embedded``, ``on-demand`` or ``etcd://HOST:PORT``, else a one-line InvalidInput."""
    if value not in ("embedded", ON_DEMAND) and not value.startswith("etcd://"):
        raise InvalidInput(f"store {value!r}: use 'embedded', 'on-demand' or etcd://HOST:PORT")
    return value


def parse(src: Source, name: str | None = None) -> Topology:
    top = _mapping(src, src.data, (), {"name", "hosts", "description", "underlays",
                                       "networks", "control_plane"})
    lab_name = name or top.get("name")
    if not lab_name:
        raise src.error((), "missing field 'name' (or pass --name)")
    if not isinstance(lab_name, str) or not state.LAB_NAME.match(lab_name):
        raise src.error(("name",), f"lab name {lab_name!r}: use 1-32 lowercase letters, "
                        f"digits, '-' or '_'")
    if "description" in top and top["description"] is not None:
        _want(src, ("description",), top["description"], str, "a text")
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
    if global_nets and control_plane in (None, ON_DEMAND):
        control_plane = "embedded"  # the lab-wide networks need it from the start
    hosts = []
    seen: set[str] = set()
    for hname, hval in hosts_raw.items():
        where = ("hosts", hname)
        try:
            _want(src, where, hname, str, "a host name")
            check_name("host", hname)
        except CnmError as e:
            raise src.error(where, str(e)) from None
        hraw = _mapping(src, hval, where, HOST_KEYS)
        _check_host(src, hraw, where)
        host = HostSpec(name=str(hname), options={k: hraw[k] for k in hraw
                                                  if k in ("default_bridge", "bip", "firewall",
                                                           "underlay", "underlay_ip")})
        if "underlay" in hraw and str(hraw["underlay"]) not in {u.name for u in underlays}:
            raise src.error(where + ("underlay",), f"no underlay {hraw['underlay']!r} in "
                            f"underlays: ({', '.join(u.name for u in underlays) or 'none'})")
        nets = _mapping(src, hraw.get("networks"), where + ("networks",), None)
        for nname, nval in nets.items():
            nwhere = where + ("networks", nname)
            _want(src, nwhere, nname, str, "a network name")
            nspec = _mapping(src, nval, nwhere, NETWORK_KEYS)
            _check_net(src, str(nname), nspec, nwhere)
            host.networks[str(nname)] = nspec
        known_nets = set(host.networks) | set(global_nets) | {"bridge", "host", "none"}
        sbs = _mapping(src, hraw.get("sandboxes"), where + ("sandboxes",), None)
        for sname, sval in sbs.items():
            swhere = where + ("sandboxes", sname)
            sraw = _mapping(src, sval, swhere, SANDBOX_KEYS)
            try:
                _want(src, swhere, sname, str, "a sandbox name")
                check_name("sandbox", sname)
            except CnmError as e:
                raise src.error(swhere, str(e)) from None
            if sname in seen or sname in hosts_raw or sname in {u.name for u in underlays}:
                raise src.error(swhere, f"the name {sname} is used twice in this lab")
            seen.add(sname)
            attached = _attachments(src, sraw, swhere)
            for n, _ in attached:
                if n not in known_nets:
                    raise src.error(swhere + ("networks",), f"network {n!r} is not defined on "
                                    f"host {hname}")
            if len({n for n, _ in attached}) != len(attached):
                raise src.error(swhere + ("networks",), "a network is listed twice")
            publish = _str_list(src, swhere + ("publish",), sraw.get("publish"),
                                "port mappings such as \"8080:80/tcp\"")
            for i, p in enumerate(publish):
                try:
                    parse_port(p)
                except CnmError as e:
                    raise src.error(swhere + ("publish", i), str(e)) from None
            host.sandboxes.append(SandboxSpec(sname, attached, publish, swhere))
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
    if lab is None:
        with state.locked(topo.name):  # nobody acts on the lab before it is fully built
            lab = Lab(topo.name)
            try:
                with lab.batch():
                    _build_hosts(topo, lab, topo.source)
                lab.converge()  # the agents have programmed every host's peers
            except BaseException:
                lab.down()
                raise
        return lab
    with lab.batch():
        _build_hosts(topo, lab, topo.source)
    lab.converge()
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
    if topo.control_plane == ON_DEMAND:
        lab.control_plane_on_demand()
    elif topo.control_plane and not lab.control_plane:
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
