"""The ingress routing mesh: a port published by a service answers on every host of the lab.

Built as swarm builds it (docker-fidelity.md §4 "Ingress"; libnetwork's ``service_linux.go``):

* the overlay network ``ingress`` (swarm's first pool /24, 10.0.0.0/24) spans every host;
* each host has one **ingress sandbox** (Docker's ``ingress_sbox``) with an endpoint on
  ``ingress`` and one on ``docker_gwbridge``;
* on the host, nat ``PREROUTING``/``OUTPUT -m addrtype --dst-type LOCAL -j DOCKER-INGRESS``, and
  in ``DOCKER-INGRESS`` one DNAT per published port to the ingress sandbox's gwbridge address;
  filter ``FORWARD -j DOCKER-INGRESS`` accepts that port (FORWARD's policy is DROP);
* in the ingress sandbox, mangle ``PREROUTING -p tcp --dport P -j MARK --set-mark F`` (one mark
  per service, from 256 up, allocated cluster-wide), an IPVS **fwmark** service ``F`` (rr) whose
  real servers are the tasks' ingress addresses on *every* host (masquerade; port 0, so the
  port stays P), and nat ``POSTROUTING -d 10.0.0.0/24 -m ipvs --ipvs -j SNAT`` so tasks answer
  the sandbox, which un-NATs the reply;
* in each task, nat ``PREROUTING -p tcp --dport P -j REDIRECT --to-ports T`` (published ->
  target port).

Who does what, and through what. The manager (``Mesh``, run by the lab process) declares each
service and each task in the control plane (etcd, under ``mesh/``), and, acting as the daemon of
the host it places a task on, runs the task there (a sandbox on ``ingress``). Each host's agent
(``program_host``) reads services and tasks from the store *only* and programs its own kernel:
the DNAT, the marks, IPVS. No host reads another host's state, so hosts on many machines work
the same way as on one.

*cnmlab simplifies:* no raft, no task health, a sandbox per task (the checks start a server in
it); the ingress sandbox of host H is named ``ingress_sbox.H`` because one lab's hosts share one
namespace directory; TCP only for published ports in checks (UDP is programmed the same way).
"""
from __future__ import annotations

import ipaddress
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass

from cnmlab.cluster import Cluster
from cnmlab.constants import INGRESS_CHAIN, NS_PREFIX, NS_SEP
from cnmlab.controller import Controller, bare_ip
from cnmlab.errors import CnmError, InvalidInput, ObjectExists, ObjectNotFound
from cnmlab.firewall.iptables import USER_CHAIN
from cnmlab.kernel import netns, nsexec, sysctl
from cnmlab.kernel.ipvs import PROTOS, Ipvs, VirtualService
from cnmlab.kernel.netlink import Netlink
from cnmlab.services import LB_SYSCTLS, SCHEDULER  # the ingress sandbox balances as an lb does

INGRESS = "ingress"
INGRESS_SUBNET = "10.0.0.0/24"  # swarm's default pool 10.0.0.0/8 in /24s: ingress takes the first
CHAIN = INGRESS_CHAIN
SBOX = "ingress_sbox"
FWMARK_FIRST = 256  # libnetwork's fwMarkCtr starts here (below: marks other tools use)
FWMARK_LAST = 0xFFFFFF


def sbox_name(host: str) -> str:
    """Docker's ``ingress_sbox``, one per host; here suffixed with the host (see above)."""
    return f"{SBOX}.{host}"


def sbox_netns(lab: str, host: str) -> str:
    return f"{NS_PREFIX}{lab}{NS_SEP}{sbox_name(host)}"


def parse_publish(spec: str | int) -> tuple[int, int, str]:
    """``8080:80``, ``8080:80/udp`` or ``80`` (published = target) -> (published, target, proto)."""
    text = str(spec)
    ports, _, proto = text.partition("/")
    proto = proto or "tcp"
    pub, _, tgt = ports.partition(":")
    try:
        published, target = int(pub), int(tgt or pub)
    except ValueError:
        raise InvalidInput(f"publish {text!r}: use PUBLISHED:TARGET[/tcp|udp], e.g. 8080:80")
    if proto not in PROTOS or not (0 < published < 65536 and 0 < target < 65536):
        raise InvalidInput(f"publish {text!r}: ports 1-65535, protocol tcp or udp")
    return published, target, proto


# ---- what the control plane holds ----------------------------------------------------------
@dataclass(frozen=True)
class MeshService:
    name: str
    published: int
    target: int
    proto: str
    fwmark: int


@dataclass(frozen=True)
class MeshTask:
    name: str  # <service>.<slot>
    service: str
    slot: int
    host: str
    ip: str  # on ingress


class MeshStore:
    """``mesh/services/<name>`` and ``mesh/tasks/<task>`` in the lab's store: the only way a
    host learns about another host's tasks (swarm gossips the same in its service tables).
    ``mesh/nodes/<host>`` says a host's ingress sandbox is fully joined: a node that joins
    after services were published is programmed by its agent from that event on."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.store = cluster.store
        self.prefix = f"{cluster.prefix}mesh/"

    def services(self) -> dict[str, MeshService]:
        raw = self.store.range(f"{self.prefix}services/")
        return {s.name: s for s in (MeshService(**json.loads(v)) for v in raw.values())}

    def put_service(self, svc: MeshService) -> None:
        if not self.store.create(f"{self.prefix}services/{svc.name}", json.dumps(asdict(svc))):
            raise ObjectExists(f"service {svc.name} already exists")

    def delete_service(self, name: str) -> None:
        self.store.delete(f"{self.prefix}services/{name}")

    def tasks(self, service: str | None = None) -> list[MeshTask]:
        raw = self.store.range(f"{self.prefix}tasks/")
        out = [MeshTask(**json.loads(v)) for v in raw.values()]
        return sorted((t for t in out if service is None or t.service == service),
                      key=lambda t: (t.service, t.slot))

    def put_task(self, task: MeshTask) -> None:
        self.store.put(f"{self.prefix}tasks/{task.name}", json.dumps(asdict(task)))

    def delete_task(self, name: str) -> None:
        self.store.delete(f"{self.prefix}tasks/{name}")

    def put_node(self, host: str, sandbox: str) -> None:
        self.store.put(f"{self.prefix}nodes/{host}", json.dumps({"sandbox": sandbox}))


# ---- the manager: declares services and places tasks -------------------------------------
class Mesh:
    """Services with published ports across the lab's hosts (``docker service create -p``).

    ``hosts`` are the controllers of the hosts, in order (the daemons a manager dispatches to);
    everything another host must know goes through ``cluster``."""

    def __init__(self, cluster: Cluster, hosts: dict[str, Controller],
                 check_free: Callable[[str], None]) -> None:
        self.cluster = cluster
        self.ms = MeshStore(cluster)
        self.hosts = hosts
        self._check_free = check_free

    def get(self, name: str) -> MeshService:
        svc = self.ms.services().get(name)
        if svc is None:
            raise ObjectNotFound(f"service {name} not found in the control plane")
        return svc

    def ensure_sandboxes(self) -> list[str]:
        """Each host's ingress sandbox (a daemon makes it when its node joins ingress);
        returns the hosts that got theirs now."""
        made = []
        for host, ctl in self.hosts.items():
            name = sbox_name(host)
            if name in ctl.host.sandboxes:
                continue
            self._check_free(name)
            ctl.create_sandbox(name)
            try:
                ctl.connect(INGRESS, name)
            except BaseException:
                ctl.delete_sandbox(name)
                raise
            made.append(host)
        return made

    def join(self) -> list[str]:
        """Hosts added after ports were published: their ingress sandboxes, and a
        ``mesh/nodes/<host>`` record each, whose event makes every agent (theirs among them)
        program the mesh now rather than at the next service change."""
        made = self.ensure_sandboxes()
        for host in made:
            self.ms.put_node(host, sbox_name(host))
        return made

    def create(self, name: str, replicas: int, publish: str | int) -> MeshService:
        published, target, proto = parse_publish(publish)
        if replicas < 0:
            raise InvalidInput(f"service {name}: replicas must be 0 or more")
        services = self.ms.services()
        if name in services:
            raise ObjectExists(f"service {name} already exists")
        taken = next((s for s in services.values()
                      if s.published == published and s.proto == proto), None)
        if taken:
            raise InvalidInput(f"service {name}: port {published}/{proto} is already published "
                               f"by service {taken.name}; pick another published port")
        mark = self.cluster.allocate_id("fwmark", name, FWMARK_FIRST, FWMARK_LAST)
        svc = MeshService(name, published, target, proto, mark)
        try:
            self.ms.put_service(svc)
            self._scale_to(svc, replicas)
        except BaseException:
            self._drop(svc)
            raise
        return svc

    def scale(self, name: str, replicas: int) -> MeshService:
        if replicas < 0:
            raise InvalidInput(f"service {name}: replicas must be 0 or more")
        svc = self.get(name)
        self._scale_to(svc, replicas)
        return svc

    def remove(self, name: str) -> None:
        self._drop(self.get(name))

    def _drop(self, svc: MeshService) -> None:
        self._scale_to(svc, 0)
        self.ms.delete_service(svc.name)
        self.cluster.release_ids("fwmark", svc.name)

    def _place(self, tasks: list[MeshTask]) -> str:
        """Swarm's spread strategy: the host running fewest of this service's tasks."""
        load = {h: 0 for h in self.hosts}
        for t in tasks:
            if t.host in load:
                load[t.host] += 1
        return min(load, key=lambda h: load[h])  # ties: the first host in lab order

    def _scale_to(self, svc: MeshService, replicas: int) -> None:
        tasks = self.ms.tasks(svc.name)
        while len(tasks) < replicas:
            slot = max((t.slot for t in tasks), default=0) + 1
            task = self._run_task(svc, slot, self._place(tasks))
            self.ms.put_task(task)
            tasks.append(task)
        while len(tasks) > replicas:
            task = tasks.pop()
            # out of every host's IPVS first (agents follow the store), then gone
            self.ms.delete_task(task.name)
            ctl = self.hosts.get(task.host)
            if ctl is not None and task.name in ctl.host.sandboxes:
                ctl.delete_sandbox(task.name)

    def _run_task(self, svc: MeshService, slot: int, host: str) -> MeshTask:
        name = f"{svc.name}.{slot}"
        ctl = self.hosts[host]
        self._check_free(name)
        sb = ctl.create_sandbox(name)
        try:
            ep = ctl.connect(INGRESS, name)
            if svc.published != svc.target:  # the published port, redirected to the target
                nsexec.run(sb.netns, ["iptables", "-w", "-t", "nat", "-A", "PREROUTING", "-p",
                                      svc.proto, "--dport", str(svc.published), "-j",
                                      "REDIRECT", "--to-ports", str(svc.target)])
        except BaseException:
            ctl.delete_sandbox(name)
            raise
        return MeshTask(name, svc.name, slot, host, bare_ip(ep.ip or ""))


# ---- a host's part: programmed by its agent from the store ---------------------------------
def host_rules(services: list[MeshService], sbox_ip: str) -> str:
    """The host's DOCKER-INGRESS chains (nat and filter), for ``iptables-restore --noflush``."""
    nat = ["*nat", f":{CHAIN} - [0:0]"]
    flt = ["*filter", f":{CHAIN} - [0:0]"]
    for s in sorted(services, key=lambda s: s.published):
        p, m = s.proto, f"-m {s.proto}"
        nat.append(f"-A {CHAIN} -p {p} {m} --dport {s.published} -j DNAT "
                   f"--to-destination {sbox_ip}:{s.published}")
        flt += [f"-A {CHAIN} -p {p} {m} --dport {s.published} -j ACCEPT",
                f"-A {CHAIN} -p {p} -m conntrack --ctstate RELATED,ESTABLISHED {m} "
                f"--sport {s.published} -j ACCEPT"]
    nat += [f"-A {CHAIN} -j RETURN", "COMMIT"]
    flt += [f"-A {CHAIN} -j RETURN", "COMMIT"]
    return "\n".join(nat + flt) + "\n"


#: (table, chain, match) of the jumps into DOCKER-INGRESS, each first in its chain but in
#: FORWARD, where it comes second, right after ``-j DOCKER-USER`` (see ``install_jumps``)
HOST_JUMPS = (("nat", "PREROUTING", ["-m", "addrtype", "--dst-type", "LOCAL"]),
              ("nat", "OUTPUT", ["-m", "addrtype", "--dst-type", "LOCAL"]),
              ("filter", "FORWARD", []))


def install_jumps(host_ns: str) -> None:
    """The host's jumps into DOCKER-INGRESS, each made once. libnetwork's
    arrangeIngressFilterRule and arrangeUserFilterRule leave FORWARD with DOCKER-USER's jump
    first (the user filters before anything of Docker's) and DOCKER-INGRESS's second."""
    for table, chain, match in HOST_JUMPS:
        rule = [chain, *match, "-j", CHAIN]
        if not nsexec.run(host_ns, ["iptables", "-w", "-t", table, "-C", *rule],
                          check=False).returncode:
            continue
        at = "1"
        if (table, chain) == ("filter", "FORWARD"):
            listed = nsexec.run(host_ns, ["iptables", "-w", "-t", table, "-S", chain]).stdout
            rules = [line for line in listed.splitlines() if line.startswith("-A ")]
            if rules[:1] == [f"-A {chain} -j {USER_CHAIN}"]:
                at = "2"
        nsexec.run(host_ns, ["iptables", "-w", "-t", table, "-I", chain, at, *match, "-j",
                             CHAIN])


def sbox_marks(services: list[MeshService]) -> str:
    """The ingress sandbox's mangle table: one mark per published port."""
    lines = ["*mangle", ":PREROUTING ACCEPT [0:0]"]
    for s in sorted(services, key=lambda s: s.published):
        lines.append(f"-A PREROUTING -p {s.proto} -m {s.proto} --dport {s.published} "
                     f"-j MARK --set-xmark {hex(s.fwmark)}/0xffffffff")
    return "\n".join(lines + ["COMMIT"]) + "\n"


def _sbox_addresses(ns: str, subnet: str) -> tuple[str, str]:
    """(address on ingress, address on docker_gwbridge) of the ingress sandbox, from its kernel."""
    net = ipaddress.IPv4Network(subnet)
    ing = gw = ""
    with Netlink(ns) as nl:
        for _, cidr in nl.addresses():
            ip = ipaddress.IPv4Interface(cidr).ip
            if ip.is_loopback:
                continue
            if ip in net:
                ing = str(ip)
            else:
                gw = str(ip)
    return ing, gw


def program_host(lab: str, host: str, host_ns: str, cluster: Cluster) -> str:
    """Make this host's kernel hold what the store says (idempotent; the agent's job).

    Returns a one-line summary; raises CnmError if the kernel refuses something."""
    ms = MeshStore(cluster)
    services = list(ms.services().values())
    tasks = ms.tasks()
    record = cluster.network(INGRESS)
    ns = sbox_netns(lab, host)
    if record is None or not netns.exists(ns):
        return "no ingress sandbox on this host yet" if services else ""
    ing_ip, gw_ip = _sbox_addresses(ns, record.subnet or INGRESS_SUBNET)
    if not ing_ip or not gw_ip:
        return "the ingress sandbox is not joined to ingress and docker_gwbridge yet"
    # the sandbox: IPVS first (a marked packet with no service is simply delivered locally)
    lb = Ipvs(ns)
    have = {s.service.fwmark: s for s in lb.services() if s.service.fwmark}
    sysctl.write_many(LB_SYSCTLS, ns)  # after the first IPVS call loaded ip_vs
    want = {s.fwmark: s for s in services}
    for mark, state in have.items():
        if mark not in want:
            lb.delete_service(state.service)
    servers = 0
    for mark, svc in want.items():
        vs = VirtualService(fwmark=mark)
        if mark not in have:
            lb.add_service(vs, SCHEDULER)
        ips = {t.ip for t in tasks if t.service == svc.name and t.ip}
        now = {r.ip for r in have[mark].servers} if mark in have else set()
        for ip in sorted(now - ips):
            try:
                lb.delete_server(vs, ip, 0)
            except ObjectNotFound:
                pass
        for ip in sorted(ips - now):
            lb.add_server(vs, ip, 0, "masq")
        servers += len(ips)
    nsexec.run(ns, ["iptables-restore", "-w"], input=sbox_marks(services))
    snat = ["POSTROUTING", "-d", record.subnet or INGRESS_SUBNET, "-m", "ipvs", "--ipvs", "-j",
            "SNAT", "--to-source", ing_ip]
    if nsexec.run(ns, ["iptables", "-w", "-t", "nat", "-C", *snat], check=False).returncode:
        nsexec.run(ns, ["iptables", "-w", "-t", "nat", "-A", *snat])
    # the host: DNAT each published port to the sandbox (serialised with the lab process,
    # whose firewall rewrite keeps these chains)
    with netns.locked(host_ns):
        nsexec.run(host_ns, ["iptables-restore", "-w", "--noflush"],
                   input=host_rules(services, gw_ip))
        install_jumps(host_ns)
    return (f"ingress: {len(services)} published port(s), {servers} real server(s) "
            f"behind {ing_ip}")


def host_out_of_sync(lab: str, host: str, host_ns: str, cluster: Cluster) -> str | None:
    """Why this host's kernel does not (yet) hold what the store says, or None: exactly one
    fwmark service per service, with exactly its tasks, and exactly one DNAT per published
    port (a removed service's leftovers count as out of sync too)."""
    ms = MeshStore(cluster)
    services = ms.services()
    ns = sbox_netns(lab, host)
    if not netns.exists(ns):
        return f"{host} has no ingress sandbox" if services else None
    try:
        have = {s.service.fwmark: {r.ip for r in s.servers} for s in Ipvs(ns).services()
                if s.service.fwmark}
    except CnmError as e:
        return f"{host}: {e}"
    tasks = ms.tasks()
    for svc in services.values():
        want = {t.ip for t in tasks if t.service == svc.name}
        if have.get(svc.fwmark) != want:
            return (f"{host}: FWM {svc.fwmark} has {sorted(have.get(svc.fwmark, set()))}, "
                    f"the store {sorted(want)}")
    extra = sorted(set(have) - {s.fwmark for s in services.values()})
    if extra:
        return f"{host}: FWM {extra[0]} belongs to no service in the store"
    rules = nsexec.run(host_ns, ["iptables", "-w", "-t", "nat", "-S", CHAIN],
                       check=False).stdout
    dnat = {int(w[w.index("--dport") + 1]) for w in (l.split() for l in rules.splitlines())
            if "DNAT" in w and "--dport" in w}
    want_ports = {s.published for s in services.values()}
    if dnat != want_ports:
        return f"{host}: nat {CHAIN} DNATs ports {sorted(dnat)}, the store {sorted(want_ports)}"
    return None


__all__ = ["CHAIN", "INGRESS", "Mesh", "MeshService", "MeshStore", "MeshTask",
           "parse_publish", "program_host", "host_out_of_sync", "sbox_name"]
