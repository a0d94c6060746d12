"""The cnmlab pytest plugin, driven through ``pytester`` over namespaces built by hand.

A host namespace with bridge ``br0`` (10.77.0.1/24) holds sandboxes ``a`` and ``b``; ``c`` sits
on a second bridge ``br1`` (10.78.0.0/24) and the host does not forward, so ``c`` is isolated.
A learner's manifest names them and six checks; the plugin must collect one item per check,
fail exactly the items a broken setup breaks (with expected/observed, no traceback), write one
JUnit testcase and one grade-sheet row per check, run ``cnmlab_check`` and ``cnmlab_needs``, and
do nothing at all when no cnmlab option is given.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import xml.etree.ElementTree as ET

import pytest

from cnmlab import netns
from cnmlab.netlink import Netlink

pytest_plugins = ["pytester"]

PID = os.getpid()
PREFIX = f"cnmt-plg-{PID}"
CHECKS = [
    "reachable a -> b (icmp)",
    "reachable b -> a (icmp)",
    "isolated a -> c (icmp)",
    "matrix a b c (icmp)",
    "mtu a eth0 = 1500",
    "link br0 in host:h",
]
BROKEN = {"reachable a -> b (icmp)", "reachable b -> a (icmp)", "matrix a b c (icmp)"}


def _run(pytester, *args):
    # in-process runs share module globals with this session: pytest-textual-snapshot keeps
    # its temp dir in one and removes it when the inner session ends
    return pytester.runpytest("-p", "no:textual-snapshot", *args)


def _ns(name: str) -> str:
    return f"{PREFIX}-{name}"


def _build() -> dict[str, str]:
    from cnmlab.controller import setup_namespace

    names = {n: _ns(n) for n in ("h", "a", "b", "c")}
    for n in names.values():
        setup_namespace(n)
    with Netlink(names["h"]) as h:
        for br, gw in (("br0", "10.77.0.1/24"), ("br1", "10.78.0.1/24")):
            h.add_bridge(br)
            h.add_address(br, gw)
            h.set_link(br, up=True)
        for sb, br, ip, gw in (("a", "br0", "10.77.0.2/24", "10.77.0.1"),
                               ("b", "br0", "10.77.0.3/24", "10.77.0.1"),
                               ("c", "br1", "10.78.0.2/24", "10.78.0.1")):
            fd = netns.open_fd(names[sb])
            try:
                h.add_veth(f"v{sb}", "eth0", peer_ns_fd=fd)
            finally:
                os.close(fd)
            h.set_link(f"v{sb}", master=br, up=True)
            with Netlink(names[sb]) as s:
                s.add_address("eth0", ip)
                s.set_link("eth0", up=True)
                s.add_route("default", gateway=gw)
    return names


@pytest.fixture(scope="module")
def hand_built():
    if os.geteuid() != 0:
        pytest.skip("needs root to build namespaces")
    try:
        yield _build()
    finally:
        for n in ("a", "b", "c", "h"):
            netns.delete(_ns(n))


def _manifest(path, names: dict[str, str], name: str = "alice", checks: bool = True) -> str:
    body = textwrap.dedent(f"""\
        name: {name}
        sandboxes:
          a: {{netns: {names['a']}, addresses: {{lan: 10.77.0.2}}}}
          b: {{netns: {names['b']}, addresses: {{lan: 10.77.0.3}}}}
          c: {{netns: {names['c']}, addresses: {{dmz: 10.78.0.2}}}}
        hosts:
          h: {{netns: {names['h']}}}
        """)
    if checks:
        body += textwrap.dedent("""\
            checks:
              - reachable: {from: a, to: b}
              - reachable: {from: b, to: a}
              - isolated: {from: a, to: c, timeout: 0.5}
              - matrix: {sandboxes: [a, b, c], groups: [[a, b]], timeout: 0.5}
              - mtu: {sandbox: a, mtu: 1500}
              - link: {ns: "host:h", name: br0, kind: bridge, up: true}
            """)
    path.write_text(body)
    return str(path)


def _set_b(up: bool) -> None:
    with Netlink(_ns("b")) as nl:
        nl.set_link("eth0", up=up)
        if up:
            nl.add_route("default", gateway="10.77.0.1")


# ---------------------------------------------------------------------------------------------


def test_manifest_collects_one_item_per_check(pytester, hand_built):
    m = _manifest(pytester.path / "alice.yaml", hand_built)
    res = _run(pytester, "--collect-only", "-q", "--cnmlab-manifest", m)
    ids = [l for l in res.outlines if l.startswith("cnmlab/")]
    assert ids == [f"cnmlab/alice::{c}" for c in CHECKS], res.outlines
    res = _run(pytester, "-v", "--cnmlab-manifest", m)
    res.assert_outcomes(passed=len(CHECKS))
    out = res.stdout.str()
    assert "= cnmlab =" in out and "alice:" in out and "6 passed, 0 failed" in out
    assert "truth table: matrix a b c (icmp)" in out and "0 wrong, 6 correct" in out


def test_broken_setup_fails_exactly_the_expected_items(pytester, hand_built):
    m = _manifest(pytester.path / "alice.yaml", hand_built)
    junit = pytester.path / "junit.xml"
    sheet_path = pytester.path / "grades.json"
    _set_b(False)
    try:
        res = _run(pytester, "-rf", "--cnmlab-manifest", m, f"--junitxml={junit}",
                                 f"--cnmlab-json={sheet_path}")
    finally:
        _set_b(True)
    res.assert_outcomes(passed=len(CHECKS) - len(BROKEN), failed=len(BROKEN))
    out = res.stdout.str()
    assert "Traceback" not in out and "def runtest" not in out
    for label in BROKEN:
        assert f"FAILED cnmlab/alice::{label}" in out
    assert "expected: a reaches b at 10.77.0.3 (icmp)" in out
    assert "observed: timeout after 1 s" in out
    assert "reason:" in out
    assert "a -> b: expected reach, observed blocked" in out  # the truth table's wrong cells
    # JUnit: one testcase per check, the failures carry expected/observed
    cases = ET.parse(junit).getroot().iter("testcase")
    got = {c.get("name"): c.find("failure") for c in cases}
    assert set(got) == set(CHECKS)
    assert {n for n, f in got.items() if f is not None} == BROKEN
    assert "expected: a reaches b" in got["reachable a -> b (icmp)"].text
    assert all(c.get("classname") == "cnmlab.alice" for c in ET.parse(junit).getroot().iter(
        "testcase"))
    # the grade sheet: one row per (learner, check)
    sheet = json.loads(sheet_path.read_text())
    rows = sheet["rows"]
    assert [(r["learner"], r["check"]) for r in rows] == [("alice", c) for c in CHECKS]
    assert {r["check"] for r in rows if not r["ok"]} == BROKEN
    for r in rows:
        assert set(r) >= {"learner", "check", "kind", "ok", "expected", "observed", "reason"}
    assert sheet["learners"]["alice"] == {"passed": 3, "failed": 3, "skipped": 0, "total": 6,
                                          "ok": False}
    matrix = next(r for r in rows if r["kind"] == "matrix")
    assert matrix["table"]["wrong_count"] == 2


def test_two_learners_and_a_broken_manifest(pytester, hand_built):
    alice = _manifest(pytester.path / "alice.yaml", hand_built)
    bob = pytester.path / "bob.yaml"
    bob.write_text("name: bob\nsandboxes:\n  a: {netns: x, pid: 3}\n")
    sheet_path = pytester.path / "g.json"
    res = _run(pytester, "--cnmlab-manifest", alice, "--cnmlab-manifest", str(bob),
                             f"--cnmlab-json={sheet_path}", "-k", "not matrix")
    res.assert_outcomes(passed=5, failed=1, deselected=1)
    out = res.stdout.str()
    assert "FAILED cnmlab/bob::manifest" in out
    assert "bob.yaml:3: sandboxes.a.pid: give exactly one of netns" in out
    sheet = json.loads(sheet_path.read_text())
    assert sheet["learners"]["alice"]["ok"] is True
    assert sheet["learners"]["bob"] == {"passed": 0, "failed": 1, "skipped": 0, "total": 1,
                                        "ok": False}


def test_cnmlab_check_fixture_and_marker(pytester, hand_built):
    from cnmlab import features

    m = _manifest(pytester.path / "lab.yaml", hand_built, name="hand", checks=False)
    pytester.makepyfile(test_mine="""
        import pytest

        def test_target(cnmlab_target):
            assert set(cnmlab_target.sandboxes()) == {"a", "b", "c"}

        def test_reach(cnmlab_check):
            r = cnmlab_check({"reachable": {"from": "a", "to": "b"}})
            assert r.ok and r.observed.startswith("reply from 10.77.0.3")

        def test_wrong_expectation(cnmlab_check):
            cnmlab_check({"reachable": {"from": "a", "to": "c", "timeout": 0.5}})

        @pytest.mark.cnmlab_needs("bridge")
        def test_needs_bridge():
            pass

        @pytest.mark.cnmlab_needs("ipvs")
        def test_needs_ipvs():
            pass
        """)
    # the VM lane off: what this kernel lacks is skipped (test_vmlane.py covers the lane)
    res = _run(pytester, "-rfs", f"--cnmlab-target=manifest:{m}", "--cnmlab-vm=off")
    ipvs = features.has("ipvs")
    res.assert_outcomes(passed=4 if ipvs else 3, failed=1, skipped=0 if ipvs else 1)
    out = res.stdout.str()
    assert "reachable a -> c (icmp)" in out
    assert "expected: a reaches c at 10.78.0.2 (icmp)" in out
    assert "observed: timeout after 500 ms" in out or "observed: timeout" in out
    assert "Traceback" not in out
    if not ipvs:
        assert "needs ipvs (IPVS load balancing" in out
    # the fixture results are in the summary, under the target's learner name
    assert "= cnmlab =" in out and "hand:" in out


def test_without_a_target_the_fixture_skips(pytester):
    pytester.makepyfile(test_t="""
        def test_t(cnmlab_check):
            pass
        """)
    res = _run(pytester, "-rs")
    res.assert_outcomes(skipped=1)
    assert "no cnmlab target: give --cnmlab-target" in res.stdout.str()


def test_bad_options_are_usage_errors(pytester):
    res = _run(pytester, "--cnmlab-target=cni:x")
    assert res.ret == pytest.ExitCode.USAGE_ERROR
    assert "use KIND:ARG with KIND one of engine, manifest, docker" in res.stderr.str()
    res = _run(pytester, "--cnmlab-profile=nosuch")
    assert res.ret == pytest.ExitCode.USAGE_ERROR
    assert "unknown profile 'nosuch'; known: bridge" in res.stderr.str()


def test_inert_without_options(pytester):
    """No cnmlab option: nothing collected or printed, nothing heavy imported."""
    pytester.makepyfile(test_plain="""
        import sys

        def test_plain(pytestconfig):
            from cnmlab.checks import plugin
            st = pytestconfig.stash[plugin.STATE]
            assert st.sources == [] and st.results == [] and st.json_path is None
            assert "cnmlab.checks.plugin" in sys.modules
            for heavy in ("cnmlab.checks.library", "cnmlab.checks.targets", "pyroute2"):
                assert heavy not in sys.modules, heavy
        """)
    res = pytester.runpytest_subprocess("-q", "-p", "no:cacheprovider")
    res.assert_outcomes(passed=1)
    assert "cnmlab" not in res.stdout.str().replace("cnmlab.checks", "")
    assert not list(pytester.path.glob("*.json"))


def test_grade_cli(hand_built, tmp_path):
    good = _manifest(tmp_path / "alice.yaml", hand_built, name="alice")
    lazy = tmp_path / "bob.yaml"
    # bob claims b at the wrong address: his reach checks to b fail
    lazy.write_text(open(good).read().replace("name: alice", "name: bob")
                    .replace("lan: 10.77.0.3", "lan: 10.77.0.9"))
    out_json, out_junit = tmp_path / "g.json", tmp_path / "g.xml"
    cp = subprocess.run([sys.executable, "-m", "cnmlab.cli", "grade", good, str(lazy),
                         "--json", str(out_json), "--junit", str(out_junit)],
                        capture_output=True, text=True, timeout=120)
    assert cp.returncode == 1, cp.stdout + cp.stderr
    lines = cp.stdout.splitlines()
    assert lines[0].split() == ["learner", "result", "passed", "failed", "checks"]
    assert lines[1].split()[:3] == ["alice", "PASS", "6/6"]
    assert lines[2].split()[:3] == ["bob", "FAIL", "4/6"]
    assert "reachable a -> b (icmp); matrix a b c (icmp)" in lines[2]
    sheet = json.loads(out_json.read_text())
    assert len(sheet["rows"]) == 12 and sheet["ok"] is False
    assert len(list(ET.parse(out_junit).getroot().iter("testcase"))) == 12
    cp = subprocess.run([sys.executable, "-m", "cnmlab.cli", "grade", good],
                        capture_output=True, text=True, timeout=120)
    assert cp.returncode == 0, cp.stdout + cp.stderr
    assert cp.stdout.splitlines()[1].split() == ["alice", "PASS", "6/6", "-"]
    cp = subprocess.run([sys.executable, "-m", "cnmlab.cli", "grade", str(tmp_path / "no.yaml")],
                        capture_output=True, text=True, timeout=60)
    assert cp.returncode == 1 and cp.stderr.strip().splitlines() == [
        f"cnmlab: no such manifest: {tmp_path / 'no.yaml'}"]
