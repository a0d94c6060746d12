"""The cnmlab pytest plugin, driven through ``pytester`` over namespaces built by hand.

``_handbuilt``: a host namespace with bridge ``br0`` (10.77.0.1/24) holds sandboxes ``a`` and
``b``; ``c`` sits on a second bridge ``br1`` (10.78.0.0/24) and the host does not forward, so
``c`` is isolated. The instructor's assignment lists six checks; a learner's submission names
the namespaces. The plugin must collect one item per (learner, assignment check), fail exactly
the items a broken setup breaks (with expected/observed, no traceback), write one JUnit
testcase and one grade-sheet row per check, count what did not run as failed, refuse
submissions without an assignment, run ``cnmlab_check`` and ``cnmlab_needs``, and do nothing
at all when no cnmlab option is given.
"""
from __future__ import annotations

import json
import os
import xml.etree.ElementTree as ET

import pytest

from _handbuilt import HandBuilt
from cnmlab.kernel.netlink import Netlink

pytest_plugins = ["pytester"]

CHECKS = [
    "reachable a -> b (icmp)",
    "reachable b -> a (icmp)",
    "isolated a -> c (icmp)",
    "matrix a b c (icmp)",
    "mtu a eth0 = 1500",
    "link br0 in host:h",
]
BROKEN = {"reachable a -> b (icmp)", "reachable b -> a (icmp)", "matrix a b c (icmp)"}
ASSIGNMENT = """\
name: hw
budget: 30
checks:
  - {id: ab, check: {reachable: {from: a, to: b}}, points: 2}
  - {id: ba, check: {reachable: {from: b, to: a}}}
  - {id: ac, check: {isolated: {from: a, to: c, timeout: 0.5}}}
  - {id: matrix, check: {matrix: {sandboxes: [a, b, c], groups: [[a, b]], timeout: 0.5}},
     points: 3}
  - {id: mtu, check: {mtu: {sandbox: a, mtu: 1500}}}
  - {id: br0, check: {link: {ns: "host:h", name: br0, kind: bridge, up: true}}}
"""


def _run(pytester, *args):
    # a subprocess: in-process runs share module globals with this session (pytester drops the
    # inner run's modules from sys.modules, but a package keeps its submodules as attributes,
    # so a second inner run would mix two generations of cnmlab.checks classes), and
    # pytest-textual-snapshot keeps its temp dir in one and removes it when the run ends
    return pytester.runpytest_subprocess("-p", "no:textual-snapshot", "-p", "no:randomly",
                                         "-p", "no:cacheprovider", *args)


@pytest.fixture(scope="module")
def hand_built():
    if os.geteuid() != 0:
        pytest.skip("needs root to build namespaces")
    hb = HandBuilt("plg").build()
    try:
        yield hb
    finally:
        hb.teardown()


@pytest.fixture
def hw(pytester):
    p = pytester.path / "hw.yaml"
    p.write_text(ASSIGNMENT)
    return str(p)


def _set_b(hb, up: bool) -> None:
    with Netlink(hb["b"]) as nl:
        nl.set_link("eth0", up=up)
        if up:
            nl.add_route("default", gateway="10.77.0.1")


# ---------------------------------------------------------------------------------------------


def test_submission_collects_one_item_per_assignment_check(pytester, hand_built, hw):
    m = hand_built.submission(pytester.path / "alice.yaml")
    res = _run(pytester, "--collect-only", "-q", "--cnmlab-assignment", hw,
               "--cnmlab-submission", m)
    ids = [l for l in res.outlines if l.startswith("cnmlab/")]
    assert ids == [f"cnmlab/alice::{c}" for c in CHECKS], res.outlines
    res = _run(pytester, "-v", "--cnmlab-assignment", hw, "--cnmlab-submission", m)
    res.assert_outcomes(passed=len(CHECKS))
    out = res.stdout.str()
    assert "= cnmlab =" in out and "alice:" in out and "6 passed, 0 failed" in out
    assert "truth table: matrix a b c (icmp)" in out and "0 wrong, 6 correct" in out
    assert [l.split()[:4] for l in res.outlines if l.startswith("alice ")] == \
        [["alice", "PASS", "9/9", "6/6"]]


def test_broken_setup_fails_exactly_the_expected_items(pytester, hand_built, hw):
    m = hand_built.submission(pytester.path / "alice.yaml")
    junit = pytester.path / "junit.xml"
    sheet_path = pytester.path / "grades.json"
    _set_b(hand_built, False)
    try:
        res = _run(pytester, "-rf", "--cnmlab-assignment", hw, "--cnmlab-manifest", m,
                   f"--junitxml={junit}", f"--cnmlab-json={sheet_path}")
    finally:
        _set_b(hand_built, True)
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
    # the grade sheet: one row per (learner, check), with points
    sheet = json.loads(sheet_path.read_text())
    rows = sheet["rows"]
    assert [(r["learner"], r["check"]) for r in rows] == [("alice", c) for c in CHECKS]
    assert {r["check"] for r in rows if not r["ok"]} == BROKEN
    for r in rows:
        assert set(r) >= {"learner", "check", "kind", "ok", "expected", "observed", "reason",
                          "points", "max_points", "graded"}
    learner = sheet["learners"]["alice"]
    assert {k: learner[k] for k in ("passed", "failed", "skipped", "total", "ok", "points",
                                    "max_points")} == \
        {"passed": 3, "failed": 3, "skipped": 0, "total": 6, "ok": False, "points": 3.0,
         "max_points": 9.0}
    matrix = next(r for r in rows if r["kind"] == "matrix")
    assert matrix["table"]["wrong_count"] == 2


def test_two_learners_a_refused_submission_and_deselection(pytester, hand_built, hw):
    alice = hand_built.submission(pytester.path / "alice.yaml")
    bob = pytester.path / "bob.yaml"
    bob.write_text("sandboxes:\n  a: {netns: x, pid: 3}\n")
    sheet_path = pytester.path / "g.json"
    res = _run(pytester, "--cnmlab-assignment", hw, "--cnmlab-submission", alice,
               "--cnmlab-submission", str(bob), f"--cnmlab-json={sheet_path}", "-k", "not matrix")
    res.assert_outcomes(passed=5, failed=5, deselected=2)
    out = res.stdout.str()
    assert "FAILED cnmlab/bob::reachable a -> b (icmp)" in out
    assert f"bob: submission refused: {bob}:2: sandboxes.a.pid: give exactly one of netns" in out
    sheet = json.loads(sheet_path.read_text())
    # the deselected matrix did not run: a failed row, never a pass
    alice_rows = {r["check"]: r for r in sheet["rows"] if r["learner"] == "alice"}
    assert alice_rows["matrix a b c (icmp)"]["ok"] is False
    assert alice_rows["matrix a b c (icmp)"]["reason"] == "not run: not selected"
    assert sheet["learners"]["alice"]["ok"] is False and sheet["learners"]["alice"]["points"] == 6
    assert sheet["learners"]["bob"]["failed"] == 6 and sheet["learners"]["bob"]["points"] == 0
    assert sheet["learners"]["bob"]["error"].startswith(f"{bob}:2: sandboxes.a.pid")


def test_profile_as_assignment_and_learner_fields_refused(pytester, hand_built):
    """The reproduced exploit, through pytest: the learner's profile list changes nothing."""
    alice = pytester.path / "alice.yaml"
    alice.write_text("name: alice\nprofile: [mtu]\n")
    res = _run(pytester, "--cnmlab-profile", "bridge", "--cnmlab-submission", str(alice))
    res.assert_outcomes(failed=15, skipped=2)  # the two optional checks are worth nothing
    assert "alice    FAIL    0/15" in res.stdout.str()


def test_cnmlab_check_fixture_and_marker(pytester, hand_built):
    from cnmlab.kernel import features

    m = hand_built.submission(pytester.path / "hand.yaml")
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
    assert "use KIND:ARG with KIND one of engine, manifest, submission, docker" in res.stderr.str()
    res = _run(pytester, "--cnmlab-profile=nosuch")
    assert res.ret == pytest.ExitCode.USAGE_ERROR
    assert "unknown profile 'nosuch'; known: bridge" in res.stderr.str()
    sub = pytester.path / "alice.yaml"
    sub.write_text("sandboxes: {}\n")
    res = _run(pytester, f"--cnmlab-submission={sub}")
    assert res.ret == pytest.ExitCode.USAGE_ERROR
    assert ("--cnmlab-submission needs --cnmlab-assignment FILE or --cnmlab-profile NAME: the "
            "instructor decides what is checked, never the submission") in res.stderr.str()
    (pytester.path / "x").mkdir()
    twin = pytester.path / "x" / "alice.yaml"
    twin.write_text("sandboxes: {}\n")
    res = _run(pytester, "--cnmlab-profile=bridge", f"--cnmlab-submission={sub}",
               f"--cnmlab-submission={twin}")
    assert res.ret == pytest.ExitCode.USAGE_ERROR
    assert "learner alice is given twice" in res.stderr.str()
    hw = pytester.path / "hw.yaml"
    hw.write_text(ASSIGNMENT)
    res = _run(pytester, f"--cnmlab-assignment={hw}", "--cnmlab-profile=bridge",
               f"--cnmlab-submission={sub}")
    assert res.ret == pytest.ExitCode.USAGE_ERROR
    assert "give --cnmlab-assignment or --cnmlab-profile, not both" in res.stderr.str()


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
