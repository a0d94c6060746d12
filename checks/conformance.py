"""Conformance profiles: a canonical topology described once, and the checks it must pass.

A profile (``checks/profiles/NAME.yaml``) names networks and containers, and lists check specs
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

from cnmlab.constants import EMBEDDED_DNS
from cnmlab.checks.api import CheckResult, SandboxRef, Target
from cnmlab.checks.kinds import parse_spec, run_check
from cnmlab.errors import CnmError, InvalidInput, ObjectNotFound

PREDEFINED = ("bridge",)  # networks every Docker host has; a profile does not create them


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


@dataclass
class Profile:
    name: str
    description: str
    networks: dict[str, dict[str, Any]]  # name -> {"internal": bool, "subnet": ..., ...}
    containers: dict[str, Container]
    checks: list[ProfileCheck]
    needs: list[str] = field(default_factory=list)
    path: str = ""


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
    networks: dict[str, dict[str, Any]] = {}
    for nname, spec in (topo.get("networks") or {}).items():
        spec = spec or {}
        if not isinstance(spec, dict):
            raise src.error(("topology", "networks", nname), "must be a mapping")
        for k in spec:
            if k not in ("internal", "subnet", "options"):
                raise src.error(("topology", "networks", nname, k),
                                "unknown field; known: internal, options, subnet")
        if nname in PREDEFINED:
            raise src.error(("topology", "networks", nname), f"{nname} is predefined")
        networks[str(nname)] = dict(spec)
    containers: dict[str, Container] = {}
    for cname, spec in (topo.get("containers") or {}).items():
        where = ("topology", "containers", cname)
        if not isinstance(spec, dict) or "network" not in spec:
            raise src.error(where, "must be a mapping with network:")
        net = spec["network"]
        if net not in networks and net not in PREDEFINED:
            raise src.error(where + ("network",), f"no network {net!r} in topology.networks")
        if len(str(cname)) < 2:
            raise src.error(where, "Docker 20.10 refuses container names of one character")
        pub = spec.get("publish") or []
        if not isinstance(pub, list):
            raise src.error(where + ("publish",), "must be a list of HOST:CONTAINER[/proto]")
        containers[str(cname)] = Container(str(cname), str(net), [str(p) for p in pub])
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
                   path=path)


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


def _settle_dns(target: Target, profile: Profile, timeout: float = 5.0) -> None:
    """Wait (bounded) until the embedded DNS answers the first dns-resolves check of the profile.

    The engine's resolver learns new sandboxes asynchronously; a check that runs before it has
    caught up would judge a race, not the implementation.
    """
    first = next((c for c in profile.checks if c.kind == "dns-resolves" and not c.optional),
                 None)
    if first is None:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if run_check(target, first.spec).ok:
            return
        time.sleep(0.2)


def build_engine(lab: Any, profile: Profile | str = "bridge", host: str = "host",
                 driver: str = "bridge", before: Any = None) -> Target:
    """Build the profile's topology in ``lab`` (a ``cnmlab.lab.Lab``) with cnmlab's engine.

    ``driver`` makes the profile's networks with another driver (a plugin's name);
    ``before(host)`` runs once the host exists (to start that plugin inside it).
    """
    from cnmlab.checks.targets import EngineTarget

    if isinstance(profile, str):
        profile = load(profile)
    h = lab.add_host(host)
    if before is not None:
        before(h)
    with lab.batch():
        for name, spec in profile.networks.items():
            h.network_create(name, driver, subnet=spec.get("subnet"),
                             internal=bool(spec.get("internal")), options=spec.get("options"))
        for c in profile.containers.values():
            h.run(c.name, c.network, publish=c.publish)
    target = EngineTarget(lab)
    _settle_dns(target, profile)
    return target


def build_docker(daemon: Any, profile: Profile | str = "bridge",
                 upstream: str | SandboxRef | None = None,
                 public_ip: str | None = None) -> Target:
    """Build the profile's topology with real Docker (``docker network create``/``run``).

    ``daemon`` is a ``checks.dockerd.DockerDaemon``; ``upstream`` the namespace (name or
    ``SandboxRef``) that plays the internet, so egress and published ports can be observed.
    """
    from cnmlab.checks.docker_target import DockerTarget
    from cnmlab.checks.targets import DockerAdapter

    if isinstance(profile, str):
        profile = load(profile)
    for name, spec in profile.networks.items():
        opts = {str(k): str(v) for k, v in (spec.get("options") or {}).items()}
        daemon.network_create(name, subnet=spec.get("subnet"),
                              internal=bool(spec.get("internal")), options=opts or None)
    for c in profile.containers.values():
        daemon.run(c.name, None if c.network == "bridge" else c.network, publish=c.publish)
    target = DockerAdapter(DockerTarget(daemon), public_ip=public_ip,
                           upstream=upstream_ref(upstream))
    _settle_dns(target, profile)
    return target


def upstream_ref(upstream: str | SandboxRef | None) -> SandboxRef | None:
    from cnmlab.checks.nsref import NsRef
    from cnmlab.checks.targets import UPSTREAM, UPSTREAM_NET, UPSTREAM_WEB

    if upstream is None or isinstance(upstream, SandboxRef):
        return upstream
    return SandboxRef(UPSTREAM, NsRef.of(upstream), {UPSTREAM_NET: UPSTREAM_WEB})
