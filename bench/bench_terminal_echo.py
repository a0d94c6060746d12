"""Keystroke -> echo in the embedded terminal, while watch mode keeps running checks.

    python bench/bench_terminal_echo.py [--keys 60]

Opens lab 01 in the workshop app (headless ``App.run_test``, 120x40, lab ``lab01-b<pid>``),
turns watch mode on with a 0.1 s poll (so checks run back to back: probes, netlink reads and
the result rendering compete with the terminal for the UI thread and the GIL), focuses the
terminal beside the step (a real bash on a pty in the red sandbox) and types ``--keys``
characters one at a time. For each key it records

* echo: key pressed (``pilot.press``) -> bash's echo fed into the pyte screen;
* painted: key pressed -> the widget's line repainted after that echo (``render_line``).

Prints median, 95th percentile and max, the number of checks that ran meanwhile, and whether
the target (painted max < 50 ms) was met. Needs root; the lab is removed even on failure.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time

TARGET_MS = 50.0


async def run(n_keys: int) -> tuple[list[float], list[float], int]:
    from cnmlab.tui.app import CnmlabApp
    from cnmlab.tui.screens import LabListScreen, StepScreen
    from cnmlab.tui.terminal import TerminalView

    features = {"veth": True, "bridge": True, "iptables": True}
    app = CnmlabApp(instance_suffix=f"b{os.getpid()}", features=features, watch_poll=0.1)
    echo: list[float] = []
    painted: list[float] = []
    async with app.run_test(size=(120, 40)) as pilot:
        while not isinstance(app.screen, LabListScreen):
            await pilot.pause(0.05)
        await pilot.press("enter")
        deadline = time.monotonic() + 120
        while not isinstance(app.screen, StepScreen):
            assert time.monotonic() < deadline, "lab 01 did not open"
            await pilot.pause(0.05)
        screen = app.screen
        await pilot.pause(0.5)
        await pilot.press("w")  # watch mode: checks keep running
        await pilot.press("i")
        view = screen.pane.current
        assert isinstance(view, TerminalView)
        deadline = time.monotonic() + 20
        while "cnmlab" not in view.text():
            assert time.monotonic() < deadline, f"no prompt: {view.text()!r}"
            await pilot.pause(0.05)
        print("terminal ready", flush=True)
        deadline = time.monotonic() + 30
        while screen.checks_done < 1:
            assert time.monotonic() < deadline, "watch mode ran no check"
            await pilot.pause(0.05)
        print("watching", flush=True)
        checks_before = screen.checks_done

        marks: dict[str, float] = {}
        feed, render_line = view.feed, view.render_line

        def timed_feed(data: bytes) -> None:
            feed(data)
            marks.setdefault("echo", time.perf_counter())

        def timed_render(y: int):  # type: ignore[no-untyped-def]
            strip = render_line(y)
            if "echo" in marks and y == view.screen_model.cursor.y:
                marks.setdefault("painted", time.perf_counter())
            return strip

        view.feed = timed_feed  # type: ignore[method-assign]
        view.render_line = timed_render  # type: ignore[method-assign]
        for i in range(n_keys):
            key = "x" if i % 2 == 0 else "backspace"
            marks.clear()
            t0 = time.perf_counter()
            await pilot.press(key)
            end = t0 + 2
            while "painted" not in marks and time.perf_counter() < end:
                await asyncio.sleep(0.0005)
            if "painted" not in marks:
                raise SystemExit(f"key {i}: no echo painted within 2 s")
            echo.append(marks["echo"] - t0)
            painted.append(marks["painted"] - t0)
            await asyncio.sleep(0.02)  # a fast typist: 50 keys a second at most
        checks = screen.checks_done - checks_before
        screen.watching = False
    return echo, painted, checks


def _stats(name: str, values: list[float]) -> str:
    ms = sorted(v * 1000 for v in values)
    p95 = ms[int(0.95 * (len(ms) - 1))]
    return (f"{name:<8} median {statistics.median(ms):6.1f} ms   p95 {p95:6.1f} ms   "
            f"max {max(ms):6.1f} ms   (n={len(ms)})")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--keys", type=int, default=60)
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("needs root (creates namespaces)", file=sys.stderr)
        return 2
    os.environ.setdefault("CNMLAB_PROGRESS", f"/tmp/cnmlab-bench-{os.getpid()}.json")
    from cnmlab import state
    from cnmlab.workshop import labfile
    from cnmlab.workshop.runner import LabRun

    name = f"lab01-b{os.getpid()}"
    try:
        echo, painted, checks = asyncio.run(run(args.keys))
    finally:
        if state.exists(name):
            LabRun(labfile.get("01"), name).stop()
        try:
            os.unlink(os.environ["CNMLAB_PROGRESS"])
        except OSError:
            pass
    print(f"keystroke -> echo in the embedded terminal, watch mode on ({checks} check runs "
          f"during {len(echo)} keys):")
    print(_stats("echo", echo))
    print(_stats("painted", painted))
    if os.environ.get("BENCH_VERBOSE"):
        print(" ".join(f"{v * 1000:.0f}" for v in painted))
    ok = max(painted) * 1000 < TARGET_MS
    print(f"target < {TARGET_MS:.0f} ms: {'met' if ok else 'NOT met'} (max painted latency)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
