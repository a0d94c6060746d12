"""Labs: a topology plus ordered steps (text -> setup -> check -> hints -> solve -> cleanup).

    for labdef in discover():
        print(labdef.id, labdef.title, len(labdef.steps))
    run = LabRun(get("02-default-bridge"))
    run.start()                       # builds the topology as lab "lab02"
    run.show(run.current_step)        # the step's text and task
    results = run.check()             # the current step's checks (CheckResult list)
    print(run.hint())                 # the next hint, one at a time, remembered
    run.solve("attach-c1")            # the solutions of every step up to this one
    run.stop()

A lab file is validated twice before anything is built: against ``lab.schema.json`` and then
semantically (known check kinds, CIDRs, names in ``in:``). Every error is one line,
``FILE:LINE: steps.2.checks.0: ...``. Progress (steps passed, hints shown) is kept in a JSON
file between runs; the running lab's own bookkeeping (which setups ran) lives in the engine's
state file, so the CLI, the TUI and tests can all drive the same running lab.
"""
from __future__ import annotations

import fcntl
import ipaddress
import json
import os
import re
import subprocess
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, Iterator

from cnmlab import features, spec, state, yamlsrc
from cnmlab.errors import CnmError, InvalidInput, ObjectNotFound, one_line
from cnmlab.yamlsrc import Source

LAB_FILE = "lab.yaml"
SCHEMA_PATH = os.path.join(os.path.dirname(__file__), "lab.schema.json")
ENGINE_OPS = ("network_create", "network_rm", "run", "rm", "connect", "disconnect",
              "agent_stop", "agent_start", "service_create", "service_scale",
              "service_rm")
NS_TEMPLATE = re.compile(r"\{ns:([A-Za-z0-9_.@-]+)\}")
# check params that name a namespace (sandbox, "host:NAME" or "upstream")
_NS_PARAMS = ("from", "to", "sandbox", "ns")


class StepError(CnmError):
    """An action of a step (setup, solution, cleanup) failed."""


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
    topology: spec.Topology
    steps: list[Step]
    setup: list[Action]
    path: str  # the lab folder
    default_name: str
    recap: str = ""  # shown when the last step passes: what was built, the Docker equivalent

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
    """The lab file's ``topology`` subtree as a spec Source; errors keep the full path."""

    def error(self, where: tuple[Any, ...], message: str) -> InvalidInput:
        dotted = ".".join(str(p) for p in ("topology",) + tuple(where))
        return InvalidInput(one_line(f"{self.path}:{self.line(tuple(where))}: {dotted}: "
                                     f"{message}"))


def _schema() -> dict[str, Any]:
    with open(SCHEMA_PATH) as f:
        return json.load(f)


def _check_registry() -> tuple[list[str] | None, Any]:
    """(known check kinds, library.validate) or (None, None) while the library is absent."""
    try:
        from cnmlab.checks import api
        kinds = api.kinds()
    except ImportError:
        return None, None
    try:
        from cnmlab.checks.library import validate
    except ImportError:
        validate = None
    return kinds, validate


def default_lab_name(lab_id: str) -> str:
    """``01-sandboxes-by-hand`` -> ``lab01``; otherwise the id made into a valid lab name."""
    m = re.match(r"^(\d+)", lab_id)
    if m:
        return f"lab{m.group(1)}"
    return re.sub(r"[^a-z0-9_-]", "-", lab_id.lower())[:32]


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

    def __init__(self, topo: spec.Topology) -> None:
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
            "service_create": ["name", "network"], "service_scale": ["name", "replicas"],
            "service_rm": ["name"]}[op]
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
    if op == "service_create":  # its tasks (NAME.SLOT) and the network's load balancer
        names.sandboxes |= {f"{act['name']}.{i}" for i in range(1, int(act.get("replicas", 1)) + 1)}
        names.sandboxes.add(f"lb-{act['network']}")
    if op in ("connect", "disconnect") and act["sandbox"] not in names.sandboxes:
        raise src.error(where + ("sandbox",), f"unknown sandbox {act['sandbox']!r}; known: "
                        f"{', '.join(sorted(names.sandboxes))}")


def _validate_check(src: Source, chk: dict[str, Any], where: tuple[Any, ...], names: _Names,
                    kinds: list[str] | None, validate: Any) -> None:
    kind, params = next(iter(chk.items()))
    params = params or {}
    if kinds is not None and kind not in kinds:
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
    if validate is not None:
        try:
            validate(kind, params)
        except CnmError as e:
            raise src.error(where + (kind,), str(e)) from None


def parse_lab(src: Source, folder: str) -> LabDef:
    if not isinstance(src.data, dict):
        raise src.error((), "a lab file is a mapping (id, title, topology, steps)")
    _schema_errors(src)
    data = src.data
    lab_id = data["id"]
    default_name = data.get("name") or default_lab_name(lab_id)
    topo_src = _TopologySource(src.path, data["topology"],
                               {k[1:]: v for k, v in src.lines.items() if k[:1] == ("topology",)})
    topo = spec.parse(topo_src, name=default_name)
    names = _Names(topo)
    kinds, validate = _check_registry()

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
            _validate_check(src, chk, where + ("checks", j), names, kinds, validate)
        step_where = _step_where(src, s, where, names)
        diagnose = _step_diagnose(src, s, where, names, kinds, validate)
        steps.append(Step(id=s["id"], title=s["title"], text=text, task=s["task"],
                          checks=list(s["checks"]), solution=solution, setup=setup,
                          cleanup=cleanup, hints=list(s.get("hints") or []),
                          concept=s.get("concept", ""), index=i, where=step_where,
                          diagnose=diagnose, needs=list(s.get("needs") or [])))
    return LabDef(id=lab_id, title=data["title"], summary=data.get("summary", ""),
                  needs=list(data.get("needs") or []), topology=topo, steps=steps,
                  setup=lab_setup, path=folder, default_name=default_name,
                  recap=data.get("recap", ""))


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
                   kinds: list[str] | None, validate: Any) -> list[dict[str, Any]]:
    """A step's ``diagnose:`` items, their checks validated like the step's own."""
    out = []
    for j, item in enumerate(s.get("diagnose") or []):
        _validate_check(src, item["check"], where + ("diagnose", j, "check"), names, kinds,
                        validate)
        out.append({"check": item["check"], "say": item["say"]})
    return out


def load(path: str) -> LabDef:
    """Load a lab from its folder or its ``lab.yaml``."""
    if os.path.isdir(path):
        folder, file = path, os.path.join(path, LAB_FILE)
    else:
        folder, file = os.path.dirname(path) or ".", path
    return parse_lab(yamlsrc.load(file), folder)


LABS_PATH_ENV = "CNMLAB_LABS_PATH"


def labs_dir() -> str:
    """The shipped labs (package data ``cnmlab.labs_data``), or ``$CNMLAB_LABS`` instead."""
    env = os.environ.get("CNMLAB_LABS")
    if env:
        return env
    return str(resources.files("cnmlab.labs_data"))


def lab_folders(root: str | None = None) -> list[str]:
    """Every lab folder (one holding ``lab.yaml``), shipped labs first, then the user's.

    The user's folders come from ``$CNMLAB_LABS_PATH`` (``:``-separated; ``cnmlab --labs-dir
    DIR`` adds to it, so the TUI and child processes see the same labs). An explicit ``root``
    is searched alone. Kept in one function so every lister (CLI, TUI, tests) agrees.
    """
    roots = [("", root or labs_dir())]
    if not root:
        roots += [(f"{LABS_PATH_ENV}: ", p)
                  for p in os.environ.get(LABS_PATH_ENV, "").split(os.pathsep) if p]
    out = []
    for where, r in roots:
        try:
            entries = sorted(os.listdir(r))
        except OSError as e:
            raise InvalidInput(f"{where}{r}: {e.strerror}") from None
        out += [os.path.join(r, e) for e in entries if os.path.isfile(os.path.join(r, e, LAB_FILE))]
    return out


def discover(root: str | None = None) -> list[LabDef]:
    """Every lab found by ``lab_folders``; a lab id defined twice is an error naming both."""
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


# ---------------------------------------------------------------------------------------------
# progress between runs


def progress_path() -> str:
    return os.environ.get("CNMLAB_PROGRESS") or os.path.join(
        os.path.expanduser("~"), ".local", "share", "cnmlab", "progress.json")


class Progress:
    """``{"labs": {LAB_ID: {"passed": [step ids], "hints": {step id: n shown}}}}``."""

    def __init__(self, path: str | None = None) -> None:
        self.path = path or progress_path()

    def _read(self) -> dict[str, Any]:
        try:
            with open(self.path) as f:
                data = json.load(f)
            return data if isinstance(data, dict) else {"labs": {}}
        except (OSError, ValueError):
            return {"labs": {}}

    @contextmanager
    def _edit(self) -> Iterator[dict[str, Any]]:
        os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
        with open(self.path + ".lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            data = self._read()
            data.setdefault("labs", {})
            yield data
            tmp = self.path + ".tmp"
            with open(tmp, "w") as f:
                json.dump(data, f, indent=1, sort_keys=True)
            os.replace(tmp, self.path)

    def lab(self, lab_id: str) -> dict[str, Any]:
        entry = self._read().get("labs", {}).get(lab_id, {})
        return {"passed": list(entry.get("passed", [])), "hints": dict(entry.get("hints", {}))}

    def mark(self, lab_id: str, step_id: str, passed: bool) -> None:
        with self._edit() as data:
            entry = data["labs"].setdefault(lab_id, {"passed": [], "hints": {}})
            have = set(entry.setdefault("passed", []))
            if passed and step_id not in have:
                entry["passed"].append(step_id)
            elif not passed and step_id in have:
                entry["passed"].remove(step_id)

    def hint_shown(self, lab_id: str, step_id: str) -> int:
        """Count one more hint shown for a step; returns the new count."""
        with self._edit() as data:
            entry = data["labs"].setdefault(lab_id, {"passed": [], "hints": {}})
            hints = entry.setdefault("hints", {})
            hints[step_id] = hints.get(step_id, 0) + 1
            return hints[step_id]

    def clear(self, lab_id: str) -> None:
        with self._edit() as data:
            data["labs"].pop(lab_id, None)

    def unpass_from(self, lab_id: str, step_ids: list[str]) -> None:
        """Forget these steps' passes (a step reset); hints shown are kept."""
        with self._edit() as data:
            entry = data["labs"].setdefault(lab_id, {"passed": [], "hints": {}})
            entry["passed"] = [s for s in entry.get("passed", []) if s not in step_ids]

    # ---- the commands typed in the lab's shells, kept next to the progress file -----------
    def history_dir(self, lab_id: str) -> str:
        base = os.path.splitext(self.path)[0]
        return os.path.join(base + ".history", re.sub(r"[^A-Za-z0-9_.-]", "_", lab_id))

    def history_file(self, lab_id: str, member: str) -> str:
        """bash's HISTFILE for the lab's shells in ``member`` (appended after each command)."""
        return os.path.join(self.history_dir(lab_id),
                            re.sub(r"[^A-Za-z0-9_.-]", "_", member) + ".bash_history")

    def history(self, lab_id: str) -> dict[str, list[str]]:
        """member -> the commands typed there, oldest first (bash's timestamp lines dropped)."""
        folder = self.history_dir(lab_id)
        out: dict[str, list[str]] = {}
        try:
            files = sorted(os.listdir(folder))
        except OSError:
            return out
        for name in files:
            if not name.endswith(".bash_history"):
                continue
            try:
                with open(os.path.join(folder, name), errors="replace") as f:
                    lines = [l.rstrip("\n") for l in f if l.strip() and not re.match(r"^#\d+$", l)]
            except OSError:
                continue
            out[name[:-len(".bash_history")]] = lines
        return out


# ---------------------------------------------------------------------------------------------
# running a lab


@dataclass
class Hint:
    number: int  # 1-based
    total: int
    text: str

    def __str__(self) -> str:
        return f"hint {self.number}/{self.total}: {self.text}"


class LabRun:
    """One running instance of a lab (the engine lab ``instance_name``, default ``lab01``...)."""

    def __init__(self, labdef: LabDef, instance_name: str | None = None,
                 progress: Progress | None = None) -> None:
        self.labdef = labdef
        self.name = instance_name or labdef.default_name
        state.check_lab_name(self.name)
        self.progress = progress or Progress()
        self.lab: Any = None
        self.why: dict[str, str | None] = {}  # step id -> the lab's explanation of its last failure

    # ---- lifecycle -----------------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self.lab is not None or state.exists(self.name)

    def _attach(self) -> Any:
        if self.lab is None:
            from cnmlab.lab import Lab

            if not state.exists(self.name):
                raise ObjectNotFound(f"lab {self.labdef.id} is not running (as {self.name}): "
                                     f"'cnmlab lab start {self.labdef.id}' first")
            self.lab = Lab.open(self.name)
        else:
            # another process (CLI, TUI) may have changed it since
            try:
                self.lab.refresh()
            except ObjectNotFound:
                self.lab.close()
                self.lab = None
                return self._attach()
        return self.lab

    def start(self, resume: bool = False) -> "LabRun":
        """Build the topology and run the lab's setup and the first step's setup.

        ``resume``: also re-apply the solutions of the steps already passed (progress file),
        so the learner continues where they left off.
        """
        from cnmlab import features
        from cnmlab.lab import Lab

        if os.geteuid() != 0:
            from cnmlab.errors import NotRootError

            raise NotRootError("labs need root to create namespaces: run cnmlab with sudo")
        features.require(self.labdef.needs, f"lab {self.labdef.id}")
        with state.locked(self.name):  # nobody acts on the lab before it is fully up
            lab = Lab(self.name)
            try:
                with lab.locked():
                    spec.build(self.labdef.topology, lab)
                    self.lab = lab
                    self._save_run({"lab_id": self.labdef.id, "setup_done": []})
                    self._apply(self.labdef.setup)
                    passed = (set(self.progress.lab(self.labdef.id)["passed"]) if resume
                              else set())
                    upto = None
                    for s in self.labdef.steps:
                        if s.id not in passed:
                            break
                        upto = s
                    if upto is not None:
                        self.solve(upto)
                    self._enter(self.current_step or self.labdef.steps[0])
            except BaseException:
                lab.down()
                self.lab = None
                raise
        return self

    def stop(self) -> None:
        """Tear the lab down (every namespace it made, and its state file)."""
        from cnmlab.lab import Lab, teardown

        if self.lab is not None:
            self.lab.down()
            self.lab = None
            return
        if state.exists(self.name):
            Lab.open(self.name).down()
        else:
            teardown(self.name, None)

    def reset(self) -> "LabRun":
        """Down and up again, from step 1: the lab's progress is cleared."""
        with state.locked(self.name):
            self.stop()
            self.progress.clear(self.labdef.id)
            return self.start()

    def reset_step(self, step: "str | int | Step") -> "LabRun":
        """Rebuild the lab as it was when ``step`` began: down, up, the solutions of the steps
        before it; this step and the later ones count as not passed any more."""
        s = self.labdef.step(step)
        self.stop()
        self.progress.unpass_from(self.labdef.id, [x.id for x in self.labdef.steps[s.index:]])
        self.start()
        if s.index > 0:
            self.solve(self.labdef.steps[s.index - 1])
        self._enter(s)
        return self

    def explain(self, step: "str | int | Step", results: list[Any]) -> str | None:
        """The lab's own explanation of a failed step: the ``say`` of the first ``diagnose``
        item whose check fails (``{observed}`` is filled from that check), else None."""
        from cnmlab.checks.api import run_check
        from cnmlab.checks.targets import EngineTarget

        s = self.labdef.step(step)
        if all(r.ok for r in results) or not s.diagnose:
            return None
        target = EngineTarget(self._attach())
        for item in s.diagnose:
            r = run_check(target, item["check"])
            if not r.ok:
                return (self.render(item["say"]).strip().replace("{observed}", r.observed)
                        .replace("{reason}", r.reason))
        return None

    # ---- the run's own bookkeeping, kept in the engine's state file -----------------------
    def _run_info(self) -> dict[str, Any]:
        return self.lab.state.extra.setdefault("labrun", {"lab_id": self.labdef.id,
                                                          "setup_done": []})

    def _save_run(self, info: dict[str, Any]) -> None:
        with self.lab.locked():
            self.lab.state.extra["labrun"] = info
            self.lab._save()

    def _enter(self, step: Step) -> None:
        """Run a step's setup once, when the step is first checked or solved.

        Under the lab's lock: a check in the workshop app and one on the command line at the
        same moment must not both run the setup. A step that needs a kernel feature this
        machine lacks (an 802.1Q trunk) says so in one line, pointing to the full-kernel VM,
        instead of failing half-way through.
        """
        if step.needs:
            features.require(step.needs, f"step {step.index + 1} ({step.id}) of lab "
                                         f"{self.labdef.id}")
        with self._attach().locked():
            info = self._run_info()
            if step.id in info["setup_done"]:
                return
            self._apply(step.setup)
            info = self._run_info()
            info["setup_done"].append(step.id)
            self._save_run(info)

    # ---- steps ---------------------------------------------------------------------------
    @property
    def passed(self) -> list[str]:
        return self.progress.lab(self.labdef.id)["passed"]

    @property
    def current_step(self) -> Step | None:
        """The first step whose checks have not passed (None: the lab is done)."""
        done = set(self.passed)
        for s in self.labdef.steps:
            if s.id not in done:
                return s
        return None

    def render(self, text: str) -> str:
        """Fill ``{ns:NAME}`` with the real namespace name and ``{lab}`` with the lab name."""
        from cnmlab.lab import ns_name

        def ns(m: re.Match[str]) -> str:
            name = m.group(1)
            if self.lab is not None:
                try:
                    return self.lab.netns_of(name)
                except CnmError:
                    pass
            return ns_name(self.name, name)

        return NS_TEMPLATE.sub(ns, text).replace("{lab}", self.name)

    def show(self, step: "str | int | Step | None" = None) -> dict[str, Any]:
        s = self._step(step)
        if s is None:
            return {"done": True, "lab": self.labdef.id}
        return {"lab": self.labdef.id, "step": s.id, "number": s.index + 1,
                "of": len(self.labdef.steps), "title": s.title, "concept": s.concept,
                "text": self.render(s.text), "task": self.render(s.task),
                "hints_total": len(s.hints),
                "hints_shown": self.progress.lab(self.labdef.id)["hints"].get(s.id, 0),
                "passed": s.id in self.passed, "where": list(s.where)}

    def _step(self, step: "str | int | Step | None") -> Step | None:
        return self.current_step if step is None else self.labdef.step(step)

    def check(self, step: "str | int | Step | None" = None) -> list[Any]:
        """Run a step's checks (default: the current step); a full pass is recorded."""
        from cnmlab.checks.api import run_checks
        from cnmlab.checks.targets import EngineTarget

        s = self._step(step)
        if s is None:
            s = self.labdef.steps[-1]
        self._enter(s)
        lab = self._attach()
        results = run_checks(EngineTarget(lab), s.checks)
        ok = all(r.ok for r in results)
        if ok or s.id in self.passed:
            self.progress.mark(self.labdef.id, s.id, ok)
        self.why[s.id] = None if ok else self.explain(s, results)
        return results

    def hint(self, step: "str | int | Step | None" = None) -> Hint | None:
        """The next hint of a step (default: the current one), one per call; None: no more."""
        s = self._step(step)
        if s is None or not s.hints:
            return None
        shown = self.progress.lab(self.labdef.id)["hints"].get(s.id, 0)
        if shown >= len(s.hints):
            return Hint(len(s.hints), len(s.hints), self.render(s.hints[-1]))
        n = self.progress.hint_shown(self.labdef.id, s.id)
        return Hint(n, len(s.hints), self.render(s.hints[n - 1]))

    def hints_shown(self, step: "str | int | Step | None" = None) -> list[Hint]:
        s = self._step(step)
        if s is None:
            return []
        n = self.progress.lab(self.labdef.id)["hints"].get(s.id, 0)
        return [Hint(i + 1, len(s.hints), self.render(h)) for i, h in enumerate(s.hints[:n])]

    def solution(self, step: "str | int | Step | None" = None) -> list[str]:
        """The step's solution as a learner would type it."""
        s = self._step(step)
        return [a.describe(self.render) for a in (s.solution if s else [])]

    def solve(self, upto_step: "str | int | Step | None" = None) -> list[Step]:
        """Apply the solutions of every step up to and including ``upto_step`` (default:
        the current step), skipping steps already recorded as applied in this run."""
        target = self._step(upto_step)
        if target is None:
            return []
        solved = []
        with self._attach().locked():  # one solve at a time, each on the latest model
            for s in self.labdef.steps[:target.index + 1]:
                info = self._run_info()
                if s.id in info.get("solved", []):
                    continue
                self._enter(s)
                self._apply(s.solution)
                info = self._run_info()
                info.setdefault("solved", []).append(s.id)
                self._save_run(info)
                self._apply(s.cleanup)
                solved.append(s)
        return solved

    # ---- actions -------------------------------------------------------------------------
    def _apply(self, actions: list[Action]) -> None:
        for a in actions:
            self.apply_action(a)

    def apply_action(self, action: "Action | dict[str, Any]") -> None:
        raw = action.raw if isinstance(action, Action) else action
        lab = self._attach()
        if "sh" in raw:
            ns = lab.netns_of(raw["in"])
            script = self.render(raw["sh"])
            try:
                proc = subprocess.run(["ip", "netns", "exec", ns, "bash", "-e", "-o", "pipefail",
                                       "-c", script], capture_output=True, text=True, timeout=60)
            except subprocess.TimeoutExpired:
                raise StepError(f"in {raw['in']}: no answer after 60 s: {script.strip()}") from None
            if proc.returncode != 0:
                msg = (proc.stderr or proc.stdout).strip().splitlines()
                raise StepError(f"in {raw['in']}: {script.strip().splitlines()[0]}... failed: "
                                f"{msg[-1] if msg else proc.returncode}")
            return
        host = lab.host(raw["host"])
        op = raw["engine"]
        kw = {k: v for k, v in raw.items() if k not in ("engine", "host", "note")}
        if op == "network_create":
            host.network_create(kw.pop("name"), **kw)
        elif op == "network_rm":
            host.network_rm(kw["name"])
        elif op == "run":
            name = kw.pop("name")
            host.run(name, kw.pop("network", "bridge"), **kw)
            self._wait_resolver(name)
        elif op == "rm":
            host.rm(kw.get("sandbox") or kw["name"])
        elif op == "connect":
            host.connect(kw["network"], kw["sandbox"], ip=kw.get("ip"),
                         aliases=kw.get("aliases") or ())
            self._wait_resolver(kw["sandbox"])
        elif op == "disconnect":
            host.disconnect(kw["network"], kw["sandbox"])
        elif op == "agent_stop":  # the host stops following the control plane
            lab.stop_agent(host.name)
        elif op == "agent_start":  # ... and follows it again: reconcile, then watch
            lab.restart_agent(host.name)
            lab.converge()
        elif op == "service_create":
            svc = host.service_create(kw.pop("name"), kw.pop("network"), **kw)
            # the resolver follows the new names in every sandbox of the network (a slow
            # machine, such as the VM's emulated CPU, may still be re-reading the state)
            for sb in host.sandboxes():
                if any(r.network == svc.network for r in sb.model.endpoints):
                    self._wait_resolver(sb.name)
        elif op == "service_scale":
            host.service_scale(kw["name"], int(kw["replicas"]))
        elif op == "service_rm":
            host.service_rm(kw["name"])
        else:  # the schema already refused it
            raise InvalidInput(f"unknown engine action {op!r}")


    def _wait_resolver(self, sandbox: str, timeout: float = 3.0) -> None:
        """After a join, wait until the embedded DNS answers in the sandbox (if it has one).

        The engine nudges a running resolver asynchronously; a solution followed at once by a
        dns check (CI, ``lab solve`` then ``lab check``) must not race it.
        """
        import time

        sb = self.lab.sandbox(sandbox).model
        if not sb.dns or not sb.netns:
            return
        try:
            from cnmlab.checks import probes
        except ImportError:
            return
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                probes.dns_query(sb.netns, sandbox, "127.0.0.11", timeout=0.2)
                return
            except probes.DnsNameError:
                return  # it answers
            except CnmError:
                time.sleep(0.05)


def running_instances(labdef: LabDef) -> list[str]:
    """Names of running engine labs that are instances of this lab."""
    out = []
    for name in state.names():
        try:
            st = state.load(name)
        except (CnmError, TypeError, ValueError):  # another cnmlab version's state file
            continue
        if st.extra.get("labrun", {}).get("lab_id") == labdef.id:
            out.append(name)
    return out
