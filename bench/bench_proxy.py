"""The userland proxy: memory for N published ports, and what it relays.

    python bench/bench_proxy.py [--ports 100] [--target-mb 60]

Docker runs one docker-proxy per published port; cnmlab serves all of a host's ports from one
asyncio daemon. This publishes N ports on one container through the engine (``docker run -p``;
80% TCP, 20% UDP), then measures the resident memory of every proxy process in the host's
namespace: idle, and with one open TCP connection per TCP port plus one UDP flow per UDP port.
For scale it also shows the daemon with a single port, which is what one process per port
would cost N times over. Then the relay: short TCP connections per second (connect, send,
half-close, read the reply, all from the host's loopback as Docker's own proxy traffic is) and
bulk TCP throughput. Exits 1 if the total RSS with every connection open reaches the target.
Needs root; removes everything it made.
"""
from __future__ import annotations

import argparse
import os
import socket
import sys
import threading
import time

from cnmlab import proxy
from cnmlab.kernel import netns
from cnmlab.lab import Lab


def sock_in(ns: str, kind: int = socket.SOCK_STREAM) -> socket.socket:
    with netns.entered(ns):
        return socket.socket(socket.AF_INET, kind)


def proxy_processes(ns: str) -> list[int]:
    out = []
    for pid in netns.pids_in_many([ns]).get(ns, []):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if b"cnmlab.proxyd" in f.read():
                    out.append(pid)
        except OSError:
            pass
    return out


def memory_kb(pid: int) -> tuple[int, int]:
    """(RSS, PSS) in kB: PSS splits shared pages (the interpreter) among their users."""
    rss = pss = 0
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            if line.startswith("Rss:"):
                rss = int(line.split()[1])
            elif line.startswith("Pss:"):
                pss = int(line.split()[1])
    return rss, pss


def total_mb(ns: str) -> tuple[float, float, int]:
    pids = proxy_processes(ns)
    mem = [memory_kb(p) for p in pids]
    return sum(m[0] for m in mem) / 1024, sum(m[1] for m in mem) / 1024, len(pids)


def serve(ns: str) -> list[socket.socket]:
    """A TCP server (echo after the client's EOF; echo at once for 'keep') and a UDP echo."""
    tcp = sock_in(ns)
    tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    tcp.bind(("0.0.0.0", 80))
    tcp.listen(1024)
    udp = sock_in(ns, socket.SOCK_DGRAM)
    udp.bind(("0.0.0.0", 53))

    def one(c: socket.socket) -> None:
        with c:
            try:
                first = c.recv(65536)
                if first.startswith(b"keep"):
                    while c.recv(65536):
                        pass
                    return
                if first.startswith(b"bulk"):
                    n = len(first)
                    while chunk := c.recv(1 << 20):
                        n += len(chunk)
                    c.sendall(str(n).encode())
                    return
                data = first
                while chunk := c.recv(65536):
                    data += chunk
                c.sendall(data)
            except OSError:
                pass

    def accept() -> None:
        while True:
            try:
                c, _ = tcp.accept()
            except OSError:
                return
            threading.Thread(target=one, args=(c,), daemon=True).start()

    def udp_loop() -> None:
        while True:
            try:
                data, peer = udp.recvfrom(65535)
                if peer is None:
                    return
                udp.sendto(data, peer)
            except OSError:
                return

    threading.Thread(target=accept, daemon=True).start()
    threading.Thread(target=udp_loop, daemon=True).start()
    return [tcp, udp]


def short_connections(ns: str, port: int, seconds: float) -> float:
    n = 0
    end = time.perf_counter() + seconds
    t0 = time.perf_counter()
    while time.perf_counter() < end:
        c = sock_in(ns)
        c.settimeout(5)
        c.connect(("127.0.0.1", port))
        c.sendall(b"ping")
        c.shutdown(socket.SHUT_WR)
        assert c.recv(100) == b"ping"
        c.close()
        n += 1
    return n / (time.perf_counter() - t0)


def bulk(ns: str, port: int, megabytes: int) -> float:
    c = sock_in(ns)
    c.settimeout(30)
    c.connect(("127.0.0.1", port))
    block = b"bulk" + b"x" * ((1 << 20) - 4)
    t0 = time.perf_counter()
    for _ in range(megabytes):
        c.sendall(block)
    c.shutdown(socket.SHUT_WR)
    got = int(c.recv(100))
    elapsed = time.perf_counter() - t0
    c.close()
    assert got == megabytes << 20, got
    return megabytes / elapsed


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ports", type=int, default=100)
    ap.add_argument("--target-mb", type=float, default=60.0)
    args = ap.parse_args()
    n_udp = args.ports // 5
    n_tcp = args.ports - n_udp
    lab = Lab(f"bproxy{os.getpid()}", upstream=False)
    socks: list[socket.socket] = []
    try:
        host = lab.add_host("h1")
        host.run("one", publish=["20000:80"])
        rss1, pss1, _ = total_mb(host.netns)
        host.rm("one")
        t0 = time.perf_counter()
        web = host.run("web", publish=[f"{10000 + i}:80" for i in range(n_tcp)]
                       + [f"{11000 + i}:53/udp" for i in range(n_udp)])
        publish_s = time.perf_counter() - t0
        socks = serve(web.netns)
        idle_rss, idle_pss, procs = total_mb(host.netns)
        conns = []
        for i in range(n_tcp):
            c = sock_in(host.netns)
            c.connect(("127.0.0.1", 10000 + i))
            c.sendall(b"keep")
            conns.append(c)
        for i in range(n_udp):
            u = sock_in(host.netns, socket.SOCK_DGRAM)
            u.settimeout(2)
            u.sendto(b"u", ("127.0.0.1", 11000 + i))
            assert u.recvfrom(10)[0] == b"u"
            conns.append(u)
        stats = proxy.published(host.netns)
        open_conns = sum(p.get("connections", 0) for p in stats)
        flows = sum(p.get("flows", 0) for p in stats)
        busy_rss, busy_pss, procs_busy = total_mb(host.netns)
        rate = short_connections(host.netns, 10001, 2.0)
        mbps = bulk(host.netns, 10002, 200)
        for c in conns:
            c.close()
    finally:
        for s in socks:
            s.close()
        lab.down()
    print(f"one daemon, 1 port:        RSS {rss1:6.1f} MB  PSS {pss1:6.1f} MB "
          f"(one process per port: ~{rss1 * args.ports:.0f} MB RSS for {args.ports})")
    print(f"{args.ports} ports ({n_tcp} tcp, {n_udp} udp), published in {publish_s:.2f} s "
          f"({publish_s / args.ports * 1000:.1f} ms/port incl. the container)")
    print(f"  idle:                    RSS {idle_rss:6.1f} MB  PSS {idle_pss:6.1f} MB  "
          f"processes {procs}")
    print(f"  {open_conns} tcp conns + {flows} udp flows open: RSS {busy_rss:6.1f} MB  "
          f"PSS {busy_pss:6.1f} MB  processes {procs_busy}")
    print(f"  relay: {rate:.0f} short tcp connections/s, bulk {mbps:.0f} MB/s")
    ok = busy_rss < args.target_mb and procs == procs_busy == 1 and open_conns == n_tcp \
        and flows == n_udp
    print(f"target: total RSS under {args.target_mb:.0f} MB with {args.ports} ports: "
          f"{'met' if ok else 'MISSED'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
