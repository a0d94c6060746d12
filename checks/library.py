"""The built-in check kinds: connectivity, NAT, published ports, DNS, kernel state, packets.

Each kind is a function ``(target, params) -> CheckResult`` registered with ``@check_kind``; its
parameters are declared in ``PARAMS`` and checked by ``validate`` (which the lab loader calls at
load time, so a typo is reported before anything runs). A failing result carries a one-line
``reason`` that tells the learner where to look; it names the rule, chain, route or link that
usually explains the symptom without claiming to know which one is wrong.

Endpoints in parameters: a sandbox name, ``upstream`` (the fake internet's observer) or
``host:NAME`` (a Docker host's own namespace); ``to`` may also be a literal IPv4 address.
"""
from __future__ import annotations

import contextlib
import importlib
import ipaddress
import os
import shlex
import socket
import stat
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from cnmlab import frames
from cnmlab.checks import probes, wiring
from cnmlab.checks.api import CheckResult, HostRef, SandboxRef, Target, check_kind
from cnmlab.checks.nsref import NsRef
from cnmlab.checks.truth import TruthTable
from cnmlab.errors import CnmError, InvalidInput
from cnmlab.kernel import netns, nsexec, sysctl
from cnmlab.kernel.capture import Capture
from cnmlab.kernel.ipvs import Ipvs, VirtualService
from cnmlab.kernel.netlink import Netlink

DEFAULT_TIMEOUT = 1.0

# ---------------------------------------------------------------------------------------------
# parameter schemas

_REACH = {"required": ["from", "to"],
          "optional": ["network", "proto", "port", "timeout", "server"]}

PARAMS: dict[str, dict[str, list[str]]] = {
    "reachable": _REACH,
    "isolated": _REACH,
    "matrix": {"required": ["sandboxes"],
               "optional": ["groups", "reach", "proto", "network", "timeout"]},
    "egress-nat-seen": {"required": ["from"], "optional": ["host", "expect", "port", "timeout"]},
    "published-port": {"required": ["port", "to"],
                       "optional": ["host", "proto", "container_port", "from", "timeout",
                                    "server"]},
    "hairpin": {"required": ["from", "port", "to"],
                "optional": ["host", "proto", "container_port", "timeout", "server"]},
    "dns-resolves": {"required": ["from", "name", "expect"],
                     "optional": ["server", "timeout"]},
    "dns-absent": {"required": ["from", "name"], "optional": ["server", "timeout"]},
    "mtu": {"required": ["mtu"], "optional": ["sandbox", "ns", "interface"]},
    "path-mtu": {"required": ["from", "to", "mtu"], "optional": ["network", "timeout"]},
    "esp-on-wire": {"required": ["ns", "interface", "vni"], "optional": ["traffic", "timeout"]},
    "vxlan": {"required": ["ns"],
              "optional": ["name", "vni", "port", "learning", "proxy", "l2miss", "l3miss",
                           "mtu", "master"]},
    "peer-entry": {"required": ["ns", "ip", "mac", "vtep"],
                   "optional": ["name", "present"]},
    "mac": {"required": ["sandbox", "mac"], "optional": ["interface"]},
    "default-route": {"required": ["sandbox", "via"], "optional": ["dev"]},
    "link": {"required": ["ns", "name"],
             "optional": ["kind", "master", "up", "address", "mtu", "peer"]},
    "iptables-rule": {"required": ["host", "rule"], "optional": ["table", "present", "before"]},
    "sysctl": {"required": ["ns", "key", "value"], "optional": []},
    "vxlan-on-wire": {"required": ["ns", "interface", "vni"],
                      "optional": ["port", "traffic", "timeout"]},
    "lb-spread": {"required": ["from", "vip", "port", "backends"],
                  "optional": ["requests", "backend_port", "timeout", "tolerance", "absent"]},
    "routing-mesh": {"required": ["from", "hosts", "port", "backends"],
                     "optional": ["backend_port", "requests", "timeout"]},
    "ipvs": {"required": ["ns", "vip", "port"],
             "optional": ["proto", "scheduler", "forward", "servers", "server_port"]},
    "python": {"required": ["call"], "optional": ["*"]},  # anything else goes to the function
}


class ParamError(InvalidInput):
    """A bad check parameter; ``param`` names it (for file:line:field reports)."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_ipv4(v: Any) -> bool:
    try:
        ipaddress.IPv4Address(str(v))
    except ValueError:
        return False
    return isinstance(v, str)


def _port_ok(v: Any) -> bool:
    return _is_int(v) and 1 <= v <= 65535


_TYPES: dict[str, tuple[Any, str]] = {
    "port": (_port_ok, "a port number 1-65535"),
    "container_port": (_port_ok, "a port number 1-65535"),
    "backend_port": (_port_ok, "a port number 1-65535"),
    "timeout": (lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and 0 < v <= 60,
                "a number of seconds (0-60]"),
    "server": (lambda v: isinstance(v, bool) or _is_ipv4(v), "true, false or an IPv4 address"),
    "requests": (lambda v: _is_int(v) and 1 <= v <= 1000, "a count 1-1000"),
    "mtu": (lambda v: _is_int(v) and 68 <= v <= 65535, "an MTU 68-65535"),
    "vni": (lambda v: (_is_int(v) and 0 <= v < 1 << 24) or (isinstance(v, str) and bool(v)),
            "a VNI 0-16777215 or the name of a network (its VNI, as the target knows it)"),
    "learning": (lambda v: isinstance(v, bool), "true or false"),
    "proxy": (lambda v: isinstance(v, bool), "true or false"),
    "l2miss": (lambda v: isinstance(v, bool), "true or false"),
    "l3miss": (lambda v: isinstance(v, bool), "true or false"),
    "up": (lambda v: isinstance(v, bool), "true or false"),
    "present": (lambda v: isinstance(v, bool), "true or false"),
    "vip": (_is_ipv4, "an IPv4 address"),
    "via": (lambda v: v is None or _is_ipv4(v), "an IPv4 address, or null for no default route"),
    "sandboxes": (lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v) and v,
                  "a list of sandbox names"),
    "backends": (lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v) and v,
                 "a list of sandbox names"),
    "absent": (lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v),
               "a list of sandbox names"),
    "tolerance": (lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)
                  and 0 <= v <= 1, "a fraction of the fair share, 0-1 (0.2: within 20%)"),
    "servers": (lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v),
                "a list of sandbox names or IPv4 addresses"),
    "server_port": (_port_ok, "a port number 1-65535"),
    "scheduler": (lambda v: isinstance(v, str) and v.isalpha(), "an IPVS scheduler (rr, wrr...)"),
    "forward": (lambda v: v in ("masq", "route", "tunnel", "local"),
                "masq, route, tunnel or local"),
    "call": (lambda v: isinstance(v, str) and ":" in v, "'module:function'"),
    "address": (lambda v: isinstance(v, str) and "/" in v, "an address in CIDR form, a.b.c.d/len"),
    "peer": (lambda v: isinstance(v, dict) and set(v) == {"ns", "name"}
             and all(isinstance(x, str) and x for x in v.values()),
             "{ns: MEMBER, name: IFNAME}, the other end of the veth"),
    "before": (lambda v: isinstance(v, str) and v.split()[:1] == ["-A"],
               "a rule of the same chain as printed by iptables -S ('-A CHAIN ...')"),
}


def validate(kind: str, params: dict[str, Any]) -> None:
    """Raise a one-line ``InvalidInput`` (a ``ParamError``) for unknown, missing or bad params."""
    try:
        schema = PARAMS[kind]
    except KeyError:
        raise ParamError(f"unknown check {kind!r}; known: {', '.join(sorted(PARAMS))}") from None
    if not isinstance(params, dict):
        raise ParamError(f"check {kind}: parameters must be a mapping")
    known = set(schema["required"]) | set(schema["optional"])
    if "*" not in known:
        for p in params:
            if p not in known:
                raise ParamError(f"check {kind}: unknown parameter {p!r}; known: "
                                 f"{', '.join(sorted(known))}", p)
    for p in schema["required"]:
        if p not in params:
            raise ParamError(f"check {kind}: missing parameter {p!r}", p)
    for p, v in params.items():
        if p in _TYPES and not (kind == "python"):
            ok, what = _TYPES[p]
            if not ok(v):
                raise ParamError(f"check {kind}: {p} must be {what}, got {v!r}", p)
    proto = params.get("proto")
    allowed = {"matrix": ("icmp",), "published-port": ("tcp", "udp"), "hairpin": ("tcp", "udp")}
    if proto is not None and proto not in allowed.get(kind, ("icmp", "tcp", "udp")):
        raise ParamError(f"check {kind}: proto must be one of "
                         f"{', '.join(allowed.get(kind, ('icmp', 'tcp', 'udp')))}", "proto")
    if kind in ("reachable", "isolated") and params.get("proto") in ("tcp", "udp") \
            and "port" not in params:
        raise ParamError(f"check {kind}: proto {params['proto']} needs a port", "port")
    if kind == "matrix":
        if ("groups" in params) == ("reach" in params):
            raise ParamError("check matrix: give exactly one of groups: or reach:", "groups")
        names = set(params["sandboxes"])
        rows = params.get("groups", params.get("reach"))
        key = "groups" if "groups" in params else "reach"
        if not isinstance(rows, list) or not all(isinstance(r, list) for r in rows):
            raise ParamError(f"check matrix: {key} must be a list of lists of names", key)
        for r in rows:
            if key == "reach" and len(r) != 2:
                raise ParamError(f"check matrix: each reach item is [from, to], got {r!r}", key)
            for n in r:
                if not isinstance(n, str) or n not in names:
                    raise ParamError(f"check matrix: {n!r} in {key} is not in sandboxes", key)
    if kind == "egress-nat-seen" and params.get("expect", "host") not in (
            "host", "sandbox", "none", "masqueraded"):
        raise ParamError("check egress-nat-seen: expect must be host, sandbox, masqueraded or "
                         "none", "expect")
    if kind == "mtu" and ("sandbox" in params) == ("ns" in params):
        raise ParamError("check mtu: give exactly one of sandbox: or ns:", "sandbox")
    if kind == "dns-resolves":
        exp = params["expect"]
        items = exp if isinstance(exp, list) else [exp]
        if not items or not all(isinstance(x, str) for x in items):
            raise ParamError("check dns-resolves: expect must be a sandbox name, an IPv4 "
                             "address or a list of them", "expect")
    if kind == "vxlan-on-wire" and "traffic" in params:
        t = params["traffic"]
        if not isinstance(t, dict) or set(t) != {"from", "to"}:
            raise ParamError("check vxlan-on-wire: traffic must be {from: ..., to: ...}", "traffic")
    if kind == "iptables-rule" and params.get("table", "filter") not in (
            "filter", "nat", "mangle", "raw", "security"):
        raise ParamError("check iptables-rule: table must be filter, nat, mangle, raw or "
                         "security", "table")


def _checked(kind: str, params: dict[str, Any]) -> dict[str, Any]:
    validate(kind, params)
    return params


# ---------------------------------------------------------------------------------------------
# endpoints: who a parameter names


@dataclass
class End:
    """A resolved endpoint: a sandbox, the upstream, a host, or (as a destination) an address."""

    label: str
    ns: NsRef | None
    sandbox: SandboxRef | None = None
    host: HostRef | None = None
    literal: str | None = None

    @property
    def ref(self) -> NsRef:
        if self.ns is None:
            raise CnmError(f"{self.label} is an address, not a namespace to probe from")
        return self.ns

    @property
    def is_upstream(self) -> bool:
        return self.sandbox is not None and self.label == "upstream"


def _end(target: Target, spec: Any, role: str, allow_ip: bool = False) -> End:
    if not isinstance(spec, str) or not spec:
        raise InvalidInput(f"{role}: {spec!r} is not a sandbox, 'upstream' or 'host:NAME'")
    if spec == "upstream":
        up = target.upstream()
        if up is None:
            raise CnmError(f"{role}: {target.name} has no upstream observer")
        return End("upstream", up.ns, sandbox=up)
    if spec.startswith("underlay:"):  # the LAN's router, where the target has underlays
        name = spec[9:]
        lans = getattr(target, "underlays", lambda: {})()
        if name not in lans:
            raise CnmError(f"{role}: no underlay {name!r} in {target.name}; known: "
                           f"{', '.join(sorted(lans)) or 'none'}")
        return End(spec, lans[name].ns, sandbox=lans[name])
    if spec.startswith("host:"):
        name = spec[5:]
        hosts = target.hosts()
        if name not in hosts:
            raise CnmError(f"{role}: no host {name!r} in {target.name}; known: "
                           f"{', '.join(sorted(hosts)) or 'none'}")
        return End(spec, hosts[name].ns, host=hosts[name])
    if "@" in spec:  # NETWORK@HOST: a network's own namespace on a host (overlay)
        spaces = getattr(target, "network_namespaces", lambda: {})()
        if spec not in spaces:
            raise CnmError(f"{role}: no network namespace {spec!r} in {target.name}; known: "
                           f"{', '.join(sorted(spaces)) or 'none'}")
        return End(spec, spaces[spec].ns, sandbox=spaces[spec])
    sbs = target.sandboxes()
    if spec in sbs:
        return End(spec, sbs[spec].ns, sandbox=sbs[spec])
    if allow_ip and _is_ipv4(spec):
        return End(spec, None, literal=spec)
    raise CnmError(f"{role}: no sandbox {spec!r} in {target.name}; known: "
                   f"{', '.join(sorted(sbs)) or 'none'}")


def _host_of(target: Target, name: str | None, role: str = "host") -> HostRef:
    hosts = target.hosts()
    if name is None:
        if len(hosts) == 1:
            return next(iter(hosts.values()))
        raise CnmError(f"{role}: {target.name} has {len(hosts)} hosts: name one")
    name = name[5:] if name.startswith("host:") else name
    if name not in hosts:
        raise CnmError(f"{role}: no host {name!r} in {target.name}; known: "
                       f"{', '.join(sorted(hosts)) or 'none'}")
    return hosts[name]


def _shared(a: End, b: End) -> list[str]:
    if a.sandbox is None or b.sandbox is None:
        return []
    return [n for n in a.sandbox.addresses if n in b.sandbox.addresses]


def _dest_ip(src: End, dst: End, network: str | None) -> str:
    """The address ``src`` should use for ``dst``: on ``network``, else on a shared network."""
    if dst.literal:
        return dst.literal
    if dst.host is not None:
        if not dst.host.public_ip:
            raise CnmError(f"{dst.label} has no public address")
        return dst.host.public_ip
    assert dst.sandbox is not None
    if network is not None:
        return dst.sandbox.ip(network)
    shared = _shared(src, dst)
    return dst.sandbox.ip(shared[0] if shared else None)


def _networks(target: Target) -> dict[str, dict[str, Any]]:
    fn = getattr(target, "networks", None)
    if fn is None:
        return {}
    try:
        return fn() or {}
    except CnmError:
        return {}


def _dev(target: Target, network: str) -> str:
    info = _networks(target).get(network) or {}
    return info.get("device") or f"the bridge of {network}"


def _host_label(target: Target, end: End) -> str:
    if end.sandbox is not None and end.sandbox.host:
        return end.sandbox.host
    hosts = target.hosts()
    return next(iter(hosts)) if len(hosts) == 1 else "its host"


# ---------------------------------------------------------------------------------------------
# reachable / isolated


def _probe(src: End, dst: End, ip: str, proto: str, port: int | None, timeout: float,
           server: Any) -> probes.ProbeResult:
    """One probe from ``src`` to ``ip``, watching ``dst``'s namespace (when it has one) for
    the probe's packets, so a lost reply is told apart from a blocked request."""
    assert src.ns is not None
    watch = dst.ns if dst.literal is None else None
    if proto == "icmp":
        return probes.ping(src.ref, ip, timeout=timeout, watch=watch)
    assert port is not None
    start = server is not False and dst.ns is not None
    srv = probes.EchoServer(dst.ref, proto, port, name=dst.label) if start else None
    try:
        if srv is not None:
            srv.start()
    except probes.PortInUse as e:
        return _around_listener(src, ip, proto, port, timeout, e, dst.label)
    try:
        if proto == "tcp":
            return probes.tcp_connect(src.ref, ip, port, timeout=timeout, echo=srv is not None,
                                      watch=watch)
        return probes.udp_probe(src.ref, ip, port, timeout=timeout, watch=watch)
    finally:
        if srv is not None:
            srv.stop()


def one_way(res: probes.ProbeResult) -> bool:
    """The destination received the probe's packets but no answer at all came back."""
    return not res.ok and bool(res.arrived) and res.reason == "timeout"


def _arrived_text(src: End, dst: End, res: probes.ProbeResult) -> str:
    if one_way(res):
        return (f"{dst.label} received {res.arrived} of {src.label}'s packets, no reply came "
                f"back (one-way: {src.label} -> {dst.label})")
    return f"{dst.label} received {res.arrived} of {src.label}'s packets"


def _leak_hint(target: Target, src: End, dst: End, res: probes.ProbeResult) -> str:
    host = _host_label(target, src if src.sandbox and not src.is_upstream else dst)
    how = ("leaks one way: only the replies are lost" if one_way(res)
           else f"is not isolated: {dst.label} answered ({res.reason})")
    return (f"{src.label} -> {dst.label} {how}; {dst.label} receives {src.label}'s packets, "
            f"and isolation must stop them before they get there (DOCKER-ISOLATION-STAGE-1/2 "
            f"on {host} drop both directions), not drop the answers (OUTPUT in {dst.label}, "
            f"a one-way FORWARD rule)")


def _around_listener(src: End, ip: str, proto: str, port: int, timeout: float,
                     busy: "probes.PortInUse", where: str) -> probes.ProbeResult:
    """The learner's own server holds the port the check wanted: let it answer instead.

    TCP: a completed handshake with the learner's listener proves the path as well as ours
    would (only the server's identity is not checked). UDP: the learner's socket would take the
    check's datagrams (and ``nc -u -l`` then talks only to that sender, so the learner's own
    test breaks), no answer comes back to count on, and Linux lets no second socket take the
    port beside it. So nothing is sent: the result is ``busy`` (never a pass, not even for an
    isolation check) and says who holds the port.
    """
    who = busy.owner or "another process"
    if proto != "tcp":
        return probes.ProbeResult(False, f"not probed: {port}/{proto} in {where} is held by "
                                  f"{who}", "busy")
    res = probes.tcp_connect(src.ref, ip, port, timeout=timeout, echo=False)
    if res.ok:
        return probes.ProbeResult(True, f"connected; answered by your own listener in {where} "
                                  f"on {port}/tcp: {who}", res.reason, res.rtt_ms,
                                  server=where)
    res.observed = f"{res.observed} (the port in {where} is held by {who})"
    return res


def _busy_hint(proto: str, port: int | None, where: str) -> str:
    """What to do when the learner's own listener holds the port a UDP check needs."""
    return (f"your own listener holds {port}/{proto} in {where}: the check's datagrams would "
            f"land in it, so it sends none; stop it (Ctrl-C in its shell) and check again")


def _reach_hint(target: Target, src: End, dst: End, ip: str, network: str | None,
                want: bool, res: probes.ProbeResult, what: str) -> str:
    nets = _networks(target)
    shared = [network] if network and network in _shared(src, dst) else _shared(src, dst)
    host = _host_label(target, src if src.sandbox and not src.is_upstream else dst)
    if want:
        stacked = _stacked_hint(src, dst, shared, nets)
        if stacked:
            return stacked
        if res.reason == "refused":
            return (f"{ip} answered with a refusal on {what}: look at whether something listens "
                    f"there in {dst.label}, and for REJECT rules on {host}")
        if dst.literal and ipaddress.IPv4Address(ip).is_loopback:
            return (f"{ip} is {src.label}'s own loopback: look at whether lo is up in "
                    f"{src.label} (ip link show lo)")
        # what the kernel shows on the way, in this lab: route, links, peers, forwarding
        try:
            seen = wiring.explain_path(target, _member_label(src), ip)
        except CnmError:
            seen = None
        if seen:
            return seen
        if not _has_router(target):
            return (f"the route and links from {src.label} towards {ip} look right: look at "
                    f"the far end ({', '.join(str(h) for h in wiring.holders(target, ip)) or 'who has ' + ip}): "
                    f"its link state, address and route back to {src.label}")
        if dst.is_upstream or (dst.literal and not src.is_upstream and not shared):
            return (f"look at {src.label}'s default route (ip route), ip_forward and the "
                    f"FORWARD chain on {host}, and nat POSTROUTING MASQUERADE for its subnet")
        if src.is_upstream:
            return (f"the upstream has no route to private addresses: look at published ports "
                    f"(nat DOCKER DNAT on {host}) instead of {ip}")
        if shared:
            n = shared[0]
            dev = _dev(target, n)
            if nets.get(n, {}).get("icc") is False:
                return (f"{n} has icc disabled, so its members are isolated by design "
                        f"(FORWARD -i {dev} -o {dev} -j DROP): look at the lab's intent")
            return (f"both are on {n}: look at the FORWARD rule -i {dev} -o {dev} -j ACCEPT "
                    f"(icc) on {host}, and at both ends' links and addresses (ip addr)")
        if src.sandbox is not None and dst.sandbox is not None:
            return (f"{src.label} and {dst.label} share no network: look at docker network "
                    f"connect (DOCKER-ISOLATION-STAGE-2 drops traffic between bridges)")
        return (f"look at the route from {src.label} to {ip} (ip route get {ip}) and the "
                f"FORWARD chain on {host}")
    # reached, but should not have
    if shared:
        n = shared[0]
        dev = _dev(target, n)
        if nets.get(n, {}).get("icc") is False:
            return (f"{n} has icc disabled: look at the FORWARD chain on {host} for an ACCEPT "
                    f"that matches -i {dev} -o {dev} before the DROP")
        return (f"both are on {n}, whose members may talk (icc): look at whether {n} should be "
                f"created with icc disabled or one of them disconnected")
    if src.sandbox is not None and dst.sandbox is not None and not src.is_upstream \
            and not dst.is_upstream:
        return (f"traffic between networks must be dropped: look at DOCKER-ISOLATION-STAGE-1/2 "
                f"on {host} (-o <bridge> -j DROP for every bridge)")
    if dst.is_upstream or dst.literal:
        internal = [n for n, info in nets.items() if info.get("internal")]
        if any(n in internal for n in (src.sandbox.addresses if src.sandbox else {})):
            return (f"{src.label}'s network is internal, yet it got out: look at its default "
                    f"route (there should be none) and at DOCKER-ISOLATION-STAGE-1 on {host}")
        return (f"{src.label} got out to {ip}: look at the FORWARD chain on {host} in order "
                f"(iptables -S FORWARD, and every chain it jumps to): the first rule that "
                f"matches decides, so a DROP after an ACCEPT or a RETURN never sees the packet")
    return f"look at the FORWARD chain and the nat DOCKER chain on {host}"


def _member_label(end: End) -> str:
    """An endpoint's label in ``wiring.members`` terms."""
    if end.host is not None:
        return f"host:{end.host.name}"
    return end.label


def _has_router(target: Target) -> bool:
    """Does any host of the target route between networks (a bridge lab) or none (lab 1)?"""
    for h in target.hosts().values():
        try:
            if any(l.kind == "bridge" for l in wiring.links_of(h.ns)) or \
                    read_sysctl(h.ns, "net.ipv4.ip_forward") == "1":
                return True
        except CnmError:
            continue
    return False


def _stacked_hint(src: End, dst: End, shared: list[str],
                  nets: dict[str, dict[str, Any]]) -> str:
    """Hints for networks stacked on a parent link (macvlan, ipvlan), where no bridge or
    FORWARD chain is involved: modes, the host's blind spot, the LAN's own routing."""
    if src.host is not None and dst.sandbox is not None:
        on = [n for n in dst.sandbox.addresses if (nets.get(n) or {}).get("parent")]
        if on:
            info = nets[on[0]]
            return (f"a host never reaches its own children on {on[0]} through their parent "
                    f"{info['parent']}: give it a shim (ip link add shim link "
                    f"{info['parent']} type macvlan mode bridge, an address, a route)")
    for n in shared:
        info = nets.get(n) or {}
        if info.get("parent"):
            return (f"both are on {n}, stacked on {info['parent']} in mode "
                    f"{info.get('mode') or '?'}: private never lets children of one parent "
                    f"talk, vepa needs the switch to send frames back (hairpin); look at "
                    f"ip -d link show eth0 in both and at the parent's link")
    return ""


def _reach(target: Target, params: dict[str, Any], want: bool, kind: str) -> CheckResult:
    p = _checked(kind, params)
    src = _end(target, p["from"], "from")
    dst = _end(target, p["to"], "to", allow_ip=True)
    if src.ns is None:
        raise CnmError(f"from: {src.label} is not a namespace")
    proto = p.get("proto", "icmp")
    port = p.get("port")
    what = proto if proto == "icmp" else f"{proto}/{port}"
    ip = _dest_ip(src, dst, p.get("network"))
    label = f"{kind} {src.label} -> {dst.label} ({what})"
    res = _probe(src, dst, ip, proto, port, float(p.get("timeout", DEFAULT_TIMEOUT)),
                 p.get("server", True))
    # a packet that arrived is a breach of isolation, even if its reply was dropped
    ok = bool(res.ok) if want else not res.ok and not res.arrived and res.reason != "busy"
    tgt = ip if dst.label == ip else f"{dst.label} at {ip}"
    expected = f"{src.label} {'reaches' if want else 'cannot reach'} {tgt} ({what})"
    observed = res.observed or res.reason
    if not res.ok and res.arrived:
        observed += f"; {_arrived_text(src, dst, res)}"
    if ok:
        reason = ""
    elif res.reason == "busy":
        reason = _busy_hint(proto, port, dst.label)
    elif not want and not res.ok:
        reason = _leak_hint(target, src, dst, res)
    elif want and one_way(res):
        reason = (f"{dst.label} receives {src.label}'s packets but its answers never come "
                  f"back: look at the OUTPUT chain and the routes in {dst.label} (a way back "
                  f"to {src.label}) and at FORWARD on the way back")
    else:
        reason = _reach_hint(target, src, dst, ip, p.get("network"), want, res, what)
    return CheckResult(label, kind, ok, expected, observed, reason)


@check_kind("reachable")
def reachable(target: Target, params: dict[str, Any]) -> CheckResult:
    return _reach(target, params, True, "reachable")


@check_kind("isolated")
def isolated(target: Target, params: dict[str, Any]) -> CheckResult:
    return _reach(target, params, False, "isolated")


# ---------------------------------------------------------------------------------------------
# matrix


@check_kind("matrix")
def matrix(target: Target, params: dict[str, Any]) -> CheckResult:
    p = _checked("matrix", params)
    names: list[str] = list(dict.fromkeys(p["sandboxes"]))
    ends = {n: _end(target, n, "sandboxes") for n in names}
    expected: dict[tuple[str, str], bool] = {}
    if "groups" in p:
        for a in names:
            for b in names:
                if a != b:
                    expected[(a, b)] = any(a in g and b in g for g in p["groups"])
    else:
        allowed = {(a, b) for a, b in p["reach"]}
        for a in names:
            for b in names:
                if a != b:
                    expected[(a, b)] = (a, b) in allowed
    sources = {n: e.ns for n, e in ends.items() if e.ns is not None}
    targets: dict[str, str] = {}
    pairs = []
    for a, b in expected:
        key = f"{a}>{b}"
        targets[key] = _dest_ip(ends[a], ends[b], p.get("network"))
        pairs.append((a, key))
    watch = {f"{a}>{b}": ends[b].ns for a, b in expected if ends[b].ns is not None}
    res = probes.ping_results(sources, targets, timeout=float(p.get("timeout", DEFAULT_TIMEOUT)),
                              pairs=pairs, watch=watch)
    results = {(a, key.split(">", 1)[1]): r for (a, key), r in res.items()}
    for (a, b), r in results.items():
        if one_way(r):
            r.observed += f"; {b} received {r.arrived}, no reply came back ({a} -> {b} one-way)"
        elif not r.ok and r.arrived:
            r.observed += f"; {b} received {r.arrived} of them"
    table = TruthTable.from_results(names, expected, results, title="icmp reachability")
    label = f"matrix {' '.join(names)} (icmp)"
    n_reach = sum(expected.values())
    exp_text = f"{n_reach} of {len(expected)} pairs reach, the rest blocked"
    reason = ""
    if not table.ok:
        bad = []
        for s, d in table.wrong[:3]:
            state = ("reached one way (replies lost)" if (s, d) in table.one_way
                     else "blocked" if expected[(s, d)] else "reached")
            bad.append(f"{s}->{d} {state}")
        more = f" (+{len(table.wrong) - 3} more)" if len(table.wrong) > 3 else ""
        reason = (f"{', '.join(bad)}{more}: look at icc (FORWARD -i br -o br) and "
                  f"DOCKER-ISOLATION-STAGE-2 on the hosts, and which networks each sandbox joined")
        if any(not expected[c] and c in table.one_way for c in table.wrong):
            reason += ("; a one-way cell means packets reach the destination and only the "
                       "replies are dropped: isolation must stop the packets themselves")
    return CheckResult(label, "matrix", table.ok, exp_text, table.summary, reason, table=table)


# ---------------------------------------------------------------------------------------------
# egress NAT


def _seen_ip(res: probes.ProbeResult) -> str | None:
    return res.seen_as.rsplit(":", 1)[0] if res.seen_as else None


@check_kind("egress-nat-seen")
def egress_nat_seen(target: Target, params: dict[str, Any]) -> CheckResult:
    p = _checked("egress-nat-seen", params)
    src = _end(target, p["from"], "from")
    if src.sandbox is None or src.is_upstream:
        raise CnmError(f"from: {src.label} must be a sandbox")
    host = _host_of(target, p.get("host") or src.sandbox.host, "host")
    up = target.upstream()
    if up is None:
        raise CnmError(f"egress-nat-seen needs an upstream observer; {target.name} has none")
    up_ip = up.ip()
    expect = p.get("expect", "host")
    label = f"egress-nat-seen {src.label} -> upstream ({expect})"
    with probes.EchoServer(up.ns, "tcp", p.get("port", 0), bind=up_ip, name="upstream") as srv:
        res = probes.tcp_connect(src.ref, up_ip, srv.port,
                                 timeout=float(p.get("timeout", DEFAULT_TIMEOUT)), echo=True,
                                 watch=up.ns)
    seen = _seen_ip(res)
    mine = set(src.sandbox.addresses.values())
    hl = host.name
    if expect == "none":
        exp = f"{src.label} cannot reach the upstream at {up_ip}"
        ok = not res.ok and not res.arrived
        obs = f"upstream saw {seen}" if res.ok else res.observed
        if not res.ok and res.arrived:
            obs += (f"; the upstream received {res.arrived} of {src.label}'s connection "
                    f"attempts, no answer came back (one-way: {src.label} -> upstream)")
        reason = "" if ok else (f"{src.label} got out" + (f" as {seen}" if seen else
                                " (only the answers were lost)")
                                + f": look at whether its network should be internal (no "
                                f"default route, no MASQUERADE, DOCKER-ISOLATION drops) on {hl}")
        return CheckResult(label, "egress-nat-seen", ok, exp, obs, reason)
    want = host.public_ip if expect == "host" else None
    exp = (f"upstream sees {src.label} as {want} (host {hl})" if expect == "host"
           else f"upstream never sees {src.label}'s own addresses ({', '.join(sorted(mine))})"
           if expect == "masqueraded"
           else f"upstream sees {src.label}'s own address ({', '.join(sorted(mine))})")
    if not res.ok:
        reason = (f"no answer from the upstream: look at {src.label}'s default route, "
                  f"ip_forward and FORWARD on {hl}, and nat POSTROUTING MASQUERADE for its "
                  f"subnet (the upstream cannot answer a private address)")
        return CheckResult(label, "egress-nat-seen", False, exp, res.observed, reason)
    obs = f"upstream saw {seen}"
    if expect == "host":
        ok = seen == want
        if ok:
            reason = ""
        elif seen in mine:
            reason = (f"the upstream saw the sandbox's own address: look at nat POSTROUTING "
                      f"on {hl} (-s <subnet> ! -o <bridge> -j MASQUERADE)")
        else:
            reason = (f"the upstream saw {seen}, not {want}: look at nat POSTROUTING on {hl} "
                      f"(MASQUERADE vs SNAT --to-source, and which interface it leaves by)")
    elif expect == "masqueraded":  # behind more than one NAT (a host on a LAN behind a router)
        ok = seen not in mine
        reason = "" if ok else (f"the upstream saw the sandbox's own address: look at nat "
                                f"POSTROUTING on {hl} (MASQUERADE for its gateway network)")
    else:
        ok = seen in mine
        reason = "" if ok else (f"the source was rewritten to {seen}: look at nat POSTROUTING "
                                f"on {hl} (masquerade should be off for this network)")
    return CheckResult(label, "egress-nat-seen", ok, exp, obs, reason)


# ---------------------------------------------------------------------------------------------
# published ports and hairpin


def _container_port(target: Target, to: str, host: str, port: int, proto: str) -> int | None:
    fn = getattr(target, "published", None)
    if fn is None:
        return None
    for sb, h, hp, cp, pr in fn():
        if sb == to and hp == port and pr == proto and h == host:
            return cp
    return None


def _published(target: Target, params: dict[str, Any], kind: str) -> CheckResult:
    p = _checked(kind, params)
    to = _end(target, p["to"], "to")
    if to.sandbox is None or to.is_upstream:
        raise CnmError(f"to: {to.label} must be a sandbox")
    src = _end(target, p.get("from", "upstream"), "from")
    host = _host_of(target, p.get("host") or to.sandbox.host, "host")
    if not host.public_ip:
        raise CnmError(f"host {host.name} has no public address to publish on")
    proto = p.get("proto", "tcp")
    port = int(p["port"])
    cport = p.get("container_port") or _container_port(target, to.label, host.name, port, proto)
    if cport is None:
        raise CnmError(f"{kind}: give container_port (the target does not say where "
                       f"{host.name}:{port}/{proto} goes)")
    timeout = float(p.get("timeout", DEFAULT_TIMEOUT))
    label = f"{kind} {src.label} -> {host.name}:{port}/{proto} -> {to.label}:{cport}"
    exp = f"{to.label} answers {host.public_ip}:{port}/{proto} (from {src.label})"
    server = p.get("server", True) is not False
    srv = probes.EchoServer(to.ref, proto, cport, name=to.label) if server else None
    try:
        if srv is not None:
            srv.start()
    except probes.PortInUse as e:
        srv = None
        res = _around_listener(src, host.public_ip, proto, port, timeout, e, to.label)
    else:
        try:
            if proto == "tcp":
                res = probes.tcp_connect(src.ref, host.public_ip, port, timeout=timeout,
                                         echo=server)
            else:
                res = probes.udp_probe(src.ref, host.public_ip, port, timeout=timeout)
        finally:
            if srv is not None:
                srv.stop()
    ok = bool(res.ok) and (res.server == to.label or (not server and srv is None))
    hl = host.name
    if ok:
        reason = ""
    elif res.reason == "busy":
        reason = _busy_hint(proto, cport, to.label)
    elif res.ok:
        reason = (f"{res.server} answered instead of {to.label}: look at the DNAT destination "
                  f"in nat DOCKER on {hl} (--to-destination <{to.label}'s ip>:{cport})")
    elif src.is_upstream or src.host is not None:
        reason = (f"look at nat DOCKER on {hl} (! -i <bridge> -p {proto} --dport {port} -j DNAT "
                  f"--to-destination <{to.label}'s ip>:{cport}), nat PREROUTING -j DOCKER, and "
                  f"the filter DOCKER ACCEPT for {cport}/{proto}")
    else:
        reason = (f"hairpin from {src.label}: look at nat OUTPUT/PREROUTING -j DOCKER on {hl}, "
                  f"the POSTROUTING MASQUERADE for {to.label} to itself, and the userland "
                  f"proxy or hairpin mode on the bridge port")
    return CheckResult(label, kind, ok, exp, res.observed or res.reason, reason)


@check_kind("published-port")
def published_port(target: Target, params: dict[str, Any]) -> CheckResult:
    return _published(target, params, "published-port")


@check_kind("hairpin")
def hairpin(target: Target, params: dict[str, Any]) -> CheckResult:
    return _published(target, params, "hairpin")


# ---------------------------------------------------------------------------------------------
# DNS


def resolv_conf_path(ref: NsRef) -> str | None:
    if ref.name is not None:
        return f"/etc/netns/{ref.name}/resolv.conf"
    if ref.pid is not None:
        return f"/proc/{ref.pid}/root/etc/resolv.conf"
    return None


RESOLV_MAX = 64 << 10


def read_config_file(path: str, limit: int = RESOLV_MAX) -> str:
    """A small regular file that someone else controls (a sandbox's resolv.conf, seen through
    ``/proc/PID/root``), read so that it cannot hang or swamp the checker: opened non-blocking
    (a FIFO would wait for a writer forever), refused unless it is a regular file (not
    /dev/zero, not a device), and read up to ``limit`` bytes. OSError as ``open`` raises it."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise CnmError(f"{path} is not a regular file")
        return os.read(fd, limit).decode("utf-8", errors="replace")
    finally:
        os.close(fd)


def nameservers(text: str) -> list[str]:
    return [w[1] for w in (line.split() for line in text.splitlines())
            if len(w) >= 2 and w[0] == "nameserver"]


def nameserver_of(ref: NsRef) -> str:
    """The first nameserver the sandbox's resolv.conf names."""
    path = resolv_conf_path(ref)
    if path is None:
        raise CnmError(f"cannot find the resolv.conf of {ref}: give server:")
    try:
        servers = nameservers(read_config_file(path))
    except OSError as e:
        raise CnmError(f"cannot read {path} ({e.strerror}): give server:") from None
    if not servers:
        raise CnmError(f"{path} names no nameserver")
    return servers[0]


def _dns_server(src: End, p: dict[str, Any]) -> str:
    server = p.get("server")
    if isinstance(server, str):
        return server
    return nameserver_of(src.ref)


@check_kind("dns-resolves")
def dns_resolves(target: Target, params: dict[str, Any]) -> CheckResult:
    p = _checked("dns-resolves", params)
    src = _end(target, p["from"], "from")
    server = _dns_server(src, p)
    items = p["expect"] if isinstance(p["expect"], list) else [p["expect"]]
    sbs = target.sandboxes()
    wanted: list[tuple[str, set[str]]] = []  # (label, acceptable addresses)
    for item in items:
        if _is_ipv4(item):
            wanted.append((item, {item}))
        elif item in sbs:
            other = End(item, sbs[item].ns, sandbox=sbs[item])
            shared = _shared(src, other)
            addrs = {sbs[item].addresses[n] for n in shared} or set(sbs[item].addresses.values())
            wanted.append((item, addrs))
        else:
            raise CnmError(f"expect: {item!r} is neither an IPv4 address nor a sandbox")
    label = f"dns-resolves {p['name']} from {src.label} @{server}"
    exp = f"{p['name']} -> " + ", ".join(
        f"{lab}" + (f" ({'/'.join(sorted(a))})" if lab not in a else "") for lab, a in wanted)
    try:
        got = probes.dns_query(src.ref, p["name"], server,
                               timeout=float(p.get("timeout", DEFAULT_TIMEOUT)))
    except probes.DnsError as e:
        reason = (f"look at the resolver {server} as seen from {src.label}: does it listen "
                  f"(embedded DNS: user-defined networks only), and does it know {p['name']} "
                  f"(sandbox name, alias, name.network)?")
        return CheckResult(label, "dns-resolves", False, exp, str(e), reason)
    every = set().union(*(a for _, a in wanted))
    missing = [lab for lab, a in wanted if not a & set(got)]
    extra = [ip for ip in got if ip not in every]
    ok = bool(got) and not missing and not extra
    obs = f"{p['name']} -> {', '.join(got) or 'no A records'}"
    reason = ""
    if not ok:
        if missing:
            reason = (f"{', '.join(missing)} missing from the answer: look at which networks "
                      f"{src.label} shares with it and the names/aliases the resolver knows")
        else:
            reason = (f"{', '.join(extra)} should not be in the answer: look at stale records "
                      f"or aliases shared by other sandboxes")
    return CheckResult(label, "dns-resolves", ok, exp, obs, reason)


@check_kind("dns-absent")
def dns_absent(target: Target, params: dict[str, Any]) -> CheckResult:
    p = _checked("dns-absent", params)
    src = _end(target, p["from"], "from")
    server = _dns_server(src, p)
    label = f"dns-absent {p['name']} from {src.label} @{server}"
    exp = f"{p['name']} does not resolve"
    try:
        got = probes.dns_query(src.ref, p["name"], server,
                               timeout=float(p.get("timeout", DEFAULT_TIMEOUT)))
    except probes.DnsError as e:
        return CheckResult(label, "dns-absent", True, exp, str(e), "")
    ok = not got
    obs = f"{p['name']} -> {', '.join(got) or 'no A records'}"
    reason = "" if ok else (f"{src.label} can resolve {p['name']}: look at whether they share a "
                            f"network (names are only served to members of the same network)")
    return CheckResult(label, "dns-absent", ok, exp, obs, reason)


# ---------------------------------------------------------------------------------------------
# kernel state


@contextlib.contextmanager
def _netlink(ref: NsRef) -> Iterator[Any]:
    """A ``Netlink`` bound to the namespace ``ref`` (by name, path or PID)."""
    with ref.opened() as fd:
        nl = Netlink(fd=fd)
    try:
        yield nl
    finally:
        nl.close()


def _ns_end(target: Target, spec: Any, role: str) -> End:
    e = _end(target, spec, role)
    if e.ns is None:
        raise CnmError(f"{role}: {e.label} is not a namespace")
    return e


def _missing_link(e: End, ifname: str, links: list[Any]) -> str:
    return f"no link {ifname} in {e.label} (it has {', '.join(l.name for l in links)})"


@check_kind("mtu")
def mtu(target: Target, params: dict[str, Any]) -> CheckResult:
    p = _checked("mtu", params)
    e = _ns_end(target, p.get("sandbox", p.get("ns")), "sandbox")
    ifname = p.get("interface", "eth0")
    label = f"mtu {e.label} {ifname} = {p['mtu']}"
    with _netlink(e.ref) as nl:
        links = nl.links()
    link = next((l for l in links if l.name == ifname), None)
    exp = f"{ifname} in {e.label} has mtu {p['mtu']}"
    if link is None:
        return CheckResult(label, "mtu", False, exp, _missing_link(e, ifname, links),
                           f"look at ip link in {e.label}: was the endpoint joined?")
    ok = link.mtu == p["mtu"]
    reason = "" if ok else (f"look at the network's com.docker.network.driver.mtu option and "
                            f"ip link set {ifname} mtu in {e.label} (both veth ends and the "
                            f"bridge should agree)")
    return CheckResult(label, "mtu", ok, exp, f"mtu {link.mtu}", reason)


def df_ping(ref: NsRef, ip: str, payload: int, timeout: float) -> bool:
    """One ICMP echo with ``payload`` bytes and Don't Fragment set (``ping -M do -s``)."""
    proc = subprocess.run(["nsenter", f"--net={ref.fspath}", "--", "ping", "-n", "-q", "-c1",
                           "-M", "do", "-s", str(payload), "-W", f"{timeout:g}", ip],
                          capture_output=True, text=True, timeout=timeout + 5)
    return proc.returncode == 0


@check_kind("path-mtu")
def path_mtu(target: Target, params: dict[str, Any]) -> CheckResult:
    """The largest packet that crosses from one sandbox to another unfragmented is ``mtu``:
    a DF ping of mtu - 28 bytes of payload passes, one byte more does not. Over VXLAN that
    is what leaves room for the 50 bytes of encapsulation (1450 inside a 1500 underlay)."""
    p = _checked("path-mtu", params)
    src = _ns_end(target, p["from"], "from")
    dst = _end(target, p["to"], "to", allow_ip=True)
    ip = _dest_ip(src, dst, p.get("network"))
    size = int(p["mtu"]) - 28
    timeout = float(p.get("timeout", DEFAULT_TIMEOUT))
    fits = df_ping(src.ref, ip, size, timeout)
    over = df_ping(src.ref, ip, size + 1, timeout)
    label = f"path-mtu {src.label} -> {dst.label} = {p['mtu']}"
    obs = (f"DF ping of {size} bytes {'passes' if fits else 'fails'}, of {size + 1} "
           f"{'passes' if over else 'fails'}")
    ok = fits and not over
    if not fits:
        reason = (f"a {p['mtu']}-byte packet does not get through: is the peer reachable at "
                  f"all, and is the underlay's MTU big enough for the encapsulation?")
    elif over:
        reason = (f"packets bigger than {p['mtu']} get through too: the sandbox's MTU is too "
                  f"big for the tunnel (look at ip link in {src.label}; VXLAN needs 50 bytes)")
    else:
        reason = ""
    return CheckResult(label, "path-mtu", ok, f"DF ping of {size} passes, {size + 1} fails",
                       obs, reason)


@check_kind("esp-on-wire")
def esp_on_wire(target: Target, params: dict[str, Any]) -> CheckResult:
    """An encrypted overlay: while ``traffic`` flows, the wire carries ESP and never a
    readable VXLAN frame of the network's VNI."""
    p = _checked("esp-on-wire", params)
    e = _ns_end(target, p["ns"], "ns")
    vni = p["vni"]
    if isinstance(vni, str) and not vni.isdigit():
        vni = (getattr(target, "networks", lambda: {})().get(vni) or {}).get("vni")
        if vni is None:
            raise CnmError(f"vni: {target.name} names no VNI for network {p['vni']!r}")
    vni = int(vni)
    timeout = float(p.get("timeout", 2.0))
    thread = None
    capturing = threading.Event()
    if p.get("traffic"):
        src = _end(target, p["traffic"]["from"], "traffic.from")
        dst = _end(target, p["traffic"]["to"], "traffic.to", allow_ip=True)
        ip = _dest_ip(src, dst, None)

        def send() -> None:
            capturing.wait(timeout)  # traffic sent before the capture opens is not seen
            with contextlib.suppress(CnmError):
                probes.ping(src.ref, ip, timeout=max(0.2, timeout - 0.2), count=3)

        thread = threading.Thread(target=send, daemon=True)
        thread.start()
    esp = [0]
    try:
        seen = capture_vnis(e.ref, p["interface"], frames.VXLAN_PORT, timeout, esp=esp,
                            ready=capturing,
                            busy=thread.is_alive if thread is not None else None)
    finally:
        capturing.set()
        if thread is not None:
            thread.join(timeout + 1)
    ok = esp[0] > 0 and vni not in seen
    label = f"esp-on-wire {e.label} {p['interface']} vni {vni}"
    obs = f"{esp[0]} ESP frame(s); clear VXLAN VNIs: {', '.join(map(str, sorted(seen))) or 'none'}"
    reason = "" if ok else (
        f"VXLAN of VNI {vni} crosses in clear: look at ip xfrm policy/state on the hosts and "
        f"the mangle OUTPUT rule that marks the network's VXLAN (0xd0c4e3)" if vni in seen
        else "no ESP seen: is there traffic between the hosts, and an xfrm state for it?")
    return CheckResult(label, "esp-on-wire", ok, f"ESP only, no clear VXLAN of VNI {vni}",
                       obs, reason)


@check_kind("vxlan")
def vxlan_link(target: Target, params: dict[str, Any]) -> CheckResult:
    """A VXLAN device as ``ip -d link show`` describes it: VNI, UDP port and flags."""
    p = _checked("vxlan", params)
    e = _ns_end(target, p["ns"], "ns")
    name = p.get("name", "vxlan0")
    want: dict[str, Any] = {}
    if "vni" in p:
        vni = p["vni"]
        if isinstance(vni, str) and not vni.isdigit():
            vni = (getattr(target, "networks", lambda: {})().get(vni) or {}).get("vni")
            if vni is None:
                raise CnmError(f"vni: {target.name} names no VNI for network {p['vni']!r}")
        want["id"] = int(vni)
    for key in ("port", "learning", "proxy", "l2miss", "l3miss", "mtu"):
        if key in p:
            want[key] = p[key]
    label = f"vxlan {e.label} {name} " + " ".join(f"{k}={v}" for k, v in want.items())
    exp = f"{name} in {e.label}: " + ", ".join(f"{k} {v}" for k, v in want.items())
    with _netlink(e.ref) as nl:
        try:
            got = nl.vxlan(name)
            master = next((l.master for l in nl.links() if l.name == name), None)
        except CnmError as err:
            return CheckResult(label, "vxlan", False, exp, str(err),
                               f"create it: ip link add {name} type vxlan id VNI dstport 4789 "
                               f"... (in the host, then move it into {e.label})")
    wrong = {k: got.get(k) for k, v in want.items() if got.get(k) != v}
    if "master" in p and master != p["master"]:
        wrong["master"] = master
    obs = ", ".join(f"{k} {got.get(k)}" for k in want) + (f", master {master}" if master else "")
    reason = "" if not wrong else ("look at ip -d link show " + name + " in " + e.label + ": "
                                   + ", ".join(f"{k} is {v}" for k, v in wrong.items()))
    return CheckResult(label, "vxlan", not wrong, exp, obs, reason)


@check_kind("peer-entry")
def peer_entry(target: Target, params: dict[str, Any]) -> CheckResult:
    """A remote endpoint programmed the way overlay does it: a PERMANENT neighbour entry
    (IP -> MAC on the VXLAN device) and a permanent FDB entry (MAC -> the remote VTEP)."""
    p = _checked("peer-entry", params)
    e = _ns_end(target, p["ns"], "ns")
    dev = p.get("name", "vxlan0")
    ip, mac, vtep = str(p["ip"]), str(p["mac"]).lower(), str(p["vtep"])
    present = p.get("present", True)
    if not _is_ipv4(ip):  # a sandbox's name: its address on the namespace's network
        ip = _dest_ip(e, _end(target, ip, "ip"), None)
    if not _is_ipv4(vtep):  # a host's name: its underlay address
        vtep = _host_of(target, vtep, "vtep").public_ip or vtep
    if mac == "docker":
        mac = docker_mac(ip)
    with _netlink(e.ref) as nl:
        neigh = [n for n in nl.neighbours() if n.dev == dev and n.ip == ip]
        fdb = [f for f in nl.fdb() if f.dev == dev and (f.mac or "").lower() == mac and f.dst]
    has_neigh = any(n.state == "PERMANENT" and (n.mac or "").lower() == mac for n in neigh)
    has_fdb = any(f.dst == vtep and f.permanent for f in fdb)
    label = f"peer-entry {e.label} {ip} {mac} -> {vtep}" + ("" if present else " absent")
    obs = (f"neighbour: {', '.join(f'{n.mac} {n.state}' for n in neigh) or 'none'}; "
           f"fdb: {', '.join(f'{f.mac} dst {f.dst}' for f in fdb) or 'none'}")
    if present:
        ok = has_neigh and has_fdb
        exp = f"{ip} lladdr {mac} PERMANENT and fdb {mac} dst {vtep} on {dev}"
        reason = "" if ok else (
            f"in {e.label}: ip neigh replace {ip} lladdr {mac} dev {dev} nud permanent; "
            f"bridge fdb replace {mac} dev {dev} dst {vtep} self permanent")
    else:
        ok = not has_neigh and not has_fdb
        exp = f"no entry for {ip} on {dev}"
        reason = "" if ok else f"in {e.label}: ip neigh del {ip} dev {dev}; bridge fdb del ..."
    return CheckResult(label, "peer-entry", ok, exp, obs, reason)


def docker_mac(ip: str) -> str:
    """Docker's pre-v28 MAC for an address: 02:42 followed by the four IPv4 bytes."""
    return "02:42:" + ":".join(f"{b:02x}" for b in ipaddress.IPv4Address(ip).packed)


@check_kind("mac")
def mac(target: Target, params: dict[str, Any]) -> CheckResult:
    p = _checked("mac", params)
    e = _ns_end(target, p["sandbox"], "sandbox")
    ifname = p.get("interface", "eth0")
    with _netlink(e.ref) as nl:
        links = nl.links()
    link = next((l for l in links if l.name == ifname), None)
    label = f"mac {e.label} {ifname}"
    if link is None:
        return CheckResult(label, "mac", False, f"{ifname} exists in {e.label}",
                           _missing_link(e, ifname, links),
                           f"look at ip link in {e.label}: was the endpoint joined?")
    want = str(p["mac"]).lower()
    how = ""
    if want == "docker":
        if not link.addresses:
            return CheckResult(label, "mac", False, f"{ifname} has 02:42:<its IPv4>",
                               f"{ifname} has no IPv4 address",
                               f"look at ip addr in {e.label}")
        ip = link.addresses[0].split("/")[0]
        want = docker_mac(ip)
        how = f" (02:42 + {ip})"
    ok = link.mac.lower() == want
    reason = "" if ok else (f"look at ip link set {ifname} address in {e.label} "
                            f"(Docker before v28 derives it from the IPv4 address)")
    return CheckResult(label, "mac", ok, f"{ifname} has MAC {want}{how}", f"MAC {link.mac}",
                       reason)


@check_kind("default-route")
def default_route(target: Target, params: dict[str, Any]) -> CheckResult:
    p = _checked("default-route", params)
    e = _ns_end(target, p["sandbox"], "sandbox")
    via = p["via"]
    with _netlink(e.ref) as nl:
        routes = [r for r in nl.routes() if r.dst == "default"]
    label = f"default-route {e.label} via {via or 'none'}"
    obs = ", ".join(f"default via {r.gateway} dev {r.dev}" if r.gateway
                    else f"default dev {r.dev}" for r in routes) or "no default route"
    if via is None and p.get("dev"):  # a device route, no gateway (ipvlan l3)
        dev = p["dev"]
        label = f"default-route {e.label} dev {dev}"
        ok = len(routes) == 1 and routes[0].gateway is None and routes[0].dev == dev
        return CheckResult(label, "default-route", ok, f"default dev {dev} (no gateway)", obs,
                           "" if ok else f"look at ip route in {e.label}: ipvlan l3 routes "
                                         f"everything out of {dev} with no gateway (ip route "
                                         f"add default dev {dev})")
    if via is None:
        ok = not routes
        return CheckResult(label, "default-route", ok, "no default route", obs,
                           "" if ok else f"look at ip route in {e.label}: an internal network "
                                         f"gives no default route (ip route del default)")
    ok = any(r.gateway == via for r in routes) and len(routes) == 1
    gateways = {info.get("gateway"): n for n, info in _networks(target).items()}
    role = (f" (the gateway of network {gateways[via]}, the bridge's address)"
            if via in gateways else "")
    if len(routes) > 1:
        problem = f"it has {len(routes)} default routes: delete the wrong one (ip route del default via ...)"
    else:
        problem = f"ip route add default via {via}" + (
            " (or ip route replace ...)" if routes else "")
    reason = "" if ok else (f"look at ip route in {e.label}: the default route should go via "
                            f"{via}{role}; {problem}")
    return CheckResult(label, "default-route", ok, f"default via {via}", obs, reason)


@check_kind("link")
def link(target: Target, params: dict[str, Any]) -> CheckResult:
    p = _checked("link", params)
    e = _ns_end(target, p["ns"], "ns")
    name = p["name"]
    with _netlink(e.ref) as nl:
        links = nl.links()
    li = next((l for l in links if l.name == name), None)
    want = [f"{k}={p[k]}" for k in ("kind", "master", "up", "address", "mtu") if k in p]
    if "peer" in p:
        want.append(f"peer={p['peer']['name']} in {wiring.pretty(p['peer']['ns'])}")
    label = f"link {name} in {e.label}" + (f" ({', '.join(want)})" if want else "")
    exp = f"{name} exists in {e.label}" + (f" with {', '.join(want)}" if want else "")
    if li is None:
        return CheckResult(label, "link", False, exp, _missing_link(e, name, links),
                           f"look at ip link in {e.label}: create or move {name} there")
    problems = []
    obs = [f"kind={li.kind}", f"master={li.master}", f"mtu={li.mtu}"]
    if "kind" in p and li.kind != p["kind"]:
        problems.append(f"it is a {li.kind}, not a {p['kind']}")
    if "master" in p and li.master != p["master"]:
        ports = [l.name for l in links if l.master == p["master"]]
        on = (f"; {p['master']}'s ports: {', '.join(ports)}" if ports
              else f"; {p['master']} has no ports" if any(l.name == p["master"] for l in links)
              else f"; there is no {p['master']} in {e.label}")
        problems.append(f"its master is {li.master or 'none'}, not {p['master']} "
                        f"(ip link set {name} master {p['master']}){on}")
    if "peer" in p:
        problems += _peer_problems(target, e, li, p["peer"])
    if "up" in p:
        up = li.admin_up
        obs.append(f"up={up}")
        if up != p["up"]:
            problems.append(f"it is {'up' if up else 'down'} (ip link set {name} "
                            f"{'up' if p['up'] else 'down'})")
    if "address" in p:
        obs.append(f"addresses={','.join(li.addresses) or 'none'}")
        try:
            want_if = ipaddress.ip_interface(p["address"])
        except ValueError:
            raise CnmError(f"address: {p['address']!r} is not an address in CIDR form") from None
        if str(want_if) not in li.addresses:
            problems.append(f"it lacks {want_if} (ip addr add {want_if} dev {name})")
    if "mtu" in p and li.mtu != p["mtu"]:
        problems.append(f"its mtu is {li.mtu}, not {p['mtu']}")
    ok = not problems
    return CheckResult(label, "link", ok, exp, " ".join(obs),
                       "" if ok else f"{name} in {e.label}: " + "; ".join(problems))


def _peer_problems(target: Target, e: End, li: Any, want: dict[str, str]) -> list[str]:
    """Which end pairs with which: the veth ``li`` in ``e`` must pair with ``want``."""
    if li.kind != "veth":
        return []  # the kind mismatch is already said
    member = _member_label(e)
    known = wiring.members(target)
    want_member = want["ns"] if want["ns"] in known or f"host:{want['ns']}" not in known \
        else f"host:{want['ns']}"
    peer = wiring.veth_peer(target, member, li.name)
    if peer is None:
        return [f"cannot find its peer"]
    if peer.member == want_member and peer.name == want["name"]:
        return []
    want_text = f"{want['name']} in {wiring.pretty(want_member)}"
    out = [f"it pairs with {peer}, not with {want_text}"]
    # and what the expected end is wired to, if it exists
    try:
        other = wiring.veth_peer(target, want_member, want["name"])
    except (CnmError, KeyError):
        other = None
    if other is not None:
        out.append(f"{want_text} pairs with {other}")
    out.append(f"delete the wrong pair(s) (ip link del {li.name} in {e.label} removes both of "
               f"its ends) and create it again: ip link add {li.name} type veth peer name "
               f"{want['name']} netns {_ns_name(known.get(want_member), want_member)}")
    return out


def _ns_name(ref: NsRef | None, member: str) -> str:
    """What ``ip link ... netns`` takes for a member: its netns name when it has one."""
    if ref is not None and ref.name:
        return ref.name
    return f"<the namespace of {wiring.pretty(member)}>"


def _iptables_lines(ns: NsRef, table: str) -> list[str]:
    with ns.pinned_path() as path:
        try:
            out = nsexec.run(path, ["iptables", "-w", "-t", table, "-S"]).stdout
        except CnmError as e:  # name the namespace, not the fd it was entered by
            raise CnmError(str(e).replace(path, str(ns))) from None
    return [" ".join(l.split()) for l in out.splitlines() if l.strip()]


@check_kind("iptables-rule")
def iptables_rule(target: Target, params: dict[str, Any]) -> CheckResult:
    p = _checked("iptables-rule", params)
    host = _host_of(target, p["host"])
    table = p.get("table", "filter")
    rule = " ".join(str(p["rule"]).split())
    present = p.get("present", True)
    label = f"iptables-rule {host.name} {table}: {rule}" + ("" if present else " (absent)")
    found = rule in _iptables_lines(host.ns, table)
    if not found:
        # a rule written without the implicit "-m tcp" etc.: ask iptables itself (-C)
        words = shlex.split(rule)
        if len(words) >= 2 and words[0] in ("-A", "-I"):
            argv = ["iptables", "-w", "-t", table, "-C", *words[1:]]
            if words[0] == "-I" and len(words) >= 3 and words[2].isdigit():
                argv = ["iptables", "-w", "-t", table, "-C", words[1], *words[3:]]
            with host.ns.pinned_path() as path:
                found = nsexec.run(path, argv, check=False).returncode == 0
    ok = found == present
    exp = f"{'present' if present else 'absent'} in {table} on {host.name}"
    obs = "present" if found else "absent"
    if ok:
        reason = ""
    elif present:
        reason = f"look at iptables -t {table} -S on {host.name}: add {rule}"
    else:
        reason = f"look at iptables -t {table} -S on {host.name}: delete {rule}"
    if ok and present and p.get("before"):
        return _rule_order(label, host, table, rule, " ".join(p["before"].split()))
    return CheckResult(label, "iptables-rule", ok, exp, obs, reason)


def _without_matches(rule: str) -> str:
    """A rule without the implicit ``-m tcp``/``-m udp`` that ``iptables -S`` adds."""
    words = rule.split()
    out = []
    i = 0
    while i < len(words):
        if words[i] == "-m" and i + 1 < len(words) and words[i + 1] in ("tcp", "udp", "icmp"):
            i += 2
            continue
        out.append(words[i])
        i += 1
    return " ".join(out)


def _rule_order(label: str, host: HostRef, table: str, rule: str,
                before: str) -> CheckResult:
    """Order is the lesson: ``rule`` must come before ``before`` in their chain (the first
    rule that matches a packet decides)."""
    chain = rule.split()[1]
    lines = [l for l in _iptables_lines(host.ns, table) if l.split()[:2] == ["-A", chain]]
    plain = [_without_matches(l) for l in lines]
    pos = next((i for i, l in enumerate(plain) if l == _without_matches(rule)), None)
    other = next((i for i, l in enumerate(plain) if l == _without_matches(before)), None)
    exp = f"present in {table} on {host.name}, before {before}"
    listing = "; ".join(f"{i + 1}: {' '.join(l.split()[2:])}" for i, l in enumerate(lines))
    if pos is None or other is None or pos < other:
        return CheckResult(label, "iptables-rule", True, exp, f"{chain}: {listing}", "")
    reason = (f"it is rule {pos + 1} of {chain}, after {before} (rule {other + 1}): a packet "
              f"that matches the earlier rule never reaches it. Delete it (iptables "
              f"{'-t ' + table + ' ' if table != 'filter' else ''}-D {' '.join(rule.split()[1:])}) "
              f"and insert it above (iptables -I {chain} {other + 1} ...)")
    return CheckResult(label, "iptables-rule", False, exp, f"{chain}: {listing}", reason)


def read_sysctl(ns: NsRef, key: str) -> str:
    with ns.opened() as fd:
        try:
            return sysctl.read(key, fd=fd)
        except CnmError as e:
            raise CnmError(f"{e} (in {ns})") from None


@check_kind("sysctl")
def sysctl_check(target: Target, params: dict[str, Any]) -> CheckResult:
    p = _checked("sysctl", params)
    e = _ns_end(target, p["ns"], "ns")
    key = p["key"]
    value = " ".join(str(p["value"]).split())
    got = " ".join(read_sysctl(e.ref, key).split())
    ok = got == value
    return CheckResult(f"sysctl {e.label} {key} = {value}", "sysctl", ok, f"{key} = {value}",
                       f"{key} = {got}",
                       "" if ok else f"look at sysctl -w {key}={value} inside {e.label}")


# ---------------------------------------------------------------------------------------------
# packets on the wire


def capture_vnis(ns: NsRef, ifname: str, port: int, duration: float,
                 stop_at: int | None = None, esp: list[int] | None = None,
                 ready: threading.Event | None = None,
                 busy: Callable[[], bool] | None = None) -> set[int]:
    """VNIs seen on ``ifname`` in ``ns`` during ``duration`` s (both directions); ESP
    frames are counted into ``esp[0]`` when a list is given. ``ready`` is set once the
    capture socket is open (traffic sent before that would not be seen); while ``busy()``
    holds (the traffic is still being sent) the capture goes on past ``duration``, up to
    ``duration`` + 30 s."""
    with ns.opened() as fd:
        cap = Capture(None, ifname, fd=fd)
        try:
            cap.open()
        except OSError as e:
            cap.close()
            raise CnmError(f"cannot capture on {ifname} in {ns}: {e.strerror}") from None
    if ready is not None:
        ready.set()
    seen: set[int] = set()
    try:
        start = time.monotonic()
        deadline = start + duration
        while (left := deadline - time.monotonic()) > 0 or (
                busy is not None and busy() and time.monotonic() < start + duration + 30):
            for pkt in cap.read(max(left, 0.05)):
                vni = frames.vxlan_vni(pkt.data, port)
                if vni is not None:
                    seen.add(vni)
                elif esp is not None and frames.is_esp(pkt.data):
                    esp[0] += 1
            if stop_at is not None and stop_at in seen:
                break
    finally:
        cap.close()
    return seen


@check_kind("vxlan-on-wire")
def vxlan_on_wire(target: Target, params: dict[str, Any]) -> CheckResult:
    p = _checked("vxlan-on-wire", params)
    e = _ns_end(target, p["ns"], "ns")
    ifname = p["interface"]
    vni = p["vni"]
    if isinstance(vni, str) and not vni.isdigit():  # a network's name: the target knows its VNI
        nets = getattr(target, "networks", lambda: {})()
        vni = (nets.get(vni) or {}).get("vni")
        if vni is None:
            raise CnmError(f"vni: {target.name} names no VNI for network {p['vni']!r}")
    vni = int(vni)
    port = p.get("port", frames.VXLAN_PORT)
    timeout = float(p.get("timeout", 2.0))
    traffic = p.get("traffic")
    ping: dict[str, Any] = {}
    thread = None
    capturing = threading.Event()
    if traffic:
        src = _end(target, traffic["from"], "traffic.from")
        dst = _end(target, traffic["to"], "traffic.to", allow_ip=True)
        ip = _dest_ip(src, dst, None)

        def send() -> None:
            # only once the capture socket is open: on a loaded machine a fixed pause was
            # sometimes shorter than opening it, and the check saw no VXLAN at all
            capturing.wait(timeout)
            try:
                ping["res"] = probes.ping(src.ref, ip, timeout=max(0.2, timeout - 0.2),
                                          count=3)
            except CnmError as err:
                ping["err"] = str(err)

        thread = threading.Thread(target=send, daemon=True)
        thread.start()
    try:
        seen = capture_vnis(e.ref, ifname, port, timeout, stop_at=vni, ready=capturing,
                            busy=thread.is_alive if thread is not None else None)
    finally:
        capturing.set()  # a capture that failed to open releases the sender
        if thread is not None:
            thread.join(timeout + 1)
    label = f"vxlan-on-wire {e.label} {ifname} vni {vni} udp/{port}"
    ok = vni in seen
    obs = (f"VNIs seen: {', '.join(map(str, sorted(seen)))}" if seen
           else f"no VXLAN on udp/{port}")
    if "res" in ping:
        obs += f"; traffic: {ping['res'].observed}"
    elif "err" in ping:
        obs += f"; traffic: {ping['err']}"
    if ok:
        reason = ""
    elif seen:
        reason = (f"VXLAN with another VNI: look at the vxlan link's id (ip -d link show) on "
                  f"both ends")
    else:
        reason = (f"look at the vxlan link (ip -d link: id {vni}, dstport {port}, local/remote "
                  f"or group), the underlay route to the peer and the FDB (bridge fdb)")
    return CheckResult(label, "vxlan-on-wire", ok, f"VXLAN VNI {vni} on udp/{port} on {ifname}",
                       obs, reason)


# ---------------------------------------------------------------------------------------------
# load balancing


@dataclass
class Distribution:
    """Where N requests to a VIP went: one row per backend, with its fair share and band.

    Duck-types ``TruthTable``'s ``render_text``/``to_dict``, so reports print it under the
    check (the closing note of a lab run shows the observed spread).
    """

    requests: int
    rows: list[tuple[str, int, str]]  # backend, answers, role ("backend", "absent", "other")
    low: int
    high: int

    def render_text(self, color: bool = False) -> str:
        width = max([len("backend")] + [len(r[0]) for r in self.rows])
        out = [f"{'backend':<{width}}  answers  share   expected"]
        for name, count, role in self.rows:
            want = {"backend": f"{self.low}-{self.high}", "absent": "0 (removed)",
                    "other": "0 (undeclared)"}[role]
            share = f"{100 * count / self.requests:5.1f}%" if self.requests else "  -  "
            out.append(f"{name:<{width}}  {count:>7}  {share}  {want}")
        return "\n".join(out)

    def to_dict(self) -> dict[str, Any]:
        return {"requests": self.requests, "low": self.low, "high": self.high,
                "rows": [{"backend": n, "answers": c, "role": r} for n, c, r in self.rows]}


def _spread_requests(src: NsRef, vip: str, port: int, n: int, timeout: float) -> list[str | None]:
    """``n`` TCP connections to ``vip:port`` from ``src``, one after another (each a new source
    port, so a fresh scheduling decision); each answer is the echo server's name, or None.

    One thread enters the namespace once and runs plain sockets: a probe per request would cost
    ~20x more, and 1000 requests must fit in seconds even in the VM's slow Python.
    """
    out: list[str | None] = []
    addr = (vip, port)

    def body() -> None:
        for _ in range(n):
            name = None
            # a bare socket, not socket.create_connection: no getaddrinfo per request (a
            # third of the loop's cost, measured in bench/bench_ipvs.py)
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            try:
                s.settimeout(timeout)
                s.connect(addr)
                data = b""
                while b"\n" not in data and len(data) < 256:
                    chunk = s.recv(256)
                    if not chunk:
                        break
                    data += chunk
                words = data.split(b"\n")[0].split()
                if len(words) >= 2 and words[0] == probes.MARKER:
                    name = words[1].decode(errors="replace")
            except OSError:
                pass
            finally:
                s.close()
            out.append(name)

    failure: list[BaseException] = []

    def run() -> None:
        try:
            with src.opened() as fd, netns.entered(fd=fd):
                body()
        except BaseException as e:  # raised in the caller: not a silent "nobody answered"
            failure.append(e)

    t = threading.Thread(target=run)
    t.start()
    t.join()
    if failure:
        raise failure[0]
    return out


@check_kind("lb-spread")
def lb_spread(target: Target, params: dict[str, Any]) -> CheckResult:
    """N requests to a VIP spread over the declared backends (each within ``tolerance`` of its
    fair share N/K, as round robin gives), and none to the ``absent`` ones (removed tasks)."""
    p = _checked("lb-spread", params)
    src = _end(target, p["from"], "from")
    backends = [_ns_end(target, b, "backends") for b in dict.fromkeys(p["backends"])]
    absent = [_ns_end(target, b, "absent") for b in dict.fromkeys(p.get("absent", []))
              if b not in p["backends"]]
    vip, port = p["vip"], p["port"]
    bport = p.get("backend_port", port)
    n = p.get("requests", 20)
    tol = float(p.get("tolerance", 0.5))
    timeout = float(p.get("timeout", DEFAULT_TIMEOUT))
    servers = [probes.EchoServer(b.ref, "tcp", bport, name=b.label) for b in backends + absent]
    started = []
    try:
        for s in servers:
            started.append(s.start())
        answers = _spread_requests(src.ref, vip, port, n, timeout)
    finally:
        for s in started:
            s.stop()
    counts = {b.label: 0 for b in backends}
    gone = {b.label: 0 for b in absent}
    others: dict[str, int] = {}
    failed = 0
    for a in answers:
        if a is None:
            failed += 1
        elif a in counts:
            counts[a] += 1
        elif a in gone:
            gone[a] += 1
        else:
            others[a] = others.get(a, 0) + 1
    fair = n / len(backends)
    slack = max(1.0, tol * fair)
    low, high = max(0, int(fair - slack + 0.999)), int(fair + slack)
    low = max(low, 1)  # every declared backend answers at least once
    table = Distribution(n, [(k, v, "backend") for k, v in counts.items()]
                         + [(k, v, "absent") for k, v in gone.items()]
                         + [(k, v, "other") for k, v in others.items()], low, high)
    label = f"lb-spread {src.label} -> {vip}:{port} over {', '.join(counts)}"
    outside = [k for k, v in counts.items() if not low <= v <= high]
    ok = not outside and not others and not any(gone.values()) and not failed
    obs = ", ".join(f"{k} {v}" for k, v in counts.items())
    if gone:
        obs += ", removed: " + ", ".join(f"{k} {v}" for k, v in gone.items())
    if others:
        obs += ", others " + ", ".join(f"{k} {v}" for k, v in others.items())
    if failed:
        obs += f", {failed} failed"
    expected = (f"each of {len(counts)} backends answers {low}-{high} of {n} requests "
                f"(fair share {fair:g} +/- {tol:.0%})"
                + (f", none reaches {', '.join(gone)}" if gone else ""))
    idle = [k for k, v in counts.items() if v == 0]
    if ok:
        reason = ""
    elif failed == n:
        reason = (f"nothing answered {vip}:{port}: look at the virtual service (ipvsadm -Ln) or "
                  f"the DNAT rules for {vip}, and the route from {src.label} to it")
    elif any(gone.values()):
        hit = [k for k, v in gone.items() if v]
        reason = (f"{', '.join(hit)} still gets new connections: remove its real server "
                  f"(ipvsadm -d -t {vip}:{port} -r ...)")
    elif idle:
        reason = (f"{', '.join(idle)} never answered: look at the real "
                  f"servers behind {vip}:{port} (ipvsadm -Ln, scheduler rr) or the DNAT rules")
    elif others:
        reason = (f"answers from undeclared {', '.join(others)}: look at the real servers "
                  f"behind {vip}:{port} (ipvsadm -Ln)")
    elif outside:
        reason = (f"{', '.join(outside)} outside {low}-{high}: the spread is not round robin; "
                  f"look at the scheduler and weights (ipvsadm -Ln: rr, weight 1)")
    else:
        reason = (f"{failed} of {n} requests got no answer: look at the real servers behind "
                  f"{vip}:{port} (ipvsadm -Ln) and the balancer's SNAT rule")
    return CheckResult(label, "lb-spread", ok, expected, obs, reason, table=table)


@check_kind("routing-mesh")
def routing_mesh(target: Target, params: dict[str, Any]) -> CheckResult:
    """The ingress routing mesh: ``requests`` connections to the published ``port`` of EVERY
    listed host all get an answer, and from each host every declared backend (task) answers,
    whichever host it runs on. A host whose DNAT, mark or IPVS service is missing is named."""
    p = _checked("routing-mesh", params)
    src = _end(target, p["from"], "from")
    hosts = [_host_of(target, h, "hosts") for h in dict.fromkeys(p["hosts"])]
    backends = [_ns_end(target, b, "backends") for b in dict.fromkeys(p["backends"])]
    port = p["port"]
    bport = p.get("backend_port", port)
    n = p.get("requests", 2 * len(backends))
    # generous: a first connection through another host's VXLAN under a loaded (or emulated)
    # CPU may take seconds; a broken mesh is refused at once (RST), so this costs it nothing
    timeout = float(p.get("timeout", 5.0))
    servers = [probes.EchoServer(b.ref, "tcp", bport, name=b.label) for b in backends]
    started = []
    seen: dict[str, dict[str, int]] = {}
    try:
        for srv in servers:
            started.append(srv.start())
        for h in hosts:
            if not h.public_ip:
                raise CnmError(f"hosts: {h.name} has no address to reach its published port at")
            counts: dict[str, int] = {}
            for a in _spread_requests(src.ref, h.public_ip, port, n, timeout):
                key = a if a is not None else "(no answer)"
                counts[key] = counts.get(key, 0) + 1
            seen[h.name] = counts
    finally:
        for srv in started:
            srv.stop()
    names = [b.label for b in backends]
    label = f"routing-mesh {src.label} -> port {port} on {', '.join(h.name for h in hosts)}"
    expected = (f"each host's port {port} answers all {n} requests, from every one of "
                f"{', '.join(names)}")
    obs = "; ".join(f"{h}: " + (", ".join(f"{k} {v}" for k, v in sorted(c.items())) or "-")
                    for h, c in seen.items())
    reason = ""
    for h in hosts:
        counts = seen[h.name]
        silent = counts.get("(no answer)", 0)
        missing = [b for b in names if not counts.get(b)]
        others = sorted(k for k in counts if k not in names and k != "(no answer)")
        sbox = f"ingress_sbox.{h.name}"
        if silent == n:
            reason = (f"nothing answered {h.name}'s port {port} ({h.public_ip}): look at nat "
                      f"DOCKER-INGRESS on {h.name} (the DNAT to its ingress sandbox) and, in "
                      f"{sbox}, mangle PREROUTING (--set-mark) and the fwmark service "
                      f"(ipvsadm -Ln)")
        elif silent:
            reason = (f"{silent} of {n} requests to {h.name}'s port {port} got no answer: look "
                      f"at the real servers in {sbox} (ipvsadm -Ln) and its SNAT rule")
        elif others:
            reason = f"{h.name}: answers from undeclared {', '.join(others)}"
        elif missing:
            reason = (f"through {h.name}, {', '.join(missing)} never answered: look at the "
                      f"real servers of the fwmark service in {sbox} (ipvsadm -Ln)")
        if reason:
            break
    return CheckResult(label, "routing-mesh", not reason, expected, obs, reason)


@check_kind("ipvs")
def ipvs_state(target: Target, params: dict[str, Any]) -> CheckResult:
    """An IPVS virtual service as a learner builds it with ipvsadm: VIP:port, scheduler,
    forwarding method and exactly the declared real servers (sandbox names or addresses)."""
    p = _checked("ipvs", params)
    e = _ns_end(target, p["ns"], "ns")
    proto, vip, port = p.get("proto", "tcp"), p["vip"], p["port"]
    sched, fwd = p.get("scheduler", "rr"), p.get("forward", "masq")
    sport = p.get("server_port", port)
    sbs = target.sandboxes()
    want = set()
    for s in p.get("servers", []):
        ip = s if _is_ipv4(s) else (sbs[s].ip() if s in sbs else None)
        if ip is None:
            raise CnmError(f"servers: no sandbox {s!r} in {target.name}")
        want.add(f"{ip}:{sport}")
    svc = VirtualService(proto, vip, port)
    label = f"ipvs {e.label} {svc}"
    with e.ref.opened() as fd:
        state = Ipvs(fd=fd).service(svc)
    expected = f"{svc} {sched}, {fwd} to {', '.join(sorted(want)) or 'no real server'}"
    if state is None:
        return CheckResult(label, "ipvs", False, expected, "no such virtual service",
                           f"add it: ipvsadm -A {'-u' if proto == 'udp' else '-t'} "
                           f"{vip}:{port} -s {sched} (in {e.label})")
    have = {f"{r.ip}:{r.port}": r.forward for r in state.servers}
    obs = (f"{svc} {state.scheduler}, " + (", ".join(f"{k} {v}" for k, v in sorted(have.items()))
                                          or "no real server"))
    missing, extra = sorted(want - set(have)), sorted(set(have) - want)
    wrong_fwd = sorted(k for k, v in have.items() if v != fwd and k in want)
    if state.scheduler != sched:
        reason = f"scheduler {state.scheduler}, not {sched}: ipvsadm -E -t {vip}:{port} -s {sched}"
    elif missing:
        reason = f"real server(s) missing: {', '.join(missing)} (ipvsadm -a ... -r IP:PORT -m)"
    elif extra and "servers" in p:
        reason = f"real server(s) not declared: {', '.join(extra)} (ipvsadm -d ... -r IP:PORT)"
    elif wrong_fwd:
        reason = (f"{', '.join(wrong_fwd)} forwarded by {have[wrong_fwd[0]]}, not {fwd} "
                  f"(ipvsadm -e ... -m for masquerading)")
    else:
        reason = ""
    return CheckResult(label, "ipvs", not reason, expected, obs, reason)


# ---------------------------------------------------------------------------------------------
# escape hatch


@check_kind("python")
def python_check(target: Target, params: dict[str, Any]) -> CheckResult:
    p = _checked("python", params)
    mod_name, _, fn_name = p["call"].partition(":")
    try:
        fn = getattr(importlib.import_module(mod_name), fn_name)
    except (ImportError, AttributeError) as e:
        raise CnmError(f"python: cannot load {p['call']}: {e}") from None
    out = fn(target, params)
    if isinstance(out, CheckResult):
        return out
    ok = bool(out)
    return CheckResult(f"python {p['call']}", "python", ok, "true", str(out),
                       "" if ok else f"{p['call']} returned {out!r}: look at what it tests")
