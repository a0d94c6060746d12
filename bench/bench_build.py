"""Build and tear down N sandboxes on one bridge: cnmlab vs a bare pyroute2 loop vs Mininet.

    python bench/bench_build.py [--sizes 10,100,1000] [--no-mininet]

Each sandbox is a network namespace with a veth whose other end sits on a bridge in a host
namespace, an address, and its links up. cnmlab (``docker run`` on docker0: no embedded DNS,
which Docker also only runs on user-defined networks) goes through the whole engine (CNM lifecycle:
endpoint, join, Docker's naming, IPAM, state); the bare loop does only the kernel work, with
pyroute2 directly, the cheapest way known here (in-process namespaces, peer created straight in
the target namespace, IPv6 off). Mininet runs ``mn --topo single,N --switch lxbr --controller
none --test none`` in throwaway namespaces. Needs root; removes everything it made.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

from pyroute2 import IPRoute

from cnmlab.kernel import netns, sysctl
from cnmlab.lab import Lab

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import mininet  # noqa: E402


def bare_pyroute2(n: int) -> tuple[float, float]:
    prefix = f"cnmbare{os.getpid()}-"
    host = prefix + "host"
    names = []
    t0 = time.perf_counter()
    netns.create(host)
    sysctl.disable_ipv6(host)
    with netns.entered(host):
        ip = IPRoute()
    try:
        ip.link("add", ifname="br0", kind="bridge")
        br = ip.link_lookup(ifname="br0")[0]
        ip.link("set", index=br, state="up")
        ip.addr("add", index=br, address="10.200.0.1", prefixlen=16)
        for i in range(n):
            ns = f"{prefix}s{i}"
            names.append(ns)
            netns.create(ns)
            sysctl.disable_ipv6(ns)
            fd = netns.open_fd(ns)
            ip.link("add", ifname=f"v{i}", kind="veth", peer={"ifname": "eth0", "net_ns_fd": fd})
            os.close(fd)
            idx = ip.link_lookup(ifname=f"v{i}")[0]
            ip.link("set", index=idx, master=br, state="up")
            with netns.entered(ns):
                sip = IPRoute()
            e = sip.link_lookup(ifname="eth0")[0]
            sip.addr("add", index=e, address=f"10.200.{(i + 2) // 256}.{(i + 2) % 256}",
                     prefixlen=16)
            sip.link("set", index=e, state="up")
            sip.link("set", index=1, state="up")
            sip.close()
        built = time.perf_counter() - t0
    finally:
        ip.close()
        t1 = time.perf_counter()
        for ns in names + [host]:
            netns.delete(ns)
    return built, time.perf_counter() - t1


def cnmlab_engine(n: int) -> tuple[float, float, int]:
    t0 = time.perf_counter()
    lab = Lab(f"bench{os.getpid()}", upstream=False)
    try:
        host = lab.add_host("h1")
        with lab.batch():
            for i in range(n):
                host.run(f"s{i}")  # docker run on the default bridge, docker0
        built = time.perf_counter() - t0
        count = sum(1 for _ in lab.sandboxes())
    finally:
        t1 = time.perf_counter()
        lab.down()
    return built, time.perf_counter() - t1, count


def leaked() -> list[str]:
    pid = str(os.getpid())
    return [n for n in netns.list_names() if pid in n]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="10,100,1000")
    ap.add_argument("--no-mininet", action="store_true")
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    print(f"{'N':>5} {'cnmlab build':>13} {'down':>6} {'ms/sb':>6} | {'bare build':>11} "
          f"{'down':>6} {'ms/sb':>6} | {'mininet':>8} {'ms/host':>8} | cnmlab/bare  mininet/cnmlab")
    ok = True
    for n in sizes:
        cb, cd, count = cnmlab_engine(n)
        bb, bd = bare_pyroute2(n)
        mn_s, mn_note = (None, "skipped") if args.no_mininet else mininet.run(n, "none")
        c_ms, b_ms = (cb + cd) / n * 1000, (bb + bd) / n * 1000
        mn_ms = mn_s / n * 1000 if mn_s else None
        print(f"{n:>5} {cb:>12.2f}s {cd:>5.2f}s {c_ms:>6.1f} | {bb:>10.2f}s {bd:>5.2f}s "
              f"{b_ms:>6.1f} | " + (f"{mn_s:>7.2f}s {mn_ms:>8.1f}" if mn_s else f"{mn_note:>17}")
              + f" | {c_ms / b_ms:>10.2f}x " + (f"{mn_ms / c_ms:>13.1f}x" if mn_ms else ""))
        ok &= count == n
    left = leaked()
    if left:
        print(f"LEAKED: {left}")
    return 0 if ok and not left else 1


if __name__ == "__main__":
    sys.exit(main())
