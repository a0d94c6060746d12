"""How long does grading a class take? N submissions against the bridge profile.

    python bench/bench_grade.py [--learners 30] [--broken 10] [--jobs 8]

Builds N copies of the bridge profile's topology with cnmlab's engine (one lab per learner:
a host, six containers, an upstream), writes each as a learner's submission file
(``checks.submission.describe``), breaks ``--broken`` of them (the host stops forwarding, so
egress, published ports and cross-network probes time out: the slow path a real class has),
then times ``cnmlab grade --profile bridge`` over all of them, end to end in a subprocess,
exactly as an instructor runs it. Checks that every sound learner passes 15/15 points and
every broken one fails. Target (issue 9): 30 submissions in under 60 s on 2 cores.

Needs root. Every lab is torn down, even on failure.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import yaml

from cnmlab.checks import conformance, submission
from cnmlab.kernel import sysctl
from cnmlab.lab import Lab

TARGET_S = 60.0


def build(n: int) -> list[tuple[Lab, dict]]:
    profile = conformance.load("bridge")
    labs = []
    t0 = time.monotonic()
    try:
        for i in range(n):
            lab = Lab(f"gb{os.getpid()}x{i}")
            labs.append((lab, {}))
            target = conformance.build_engine(lab, profile)
            labs[-1] = (lab, submission.describe(target))
    except BaseException:
        for lab, _ in labs:
            lab.down()
        raise
    print(f"  built {n} bridge labs in {time.monotonic() - t0:.1f} s")
    return labs


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--learners", type=int, default=30)
    ap.add_argument("--broken", type=int, default=10)
    ap.add_argument("--jobs", type=int, default=None)
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("needs root", file=sys.stderr)
        return 1
    labs = build(args.learners)
    try:
        broken = set(range(args.learners - args.broken, args.learners))
        with tempfile.TemporaryDirectory(prefix="cnmlab-bench-grade-") as tmp:
            files = []
            for i, (lab, doc) in enumerate(labs):
                if i in broken:
                    sysctl.write("net.ipv4.ip_forward", 0, ns=lab.host("host").netns)
                path = os.path.join(tmp, f"learner{i:02d}.yaml")
                with open(path, "w") as f:
                    yaml.safe_dump(doc, f, sort_keys=False)
                files.append(path)
            sheet_path = os.path.join(tmp, "grades.json")
            argv = [sys.executable, "-m", "cnmlab.cli", "grade", "--profile", "bridge",
                    "--json", sheet_path, *files]
            if args.jobs:
                argv += ["--jobs", str(args.jobs)]
            t0 = time.monotonic()
            cp = subprocess.run(argv, capture_output=True, text=True)
            took = time.monotonic() - t0
            if cp.returncode not in (0, 1):
                print(cp.stdout + cp.stderr)
                return 1
            with open(sheet_path) as f:
                sheet = json.load(f)
        learners = sheet["learners"]
        wrong = []
        for i in range(args.learners):
            s = learners[f"learner{i:02d}"]
            if (i in broken) == s["ok"] or (i not in broken and s["points"] != 15):
                wrong.append(f"learner{i:02d}: {s}")
        per = [s["seconds"] for s in learners.values()]
        print(f"  graded {args.learners} submissions ({len(broken)} broken) against the bridge "
              f"profile in {took:.1f} s (cnmlab grade, end to end; {os.cpu_count()} CPUs); "
              f"per learner {min(per):.1f}-{max(per):.1f} s")
        print(f"  target: under {TARGET_S:.0f} s -> {'OK' if took < TARGET_S else 'MISSED'}")
        if wrong:
            print("  WRONG grades:\n    " + "\n    ".join(wrong))
            return 1
        return 0 if took < TARGET_S else 1
    finally:
        for lab, _ in labs:
            lab.down()


if __name__ == "__main__":
    sys.exit(main())
