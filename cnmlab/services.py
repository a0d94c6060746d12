"""Swarm-style services on one host: tasks, a VIP and IPVS, as ``docker service create`` does.

A service is N task sandboxes on a user-defined network. In ``vip`` endpoint mode (Docker's
default) the network gets one load-balancer sandbox, ``lb-<network>`` (Docker's ``lb_<id>``
endpoint, ``lb-<network>`` in ``docker network inspect``), which holds every service VIP of
that network on its interface; an IPVS virtual service VIP:port with the ``rr`` scheduler
masquerades each new connection to one task, and a SNAT rule (``-m ipvs --ipvs``) makes the task
answer the balancer rather than the client, so replies come back through it (libnetwork does the
same in its load-balancer sandbox). The embedded DNS answers the service name with the VIP and
``tasks.<name>`` with the task addresses. In ``dnsrr`` mode there is no VIP: the name resolves
to the task addresses themselves, and clients balance (or cache) on their own.

*cnmlab simplifies:* one host and no swarm: no manager, no raft, no task scheduling across
nodes and no health checks; the tasks are sandboxes (no process runs in them until a check or a
learner starts one), and scaling adds or removes real servers at once. Removing a real server
means no new connection reaches that task; ``expire_nodest_conn`` drops connections in flight.
"""
from __future__ import annotations

import ipaddress
from collections.abc import Callable

from cnmlab import drivers
from cnmlab.kernel import nsexec, sysctl
from cnmlab.controller import Controller, bare_ip
from cnmlab.errors import CnmError, InvalidInput, ObjectExists, ObjectNotFound
from cnmlab.kernel.ipvs import PROTOS, Ipvs, VirtualService
from cnmlab.model import Sandbox, Service
from cnmlab.kernel.netlink import Netlink

MODES = ("vip", "dnsrr")
SCHEDULER = "rr"  # what Docker programs for every service
#: the load balancer's sysctls, as libnetwork sets them in its sandboxes (the service lbs and
#: the ingress sandbox alike: IPVS conntrack for the SNAT; conn_reuse_mode 0, so a new
#: connection reusing a port goes where the old one went, as Docker 20.10 sets it; measured by
#: ``cnmlab diff ipvs``). Forwarding: cnmlab turns it on (its single-host VIP is reached
#: through the lb: with forwarding off nothing answers, measured in the VM lane), Docker
#: leaves it off (a known difference in checks/scenarios/known-differences.yaml)
LB_SYSCTLS = {"net.ipv4.ip_forward": 1, "net.ipv4.vs.conntrack": 1,
              "net.ipv4.vs.conn_reuse_mode": 0,
              "net.ipv4.vs.expire_nodest_conn": 1, "net.ipv4.vs.expire_quiescent_template": 1}


def lb_name(network: str) -> str:
    return f"lb-{network}"


def task_name(service: str, slot: int) -> str:
    """Docker names a task ``<service>.<slot>.<task id>``; cnmlab drops the id."""
    return f"{service}.{slot}"


def virtual(svc: Service) -> VirtualService:
    return VirtualService(svc.proto, svc.vip, svc.port)


class Services:
    """The services of one host, over its controller (which saves after each change)."""

    def __init__(self, ctl: Controller, save: Callable[[], None],
                 check_free: Callable[[str], None]) -> None:
        self.ctl = ctl
        self.host = ctl.host
        self._save = save
        self._check_free = check_free

    def get(self, name: str) -> Service:
        try:
            return self.host.services[name]
        except KeyError:
            raise ObjectNotFound(f"service {name} not found on host {self.host.name}") from None

    # ---- lifecycle ---------------------------------------------------------------------
    def create(self, name: str, network: str, replicas: int = 1, endpoint_mode: str = "vip",
               port: int = 80, proto: str = "tcp") -> Service:
        """``docker service create --network NET --replicas N [--endpoint-mode dnsrr]``."""
        if name in self.host.services:
            raise ObjectExists(f"service {name} already exists on host {self.host.name}")
        if endpoint_mode not in MODES:
            raise InvalidInput(f"service {name}: endpoint_mode {endpoint_mode!r}: use vip or dnsrr")
        if proto not in PROTOS or not 0 < int(port) < 65536:
            raise InvalidInput(f"service {name}: port {port}/{proto}: use 1-65535, tcp or udp")
        if replicas < 0:
            raise InvalidInput(f"service {name}: replicas must be 0 or more")
        net = self.ctl.network(network)
        if not net.embedded_dns or not drivers.capability(net.driver).own_namespace:
            raise InvalidInput(f"service {name}: network {network} ({net.driver}) has no "
                               f"embedded DNS; create a user-defined network for services")
        svc = Service(name=name, network=network, port=int(port), proto=proto,
                      endpoint_mode=endpoint_mode)
        self.host.services[name] = svc
        try:
            if endpoint_mode == "vip":
                self._ensure_lb(network)
                svc.vip = self.ctl.reserve_address(network)
                with Netlink(self._lb(svc.network).netns) as nl:
                    nl.add_address(self._lb_ifname(network), f"{svc.vip}/32")
                Ipvs(self._lb(svc.network).netns).add_service(virtual(svc), SCHEDULER)
            self._scale_to(svc, replicas)
        except BaseException:
            self._drop(svc)
            raise
        self._save()
        return svc

    def scale(self, name: str, replicas: int) -> Service:
        """``docker service scale NAME=N``: new tasks join the pool; removed ones leave it
        first (no new connection reaches them) and are then deleted."""
        if replicas < 0:
            raise InvalidInput(f"service {name}: replicas must be 0 or more")
        svc = self.get(name)
        self._scale_to(svc, replicas)
        self._save()
        return svc

    def remove(self, name: str) -> None:
        """``docker service rm``: its tasks, its IPVS service and VIP; the load balancer goes
        with the network's last VIP service."""
        self._drop(self.get(name))
        self._save()

    # ---- tasks -------------------------------------------------------------------------
    def task_ips(self, svc: Service) -> list[str]:
        out = []
        for task in svc.tasks:
            sb = self.host.sandboxes.get(task)
            ip = self._ip_on(sb, svc.network) if sb else None
            if ip:
                out.append(ip)
        return out

    def _scale_to(self, svc: Service, replicas: int) -> None:
        while len(svc.tasks) < replicas:
            task = task_name(svc.name, svc.next_slot)
            self._check_free(task)
            sb = self.ctl.create_sandbox(task)
            try:
                self.ctl.connect(svc.network, task)
                if svc.vip:
                    ip = self._ip_on(sb, svc.network) or ""
                    Ipvs(self._lb(svc.network).netns).add_server(virtual(svc), ip, svc.port, "masq")
            except BaseException:
                self.ctl.delete_sandbox(task)
                raise
            svc.tasks.append(task)
            svc.next_slot += 1
        while len(svc.tasks) > replicas:
            self._remove_task(svc, svc.tasks[-1])

    def _remove_task(self, svc: Service, task: str) -> None:
        sb = self.host.sandboxes.get(task)
        ip = self._ip_on(sb, svc.network) if sb else None
        if svc.vip and ip and lb_name(svc.network) in self.host.sandboxes:
            try:
                Ipvs(self._lb(svc.network).netns).delete_server(virtual(svc), ip, svc.port)
            except ObjectNotFound:
                pass  # a learner removed it by hand already
        if sb:
            self.ctl.delete_sandbox(task)
        svc.tasks.remove(task)

    def _drop(self, svc: Service) -> None:
        """Undo everything a service holds (also a half-built one)."""
        for task in list(reversed(svc.tasks)):
            self._remove_task(svc, task)
        lb = self.host.sandboxes.get(lb_name(svc.network))
        if svc.vip and lb and lb.netns:
            try:
                Ipvs(lb.netns).delete_service(virtual(svc))
            except CnmError:
                pass
            nsexec.run(lb.netns, ["ip", "addr", "del", f"{svc.vip}/32", "dev",
                                  self._lb_ifname(svc.network)], check=False)
            self.ctl.release_address(svc.network, svc.vip)
        self.host.services.pop(svc.name, None)
        if lb and not any(s.vip for s in self.host.services.values()
                          if s.network == svc.network):
            self.ctl.delete_sandbox(lb.name)

    # ---- the load balancer -------------------------------------------------------------
    def _lb(self, network: str) -> Sandbox:
        return self.ctl.sandbox(lb_name(network))

    def _lb_ifname(self, network: str) -> str:
        sb = self._lb(network)
        for net, ep in self.ctl.endpoints_of(sb):
            if net.name == network and ep.ifname:
                return ep.ifname
        raise ObjectNotFound(f"{sb.name} has no interface on {network}")

    def _ensure_lb(self, network: str) -> None:
        name = lb_name(network)
        if name in self.host.sandboxes:
            return
        self._check_free(name)
        sb = self.ctl.create_sandbox(name)
        try:
            self.ctl.connect(network, name)
            ns = sb.netns or ""
            Ipvs(ns).services()  # loads ip_vs, so its per-namespace sysctls exist
            sysctl.write_many(LB_SYSCTLS, ns)
            subnet = str(ipaddress.IPv4Network(self.ctl.network(network).subnet or ""))
            lb_ip = self._ip_on(sb, network) or ""
            # replies from a task must come back through the balancer to be un-NATed
            nsexec.run(ns, ["iptables", "-t", "nat", "-A", "POSTROUTING", "-d", subnet, "-m",
                            "ipvs", "--ipvs", "-j", "SNAT", "--to-source", lb_ip])
        except BaseException:
            self.ctl.delete_sandbox(name)
            raise

    def _ip_on(self, sb: Sandbox | None, network: str) -> str | None:
        if sb is None:
            return None
        for net, ep in self.ctl.endpoints_of(sb):
            if net.name == network and ep.ip:
                return bare_ip(ep.ip)
        return None
