"""Fast, parallel reachability probes run from inside sandboxes, without forking.

A socket stays bound to the network namespace it was created in. So this one process enters each
source namespace for an instant (``setns`` in the calling thread, via ``netns.entered``), creates
the sockets it needs there, comes back, and then drives every socket of every namespace from one
``epoll`` loop: a 100x100 ICMP matrix is 9,900 echo requests in flight at once, matched back to
their source socket and destination by (ident, seq, source address, token).

A probe can also watch the destination (``watch=``): a raw socket in the destination's namespace
sees every probe packet that namespace accepted for local delivery, so a reply-less probe can
still tell "blocked on the way there" from "arrived, only the reply was lost" (``arrived``).
Isolation judged by replies alone passes a setup that lets packets through one way and drops
only the answers.

Every probe has a deadline and closes its sockets. Probes only send to the addresses the caller
names; nothing here picks a destination by itself.

The kernel's neighbour (ARP) table is shared by every namespace. A full mesh of N sandboxes needs
about N*(N-1) entries, and when the table is full the kernel silently refuses to create entries
(no ARP reply, no send): pings fail although the network is fine. ``ping_matrix`` therefore
raises the root namespace's limits for its duration (``ensure_neighbour_capacity``) and, should
the kernel still have counted a "table full" during the run, raises ``NeighbourTableFull`` rather
than reporting false negatives.
"""
from __future__ import annotations

import errno
import itertools
import os
import random
import select
import selectors
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from cnmlab import dnswire
from cnmlab.checks.nsref import NsRef
from cnmlab.errors import CnmError
from cnmlab.kernel import neigh, netns

Pair = tuple[str, str]
NsLike = NsRef | str | int

# ---------------------------------------------------------------------------------------------
# results and errors


@dataclass
class ProbeResult:
    """One probe's outcome: ``ok`` plus what was seen, in words a learner can read."""

    ok: bool
    observed: str
    reason: str = ""            # reply | connected | refused | timeout | unreachable | error
                                # | busy (not sent: the learner's own socket holds the port)
    rtt_ms: float | None = None  # in a big batch: an upper bound (replies are read after sends)
    server: str | None = None   # the EchoServer that answered (from its marker line)
    seen_as: str | None = None  # "ip:port" the server saw this probe come from
    reply: bytes = b""
    arrived: int | None = None  # probe packets the watched destination received (None: unwatched)

    def __bool__(self) -> bool:
        return self.ok


class ProbeError(CnmError):
    """A probe could not be run at all (as opposed to a probe that ran and failed)."""


class NeighbourTableFull(ProbeError):
    pass


class DnsError(ProbeError):
    pass


class DnsNameError(DnsError):
    """NXDOMAIN: the server says the name does not exist."""


class DnsTimeout(DnsError):
    pass


class PortInUse(ProbeError):
    """A check's echo server could not listen: something else holds the port.

    ``owner`` says who, in words ("python3 -m http.server 80 (pid 1234)"), or is None.
    """

    def __init__(self, message: str, owner: str | None) -> None:
        super().__init__(message)
        self.owner = owner


def _fmt_s(seconds: float) -> str:
    return f"{seconds:g} s"


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms" if seconds >= 0.001 else f"{seconds * 1000:.2f} ms"


# ---------------------------------------------------------------------------------------------
# sockets inside namespaces


def _refs(sources: Mapping[str, NsLike]) -> dict[str, NsRef]:
    return {k: NsRef.of(v) for k, v in sources.items()}


# Every probe packet leaves with DSCP "lower effort" (RFC 8622; TOS byte 0x04) so a packet view
# can tell the checks' own traffic from the learner's (the kernel copies the TOS of an echo
# request into its reply, and accepted TCP connections inherit the listener's). No lab rule
# matches on DSCP, so the marking changes nothing else.
CHECK_TOS = 0x04


def _make_sockets(ref: NsRef, n: int, family: int, kind: int, proto: int = 0,
                  setup: Callable[[socket.socket], None] | None = None) -> list[socket.socket]:
    """``n`` non-blocking sockets created inside ``ref``'s namespace (then usable from anywhere)."""
    made: list[socket.socket] = []
    with ref.opened() as fd:
        try:
            with netns.entered(fd=fd):
                for _ in range(n):
                    try:
                        s = socket.socket(family, kind, proto)
                    except PermissionError:
                        raise ProbeError("opening a probe socket needs root (CAP_NET_RAW)") from None
                    made.append(s)
                    s.setblocking(False)
                    if family == socket.AF_INET:
                        s.setsockopt(socket.IPPROTO_IP, socket.IP_TOS, CHECK_TOS)
                    if setup:
                        setup(s)
        except BaseException:
            for s in made:
                s.close()
            raise
    return made


def _close_all(socks: Iterable[socket.socket]) -> None:
    for s in socks:
        try:
            s.close()
        except OSError:
            pass


def _big_rcvbuf(s: socket.socket, size: int = 4 << 20) -> None:
    try:
        s.setsockopt(socket.SOL_SOCKET, 33, size)  # SO_RCVBUFFORCE (root)
    except OSError:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)


def _pairs(sources: Mapping[str, object], targets: Mapping[str, object],
           pairs: Iterable[Pair] | None) -> list[Pair]:
    if pairs is not None:
        out = list(pairs)
        for s, d in out:
            if s not in sources or d not in targets:
                raise ValueError(f"pair {s}->{d}: unknown source or target")
        return out
    return [(s, d) for s in sources for d in targets if s != d]


# ---------------------------------------------------------------------------------------------
# the shared neighbour table

_neigh_ids = itertools.count()


def ensure_neighbour_capacity(n_entries: int) -> Callable[[], None]:
    """Make room for ``n_entries`` more ARP entries; returns the callable that gives it back.

    The table is shared by every namespace and its limits live only in the root namespace;
    ``cnmlab.kernel.neigh`` keeps one saved copy of the originals for every process on the machine
    (labs and probe runs alike) and writes them back when the last holder releases. Call the
    returned function exactly when done (a second call does nothing).
    """
    need = neigh.table_stats().get("entries", 0) + max(0, n_entries) + 256
    owner = f"probe:{os.getpid()}:{next(_neigh_ids)}"
    neigh.reserve(owner, need)
    done = False

    def restore() -> None:
        nonlocal done
        if not done:
            done = True
            neigh.release(owner)

    return restore


# ---------------------------------------------------------------------------------------------
# arrivals: what reached the destination, whether or not a reply came back


class Arrivals:
    """Raw sockets (one per destination namespace) that keep a copy of every ``proto`` packet
    the namespace delivers locally.

    A raw socket gets its copy in ``ip_local_deliver``, after the INPUT chain: "arrived" means
    the destination's own stack took the packet in, so a namespace that only routes it onwards
    (a host forwarding to a sandbox) or drops it on the way in does not count, while one whose
    replies are dropped afterwards (its OUTPUT chain, a one-way FORWARD rule) does.
    Sockets are opened before the probe sends anything and read once it is over.
    """

    def __init__(self, where: Iterable[NsLike], proto: str) -> None:
        num = {"icmp": socket.IPPROTO_ICMP, "tcp": socket.IPPROTO_TCP,
               "udp": socket.IPPROTO_UDP}[proto]
        self.proto = proto
        self.socks: dict[NsRef, socket.socket] = {}
        try:
            for ns in where:
                ref = NsRef.of(ns)
                if ref in self.socks:
                    continue
                setup = _echo_only if proto == "icmp" else _big_rcvbuf
                self.socks[ref] = _make_sockets(ref, 1, socket.AF_INET, socket.SOCK_RAW, num,
                                                setup)[0]
        except BaseException:
            self.close()
            raise

    def packets(self, grace: float = 0.02) -> dict[NsRef, list[bytes]]:
        """Every packet queued so far, per namespace (after ``grace`` s for late ones)."""
        if grace > 0:
            time.sleep(grace)
        out: dict[NsRef, list[bytes]] = {}
        for ref, s in self.socks.items():
            got = out.setdefault(ref, [])
            while True:
                try:
                    got.append(s.recv(65535))
                except (BlockingIOError, InterruptedError):
                    break
                except OSError:
                    break
        return out

    def close(self) -> None:
        _close_all(self.socks.values())
        self.socks = {}

    def __enter__(self) -> "Arrivals":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _echo_only(s: socket.socket) -> None:
    s.setsockopt(SOL_RAW, ICMP_FILTER, struct.pack("I", ~(1 << ICMP_ECHO) & 0xFFFFFFFF))
    _big_rcvbuf(s)


def _l4(packet: bytes, proto: int) -> tuple[bytes, bytes] | None:
    """(IPv4 header, layer-4 bytes) of an IPv4 packet of protocol ``proto``, else None."""
    if len(packet) < 20 or packet[0] >> 4 != 4 or packet[9] != proto:
        return None
    ihl = (packet[0] & 0x0F) * 4
    return packet[:ihl], packet[ihl:]


def echo_tag(packet: bytes, token: int) -> int | None:
    """The pair tag of one of our echo requests (carrying ``token``), else None."""
    parts = _l4(packet, socket.IPPROTO_ICMP)
    if parts is None:
        return None
    icmp = parts[1]
    if len(icmp) < 24 or icmp[0] != ICMP_ECHO or struct.unpack("!I", icmp[8:12])[0] != token:
        return None
    return struct.unpack("!I", icmp[20:24])[0]


def is_tcp_syn(packet: bytes, port: int) -> bool:
    """A TCP SYN (not SYN-ACK) to ``port``: a connection attempt that reached its target."""
    parts = _l4(packet, socket.IPPROTO_TCP)
    if parts is None or len(parts[1]) < 14:
        return False
    tcp = parts[1]
    flags = tcp[13]
    return struct.unpack("!H", tcp[2:4])[0] == port and flags & 0x02 and not flags & 0x10


def _tcp_sport(packet: bytes) -> int | None:
    parts = _l4(packet, socket.IPPROTO_TCP)
    return struct.unpack("!H", parts[1][0:2])[0] if parts and len(parts[1]) >= 2 else None


def udp_payload_to(packet: bytes, port: int) -> bytes | None:
    parts = _l4(packet, socket.IPPROTO_UDP)
    if parts is None or len(parts[1]) < 8 or struct.unpack("!H", parts[1][2:4])[0] != port:
        return None
    return parts[1][8:]


# ---------------------------------------------------------------------------------------------
# ICMP echo

ICMP_ECHOREPLY, ICMP_DEST_UNREACH, ICMP_ECHO, ICMP_TIME_EXCEEDED = 0, 3, 8, 11
ICMP_HOST_UNREACH = 1  # the code of ICMP_DEST_UNREACH a kernel sends when ARP fails
#: re-sends after the source's own failed ARP (each failure takes the kernel ~3 s of probes)
LOCAL_UNREACH_RESENDS = 3
SOL_RAW, ICMP_FILTER = 255, 1
_UNREACH = {0: "network unreachable", 1: "destination host unreachable",
            2: "protocol unreachable", 3: "port unreachable", 4: "fragmentation needed",
            9: "network administratively prohibited", 10: "host administratively prohibited",
            13: "communication administratively prohibited"}


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    s = (s >> 16) + (s & 0xFFFF)
    s += s >> 16
    return ~s & 0xFFFF


def _echo_request(ident: int, seq: int, token: int, tag: int = 0) -> bytes:
    # token (4) + send time (8) + the pair's tag (4), which lets a watcher at the
    # destination tell which pair a request belongs to
    payload = struct.pack("!IdI", token, time.monotonic(), tag) + b"cnmlab-ping"
    head = struct.pack("!BBHHH", ICMP_ECHO, 0, 0, ident, seq)
    c = _checksum(head + payload)
    return struct.pack("!BBHHH", ICMP_ECHO, 0, c, ident, seq) + payload


def _icmp_setup(s: socket.socket) -> None:
    keep = (1 << ICMP_ECHOREPLY) | (1 << ICMP_DEST_UNREACH) | (1 << ICMP_TIME_EXCEEDED)
    s.setsockopt(SOL_RAW, ICMP_FILTER, struct.pack("I", ~keep & 0xFFFFFFFF))
    _big_rcvbuf(s)


@dataclass
class _PingState:
    src: str
    dst: str
    ip: str
    tag: int = 0
    sent: int = 0
    got: int = 0
    rtts: list[float] = field(default_factory=list)
    error: str | None = None
    done: bool = False
    resent: int = 0  # re-sends after the source's own failed ARP


def ping_results(sources: Mapping[str, NsLike], targets: Mapping[str, str], count: int = 1,
                 timeout: float = 1.0, retries: int = 2, pairs: Iterable[Pair] | None = None,
                 adjust_neighbours: bool = True, send_threads: int | None = None,
                 watch: Mapping[str, NsLike] | None = None) -> dict[Pair, ProbeResult]:
    """ICMP echo from every source namespace to every target address, all at once.

    A pair is reachable once ``count`` echo replies came back. ``timeout`` bounds the whole
    matrix: requests still unanswered are re-sent ``retries`` times at even intervals within it
    (the first packet to a new neighbour can be lost), and a pair without enough replies when
    the time is up is blocked. An ICMP error (host/port unreachable, TTL exceeded) or a send
    error (no route) makes the pair blocked at once. By default every source reaches every
    target except the one with its own name; pass ``pairs`` to choose. Big batches are sent
    by ``send_threads`` threads (default: one per CPU); replies are read by one epoll loop.
    ``watch`` (target -> its namespace) also counts, per pair, the echo requests that target's
    namespace received (``ProbeResult.arrived``), replied to or not.
    """
    if count < 1 or timeout <= 0 or retries < 0:
        raise ValueError("count >= 1, timeout > 0 and retries >= 0")
    refs = _refs(sources)
    todo = _pairs(refs, targets, pairs)
    states = {p: _PingState(p[0], p[1], targets[p[1]], tag=i) for i, p in enumerate(todo)}
    if not todo:
        return {}
    arrivals: Arrivals | None = None
    if watch:
        arrivals = Arrivals([watch[d] for d in dict.fromkeys(d for _, d in todo if d in watch)],
                            "icmp")
    restore: Callable[[], None] = lambda: None
    socks: dict[str, socket.socket] = {}
    ep = select.epoll()
    try:
        if adjust_neighbours:
            restore = ensure_neighbour_capacity(2 * len(todo))
        fulls_before = neigh.table_stats().get("table_fulls", 0)
        by_src: dict[str, list[_PingState]] = {}
        for st in states.values():
            by_src.setdefault(st.src, []).append(st)
        idents = random.sample(range(1, 0x10000), len(by_src))
        token = random.getrandbits(32)
        fd_src: dict[int, tuple[str, int]] = {}
        seqmap: dict[str, dict[int, tuple[_PingState, float]]] = {}
        next_seq: dict[str, int] = {}
        for (src, _), ident in zip(by_src.items(), idents):
            s = _make_sockets(refs[src], 1, socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP,
                              _icmp_setup)[0]
            socks[src] = s
            fd_src[s.fileno()] = (src, ident)
            seqmap[src] = {}
            next_seq[src] = random.randrange(0x10000)
            ep.register(s.fileno(), select.EPOLLIN)
        ident_of = {src: ident for src, ident in zip(by_src, idents)}
        workers = max(1, min(send_threads or (os.cpu_count() or 1), 8))
        src_slot = {src: i % workers for i, src in enumerate(by_src)}

        queue: list[tuple[str, _PingState]] = []

        def enqueue_round() -> None:
            for st in states.values():
                if not st.done:
                    for _ in range(count - st.got):
                        queue.append((st.src, st))

        def send_batch(items: list[tuple[str, _PingState]]) -> list[tuple[str, _PingState]]:
            blocked: set[str] = set()
            rest = []
            for src, st in items:
                if st.done or src in blocked:
                    if not st.done:
                        rest.append((src, st))
                    continue
                seq = next_seq[src]
                next_seq[src] = (seq + 1) & 0xFFFF
                if seq in seqmap[src]:
                    raise ProbeError(f"too many echo requests in flight from {src}")
                pkt = _echo_request(ident_of[src], seq, token, st.tag)
                try:
                    socks[src].sendto(pkt, (st.ip, 0))
                except BlockingIOError:
                    blocked.add(src)
                    rest.append((src, st))
                    continue
                except OSError as e:
                    if e.errno in (errno.EINVAL, errno.ENOBUFS) and \
                            neigh.table_stats().get("table_fulls", 0) > fulls_before:
                        raise NeighbourTableFull(
                            "the kernel's neighbour table is full: raise "
                            "net.ipv4.neigh.default.gc_thresh3 (see ensure_neighbour_capacity)")
                    st.error = f"cannot send: {e.strerror.lower() if e.strerror else e}"
                    st.done = True
                    continue
                seqmap[src][seq] = (st, time.monotonic())
                st.sent += 1
            return rest

        def flush_queue() -> None:
            # The kernel does the work of a send (veth, bridge, ARP flood, the peer's reply) in
            # the sending thread, outside the GIL: split the sources over a few threads.
            if len(queue) < 256 or workers < 2:
                queue[:] = send_batch(queue)
                return
            groups: list[list[tuple[str, _PingState]]] = [[] for _ in range(workers)]
            for item in queue:
                groups[src_slot[item[0]]].append(item)
            with ThreadPoolExecutor(max_workers=workers) as pool:
                futures = [pool.submit(send_batch, g) for g in groups if g]
                rest = [x for f in futures for x in f.result()]
            queue[:] = rest

        def handle(src: str, ident: int, data: bytes) -> None:
            if len(data) < 28:
                return
            ihl = (data[0] & 0x0F) * 4
            peer = socket.inet_ntoa(data[12:16])
            icmp = data[ihl:]
            if len(icmp) < 8:
                return
            typ, code, _, rid, rseq = struct.unpack("!BBHHH", icmp[:8])
            if typ == ICMP_ECHOREPLY:
                if rid != ident or len(icmp) < 12 or struct.unpack("!I", icmp[8:12])[0] != token:
                    return
                hit = seqmap[src].pop(rseq, None)
                if hit is None:
                    return
                st, t_sent = hit
                if peer != st.ip or st.done:
                    return
                st.got += 1
                st.rtts.append(time.monotonic() - t_sent)
                if st.got >= count:
                    st.done = True
            elif typ in (ICMP_DEST_UNREACH, ICMP_TIME_EXCEEDED):
                inner = icmp[8:]
                if len(inner) < 28:
                    return
                iihl = (inner[0] & 0x0F) * 4
                idst = socket.inet_ntoa(inner[16:20])
                ityp, _, _, iid, iseq = struct.unpack("!BBHHH", inner[iihl:iihl + 8])
                if ityp != ICMP_ECHO or iid != ident:
                    return
                hit = seqmap[src].get(iseq)
                if hit is None or hit[0].ip != idst or hit[0].done:
                    return
                st = hit[0]
                what = (_UNREACH.get(code, f"destination unreachable (code {code})")
                        if typ == ICMP_DEST_UNREACH else "time to live exceeded")
                st.error = f"{what} (ICMP from {peer})"
                if typ == ICMP_DEST_UNREACH and code == ICMP_HOST_UNREACH and \
                        peer == socket.inet_ntoa(inner[12:16]) and \
                        st.resent < LOCAL_UNREACH_RESENDS:
                    # The source's own kernel gave up resolving the next hop: an ARP entry that
                    # went FAILED, perhaps for attempts made before the path existed (a peer
                    # programmed a moment ago). Not an answer: a new packet starts a fresh
                    # resolution, so send again while time is left (the error stays if the
                    # time runs out).
                    seqmap[src].pop(iseq, None)
                    st.resent += 1
                    queue.append((src, st))
                    return
                st.done = True

        def drain(wait: float) -> None:
            for fd, _ in ep.poll(max(0.0, wait)):
                src, ident = fd_src[fd]
                s = socks[src]
                while True:
                    try:
                        data = s.recv(2048)
                    except (BlockingIOError, InterruptedError):
                        break
                    except OSError:
                        break
                    handle(src, ident, data)

        # Round 0 sends everything; the clock starts once it is out (a 100x100 matrix with cold
        # ARP caches takes most of a second just to send), so every pair gets its full timeout.
        # Replies are drained before each retry round, which re-sends only unanswered pairs.
        enqueue_round()
        flush_queue()
        t0 = time.monotonic()
        deadline = t0 + timeout
        interval = timeout / (retries + 1)
        rounds, next_round = 1, t0 + interval
        while True:
            now = time.monotonic()
            wait = min(deadline, next_round if rounds <= retries else deadline) - now
            drain(min(wait, 0.001) if queue else wait)
            if all(st.done for st in states.values()):
                break
            now = time.monotonic()
            if now >= deadline:
                break
            if rounds <= retries and now >= next_round:
                drain(0)
                enqueue_round()
                rounds += 1
                next_round = t0 + rounds * interval
            if queue:
                flush_queue()
        failed = any(not st.done or st.error for st in states.values())
        if failed and neigh.table_stats().get("table_fulls", 0) > fulls_before:
            raise NeighbourTableFull(
                "the kernel's neighbour table overflowed during the probe, so blocked cells may "
                "be false: raise net.ipv4.neigh.default.gc_thresh3 (see ensure_neighbour_capacity)")
        out: dict[Pair, ProbeResult] = {}
        arrived: dict[int, int] = {}
        if arrivals is not None and watch is not None:
            by_ns = arrivals.packets()
            for ref, packets in by_ns.items():
                for pkt in packets:
                    tag = echo_tag(pkt, token)
                    if tag is not None and tag < len(todo) and \
                            NsRef.of(watch.get(todo[tag][1], "")) == ref:
                        arrived[tag] = arrived.get(tag, 0) + 1
        for p, st in states.items():
            rtt = sum(st.rtts) / len(st.rtts) if st.rtts else None
            if st.got >= count:
                what = (f"reply from {st.ip} in {_ms(rtt)}" if count == 1 else
                        f"{st.got} replies from {st.ip}, avg {_ms(rtt)}")
                out[p] = ProbeResult(True, what, "reply", rtt_ms=rtt * 1000 if rtt else None)
            elif st.error:
                reason = "unreachable"
                out[p] = ProbeResult(False, st.error, reason)
            else:
                extra = f", {st.got} of {count} replies" if st.got else ""
                out[p] = ProbeResult(False, f"timeout after {_fmt_s(timeout)} "
                                     f"({st.sent} echo requests to {st.ip}{extra})", "timeout")
            if watch is not None and p[1] in watch:
                out[p].arrived = arrived.get(st.tag, 0)
        return out
    finally:
        ep.close()
        _close_all(socks.values())
        if arrivals is not None:
            arrivals.close()
        restore()


def ping_matrix(sources: Mapping[str, NsLike], targets: Mapping[str, str], count: int = 1,
                timeout: float = 1.0, retries: int = 2, pairs: Iterable[Pair] | None = None,
                adjust_neighbours: bool = True) -> dict[Pair, bool]:
    """Like ``ping_results`` but only reachable or not, per (source, target)."""
    res = ping_results(sources, targets, count=count, timeout=timeout, retries=retries,
                       pairs=pairs, adjust_neighbours=adjust_neighbours)
    return {p: r.ok for p, r in res.items()}


def ping(src: NsLike, ip: str, timeout: float = 1.0, count: int = 1,
         watch: NsLike | None = None) -> ProbeResult:
    """One source, one address; ``watch``: the destination's namespace (see ``arrived``)."""
    return ping_results({"src": src}, {"dst": ip}, count=count, timeout=timeout,
                        pairs=[("src", "dst")],
                        watch={"dst": watch} if watch is not None else None)[("src", "dst")]


# ---------------------------------------------------------------------------------------------
# echo marker


MARKER = b"cnmlab-echo"


def make_marker(server: str, peer: tuple[str, int]) -> bytes:
    return b"%s %s %s:%d\n" % (MARKER, server.encode(), peer[0].encode(), peer[1])


def parse_marker(line: bytes) -> tuple[str, str] | None:
    """``(server name, "ip:port" it saw)`` from an EchoServer's first line, else None."""
    parts = line.strip().split(b" ")
    if len(parts) == 3 and parts[0] == MARKER:
        return parts[1].decode(errors="replace"), parts[2].decode(errors="replace")
    return None


def _errno_reason(err: int) -> tuple[str, str]:
    if err == errno.ECONNREFUSED:
        return "refused", "connection refused"
    if err in (errno.EHOSTUNREACH, errno.ENETUNREACH):
        return "unreachable", os.strerror(err).lower()
    if err == errno.ETIMEDOUT:
        return "timeout", "connection timed out"
    return "error", os.strerror(err).lower()


# ---------------------------------------------------------------------------------------------
# TCP


@dataclass
class _TcpState:
    pair: Pair
    addr: tuple[str, int]
    sock: socket.socket
    stage: str = "connecting"   # connecting, marker, echo, done
    t0: float = 0.0
    rtt: float | None = None
    buf: bytes = b""
    nonce: bytes = b""
    result: ProbeResult | None = None
    sport: int = 0


def tcp_matrix(sources: Mapping[str, NsLike], targets: Mapping[str, tuple[str, int]],
               timeout: float = 1.0, echo: bool = False,
               pairs: Iterable[Pair] | None = None,
               watch: Mapping[str, NsLike] | None = None) -> dict[Pair, ProbeResult]:
    """Non-blocking TCP connects from every source to every ``(ip, port)`` target, together.

    ``ok`` means the handshake completed (reason ``connected``). With ``echo=True`` the target
    must be an ``EchoServer``: the probe reads its marker line, sends a nonce and waits for it
    to come back, and the result says which server answered and the address it saw
    (``server``, ``seen_as``). Failures: ``refused`` (RST), ``unreachable`` (ICMP error),
    ``timeout`` (nothing before ``timeout``). ``watch`` (target -> its namespace) counts the
    SYNs each target's namespace received (``arrived``), answered or not.
    """
    refs = _refs(sources)
    todo = _pairs(refs, targets, pairs)
    by_src: dict[str, list[Pair]] = {}
    for p in todo:
        by_src.setdefault(p[0], []).append(p)
    states: dict[int, _TcpState] = {}
    ep = select.epoll()
    arrivals: Arrivals | None = None
    try:
        if watch:
            arrivals = Arrivals([watch[d] for d in dict.fromkeys(
                d for _, d in todo if d in watch)], "tcp")
        for src, plist in by_src.items():
            for p, s in zip(plist, _make_sockets(refs[src], len(plist), socket.AF_INET,
                                                  socket.SOCK_STREAM)):
                states[s.fileno()] = _TcpState(p, tuple(targets[p[1]]), s)  # type: ignore[arg-type]
        t0 = time.monotonic()
        deadline = t0 + timeout
        for fd, st in states.items():
            st.t0 = time.monotonic()
            err = st.sock.connect_ex(st.addr)
            try:
                st.sport = st.sock.getsockname()[1]
            except OSError:
                pass
            if err in (0, errno.EINPROGRESS):
                ep.register(fd, select.EPOLLOUT)
            else:
                reason, text = _errno_reason(err)
                st.result = ProbeResult(False, f"{text} ({st.addr[0]}:{st.addr[1]})", reason)
                st.stage = "done"

        def finish(st: _TcpState, res: ProbeResult) -> None:
            st.result = res
            st.stage = "done"
            try:
                ep.unregister(st.sock.fileno())
            except OSError:
                pass

        def on_event(st: _TcpState, ev: int) -> None:
            ip, port = st.addr
            if st.stage == "connecting":
                err = st.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if err:
                    reason, text = _errno_reason(err)
                    finish(st, ProbeResult(False, f"{text} ({ip}:{port})", reason))
                    return
                st.rtt = time.monotonic() - st.t0
                if not echo:
                    finish(st, ProbeResult(True, f"connected to {ip}:{port} in {_ms(st.rtt)}",
                                           "connected", rtt_ms=st.rtt * 1000))
                    return
                st.stage = "marker"
                st.nonce = b"cnmlab-probe %08x\n" % random.getrandbits(32)
                ep.modify(st.sock.fileno(), select.EPOLLIN)
                return
            try:
                data = st.sock.recv(4096)
            except BlockingIOError:
                return
            except OSError as e:
                reason, text = _errno_reason(e.errno or 0)
                finish(st, ProbeResult(False, f"connected, then {text}", reason))
                return
            if not data:
                finish(st, ProbeResult(False, f"connected to {ip}:{port}, closed before echo",
                                       "error", reply=st.buf))
                return
            st.buf += data
            if st.stage == "marker" and b"\n" in st.buf:
                line, st.buf = st.buf.split(b"\n", 1)
                mk = parse_marker(line)
                if mk is None:
                    finish(st, ProbeResult(False, f"connected to {ip}:{port}, not an echo "
                                           f"server (got {line[:40]!r})", "error", reply=line))
                    return
                st.result = ProbeResult(False, "", server=mk[0], seen_as=mk[1])
                st.stage = "echo"
                st.sock.send(st.nonce)
            if st.stage == "echo" and st.nonce in st.buf:
                assert st.result is not None
                finish(st, ProbeResult(
                    True, f"echo from {st.result.server} at {ip}:{port} in {_ms(st.rtt or 0)}, "
                    f"seen as {st.result.seen_as}", "reply", rtt_ms=(st.rtt or 0) * 1000,
                    server=st.result.server, seen_as=st.result.seen_as, reply=st.nonce))

        while True:
            pending = [st for st in states.values() if st.stage != "done"]
            now = time.monotonic()
            if not pending or now >= deadline:
                break
            for fd, ev in ep.poll(deadline - now):
                st = states[fd]
                if st.stage != "done":
                    on_event(st, ev)
        out: dict[Pair, ProbeResult] = {}
        for st in states.values():
            if st.stage == "done" and st.result is not None:
                out[st.pair] = st.result
            else:
                ip, port = st.addr
                where = ("connecting to" if st.stage == "connecting"
                         else "waiting for the echo from")
                out[st.pair] = ProbeResult(False, f"timeout after {_fmt_s(timeout)} {where} "
                                           f"{ip}:{port}", "timeout")
        if arrivals is not None and watch is not None:
            _count_syns(arrivals.packets(), list(states.values()), watch, out)
        return out
    finally:
        ep.close()
        _close_all(st.sock for st in states.values())
        if arrivals is not None:
            arrivals.close()


def _count_syns(by_ns: Mapping[NsRef, list[bytes]], states: list[_TcpState],
                watch: Mapping[str, NsLike], out: dict[Pair, ProbeResult]) -> None:
    """Attribute the SYNs each watched namespace received to the probes that sent them.

    A SYN is matched by (source port, destination port); one whose source port was rewritten
    on the way (NAT) still counts when a single probe went to that namespace and port.
    """
    for st in states:
        dst = st.pair[1]
        if dst not in watch:
            continue
        ref = NsRef.of(watch[dst])
        port = st.addr[1]
        syns = [pkt for pkt in by_ns.get(ref, []) if is_tcp_syn(pkt, port)]
        mine = [pkt for pkt in syns if _tcp_sport(pkt) == st.sport]
        alone = sum(1 for o in states if o.pair[1] in watch and
                    NsRef.of(watch[o.pair[1]]) == ref and o.addr[1] == port) == 1
        out[st.pair].arrived = len(mine) or (len(syns) if alone else 0)


def tcp_connect(src: NsLike, ip: str, port: int, timeout: float = 1.0,
                echo: bool = False, watch: NsLike | None = None) -> ProbeResult:
    return tcp_matrix({"src": src}, {"dst": (ip, port)}, timeout=timeout, echo=echo,
                      pairs=[("src", "dst")],
                      watch={"dst": watch} if watch is not None else None)[("src", "dst")]


# ---------------------------------------------------------------------------------------------
# UDP


def udp_matrix(sources: Mapping[str, NsLike], targets: Mapping[str, tuple[str, int]],
               timeout: float = 1.0, retries: int = 2,
               pairs: Iterable[Pair] | None = None,
               watch: Mapping[str, NsLike] | None = None) -> dict[Pair, ProbeResult]:
    """A datagram with a nonce from every source to every ``(ip, port)`` echo service.

    ``ok`` when the nonce comes back (from an ``EchoServer``, whose marker fills ``server`` and
    ``seen_as``). An ICMP port unreachable is ``refused``; silence until ``timeout`` (the
    datagram is re-sent ``retries`` times within it) is ``timeout``. ``watch`` (target -> its
    namespace) counts the datagrams each target's namespace received (``arrived``).
    """
    refs = _refs(sources)
    todo = _pairs(refs, targets, pairs)
    by_src: dict[str, list[Pair]] = {}
    for p in todo:
        by_src.setdefault(p[0], []).append(p)
    socks: dict[int, tuple[Pair, socket.socket]] = {}
    results: dict[Pair, ProbeResult] = {}
    ep = select.epoll()
    arrivals: Arrivals | None = None
    nonces: dict[int, bytes] = {}
    try:
        if watch:
            arrivals = Arrivals([watch[d] for d in dict.fromkeys(
                d for _, d in todo if d in watch)], "udp")
        for src, plist in by_src.items():
            for p, s in zip(plist, _make_sockets(refs[src], len(plist), socket.AF_INET,
                                                  socket.SOCK_DGRAM)):
                socks[s.fileno()] = (p, s)
        sent_at: dict[int, float] = {}
        for fd, (p, s) in socks.items():
            ip, port = targets[p[1]]
            err = s.connect_ex((ip, port))
            if err:
                reason, text = _errno_reason(err)
                results[p] = ProbeResult(False, f"{text} ({ip}:{port})", reason)
                continue
            nonces[fd] = b"cnmlab-probe %08x\n" % random.getrandbits(32)
            ep.register(fd, select.EPOLLIN)
        t0 = time.monotonic()
        deadline = t0 + timeout
        interval = timeout / (retries + 1)
        rounds, next_round = 0, t0
        while True:
            now = time.monotonic()
            open_fds = [fd for fd, (p, _) in socks.items() if p not in results]
            if not open_fds or now >= deadline:
                break
            if rounds <= retries and now >= next_round:
                for fd in open_fds:
                    p, s = socks[fd]
                    try:
                        s.send(nonces[fd])
                        sent_at.setdefault(fd, time.monotonic())
                    except BlockingIOError:
                        pass
                    except OSError as e:
                        reason, text = _errno_reason(e.errno or 0)
                        ip, port = targets[p[1]]
                        results[p] = ProbeResult(False, f"{text} ({ip}:{port})", reason)
                rounds += 1
                next_round = t0 + rounds * interval
            wait = min(deadline, next_round if rounds <= retries else deadline) - time.monotonic()
            for fd, _ in ep.poll(max(0.0, wait)):
                p, s = socks[fd]
                if p in results:
                    continue
                ip, port = targets[p[1]]
                try:
                    data = s.recv(65535)
                except BlockingIOError:
                    continue
                except OSError as e:
                    reason, text = _errno_reason(e.errno or 0)
                    if reason == "refused":
                        text = "port unreachable (nothing listening)"
                    results[p] = ProbeResult(False, f"{text} ({ip}:{port})", reason)
                    continue
                if nonces[fd] not in data:
                    continue
                rtt = time.monotonic() - sent_at.get(fd, t0)
                line = data.split(b"\n", 1)[0]
                mk = parse_marker(line)
                server, seen = mk if mk else (None, None)
                who = f"echo from {server} at {ip}:{port}" if server else f"echo from {ip}:{port}"
                tail = f", seen as {seen}" if seen else ""
                results[p] = ProbeResult(True, f"{who} in {_ms(rtt)}{tail}", "reply",
                                         rtt_ms=rtt * 1000, server=server, seen_as=seen,
                                         reply=data)
        for fd, (p, _) in socks.items():
            if p not in results:
                ip, port = targets[p[1]]
                results[p] = ProbeResult(False, f"timeout after {_fmt_s(timeout)}: no echo from "
                                         f"{ip}:{port}", "timeout")
        if arrivals is not None and watch is not None:
            by_ns = arrivals.packets()
            for fd, (p, _) in socks.items():
                if p[1] in watch and fd in nonces:
                    port = targets[p[1]][1]
                    results[p].arrived = sum(
                        1 for pkt in by_ns.get(NsRef.of(watch[p[1]]), [])
                        if nonces[fd] in (udp_payload_to(pkt, port) or b""))
        return results
    finally:
        ep.close()
        _close_all(s for _, s in socks.values())
        if arrivals is not None:
            arrivals.close()


def udp_probe(src: NsLike, ip: str, port: int, timeout: float = 1.0,
              retries: int = 2, watch: NsLike | None = None) -> ProbeResult:
    return udp_matrix({"src": src}, {"dst": (ip, port)}, timeout=timeout, retries=retries,
                      pairs=[("src", "dst")],
                      watch={"dst": watch} if watch is not None else None)[("src", "dst")]


# ---------------------------------------------------------------------------------------------
# echo server


def _socket_inodes(ref: NsRef, proto: str, port: int) -> set[str]:
    """Inodes of the sockets bound to ``port`` (TCP: listening) in the namespace."""
    inodes: set[str] = set()
    with ref.opened() as fd:
        with netns.entered(fd=fd):
            for table in (proto, proto + "6"):
                try:
                    with open(f"/proc/thread-self/net/{table}") as f:
                        next(f)
                        for line in f:
                            w = line.split()
                            local_port = int(w[1].rsplit(":", 1)[1], 16)
                            listening = proto == "udp" or w[3] == "0A"
                            if local_port == port and listening:
                                inodes.add(w[9])
                except (OSError, StopIteration, IndexError, ValueError):
                    continue
    return inodes


def port_owner(ns: NsLike, proto: str, port: int) -> str | None:
    """Who holds ``port``/``proto`` in a namespace: ``"python3 -m http.server 80 (pid N)"``.

    Reads the namespace's socket table, then finds the process that has that socket open.
    None if nobody (or nobody we can see) does.
    """
    ref = NsRef.of(ns)
    try:
        inodes = _socket_inodes(ref, proto, port)
    except CnmError:
        return None
    if not inodes:
        return None
    wanted = {f"socket:[{i}]" for i in inodes}
    for pid in sorted((p for p in os.listdir("/proc") if p.isdigit()), key=int):
        fd_dir = f"/proc/{pid}/fd"
        try:
            fds = os.listdir(fd_dir)
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(f"{fd_dir}/{fd}") in wanted:
                    with open(f"/proc/{pid}/cmdline", "rb") as f:
                        cmd = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
                    return f"{cmd or '?'} (pid {pid})"
            except OSError:
                continue
    return "a process we cannot see"


class EchoServer:
    """A TCP or UDP echo service listening inside a namespace, served by a thread of ours.

    Each TCP connection first receives ``cnmlab-echo <name> <peer-ip>:<peer-port>\\n`` and then
    gets back whatever it sends; each UDP datagram is answered with that line followed by the
    datagram. So a probe learns which server answered and the source address the server saw
    (after any NAT on the way). ``port=0`` picks a free port (see ``.port``).
    """

    def __init__(self, ns: NsLike, proto: str = "tcp", port: int = 0, bind: str = "0.0.0.0",
                 name: str | None = None) -> None:
        if proto not in ("tcp", "udp"):
            raise ValueError("proto must be 'tcp' or 'udp'")
        self.ref = NsRef.of(ns)
        self.proto = proto
        self.bind = bind
        self.port = port
        self.name = (name or self.ref.name or
                     (f"pid{self.ref.pid}" if self.ref.pid else os.path.basename(self.ref.path or "")))
        self.name = self.name.replace(" ", "_") or "echo"
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._wake_r, self._wake_w = -1, -1
        self.served = 0

    def start(self) -> "EchoServer":
        kind = socket.SOCK_STREAM if self.proto == "tcp" else socket.SOCK_DGRAM

        def setup(s: socket.socket) -> None:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)

        if self.proto == "udp" and self.port and _socket_inodes(self.ref, "udp", self.port):
            # SO_REUSEADDR on both sides (ours, and e.g. ``nc -u -l``'s) lets the bind below
            # succeed beside the learner's socket, and then the kernel hands the probes'
            # datagrams to either one: look first, and never share a UDP port
            owner = port_owner(self.ref, "udp", self.port)
            raise PortInUse(f"port {self.port}/udp in {self.name} is taken by "
                            f"{owner or 'another process'}: the check needs to listen there; "
                            f"stop it (Ctrl-C in its shell) and check again", owner)
        sock = _make_sockets(self.ref, 1, socket.AF_INET, kind, 0, setup)[0]
        try:
            sock.bind((self.bind, self.port))
            if self.proto == "tcp":
                sock.listen(128)
        except OSError as e:
            sock.close()
            if e.errno == errno.EADDRINUSE:
                owner = port_owner(self.ref, self.proto, self.port)
                raise PortInUse(f"port {self.port}/{self.proto} in {self.name} is taken by "
                                f"{owner or 'another process'}: the check needs to listen "
                                f"there; stop it (Ctrl-C in its shell) and check again",
                                owner) from None
            raise ProbeError(f"echo server {self.name}: cannot listen on {self.bind}:"
                             f"{self.port}/{self.proto} in {self.ref}: {e.strerror}") from None
        self.port = sock.getsockname()[1]
        self._sock = sock
        self._wake_r, self._wake_w = os.pipe()
        self._thread = threading.Thread(target=self._serve, name=f"echo-{self.name}",
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread is not None:
            os.write(self._wake_w, b"x")
            self._thread.join(timeout=5)
            self._thread = None
        for fd in (self._wake_r, self._wake_w):
            if fd >= 0:
                os.close(fd)
        self._wake_r = self._wake_w = -1
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def __enter__(self) -> "EchoServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _serve(self) -> None:
        assert self._sock is not None
        sel = selectors.DefaultSelector()
        conns: dict[socket.socket, bytearray] = {}
        sel.register(self._wake_r, selectors.EVENT_READ, "wake")
        sel.register(self._sock, selectors.EVENT_READ, "listen")

        def drop(c: socket.socket) -> None:
            sel.unregister(c)
            conns.pop(c, None)
            c.close()

        def want(c: socket.socket) -> None:
            ev = selectors.EVENT_READ | (selectors.EVENT_WRITE if conns[c] else 0)
            sel.modify(c, ev, "conn")

        try:
            while True:
                for key, ev in sel.select():
                    if key.data == "wake":
                        return
                    if key.data == "listen" and self.proto == "udp":
                        try:
                            data, peer = self._sock.recvfrom(65535)
                            self._sock.sendto(make_marker(self.name, peer) + data, peer)
                            self.served += 1
                        except OSError:
                            pass
                    elif key.data == "listen":
                        try:
                            c, peer = self._sock.accept()
                        except OSError:
                            continue
                        c.setblocking(False)
                        conns[c] = bytearray(make_marker(self.name, peer))
                        sel.register(c, selectors.EVENT_READ | selectors.EVENT_WRITE, "conn")
                        self.served += 1
                    else:
                        c = key.fileobj  # type: ignore[assignment]
                        try:
                            if ev & selectors.EVENT_READ:
                                data = c.recv(65536)
                                if not data:
                                    drop(c)
                                    continue
                                conns[c] += data
                            if conns[c]:
                                n = c.send(conns[c])
                                del conns[c][:n]
                            want(c)
                        except BlockingIOError:
                            want(c)
                        except OSError:
                            drop(c)
        finally:
            for c in list(conns):
                c.close()
            sel.close()


# ---------------------------------------------------------------------------------------------
# DNS


def dns_query(src: NsLike, name: str, server_ip: str, timeout: float = 1.0, port: int = 53,
              retries: int = 1) -> list[str]:
    """Resolve ``name`` (A records) by asking ``server_ip`` from inside ``src``'s namespace.

    Returns the addresses (possibly empty: the name exists without A records). Raises
    ``DnsNameError`` for NXDOMAIN, ``DnsTimeout`` when no answer came within ``timeout``
    (re-asking ``retries`` times within it), and ``DnsError`` for other failures.
    """
    ref = NsRef.of(src)
    qid = random.getrandbits(16)
    try:
        query = dnswire.build_query(name, qid)
    except ValueError as e:
        raise DnsError(f"dns {name} @{server_ip}: {e}") from None
    s = _make_sockets(ref, 1, socket.AF_INET, socket.SOCK_DGRAM)[0]
    try:
        err = s.connect_ex((server_ip, port))
        if err:
            raise DnsError(f"dns {name} @{server_ip}: {os.strerror(err).lower()}")
        t0 = time.monotonic()
        deadline = t0 + timeout
        interval = timeout / (retries + 1)
        for attempt in range(retries + 1):
            try:
                s.send(query)
            except OSError as e:
                raise DnsError(f"dns {name} @{server_ip}: cannot send: {e.strerror}") from None
            round_end = min(deadline, t0 + (attempt + 1) * interval)
            while True:
                left = round_end - time.monotonic()
                if left <= 0:
                    break
                r, _, _ = select.select([s], [], [], left)
                if not r:
                    break
                try:
                    msg = s.recv(4096)
                except BlockingIOError:
                    continue
                except ConnectionRefusedError:
                    raise DnsError(f"dns {name} @{server_ip}:{port}: port unreachable "
                                   "(no DNS server listening)") from None
                except OSError as e:
                    raise DnsError(f"dns {name} @{server_ip}: {e.strerror}") from None
                try:
                    rcode, addrs = dnswire.parse_response(msg, qid)
                except ValueError:
                    continue
                if rcode == dnswire.NXDOMAIN:
                    raise DnsNameError(f"dns {name} @{server_ip}: NXDOMAIN (no such name)")
                if rcode:
                    raise DnsError(f"dns {name} @{server_ip}: {dnswire.rcode_name(rcode)}")
                return addrs
        raise DnsTimeout(f"dns {name} @{server_ip}: no answer after {_fmt_s(timeout)}")
    finally:
        s.close()


def dns_probe(src: NsLike, name: str, server_ip: str, timeout: float = 1.0,
              port: int = 53) -> ProbeResult:
    """``dns_query`` as a ProbeResult (ok when at least one address came back)."""
    try:
        addrs = dns_query(src, name, server_ip, timeout=timeout, port=port)
    except DnsNameError as e:
        return ProbeResult(False, str(e), "nxdomain")
    except DnsTimeout as e:
        return ProbeResult(False, str(e), "timeout")
    except DnsError as e:
        return ProbeResult(False, str(e), "error")
    if not addrs:
        return ProbeResult(False, f"dns {name} @{server_ip}: no A records", "error")
    return ProbeResult(True, f"{name} -> {', '.join(addrs)}", "reply")
