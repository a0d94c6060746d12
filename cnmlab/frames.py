"""One line per Ethernet frame, for what the labs show, and the VXLAN header for the checks.

``decode(frame)`` covers Ethernet (with 802.1Q tags), ARP who-has/is-at, IPv4 ICMP echo, TCP
flags and ports, UDP ports, DNS (through ``cnmlab.dnswire``, the one DNS codec) and VXLAN (UDP
4789/8472: the VNI and the inner frame's summary). It never raises: a view must not go down on
a strange frame. ``vxlan_vni`` is what a check asks of a frame on the underlay. Frames come from
``cnmlab.kernel.capture``; a caller that wants a full dissection can hand them to Scapy.
"""
from __future__ import annotations

import socket
import struct

from cnmlab import dnswire

VXLAN_PORT = 4789
VXLAN_PORTS = (VXLAN_PORT, 8472)  # IANA's, and Linux's historical default


def mac(b: bytes) -> str:
    return ":".join(f"{x:02x}" for x in b)


def _ip4(b: bytes) -> str:
    return socket.inet_ntop(socket.AF_INET, b)


def _tcp_flags(f: int) -> str:
    out = "".join(ch for bit, ch in ((0x02, "S"), (0x01, "F"), (0x04, "R"), (0x08, "P"),
                                     (0x20, "U")) if f & bit)
    if f & 0x10:
        out += "."
    return out or "none"


def _decode_l4(proto: int, src: str, dst: str, seg: bytes, depth: int) -> str:
    if proto == 1:  # ICMP
        if len(seg) < 4:
            return f"IP {src} > {dst}: ICMP (truncated)"
        itype, code = seg[0], seg[1]
        if itype in (0, 8) and len(seg) >= 8:
            ident, seq = struct.unpack_from("!HH", seg, 4)
            what = "echo request" if itype == 8 else "echo reply"
            return f"IP {src} > {dst}: ICMP {what} id {ident} seq {seq}"
        if itype == 3:
            why = {0: "net", 1: "host", 3: "port", 4: "frag needed", 13: "admin prohibited"}
            return f"IP {src} > {dst}: ICMP {why.get(code, code)} unreachable"
        if itype == 11:
            return f"IP {src} > {dst}: ICMP time exceeded"
        return f"IP {src} > {dst}: ICMP type {itype} code {code}"
    if proto == 6:  # TCP
        if len(seg) < 20:
            return f"IP {src} > {dst}: TCP (truncated)"
        sport, dport, seq, ack, off_flags = struct.unpack_from("!HHIIH", seg, 0)
        hl = (off_flags >> 12) * 4
        flags = off_flags & 0x1FF
        plen = max(len(seg) - hl, 0)
        text = f"IP {src}.{sport} > {dst}.{dport}: TCP [{_tcp_flags(flags)}] seq {seq}"
        if flags & 0x10:
            text += f" ack {ack}"
        return text + f" len {plen}"
    if proto == 17:  # UDP
        if len(seg) < 8:
            return f"IP {src} > {dst}: UDP (truncated)"
        sport, dport, ulen = struct.unpack_from("!HHH", seg, 0)
        payload = seg[8:]
        head = f"IP {src}.{sport} > {dst}.{dport}: "
        if dport in VXLAN_PORTS and len(payload) >= 8 and depth == 0:
            flags = payload[0]
            vni = int.from_bytes(payload[4:7], "big")
            if flags & 0x08:
                return head + f"VXLAN vni {vni} | " + decode(payload[8:], depth + 1)
        if 53 in (sport, dport):
            return head + dnswire.summary(payload)
        if 67 in (sport, dport) or 68 in (sport, dport):
            return head + "DHCP"
        return head + f"UDP len {max(ulen - 8, 0)}"
    names = {2: "IGMP", 47: "GRE", 50: "ESP", 89: "OSPF", 112: "VRRP", 132: "SCTP"}
    return f"IP {src} > {dst}: {names.get(proto, f'proto {proto}')} len {len(seg)}"


def decode_ipv4(pkt: bytes, depth: int = 0) -> str:
    if len(pkt) < 20 or pkt[0] >> 4 != 4:
        return "IPv4 (malformed)"
    ihl = (pkt[0] & 0xF) * 4
    total, = struct.unpack_from("!H", pkt, 2)
    frag, = struct.unpack_from("!H", pkt, 6)
    proto = pkt[9]
    src, dst = _ip4(pkt[12:16]), _ip4(pkt[16:20])
    seg = pkt[ihl:total] if total >= ihl else pkt[ihl:]
    if frag & 0x1FFF:
        return f"IP {src} > {dst}: fragment offset {(frag & 0x1FFF) * 8} proto {proto}"
    return _decode_l4(proto, src, dst, seg, depth)


def decode_arp(pkt: bytes) -> str:
    if len(pkt) < 28:
        return "ARP (truncated)"
    op, = struct.unpack_from("!H", pkt, 6)
    sha, spa, _tha, tpa = pkt[8:14], _ip4(pkt[14:18]), pkt[18:24], _ip4(pkt[24:28])
    if op == 1:
        if spa == tpa:
            return f"ARP announce {spa} is-at {mac(sha)}"
        return f"ARP who-has {tpa} tell {spa} ({mac(sha)})"
    if op == 2:
        return f"ARP {spa} is-at {mac(sha)}"
    return f"ARP op {op} {spa} > {tpa}"


def decode(frame: bytes, depth: int = 0) -> str:
    """One line for an Ethernet frame (never raises)."""
    try:
        if len(frame) < 14:
            return f"runt frame len {len(frame)}"
        dst, src = frame[0:6], frame[6:12]
        etype, = struct.unpack_from("!H", frame, 12)
        off = 14
        vlan = ""
        while etype in (0x8100, 0x88A8) and len(frame) >= off + 4:
            tci, etype = struct.unpack_from("!HH", frame, off)
            vlan += f"vlan {tci & 0xFFF} "
            off += 4
        body = frame[off:]
        prefix = f"{mac(src)} > {mac(dst)} {vlan}" if depth else vlan
        if etype == 0x0806:
            return prefix + decode_arp(body)
        if etype == 0x0800:
            return prefix + decode_ipv4(body, depth)
        if etype == 0x86DD:
            if len(body) >= 40:
                s6 = socket.inet_ntop(socket.AF_INET6, body[8:24])
                d6 = socket.inet_ntop(socket.AF_INET6, body[24:40])
                nh = {58: "ICMPv6", 6: "TCP", 17: "UDP"}.get(body[6], f"next header {body[6]}")
                return prefix + f"IP6 {s6} > {d6}: {nh}"
            return prefix + "IPv6 (truncated)"
        macs = "" if depth else f"{mac(src)} > {mac(dst)} "
        return prefix + macs + f"ethertype 0x{etype:04x} len {len(frame)}"
    except Exception as e:  # a decoder must never take the view down
        return f"undecodable frame len {len(frame)}: {e}"


def is_esp(frame: bytes) -> bool:
    """An Ethernet frame carrying IPv4 ESP (protocol 50): the overlay's encrypted VXLAN."""
    return len(frame) >= 34 and frame[12:14] == b"\x08\x00" and frame[23] == 50


def vxlan_vni(frame: bytes, port: int = VXLAN_PORT) -> int | None:
    """The VNI of an Ethernet frame carrying VXLAN over IPv4/UDP to ``port``, else None."""
    if len(frame) < 14:
        return None
    off = 12
    ethertype = struct.unpack_from("!H", frame, off)[0]
    while ethertype in (0x8100, 0x88A8) and len(frame) >= off + 6:
        off += 4
        ethertype = struct.unpack_from("!H", frame, off)[0]
    off += 2
    if ethertype != 0x0800 or len(frame) < off + 20:
        return None
    ihl = (frame[off] & 0x0F) * 4
    if frame[off + 9] != 17:  # UDP
        return None
    udp = off + ihl
    if len(frame) < udp + 16:
        return None
    dport = struct.unpack_from("!H", frame, udp + 2)[0]
    if dport != port:
        return None
    vx = udp + 8
    if not frame[vx] & 0x08:  # the I flag: a valid VNI follows
        return None
    return int.from_bytes(frame[vx + 4:vx + 7], "big")
