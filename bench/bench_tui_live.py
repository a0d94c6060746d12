"""How long from a kernel change to the TUI showing it? Link creation -> watcher -> LiveState.

    python bench/bench_tui_live.py [--trials 20]

Builds a small lab (one host, one sandbox), mounts ``LiveState(lab, "h1")`` in a headless
Textual app (``App.run_test``) and, next to it, a bare ``NetlinkWatcher`` on the host's
namespace in its own thread. Each trial creates a bridge in the host's namespace (from a
thread: pyroute2's sync API cannot run on the asyncio thread) and records

* watcher: creation call returned -> the watcher yields the batch naming the new link
  (includes the watcher's ``settle`` quiet time, 20 ms, which merges floods);
* widget: creation call returned -> LiveState's Interfaces section holds the new link (the
  thread worker re-read the namespace with Netlink, posted a message, the UI thread rendered).

Prints median and max over the trials; the target is < 250 ms. Needs root; the lab is removed
even on failure.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import threading
import time

from textual.app import App

from cnmlab.kernel.netlink import Netlink
from cnmlab.lab import Lab
from cnmlab.tui.livestate import LiveState
from cnmlab.tui.watch import NetlinkWatcher

TARGET_MS = 250.0


def _stats(name: str, values: list[float]) -> str:
    ms = [v * 1000 for v in values]
    return (f"{name:<8} median {statistics.median(ms):6.1f} ms   max {max(ms):6.1f} ms   "
            f"min {min(ms):6.1f} ms   (n={len(ms)})")


async def _run(lab_name: str, host_ns: str, trials: int) -> tuple[list[float], list[float]]:
    seen: dict[str, float] = {}
    watcher = NetlinkWatcher(host_ns)
    watcher.ready()

    def watch() -> None:
        for batch in watcher.batches():
            now = time.perf_counter()
            for e in batch:
                if e.kind == "link" and e.action == "new":
                    seen.setdefault(e.name, now)

    th = threading.Thread(target=watch, daemon=True)
    th.start()

    class Bench(App):
        def compose(self):
            yield LiveState(lab_name, "h1")

    w_lat: list[float] = []
    ui_lat: list[float] = []
    app = Bench()
    try:
        async with app.run_test(size=(80, 24)) as pilot:
            live = app.query_one(LiveState)
            while not (live.updates and live.firewall_dump):
                await pilot.pause(0.01)
            section = live.query_one("#live-interfaces")
            nl_box: list[Netlink] = []

            def make(name: str) -> float:
                if not nl_box:
                    nl_box.append(Netlink(host_ns))
                nl_box[0].add_bridge(name)
                return time.perf_counter()

            for i in range(trials):
                name = f"bench{i}"
                await pilot.pause(0.25)  # let the previous trial's refreshes settle
                t0 = await asyncio.to_thread(make, name)
                deadline = t0 + 5
                while name not in section.plain and time.perf_counter() < deadline:
                    await asyncio.sleep(0.001)
                t_ui = time.perf_counter()
                if name not in section.plain:
                    raise SystemExit(f"trial {i}: the widget never showed {name}")
                while name not in seen and time.perf_counter() < deadline:
                    await asyncio.sleep(0.001)
                ui_lat.append(t_ui - t0)
                w_lat.append(seen[name] - t0)
            await asyncio.to_thread(lambda: nl_box and nl_box[0].close())
    finally:
        watcher.stop()
        th.join(2)
        watcher.close()
    return w_lat, ui_lat


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=20)
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("needs root (creates namespaces)", file=sys.stderr)
        return 2
    lab = Lab(f"bt{os.getpid()}")
    try:
        host = lab.add_host("h1")
        host.run("c1")
        host_ns = host.netns
        lab.close()  # its netlink sockets belong to this (main) thread; the bench uses threads
        w, ui = asyncio.run(_run(lab.name, host_ns, args.trials))
    finally:
        lab.down()
    print(f"link created in {host_ns} -> seen, {args.trials} trials:")
    print(_stats("watcher", w))
    print(_stats("widget", ui))
    ok = max(ui) * 1000 < TARGET_MS
    print(f"target < {TARGET_MS:.0f} ms: {'met' if ok else 'NOT met'} (max widget latency)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
