"""Checks that only packets can answer, with Scapy: who replies to ARP, and with which MAC.

Kernel state says which MAC an interface *has*; a learner's question is often which MAC
*answers* on the wire (a macvlan child, an ipvlan child sharing its parent's MAC, a proxy-ARP
gateway, a bridge that floods). Scapy's socket is opened inside the sandbox's namespace (a
socket stays bound to the namespace it was made in), so its view is the sandbox's own.
Scapy is imported on first use: it costs most of a second.
"""
from __future__ import annotations

from typing import Any

from cnmlab.checks.api import CheckResult, Target, check_kind
from cnmlab.checks.library import PARAMS, _checked, _end, _is_ipv4, _netlink, _ns_end, docker_mac
from cnmlab.errors import CnmError
from cnmlab.kernel import netns

PARAMS["arp-reply"] = {"required": ["from", "ip"], "optional": ["mac", "interface", "timeout"]}


def arp_who_has(ref: Any, ifname: str, ip: str, timeout: float) -> list[tuple[str, str]]:
    """Broadcast ``who-has ip`` from ``ifname`` in a namespace; (ip, MAC) of every reply."""
    from scapy.layers.l2 import ARP, Ether
    from scapy.sendrecv import sndrcv  # noqa: F401  (loads scapy's send/receive machinery)
    from scapy.config import conf

    with _netlink(ref) as nl:
        link = next((l for l in nl.links() if l.name == ifname), None)
    if link is None:
        raise CnmError(f"no interface {ifname} to send ARP from")
    src_ip = link.addresses[0].split("/")[0] if link.addresses else "0.0.0.0"
    with ref.opened() as fd:
        with netns.entered(fd=fd):
            sock = conf.L2socket(iface=ifname, filter="arp", promisc=False)
    try:
        request = Ether(dst="ff:ff:ff:ff:ff:ff", src=link.mac) / ARP(
            op=1, hwsrc=link.mac, psrc=src_ip, pdst=ip)
        answered, _ = sock.sr(request, timeout=timeout, verbose=0, multi=True)
    finally:
        sock.close()
    return [(r[ARP].psrc, r[ARP].hwsrc.lower()) for _, r in answered if r[ARP].op == 2]


@check_kind("arp-reply")
def arp_reply(target: Target, params: dict[str, Any]) -> CheckResult:
    p = _checked("arp-reply", params)
    src = _ns_end(target, p["from"], "from")
    ip = p["ip"]
    if not _is_ipv4(ip):  # a sandbox name: its address on a network it shares with src
        dst = _end(target, ip, "ip")
        shared = set(src.sandbox.addresses) & set(dst.sandbox.addresses) if (
            src.sandbox and dst.sandbox) else set()
        ip = dst.sandbox.addresses[sorted(shared)[0]] if shared else dst.sandbox.ip()  # type: ignore[union-attr]
    ifname = p.get("interface", "eth0")
    want = p.get("mac")
    if want == "docker":
        want = docker_mac(ip)
    label = f"arp-reply {src.label} who-has {ip}" + (f" is-at {want}" if want else "")
    replies = arp_who_has(src.ref, ifname, ip, float(p.get("timeout", 1.0)))
    macs = sorted({m for _, m in replies})
    observed = ", ".join(f"{ip} is-at {m}" for m in macs) or "no ARP reply"
    if not replies:
        ok, reason = False, (f"nothing answered who-has {ip} on {src.label}'s {ifname}: look "
                             f"at the link to the bridge (ip link, bridge link) and whether "
                             f"{ip} is configured anywhere on that segment")
    elif want and macs != [str(want).lower()]:
        ok, reason = False, (f"{ip} is answered by {', '.join(macs)}, not {want}: look at the "
                             f"MAC of the interface that owns {ip} (ip link show)")
    else:
        ok, reason = True, ""
    expected = f"{ip} answers ARP" + (f" with {want}" if want else "")
    return CheckResult(label, "arp-reply", ok, expected, observed, reason)
