"""How fast is a full reachability matrix? cnmlab's ping_matrix against Mininet's pingall.

    python bench/bench_truth.py [--sizes 10,50,100] [--no-mininet]

For each N: build N sandboxes on one bridge (in-process, cnmlab.kernel.netns and .netlink), flush
the neighbour caches, time ``ping_matrix`` over all N*(N-1) ordered pairs and check every cell is
True; then take one sandbox's link down and check that exactly its row and column turn False.
Then, if Debian's ``mn`` is installed, time ``mn --topo single,N --switch lxbr --controller none
--test pingall`` for the same N. Mininet runs inside throwaway network, mount and PID namespaces
(``unshare --net --mount --pid --fork --mount-proc``): its links, its bridges and its cleanup by
process name (``mn -c``, pkill) cannot see anything outside. Needs root. Everything it makes is
removed, and the root namespace's neighbour-table limits are restored, even on failure.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

from cnmlab.checks import probes
from cnmlab.checks.nsref import NsRef
from cnmlab.checks.truth import TruthTable
from cnmlab.kernel import neigh, netns, sysctl
from cnmlab.kernel.netlink import Netlink

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import mininet  # noqa: E402  (bench/mininet.py)

PREFIX = f"cnmb-{os.getpid()}-"


def _no_ipv6(name: str) -> None:
    sysctl.disable_ipv6(name)


def ip_of(i: int) -> str:
    return f"10.231.{(i + 2) // 256}.{(i + 2) % 256}"


def build(n: int) -> tuple[dict[str, NsRef], dict[str, str]]:
    host = PREFIX + "host"
    netns.create(host)
    _no_ipv6(host)
    refs, ips = {}, {}
    with Netlink(host) as nl:
        nl.add_bridge("br0")
        nl.set_link("br0", up=True)
        for i in range(n):
            name = f"s{i}"
            ns = PREFIX + name
            netns.create(ns)
            _no_ipv6(ns)
            fd = netns.open_fd(ns)
            try:
                nl.add_veth(f"v{i}", "eth0", peer_ns_fd=fd)
            finally:
                os.close(fd)
            nl.set_link(f"v{i}", master="br0", up=True)
            with Netlink(ns) as sl:
                sl.set_link("lo", up=True)
                sl.set_link("eth0", up=True)
                sl.add_address("eth0", ip_of(i) + "/16")
            refs[name] = NsRef(name=ns)
            ips[name] = ip_of(i)
    return refs, ips


def teardown() -> None:
    for name in netns.list_names():
        if name.startswith(PREFIX):
            netns.delete(name)


def bench_cnmlab(n: int) -> dict:
    t = time.perf_counter()
    refs, ips = build(n)
    t_build = time.perf_counter() - t
    for r in refs.values():
        with Netlink(r.name) as sl:
            sl.flush_neighbours()
    names = list(refs)
    t = time.perf_counter()
    res = probes.ping_results(refs, ips, timeout=3.0)
    t_ping = time.perf_counter() - t
    expected = {p: True for p in res}
    table = TruthTable.from_results(names, expected, res, title=f"all-reach, N={n}")
    if table.wrong:
        print(table.render_text(color=sys.stdout.isatty()) if n <= 20 else table.summary)
        for p in table.wrong[:10]:
            print("  ", p, res[p].observed)
        raise SystemExit(f"N={n}: {len(table.wrong)} cells wrong in the all-reach matrix")
    # false-result check: one sandbox down, exactly its row and column blocked
    down = f"s{n // 2}"
    with Netlink(refs[down].name) as sl:
        sl.set_link("eth0", up=False)
    t = time.perf_counter()
    res2 = probes.ping_results(refs, ips, timeout=1.0)
    t_ping2 = time.perf_counter() - t
    expected2 = {p: down not in p for p in res2}
    table2 = TruthTable.from_results(names, expected2, res2, title=f"{down} down, N={n}")
    if table2.wrong:
        print(table2.summary)
        for p in table2.wrong[:10]:
            print("  ", p, res2[p].observed)
        raise SystemExit(f"N={n}: {len(table2.wrong)} cells wrong with {down} down")
    return {"build": t_build, "ping": t_ping, "ping_down": t_ping2, "pairs": len(res)}


def bench_mininet(n: int) -> tuple[float | None, str]:
    return mininet.run(n, "pingall")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="10,50,100")
    ap.add_argument("--no-mininet", action="store_true")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("needs root", file=sys.stderr)
        return 2
    sizes = [int(x) for x in args.sizes.split(",") if x]
    before = neigh.limits()
    rows = []
    try:
        for n in sizes:
            restore = probes.ensure_neighbour_capacity(2 * n * (n - 1))
            try:
                try:
                    c = bench_cnmlab(n)
                finally:
                    teardown()
                print(f"N={n}: built in {c['build']:.2f} s; ping_matrix {c['pairs']} pairs "
                      f"all reach in {c['ping']:.3f} s; with s{n // 2} down, exactly its row "
                      f"and column blocked ({c['ping_down']:.2f} s, 1.0 s timeout)", flush=True)
                if args.no_mininet:
                    mn_s, mn_note = None, "skipped (--no-mininet)"
                else:
                    mn_s, mn_note = bench_mininet(n)
                print(f"N={n}: mininet pingall: "
                      f"{f'{mn_s:.2f} s, ' if mn_s else ''}{mn_note}", flush=True)
            finally:
                restore()
            rows.append((n, c, mn_s, mn_note))
    finally:
        teardown()
        after = neigh.limits()
        if after != before:
            print(f"warning: neighbour limits {after} differ from {before}", file=sys.stderr)
    print()
    print(f"{'N':>5} {'pairs':>6} {'build s':>8} {'cnmlab s':>9} {'mininet s':>10} {'ratio':>7}"
          "   (cnmlab s = ping_matrix; mininet s = whole `mn --test pingall` run)")
    for n, c, mn_s, note in rows:
        ratio = f"{mn_s / c['ping']:.0f}x" if mn_s else "-"
        mns = f"{mn_s:.2f}" if mn_s else "-"
        print(f"{n:>5} {c['pairs']:>6} {c['build']:>8.2f} {c['ping']:>9.3f} {mns:>10} {ratio:>7}"
              + ("" if mn_s else f"   mininet: {note}"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
