"""Run Debian's Mininet 2.3 as the yardstick, fenced into throwaway namespaces.

Mininet names links ``*-ethN``, cleans up by name (``mn -c``) and kills processes by name, so it
only ever runs inside ``unshare --net --mount --pid``: nothing outside can be seen or touched.
"""
from __future__ import annotations

import re
import shutil
import subprocess
import time


def run(n: int, test: str) -> tuple[float | None, str]:
    """Time ``mn --topo single,N --switch lxbr --controller none --test TEST``."""
    mn = shutil.which("mn")
    if not mn:
        return None, "mn not installed (apt-get install mininet)"
    if not shutil.which("brctl"):
        return None, "brctl (bridge-utils) missing: Mininet's lxbr switch needs it"
    if not shutil.which("unshare"):
        return None, "unshare missing: refusing to run Mininet outside throwaway namespaces"
    cmd = ["unshare", "--net", "--mount", "--pid", "--fork", "--mount-proc",
           mn, "--topo", f"single,{n}", "--switch", "lxbr", "--controller", "none",
           "--test", test]
    t = time.perf_counter()
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=120 + 3 * n, cwd="/tmp")
    except subprocess.TimeoutExpired:
        return None, "timed out"
    took = time.perf_counter() - t
    out = p.stdout + p.stderr
    if p.returncode != 0:
        return None, f"mn failed (rc {p.returncode}): {out.strip().splitlines()[-1:]}"
    if test == "pingall":
        m = re.search(r"Results: (\d+)% dropped \((\d+)/(\d+) received\)", out)
        if not m:
            return None, "no pingall result in mn's output"
        return took, f"{m.group(1)}% dropped ({m.group(2)}/{m.group(3)})"
    return took, "ok"
