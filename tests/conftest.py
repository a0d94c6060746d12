"""Shared fixtures: root-only kernel tests, and the leak guards every test runs under.

* Per test: no network namespace whose name carries this process's PID may outlive the test,
  and no lab state file it created may remain (every test names its objects with the PID, so
  parallel runs on one machine never collide).
* Per session: the root namespace's links, routes and firewall must be byte-identical before
  and after the whole suite.
"""
from __future__ import annotations

import os
import subprocess
import uuid

import pytest

from cnmlab import state
from cnmlab.kernel import netns, rundir

PID = str(os.getpid())


def _root_snapshot() -> str:
    parts = []
    for cmd in (["ip", "-o", "link", "show"], ["ip", "route", "show", "table", "all"],
                ["iptables-save"], ["iptables-legacy-save"], ["nft", "list", "ruleset"]):
        try:
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=20).stdout
        except FileNotFoundError:
            out = ""
        # counters and comments change on their own; the rules themselves must not
        lines = [l for l in out.splitlines() if not l.startswith("#")]
        lines = [l.split(" [")[0] if l.startswith(":") else l for l in lines]
        if cmd[:2] == ["ip", "-o"]:
            lines = [" ".join(w for w in l.split() if not w.isdigit()) for l in lines]
        parts.append("\n".join(lines))
    # The one root setting labs may raise must come back. While another process (a second
    # test worker) still holds a reservation, the values to compare are the saved originals.
    held = _neigh_originals()
    for i in (1, 2, 3):
        with open(f"/proc/sys/net/ipv4/neigh/default/gc_thresh{i}") as f:
            value = held[i - 1] if held else f.read().strip()
        parts.append(f"gc_thresh{i}={value}")
    return "\n---\n".join(parts)


def _neigh_originals() -> list[str] | None:
    import json

    try:
        with open(os.path.join(rundir.STATE_DIR, "_neigh.json")) as f:
            record = json.load(f)
    except (OSError, ValueError):
        return None
    return record.get("original") if record.get("needs") else None


def _mine() -> set[str]:
    return {n for n in netns.list_names() if PID in n}


def _my_states() -> set[str]:
    from cnmlab.kernel import etcfiles

    found = {n for n in state.names() if PID in n}
    for folder in ("/etc/netns", etcfiles.STORE):  # the links and the files they point to
        names = os.listdir(folder) if os.path.isdir(folder) else []
        found |= {f"{folder}/{n}" for n in names if PID in n}
    return found


@pytest.fixture(scope="session", autouse=True)
def root_namespace_untouched():
    if os.geteuid() != 0:
        yield
        return
    before = _root_snapshot()
    yield
    after = _root_snapshot()
    assert before == after, "the test suite changed the root namespace's links, routes or firewall"


@pytest.fixture(autouse=True)
def no_leaks():
    before_ns, before_state = _mine(), _my_states()
    yield
    leaked_ns = _mine() - before_ns
    leaked_state = _my_states() - before_state
    for ns in leaked_ns:  # clean up so one leak does not cascade, then fail
        netns.kill_processes(ns)
        netns.delete(ns)
    assert not leaked_ns, f"test leaked network namespaces: {sorted(leaked_ns)}"
    assert not leaked_state, f"test leaked lab state or /etc/netns files: {sorted(leaked_state)}"


@pytest.fixture
def lab_name() -> str:
    """A lab name unique to this process and test."""
    return f"t{PID}{uuid.uuid4().hex[:5]}"


@pytest.fixture
def lab(lab_name):
    from cnmlab.lab import Lab

    if os.geteuid() != 0:
        pytest.skip("needs root")
    lab = Lab(lab_name)
    try:
        yield lab
    finally:
        lab.down()


def _root_only(config, items):
    if os.geteuid() == 0:
        return
    skip = pytest.mark.skip(reason="creates real kernel objects: run the tests as root")
    for item in items:
        if "kernel" in item.keywords or "docker" in item.keywords:
            item.add_marker(skip)


# Quarantine: tests that failed in the last full run of this session's merged main on a loaded
# machine and passed when run alone, with the reason each is believed to fail. They still run
# (a pass is reported as XPASS); a failure is reported as XFAIL instead of turning CI red.
# Each is a real defect to fix next, listed in the session's closing note.
QUARANTINE = {
}


def _quarantine(items) -> None:
    for item in items:
        reason = QUARANTINE.get(item.nodeid)
        if reason:
            item.add_marker(pytest.mark.xfail(reason=f"quarantined: {reason}", strict=False))


def pytest_collection_modifyitems(config, items):
    _quarantine(items)
    _root_only(config, items)
