"""The userland proxy daemon: every published port of one Docker host, in one asyncio process.

Docker runs one ``docker-proxy`` process per published port; each Python process costs about
20 MB, so cnmlab serves all of a host's ports from one process living in the host's network
namespace. What each port does follows docker-proxy:

* TCP: each accepted connection gets its own connection to ``container_ip:container_port``;
  bytes are copied both ways, and an end-of-stream in one direction is passed on as a half
  close (``shutdown(SHUT_WR)``) while the other direction keeps flowing, so ``printf hi | nc -N``
  still gets its reply. Both sockets close once both directions are done. When a port is
  unpublished its connections are closed, as they are when dockerd kills its docker-proxy.
* UDP: each client address gets its own upstream socket (a "flow"); replies come back from the
  published socket. A flow ends when no reply has come for ``udp_timeout`` seconds (docker-proxy's
  ``UDPConnTrackTimeout``, 90 s); an ICMP "port unreachable" does not end it.

It is driven over a control socket (a unix stream socket in a root-only 0700 folder, mode 0600,
peers checked to be root): one JSON request per connection, one JSON reply. A control channel,
rather than a signal plus a state file, lets the caller learn at once whether a bind failed
(``port is already allocated``) and changes one port without touching the others. The daemon
exits once its last port is gone (and after ``--idle`` seconds without any port, in case its
starter died); it takes the caller's lock file before deciding to leave on its own, so it never
vanishes under a caller that is about to use it. Started and driven by ``cnmlab.proxy``.
"""
from __future__ import annotations

import argparse
import asyncio
import fcntl
import json
import os
import signal
import socket
import struct
import sys
import time
from typing import Any

from cnmlab.kernel import netns

UDP_TIMEOUT = 90.0  # docker-proxy's UDPConnTrackTimeout
COPY_CHUNK = 65536


class TcpPort:
    """One published TCP port: a listener and the connections it relays."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.server: asyncio.AbstractServer | None = None
        self.tasks: set[asyncio.Task[None]] = set()

    async def start(self, host_ip: str, host_port: int) -> None:
        self.server = await asyncio.start_server(self._accepted, host_ip, host_port,
                                                 reuse_address=True, backlog=128)

    def _accepted(self, cr: asyncio.StreamReader, cw: asyncio.StreamWriter) -> None:
        task = asyncio.ensure_future(self._relay(cr, cw))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _relay(self, cr: asyncio.StreamReader, cw: asyncio.StreamWriter) -> None:
        bw: asyncio.StreamWriter | None = None
        try:
            try:
                br, bw = await asyncio.open_connection(*self.target)
            except OSError:
                return  # docker-proxy closes the client when the container does not answer
            await asyncio.gather(_copy(cr, bw), _copy(br, cw))
        finally:
            cw.close()
            if bw is not None:
                bw.close()

    def stats(self) -> dict[str, int]:
        return {"connections": len(self.tasks)}

    def close(self) -> None:
        if self.server:
            self.server.close()
        for task in list(self.tasks):
            task.cancel()


async def _copy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Copy one direction until end of stream, then half-close the other side's writing end."""
    try:
        while data := await reader.read(COPY_CHUNK):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof() and not writer.transport.is_closing():
            writer.write_eof()
    except (ConnectionError, OSError):
        writer.transport.abort()  # a reset on one side resets the other, as a kernel would


class UdpPort(asyncio.DatagramProtocol):
    """One published UDP port: a flow (upstream socket) per client address."""

    def __init__(self, target: tuple[str, int], timeout: float) -> None:
        self.target = target
        self.timeout = timeout
        self.transport: asyncio.DatagramTransport | None = None
        self.flows: dict[tuple[str, int], _Flow] = {}
        self.pending: dict[tuple[str, int], list[bytes]] = {}

    async def start(self, host_ip: str, host_port: int) -> None:
        loop = asyncio.get_running_loop()
        await loop.create_datagram_endpoint(lambda: self, local_addr=(host_ip, host_port))

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        flow = self.flows.get(addr)
        if flow is not None and flow.transport is not None:
            flow.transport.sendto(data)
            return
        queued = self.pending.get(addr)
        if queued is not None:  # its upstream socket is being made
            queued.append(data)
            return
        self.pending[addr] = [data]
        asyncio.ensure_future(self._open_flow(addr))

    async def _open_flow(self, addr: tuple[str, int]) -> None:
        loop = asyncio.get_running_loop()
        flow = _Flow(self, addr)
        try:
            await loop.create_datagram_endpoint(lambda: flow, remote_addr=self.target)
        except OSError:
            self.pending.pop(addr, None)
            return
        if self.transport is None or self.transport.is_closing():
            flow.close()
            return
        self.flows[addr] = flow
        for data in self.pending.pop(addr, []):
            flow.transport.sendto(data)  # type: ignore[union-attr]

    def stats(self) -> dict[str, int]:
        return {"flows": len(self.flows)}

    def close(self) -> None:
        if self.transport:
            self.transport.close()
        for flow in list(self.flows.values()):
            flow.close()


class _Flow(asyncio.DatagramProtocol):
    """A client's upstream socket; ends ``timeout`` s after the last reply (docker-proxy)."""

    def __init__(self, port: UdpPort, client: tuple[str, int]) -> None:
        self.port = port
        self.client = client
        self.transport: asyncio.DatagramTransport | None = None
        self.deadline = time.monotonic() + port.timeout
        self.timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.timer = asyncio.get_running_loop().call_later(self.port.timeout, self._check)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.deadline = time.monotonic() + self.port.timeout  # one stored number per reply
        if self.port.transport and not self.port.transport.is_closing():
            self.port.transport.sendto(data, self.client)

    def error_received(self, exc: Exception) -> None:
        pass  # ICMP port unreachable: nothing listens yet; keep the flow until it times out

    def _check(self) -> None:
        left = self.deadline - time.monotonic()
        if left > 0:
            self.timer = asyncio.get_running_loop().call_later(left, self._check)
        else:
            self.close()

    def close(self) -> None:
        if self.timer:
            self.timer.cancel()
        if self.transport:
            self.transport.close()
        if self.port.flows.get(self.client) is self:
            del self.port.flows[self.client]


Key = tuple[str, str, int]  # proto, host ip, host port


class Daemon:
    def __init__(self, control: str, lock: str, idle: float) -> None:
        self.control = control
        self.lock = lock
        self.idle = idle
        self.ports: dict[Key, TcpPort | UdpPort] = {}
        self.done = asyncio.Event()
        self.server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        old = os.umask(0o177)  # the socket is born 0600: only root may connect
        try:
            self.server = await asyncio.start_unix_server(self._control, self.control)
        finally:
            os.umask(old)
        asyncio.get_running_loop().call_later(self.idle, self._idle_check)

    async def _control(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            sock = writer.get_extra_info("socket")
            _pid, uid, _gid = struct.unpack(
                "3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))
            if uid != 0:
                return
            line = await reader.readline()
            op = None
            try:
                req = json.loads(line)
                op = req["op"]
                reply = await self.handle(req)
            except (ValueError, KeyError, TypeError) as e:
                reply = {"error": f"bad request: {e}"}
            leaving = not self.ports and op in ("add", "remove", "stop")
            if leaving:  # last port gone (or a first add failed): nothing left to serve
                self._unreachable()
            writer.write(json.dumps(reply).encode() + b"\n")
            await writer.drain()
            if leaving:
                self.done.set()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()

    async def handle(self, req: dict[str, Any]) -> dict[str, Any]:
        op = req["op"]
        if op == "add":
            key = (req["proto"], req["host_ip"], int(req["host_port"]))
            if key in self.ports:
                return {"error": f"Bind for {key[1]}:{key[2]} failed: port is already allocated"}
            target = (req["container_ip"], int(req["container_port"]))
            port: TcpPort | UdpPort
            if key[0] == "tcp":
                port = TcpPort(target)
            elif key[0] == "udp":
                port = UdpPort(target, float(req.get("udp_timeout") or UDP_TIMEOUT))
            else:
                return {"error": f"unknown protocol {key[0]!r}"}
            try:
                await port.start(key[1], key[2])
            except OSError as e:
                return {"error": f"cannot listen on {key[1]}:{key[2]}/{key[0]}: "
                                 f"{e.strerror or e}"}
            self.ports[key] = port
            return {"ok": True, "pid": os.getpid()}
        if op == "remove":
            key = (req["proto"], req["host_ip"], int(req["host_port"]))
            found = self.ports.pop(key, None)
            if found:
                found.close()
            return {"ok": True, "removed": found is not None, "left": len(self.ports)}
        if op == "list":
            return {"ok": True, "pid": os.getpid(), "ports": [
                {"proto": k[0], "host_ip": k[1], "host_port": k[2],
                 "container_ip": p.target[0], "container_port": p.target[1], **p.stats()}
                for k, p in sorted(self.ports.items())]}
        if op == "stop":
            for p in self.ports.values():
                p.close()
            self.ports.clear()
            return {"ok": True}
        return {"error": f"unknown op {op!r}"}

    def _idle_check(self) -> None:
        """Leave after ``idle`` s without a port (a starter killed before its first add)."""
        if self.ports or self.done.is_set():
            return
        try:
            fd = os.open(self.lock, os.O_RDWR)
        except OSError:
            self.leave()
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # a caller is at work: look again later
            os.close(fd)
            asyncio.get_running_loop().call_later(self.idle, self._idle_check)
            return
        try:
            if not self.ports:
                self.leave()
        finally:
            os.close(fd)  # closing drops the lock, after the socket is gone

    def _unreachable(self) -> None:
        """Stop being reachable (before the last reply): a later caller starts a new daemon."""
        if self.server:
            self.server.close()
        try:
            os.unlink(self.control)
        except FileNotFoundError:
            pass

    def leave(self) -> None:
        self._unreachable()
        self.done.set()

    def close_all(self) -> None:
        for p in self.ports.values():
            p.close()
        self.ports.clear()


async def serve(args: argparse.Namespace) -> None:
    daemon = Daemon(args.control, args.lock, args.idle)
    await daemon.start()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, daemon.leave)
    os.write(args.ready_fd, b"ready\n")
    os.close(args.ready_fd)
    await daemon.done.wait()
    daemon.close_all()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="cnmlab-proxyd")
    ap.add_argument("--netns", required=True)
    ap.add_argument("--control", required=True, help="unix socket path")
    ap.add_argument("--lock", required=True, help="the callers' lock file")
    ap.add_argument("--ready-fd", type=int, required=True)
    ap.add_argument("--idle", type=float, default=30.0)
    args = ap.parse_args(argv)
    try:
        netns.setns(netns.open_fd(args.netns))  # the whole process lives in the host namespace
        asyncio.run(serve(args))
    except Exception as e:  # noqa: BLE001 - told to the starter through the ready pipe
        try:
            os.write(args.ready_fd, f"error: {e}\n".encode())
        except OSError:
            pass
        sys.exit(1)


if __name__ == "__main__":
    main()
