"""Build and tear down N macvlan sandboxes: cnmlab's macvlan driver vs its bridge vs a bare loop.

    python bench/bench_macvlan.py [--sizes 100,1000] [--iperf] [--iperf-only]

Each macvlan sandbox is a network namespace holding a macvlan child of the host's NIC ``eth0``
(born inside the sandbox, with Docker's 02:42 MAC), an address and its links up. cnmlab runs
``docker run --network lan`` through the whole engine (CNM lifecycle, IPAM, Docker's naming,
state, and the embedded DNS files Docker gives a user-defined network); the bare loop does only
the kernel work with pyroute2 directly, the cheapest way known here (in-process namespaces,
child created straight in the target namespace, IPv6 off). The bridge column is the same
engine on docker0 (veth + bridge), for comparison. Target: macvlan within 1.5x of the bare loop.
Every column times the same thing: building the N sandboxes (the host, its NIC and the network
made before the clock starts; cnmlab's embedded-DNS resolver starts inside the timed part),
then tearing everything down.

``--iperf``: one TCP stream between two sandboxes of one host, per driver (veth + bridge,
macvlan, and ipvlan where the kernel has it), with iperf3: the table lab 06 shows.
Needs root; removes everything it made.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time

from pyroute2 import IPRoute

from cnmlab.kernel import features, netns, sysctl
from cnmlab.lab import Lab

SUBNET, GATEWAY, RANGE = "10.20.0.0/16", "10.20.0.1", "10.20.128.0/17"


def bare_pyroute2(n: int) -> tuple[float, float]:
    """The kernel work alone: a host with a NIC (a veth), N namespaces each with a macvlan."""
    prefix = f"cnmbmv{os.getpid()}-"
    host = prefix + "host"
    names = []
    netns.create(host)
    sysctl.disable_ipv6(host)
    with netns.entered(host):
        ip = IPRoute()
    try:
        ip.link("add", ifname="eth0", kind="veth", peer={"ifname": "wire0"})
        parent = ip.link_lookup(ifname="eth0")[0]
        ip.link("set", index=parent, state="up")
        t0 = time.perf_counter()  # the N sandboxes, as in every column (setup not counted)
        for i in range(n):
            ns = f"{prefix}s{i}"
            names.append(ns)
            netns.create(ns)
            sysctl.disable_ipv6(ns)
            fd = netns.open_fd(ns)
            a, b = 128 + (i + 2) // 256, (i + 2) % 256
            ip.link("add", ifname=f"mv{i}", kind="macvlan", link=parent, macvlan_mode="bridge",
                    net_ns_fd=fd, address=f"02:42:0a:14:{a:02x}:{b:02x}")
            os.close(fd)
            with netns.entered(ns):
                sip = IPRoute()
            e = sip.link_lookup(ifname=f"mv{i}")[0]
            sip.link("set", index=e, ifname="eth0", state="up")
            sip.addr("add", index=e, address=f"10.20.{a}.{b}", prefixlen=16)
            sip.route("add", dst="0.0.0.0/0", gateway=GATEWAY)
            sip.link("set", index=1, state="up")
            sip.close()
        built = time.perf_counter() - t0
    finally:
        ip.close()
        t1 = time.perf_counter()
        for ns in names + [host]:
            netns.delete(ns)
    return built, time.perf_counter() - t1


def _rack(tag: str) -> tuple[Lab, object]:
    lab = Lab(f"bmv{tag}{os.getpid()}", upstream=False)
    lab.add_underlay("lan", subnet=SUBNET)
    return lab, lab.add_host("h1", underlay="lan")


def cnmlab_macvlan(n: int, dns: bool = True) -> tuple[float, float, int]:
    """``dns=False`` leaves the embedded resolver unstarted (the sandboxes' resolv.conf is
    still written): what the resolver's per-sandbox setup costs, measured apart."""
    lab, host = _rack("m" if dns else "n")
    if not dns:
        lab._serve_dns = lambda: None  # type: ignore[method-assign]
        lab._announce_dns = lambda sb: None  # type: ignore[method-assign]
    try:
        host.network_create("lan", "macvlan", subnet=SUBNET, gateway=GATEWAY, ip_range=RANGE,
                            options={"parent": "eth0"})
        t0 = time.perf_counter()  # the N sandboxes (the resolver's start included)
        with lab.batch():
            for i in range(n):
                host.run(f"s{i}", "lan")
        built = time.perf_counter() - t0
        count = sum(1 for _ in lab.sandboxes())
    finally:
        t1 = time.perf_counter()
        lab.down()
    return built, time.perf_counter() - t1, count


def cnmlab_bridge(n: int) -> tuple[float, float]:
    lab = Lab(f"bmvb{os.getpid()}", upstream=False)
    try:
        host = lab.add_host("h1")
        t0 = time.perf_counter()
        with lab.batch():
            for i in range(n):
                host.run(f"s{i}")  # docker0, as bench_build.py
        built = time.perf_counter() - t0
    finally:
        t1 = time.perf_counter()
        lab.down()
    return built, time.perf_counter() - t1


# ---- throughput ----------------------------------------------------------------------------

def _iperf(server_ns: str, client_ns: str, ip: str, seconds: int) -> float:
    """Gbit/s of one TCP stream from client to server (iperf3, JSON output)."""
    srv = subprocess.Popen(["ip", "netns", "exec", server_ns, "iperf3", "-s", "-1", "-B", ip],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30  # the server needs a moment to listen (busy machine)
        while True:
            cp = subprocess.run(["ip", "netns", "exec", client_ns, "iperf3", "-c", ip, "-t",
                                 str(seconds), "-J"], capture_output=True, text=True,
                                timeout=seconds + 30)
            try:
                data = json.loads(cp.stdout)
            except ValueError:
                data = {"error": cp.stderr.strip() or "no output"}
            if cp.returncode == 0 and "sum_received" in data.get("end", {}):
                return data["end"]["sum_received"]["bits_per_second"] / 1e9
            if time.monotonic() > deadline:
                raise RuntimeError(f"iperf3 to {ip}: {data.get('error', 'no result')}")
            time.sleep(0.2)
    finally:
        srv.kill()
        srv.wait()


def throughput(seconds: int) -> list[tuple[str, float | None, str]]:
    rows: list[tuple[str, float | None, str]] = []
    lab = Lab(f"bmvi{os.getpid()}", upstream=False)
    try:
        lab.add_underlay("lan", subnet=SUBNET)
        h = lab.add_host("h1", underlay="lan")
        h.network_create("app", subnet="10.30.0.0/24")
        a, b = h.run("b1", "app"), h.run("b2", "app")
        rows.append(("veth + bridge", _iperf(b.netns, a.netns, b.ip(), seconds), ""))
        h.network_create("lan", "macvlan", subnet=SUBNET, gateway=GATEWAY, ip_range=RANGE,
                         options={"parent": "eth0"})
        a, b = h.run("m1", "lan"), h.run("m2", "lan")
        rows.append(("macvlan (bridge mode)", _iperf(b.netns, a.netns, b.ip(), seconds), ""))
        if features.has("ipvlan"):
            h2 = lab.add_host("h2", underlay="lan")
            h2.network_create("lan", "ipvlan", subnet=SUBNET, gateway=GATEWAY,
                              ip_range="10.20.64.0/18", options={"parent": "eth0"})
            a, b = h2.run("i1", "lan"), h2.run("i2", "lan")
            rows.append(("ipvlan (l2)", _iperf(b.netns, a.netns, b.ip(), seconds), ""))
        else:
            rows.append(("ipvlan (l2)", None, "this kernel lacks ipvlan: run in the VM lane"))
    finally:
        lab.down()
    return rows


def leaked() -> list[str]:
    pid = str(os.getpid())
    return [n for n in netns.list_names() if pid in n]


def _median(runs: list[tuple[float, float]]) -> tuple[float, float]:
    """The (build, teardown) of the run whose total is the median."""
    return sorted(runs, key=sum)[len(runs) // 2]


def _settle(seconds: float = 2.0) -> None:
    """Let the kernel finish freeing the namespaces just deleted before the next variant."""
    time.sleep(seconds)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="100,1000")
    ap.add_argument("--repeat", type=int, default=3,
                    help="runs per variant (interleaved); the medians are shown")
    ap.add_argument("--iperf", action="store_true", help="also the per-driver throughput table")
    ap.add_argument("--iperf-only", action="store_true")
    ap.add_argument("--seconds", type=int, default=3, help="iperf3 duration per driver")
    args = ap.parse_args()
    ok = True
    if not args.iperf_only:
        print(f"ms per sandbox, build + teardown, median of {args.repeat}; macvlan = docker run "
              "on a macvlan network (with Docker's embedded DNS), -dns = the resolver left "
              "unstarted")
        print(f"{'N':>5} | {'macvlan build':>13} {'down':>6} {'ms/sb':>6} | {'-dns':>6} | "
              f"{'bare build':>10} {'down':>6} {'ms/sb':>6} | {'bridge':>6} | macvlan/bare  "
              f"-dns/bare  bridge/bare")
        for n in [int(s) for s in args.sizes.split(",")]:
            # variants interleaved, each run args.repeat times, medians shown: deleting a
            # thousand namespaces goes on in the kernel after the call returns (the netns
            # cleanup worker), and would otherwise land on whichever variant runs next
            runs: dict[str, list[tuple[float, float]]] = {"m": [], "n": [], "b": [], "r": []}
            for _ in range(args.repeat):
                mb, md, count = cnmlab_macvlan(n)
                runs["m"].append((mb, md))
                _settle()
                nb, nd, count2 = cnmlab_macvlan(n, dns=False)
                runs["n"].append((nb, nd))
                _settle()
                runs["b"].append(bare_pyroute2(n))
                _settle()
                runs["r"].append(cnmlab_bridge(n))
                _settle()
                ok &= count == n and count2 == n
            (mb, md), (nb, nd), (bb, bd), (rb, rd) = (_median(runs[k]) for k in "mnbr")
            m_ms, n_ms, b_ms, r_ms = ((mb + md) / n * 1000, (nb + nd) / n * 1000,
                                      (bb + bd) / n * 1000, (rb + rd) / n * 1000)
            print(f"{n:>5} | {mb:>12.2f}s {md:>5.2f}s {m_ms:>6.1f} | {n_ms:>6.1f} | "
                  f"{bb:>9.2f}s {bd:>5.2f}s {b_ms:>6.1f} | {r_ms:>6.1f} | {m_ms / b_ms:>11.2f}x "
                  f"{n_ms / b_ms:>9.2f}x {r_ms / b_ms:>11.2f}x"
                  + ("" if m_ms / b_ms <= 1.5 else "   (over the 1.5x target)"))
    if args.iperf or args.iperf_only:
        if shutil.which("iperf3") is None:
            print("iperf3 is not installed (apt-get install iperf3)")
            return 1
        print(f"\none TCP stream between two sandboxes of one host, iperf3 -t {args.seconds}:")
        print(f"  {'driver':<24} {'Gbit/s':>7}")
        for name, gbps, note in throughput(args.seconds):
            print(f"  {name:<24} " + (f"{gbps:>7.1f}" if gbps is not None else f"{'-':>7}  "
                                       f"{note}"))
    left = leaked()
    if left:
        print(f"LEAKED: {left}")
    return 0 if ok and not left else 1


if __name__ == "__main__":
    sys.exit(main())
