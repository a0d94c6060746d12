"""Docker-like command scenarios: what ``cnmlab diff`` replays on the engine and on real Docker.

A scenario is a short YAML list of the commands a learner would type, each step one mapping
with one key::

    name: user-defined
    description: two user-defined networks, a published port, connect/disconnect
    steps:
      - network_create: {name: app}
      - run: {name: w1, network: app, publish: ["8080:80"]}
      - connect: {network: priv, container: w1}

Steps: ``run`` (name, network, publish, ip, aliases), ``rm`` (name), ``network_create`` (name,
driver, subnet, gateway, ip_range, internal, options), ``network_rm`` (name), ``connect``
(network, container, ip), ``disconnect`` (network, container),
``service_network_create`` (name, subnet) and ``service_create`` (name, network, replicas, port).
Every field is checked here, so a typo is a one-line ``FILE:LINE`` error before anything runs.

Multi-host scenarios: any step may name the ``host`` it runs on (``run: {name: c1, network: ov,
host: h1}``). A scenario that names hosts runs on a lab of those hosts on one underlay: the
engine with its control plane, Docker as a swarm of one dockerd per host (the first named host
is the manager, and takes every step that names no host). A network of a global-scope driver
(overlay) is declared once, cluster-wide (``--attachable`` on the swarm).

Services: Docker runs them on a swarm, so its side is a single-node swarm (``swarm init`` at the
first service step) and ``service_network_create`` is ``docker network create -d overlay
--attachable``; cnmlab's single-host services (``cnmlab.services``, lab 09) run on a user-defined
bridge network instead. ``port`` is the engine's ``VIP:port`` service; Docker's VIP forwards
every port (a fwmark service), so its command has none.

``compare`` (optional): regular expressions on section titles; only those sections are
compared. A scenario about one part of the state (the load balancers) says so here, and the
rest (a bridge against swarm's overlay) is left to the scenarios about it.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from cnmlab import drivers, yamlsrc
from cnmlab.errors import CnmError, InvalidInput
from cnmlab.yamlsrc import Source

FIELDS: dict[str, dict[str, type | tuple[type, ...]]] = {
    "run": {"name": str, "network": str, "publish": list, "ip": str, "aliases": list,
            "host": str},
    "rm": {"name": str, "host": str},
    "network_create": {"name": str, "driver": str, "subnet": str, "gateway": str,
                       "ip_range": str, "internal": bool, "options": dict, "host": str},
    "network_rm": {"name": str, "host": str},
    "connect": {"network": str, "container": str, "ip": str, "host": str},
    "disconnect": {"network": str, "container": str, "host": str},
    "service_network_create": {"name": str, "subnet": str},
    "service_create": {"name": str, "network": str, "replicas": int, "port": int},
}
REQUIRED = {"run": ("name",), "rm": ("name",), "network_create": ("name",),
            "network_rm": ("name",), "connect": ("network", "container"),
            "disconnect": ("network", "container"), "service_network_create": ("name",),
            "service_create": ("name", "network")}


@dataclass(frozen=True)
class Step:
    op: str
    args: dict[str, Any]

    def __str__(self) -> str:
        """The Docker command this step stands for (``(on h1)`` first when it names a host)."""
        where = f"(on {self.args['host']}) " if self.args.get("host") else ""
        return where + self._command()

    def _command(self) -> str:
        a = self.args
        if self.op == "run":
            flags = [f"--network {a['network']}"] if a.get("network") else []
            flags += [f"--ip {a['ip']}"] if a.get("ip") else []
            flags += [f"--network-alias {n}" for n in a.get("aliases", [])]
            flags += [f"-p {p}" for p in a.get("publish", [])]
            return " ".join(["docker run -d --name", a["name"], *flags, "busybox"])
        if self.op == "network_create":
            flags = [f"-d {a['driver']}"] if a.get("driver") else []
            flags += ["--attachable"] if a.get("driver") and global_scope(a["driver"]) else []
            flags += [f"--{k.replace('_', '-')} {a[k]}" for k in ("subnet", "gateway", "ip_range")
                      if a.get(k)]
            flags += ["--internal"] if a.get("internal") else []
            flags += [f"-o {k}={v}" for k, v in (a.get("options") or {}).items()]
            return " ".join(["docker network create", *flags, a["name"]])
        if self.op in ("connect", "disconnect"):
            ip = f"--ip {a['ip']} " if a.get("ip") else ""
            return f"docker network {self.op} {ip}{a['network']} {a['container']}"
        if self.op == "rm":
            return f"docker rm -f {a['name']}"
        if self.op == "service_network_create":
            subnet = [f"--subnet {a['subnet']}"] if a.get("subnet") else []
            return " ".join(["docker network create -d overlay --attachable", *subnet, a["name"]])
        if self.op == "service_create":
            return (f"docker service create --name {a['name']} --network {a['network']} "
                    f"--replicas {a.get('replicas', 1)} busybox")
        return f"docker network rm {a['name']}"


@dataclass
class Scenario:
    name: str
    description: str
    path: str
    steps: list[Step] = field(default_factory=list)
    compare: list[str] = field(default_factory=list)  # section regexes; empty: every section

    def compared(self, state: dict[str, list[str]]) -> dict[str, list[str]]:
        """The sections of ``state`` this scenario compares."""
        if not self.compare:
            return state
        return {k: v for k, v in state.items()
                if any(re.fullmatch(p, k) for p in self.compare)}

    @property
    def hosts(self) -> list[str]:
        """The hosts the steps name, in order of first mention; none: a one-host scenario."""
        return list(dict.fromkeys(s.args["host"] for s in self.steps if s.args.get("host")))


def global_scope(driver: str) -> bool:
    """A cluster-wide network (overlay): declared once, on the manager."""
    try:
        return drivers.capability(driver).global_scope
    except CnmError:
        return False  # an unknown driver (a plugin's) is local: the daemon will say so


def scenarios_dir() -> str:
    return str(resources.files("cnmlab.checks") / "scenarios")


def available() -> list[str]:
    return sorted(f[:-5] for f in os.listdir(scenarios_dir())
                  if f.endswith(".yaml") and not f.startswith("known"))


def load(name_or_path: str) -> Scenario:
    path = name_or_path
    if not os.path.exists(path):
        path = os.path.join(scenarios_dir(), f"{name_or_path}.yaml")
        if not os.path.exists(path):
            raise InvalidInput(f"unknown scenario {name_or_path!r}: shipped scenarios are "
                               f"{', '.join(available())}, or give a file path")
    return parse(yamlsrc.load(path))


def parse(src: Source) -> Scenario:
    data = src.data
    if not isinstance(data, dict):
        raise src.error((), "a scenario is a mapping with name, description and steps")
    unknown = set(data) - {"name", "description", "steps", "compare"}
    if unknown:
        raise src.error((sorted(unknown)[0],), "unknown field (use name, description, steps, "
                                               "compare)")
    compare = data.get("compare") or []
    if not isinstance(compare, list) or not all(isinstance(p, str) for p in compare):
        raise src.error(("compare",), "a list of regular expressions on section titles")
    for i, p in enumerate(compare):
        try:
            re.compile(p)
        except re.error as e:
            raise src.error(("compare", i), f"not a regular expression: {e}") from None
    steps = data.get("steps")
    if not isinstance(steps, list) or not steps:
        raise src.error(("steps",), "a non-empty list of steps is required")
    out = Scenario(name=str(data.get("name") or os.path.basename(src.path)[:-5]),
                   description=str(data.get("description") or ""), path=src.path,
                   compare=list(compare))
    for i, raw in enumerate(steps):
        out.steps.append(_step(src, i, raw))
    return out


def _step(src: Source, i: int, raw: Any) -> Step:
    where: tuple[Any, ...] = ("steps", i)
    if not isinstance(raw, dict) or len(raw) != 1:
        raise src.error(where, f"each step is one of {', '.join(FIELDS)} with its fields")
    ((op, args),) = raw.items()
    if op not in FIELDS:
        raise src.error(where, f"unknown step {op!r}: use one of {', '.join(FIELDS)}")
    args = args or {}
    if not isinstance(args, dict):
        raise src.error(where + (op,), "give the step's fields as a mapping")
    for key, value in args.items():
        if key not in FIELDS[op]:
            raise src.error(where + (op, key), f"unknown field for {op} (use "
                            f"{', '.join(FIELDS[op])})")
        if not isinstance(value, FIELDS[op][key]):
            raise src.error(where + (op, key), f"{value!r} has the wrong type")
    for key in REQUIRED[op]:
        if key not in args:
            raise src.error(where + (op,), f"{key} is required")
    for p in args.get("publish", []):
        if not isinstance(p, (str, int)):
            raise src.error(where + (op, "publish"), f"{p!r} is not a port mapping")
    for n in args.get("aliases", []):
        if not isinstance(n, str):
            raise src.error(where + (op, "aliases"), f"{n!r} is not a name")
    return Step(op, {k: ([str(p) for p in v] if k == "publish" else v) for k, v in args.items()})
