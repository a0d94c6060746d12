"""Labs that survive concurrent use (real kernel, real processes).

* N ``cnmlab lab docker LAB run`` commands started at once on one lab: all N recorded, with
  distinct addresses, each configured in its namespace and reachable.
* A long-lived in-process model (what the workshop app holds) acting after the CLI changed the
  lab: it reloads under the lock, so neither side's change is lost.
* The lock file may be removed by its holder without ever letting two processes in at once
  (and the naive "unlock, then unlink" does let them in: the check is shown to catch it).
* Namespace names are unambiguous across labs, and a rollback removes only what the failed
  operation made.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time

import pytest

from cnmlab import state
from cnmlab.kernel import netns, rundir

pytestmark = pytest.mark.kernel

if os.geteuid() != 0:
    pytest.skip("needs root", allow_module_level=True)


def cnmlab(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cnmlab.cli", *args], capture_output=True,
                          text=True, timeout=timeout)


def _sandboxes(lab: str) -> dict[str, dict[str, str]]:
    """{sandbox: {network: address}} from the saved state."""
    st = state.load(lab)
    out = {}
    for h in st.hosts.values():
        for name, sb in h.sandboxes.items():
            out[name] = {}
            for ref in sb.endpoints:
                out[name][ref.network] = h.networks[ref.network].endpoints[ref.endpoint].ip
    return out


def _eth0(ns: str) -> list[str]:
    out = subprocess.run(["ip", "netns", "exec", ns, "ip", "-o", "-4", "addr", "show", "eth0"],
                         capture_output=True, text=True).stdout
    return [line.split()[3] for line in out.splitlines()]


@pytest.fixture
def progress(tmp_path, monkeypatch):
    monkeypatch.setenv("CNMLAB_PROGRESS", str(tmp_path / "progress.json"))


# ---- many CLI commands on one lab ------------------------------------------------------------

N = 6


def test_concurrent_cli_runs_are_all_recorded_distinct_and_reachable(lab_name, progress):
    """The issue's reproduction: six ``lab docker 04 run --network frontend cN`` at once."""
    r = cnmlab("lab", "start", "04", "--name", lab_name)
    assert r.returncode == 0, r.stderr
    try:
        r = cnmlab("lab", "docker", "--name", lab_name, "04", "network", "create", "frontend")
        assert r.returncode == 0, r.stderr
        procs = [subprocess.Popen([sys.executable, "-m", "cnmlab.cli", "lab", "docker",
                                   "--name", lab_name, "04", "run", "--network", "frontend",
                                   f"c{i}"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True) for i in range(N)]
        outs = [p.communicate(timeout=180) for p in procs]
        assert [p.returncode for p in procs] == [0] * N, outs
        recorded = _sandboxes(lab_name)
        names = [f"c{i}" for i in range(N)]
        assert all(n in recorded for n in names), recorded
        addrs = [recorded[n]["frontend"] for n in names]
        assert len(set(addrs)) == N, f"addresses handed out twice: {addrs}"
        for n, addr in zip(names, addrs):  # what the state says is what the kernel has
            assert _eth0(f"cnm-{lab_name}.{n}") == [addr]
        for i, n in enumerate(names):  # each reaches the next one (a ring covers all N)
            peer = addrs[(i + 1) % N].split("/")[0]
            ping = subprocess.run(["ip", "netns", "exec", f"cnm-{lab_name}.{n}", "ping", "-c1",
                                   "-W2", peer], capture_output=True, text=True)
            assert ping.returncode == 0, f"{n} -> {peer}: {ping.stdout}{ping.stderr}"
    finally:
        r = cnmlab("lab", "stop", "04", "--name", lab_name)
    assert r.returncode == 0, r.stderr


# ---- the workshop app's in-memory model and the CLI ------------------------------------------

def test_in_process_model_reloads_before_each_change(lab_name, progress):
    """A LabRun kept in memory (as the app keeps it) and the CLI take turns on one lab."""
    from cnmlab.workshop import labfile
    from cnmlab.workshop.runner import LabRun

    run = LabRun(labfile.get("04"), lab_name)
    run.start()
    try:
        run.apply_action({"engine": "network_create", "host": "host", "name": "frontend"})
        run.apply_action({"engine": "run", "host": "host", "name": "app1",
                          "network": "frontend"})
        # the learner's shell, meanwhile
        r = cnmlab("lab", "docker", "--name", lab_name, "04", "run", "--network", "frontend",
                   "cli1")
        assert r.returncode == 0, r.stderr
        # the app acts again, through the very objects it already held
        host = run.lab.host("host")
        host.run("app2", "frontend")
        recorded = _sandboxes(lab_name)
        assert {"app1", "cli1", "app2"} <= set(recorded), recorded
        addrs = [recorded[n]["frontend"] for n in ("app1", "cli1", "app2")]
        assert len(set(addrs)) == 3, addrs
        assert _eth0(f"cnm-{lab_name}.app2") == [recorded["app2"]["frontend"]]
        # and the CLI sees what the app did
        r = cnmlab("inspect", lab_name, "--json")
        assert "app2" in json.loads(r.stdout)["hosts"]["host"]["sandboxes"]
        # a handle follows the reloaded model
        assert host.sandbox("cli1").ip() == recorded["cli1"]["frontend"].split("/")[0]
    finally:
        run.stop()


def test_python_handle_after_another_process_changed_the_lab(lab_name):
    from cnmlab.lab import Lab

    lab = Lab(lab_name, upstream=False)
    try:
        h = lab.add_host("h1")
        h.network_create("front", subnet="10.79.0.0/24")
        code = textwrap.dedent("""
            import sys
            from cnmlab.lab import Lab
            lab = Lab.open(sys.argv[1])
            lab.host("h1").run("other", "front")
            lab.close()
        """)
        r = subprocess.run([sys.executable, "-c", code, lab_name], capture_output=True,
                           text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        mine = h.run("mine", "front")
        recorded = _sandboxes(lab_name)
        assert recorded["other"]["front"] != recorded["mine"]["front"]
        assert mine.ip() == recorded["mine"]["front"].split("/")[0]
    finally:
        lab.down()


# ---- the lock file may go away, the lock never lets two in -----------------------------------

HOLDER = textwrap.dedent("""
    import fcntl, os, sys, time
    from cnmlab import state
    from cnmlab.kernel import rundir
    mode, name, log, hold = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
    path = os.path.join(rundir.state_dir(), f"_{name}.lock")

    def note(what):
        with open(log, "a") as f:
            f.write(f"{time.monotonic():.6f} {what} {os.getpid()}\\n")

    if mode == "cnmlab":
        with state.locked(name):  # the lab does not exist: its holder removes the lock file
            note("in"); time.sleep(hold); note("out")
    else:  # the naive protocol state.py used: unlock, close, then unlink
        with open(path, "w") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            note("in"); time.sleep(hold); note("out")
            fcntl.flock(f, fcntl.LOCK_UN)
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
""")


def _waiting_on(path: str) -> bool:
    """Whether some process is blocked in flock on this file (``->`` lines of /proc/locks)."""
    try:
        ino = os.stat(path).st_ino
    except FileNotFoundError:
        return False
    with open("/proc/locks") as f:
        return any("->" in line and line.split()[-3].endswith(f":{ino}") for line in f)


def _overlaps(log: str) -> list[tuple[float, float]]:
    spans: dict[str, list[float]] = {}
    with open(log) as f:
        for line in f:
            t, what, pid = line.split()
            spans.setdefault(pid, []).append(float(t))
    intervals = sorted((s[0], s[1]) for s in spans.values())
    return [(a, b) for (a, b), (c, _) in zip(intervals, intervals[1:]) if c < b]


@pytest.mark.parametrize("mode,overlap", [("cnmlab", False), ("naive", True)])
def test_removing_the_lock_file_never_admits_two_holders(tmp_path, lab_name, mode, overlap):
    """P1 holds; P2 waits on the same file; P1 lets go and the file is removed; P3 arrives.

    With the naive protocol P2 gets the old, unlinked file while P3 creates and locks a new
    one: both hold "the" lock. cnmlab's holder unlinks before unlocking and a waiter re-checks
    the inode, so P2 and P3 queue on one file.
    """
    log = str(tmp_path / "log")
    path = os.path.join(rundir.state_dir(), f"_{lab_name}.lock")

    def start(hold: float) -> subprocess.Popen[str]:
        return subprocess.Popen([sys.executable, "-c", HOLDER, mode, lab_name, log, str(hold)],
                                text=True, stderr=subprocess.PIPE)

    def wait_for(cond, what: str) -> None:
        deadline = time.monotonic() + 20
        while not cond():
            assert time.monotonic() < deadline, what
            time.sleep(0.005)

    def holders() -> int:
        return open(log).read().count(" in ") if os.path.exists(log) else 0

    p1 = start(1.0)
    wait_for(lambda: holders() == 1, "P1 never got the lock")
    p2 = start(2.0)
    wait_for(lambda: _waiting_on(path), "P2 never queued on the lock")
    assert p1.wait(timeout=20) == 0, p1.stderr.read() if p1.stderr else ""
    p3 = start(0.5)
    for p in (p2, p3):
        assert p.wait(timeout=20) == 0, p.stderr.read() if p.stderr else ""
    assert bool(_overlaps(log)) is overlap, open(log).read()
    if mode == "cnmlab":
        assert not os.path.exists(path), "the lock of a lab that is gone stays behind"
    elif os.path.exists(path):  # the naive holders may leave it behind
        os.unlink(path)


# ---- namespace names and rollback --------------------------------------------------------------

def _up(tmp_path, text: str, *args: str) -> subprocess.CompletedProcess[str]:
    p = tmp_path / f"topo{time.monotonic_ns()}.yaml"
    p.write_text(textwrap.dedent(text))
    return cnmlab("up", str(p), *args)


def test_lab_x_host_y_upstream_and_lab_x_y_do_not_collide(tmp_path, lab_name):
    """The issue's reproduction: lab ``x`` with host ``y-upstream``, then lab ``x-y``."""
    x, xy = lab_name, f"{lab_name}-y"
    r = _up(tmp_path, f"name: {x}\nhosts:\n  y-upstream: {{}}\n")
    assert r.returncode == 0, r.stderr
    try:
        host_ns = state.load(x).hosts["y-upstream"].netns
        inode = netns.inode(host_ns)
        r = _up(tmp_path, "name: ignored\nhosts:\n  h1: {}\n", "--name", xy)
        assert r.returncode == 0, r.stderr
        try:
            assert state.load(xy).upstream != host_ns
            assert netns.inode(host_ns) == inode
        finally:
            assert cnmlab("down", xy).returncode == 0
        assert netns.exists(host_ns) and netns.inode(host_ns) == inode, \
            "tearing lab x-y down removed lab x's namespace"
        assert not [n for n in netns.list_names() if n.startswith(f"cnm-{xy}.")]
    finally:
        assert cnmlab("down", x).returncode == 0


def test_rollback_removes_only_what_the_failed_operation_made(tmp_path, lab_name):
    """A namespace already holds the name a new lab wants: the lab fails, the namespace stays."""
    from cnmlab.lab import ns_name

    taken = ns_name(lab_name, "upstream")
    netns.create(taken)  # someone else's (or a leftover): not this lab's to delete
    try:
        inode = netns.inode(taken)
        r = _up(tmp_path, f"name: {lab_name}\nhosts:\n  h1: {{}}\n")
        assert r.returncode == 1
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
        assert f"{taken} already exists" in lines[0] and "did not make it" in lines[0]
        assert netns.exists(taken) and netns.inode(taken) == inode, \
            "the rollback deleted a namespace it did not make"
        assert not state.exists(lab_name)
        assert cnmlab("clean", "--lab", lab_name).returncode == 0
        assert netns.exists(taken) and netns.inode(taken) == inode
    finally:
        netns.delete(taken)


def test_failed_run_keeps_a_namespace_it_did_not_make(lab):
    """Same at the sandbox level, and a later ``down`` of the lab leaves it too."""
    from cnmlab.errors import ObjectExists

    host = lab.add_host("h1")
    taken = lab.ns_name("web")
    netns.create(taken)
    try:
        inode = netns.inode(taken)
        with pytest.raises(ObjectExists, match="did not make it"):
            host.run("web")
        assert "web" not in state.load(lab.name).hosts["h1"].sandboxes
        assert taken not in state.recorded_namespaces(lab.name)
        lab.down()
        assert netns.exists(taken) and netns.inode(taken) == inode
    finally:
        netns.delete(taken)
