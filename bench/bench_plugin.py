"""Drivers as plugins: what the remote protocol and the shared firewall cost.

    python bench/bench_plugin.py [--sandboxes 20] [--networks 1,10,30] [--calls 300]

1. One plugin call (``Plugin.Activate``) over the unix socket, SDK server to cnmlab's client:
   median and 95th percentile.
2. ``docker run``/``rm`` through the engine, N sandboxes on one network, with cnmlab's bridge
   driver built in and the same driver served as a plugin (``cnmlab plugin serve --driver``):
   the protocol's overhead per sandbox (five calls each way).
3. Programming the host firewall with K bridge networks: the reconcile that keeps other
   writers' rules (``cnmlab.firewall.reconcile``), with the namespace to itself and with a
   plugin's rules beside it, against the old whole-table ``iptables-restore``.

Needs root; removes everything it made.
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

from cnmlab.kernel import nsexec
from cnmlab.constants import OPT_ICC
from cnmlab.firewall.iptables import IptablesFirewall
from cnmlab.lab import Lab
from cnmlab.plugin import discovery
from cnmlab.plugin import protocol as P
from cnmlab.plugin.adapter import builtin_plugin
from cnmlab.plugin.client import PluginClient
from cnmlab.plugin.sdk import NetworkDriver, PluginServer

PID = os.getpid()


def bench_calls(n: int) -> None:
    name = f"benchcall{PID}"
    srv = PluginServer(NetworkDriver(), discovery.socket_path(name), log=False).start()
    try:
        client = PluginClient(name, srv.socket_path)
        times = []
        for _ in range(n):
            t = time.perf_counter()
            client.call(P.ACTIVATE)
            times.append((time.perf_counter() - t) * 1000)
        times.sort()
        print(f"  one call: median {statistics.median(times):.2f} ms, "
              f"p95 {times[int(len(times) * 0.95)]:.2f} ms ({n} calls)")
    finally:
        srv.close()


def _run_rm(host, network: str, n: int) -> tuple[float, float]:
    t0 = time.perf_counter()
    for i in range(n):
        host.run(f"s{i}", network)
    t1 = time.perf_counter()
    for i in range(n):
        host.rm(f"s{i}")
    return (t1 - t0) / n * 1000, (time.perf_counter() - t1) / n * 1000


def bench_engine(n: int) -> None:
    lab = Lab(f"bpl{PID}")
    name = f"benchbr{PID}"
    plugin = srv = None
    try:
        host = lab.add_host("h1")
        plugin = builtin_plugin("bridge", host.netns, name)
        srv = PluginServer(plugin, discovery.socket_path(name), log=False).start()
        host.network_create("builtin", subnet="10.100.0.0/24")
        host.network_create("viaplugin", name, subnet="10.101.0.0/24")
        b_run, b_rm = _run_rm(host, "builtin", n)
        p_run, p_rm = _run_rm(host, "viaplugin", n)
        print(f"  run per sandbox: built-in {b_run:.1f} ms, as a plugin {p_run:.1f} ms "
              f"(+{p_run - b_run:.1f} ms); rm: {b_rm:.1f} ms vs {p_rm:.1f} ms ({n} sandboxes)")
    finally:
        lab.down()
        if srv is not None:
            srv.close()
        if plugin is not None:
            plugin.parts[0].close()


def _full_restore(fw: IptablesFirewall, host) -> None:
    nsexec.run(host.netns, ["iptables-restore"], input=fw.render(host))


def bench_firewall(sizes: list[int]) -> None:
    for k in sizes:
        lab = Lab(f"bfw{PID}")
        name = f"benchfw{PID}"
        plugin = srv = None
        try:
            host = lab.add_host("h1")
            with lab.batch():
                for i in range(k):
                    host.network_create(f"n{i}", subnet=f"10.{110 + i // 200}.{i % 200}.0/24")
            fw, model = host.controller.fw, host.model
            n0 = model.networks["n0"]
            reps = 6

            def timed(install) -> float:
                """One change (n0's icc flips: one rule each way), then install it."""
                t = time.perf_counter()
                for i in range(reps):
                    n0.options[OPT_ICC] = "false" if i % 2 == 0 else "true"
                    install()
                return (time.perf_counter() - t) / reps * 1000

            alone = timed(lambda: fw.program(model))
            old = timed(lambda: _full_restore(fw, model))
            fw.program(model)
            plugin = builtin_plugin("bridge", host.netns, name)
            srv = PluginServer(plugin, discovery.socket_path(name), log=False).start()
            host.network_create("shared", name, subnet="10.199.0.0/24")
            shared = timed(lambda: fw.program(model))
            print(f"  program, {k} networks: reconcile alone {alone:.1f} ms, with a plugin's "
                  f"rules beside {shared:.1f} ms; old whole-table restore {old:.1f} ms")
        finally:
            lab.down()
            if srv is not None:
                srv.close()
            if plugin is not None:
                plugin.parts[0].close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sandboxes", type=int, default=20)
    ap.add_argument("--networks", default="1,10,30")
    ap.add_argument("--calls", type=int, default=300)
    args = ap.parse_args()
    print("plugin protocol:")
    bench_calls(args.calls)
    print("engine through a plugin:")
    bench_engine(args.sandboxes)
    print("host firewall:")
    bench_firewall([int(x) for x in args.networks.split(",")])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
