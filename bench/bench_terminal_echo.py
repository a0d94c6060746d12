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

``--flip S`` (default 0.5) toggles ``lo`` in blue every S seconds, so watch mode sees kernel
events and the step's results really change (re-rendered, the status recoloured) while typing.

``--load N`` starts N CPU-bound processes (each in its own session, as other programs on the
learner's machine would be; killed by PID at the end) to measure on a loaded machine. On a
2-core machine shared with other work, most of the tail is time the UI thread spent *runnable
but not running* (the kernel's run-queue wait, read from ``/proc/self/task/TID/schedstat``
around every key): the bench reports it per key, and the latency left after subtracting it,
"own", is what the app's code (UI thread, bash, the checks' threads competing in-process) costs.
The exit status judges "own" max < 50 ms; the raw figures are printed beside it.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import threading
import time

TARGET_MS = 50.0


def _runqueue_wait(tid: int, shell: int | None = None) -> float:
    """Seconds the UI thread ``tid`` (and the shell's process) spent waiting for a CPU so far.

    Both are on the echo path one after the other (bash echoes, then the UI thread reads and
    paints), so their waits add up.
    """
    paths = [f"/proc/self/task/{tid}/schedstat"] + ([f"/proc/{shell}/schedstat"] if shell else [])
    total = 0
    for path in paths:
        with open(path) as f:
            total += int(f.read().split()[1])
    return total / 1e9


def _burners(n: int) -> list[subprocess.Popen[bytes]]:
    """N busy loops, each in its own session (its own autogroup: like any other program)."""
    code = "while True: pass"
    return [subprocess.Popen([sys.executable, "-c", code], start_new_session=True)
            for _ in range(n)]


def _flipper(ns: str, every: float, stop: threading.Event) -> threading.Thread:
    """Toggle ``lo`` in namespace ``ns`` every ``every`` s: the checks' results keep changing."""
    def loop() -> None:
        up = True
        while not stop.wait(every):
            subprocess.run(["ip", "-n", ns, "link", "set", "lo", "up" if up else "down"],
                           check=False)
            up = not up

    t = threading.Thread(target=loop, name="flipper", daemon=True)
    t.start()
    return t


async def run(n_keys: int, flip: float,
              watch: bool = True) -> tuple[list[float], list[float], list[float], int]:
    from cnmlab.tui.app import CnmlabApp
    from cnmlab.tui.screens import LabListScreen, StepScreen, target_cycle
    from cnmlab.tui.terminal import TerminalView

    features = {"veth": True, "bridge": True, "iptables": True}
    app = CnmlabApp(instance_suffix=f"b{os.getpid()}", features=features, watch_poll=0.1)
    echo: list[float] = []
    painted: list[float] = []
    waited: list[float] = []  # run-queue wait of the UI thread during each key's latency
    ui_tid = threading.get_native_id()
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
        if watch:
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
        while watch and screen.checks_done < 1:
            assert time.monotonic() < deadline, "watch mode ran no check"
            await pilot.pause(0.05)
        print("watching", flush=True)
        checks_before = screen.checks_done
        stop = threading.Event()
        if flip:
            ns = {m[0]: m[2] for m in target_cycle(screen.run.name)}["blue"]
            _flipper(ns, flip, stop)

        shell = view.proc.pid if view.proc is not None else None
        marks: dict[str, float] = {}
        feed, render_line = view.feed, view.render_line

        def timed_feed(data: bytes) -> None:
            feed(data)
            marks.setdefault("echo", time.perf_counter())

        def timed_render(y: int):  # type: ignore[no-untyped-def]
            strip = render_line(y)
            if "echo" in marks and y == view.screen_model.cursor.y and "painted" not in marks:
                marks["painted"] = time.perf_counter()
                marks["rq"] = _runqueue_wait(ui_tid, shell)
            return strip

        view.feed = timed_feed  # type: ignore[method-assign]
        view.render_line = timed_render  # type: ignore[method-assign]
        for i in range(n_keys):
            key = "x" if i % 2 == 0 else "backspace"
            marks.clear()
            rq0 = _runqueue_wait(ui_tid, shell)
            t0 = time.perf_counter()
            await pilot.press(key)
            end = t0 + 2
            while "painted" not in marks and time.perf_counter() < end:
                await asyncio.sleep(0.0005)
            if "painted" not in marks:
                raise SystemExit(f"key {i}: no echo painted within 2 s")
            echo.append(marks["echo"] - t0)
            painted.append(marks["painted"] - t0)
            waited.append(marks["rq"] - rq0)
            await asyncio.sleep(0.02)  # a fast typist: 50 keys a second at most
        stop.set()
        checks = screen.checks_done - checks_before
        screen.watching = False
    return echo, painted, waited, checks


def _stats(name: str, values: list[float]) -> str:
    ms = sorted(v * 1000 for v in values)
    p95 = ms[int(0.95 * (len(ms) - 1))]
    return (f"{name:<8} median {statistics.median(ms):6.1f} ms   p95 {p95:6.1f} ms   "
            f"max {max(ms):6.1f} ms   (n={len(ms)})")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--keys", type=int, default=60)
    ap.add_argument("--load", type=int, default=0, metavar="N",
                    help="N CPU-bound processes running meanwhile (a loaded machine)")
    ap.add_argument("--no-watch", action="store_true",
                    help="watch mode off: the baseline to compare the checks' cost against")
    ap.add_argument("--flip", type=float, default=0.5, metavar="S",
                    help="toggle lo in blue every S s so the results keep changing (0: never)")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("needs root (creates namespaces)", file=sys.stderr)
        return 2
    os.environ.setdefault("CNMLAB_PROGRESS", f"/tmp/cnmlab-bench-{os.getpid()}.json")
    from cnmlab import state
    from cnmlab.workshop import labfile
    from cnmlab.workshop.runner import LabRun

    name = f"lab01-b{os.getpid()}"
    burners = _burners(args.load)
    try:
        echo, painted, waited, checks = asyncio.run(run(args.keys, args.flip,
                                                        not args.no_watch))
        load = os.getloadavg()[0]
    finally:
        for p in burners:
            p.kill()
            p.wait()
        if state.exists(name):
            LabRun(labfile.get("01"), name).stop()
        try:
            os.unlink(os.environ["CNMLAB_PROGRESS"])
        except OSError:
            pass
    own = [max(0.0, p - w) for p, w in zip(painted, waited)]
    print(f"keystroke -> echo in the embedded terminal, watch mode "
          f"{'off' if args.no_watch else 'on'} ({checks} check runs "
          f"during {len(echo)} keys; {args.load} extra CPU-bound processes; "
          f"load average {load:.1f} on {os.cpu_count()} CPUs):")
    print(_stats("echo", echo))
    print(_stats("painted", painted))
    print(_stats("rq-wait", waited) + "  <- UI thread or bash runnable, waiting for a CPU")
    print(_stats("own", own) + "  <- painted minus rq-wait")
    if os.environ.get("BENCH_VERBOSE"):
        print(" ".join(f"{v * 1000:.0f}" for v in painted))
    raw = max(painted) * 1000 < TARGET_MS
    ok = max(own) * 1000 < TARGET_MS
    print(f"target < {TARGET_MS:.0f} ms: painted max {'met' if raw else 'NOT met'}; "
          f"own max {'met' if ok else 'NOT met'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
