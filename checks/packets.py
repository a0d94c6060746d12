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
PARAMS["arp-macs"] = {"required": ["from", "of", "expect"], "optional": ["interface", "timeout"]}


def arp_who_has(ref: Any, ifname: str, ip: str | list[str],
                timeout: float) -> list[tuple[str, str]]:
    """Broadcast ``who-has`` for one address or several (one socket, one wait) from
    ``ifname`` in a namespace; (ip, MAC) of every reply."""
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
        request = [Ether(dst="ff:ff:ff:ff:ff:ff", src=link.mac) / ARP(
            op=1, hwsrc=link.mac, psrc=src_ip, pdst=one) for one in
            ([ip] if isinstance(ip, str) else ip)]
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


def _address_of(target: Target, src: Any, spec: Any) -> tuple[str, str]:
    """(label, IPv4) for an ``of`` item: an address, a sandbox (on a network it shares with
    ``src``), ``host:NAME`` (its public address) or ``underlay:NAME`` (the router)."""
    if _is_ipv4(spec):
        return str(spec), str(spec)
    dst = _end(target, spec, "of")
    if dst.host is not None:
        if not dst.host.public_ip:
            raise CnmError(f"of: {dst.label} has no address")
        return dst.label, dst.host.public_ip
    assert dst.sandbox is not None
    shared = sorted(set(src.sandbox.addresses) & set(dst.sandbox.addresses)) if (
        src.sandbox is not None) else []
    return dst.label, dst.sandbox.addresses[shared[0]] if shared else dst.sandbox.ip()


@check_kind("arp-macs")
def arp_macs(target: Target, params: dict[str, Any]) -> CheckResult:
    """Which MACs answer ARP for several addresses: all ``distinct`` (macvlan: every container
    is its own machine on the LAN) or all ``shared`` (ipvlan: one MAC, the parent's)."""
    p = _checked("arp-macs", params)
    expect = p["expect"]
    if expect not in ("distinct", "shared"):
        raise CnmError("expect: use distinct or shared")
    of = p["of"]
    if not isinstance(of, list) or len(of) < 2:
        raise CnmError("of: a list of two or more sandboxes, hosts or addresses")
    src = _ns_end(target, p["from"], "from")
    items = [_address_of(target, src, x) for x in of]
    ifname = p.get("interface", "eth0")
    label = f"arp-macs from {src.label}: {', '.join(n for n, _ in items)} {expect}"
    replies = arp_who_has(src.ref, ifname, [ip for _, ip in items],
                          float(p.get("timeout", 1.0)))
    seen: dict[str, set[str]] = {}
    for ip, mac in replies:
        seen.setdefault(ip, set()).add(mac)
    observed = "; ".join(f"{n} ({ip}) is-at {', '.join(sorted(seen.get(ip, ()))) or '-'}"
                         for n, ip in items)
    expected = (f"{len(items)} different MACs answer" if expect == "distinct"
                else "one MAC answers for all of them")
    silent = [n for n, ip in items if not seen.get(ip)]
    macs = [mac for _, ip in items for mac in sorted(seen.get(ip, ()))]
    if silent:
        return CheckResult(label, "arp-macs", False, expected, observed,
                           f"nothing answered ARP for {', '.join(silent)} on {src.label}'s "
                           f"{ifname}: look at whether they share its LAN (parent link, "
                           f"mode) and are up")
    if expect == "distinct" and len(set(macs)) != len(macs):
        dup = sorted({m for m in macs if macs.count(m) > 1})
        names = [n for n, ip in items if seen[ip] & set(dup)]
        return CheckResult(label, "arp-macs", False, expected, observed,
                           f"{', '.join(names)} answer with the same MAC {', '.join(dup)}: "
                           f"macvlan gives each container its own MAC; one MAC for many "
                           f"addresses is ipvlan, proxy ARP or a duplicated --mac-address")
    if expect == "shared" and len(set(macs)) != 1:
        return CheckResult(label, "arp-macs", False, expected, observed,
                           f"{len(set(macs))} different MACs answer: ipvlan children answer "
                           f"with their parent's MAC; distinct MACs mean macvlan or veths")
    return CheckResult(label, "arp-macs", True, expected, observed, "")
