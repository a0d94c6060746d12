"""Conformance profiles: a canonical topology described once, and the checks it must pass.

A profile (``checks/profiles/NAME.yaml``) names networks and containers (optionally on several
hosts sharing an underlay LAN, for macvlan, ipvlan and overlays), and lists check specs
(the same ``{kind: {params}}`` data as labs and manifests) with an ``id``, an optional
``label``, ``why`` and ``optional: true``. The same profile is built by cnmlab's engine
(``build_engine``) or by real Docker (``build_docker``) and judged by ``run_profile``, so the
two implementations are held to one definition of "Docker's bridge networking".

Optional checks report what they saw but never fail the profile (``ok`` with ``skipped`` and a
reason that starts with "optional").
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from cnmlab import drivers
from cnmlab.constants import EMBEDDED_DNS
from cnmlab.checks.api import CheckResult, SandboxRef, Target
from cnmlab.checks.kinds import parse_spec, run_check
from cnmlab.errors import CnmError, InvalidInput, ObjectNotFound

PREDEFINED = ("bridge",)  # networks every Docker host has; a profile does not create them
NETWORK_FIELDS = ("driver", "gateway", "hosts", "internal", "ip_range", "options", "subnet")


@dataclass
class ProfileCheck:
    id: str
    spec: dict[str, Any]
    label: str
    optional: bool = False
    why: str = ""

    @property
    def kind(self) -> str:
        return next(iter(self.spec))


@dataclass
class Container:
    name: str
    network: str
    publish: list[str] = field(default_factory=list)
    host: str | None = None  # None: the profile's first host
    ip: str | None = None


@dataclass
class UnderlaySpec:
    """The LAN a multi-host profile's hosts share (a switch and a router at .1)."""

    name: str
    subnet: str
    routes: list[tuple[str, str]] = field(default_factory=list)  # (subnet, via: host or IP)


@dataclass
class Profile:
    name: str
    description: str
    # name -> {"internal", "subnet", "options", "driver", "gateway", "ip_range", "hosts"}
    networks: dict[str, dict[str, Any]]
    containers: dict[str, Container]
    checks: list[ProfileCheck]
    needs: list[str] = field(default_factory=list)
    path: str = ""
    hosts: list[str] = field(default_factory=list)  # empty: one host (named by the builder)
    underlay: UnderlaySpec | None = None

    def network_hosts(self, network: str, first: str) -> list[str]:
        """The hosts a network is created on: its ``hosts:``, else the first host."""
        return list(self.networks.get(network, {}).get("hosts") or [first])

    def ip_range(self, network: str, host: str) -> str | None:
        """A network's ip_range on one host: one string for all, or a mapping per host (each
        host's IPAM is its own, as Docker's local scope is: ranges keep them apart)."""
        rng = self.networks.get(network, {}).get("ip_range")
        return rng.get(host) if isinstance(rng, dict) else rng


# ---------------------------------------------------------------------------------------------
# labels: what a check is called before it runs (pytest item names, report rows)


def label_of(spec: dict[str, Any]) -> str:
    """A stable one-line name for a check spec, close to the label the check itself reports."""
    kind, p = next(iter(spec.items()))
    p = p or {}
    if kind in ("reachable", "isolated"):
        proto = p.get("proto", "icmp")
        what = proto if proto == "icmp" else f"{proto}/{p.get('port')}"
        via = f" on {p['network']}" if p.get("network") else ""
        return f"{kind} {p.get('from')} -> {p.get('to')}{via} ({what})"
    if kind == "matrix":
        return f"matrix {' '.join(map(str, p.get('sandboxes') or []))} (icmp)"
    if kind == "egress-nat-seen":
        return f"egress-nat-seen {p.get('from')} -> upstream ({p.get('expect', 'host')})"
    if kind in ("published-port", "hairpin"):
        host = p.get("host") or "host"
        host = host[5:] if host.startswith("host:") else host
        cport = f":{p['container_port']}" if p.get("container_port") else ""
        return (f"{kind} {p.get('from', 'upstream')} -> {host}:{p.get('port')}/"
                f"{p.get('proto', 'tcp')} -> {p.get('to')}{cport}")
    if kind == "dns-resolves":
        return f"dns-resolves {p.get('name')} from {p.get('from')}"
    if kind == "dns-absent":
        return f"dns-absent {p.get('name')} from {p.get('from')}"
    if kind == "default-route":
        if p.get("via") is None and p.get("dev"):
            return f"default-route {p.get('sandbox')} dev {p['dev']}"
        return f"default-route {p.get('sandbox')} via {p.get('via') or 'none'}"
    if kind == "mtu":
        return f"mtu {p.get('sandbox', p.get('ns'))} {p.get('interface', 'eth0')} = {p.get('mtu')}"
    if kind == "mac":
        return f"mac {p.get('sandbox')} {p.get('interface', 'eth0')}"
    if kind == "link":
        return f"link {p.get('name')} in {p.get('ns')}"
    if kind == "iptables-rule":
        return (f"iptables-rule {p.get('host')} {p.get('table', 'filter')}: "
                f"{' '.join(str(p.get('rule', '')).split())}"
                + ("" if p.get("present", True) else " (absent)"))
    if kind == "sysctl":
        return f"sysctl {p.get('ns')} {p.get('key')} = {p.get('value')}"
    if kind == "vxlan-on-wire":
        return f"vxlan-on-wire {p.get('ns')} {p.get('interface')} vni {p.get('vni')}"
    if kind == "lb-spread":
        return f"lb-spread {p.get('from')} -> {p.get('vip')}:{p.get('port')}"
    if kind == "arp-macs":
        return (f"arp-macs from {p.get('from')}: {', '.join(map(str, p.get('of') or []))} "
                f"{p.get('expect')}")
    if kind == "arp-reply":
        return (f"arp-reply {p.get('from')} who-has {p.get('ip')}"
                + (f" is-at {p['mac']}" if p.get("mac") else ""))
    if kind == "python":
        return f"python {p.get('call')}"
    rest = " ".join(f"{k}={v}" for k, v in sorted(p.items()))
    return f"{kind} {rest}".strip()


def unique_labels(labels: list[str]) -> list[str]:
    """Make labels unique by appending ``#2``, ``#3``... to repeats (pytest node ids)."""
    seen: dict[str, int] = {}
    out = []
    for label in labels:
        n = seen.get(label, 0) + 1
        seen[label] = n
        out.append(label if n == 1 else f"{label} #{n}")
    return out


# ---------------------------------------------------------------------------------------------
# loading


def profiles_dir() -> str:
    return str(resources.files("cnmlab.checks") / "profiles")


def available() -> list[str]:
    try:
        names = os.listdir(profiles_dir())
    except OSError:
        return []
    return sorted(n[:-5] for n in names if n.endswith(".yaml"))


def load(name_or_path: str) -> Profile:
    """A profile by name (``bridge``) or by path to a YAML file; errors name file:line:field."""
    from cnmlab import yamlsrc
    from cnmlab.checks import library

    if os.sep in name_or_path or name_or_path.endswith((".yaml", ".yml")):
        path = name_or_path
    else:
        path = os.path.join(profiles_dir(), f"{name_or_path}.yaml")
        if not os.path.exists(path):
            raise ObjectNotFound(f"unknown profile {name_or_path!r}; known: "
                                 f"{', '.join(available()) or 'none'}")
    src = yamlsrc.load(path)  # an unreadable file: one InvalidInput naming it
    data = src.data
    if not isinstance(data, dict):
        raise src.error((), "a profile is a mapping with topology: and checks:")
    for k in data:
        if k not in ("name", "description", "needs", "topology", "checks"):
            raise src.error((k,), "unknown field; known: checks, description, name, needs, "
                                  "topology")
    topo = data.get("topology") or {}
    if not isinstance(topo, dict):
        raise src.error(("topology",), "must be a mapping with networks: and containers:")
    for k in topo:
        if k not in ("networks", "containers", "hosts", "underlay"):
            raise src.error(("topology", k), "unknown field; known: containers, hosts, "
                                             "networks, underlay")
    hosts = [str(h) for h in topo.get("hosts") or []]
    underlay = None
    if topo.get("underlay") is not None:
        u = topo["underlay"]
        if not isinstance(u, dict) or "subnet" not in u:
            raise src.error(("topology", "underlay"), "must be a mapping with subnet: (and "
                                                      "optionally routes:)")
        routes = [(str(r["subnet"]), str(r["via"])) for r in u.get("routes") or []]
        underlay = UnderlaySpec(str(u.get("name", "lan")), str(u["subnet"]), routes)
    networks: dict[str, dict[str, Any]] = {}
    for nname, spec in (topo.get("networks") or {}).items():
        spec = spec or {}
        if not isinstance(spec, dict):
            raise src.error(("topology", "networks", nname), "must be a mapping")
        for k in spec:
            if k not in NETWORK_FIELDS:
                raise src.error(("topology", "networks", nname, k),
                                f"unknown field; known: {', '.join(NETWORK_FIELDS)}")
        if nname in PREDEFINED:
            raise src.error(("topology", "networks", nname), f"{nname} is predefined")
        for h in spec.get("hosts") or []:
            if h not in hosts:
                raise src.error(("topology", "networks", nname, "hosts"),
                                f"no host {h!r} in topology.hosts")
        networks[str(nname)] = dict(spec)
    containers: dict[str, Container] = {}
    for cname, spec in (topo.get("containers") or {}).items():
        where = ("topology", "containers", cname)
        if not isinstance(spec, dict) or "network" not in spec:
            raise src.error(where, "must be a mapping with network:")
        net = spec["network"]
        if net not in networks and net not in PREDEFINED:
            raise src.error(where + ("network",), f"no network {net!r} in topology.networks")
        for k in spec:
            if k not in ("network", "publish", "host", "ip"):
                raise src.error(where + (k,), "unknown field; known: host, ip, network, "
                                              "publish")
        host = spec.get("host")
        if host is not None and host not in hosts:
            raise src.error(where + ("host",), f"no host {host!r} in topology.hosts")
        if len(str(cname)) < 2:
            raise src.error(where, "Docker 20.10 refuses container names of one character")
        pub = spec.get("publish") or []
        if not isinstance(pub, list):
            raise src.error(where + ("publish",), "must be a list of HOST:CONTAINER[/proto]")
        chost = spec.get("host")
        if hosts and chost is not None and chost not in hosts:
            raise src.error(where + ("host",), f"must be one of topology.hosts "
                                               f"({', '.join(hosts)})")
        containers[str(cname)] = Container(str(cname), str(net), [str(p) for p in pub],
                                           str(host) if host is not None else None,
                                           str(spec["ip"]) if spec.get("ip") else None)
    checks: list[ProfileCheck] = []
    raw = data.get("checks") or []
    if not isinstance(raw, list):
        raise src.error(("checks",), "must be a list")
    for i, entry in enumerate(raw):
        where: tuple[Any, ...] = ("checks", i)
        if isinstance(entry, dict) and "check" in entry:
            for k in entry:
                if k not in ("id", "check", "label", "optional", "why"):
                    raise src.error(where + (k,), "unknown field; known: check, id, label, "
                                                  "optional, why")
            spec = entry["check"]
        else:
            entry, spec = {}, entry
        kind = None
        try:
            kind, params = parse_spec(spec)
            library.validate(kind, params)
        except InvalidInput as e:
            field_ = getattr(e, "param", None)
            inner = (("check",) if entry else ()) + ((kind,) if kind else ())
            raise src.error(where + inner + ((field_,) if field_ else ()), str(e)) from None
        spec = {kind: params}
        checks.append(ProfileCheck(
            id=str(entry.get("id") or f"check-{i + 1}"), spec=spec,
            label=str(entry.get("label") or label_of(spec)),
            optional=bool(entry.get("optional", False)), why=str(entry.get("why") or "")))
    labels = unique_labels([c.label for c in checks])
    for c, label in zip(checks, labels):
        c.label = label
    return Profile(name=str(data.get("name") or os.path.basename(path)[:-5]),
                   description=str(data.get("description") or ""), networks=networks,
                   containers=containers, checks=checks, needs=list(data.get("needs") or []),
                   path=path, hosts=hosts, underlay=underlay)


# ---------------------------------------------------------------------------------------------
# running


def run_one(target: Target, check: ProfileCheck) -> CheckResult:
    """One profile check; the result carries the profile's label, and an optional failure is
    reported (``skipped``) without failing."""
    r = run_check(target, check.spec)
    r.check = check.label
    if check.optional and not r.ok and not r.skipped:
        r.ok = True
        r.skipped = True
        r.reason = f"optional, not required: {r.reason}"
    return r


def run_profile(target: Target, profile: Profile | str) -> list[CheckResult]:
    if isinstance(profile, str):
        profile = load(profile)
    return [run_one(target, c) for c in profile.checks]


def passed(results: list[CheckResult]) -> bool:
    return all(r.ok for r in results)


# ---------------------------------------------------------------------------------------------
# a check the library does not have: "this container was given no embedded DNS"




def no_embedded_dns(target: Target, params: dict[str, Any]) -> CheckResult:
    """``python`` check: the sandbox's resolv.conf does not name Docker's embedded resolver."""
    from cnmlab.checks.library import nameservers, read_config_file, resolv_conf_path

    name = params.get("sandbox")
    sbs = target.sandboxes()
    if name not in sbs:
        raise CnmError(f"sandbox: no sandbox {name!r} in {target.name}; known: "
                       f"{', '.join(sorted(sbs)) or 'none'}")
    label = f"no-embedded-dns {name} (resolv.conf)"
    path = resolv_conf_path(sbs[name].ns)
    exp = f"{name}'s resolv.conf does not name {EMBEDDED_DNS}"
    if path is None:
        raise CnmError(f"cannot find the resolv.conf of {name}")
    try:
        servers = nameservers(read_config_file(path))
    except OSError as e:
        if name and sbs[name].ns.name is not None:
            # a cnmlab sandbox without /etc/netns/NAME/resolv.conf uses the host's: no 127.0.0.11
            servers = []
        else:
            raise CnmError(f"cannot read {path} ({e.strerror})") from None
    ok = EMBEDDED_DNS not in servers
    obs = f"nameservers: {', '.join(servers) or 'none'}"
    reason = "" if ok else (f"{name} is on the default bridge, which has no embedded DNS: "
                            f"look at how its resolv.conf was written (copy the host's)")
    return CheckResult(label, "python", ok, exp, obs, reason)


# ---------------------------------------------------------------------------------------------
# building the topology


def _settle(target: Target, profile: Profile, kind: str, timeout: float) -> None:
    """Wait (bounded) until the profile's first required check of ``kind`` passes.

    What spreads in its own time (the engine's resolver learning new sandboxes, swarm's gossip
    spreading peers) must have arrived first: a check that runs before it would judge a race,
    not the implementation. Nothing is concluded here: the profile's run does that.
    """
    first = next((c for c in profile.checks if c.kind == kind and not c.optional), None)
    if first is None:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if run_check(target, first.spec).ok:
            return
        time.sleep(0.2)


def _settle_dns(target: Target, profile: Profile, timeout: float = 5.0) -> None:
    _settle(target, profile, "dns-resolves", timeout)


def build_hosts(lab: Any, profile: Profile, host: str = "host", **host_kw: Any) -> list[Any]:
    """The profile's hosts in ``lab``: its underlay first, if any, and the hosts on it.

    A one-host profile gets one host named ``host``; ``host_kw`` goes to ``add_host`` (the
    Docker target asks for empty manual hosts that its daemons then run in).
    """
    names = profile.hosts or [host]
    if profile.underlay is not None:
        lab.add_underlay(profile.underlay.name, profile.underlay.subnet)
        out = [lab.add_host(n, underlay=profile.underlay.name, **host_kw) for n in names]
        for subnet, via in profile.underlay.routes:
            lab.underlay(profile.underlay.name).add_route(subnet, via)
        return out
    return [lab.add_host(n, **host_kw) for n in names]


def _network_kwargs(profile: Profile, name: str, host: str) -> dict[str, Any]:
    spec = profile.networks[name]
    return {"driver": spec.get("driver", "bridge"), "subnet": spec.get("subnet"),
            "gateway": spec.get("gateway"), "ip_range": profile.ip_range(name, host),
            "internal": bool(spec.get("internal")),
            "options": {str(k): str(v) for k, v in (spec.get("options") or {}).items()} or None}


def build_engine(lab: Any, profile: Profile | str = "bridge", host: str = "host",
                 driver: str | None = None, before: Any = None,
                 existing_hosts: bool = False) -> Target:
    """Build the profile's topology in ``lab`` (a ``cnmlab.lab.Lab``) with cnmlab's engine.

    ``driver`` makes the profile's networks with another driver (a plugin's name) instead of
    the ones the profile names; ``before(host)`` runs once each host exists (to start that
    plugin inside it). ``existing_hosts`` builds on the hosts the lab has already (one that
    adopted a running plugin's namespace) instead of adding the profile's.
    """
    from cnmlab.checks.targets import EngineTarget

    if isinstance(profile, str):
        profile = load(profile)
    if any(drivers.capability(str(s.get("driver", "bridge"))).global_scope
           for s in profile.networks.values()):
        return _build_engine_multihost(lab, profile)
    hosts = {h.name: h for h in (lab.hosts() if existing_hosts
                                 else build_hosts(lab, profile, host))}
    if before is not None:
        for h in hosts.values():
            before(h)
    first = next(iter(hosts))
    with lab.batch():
        for name in profile.networks:
            for hname in profile.network_hosts(name, first):
                kw = _network_kwargs(profile, name, hname)
                drv = kw.pop("driver")
                hosts[hname].network_create(name, driver or drv, **kw)
        for c in profile.containers.values():
            hosts[c.host or first].run(c.name, c.network, publish=c.publish, ip=c.ip)
    target = EngineTarget(lab)
    _settle_dns(target, profile)
    return target


def _build_engine_multihost(lab: Any, profile: Profile) -> Target:
    """Hosts on one underlay with the lab's control plane; global networks declared once."""
    from cnmlab.checks.targets import EngineTarget

    u = profile.underlay or UnderlaySpec("lan", "192.168.50.0/24")
    lan = u.name
    lab.add_underlay(lan, subnet=u.subnet)
    hosts = {h: lab.add_host(h, underlay=lan) for h in profile.hosts}
    lab.start_control_plane()
    for name, spec in profile.networks.items():
        driver = spec.get("driver", "bridge")
        kw = dict(subnet=spec.get("subnet"), internal=bool(spec.get("internal")),
                  options=spec.get("options"))
        if drivers.capability(driver).global_scope:
            lab.network_create(name, driver, **kw)
        else:
            for h in hosts.values():
                h.network_create(name, driver, **kw)
    for c in profile.containers.values():
        hosts[c.host or profile.hosts[0]].run(c.name, c.network, publish=c.publish)
    lab.converge()
    target = EngineTarget(lab)
    _settle_dns(target, profile)
    return target


def build_docker(daemon: Any, profile: Profile | str = "bridge",
                 upstream: str | SandboxRef | None = None,
                 public_ip: str | None = None, driver: str | None = None) -> Target:
    """Build the profile's topology with real Docker (``docker network create``/``run``).

    ``daemon`` is a ``checks.dockerd.DockerDaemon``; ``upstream`` the namespace (name or
    ``SandboxRef``) that plays the internet, so egress and published ports can be observed;
    ``driver`` makes the profile's networks with another driver (a plugin Docker finds).
    """
    from cnmlab.checks.docker_target import DockerTarget
    from cnmlab.checks.targets import DockerAdapter

    if isinstance(profile, str):
        profile = load(profile)
    _docker_topology({"": daemon}, profile, driver)
    target = DockerAdapter(DockerTarget(daemon), public_ip=public_ip,
                           upstream=upstream_ref(upstream))
    _settle_dns(target, profile)
    return target


def _docker_topology(daemons: dict[str, Any], profile: Profile,
                     driver: str | None = None) -> None:
    """``docker network create`` and ``docker run`` on each daemon, per the profile
    (``driver``: every network with that driver instead, e.g. a plugin's)."""
    first = next(iter(daemons))
    for name in profile.networks:
        for hname in profile.network_hosts(name, first) if profile.hosts else [first]:
            kw = _network_kwargs(profile, name, hname)
            daemons[hname].network_create(name, subnet=kw["subnet"], internal=kw["internal"],
                                          options=kw["options"], driver=driver or kw["driver"],
                                          gateway=kw["gateway"], ip_range=kw["ip_range"])
    for c in profile.containers.values():
        extra = ["--ip", c.ip] if c.ip else []
        daemons[c.host or first].run(c.name, None if c.network == "bridge" else c.network,
                                     publish=c.publish, extra=extra)


def build_docker_hosts(daemons: dict[str, Any], profile: Profile | str, lab: Any) -> Target:
    """A multi-host profile with real Docker: one daemon per profile host (``daemons``: host
    name -> ``DockerDaemon`` running in that host of ``lab``), judged as one target."""
    from cnmlab.checks.docker_target import DockerTarget
    from cnmlab.checks.targets import DockerAdapter, DockerHosts, EngineTarget

    if isinstance(profile, str):
        profile = load(profile)
    _docker_topology(daemons, profile)
    engine = EngineTarget(lab)
    adapters = {h: DockerAdapter(DockerTarget(d), public_ip=lab.host(h).public_ip)
                for h, d in daemons.items()}
    target = DockerHosts(adapters, upstream=engine.upstream(), underlays=engine.underlays())
    _settle_dns(target, profile)
    return target


def build_swarm(lab: Any, profile: Profile | str = "overlay", quiet: bool = True) -> Any:
    """Build a multi-host profile on a real Docker swarm (one dockerd per profile host, in
    ``lab``'s namespaces on one underlay). Returns the target; ``target.swarm.stop()`` ends
    the daemons (``lab.down()`` removes the rest)."""
    from cnmlab.checks.swarm import Swarm, SwarmTarget

    if isinstance(profile, str):
        profile = load(profile)
    if not profile.hosts:
        raise InvalidInput(f"profile {profile.name} names no hosts: a swarm needs topology.hosts")
    u = profile.underlay or UnderlaySpec("lan", "192.168.50.0/24")
    swarm = Swarm(lab, profile.hosts, quiet=quiet, underlay=(u.name, u.subnet)).start()
    try:
        for name, spec in profile.networks.items():
            swarm.network_create(name, spec.get("driver", "overlay"), subnet=spec.get("subnet"),
                                 internal=spec.get("internal"), options=spec.get("options"))
        for c in profile.containers.values():
            swarm.run(c.host or profile.hosts[0], c.name, c.network)
        target = SwarmTarget(swarm)
        _settle_dns(target, profile, timeout=15.0)
        _settle_reach(target, profile)
    except BaseException:
        swarm.stop()
        raise
    return target


def _settle_reach(target: Target, profile: Profile, timeout: float = 15.0) -> None:
    _settle(target, profile, "reachable", timeout)


def upstream_ref(upstream: str | SandboxRef | None) -> SandboxRef | None:
    from cnmlab.checks.nsref import NsRef
    from cnmlab.checks.targets import UPSTREAM, UPSTREAM_NET, UPSTREAM_WEB

    if upstream is None or isinstance(upstream, SandboxRef):
        return upstream
    return SandboxRef(UPSTREAM, NsRef.of(upstream), {UPSTREAM_NET: UPSTREAM_WEB})
