"""A host's and its containers' kernel state as text a diff can compare, names mapped by role.

Both sides of ``cnmlab diff`` are read the same way, from inside their namespaces, with the
tools a learner would use (``iptables-save``, ``ip -d link``, ``ip addr``, ``ip route``,
sysctls, the container's resolv.conf and hosts). Generated names differ between two runs of
the same commands (bridge ``br-<id>``, veth suffixes, container IDs), so each is replaced by
its role: ``<br:app>`` for network app's bridge, ``<veth:w1.eth0>`` for the host end of w1's
eth0, ``<id:w1>`` for w1's short ID, ``<mac:...>`` for a MAC the kernel chose at random. No
field is dropped: a value that is not generated is compared as it is.

A network with a namespace of its own (an overlay's ``br0`` + ``vxlan0``, Docker's
``1-<id>``) is read like a host, plus its permanent neighbour entries (``ip neigh``) and its
forwarding entries (``bridge fdb``): what the driver programs for each remote endpoint. The
veth ports there are named per namespace (Docker calls them ``veth0``, ``veth1`` in each), so
their roles apply to that namespace's sections only.
"""
from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from cnmlab.kernel import nsexec
from cnmlab.kernel.netlink import Netlink
from cnmlab.kernel.ipvs import Ipvs, ServiceState

SYSCTLS = ("net.ipv4.ip_forward", "net.bridge.bridge-nf-call-iptables",
           "net.bridge.bridge-nf-call-ip6tables", "net.ipv4.conf.all.route_localnet",
           "net.ipv4.conf.all.forwarding")


@dataclass
class ContainerView:
    """Where to read one container: its namespace path, short ID, and its /etc files."""

    name: str
    netns: str
    short_id: str
    read_etc: Callable[[str], str]  # "resolv.conf" -> its text


@dataclass
class ServiceView:
    """A service with a VIP: its address, its tasks' addresses (slot name ``web.1`` -> IP) and
    its network's load balancer (Docker's ``lb_<id>`` namespace, cnmlab's ``lb-<network>``)."""

    name: str
    network: str
    vip: str
    tasks: dict[str, str]
    lb_netns: str  # a namespace name or path
    lb_ip: str


@dataclass
class HostView:
    host_netns: str
    bridges: dict[str, str]  # network name -> bridge device
    containers: dict[str, ContainerView] = field(default_factory=dict)
    # a network's own namespace, by role ("network ov" -> an overlay's br0 + vxlan0)
    namespaces: dict[str, str] = field(default_factory=dict)
    services: list[ServiceView] = field(default_factory=list)


def _ip_json(ns: str, *args: str) -> list[dict]:
    out = nsexec.run(ns, ["ip", "-j", *args], check=False).stdout
    return json.loads(out) if out.strip() else []


class Renamer:
    """Generated name -> role, applied to whole words only."""

    def __init__(self) -> None:
        self.names: dict[str, str] = {}

    def add(self, generated: str, role: str) -> None:
        if generated:
            self.names[generated] = role

    def __call__(self, text: str) -> str:
        if not self.names:
            return text
        pattern = re.compile(r"(?<![\w.:-])(" + "|".join(
            re.escape(n) for n in sorted(self.names, key=len, reverse=True)) + r")(?![\w:-])")
        return pattern.sub(lambda m: self.names[m.group(1)], text)


def _derived_mac(mac: str, link: dict) -> bool:
    """A MAC made from the link's own IPv4 address (Docker's 02:42 + address), or all zero."""
    if mac.strip("0:") == "":
        return True
    return any(mac == "02:42:" + ":".join(f"{int(o):02x}" for o in a["local"].split("."))
               for a in link.get("addr_info", []) if a.get("family") == "inet")


# the kind-specific attributes a driver chooses (``ip -d link``): a macvlan's mode, a VXLAN's
# VNI, port and flags (learning, proxy ARP, l2/l3 miss notifications); the rest of info_data
# is the kernel's defaults and compared through these
KIND_DATA = {"macvlan": ("mode",), "ipvlan": ("mode",),
             "vxlan": ("id", "port", "learning", "proxy", "l2miss", "l3miss")}


def _link_line(link: dict, rn: Renamer) -> str:
    info = link.get("linkinfo") or {}
    kind = info.get("info_kind") or link.get("link_type", "")
    data = info.get("info_data") or {}
    kind += "".join(f" {k}={str(data[k]).lower()}" for k in KIND_DATA.get(kind, ())
                    if k in data)
    flags = ",".join(f for f in link.get("flags", []) if f != "LOWER_UP")
    master = rn(link.get("master", "")) or "-"
    return (f"{rn(link['ifname'])} kind={kind} master={master} mtu={link.get('mtu')} "
            f"state={link.get('operstate')} flags={flags} mac={rn(link.get('address', ''))}")


def _addr_lines(ns: str, rn: Renamer) -> list[str]:
    out = []
    for link in _ip_json(ns, "addr", "show"):
        for a in link.get("addr_info", []):
            if a.get("family") != "inet":
                continue
            brd = f" brd {a['broadcast']}" if a.get("broadcast") else ""
            out.append(f"{rn(link['ifname'])} {a['local']}/{a['prefixlen']}{brd} "
                       f"scope {a.get('scope')}")
    return out


def _routes(ns: str, rn: Renamer) -> list[str]:
    text = nsexec.run(ns, ["ip", "route", "show", "table", "main"], check=False).stdout
    return [rn(l.strip()) for l in text.splitlines() if l.strip()]


def inet_addresses(ns: str) -> set[str]:
    """Every IPv4 address of ``ns`` as ``ip/prefix``."""
    return {f"{a['local']}/{a['prefixlen']}" for link in _ip_json(ns, "addr", "show")
            for a in link.get("addr_info", []) if a.get("family") == "inet"}


def permanent_neighbours(ns: str) -> set[str]:
    return {n["dst"] for n in _ip_json(ns, "-4", "neigh", "show", "nud", "permanent")}


def _neighbours(ns: str, rn: Renamer) -> list[str]:
    """The static neighbour entries a driver programs (an overlay's remote endpoints on
    vxlan0). Entries the kernel resolved itself come and go with traffic and are not state
    anyone built, so only ``PERMANENT`` ones are read."""
    return sorted(f"{n['dst']} dev {rn(n.get('dev', ''))} lladdr {rn(n.get('lladdr', '-'))} "
                  f"{' '.join(n.get('state', []))}"
                  for n in _ip_json(ns, "-4", "neigh", "show", "nud", "permanent"))


def _fdb(ns: str, rn: Renamer) -> list[str]:
    """Forwarding entries as ``bridge fdb show`` prints them, without ``link-netnsid`` (a
    per-namespace number): an overlay's remote MAC -> VTEP entries, the ports' own MACs."""
    out = []
    text = nsexec.run(ns, ["bridge", "-j", "fdb", "show"], check=False).stdout
    for e in json.loads(text) if text.strip() else []:
        parts = [rn(e.get("mac", "")), "dev", rn(e.get("ifname", ""))]
        for key in ("dst", "vlan", "master"):
            if e.get(key) is not None:
                parts += [key, rn(str(e[key]))]
        parts += [*e.get("flags", []), e.get("state", "") or ""]
        out.append(" ".join(p for p in parts if p))
    return sorted(out)


def _iptables(ns: str, rn: Renamer) -> list[str]:
    text = nsexec.run(ns, ["iptables-save"], check=False).stdout
    out = []
    for line in text.splitlines():
        if line.startswith("#") or not line.strip():
            continue
        if line.startswith(":"):
            line = re.sub(r" \[\d+:\d+\]$", "", line)
        out.append(rn(line))
    return out


def _sysctls(ns: str, keys: tuple[str, ...] = SYSCTLS) -> list[str]:
    out = []
    for key in keys:
        proc = nsexec.run(ns, ["cat", "/proc/sys/" + key.replace(".", "/")], check=False)
        out.append(f"{key} = {proc.stdout.strip() or '(absent)'}")
    return out


def _unsettled(links: list[dict]) -> list[str]:
    """Links whose state the kernel has not finished reporting.

    The kernel reports a bridge's carrier change through linkwatch, up to a second after its
    last port went away (or its first came up). Read too early, one side shows ``UP`` where the
    other, a few steps slower, already shows ``NO-CARRIER``: a difference of timing, not of
    what was built. A link whose operstate disagrees with its carrier, or a bridge whose
    carrier disagrees with its ports, is such a link.
    """
    up_ports = {l.get("master") for l in links if "LOWER_UP" in l.get("flags", [])
                and l.get("operstate") == "UP"}
    out = []
    for l in links:
        flags = l.get("flags", [])
        if "UP" not in flags or l.get("operstate") == "UNKNOWN":
            continue
        carrier = "LOWER_UP" in flags
        if (l.get("operstate") == "UP") != carrier:  # carrier changed, operstate not yet
            out.append(l["ifname"])
        elif (l.get("linkinfo") or {}).get("info_kind") == "bridge" and \
                carrier != (l["ifname"] in up_ports):
            out.append(l["ifname"])
    return out


def settle(ns: str, timeout: float = 5.0) -> None:
    """Wait (at most ``timeout``) until no link of ``ns`` is in mid-change (``_unsettled``)."""
    deadline = time.monotonic() + timeout
    while _unsettled(_ip_json(ns, "-d", "link", "show")) and time.monotonic() < deadline:
        time.sleep(0.1)


def _nsids(ns: str, candidates: dict[str, str]) -> dict[int, str]:
    """The ids namespace ``ns`` gives each candidate namespace (what a link's
    ``link_netnsid`` there means) -> the candidate's label. Interface indexes are per
    namespace, so a peer index alone would match a link in every namespace that has one."""
    out = {}
    fd = os.open(nsexec.netns_path(ns), os.O_RDONLY)
    try:
        with Netlink(fd=fd) as nl:
            for label, other in candidates.items():
                ofd = os.open(nsexec.netns_path(other), os.O_RDONLY)
                try:
                    nsid = nl.nsid_of(ofd)
                finally:
                    os.close(ofd)
                if nsid is not None:
                    out[nsid] = label
    finally:
        os.close(fd)
    return out


# what libnetwork sets in a load balancer's namespace (and what cnmlab's lb sets)
LB_SYSCTLS = ("net.ipv4.ip_forward", "net.ipv4.vs.conntrack", "net.ipv4.vs.conn_reuse_mode",
              "net.ipv4.vs.expire_nodest_conn", "net.ipv4.vs.expire_quiescent_template")
#: the embedded DNS listens on random ports, redirected from 127.0.0.11:53
_DNS_DNAT = re.compile(r"-p (tcp|udp) .*--to-destination 127\.0\.0\.11:(\d+)")


def _dns_ports(lines: list[str]) -> list[str]:
    """The embedded DNS's random ports (DNAT 127.0.0.11:53 -> :PORT, SNAT back) by role."""
    ports = {m.group(2): f"<dns {m.group(1)} port>" for l in lines
             if (m := _DNS_DNAT.search(l))}
    if not ports:
        return lines
    pat = re.compile(r"(?<=127\.0\.0\.11:)(\d+)\b|(?<=--sport )(\d+)\b")
    return [pat.sub(lambda m: ports.get(m.group(0), m.group(0)), l) for l in lines]


def _ipvs_lines(ns: str, rn: Renamer) -> list[str]:
    """``ipvsadm -Ln`` as lines, real servers sorted by role. A real server's port that is the
    port the client asked for (0 behind a fwmark service, the service's own port behind a
    VIP:port service) reads ``<client port>``: the same forwarding either way, while the
    service line still shows which kind of service it is."""
    fd = os.open(nsexec.netns_path(ns), os.O_RDONLY)
    try:
        states: list[ServiceState] = Ipvs(fd=fd).services()
    finally:
        os.close(fd)
    out = []
    for st in sorted(states, key=lambda s: str(s.service)):
        svc = st.service
        head = f"FWM {svc.fwmark}" if svc.fwmark else \
            f"{svc.proto.upper()} {rn(svc.vip or '')}:{svc.port}"
        out.append(f"{head} {st.scheduler}")
        servers = []
        for r in st.servers:
            same = r.port == 0 if svc.fwmark else r.port == svc.port
            port = "<client port>" if same else str(r.port)
            servers.append(f"  -> {rn(r.ip)}:{port} {r.forward} weight {r.weight}")
        out += sorted(servers)
    return out


def _service_sections(view: HostView, rn: Renamer) -> dict[str, list[str]]:
    """The load balancers' state: IPVS, firewall, addresses, routes and sysctls of each
    network's lb namespace, and IPVS and firewall in each task. Addresses the pool handed
    out are shown by role there (``<vip:web>``, ``<task:web.1>``, ``<lb:app>``); the section
    ``services`` lists each role's actual address, so the allocation order is compared too."""
    srn = Renamer()
    srn.names = dict(rn.names)
    sections: dict[str, list[str]] = {"services": []}
    lbs: dict[str, str] = {}
    for svc in sorted(view.services, key=lambda s: s.name):
        sections["services"].append(f"{svc.name} vip {svc.vip} on {svc.network}")
        srn.add(svc.vip, f"<vip:{svc.name}>")
        for task, ip in sorted(svc.tasks.items()):
            sections["services"].append(f"{task} {ip}")
            srn.add(ip, f"<task:{task}>")
        if svc.network not in lbs:
            lbs[svc.network] = svc.lb_netns
            sections["services"].append(f"lb-{svc.network} {svc.lb_ip}")
            srn.add(svc.lb_ip, f"<lb:{svc.network}>")
    for net, ns in sorted(lbs.items()):
        sections[f"lb-{net} ipvs"] = _ipvs_lines(ns, srn)
        sections[f"lb-{net} iptables"] = _dns_ports(_iptables(ns, srn))
        sections[f"lb-{net} addresses"] = sorted(srn(l) for l in _addr_lines(ns, srn))
        sections[f"lb-{net} routes"] = _routes(ns, srn)
        sections[f"lb-{net} sysctls"] = _sysctls(ns, LB_SYSCTLS)
    for svc in sorted(view.services, key=lambda s: s.name):
        for task in sorted(svc.tasks):
            c = view.containers.get(task)
            if c is None:
                continue
            sections[f"{task} ipvs"] = _ipvs_lines(c.netns, srn)
            sections[f"{task} iptables"] = _dns_ports(_iptables(c.netns, srn))
    return sections


def collect(view: HostView) -> dict[str, list[str]]:
    """Section title -> lines, in the order the kernel (or the file) gives them."""
    rn = Renamer()
    settle(view.host_netns)
    host_links = {l["ifindex"]: l for l in _ip_json(view.host_netns, "-d", "addr", "show")}
    kinds = {l["ifname"]: (l.get("linkinfo") or {}).get("info_kind") for l in host_links.values()}
    for net, dev in view.bridges.items():
        # a bridge's name is generated (br-<id12>); a macvlan network's device is its parent,
        # a link the user named (eth0), which is compared as it is
        if kinds.get(dev) == "bridge":
            rn.add(dev, f"<br:{net}>")
    ns_links = {label: _ip_json(ns, "-d", "addr", "show") for label, ns in view.namespaces.items()}
    ctr_links: dict[str, list[dict]] = {}
    for c in view.containers.values():
        rn.add(c.short_id, f"<id:{c.name}>")
        settle(c.netns)
        ctr_links[c.name] = _ip_json(c.netns, "-d", "addr", "show")
    # a veth's peer may sit in the host or in a network's namespace (an overlay's br0): the
    # namespace the container knows by the link's netnsid, at the link's peer index
    spaces = {"": (view.host_netns, host_links)}
    spaces.update({label: (view.namespaces[label], {l["ifindex"]: l for l in links})
                   for label, links in ns_links.items()})
    local = {label: Renamer() for label in ns_links}  # names that only mean one namespace
    for c in view.containers.values():
        ids = _nsids(c.netns, {label: ns for label, (ns, _) in spaces.items()})
        for link in ctr_links[c.name]:
            # only a veth's peer is generated; a macvlan's link is its parent (eth0), a real
            # name that must stay as it is
            kind = (link.get("linkinfo") or {}).get("info_kind")
            where = ids.get(link.get("link_netnsid", -1))
            if kind != "veth" or where is None:
                continue
            peer = spaces[where][1].get(link.get("link_index"))
            if peer:  # Docker names an overlay's ports veth0, veth1... in each namespace
                (rn if where == "" else local[where]).add(peer["ifname"],
                                                          f"<veth:{c.name}.{link['ifname']}>")
    for links in (list(host_links.values()), *ns_links.values(), *ctr_links.values()):
        for link in links:
            mac = link.get("address", "")
            if mac and not _derived_mac(mac, link):  # random by nature: say only which kind
                rn.add(mac, "<random 02:42 mac>" if mac.startswith("02:42:") else "<random mac>")

    sections: dict[str, list[str]] = {
        "host iptables": _iptables(view.host_netns, rn),
        "host links": sorted(_link_line(l, rn) for l in host_links.values()),
        "host addresses": sorted(_addr_lines(view.host_netns, rn)),
        "host routes": _routes(view.host_netns, rn),
        "host sysctls": _sysctls(view.host_netns),
    }
    for label in sorted(view.namespaces):
        ns = view.namespaces[label]
        local[label].names = {**rn.names, **local[label].names}
        rn_ns = local[label]
        sections[f"{label} links"] = sorted(_link_line(l, rn_ns) for l in ns_links[label])
        sections[f"{label} addresses"] = sorted(_addr_lines(ns, rn_ns))
        sections[f"{label} routes"] = _routes(ns, rn_ns)
        sections[f"{label} neighbours"] = _neighbours(ns, rn_ns)
        sections[f"{label} fdb"] = _fdb(ns, rn_ns)
    for name in sorted(view.containers):
        c = view.containers[name]
        sections[f"{name} links"] = sorted(_link_line(l, rn) for l in ctr_links[name])
        sections[f"{name} addresses"] = sorted(_addr_lines(c.netns, rn))
        sections[f"{name} routes"] = _routes(c.netns, rn)
        for f in ("resolv.conf", "hosts"):
            sections[f"{name} {f}"] = [rn(l.rstrip()) for l in c.read_etc(f).splitlines()
                                       if l.strip()]
    if view.services:
        sections.update(_service_sections(view, rn))
    return sections
