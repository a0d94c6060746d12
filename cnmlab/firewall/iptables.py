"""Docker's classic iptables layout (Docker <= 27, Debian's 20.10), rendered from the model.

Rule shapes and order follow libnetwork's bridge driver (``setup_ip_tables.go``,
``iptables.go``): per-network rules are inserted, so the newest network's rules come first;
per-port rules are appended. cnmlab runs the userland proxy as Docker does by default, so the
nat DOCKER chain starts each bridge with ``-i <bridge> -j RETURN`` and same-host hairpin goes
through the proxy.

``program`` does not restore whole tables: other writers (dockerd, a bridge plugin cnmlab
serves, a user) may share the namespace; ``cnmlab.firewall.reconcile`` says how they coexist.
"""
from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator

from cnmlab import drivers
from cnmlab.constants import OPT_ICC, OPT_MASQUERADE
from cnmlab.errors import KernelError
from cnmlab.firewall import reconcile
from cnmlab.kernel import nsexec
from cnmlab.model import Host, Network, PortMapping

USER_CHAIN = "DOCKER-USER"


def bridge_networks(host: Host) -> list[Network]:
    """Networks whose driver asks for the host firewall, newest first (the order Docker's
    inserted rules end up in)."""
    nets = [n for n in host.networks.values()
            if drivers.capability(n.driver).firewall and n.device and n.subnet]
    return sorted(nets, key=lambda n: n.created, reverse=True)


def _published(nets: list[Network]) -> list[tuple[Network, str, PortMapping]]:
    """Every published port, in the order Docker appends their rules: endpoints in the order
    they joined, and within one endpoint by container port, highest first (the order
    go-connections' ``SortPortMap`` leaves them in)."""
    eps = sorted(((net, ep) for net in nets for ep in net.endpoints.values()
                  if ep.ip and ep.sandbox and ep.ports), key=lambda ne: ne[1].created)
    return [(net, ep.ip.split("/")[0], p) for net, ep in eps  # type: ignore[union-attr]
            for p in sorted(ep.ports, key=lambda p: (-p.container_port, -p.host_port))]


@contextlib.contextmanager
def namespace_lock(ns: str) -> Iterator[None]:
    """Exclusive among cnmlab's writers of one namespace's rules (the engine, a served
    plugin): a lock on the namespace's own file, so no lock file is left to clean."""
    fd = os.open(nsexec.netns_path(ns), os.O_RDONLY | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


class IptablesFirewall:
    name = "iptables"

    def render(self, host: Host, user_rules: list[str] | None = None) -> str:
        nets = bridge_networks(host)
        f: list[str] = ["*filter", ":INPUT ACCEPT [0:0]", ":FORWARD DROP [0:0]",
                        ":OUTPUT ACCEPT [0:0]", ":DOCKER - [0:0]",
                        ":DOCKER-ISOLATION-STAGE-1 - [0:0]", ":DOCKER-ISOLATION-STAGE-2 - [0:0]",
                        f":{USER_CHAIN} - [0:0]",
                        f"-A FORWARD -j {USER_CHAIN}", "-A FORWARD -j DOCKER-ISOLATION-STAGE-1"]
        iso1: list[str] = []
        iso2: list[str] = []
        docker_filter: list[str] = []
        nat_post: list[str] = []
        nat_hairpin: list[str] = []
        nat_returns: list[str] = []
        nat_dnat: list[str] = []
        icc_drops: list[str] = []  # libnetwork appends icc=false DROPs, inserts everything else
        for net in nets:
            br = net.device
            if net.option_bool(OPT_ICC, True):
                icc_rule = [f"-A FORWARD -i {br} -o {br} -j ACCEPT"]
            else:
                icc_rule = []
                icc_drops.insert(0, f"-A FORWARD -i {br} -o {br} -j DROP")  # oldest first
            if net.internal:
                iso1 += [f"-A DOCKER-ISOLATION-STAGE-1 ! -s {net.subnet} -o {br} -j DROP",
                         f"-A DOCKER-ISOLATION-STAGE-1 ! -d {net.subnet} -i {br} -j DROP"]
                f += icc_rule
                continue
            f += [f"-A FORWARD -o {br} -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
                  f"-A FORWARD -o {br} -j DOCKER",
                  f"-A FORWARD -i {br} ! -o {br} -j ACCEPT", *icc_rule]
            iso1.append(f"-A DOCKER-ISOLATION-STAGE-1 -i {br} ! -o {br} "
                        f"-j DOCKER-ISOLATION-STAGE-2")
            iso2.append(f"-A DOCKER-ISOLATION-STAGE-2 -o {br} -j DROP")
            if net.option_bool(OPT_MASQUERADE, True):  # and the DNAT skip only with it
                nat_post.append(f"-A POSTROUTING -s {net.subnet} ! -o {br} -j MASQUERADE")
                nat_returns.append(f"-A DOCKER -i {br} -j RETURN")
        for net, ip, p in _published([n for n in nets if not n.internal]):
            br, proto, cport = net.device, p.proto, p.container_port
            docker_filter.append(f"-A DOCKER -d {ip}/32 ! -i {br} -o {br} -p {proto} "
                                 f"-m {proto} --dport {cport} -j ACCEPT")
            nat_hairpin.append(f"-A POSTROUTING -s {ip}/32 -d {ip}/32 -p {proto} "
                               f"-m {proto} --dport {cport} -j MASQUERADE")
            dst = f"-d {p.host_ip}/32 " if p.host_ip not in ("", "0.0.0.0") else ""
            nat_dnat.append(f"-A DOCKER {dst}! -i {br} -p {proto} -m {proto} "
                            f"--dport {p.host_port} -j DNAT --to-destination {ip}:{cport}")
        f += icc_drops + docker_filter + iso1 + ["-A DOCKER-ISOLATION-STAGE-1 -j RETURN"]
        f += iso2 + ["-A DOCKER-ISOLATION-STAGE-2 -j RETURN"]
        f += (user_rules or []) + [f"-A {USER_CHAIN} -j RETURN"]
        f.append("COMMIT")
        n = ["*nat", ":PREROUTING ACCEPT [0:0]", ":INPUT ACCEPT [0:0]", ":OUTPUT ACCEPT [0:0]",
             ":POSTROUTING ACCEPT [0:0]", ":DOCKER - [0:0]",
             "-A PREROUTING -m addrtype --dst-type LOCAL -j DOCKER",
             "-A OUTPUT ! -d 127.0.0.0/8 -m addrtype --dst-type LOCAL -j DOCKER"]
        n += nat_post + nat_hairpin + nat_returns + nat_dnat + ["COMMIT"]
        return "\n".join(f + n) + "\n"

    def program(self, host: Host) -> None:
        """Reconcile the host's namespace with ``render(host)``, other writers' rules kept.

        What this host model rendered last is kept in ``host.firewall_rules``; see
        ``cnmlab.firewall.reconcile`` for why and how. Rules a user added (DOCKER-USER, or
        anywhere) belong to nobody cnmlab knows, so they stay.
        """
        if host.firewall == "manual":
            return
        desired = reconcile.parse(self.render(host))
        with namespace_lock(host.netns):
            for attempt in (1, 2):
                current = reconcile.parse(nsexec.run(host.netns, ["iptables-save"]).stdout)
                script = reconcile.plan(desired, current, host.firewall_rules)
                if not script:
                    break
                try:
                    nsexec.run(host.netns, ["iptables-restore", "--noflush"], input=script)
                    break
                except KernelError:
                    if attempt == 2:  # a writer outside cnmlab (dockerd) moved rules meanwhile
                        raise
        host.firewall_rules = reconcile.owned(desired)

    def dump(self, ns: str) -> str:
        return (nsexec.run(ns, ["iptables", "-S"]).stdout
                + nsexec.run(ns, ["iptables", "-t", "nat", "-S"]).stdout)
