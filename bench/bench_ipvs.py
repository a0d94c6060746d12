"""1000 requests through a service VIP (issue 13: under 10 s of guest time), and where it goes.

    python bench/bench_ipvs.py [--requests 1000] [--here]

This CI kernel has no IPVS, so by default the script runs itself inside the full-kernel VM
(``cnmlab vm run``; its emulated CPU makes Python ~10x slower); ``--here`` runs it in this kernel
(the guest side, or a machine with IPVS). One lab: one host, network app, client cl, service web
(3 tasks, VIP on lb-app). Measured, each as wall time in the kernel it runs in:

1. ``lb-spread`` with N requests, as a lab step runs it (echo servers started in the 3 tasks,
   N connections, the distribution table), and the table itself;
2. the same N connections to the VIP as a bare loop (servers running): sockets + IPVS alone;
3. N connections straight to one task (no IPVS): what the VIP itself adds is 2 minus 3;
4. the check's own overhead: 1 minus 2 (starting and stopping the servers, counting).

If 4 is small next to 2, the time is the kernel's and Python's socket work under emulation,
not cnmlab's code.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, REPO)

from cnmlab.kernel import features  # noqa: E402


def inside(n: int) -> int:
    from cnmlab.checks import library, probes
    from cnmlab.checks.kinds import run_check
    from cnmlab.checks.nsref import NsRef
    from cnmlab.checks.targets import EngineTarget
    from cnmlab.lab import Lab

    lab = Lab(f"bipvs{os.getpid() % 100000}", upstream=False)
    try:
        t0 = time.perf_counter()
        h = lab.add_host("host")
        h.network_create("app", subnet="10.76.0.0/24")
        h.run("cl", "app")
        svc = h.service_create("web", "app", replicas=3, port=80)
        build = time.perf_counter() - t0
        tasks = ["web.1", "web.2", "web.3"]
        cl = NsRef(name=lab.sandbox("cl").netns)

        def bare(addr: str) -> tuple[float, list[str | None]]:
            servers = [probes.EchoServer(NsRef(name=lab.sandbox(x).netns), "tcp", 80,
                                         name=x).start() for x in tasks]
            try:
                t0 = time.perf_counter()
                got = library._spread_requests(cl, addr, 80, n, 2.0)
                return time.perf_counter() - t0, got
            finally:
                for s in servers:
                    s.stop()

        # the bare loop first: the first phase pays for cold caches (ARP, IPVS's first
        # entries), which would otherwise be charged to the check
        loop, via_vip = bare(svc.vip or "")
        t0 = time.perf_counter()
        r = run_check(EngineTarget(lab), {"lb-spread": {
            "from": "cl", "vip": svc.vip, "port": 80, "backends": tasks, "requests": n,
            "tolerance": 0.1}})
        check = time.perf_counter() - t0
        plain, direct = bare(lab.sandbox("web.1").ip())
        print(f"kernel: {os.uname().release}; lab built in {build:.2f} s")
        print(f"1. lb-spread, {n} requests through {svc.vip}:80: {check:.2f} s "
              f"({'PASS' if r.ok else 'FAIL: ' + r.reason})")
        if r.table is not None:
            print(r.table.render_text())
        print(f"2. {n} bare connections to the VIP: {loop:.2f} s "
              f"({sum(a is not None for a in via_vip)} answered)")
        print(f"3. {n} connections straight to web.1 (no IPVS): {plain:.2f} s "
              f"({sum(a is not None for a in direct)} answered)")
        print(f"   IPVS adds {loop - plain:+.2f} s over {n} connections "
              f"({1000 * (loop - plain) / n:+.2f} ms each)")
        over = check - loop
        print(f"4. the check's own overhead (1 - 2): {over:+.2f} s"
              + (" (below zero: the phases' noise on a loaded machine is larger than the "
                 "check's bookkeeping)" if over < 0 else ""))
        load = os.getloadavg()[0]
        print(f"   guest load average: {load:.1f}")
        return 0 if r.ok else 1
    finally:
        lab.down()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=1000)
    ap.add_argument("--here", action="store_true", help="run in this kernel, not the VM")
    args = ap.parse_args()
    if args.here or features.has("ipvs"):
        return inside(args.requests)
    print("this kernel has no IPVS: running in the full-kernel VM (cnmlab vm run)", flush=True)
    t0 = time.perf_counter()
    rc = subprocess.call([sys.executable, "-m", "cnmlab.cli", "vm", "run", "--", sys.executable,
                          os.path.abspath(__file__), "--here", "--requests",
                          str(args.requests)], cwd=REPO)
    print(f"VM run, boot included: {time.perf_counter() - t0:.1f} s; host load average "
          f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    return rc


if __name__ == "__main__":
    sys.exit(main())
