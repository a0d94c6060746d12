"""A userland port proxy, the counterpart of dockerd's ``docker-proxy``.

One small process per published port, living in the host's namespace, relays connections from
``host_ip:host_port`` to ``container_ip:container_port``. Docker runs it so that the host itself
and containers on the same bridge (hairpin) can reach a published port: their packets never
pass through PREROUTING's DNAT the way outside traffic does. It exits when its parent lab is
torn down (teardown and ``cnmlab clean`` kill every process in the lab's namespaces).
"""
from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import time

from cnmlab import netns


def spawn(ns: str, proto: str, host_ip: str, host_port: int, container_ip: str,
          container_port: int) -> int:
    """Start a proxy in namespace ``ns`` and wait until it listens; return its PID."""
    r, w = os.pipe()
    proc = subprocess.Popen(
        [sys.executable, "-m", "cnmlab.proxy", "--netns", ns, "--proto", proto,
         "--host-ip", host_ip, "--host-port", str(host_port), "--container-ip", container_ip,
         "--container-port", str(container_port), "--ready-fd", str(w)],
        pass_fds=(w,), start_new_session=True, stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    os.close(w)
    with os.fdopen(r) as ready:
        line = ready.readline()
    if line.strip() != "ready":
        err = proc.stderr.read().decode().strip().splitlines() if proc.stderr else []
        proc.kill()
        proc.wait()
        from cnmlab.errors import KernelError

        raise KernelError(f"port proxy for {host_port}/{proto}: "
                          f"{err[-1] if err else 'did not start'}")
    if proc.stderr:
        proc.stderr.close()
    return proc.pid


def stop(pid: int) -> None:
    if pid <= 0:
        return
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline:
        try:
            if os.waitpid(pid, os.WNOHANG)[0]:
                return
        except ChildProcessError:  # not our child: poll for it to vanish
            if not os.path.exists(f"/proc/{pid}"):
                return
        time.sleep(0.01)
    try:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    except (ProcessLookupError, ChildProcessError):
        pass


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, asyncio.CancelledError):
        pass
    finally:
        try:
            writer.close()
        except Exception:
            pass


async def _serve_tcp(args: argparse.Namespace, ready: int) -> None:
    async def handle(cr: asyncio.StreamReader, cw: asyncio.StreamWriter) -> None:
        try:
            br, bw = await asyncio.wait_for(
                asyncio.open_connection(args.container_ip, args.container_port), 5)
        except (OSError, asyncio.TimeoutError):
            cw.close()
            return
        await asyncio.gather(_pipe(cr, bw), _pipe(br, cw))

    server = await asyncio.start_server(handle, args.host_ip, args.host_port, reuse_address=True)
    os.write(ready, b"ready\n")
    os.close(ready)
    async with server:
        await server.serve_forever()


class _UdpRelay(asyncio.DatagramProtocol):
    """Relays each client's datagrams through its own upstream socket, like docker-proxy."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.clients: dict[tuple[str, int], asyncio.DatagramTransport] = {}

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        asyncio.ensure_future(self._relay(data, addr))

    async def _relay(self, data: bytes, addr: tuple[str, int]) -> None:
        upstream = self.clients.get(addr)
        if upstream is None:
            loop = asyncio.get_running_loop()
            reply_to = self.transport

            class Back(asyncio.DatagramProtocol):
                def datagram_received(self, d: bytes, _a: tuple[str, int]) -> None:
                    reply_to.sendto(d, addr)

            upstream, _ = await loop.create_datagram_endpoint(Back, remote_addr=self.target)
            self.clients[addr] = upstream
        upstream.sendto(data)


async def _serve_udp(args: argparse.Namespace, ready: int) -> None:
    loop = asyncio.get_running_loop()
    await loop.create_datagram_endpoint(
        lambda: _UdpRelay((args.container_ip, args.container_port)),
        local_addr=(args.host_ip, args.host_port))
    os.write(ready, b"ready\n")
    os.close(ready)
    await asyncio.Event().wait()


def main() -> None:
    ap = argparse.ArgumentParser(prog="cnmlab-proxy")
    ap.add_argument("--netns", required=True)
    ap.add_argument("--proto", choices=("tcp", "udp"), default="tcp")
    ap.add_argument("--host-ip", default="0.0.0.0")
    ap.add_argument("--host-port", type=int, required=True)
    ap.add_argument("--container-ip", required=True)
    ap.add_argument("--container-port", type=int, required=True)
    ap.add_argument("--ready-fd", type=int, required=True)
    args = ap.parse_args()
    netns.setns(netns.open_fd(args.netns))  # the whole process lives in the host namespace
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    serve = _serve_tcp if args.proto == "tcp" else _serve_udp
    try:
        asyncio.run(serve(args, args.ready_fd))
    except OSError as e:
        print(f"cannot listen on {args.host_ip}:{args.host_port}/{args.proto}: {e.strerror}",
              file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
