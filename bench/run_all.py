"""Run every benchmark in one go (root; several minutes with Mininet at N=1000).

    sudo .venv/bin/python bench/run_all.py [--quick]

--quick uses small sizes and skips Mininet: a smoke test that the benchmarks still run.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))

FULL = [
    ("engine build/teardown (issue: engine)", ["bench_build.py", "--sizes", "10,100,1000"]),
    ("reachability truth tables (issue: checks)", ["bench_truth.py", "--sizes", "10,50,100"]),
    ("TUI first screen and responsiveness", ["bench_tui.py"]),
    ("TUI live state latency", ["bench_tui_live.py"]),
    ("userland proxy: 100 published ports in one process", ["bench_proxy.py", "--ports", "100"]),
    ("grading a class (issue 9: 30 submissions < 60 s)", ["bench_grade.py", "--learners", "30",
                                                          "--broken", "10"]),
    ("full-kernel VM: boot, guest/host slowdown, CI share", ["bench_vm.py", "--ci-share"]),
    ("terminal echo while watch mode checks (issue 17)", ["bench_terminal_echo.py",
                                                          "--keys", "200"]),
    ("terminal echo, watch mode on, machine loaded (issue 17)",
     ["bench_terminal_echo.py", "--keys", "200", "--load", "2"]),
    ("macvlan build/teardown and per-driver throughput (issue: macvlan)",
     ["bench_macvlan.py", "--sizes", "100,1000", "--iperf"]),
    ("overlay: 3 hosts x 30, truth table, convergence vs swarm, iperf3 (issue: overlay)",
     ["bench_overlay.py"]),
    ("drivers as plugins: protocol, engine, shared firewall", ["bench_plugin.py"]),
    ("DNS codec next to a probe's round trip", ["bench_dns.py"]),
    ("IPVS: 1000 requests through a service VIP, in the VM (issue 13)", ["bench_ipvs.py"]),
]
QUICK = [
    ("engine build/teardown", ["bench_build.py", "--sizes", "10,50", "--no-mininet"]),
    ("reachability truth tables", ["bench_truth.py", "--sizes", "10,20", "--no-mininet"]),
    ("userland proxy", ["bench_proxy.py", "--ports", "100"]),
    ("grading a class", ["bench_grade.py", "--learners", "4", "--broken", "1"]),
    ("full-kernel VM boot", ["bench_vm.py", "--runs", "2", "--file", "tests/test_ipam.py"]),
    ("macvlan build/teardown", ["bench_macvlan.py", "--sizes", "20"]),
    ("overlay", ["bench_overlay.py", "--hosts", "2", "--per-host", "5", "--no-swarm",
                 "--no-iperf"]),
    ("drivers as plugins", ["bench_plugin.py", "--sandboxes", "5", "--networks", "1,5",
                            "--calls", "50"]),
    ("DNS codec", ["bench_dns.py", "--queries", "50"]),
    ("terminal echo", ["bench_terminal_echo.py", "--keys", "20", "--load", "1"]),
    ("IPVS VIP (in the VM)", ["bench_ipvs.py", "--requests", "100"]),
]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    failed = []
    for title, argv in QUICK if args.quick else FULL:
        script = os.path.join(HERE, argv[0])
        if not os.path.exists(script):
            print(f"== {title}: {argv[0]} missing, skipped")
            continue
        print(f"== {title}", flush=True)
        if subprocess.call([sys.executable, script, *argv[1:]]) != 0:
            failed.append(title)
    if failed:
        print(f"failed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
