"""A host's and its containers' kernel state as text a diff can compare, names mapped by role.

Both sides of ``cnmlab diff`` are read the same way, from inside their namespaces, with the
tools a learner would use (``iptables-save``, ``ip -d link``, ``ip addr``, ``ip route``,
sysctls, the container's resolv.conf and hosts). Generated names differ between two runs of
the same commands (bridge ``br-<id>``, veth suffixes, container IDs), so each is replaced by
its role: ``<br:app>`` for network app's bridge, ``<veth:w1.eth0>`` for the host end of w1's
eth0, ``<id:w1>`` for w1's short ID, ``<mac:...>`` for a MAC the kernel chose at random. No
field is dropped: a value that is not generated is compared as it is.
"""
from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from cnmlab.kernel import nsexec

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
class HostView:
    host_netns: str
    bridges: dict[str, str]  # network name -> bridge device
    containers: dict[str, ContainerView] = field(default_factory=dict)


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
# VNI and port; the rest of info_data is the kernel's defaults and compared through these
KIND_DATA = {"macvlan": ("mode",), "ipvlan": ("mode",), "vxlan": ("id", "port")}


def _link_line(link: dict, rn: Renamer) -> str:
    info = link.get("linkinfo") or {}
    kind = info.get("info_kind") or link.get("link_type", "")
    data = info.get("info_data") or {}
    kind += "".join(f" {k}={data[k]}" for k in KIND_DATA.get(kind, ()) if k in data)
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


def _sysctls(ns: str) -> list[str]:
    out = []
    for key in SYSCTLS:
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
    ctr_links: dict[str, list[dict]] = {}
    for c in view.containers.values():
        rn.add(c.short_id, f"<id:{c.name}>")
        settle(c.netns)
        ctr_links[c.name] = _ip_json(c.netns, "-d", "addr", "show")
        for link in ctr_links[c.name]:
            # only a veth's peer is generated; a macvlan's link is its parent (eth0), a real
            # name that must stay as it is
            peer = host_links.get(link.get("link_index"))
            kind = (link.get("linkinfo") or {}).get("info_kind")
            if peer and link.get("link_netnsid") is not None and kind == "veth":
                rn.add(peer["ifname"], f"<veth:{c.name}.{link['ifname']}>")
    for links in (list(host_links.values()), *ctr_links.values()):
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
    for name in sorted(view.containers):
        c = view.containers[name]
        sections[f"{name} links"] = sorted(_link_line(l, rn) for l in ctr_links[name])
        sections[f"{name} addresses"] = sorted(_addr_lines(c.netns, rn))
        sections[f"{name} routes"] = _routes(c.netns, rn)
        for f in ("resolv.conf", "hosts"):
            sections[f"{name} {f}"] = [rn(l.rstrip()) for l in c.read_etc(f).splitlines()
                                       if l.strip()]
    return sections
