"""``cnmlab diff``: the same commands on the engine and on real Docker, and what differs.

Each side gets a fresh lab whose upstream plays the internet: the engine builds the scenario in
host ``host``; Debian's dockerd 20.10 runs in the manual host ``docker`` of a second lab (the
conformance harness). Both hosts are first on their upstream, so their public addresses match,
and Docker's address pools are deterministic, so container addresses and MACs match too.
The kernel state is then read the same way on both (``checks.kernelstate``) and compared
section by section, in order, so a rule that moved is a difference.

Service steps (the ``ipvs`` scenario) make Docker's side a single-node swarm; its load
balancer ``lb_<id>`` lives in the daemon's private mount namespace and is read through
``/proc/<dockerd>/root``. Both sides' services are described by role (``ServiceView``) so the
collector compares the load balancers, whatever network carries them.

Differences that are deliberate are listed once, with their reason, in
``scenarios/known-differences.yaml``; they are printed as such and never fail a run. Anything
else is a difference that fails ``cnmlab diff`` (exit 1) and the CI test.
"""
from __future__ import annotations

import difflib
import ipaddress
import json
import os
import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from cnmlab import ingress, services, yamlsrc
from cnmlab.checks import dockerd, kernelstate
from cnmlab.checks.docker_target import DockerTarget
from cnmlab.checks.dockerd import DockerDaemon
from cnmlab.checks.kernelstate import ContainerView, HostView, ServiceView, collect
from cnmlab.checks.scenario import Scenario, Step, global_scope, scenarios_dir
from cnmlab.checks.swarm import Swarm
from cnmlab.errors import CnmError, FeatureMissing, InvalidInput
from cnmlab.kernel import sysctl
from cnmlab.kernel.ipvs import Ipvs
from cnmlab.lab import Lab, parse_port

SIDES = ("engine", "docker")
LB_PREFIX = "lb-"  # Docker's load-balancer endpoint of a swarm network: lb-<network>
SERVICE_TIMEOUT = 600.0  # tasks took 40-50 s to run in the VM (emulated CPU), idle machine
TASK_NAME = re.compile(r"(.+)\.\d+\.[0-9a-z]{25}")  # swarm's <service>.<slot>.<task id>


@dataclass(frozen=True)
class Known:
    scenario: str  # regex on the scenario name: a known difference is as narrow as it can be
    section: str  # regex on the section title
    side: str  # the side whose line it is: engine or docker
    line: str  # regex on the line
    reason: str

    def covers(self, scenario: str, section: str, side: str, line: str) -> bool:
        return (self.side == side and re.fullmatch(self.scenario, scenario) is not None
                and re.fullmatch(self.section, section) is not None
                and re.fullmatch(self.line, line) is not None)


@dataclass
class Difference:
    section: str
    side: str  # the side that has the line the other lacks
    line: str
    known: str | None = None  # the reason, when it is a listed deliberate difference

    def __str__(self) -> str:
        mark = "-" if self.side == "engine" else "+"
        tail = f"    (known: {self.known})" if self.known else ""
        return f"{mark} {self.line}{tail}"


@dataclass
class DiffResult:
    scenario: str
    differences: list[Difference] = field(default_factory=list)
    sections: int = 0
    timings: dict[str, float] = field(default_factory=dict)
    mine: str = "engine"  # what the "-" side is: the engine, or a lab's hand-built state

    @property
    def unlisted(self) -> list[Difference]:
        return [d for d in self.differences if d.known is None]

    @property
    def ok(self) -> bool:
        return not self.unlisted

    def to_json(self) -> dict[str, Any]:
        return {"scenario": self.scenario, "ok": self.ok, "sections": self.sections,
                "timings": self.timings,
                "differences": [vars(d) for d in self.differences]}

    def render(self) -> str:
        lines = [f"scenario {self.scenario}: {self.sections} sections compared, "
                 f"{len(self.unlisted)} unlisted and "
                 f"{len(self.differences) - len(self.unlisted)} known differences "
                 f"(- {self.mine} only, + docker only)"]
        current = None
        for d in self.differences:
            if d.section != current:
                current = d.section
                lines.append(f"  [{d.section}]")
            lines.append(f"    {d}")
        return "\n".join(lines)


def load_known(path: str | None = None) -> list[Known]:
    src = yamlsrc.load(path or os.path.join(scenarios_dir(), "known-differences.yaml"))
    if not isinstance(src.data, list):
        raise src.error((), "a list of {scenario, section, side, line, reason}")
    out = []
    fields = {"scenario", "section", "side", "line", "reason"}
    for i, item in enumerate(src.data):
        if not isinstance(item, dict) or set(item) != fields:
            raise src.error((i,), "each entry has exactly scenario, section, side, line and "
                                  "reason")
        if item["side"] not in SIDES:
            raise src.error((i, "side"), f"use one of {', '.join(SIDES)}")
        for key in ("scenario", "section", "line"):
            try:
                re.compile(str(item[key]))
            except re.error as e:
                raise src.error((i, key), f"not a regular expression: {e}") from None
        out.append(Known(str(item["scenario"]), str(item["section"]), item["side"],
                         str(item["line"]), str(item["reason"])))
    return out


def compare(scenario: str, engine: dict[str, list[str]], docker: dict[str, list[str]],
            known: list[Known]) -> list[Difference]:
    """Line differences per section, in order (difflib), each marked known or not."""
    out = []
    for section in list(dict.fromkeys([*engine, *docker])):
        a, b = engine.get(section, []), docker.get(section, [])
        for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(a=a, b=b, autojunk=False).get_opcodes():
            if tag == "equal":
                continue
            for side, lines in (("engine", a[i1:i2]), ("docker", b[j1:j2])):
                for line in lines:
                    reason = next((k.reason for k in known
                                   if k.covers(scenario, section, side, line)), None)
                    out.append(Difference(section, side, line, reason))
    return out


# ---- the two sides -----------------------------------------------------------------------
def _engine_apply(lab: Lab, step: Step, default_host: str = "host") -> None:
    host = lab.host(step.args.get("host") or default_host)
    a = step.args
    if step.op == "run":
        host.run(a["name"], a.get("network", "bridge"), publish=a.get("publish", ()),
                 ip=a.get("ip"), aliases=a.get("aliases", ()))
    elif step.op == "rm":
        host.rm(a["name"])
    elif step.op == "network_create":
        kw = dict(subnet=a.get("subnet"), gateway=a.get("gateway"),
                  internal=bool(a.get("internal")), options=a.get("options"))
        if global_scope(a.get("driver", "bridge")):  # declared once, cluster-wide
            lab.network_create(a["name"], a["driver"], **kw)
        else:
            host.network_create(a["name"], a.get("driver", "bridge"), ip_range=a.get("ip_range"),
                                **kw)
    elif step.op == "network_rm":
        if lab.cluster is not None and lab.cluster.network(a["name"]) is not None:
            lab.network_rm(a["name"])
        else:
            host.network_rm(a["name"])
    elif step.op == "connect":
        host.connect(a["network"], a["container"], ip=a.get("ip"))
    elif step.op == "disconnect":
        host.disconnect(a["network"], a["container"])
    elif step.op == "service_network_create":  # cnmlab's services run on one host's bridge
        host.network_create(a["name"], "bridge", subnet=a.get("subnet"))
    else:
        host.service_create(a["name"], a["network"], replicas=a.get("replicas", 1),
                            port=a.get("port", 80))


def _engine_view(lab: Lab, host_name: str | None = "host",
                 only: set[str] | None = None) -> HostView:
    """The engine's (or a learner's lab's) host as the collector reads it.

    A learner who built ``docker0`` by hand has no network in the model: the device Docker
    would call ``docker0`` is then taken as the predefined network ``bridge``. A network with
    a namespace of its own (an overlay's ``br0`` + ``vxlan0``) is read there too, and the
    host's ingress sandbox (``ingress_sbox.HOST`` here, one lab's hosts sharing /run/netns)
    plays Docker's ``ingress_sbox``.
    """
    host = lab.host(host_name)
    view = HostView(host.netns, {n.name: n.device for n in host.networks().values() if n.device})
    if "bridge" not in view.bridges:
        view.bridges["bridge"] = "docker0"
    for n in host.networks().values():
        if n.netns and n.netns != host.netns:
            view.namespaces[f"network {n.name}"] = n.netns

    # a service's load balancer is no container (Docker lists none): its state is compared
    # in the sections about services
    lbs = {services.lb_name(s.network) for s in host.model.services.values() if s.vip}
    for sb in host.sandboxes():
        if sb.name == ingress.sbox_name(host.name):
            view.containers[ingress.SBOX] = ContainerView(ingress.SBOX, sb.netns, "", _no_files)
            continue
        if (only is not None and sb.name not in only) or sb.name in lbs:
            continue

        def read(f: str, ns: str = sb.netns) -> str:
            try:
                with open(os.path.join("/etc/netns", ns, f)) as fh:
                    return fh.read()
            except OSError:
                return ""
        view.containers[sb.name] = ContainerView(sb.name, sb.netns, sb.model.id[:12], read)
    for svc in host.model.services.values():
        lb = host.model.sandboxes.get(services.lb_name(svc.network))
        if not svc.vip or lb is None or not lb.netns:
            continue
        ips = dict(zip(svc.tasks, host.service_tasks(svc.name)))
        view.services.append(ServiceView(svc.name, svc.network, svc.vip, ips, lb.netns,
                                         host.sandbox(lb.name).ip(svc.network)))
    return view


def _no_files(f: str) -> str:
    """A sandbox that is no container (Docker's ingress_sbox, lb_<net>) has no /etc of its
    own; both sides read it as empty."""
    return ""


def _docker_apply(daemon: DockerDaemon, step: Step, manager: DockerDaemon | None = None) -> None:
    """One step on ``daemon``; a global-scope network goes to the swarm's ``manager``."""
    a = step.args
    if step.op == "run":
        args = ["run", "-d", "--name", a["name"]]
        if a.get("network"):
            args += ["--network", a["network"]]
        if a.get("ip"):
            args += ["--ip", a["ip"]]
        for alias in a.get("aliases", []):
            args += ["--network-alias", alias]
        for p in a.get("publish", []):
            parse_port(p)  # the same validation as the engine's
            args += ["-p", p]
        daemon.docker(*args, dockerd.IMAGE, "sleep", "3600")
    elif step.op == "rm":
        daemon.docker("rm", "-f", a["name"])
    elif step.op == "network_create":
        options = {str(k): str(v) for k, v in (a.get("options") or {}).items()} or None
        if global_scope(a.get("driver", "bridge")) and manager is not None:
            manager.docker("network", "create", "--driver", a["driver"], "--attachable",
                           *(["--subnet", a["subnet"]] if a.get("subnet") else []),
                           *(["--gateway", a["gateway"]] if a.get("gateway") else []),
                           *(["--internal"] if a.get("internal") else []),
                           *[x for k, v in (options or {}).items() for x in ("-o", f"{k}={v}")],
                           a["name"], timeout=60)
            return
        daemon.network_create(a["name"], subnet=a.get("subnet"), internal=bool(a.get("internal")),
                              options=options, driver=a.get("driver", "bridge"),
                              gateway=a.get("gateway"), ip_range=a.get("ip_range"))
    elif step.op == "network_rm":
        (manager or daemon).docker("network", "rm", a["name"])
    elif step.op == "service_network_create":
        _swarm(daemon)
        daemon.docker("network", "create", "-d", "overlay", "--attachable",
                      *(["--subnet", a["subnet"]] if a.get("subnet") else []), a["name"],
                      timeout=120)
    elif step.op == "service_create":
        _swarm(daemon)
        replicas = int(a.get("replicas", 1))
        daemon.docker("service", "create", "--name", a["name"], "--network", a["network"],
                      "--replicas", str(replicas), "--no-resolve-image", "--detach",
                      dockerd.IMAGE, "sleep", "3600", timeout=300)
        _wait_service(daemon, a["name"], replicas)
    else:
        daemon.docker("network", step.op, *(["--ip", a["ip"]] if a.get("ip") else []),
                      a["network"], a["container"])


def _swarm(daemon: DockerDaemon) -> None:
    """``docker swarm init`` once, before the first service step (a single-node swarm).

    ip_vs is loaded first, as on any node that ran a service before: libnetwork writes the
    load balancer's IPVS sysctls (expire_nodest_conn, conn_reuse_mode...) when it creates the
    lb namespace, and they exist there only if the module is already loaded; otherwise they
    silently keep the kernel's defaults and Docker's state would depend on what ran before."""
    state = daemon.docker("info", "--format", "{{.Swarm.LocalNodeState}}").stdout.strip()
    if state != "active":
        Ipvs(daemon.netns_name).services()  # loads ip_vs
        daemon.docker("swarm", "init", timeout=120)


def _lb_netns(daemon: DockerDaemon, network_id: str) -> str:
    """Docker's load balancer namespace ``lb_<id9>``: a file under the daemon's exec-root,
    bind-mounted in the daemon's private mount namespace, reached through its root."""
    return f"/proc/{daemon.pid}/root{daemon.exec_root}/netns/lb_{network_id[:9]}"


def _wait_service(daemon: DockerDaemon, name: str, replicas: int,
                  timeout: float = SERVICE_TIMEOUT) -> None:
    """Until ``replicas`` tasks run and the load balancer's IPVS lists each of them (the
    daemon programs IPVS after the task starts). Generous: the VM's CPU is emulated."""
    deadline = time.monotonic() + timeout
    why = "no task yet"
    while time.monotonic() < deadline:
        svc = _docker_services(daemon, {name})
        if svc and len(svc[0].tasks) == replicas:
            try:
                servers = sum(len(s.servers) for s in _ipvs_of(svc[0].lb_netns))
            except (OSError, CnmError) as e:
                servers, why = 0, f"its load balancer is not there yet ({e})"
            if servers >= replicas:
                return
            why = why if not servers else f"IPVS lists {servers} of {replicas} tasks"
        elif svc:
            why = f"{len(svc[0].tasks)} of {replicas} tasks run"
        time.sleep(0.5)
    raise CnmError(f"docker service {name}: not ready within {timeout:g} s: {why}")


def _ipvs_of(ns_path: str) -> list[Any]:
    fd = os.open(ns_path, os.O_RDONLY)
    try:
        return Ipvs(fd=fd).services()
    finally:
        os.close(fd)


def _docker_services(daemon: DockerDaemon, only: set[str] | None = None) -> list[ServiceView]:
    """Each VIP service: its VIP, its running tasks (by slot name) and its network's lb."""
    names = daemon.docker("service", "ls", "--format", "{{.Name}}",
                          check=False).stdout.split()
    out = []
    for name in names:
        if only is not None and name not in only:
            continue
        vips = json.loads(daemon.docker("service", "inspect", name, "--format",
                                        "{{json .Endpoint.VirtualIPs}}").stdout or "null")
        for vip in vips or []:
            net = json.loads(daemon.docker("network", "inspect", vip["NetworkID"], "--format",
                                           "{{json .}}").stdout)
            if net["Name"] == "ingress":
                continue
            tasks = {}
            lb_ip = ""
            for ep in (net.get("Containers") or {}).values():
                m = TASK_NAME.fullmatch(ep.get("Name", ""))
                addr = ep.get("IPv4Address", "").split("/")[0]
                if m and m.group(1) == name:
                    tasks[m.group(0).rsplit(".", 1)[0]] = addr
                elif ep.get("Name") == f"{net['Name']}-endpoint":
                    lb_ip = addr
            out.append(ServiceView(name, net["Name"], vip["Addr"].split("/")[0], tasks,
                                   _lb_netns(daemon, net["Id"]), lb_ip))
    return out


def _docker_view(daemon: DockerDaemon, host_netns: str) -> HostView:
    """Docker's host as the collector reads it. Docker keeps each overlay network's namespace
    (``1-<id10>``), its load balancer's (``lb_<id9>``) and ``ingress_sbox`` as files under
    ``EXEC_ROOT/netns``, in dockerd's private mount namespace: read through its /proc root."""
    target = DockerTarget(daemon)
    nets = target.networks()
    view = HostView(host_netns, {n.name: n.bridge for n in nets.values() if n.bridge})
    for sb in target.sandboxes().values():
        def read(f: str, name: str = sb.name) -> str:
            return daemon.docker("exec", name, "cat", f"/etc/{f}", check=False).stdout
        # a swarm task is <service>.<slot>.<task id>: by its slot, as cnmlab names its tasks
        m = TASK_NAME.fullmatch(sb.name)
        name = m.group(0).rsplit(".", 1)[0] if m else sb.name
        view.containers[name] = ContainerView(name, sb.netns_path, sb.id[:12], read)
    root = f"/proc/{daemon.pid}/root{daemon.exec_root}/netns"
    for n in nets.values():
        if n.scope != "swarm":
            continue
        if _is_netns(path := os.path.join(root, f"1-{n.id[:10]}")):
            view.namespaces[f"network {n.name}"] = path
        if n.name != ingress.INGRESS and _is_netns(path := os.path.join(root,
                                                                        f"lb_{n.id[:9]}")):
            view.containers[LB_PREFIX + n.name] = ContainerView(LB_PREFIX + n.name, path, "",
                                                                _no_files)
    if _is_netns(path := os.path.join(root, ingress.SBOX)):
        view.containers[ingress.SBOX] = ContainerView(ingress.SBOX, path, "", _no_files)
    view.services = _docker_services(daemon)
    return view


def _is_netns(path: str) -> bool:
    """A namespace file still mounted there (nsfs), not the empty file Docker leaves for a
    moment after it released the namespace (a network that left the node)."""
    try:
        return os.stat(path).st_dev == os.stat("/proc/self/ns/net").st_dev
    except OSError:
        return False


@contextmanager
def _docker_side(name: str, quiet: bool = True) -> Iterator[tuple[DockerDaemon, str]]:
    dockerd.require_tools()
    lab = Lab(name)
    daemon = None
    try:
        host = lab.add_host("docker", default_bridge=False, firewall="manual")
        # a fresh machine forwards nothing: Docker turns forwarding on and, because it had to,
        # sets the FORWARD policy to DROP, as the engine's hosts have it
        sysctl.write_many({"net.ipv4.ip_forward": 0}, host.netns)
        daemon = DockerDaemon(name, host.netns, os.path.join(dockerd.DAEMONS_DIR, name),
                              cache_dir=dockerd.IMAGE_CACHE, quiet=quiet)
        daemon.start()
        yield daemon, host.netns
    finally:
        try:
            if daemon is not None:
                daemon.stop()
        finally:
            lab.down()


UNDERLAY = ("lan", "192.168.50.0/24")  # the multi-host scenarios' LAN, on both sides


def run_engine(scenario: Scenario, name: str,
               after: Callable[[Lab], None] | None = None) -> dict[str, list[str]]:
    """The scenario on a fresh engine lab, its state read, the lab removed. ``after(lab)``
    runs between the last step and the reading (the tests plant a broken engine there)."""
    with Lab(name) as lab:
        if not scenario.hosts:
            lab.add_host("host")
            for step in scenario.steps:
                _apply(step, lambda: _engine_apply(lab, step))
            if after is not None:
                after(lab)
            return scenario.compared(collect(_engine_view(lab)))
        lab.add_underlay(*UNDERLAY)
        for h in scenario.hosts:
            lab.add_host(h, underlay=UNDERLAY[0])
        lab.start_control_plane()  # swarm init + join
        lab.init_ingress()
        for step in scenario.steps:
            _apply(step, lambda: _engine_apply(lab, step, scenario.hosts[0]))
        lab.converge(timeout=60)
        if after is not None:
            after(lab)
        return scenario.compared(_per_host({h: collect(_engine_view(lab, h))
                                            for h in scenario.hosts}))


def run_docker(scenario: Scenario, name: str) -> dict[str, list[str]]:
    if scenario.hosts:
        return _run_swarm(scenario, name)
    with _docker_side(name) as (daemon, host_ns):
        for step in scenario.steps:
            _apply(step, lambda: _docker_apply(daemon, step))
        time.sleep(0.2)  # docker run returns before the last route/rule change lands
        return scenario.compared(collect(_docker_view(daemon, host_ns)))


def _run_swarm(scenario: Scenario, name: str) -> dict[str, list[str]]:
    dockerd.require_tools()
    lab = Lab(name)
    swarm = None
    try:
        swarm = Swarm(lab, scenario.hosts, underlay=UNDERLAY, fresh_machines=True)
        swarm.start()
        for step in scenario.steps:
            daemon = swarm.daemons[step.args.get("host") or scenario.hosts[0]]
            _apply(step, lambda: _docker_apply(daemon, step, swarm.manager))
        views = _settled_views(lambda: {h: _docker_view(d, lab.host(h).netns)
                                        for h, d in swarm.daemons.items()})
        return scenario.compared(_per_host({h: collect(v) for h, v in views.items()}))
    finally:
        try:
            if swarm is not None:
                swarm.stop()
        finally:
            lab.down()


def _settled_views(read: Callable[[], dict[str, HostView]], timeout: float = 30.0,
                   steady: float = 1.5) -> dict[str, HostView]:
    """Each host's view once its overlay namespaces hold a permanent neighbour for exactly
    the endpoints the other hosts have on that network, no node keeps a network's part with
    no container (or ingress sandbox) on it, and nothing changed for ``steady`` seconds.
    Swarm spreads peers by gossip, a second or so after ``docker run`` returned, and takes a
    network's namespace (and its load balancer) off a node some time after its last
    container left: the views are read again until then (the engine's ``converge`` waits for
    its agents the same way). At the deadline the last views are taken: what is still
    missing is then a difference the diff names."""
    deadline = time.monotonic() + timeout
    last: Any = None
    since = time.monotonic()
    while True:
        views = read()
        local = {h: _endpoints(v) for h, v in views.items()}
        neigh = {h: {label: kernelstate.permanent_neighbours(ns)
                     for label, ns in v.namespaces.items()} for h, v in views.items()}
        consistent = all(
            {ip for o in views if o != h for ip in local[o].get(label, {})} == found
            and any(not name.startswith(LB_PREFIX) for name in local[h].get(label, {}).values())
            for h in views for label, found in neigh[h].items())
        now = (consistent, {h: (sorted(v.namespaces), sorted(v.containers),
                                {k: sorted(n) for k, n in neigh[h].items()})
                            for h, v in views.items()})
        if now != last:
            last, since = now, time.monotonic()
        elif consistent and time.monotonic() - since >= steady:
            return views
        if time.monotonic() > deadline:
            return views
        time.sleep(0.2)


def _endpoints(view: HostView) -> dict[str, dict[str, str]]:
    """Network namespace label -> {address: sandbox} for this host's sandboxes in its
    subnet."""
    mine = [(ipaddress.ip_interface(a), c.name) for c in view.containers.values()
            for a in kernelstate.inet_addresses(c.netns)]
    out = {}
    for label, ns in view.namespaces.items():
        subnets = {ipaddress.ip_interface(a).network for a in kernelstate.inet_addresses(ns)
                   if not a.startswith("127.")}
        out[label] = {str(a.ip): name for a, name in mine if a.network in subnets}
    return out


def _per_host(states: dict[str, dict[str, list[str]]]) -> dict[str, list[str]]:
    """One multi-host state: each host's sections, titled ``HOST: section``."""
    return {f"{h}: {section}": lines for h, st in states.items() for section, lines in st.items()}


def containers_of(scenario: Scenario) -> set[str]:
    names = {s.args["name"] for s in scenario.steps if s.op == "run"}
    return names | {services.task_name(s.args["name"], slot) for s in scenario.steps
                    if s.op == "service_create"
                    for slot in range(1, int(s.args.get("replicas", 1)) + 1)}


def run_against(scenario: Scenario, lab_name: str, host: str | None = None,
                known: list[Known] | None = None) -> DiffResult:
    """"What would Docker have built here?": a learner's running lab against real Docker.

    The lab's host plays the engine's side; its sandboxes named like the scenario's
    containers are compared with Docker's.
    """
    lab = Lab.open(lab_name)
    try:
        return run_against_lab(scenario, lab, host, known)
    finally:
        lab.close()


def run_against_lab(scenario: Scenario, lab: Lab, host: str | None = None,
                    known: list[Known] | None = None) -> DiffResult:
    """``run_against`` for a lab already open (the workshop's own, on its engine thread).

    Known differences are matched against ``against_lab(scenario)``, not the scenario's own
    name: what a lab leaves out on purpose (lab 03 builds no filter-table half) must never
    hide the same line missing from the engine's run of that scenario. A multi-host scenario
    reads each host it names (``host`` is then ignored).
    """
    if scenario.hosts:
        mine = _per_host({h: collect(_engine_view(lab, h, only=containers_of(scenario)))
                          for h in scenario.hosts})
    else:
        mine = collect(_engine_view(lab, host, only=containers_of(scenario)))
    mine = scenario.compared(mine)
    docker_state = run_docker(scenario, f"df{os.getpid()}d")
    return DiffResult(scenario.name, compare(against_lab(scenario.name), mine, docker_state,
                                             load_known() if known is None else known),
                      sections=len(set(mine) | set(docker_state)), mine=f"lab {lab.name}")


def against_lab(scenario: str) -> str:
    """The name a scenario compared with a learner's lab has in ``known-differences.yaml``."""
    return f"{scenario}@lab"


def _apply(step: Step, action: Any) -> None:
    try:
        action()
    except FeatureMissing as e:  # not the scenario's fault: this kernel lacks what it needs
        raise FeatureMissing(f"step '{step}' cannot run here: {e}") from None
    except CnmError as e:
        raise InvalidInput(f"step '{step}' failed: {e}") from None


def diff(scenario: Scenario, known: list[Known] | None = None,
         engine: dict[str, list[str]] | None = None,
         docker: dict[str, list[str]] | None = None) -> DiffResult:
    """Run ``scenario`` on both sides (or reuse ``engine``'s or ``docker``'s state) and compare.

    Docker's side costs a daemon start per scenario; a caller comparing several engines with
    one scenario (the tests' planted differences) reads Docker's state once and passes it.
    """
    tag = f"df{os.getpid()}"
    t0 = time.monotonic()
    engine_state = engine if engine is not None else run_engine(scenario, f"{tag}e")
    t1 = time.monotonic()
    docker_state = docker if docker is not None else run_docker(scenario, f"{tag}d")
    t2 = time.monotonic()
    result = DiffResult(scenario.name, compare(scenario.name, engine_state, docker_state,
                                               load_known() if known is None else known),
                        sections=len(set(engine_state) | set(docker_state)))
    result.timings = {"engine": t1 - t0, "docker": t2 - t1}
    return result
