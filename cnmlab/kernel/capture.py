"""Frames seen on one interface of one namespace: the one packet capture of cnmlab.

``Capture(ns, interface)`` (or ``Capture(None, interface, fd=FD)`` for a namespace open at a
file descriptor: a PID's, a bind mount's) opens an ``AF_PACKET`` raw socket (ETH_P_ALL) *inside*
the namespace (the socket stays bound to it) and bound to the interface, so it sees both
directions of that interface only. The TUI's packet view follows a capture with ``batches``; a
check reads for a while with ``read``. What a frame *means* is ``cnmlab.frames``' job.

    with Capture(ns, "eth0") as cap:
        for batch, skipped in cap.batches(interval=0.1):   # blocks in select(); stop() ends it
            for pkt in batch:
                print(pkt.direction, frames.decode(pkt.data))
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

from cnmlab.kernel import netns

ETH_P_ALL = 0x0003
PACKET_OUTGOING = 4
SOL_PACKET = 263
PACKET_STATISTICS = 6
_PKTTYPE = {0: "in", 1: "in", 2: "in", 3: "in", PACKET_OUTGOING: "out"}


@dataclass
class Packet:
    ts: float  # time.time() when it was read
    direction: str  # "in" / "out"
    data: bytes  # the Ethernet frame


class Capture:
    """An ETH_P_ALL packet socket on one interface inside one namespace; ``stop()`` from anywhere."""

    def __init__(self, ns: str | None, interface: str, snaplen: int = 65535, *,
                 fd: int | None = None) -> None:
        self.ns = ns
        self.fd = fd  # a namespace open at a descriptor (only needed until open())
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
            if self.ns is None and self.fd is None:
                self._sock = make()
            else:
                with netns.entered(self.ns, fd=self.fd):
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

    def read(self, timeout: float, limit: int = 10_000) -> list[Packet]:
        """What arrives within ``timeout`` seconds (returns at the first packets, or on stop)."""
        self.open()
        assert self._sock is not None
        try:
            r, _, _ = select.select([self._rpipe, self._sock.fileno()], [], [], max(0.0, timeout))
        except InterruptedError:
            r = []
        out: list[Packet] = []
        if r and not self._stopped:
            self._drain(out, limit)
        return out

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
