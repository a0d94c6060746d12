"""Packets seen on one interface of one namespace, as one-line summaries.

``Capture(ns, interface)`` opens an ``AF_PACKET`` raw socket (ETH_P_ALL) *inside* the namespace
(the socket stays bound to it) and bound to the interface, so it sees both directions of that
interface only. ``decode(frame)`` is a small decoder of its own for what the labs show: Ethernet,
ARP who-has/is-at, IPv4 ICMP echo, TCP flags and ports, UDP ports, DNS query names and VXLAN
(UDP 4789: the VNI and the inner frame's summary). Scapy is not needed; a caller that wants a
full dissection can hand ``Packet.data`` to it.

    with Capture(ns, "eth0") as cap:
        for batch in cap.batches(interval=0.1):   # blocks in select(); stop() ends it
            for pkt in batch:
                print(pkt.line())
"""
from __future__ import annotations

import os
import select
import socket
import struct
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property

from cnmlab.kernel import netns

ETH_P_ALL = 0x0003
PACKET_OUTGOING = 4
SOL_PACKET = 263
PACKET_STATISTICS = 6
VXLAN_PORTS = (4789, 8472)
_PKTTYPE = {0: "in", 1: "in", 2: "in", 3: "in", PACKET_OUTGOING: "out"}


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


_QTYPES = {1: "A", 2: "NS", 5: "CNAME", 6: "SOA", 12: "PTR", 15: "MX", 16: "TXT", 28: "AAAA",
           33: "SRV", 255: "ANY"}


def _dns_name(data: bytes, off: int, depth: int = 0) -> tuple[str, int]:
    labels = []
    while off < len(data):
        n = data[off]
        if n == 0:
            return ".".join(labels), off + 1
        if n & 0xC0 == 0xC0:
            if off + 1 >= len(data) or depth > 5:
                break
            ptr = ((n & 0x3F) << 8) | data[off + 1]
            rest, _ = _dns_name(data, ptr, depth + 1)
            labels.append(rest)
            return ".".join(l for l in labels if l), off + 2
        labels.append(data[off + 1:off + 1 + n].decode(errors="replace"))
        off += 1 + n
    raise ValueError("truncated name")


def decode_dns(data: bytes) -> str:
    if len(data) < 12:
        return "DNS (truncated)"
    ident, flags, qd, an, _ns, _ar = struct.unpack_from("!HHHHHH", data, 0)
    try:
        name, off = _dns_name(data, 12) if qd else ("", 12)
        qtype = struct.unpack_from("!H", data, off)[0] if qd else 0
        off += 4
    except (ValueError, struct.error):
        return f"DNS id {ident} (malformed)"
    qt = _QTYPES.get(qtype, str(qtype))
    if not flags & 0x8000:
        return f"DNS query {qt}? {name}"
    rcode = flags & 0xF
    if rcode:
        return f"DNS reply {qt} {name}: {({3: 'NXDOMAIN', 2: 'SERVFAIL', 5: 'REFUSED'}).get(rcode, rcode)}"
    answers = []
    try:
        for _ in range(min(an, 4)):
            _n, off = _dns_name(data, off)
            atype, _cls, _ttl, rdlen = struct.unpack_from("!HHIH", data, off)
            off += 10
            if atype == 1 and rdlen == 4:
                answers.append(_ip4(data[off:off + 4]))
            elif atype == 5:
                answers.append("CNAME " + _dns_name(data, off)[0])
            off += rdlen
    except (ValueError, struct.error):
        pass
    return f"DNS reply {qt} {name} -> {', '.join(answers) or f'{an} answers'}"


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
            return head + decode_dns(payload)
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


@dataclass
class Packet:
    ts: float
    direction: str  # "in" / "out"
    data: bytes

    @cached_property
    def summary(self) -> str:
        return decode(self.data)

    def line(self) -> str:
        t = time.strftime("%H:%M:%S", time.localtime(self.ts)) + f".{int(self.ts % 1 * 1000):03d}"
        arrow = "<" if self.direction == "in" else ">"
        return f"{t} {arrow} {self.summary}"


class Capture:
    """An ETH_P_ALL packet socket on one interface inside one namespace; ``stop()`` from anywhere."""

    def __init__(self, ns: str | None, interface: str, snaplen: int = 65535) -> None:
        self.ns = ns
        self.interface = interface
        self.snaplen = snaplen
        self._sock: socket.socket | None = None
        self._rpipe, self._wpipe = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._stopped = False
        self._lock = threading.Lock()

    def open(self) -> "Capture":
        """Create and bind the socket inside the namespace (the calling thread comes back)."""
        def make() -> socket.socket:
            s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW | socket.SOCK_CLOEXEC,
                              socket.htons(ETH_P_ALL))
            try:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 21)
                s.bind((self.interface, ETH_P_ALL))
                s.setblocking(False)
            except BaseException:
                s.close()
                raise
            return s

        if self._sock is None:
            if self.ns is None:
                self._sock = make()
            else:
                with netns.entered(self.ns):
                    self._sock = make()
        return self

    def __enter__(self) -> "Capture":
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def stop(self) -> None:
        self._stopped = True
        try:
            os.write(self._wpipe, b"x")
        except OSError:
            pass

    @property
    def stopped(self) -> bool:
        return self._stopped

    def close(self) -> None:
        self.stop()
        with self._lock:
            if self._sock is not None:
                self._sock.close()
                self._sock = None
            for fd in (self._rpipe, self._wpipe):
                try:
                    os.close(fd)
                except OSError:
                    pass
            self._rpipe = self._wpipe = -1

    def drops(self) -> int:
        """Packets the kernel dropped for this socket since the last call (buffer full)."""
        if self._sock is None:
            return 0
        try:
            raw = self._sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, 8)
            return struct.unpack("=II", raw)[1]
        except OSError:
            return 0

    def _drain(self, out: list[Packet], limit: int) -> int:
        """Read what is queued; keep at most ``limit`` packets, count the rest."""
        assert self._sock is not None
        skipped = 0
        while True:
            try:
                data, addr = self._sock.recvfrom(self.snaplen)
            except BlockingIOError:
                return skipped
            except OSError:
                return skipped
            if len(out) < limit:
                out.append(Packet(time.time(), _PKTTYPE.get(addr[2], "in"), data))
            else:
                skipped += 1

    def batches(self, interval: float = 0.1, limit: int = 200,
                timeout: float | None = None) -> Iterator[tuple[list[Packet], int]]:
        """Yield (packets, skipped) at most every ``interval`` seconds until ``stop()``.

        A flood is rate-limited: at most ``limit`` packets per batch are kept, the others only
        counted (a view cannot show 10,000 lines a second anyway). With ``timeout``, also
        yield ``([], 0)`` after that long without packets.
        """
        self.open()
        assert self._sock is not None
        fd = self._sock.fileno()
        while not self._stopped:
            try:
                r, _, _ = select.select([self._rpipe, fd], [], [], timeout)
            except InterruptedError:
                continue
            if self._stopped:
                return
            if not r:
                yield [], 0
                continue
            batch: list[Packet] = []
            skipped = self._drain(batch, limit)
            # gather a little more so a burst becomes one batch (rate limit for the UI)
            end = time.monotonic() + interval
            while not self._stopped:
                left = end - time.monotonic()
                if left <= 0:
                    break
                r, _, _ = select.select([self._rpipe, fd], [], [], left)
                if not r or self._rpipe in r:
                    break
                skipped += self._drain(batch, limit)
            if batch or skipped:
                yield batch, skipped

    def __iter__(self) -> Iterator[Packet]:
        for batch, _ in self.batches():
            yield from batch
