"""How fast is the full-kernel VM? Boot to first output, the VM lane's share of CI, guest/host.

    python bench/bench_vm.py [--runs 5] [--file tests/test_engine.py] [--ci-share] [--image]

1. **Boot to first output**: ``cnmlab vm run -- echo ready`` as a learner types it, from the
   command's start to the first byte of the guest's output, and ``boot.run`` in process
   (qemu's start to that byte, without the CLI's own Python start). Target: < 8 s under TCG,
   < 2 s with KVM.
2. **Guest/host slowdown for one pytest file**: the same file (default ``tests/test_engine.py``,
   kernel objects, subprocesses, netlink: what lane tests do) on the host and in the VM;
   pytest's own "passed in N s" on each side and the whole command.
3. ``--ci-share``: the VM lane's share of CI: wall time of the lane as CI runs it
   (``tests/test_vm_features.py``, the tests this kernel lacks features for) and of the tests of
   ``cnmlab vm`` and of the lane (``tests/test_vm.py``, ``tests/test_vmlane.py``), each a
   separate pytest run. Target: < 10 minutes together. Several minutes.
4. ``--image``: preparing the kernel image from nothing (download, unpack, depmod, inflate,
   initramfs) into a temporary cache.
"""
from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, REPO)

from cnmlab.vm import boot, image  # noqa: E402


def cli_first_output(runs: int) -> tuple[list[float], list[float]]:
    firsts, totals = [], []
    for _ in range(runs):
        t0 = time.perf_counter()
        p = subprocess.Popen([sys.executable, "-m", "cnmlab.cli", "vm", "run", "--", "echo",
                              "ready"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        assert p.stdout is not None
        p.stdout.read(1)
        firsts.append(time.perf_counter() - t0)
        p.stdout.read()
        if p.wait() != 0:
            raise SystemExit("cnmlab vm run -- echo ready failed")
        totals.append(time.perf_counter() - t0)
    return firsts, totals


def in_process_first_output(runs: int) -> tuple[list[float], str]:
    out = []
    accel = "?"
    with open(os.devnull, "wb") as sink:
        for _ in range(runs):
            r = boot.run(["echo", "ready"], stdout=sink, stderr=sink, cwd="/")
            out.append(r.first_output or float("nan"))
            accel = r.accel
    return out, accel


def pytest_seconds(output: str) -> float | None:
    m = re.search(r" in ([0-9.]+)s", output)
    return float(m.group(1)) if m else None


def slowdown(path: str) -> None:
    argv = [sys.executable, "-m", "pytest", "-q", "-p", "no:randomly", "-p", "no:cacheprovider",
            "--cnmlab-vm=off", path]
    t0 = time.perf_counter()
    host = subprocess.run(argv, cwd=REPO, capture_output=True, text=True)
    host_wall = time.perf_counter() - t0
    t0 = time.perf_counter()
    guest = subprocess.run([sys.executable, "-m", "cnmlab.cli", "vm", "run", "--read-only",
                            "--timeout", "1800", "--", *argv], cwd=REPO, capture_output=True,
                           text=True)
    guest_wall = time.perf_counter() - t0
    hs, gs = pytest_seconds(host.stdout), pytest_seconds(guest.stdout)
    last = lambda out: (out.strip().splitlines() or ["?"])[-1]  # noqa: E731
    print(f"{path} on the host: {last(host.stdout)}; whole command {host_wall:.1f} s")
    print(f"{path} in the VM:   {last(guest.stdout)}; whole command {guest_wall:.1f} s "
          f"(boot included)")
    if hs and gs:
        print(f"guest/host slowdown: {gs / hs:.1f}x inside pytest, "
              f"{guest_wall / host_wall:.1f}x for the whole command")


def ci_share() -> None:
    total = 0.0
    for title, files in (("the lane (tests needing ipvs/ipvlan/vlan/dummy)",
                          ["tests/test_vm_features.py"]),
                         ("tests of cnmlab vm and of the lane",
                          ["tests/test_vm.py", "tests/test_vmlane.py"])):
        t0 = time.perf_counter()
        r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:randomly", *files],
                           cwd=REPO, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        total += wall
        lane = [l for l in r.stdout.splitlines() if l.startswith("cnmlab vm lane:")]
        print(f"{title}: {wall:.1f} s ({(r.stdout.strip().splitlines() or ['?'])[-1]})")
        for l in lane:
            print(f"  {l}")
    print(f"VM share of CI: {total:.1f} s = {total / 60:.1f} min (target < 10 min)")


def image_cost() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["CNMLAB_VM_CACHE"] = tmp
        t0 = time.perf_counter()
        img = image.ensure(rebuild=True)
        took = time.perf_counter() - t0
        size = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(img.dir)
                   for f in fs)
        del os.environ["CNMLAB_VM_CACHE"]
    print(f"kernel image {img.package} {img.version} prepared from nothing in {took:.1f} s "
          f"({size / 2**20:.0f} MiB in the cache)")


def fmt(xs: list[float]) -> str:
    return (f"median {statistics.median(xs):.2f} s (min {min(xs):.2f}, max {max(xs):.2f}, "
            f"n={len(xs)})")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--file", default="tests/test_engine.py")
    ap.add_argument("--ci-share", action="store_true")
    ap.add_argument("--image", action="store_true")
    args = ap.parse_args()
    image.ensure()  # a first-ever run fetches the kernel: not part of the boot figures
    if args.image:
        image_cost()
    firsts, totals = cli_first_output(args.runs)
    print(f"`cnmlab vm run -- echo ready`, start to first output: {fmt(firsts)}")
    print(f"`cnmlab vm run -- echo ready`, whole command:        {fmt(totals)}")
    inproc, accel = in_process_first_output(args.runs)
    print(f"boot.run, qemu start to first output ({accel}): {fmt(inproc)} "
          f"(target < {'2' if accel == 'kvm' else '8'} s)")
    slowdown(args.file)
    if args.ci_share:
        ci_share()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
