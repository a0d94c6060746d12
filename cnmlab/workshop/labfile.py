"""Lab files: a topology plus ordered steps (text -> setup -> check -> hints -> solve -> cleanup).

    for labdef in discover():
        print(labdef.id, labdef.title, len(labdef.steps))
    labdef = get("02")                # by id, number, default name or path

A lab file is validated twice before anything is built: against ``lab.schema.json`` and then
semantically (known check kinds, CIDRs, names in ``in:``). Every error is one line,
``FILE:LINE: steps.2.checks.0: ...``. Running a lab is ``runner.LabRun``'s job; what a learner
has passed is ``progress.Progress``'s.
"""
from __future__ import annotations

import ipaddress
import json
import os
import re
from dataclasses import dataclass, field
from typing import Any

from cnmlab import topofile, yamlsrc
from cnmlab.ingress import parse_publish, sbox_name
from cnmlab.checks import kinds as check_kinds
from cnmlab.checks import scenario
from cnmlab.checks.library import validate as validate_check
from cnmlab.errors import CnmError, InvalidInput, ObjectNotFound, one_line
from cnmlab.workshop.catalog import LAB_FILE, default_lab_name, lab_folders
from cnmlab.workshop.labdocker import DockerSpec
from cnmlab.yamlsrc import Source

SCHEMA_PATH = os.path.join(os.path.dirname(__file__), "lab.schema.json")
ENGINE_OPS = ("network_create", "network_rm", "run", "rm", "connect", "disconnect",
              "agent_stop", "agent_start", "service_create", "service_scale",
              "service_rm")
NS_TEMPLATE = re.compile(r"\{ns:([A-Za-z0-9_.@-]+)\}")
# check params that name a namespace (sandbox, "host:NAME" or "upstream")
_NS_PARAMS = ("from", "to", "sandbox", "ns")


# ---------------------------------------------------------------------------------------------
# the model


@dataclass
class Action:
    raw: dict[str, Any]
    where: tuple[Any, ...]

    @property
    def kind(self) -> str:
        return "sh" if "sh" in self.raw else "engine"

    def describe(self, render: Any = None) -> str:
        """How a learner would type it."""
        if self.kind == "sh":
            cmd = render(self.raw["sh"]) if render else self.raw["sh"]
            return f"[{self.raw['in']}] {cmd.rstrip()}"
        cmd = engine_command(self.raw)
        return render(cmd) if render else cmd


@dataclass
class Step:
    id: str
    title: str
    text: str
    task: str
    checks: list[dict[str, Any]]
    solution: list[Action]
    setup: list[Action] = field(default_factory=list)
    cleanup: list[Action] = field(default_factory=list)
    hints: list[str] = field(default_factory=list)
    concept: str = ""
    index: int = 0
    # where the learner works in this step (``in:``): lab members, the first is the default
    # shell target that the app follows
    where: list[str] = field(default_factory=list)
    # ``diagnose:``: [{check: SPEC, say: TEXT}] run in order when a check of the step fails;
    # the first whose check fails explains the failure in this lab's own terms
    diagnose: list[dict[str, Any]] = field(default_factory=list)
    needs: list[str] = field(default_factory=list)  # kernel features beyond the lab's own


@dataclass
class LabDef:
    id: str
    title: str
    summary: str
    needs: list[str]
    topology: topofile.Topology
    steps: list[Step]
    setup: list[Action]
    path: str  # the lab folder
    default_name: str
    recap: str = ""  # shown when the last step passes: what was built, the Docker equivalent
    docker: DockerSpec | None = None  # real dockerd runs in that host (lab 10)
    # (scenario, host): "what would Docker have built here?" compares HOST with a shipped
    # ``cnmlab diff`` scenario run on real Docker
    docker_diff: tuple[str, str] | None = None

    def step(self, ref: "str | int | Step | None") -> Step:
        """A step by id, by 1-based number (int or digits) or the Step itself."""
        if isinstance(ref, Step):
            return ref
        if isinstance(ref, int) or (isinstance(ref, str) and ref.isdigit()):
            n = int(ref)
            if 1 <= n <= len(self.steps):
                return self.steps[n - 1]
        else:
            for s in self.steps:
                if s.id == ref:
                    return s
        raise ObjectNotFound(f"lab {self.id} has no step {ref!r}; steps: "
                             f"{', '.join(f'{i + 1}:{s.id}' for i, s in enumerate(self.steps))}")

    def summary_json(self) -> dict[str, Any]:
        return {"id": self.id, "title": self.title, "summary": self.summary,
                "steps": [{"id": s.id, "title": s.title} for s in self.steps],
                "needs": list(self.needs), "name": self.default_name, "path": self.path}


def engine_command(raw: dict[str, Any]) -> str:
    """An engine action as the docker-like command ``cnmlab lab docker`` understands."""
    op = raw["engine"]
    args = [f"--host {raw['host']}"]
    if op == "network_create":
        words = ["network", "create"]
        for key in ("driver", "subnet", "gateway", "ip_range", "bridge_name", "mtu"):
            if key in raw:
                words.append(f"--{key.replace('_', '-')} {raw[key]}")
        for key in ("internal", "icc", "masquerade"):
            if key in raw:
                words.append(f"--{key}" if key == "internal" and raw[key]
                             else f"--{key}={'true' if raw[key] else 'false'}")
        for k, v in (raw.get("options") or {}).items():
            words.append(f"-o {k}={v}")
        words.append(raw["name"])
    elif op == "network_rm":
        words = ["network", "rm", raw["name"]]
    elif op == "run":
        words = ["run", f"--network {raw.get('network', 'bridge')}"]
        if "ip" in raw:
            words.append(f"--ip {raw['ip']}")
        if "mac" in raw:
            words.append(f"--mac-address {raw['mac']}")
        words += [f"-p {p}" for p in raw.get("publish", [])]
        words += [f"--alias {a}" for a in raw.get("aliases", [])]
        words.append(raw["name"])
    elif op == "rm":
        words = ["rm", raw.get("sandbox") or raw["name"]]
    elif op == "connect":
        words = ["network", "connect"]
        if "ip" in raw:
            words.append(f"--ip {raw['ip']}")
        words += [f"--alias {a}" for a in raw.get("aliases", [])]
        words += [raw["network"], raw["sandbox"]]
    elif op in ("agent_stop", "agent_start"):
        return f"cnmlab agent {op.split('_')[1]} {{lab}} {raw['host']}"
    elif op == "service_create" and raw.get("publish"):
        words = ["service", "create", f"--publish {raw['publish'][0]}",
                 f"--replicas {raw.get('replicas', 1)}", raw["name"]]
    elif op == "service_create":
        words = ["service", "create", f"--network {raw['network']}",
                 f"--replicas {raw.get('replicas', 1)}", f"--port {raw.get('port', 80)}"]
        if raw.get("endpoint_mode", "vip") != "vip":
            words.append(f"--endpoint-mode {raw['endpoint_mode']}")
        words.append(raw["name"])
    elif op == "service_scale":
        words = ["service", "scale", f"{raw['name']}={raw['replicas']}"]
    elif op == "service_rm":
        words = ["service", "rm", raw["name"]]
    else:
        words = ["network", "disconnect", raw["network"], raw["sandbox"]]
    return "cnmlab lab docker {lab} " + " ".join(args + words)


# ---------------------------------------------------------------------------------------------
# loading and validation


class _TopologySource(Source):
    """The lab file's ``topology`` subtree as a topology-file Source; errors keep the full path."""

    def error(self, where: tuple[Any, ...], message: str) -> InvalidInput:
        dotted = ".".join(str(p) for p in ("topology",) + tuple(where))
        return InvalidInput(one_line(f"{self.path}:{self.line(tuple(where))}: {dotted}: "
                                     f"{message}"))


def _schema() -> dict[str, Any]:
    with open(SCHEMA_PATH) as f:
        return json.load(f)


def _schema_errors(src: Source) -> None:
    import jsonschema

    validator = jsonschema.Draft202012Validator(_schema())
    errors = sorted(validator.iter_errors(src.data), key=lambda e: (len(e.absolute_path),
                                                                    list(map(str, e.absolute_path))))
    if not errors:
        return
    err = jsonschema.exceptions.best_match(errors)
    where = tuple(err.absolute_path)
    msg = err.message
    if err.validator == "oneOf" and where[-2:-1] in (("solution",), ("setup",), ("cleanup",)) \
            or (err.validator == "oneOf" and len(where) >= 1 and isinstance(where[-1], int)
                and isinstance(err.instance, dict) and ("sh" in err.instance
                                                         or "engine" in err.instance)):
        msg = _action_problem(err.instance)
    elif err.validator == "oneOf" and isinstance(err.instance, dict) and "title" in err.instance:
        msg = "a step needs exactly one of 'text' or 'text_file'"
    elif err.validator == "required":
        missing = [r for r in err.validator_value if r not in (err.instance or {})]
        if missing:
            msg = f"missing field {missing[0]!r}"
            if missing[0] == "solution":
                msg += " (every step ships a solution, so CI can prove it is solvable)"
    elif err.validator == "additionalProperties":
        msg = err.message.replace("Additional properties are not allowed", "unknown field")
    raise src.error(where, msg)


def _action_problem(inst: Any) -> str:
    if not isinstance(inst, dict):
        return "an action is a mapping: {sh: CMD, in: NAME} or {engine: OP, host: H, ...}"
    if "sh" in inst:
        if "in" not in inst:
            return "a shell action needs 'in: NAME' (a sandbox, a host or upstream)"
        extra = set(inst) - {"sh", "in", "note"}
        return f"unknown field(s) in a shell action: {', '.join(sorted(extra)) or '?'}"
    if "engine" in inst:
        if inst.get("engine") not in ENGINE_OPS:
            return f"unknown engine action {inst.get('engine')!r}; known: {', '.join(ENGINE_OPS)}"
        if "host" not in inst:
            return "an engine action needs 'host: NAME'"
        return "bad engine action parameters: " + ", ".join(sorted(map(str, inst)))
    return "an action is {sh: CMD, in: NAME} or {engine: OP, host: H, ...}"


def _cidr(src: Source, where: tuple[Any, ...], value: Any) -> None:
    try:
        ipaddress.IPv4Interface(str(value))
        if "/" not in str(value):
            raise ValueError("no prefix length")
    except ValueError as e:
        raise src.error(where, f"{value!r} is not a valid IPv4 CIDR (e.g. 10.0.0.1/24): "
                        f"{e}") from None


def _network(src: Source, where: tuple[Any, ...], value: Any) -> None:
    try:
        ipaddress.IPv4Network(str(value))
    except ValueError as e:
        raise src.error(where, f"{value!r} is not a valid IPv4 subnet: {e}") from None


def _ipv4(src: Source, where: tuple[Any, ...], value: Any) -> None:
    try:
        ipaddress.IPv4Address(str(value))
    except ValueError:
        raise src.error(where, f"{value!r} is not an IPv4 address") from None


def _looks_like_ip(value: str) -> bool:
    return bool(re.match(r"^[0-9.]+(/\d+)?$", value))


class _Names:
    """Names a step may refer to: hosts, sandboxes (from the topology and earlier engine runs)."""

    def __init__(self, topo: topofile.Topology) -> None:
        self.hosts = {h.name for h in topo.hosts}
        self.sandboxes = {sb.name for h in topo.hosts for sb in h.sandboxes}
        self.underlays = {u.name for u in topo.underlays}

    def known(self) -> list[str]:
        return sorted(self.hosts | self.sandboxes | self.underlays | {"upstream"})

    def check_ns(self, src: Source, where: tuple[Any, ...], name: Any, what: str) -> None:
        name = str(name)
        if name.startswith("host:"):
            if name[5:] not in self.hosts:
                raise src.error(where, f"unknown host {name[5:]!r} in {what}; hosts: "
                                f"{', '.join(sorted(self.hosts))}")
            return
        if name.startswith("underlay:"):
            if name[9:] not in self.underlays:
                raise src.error(where, f"unknown underlay {name[9:]!r} in {what}; underlays: "
                                f"{', '.join(sorted(self.underlays)) or 'none'}")
            return
        if "@" in name:  # NETWORK@HOST: a network's namespace on a host, made at run time
            if name.split("@", 1)[1] not in self.hosts:
                raise src.error(where, f"unknown host in {name!r} ({what}); hosts: "
                                f"{', '.join(sorted(self.hosts))}")
            return
        if name not in self.hosts | self.sandboxes | self.underlays | {"upstream"}:
            raise src.error(where, f"unknown namespace {name!r} in {what}; known: "
                            f"{', '.join(self.known())}")


def _validate_action(src: Source, act: dict[str, Any], where: tuple[Any, ...],
                     names: _Names) -> None:
    if "sh" in act:
        names.check_ns(src, where + ("in",), act["in"], "'in:'")
        for m in NS_TEMPLATE.finditer(act["sh"]):
            names.check_ns(src, where + ("sh",), m.group(1), "{ns:...}")
        return
    if act["host"] not in names.hosts:
        raise src.error(where + ("host",), f"unknown host {act['host']!r}; hosts: "
                        f"{', '.join(sorted(names.hosts))}")
    op = act["engine"]
    need = {"network_create": ["name"], "network_rm": ["name"], "run": ["name"],
            "rm": [], "connect": ["network", "sandbox"], "disconnect": ["network", "sandbox"],
            "agent_stop": [], "agent_start": [],
            "service_create": ["name"] if act.get("publish") else ["name", "network"],
            "service_scale": ["name", "replicas"], "service_rm": ["name"]}[op]
    for key in need:
        if key not in act:
            raise src.error(where, f"engine action {op} needs {key!r}")
    if op == "rm" and not (act.get("sandbox") or act.get("name")):
        raise src.error(where, "engine action rm needs 'sandbox'")
    for key in ("subnet", "ip_range"):
        if key in act:
            _network(src, where + (key,), act[key])
    for key in ("gateway", "ip"):
        if key in act:
            _ipv4(src, where + (key,), act[key])
    if op == "run":
        names.sandboxes.add(act["name"])
    if op == "service_create" and act.get("publish"):  # the routing mesh: ingress_sbox.HOST
        if len(act["publish"]) != 1:
            raise src.error(where + ("publish",), "a service publishes one port here "
                            "(publish: [PUBLISHED:TARGET])")
        try:
            parse_publish(act["publish"][0])
        except InvalidInput as e:
            raise src.error(where + ("publish",), str(e)) from None
        names.sandboxes |= {sbox_name(h) for h in names.hosts}
    elif op == "service_create":  # the network's load balancer
        names.sandboxes.add(f"lb-{act['network']}")
    if op == "service_create":  # its tasks (NAME.SLOT)
        names.sandboxes |= {f"{act['name']}.{i}" for i in range(1, int(act.get("replicas", 1)) + 1)}
    if op in ("connect", "disconnect") and act["sandbox"] not in names.sandboxes:
        raise src.error(where + ("sandbox",), f"unknown sandbox {act['sandbox']!r}; known: "
                        f"{', '.join(sorted(names.sandboxes))}")


def _validate_check(src: Source, chk: dict[str, Any], where: tuple[Any, ...], names: _Names,
                    kinds: list[str]) -> None:
    kind, params = next(iter(chk.items()))
    params = params or {}
    if kind not in kinds:
        raise src.error(where, f"unknown check {kind!r}; known: {', '.join(kinds)}")
    for key in _NS_PARAMS:
        value = params.get(key)
        if isinstance(value, str) and not _looks_like_ip(value):
            names.check_ns(src, where + (kind, key), value, f"check parameter {key!r}")
    peer = params.get("peer")
    if isinstance(peer, dict) and isinstance(peer.get("ns"), str):
        names.check_ns(src, where + (kind, "peer", "ns"), peer["ns"], "check parameter 'peer'")
    for i, sb in enumerate(params.get("sandboxes") or []):
        names.check_ns(src, where + (kind, "sandboxes", i), sb, "check parameter 'sandboxes'")
    if kind == "link" and params.get("address") is not None:
        _cidr(src, where + (kind, "address"), params["address"])
    for key in ("to", "via"):
        value = params.get(key)
        if isinstance(value, str) and _looks_like_ip(value):
            _ipv4(src, where + (kind, key), value)
    try:
        validate_check(kind, params)
    except CnmError as e:
        raise src.error(where + (kind,), str(e)) from None


def _docker_spec(src: Source, raw: Any, topo: topofile.Topology,
                 names: _Names) -> DockerSpec | None:
    """``docker: {host: H, containers: [...]}``: real dockerd in host H, whose containers the
    steps' checks may name."""
    if raw is None:
        return None
    host = next((h for h in topo.hosts if h.name == raw["host"]), None)
    if host is None:
        raise src.error(("docker", "host"), f"unknown host {raw['host']!r}; hosts: "
                        f"{', '.join(sorted(names.hosts))}")
    if host.options.get("default_bridge", True) or host.options.get("firewall") != "manual":
        raise src.error(("docker", "host"), f"host {host.name} runs dockerd, which makes its own "
                        f"docker0 and rules: give it default_bridge: false and firewall: manual")
    names.sandboxes |= set(raw.get("containers") or [])
    return DockerSpec(host.name, list(raw.get("containers") or []))


def parse_lab(src: Source, folder: str) -> LabDef:
    if not isinstance(src.data, dict):
        raise src.error((), "a lab file is a mapping (id, title, topology, steps)")
    _schema_errors(src)
    data = src.data
    lab_id = data["id"]
    default_name = data.get("name") or default_lab_name(lab_id)
    topo_src = _TopologySource(src.path, data["topology"],
                               {k[1:]: v for k, v in src.lines.items() if k[:1] == ("topology",)})
    topo = topofile.parse(topo_src, name=default_name)
    names = _Names(topo)
    docker = _docker_spec(src, data.get("docker"), topo, names)
    kinds = check_kinds.kinds()

    def actions(raw: list[dict[str, Any]] | None, where: tuple[Any, ...]) -> list[Action]:
        out = []
        for i, a in enumerate(raw or []):
            _validate_action(src, a, where + (i,), names)
            out.append(Action(a, where + (i,)))
        return out

    lab_setup = actions(data.get("setup"), ("setup",))
    steps: list[Step] = []
    seen: set[str] = set()
    for i, s in enumerate(data["steps"]):
        where = ("steps", i)
        if s["id"] in seen:
            raise src.error(where + ("id",), f"step id {s['id']!r} is used twice")
        seen.add(s["id"])
        if "text_file" in s:
            tpath = os.path.join(folder, s["text_file"])
            try:
                with open(tpath) as f:
                    text = f.read()
            except OSError as e:
                raise src.error(where + ("text_file",), f"cannot read {s['text_file']}: "
                                f"{e.strerror}") from None
        else:
            text = s["text"]
        setup = actions(s.get("setup"), where + ("setup",))
        solution = actions(s["solution"], where + ("solution",))
        cleanup = actions(s.get("cleanup"), where + ("cleanup",))
        for j, chk in enumerate(s["checks"]):
            _validate_check(src, chk, where + ("checks", j), names, kinds)
        step_where = _step_where(src, s, where, names)
        diagnose = _step_diagnose(src, s, where, names, kinds)
        steps.append(Step(id=s["id"], title=s["title"], text=text, task=s["task"],
                          checks=list(s["checks"]), solution=solution, setup=setup,
                          cleanup=cleanup, hints=list(s.get("hints") or []),
                          concept=s.get("concept", ""), index=i, where=step_where,
                          diagnose=diagnose, needs=list(s.get("needs") or [])))
    return LabDef(id=lab_id, title=data["title"], summary=data.get("summary", ""),
                  needs=list(data.get("needs") or []), topology=topo, steps=steps,
                  setup=lab_setup, path=folder, default_name=default_name,
                  recap=data.get("recap", ""), docker=docker,
                  docker_diff=_docker_diff(src, data, names))


def _docker_diff(src: Source, data: dict[str, Any], names: "_Names") -> tuple[str, str] | None:
    """The lab's ``docker_diff``: a shipped scenario and one of the lab's hosts."""
    raw = data.get("docker_diff")
    if raw is None:
        return None
    if raw["scenario"] not in scenario.available():
        raise src.error(("docker_diff", "scenario"), f"no shipped scenario "
                        f"{raw['scenario']!r}; use one of {', '.join(scenario.available())}")
    if raw["host"] not in names.hosts:
        raise src.error(("docker_diff", "host"), f"unknown host {raw['host']!r}; hosts: "
                        f"{', '.join(sorted(names.hosts))}")
    return raw["scenario"], raw["host"]


def _step_where(src: Source, s: dict[str, Any], where: tuple[Any, ...],
                names: "_Names") -> list[str]:
    """A step's ``in:`` (a member name or a list of them), checked against the lab's members."""
    raw = s.get("in")
    if raw is None:
        return []
    items = [raw] if isinstance(raw, str) else list(raw)
    for i, name in enumerate(items):
        names.check_ns(src, where + (("in", i) if isinstance(raw, list) else ("in",)), name,
                       "the step's 'in:'")
    return [str(n) for n in items]


def _step_diagnose(src: Source, s: dict[str, Any], where: tuple[Any, ...], names: "_Names",
                   kinds: list[str]) -> list[dict[str, Any]]:
    """A step's ``diagnose:`` items, their checks validated like the step's own."""
    out = []
    for j, item in enumerate(s.get("diagnose") or []):
        _validate_check(src, item["check"], where + ("diagnose", j, "check"), names, kinds)
        out.append({"check": item["check"], "say": item["say"]})
    return out


def load(path: str) -> LabDef:
    """Load a lab from its folder or its ``lab.yaml``."""
    if os.path.isdir(path):
        folder, file = path, os.path.join(path, LAB_FILE)
    else:
        folder, file = os.path.dirname(path) or ".", path
    return parse_lab(yamlsrc.load(file), folder)


def discover(root: str | None = None) -> list[LabDef]:
    """Every lab found by ``catalog.lab_folders``; a lab id defined twice is an error naming
    both."""
    out: list[LabDef] = []
    seen: dict[str, str] = {}
    for folder in lab_folders(root):
        lab = load(folder)
        if lab.id in seen:
            raise InvalidInput(f"lab id {lab.id!r} is defined twice, in {seen[lab.id]} and "
                               f"{folder}: change the 'id' of one of them")
        seen[lab.id] = folder
        out.append(lab)
    return out


def get(ref: str, root: str | None = None) -> LabDef:
    """A lab by id, by number prefix (``2``, ``02``), by default name (``lab02``) or by path."""
    if os.sep in ref and os.path.exists(ref):
        return load(ref)
    labs = discover(root)
    for lab in labs:
        if ref in (lab.id, lab.default_name):
            return lab
    num = ref[3:] if ref.startswith("lab") else ref
    if num.isdigit():
        for lab in labs:
            m = re.match(r"^(\d+)", lab.id)
            if m and int(m.group(1)) == int(num):
                return lab
    raise ObjectNotFound(f"no lab {ref!r}; labs: {', '.join(l.id for l in labs) or '-'}")
