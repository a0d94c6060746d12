"""What ``cnmlab inspect`` shows: the model joined with the live kernel state."""
from __future__ import annotations

import dataclasses
from typing import Any

from cnmlab.errors import CnmError
from cnmlab.kernel.netlink import Netlink
from cnmlab.lab import Lab


def interfaces(ns: str) -> list[dict[str, Any]]:
    try:
        with Netlink(ns) as nl:
            return [{"name": l.name, "kind": l.kind, "state": l.state, "mac": l.mac, "mtu": l.mtu,
                     "master": l.master, "addresses": l.addresses} for l in nl.links()]
    except CnmError as e:
        return [{"error": str(e)}]


def routes(ns: str) -> list[dict[str, Any]]:
    with Netlink(ns) as nl:
        return [dataclasses.asdict(r) for r in nl.routes()]


def inspect(lab: Lab) -> dict[str, Any]:
    out: dict[str, Any] = {"name": lab.name, "upstream": None, "hosts": {}}
    if lab.state.upstream:
        out["upstream"] = {"netns": lab.state.upstream, "ip": lab.upstream_ip,
                           "subnet": lab.state.upstream_subnet}
    for h in lab.hosts():
        nets = {}
        for net in h.model.networks.values():
            nets[net.name] = {"id": net.id, "driver": net.driver, "subnet": net.subnet,
                              "gateway": net.gateway, "ip_range": net.ip_range,
                              "internal": net.internal, "device": net.device, "mtu": net.mtu,
                              "options": net.options,
                              "endpoints": {ep.name: {"id": ep.id, "ip": ep.ip, "mac": ep.mac,
                                                      "ifname": ep.ifname,
                                                      "host_ifname": ep.host_ifname,
                                                      "ports": [str(p) for p in ep.ports]}
                                            for ep in net.endpoints.values()}}
        sbs = {}
        for sb in h.sandboxes():
            sbs[sb.name] = {"id": sb.model.id, "netns": sb.netns,
                            "networks": {n.name: (ep.ip or "").split("/")[0]
                                         for n, ep in sb.endpoints()},
                            "interfaces": interfaces(sb.netns), "routes": routes(sb.netns)}
        out["hosts"][h.name] = {"netns": h.netns, "public_ip": h.public_ip,
                                "firewall": h.model.firewall, "networks": nets,
                                "sandboxes": sbs, "interfaces": interfaces(h.netns)}
    return out


def render_text(data: dict[str, Any]) -> str:
    lines = [f"lab {data['name']}"]
    if data.get("upstream"):
        up = data["upstream"]
        lines.append(f"  upstream  netns {up['netns']}  {up['ip']} ({up['subnet']})")
    for hname, h in data["hosts"].items():
        lines.append(f"  host {hname}  netns {h['netns']}  public {h['public_ip']}")
        for nname, n in h["networks"].items():
            extra = " internal" if n["internal"] else ""
            lines.append(f"    network {nname:<12} {n['driver']:<7} {n['device'] or '-':<16} "
                         f"{n['subnet'] or '-':<18} gw {n['gateway'] or '-'}{extra}")
        for sname, sb in h["sandboxes"].items():
            lines.append(f"    sandbox {sname:<12} netns {sb['netns']}")
            for itf in sb["interfaces"]:
                if "error" in itf:
                    lines.append(f"      {itf['error']}")
                    continue
                lines.append(f"      {itf['name']:<8} {itf['state']:<8} {itf['mac']:<18} "
                             f"mtu {itf['mtu']:<6} {' '.join(itf['addresses'])}")
    return "\n".join(lines)
