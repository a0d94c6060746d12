"""Grading an instructor can trust: every exploit reproduced in issue 9 is closed.

The instructor's assignment decides what is checked, what it is worth and how long it may
take; a learner's submission only says which of their namespaces plays which role. Each test
names the exploit it reproduces. Networking runs on real namespaces built by hand
(``_handbuilt``: a, b on br0; c on br1; the host does not forward, so c is isolated).
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
import time
import xml.etree.ElementTree as ET

import pytest

from _handbuilt import ADDR, HandBuilt
from cnmlab.checks import assignment as amod
from cnmlab.checks import grading, report
from cnmlab.checks.kinds import run_check
from cnmlab.checks.submission import SubmissionTarget
from cnmlab.errors import InvalidInput

pytestmark = pytest.mark.kernel

if os.geteuid() != 0:
    pytest.skip("needs root", allow_module_level=True)

ASSIGNMENT = """\
name: hw
budget: 30
deadline: 5
checks:
  - {id: ab, check: {reachable: {from: a, to: b}}, points: 2}
  - {id: ba, check: {reachable: {from: b, to: a}}}
  - {id: ac, check: {isolated: {from: a, to: c, timeout: 0.5}}}
  - {id: matrix, check: {matrix: {sandboxes: [a, b, c], groups: [[a, b]], timeout: 0.5}},
     points: 3}
  - {id: mtu, check: {mtu: {sandbox: a, mtu: 1500}}}
  - {id: br0, check: {link: {ns: "host:h", name: br0, kind: bridge, up: true}}}
"""
LABELS = ["reachable a -> b (icmp)", "reachable b -> a (icmp)", "isolated a -> c (icmp)",
          "matrix a b c (icmp)", "mtu a eth0 = 1500", "link br0 in host:h"]


@pytest.fixture(scope="module")
def hb():
    hb = HandBuilt("grd").build()
    try:
        yield hb
    finally:
        hb.teardown()


@pytest.fixture
def hw(tmp_path):
    p = tmp_path / "hw.yaml"
    p.write_text(ASSIGNMENT)
    return amod.load(str(p))


def cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cnmlab.cli", *args], capture_output=True,
                          text=True, timeout=timeout)


def by_name(grades):
    return {g.learner: g for g in grades}


# ---------------------------------------------------------------------------------------------
# the assignment decides what is checked


def test_assignment_file(hw):
    assert [c.label for c in hw.checks] == LABELS
    assert [c.points for c in hw.checks] == [2, 1, 1, 3, 1, 1] and hw.max_points == 9
    assert hw.budget == 30 and {c.deadline for c in hw.checks} == {5}
    prof = amod.from_profile("bridge")
    assert len(prof.checks) == 17 and prof.max_points == 15  # two optional checks, worth 0


@pytest.mark.parametrize("body, where", [
    ("checks: []\n", "a.yaml:1: the assignment grades nothing"),
    ("profile: nosuch\n", "a.yaml:1: profile: unknown profile 'nosuch'; known: bridge"),
    ("profile: bridge\nskip: [nope]\n", "a.yaml:2: skip.0: no check 'nope' in profile bridge"),
    ("profile: bridge\npoints: {nope: 2}\n", "a.yaml:2: points.nope: no check 'nope'"),
    ("profile: bridge\nbudget: -1\n", "a.yaml:2: budget: must be a number of seconds"),
    ("checks:\n  - {check: {reachable: {from: a, to: b, timeout: 9}}, deadline: 5}\n",
     "a.yaml:2: checks.0.deadline: deadline 5 s is not longer than the check's own timeout"),
    ("checks:\n  - {id: x, check: {mtu: {sandbox: a, mtu: 1500}}}\n"
     "  - {id: x, check: {mtu: {sandbox: b, mtu: 1500}}}\n", "a.yaml:3: checks.1.id: id 'x' is "
                                                            "used twice"),
    ("checks:\n  - {check: {pingpong: {}}}\n", "a.yaml:2: checks.0.check: unknown check"),
    ("profile: bridge\nlearner: alice\n", "a.yaml:2: learner: unknown field"),
])
def test_assignment_errors_name_file_line_field(tmp_path, body, where):
    p = tmp_path / "a.yaml"
    p.write_text(body)
    with pytest.raises(InvalidInput) as e:
        amod.load(str(p))
    assert str(e.value).startswith(f"{tmp_path}/{where}"), str(e.value)


def test_a_sound_submission_passes_with_points(hb, hw, tmp_path):
    sub = hb.submission(tmp_path / "alice.yaml")
    [g] = grading.grade(hw, amod.learners([sub]))
    assert g.learner == "alice" and g.ok, [(r.check, r.reason) for r in g.results if not r.ok]
    assert [r.check for r in g.results] == LABELS
    assert (g.points, g.max_points) == (9, 9)


def test_exploit_profile_list_in_the_learner_file(tmp_path):
    """Reproduced: ``name: alice`` + ``profile: [mtu]`` graded with ``--profile bridge``
    printed ``alice PASS 0/17`` and exited 0."""
    alice = tmp_path / "alice.yaml"
    alice.write_text("name: alice\nprofile: [mtu]\n")
    cp = cli("grade", str(alice), "--profile", "bridge")
    assert cp.returncode == 1, cp.stdout + cp.stderr
    line = cp.stdout.splitlines()[1]
    assert line.split()[:4] == ["alice", "FAIL", "0/15", "0/17"], cp.stdout
    assert f"submission refused: {alice}:1: name: a submission does not name its learner" in line
    # without the name, the profile list is refused just the same, on its own line
    alice.write_text("sandboxes: {}\nprofile: [mtu]\n")
    with pytest.raises(InvalidInput, match=r"alice.yaml:2: profile: a submission cannot choose "
                                           r"what is graded"):
        SubmissionTarget(str(alice))
    # and a submission naming nothing is 17 failures with reasons, never "nothing failed"
    alice.write_text("sandboxes: {}\n")
    cp = cli("grade", str(alice), "--profile", "bridge", "--json", str(tmp_path / "g.json"))
    assert cp.returncode == 1 and cp.stdout.splitlines()[1].split()[:4] == \
        ["alice", "FAIL", "0/15", "0/17"], cp.stdout
    rows = json.loads((tmp_path / "g.json").read_text())["rows"]
    required = [r for r in rows if not r["optional"]]
    assert len(required) == 15 and not any(r["ok"] for r in required)
    assert all(r["reason"] for r in required)
    assert "no sandbox 'c1' in submission alice" in required[0]["reason"]


def test_a_check_that_did_not_run_is_a_failure(hb, hw, tmp_path):
    sub = hb.submission(tmp_path / "alice.yaml")
    [g] = grading.grade(hw, amod.learners([sub]), selected={"alice": {0, 1}})
    assert [r.ok for r in g.results] == [True, True, False, False, False, False]
    assert all(r.reason == "not run: not selected" for r in g.results[2:])
    assert g.points == 3 and not g.ok


# ---------------------------------------------------------------------------------------------
# identity comes from the grader


def test_exploit_name_in_the_file(hb, hw, tmp_path):
    """Found in the code: ``name: bob`` graded the file as bob."""
    sub = hb.submission(tmp_path / "alice.yaml", "name: bob\n")
    grades = grading.grade(hw, amod.learners([sub]))
    assert [g.learner for g in grades] == ["alice"]
    assert grades[0].error.startswith(f"{sub}:7: name: a submission does not name its learner")
    assert all(not r.ok and "submission was refused" in r.reason for r in grades[0].results)
    # the identity is the grader's: the file name, or NAME=PATH
    clean = hb.submission(tmp_path / "x.yaml")
    assert [lr.name for lr in amod.learners([clean, f"carol={clean}"])] == ["x", "carol"]


def test_two_submissions_with_one_identity_are_an_error(hb, tmp_path):
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    a1 = hb.submission(tmp_path / "one" / "alice.yaml")
    a2 = hb.submission(tmp_path / "two" / "alice.yaml")
    with pytest.raises(InvalidInput, match="learner alice is given twice"):
        amod.learners([a1, a2])
    cp = cli("grade", a1, a2, "--profile", "bridge")
    assert cp.returncode == 1 and cp.stdout == ""
    assert cp.stderr.strip() == (f"cnmlab: learner alice is given twice ({a1} and {a2}): one "
                                 f"submission per learner (name them with NAME=PATH)")
    with pytest.raises(InvalidInput, match="learner bob is given twice"):
        amod.learners([f"bob={a1}", f"bob={a2}"])


# ---------------------------------------------------------------------------------------------
# a learner never names code, and never changes the grade


def test_exploit_python_check_in_the_learner_file(hb, tmp_path):
    """Found in the code: a learner's ``python:`` check (any importable function) ran as root
    in the grader."""
    sub = hb.submission(tmp_path / "mallory.yaml", """\
        extra_checks:
          - python: {call: "os:system", command: "touch /tmp/pwned"}
        """)
    with pytest.raises(InvalidInput) as e:
        SubmissionTarget(sub)
    assert str(e.value) == (f"{sub}:8: extra_checks.0.python: a python check runs code named in "
                            f"the file: a submission cannot name code to run")
    old = hb.submission(tmp_path / "old.yaml", """\
        checks:
          - python: {call: "os:system"}
        """)
    with pytest.raises(InvalidInput, match=r"old.yaml:7: checks: a submission cannot choose "
                                           r"what is graded"):
        SubmissionTarget(old)


def test_learner_checks_are_reported_apart_and_never_graded(hb, hw, tmp_path):
    sub = hb.submission(tmp_path / "alice.yaml", """\
        extra_checks:
          - reachable: {from: a, to: b}
          - reachable: {from: a, to: c, timeout: 0.5}
        """)
    [g] = grading.grade(hw, amod.learners([sub]))
    assert g.ok and (g.points, g.max_points) == (9, 9)
    assert [(r.check, r.ok) for r in g.extra] == [
        ("reachable a -> b (icmp) (own check #1)", True),
        ("reachable a -> c (icmp) (own check #2)", False)]
    sheet = report.grading_sheet([g], hw)
    assert sheet["ok"] is True
    assert sheet["learners"]["alice"]["passed"] == 6 and sheet["learners"]["alice"]["total"] == 6
    own = [r for r in sheet["rows"] if r["graded"] is False]
    assert len(own) == 2 and own[1]["ok"] is False
    table = report.render_grades(sheet)
    assert "own checks (not graded): 1/2 passed; failed: reachable a -> c" in table


# ---------------------------------------------------------------------------------------------
# the machine's own namespace is refused, under any name


@pytest.mark.parametrize("ref", [
    "path: /proc/self/ns/net", "path: /proc/1/ns/net", "path: /proc/thread-self/ns/net",
    "pid: 1", f"pid: {os.getpid()}"])
def test_exploit_machine_namespace(tmp_path, ref):
    """Reproduced: ``sandboxes: {me: {path: /proc/self/ns/net}}`` with a reachable check to
    127.0.0.1 passed, probing in the grader's own (the machine's) namespace."""
    sub = tmp_path / "eve.yaml"
    sub.write_text(f"sandboxes:\n  me:\n    {ref}\n    addresses: {{lan: 10.9.9.9}}\n")
    with pytest.raises(InvalidInput) as e:
        SubmissionTarget(str(sub))
    msg = str(e.value)
    key = ref.split(":")[0]
    assert msg.startswith(f"{sub}:3: sandboxes.me.{key}: ") and "\n" not in msg
    # where PID 1 belongs to another user namespace (some containers) its file cannot even be
    # opened: refused as well, for that reason
    assert re.search(r" is the (machine|grader)'s own network namespace: name a namespace you "
                     r"created$", msg) or msg.endswith("cannot be entered (Permission denied)"), \
        msg


def test_exploit_machine_namespace_graded(tmp_path):
    a = tmp_path / "a.yaml"
    a.write_text("checks:\n  - {id: lo, check: {reachable: {from: me, to: 127.0.0.1}}}\n")
    eve = tmp_path / "eve.yaml"
    eve.write_text("sandboxes:\n  me: {path: /proc/self/ns/net}\n")
    cp = cli("grade", "--assignment", str(a), str(eve))
    assert cp.returncode == 1
    assert cp.stdout.splitlines()[1].split()[:4] == ["eve", "FAIL", "0/1", "0/1"]


PRIVATE = textwrap.dedent("""\
    import os, subprocess, sys
    from cnmlab.checks.kinds import run_check
    from cnmlab.checks.submission import SubmissionTarget
    from cnmlab.errors import CnmError

    def sh(*a):
        subprocess.run(a, check=True)

    real = os.open(sys.argv[1], os.O_RDONLY)          # a learner's real namespace
    sh("mount", "-t", "tmpfs", "none", "/run/netns")  # private: nothing shows outside
    for n in ("evil", "swap"):
        open(f"/run/netns/{n}", "w").close()
    sh("mount", "--bind", f"/proc/{os.getpid()}/ns/net", "/run/netns/evil")
    sh("mount", "--bind", f"/proc/{os.getpid()}/fd/{real}", "/run/netns/swap")
    for n in ("evil", "swap"):
        try:
            t = SubmissionTarget.from_text(
                "sandboxes: {me: {netns: %s, addresses: {lan: 10.77.0.2}}}" % n, "e.yaml", "e")
            print(n, "loaded")
        except CnmError as e:
            print(n, "refused:", e)
    # swapped after loading: the check itself refuses to enter it
    sh("umount", "/run/netns/swap")
    sh("mount", "--bind", f"/proc/{os.getpid()}/ns/net", "/run/netns/swap")
    r = run_check(t, {"reachable": {"from": "me", "to": "127.0.0.1"}})
    print("swap check:", r.ok, r.reason)
    """)


def test_bind_mounts_of_the_machine_namespace(hb):
    """A bind mount of the machine's namespace (the grader runs in it) under /run/netns
    (``netns: NAME``), at load time and swapped in after loading; done in a private mount
    namespace so nothing leaks out."""
    cp = subprocess.run(["unshare", "--mount", "--propagation", "private", sys.executable, "-c",
                         PRIVATE, f"/run/netns/{hb['a']}"],
                        capture_output=True, text=True, timeout=60)
    assert cp.returncode == 0, cp.stderr
    out = cp.stdout.splitlines()
    assert out[0] == ("evil refused: e.yaml:1: sandboxes.me.netns: netns evil is the machine's "
                      "own network namespace: name a namespace you created")
    assert out[1] == "swap loaded"
    assert out[2] == ("swap check: False netns swap is the machine's own network "
                      "namespace: name a namespace you created"), out[2]


def test_a_process_in_the_root_namespace_is_refused(tmp_path):
    proc = subprocess.Popen(["sleep", "30"])
    try:
        sub = tmp_path / "eve.yaml"
        sub.write_text(f"hosts:\n  h: {{pid: {proc.pid}}}\n")
        with pytest.raises(InvalidInput, match=r"eve.yaml:2: hosts.h.pid: the netns of PID "
                                               rf"{proc.pid} is the (machine|grader)'s own"):
            SubmissionTarget(str(sub))
    finally:
        proc.kill()
        proc.wait()


# ---------------------------------------------------------------------------------------------
# one learner's hung namespace cannot stall the class

COURSE = textwrap.dedent("""\
    # an instructor's check that talks to the learner's service with a blocking socket
    import os
    import socket

    from cnmlab.kernel import netns
    from cnmlab.checks.api import CheckResult


    def banner(target, params):
        sb = target.sandboxes()[params["sandbox"]]
        with sb.ns.opened() as fd:
            with netns.entered(fd=fd):
                s = socket.socket()
        s.connect((sb.ip(), params["port"]))
        line = s.makefile("rb").readline()   # no timeout: waits as long as the server does
        return CheckResult("banner", "python", line.startswith(b"hello"), "hello",
                           repr(line), "" if line else "no banner")


    def crash(target, params):
        return 1 / 0


    def die(target, params):
        os._exit(3)
    """)

SERVER = ("import socket, sys, time\n"
          "s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
          "s.bind(('0.0.0.0', 7007)); s.listen(8)\n"
          "while True:\n"
          "    c, _ = s.accept()\n"
          "    if sys.argv[1] == 'hello': c.sendall(b'hello\\n')\n"
          "    else: time.sleep(3600)\n")


@pytest.fixture
def course(tmp_path, monkeypatch):
    (tmp_path / "course_checks.py").write_text(COURSE)
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


@pytest.fixture
def servers(hb):
    """a's service accepts and never answers (hung); b's says hello."""
    procs = [subprocess.Popen(["ip", "netns", "exec", hb[n], sys.executable, "-c", SERVER, mode])
             for n, mode in (("a", "hang"), ("b", "hello"))]
    time.sleep(0.5)
    yield
    for p in procs:
        p.kill()
        p.wait()


def _swapped(hb, path):
    """A learner whose sandbox 'a' is namespace b (the one that answers), and vice versa."""
    text = hb.submission(path)
    body = open(text).read()
    body = body.replace(f"netns: {hb['a']}, addresses: {{lan: {ADDR['a']}}}", "@A@") \
        .replace(f"netns: {hb['b']}, addresses: {{lan: {ADDR['b']}}}",
                 f"netns: {hb['a']}, addresses: {{lan: {ADDR['a']}}}") \
        .replace("@A@", f"netns: {hb['b']}, addresses: {{lan: {ADDR['b']}}}")
    with open(path, "w") as f:
        f.write(body)
    return str(path)


def test_exploit_hung_namespace(hb, course, servers, tmp_path):
    a = tmp_path / "hw.yaml"
    a.write_text(textwrap.dedent("""\
        budget: 20
        checks:
          - {id: banner, check: {python: {call: "course_checks:banner", sandbox: a,
                                          port: 7007}}, deadline: 2, points: 2}
          - {id: ab, check: {reachable: {from: a, to: b}}}
          - {id: mtu, check: {mtu: {sandbox: a, mtu: 1500}}}
        """))
    hw = amod.load(str(a))
    hung = hb.submission(tmp_path / "hung.yaml")
    fine = _swapped(hb, tmp_path / "fine.yaml")
    t0 = time.monotonic()
    grades = by_name(grading.grade(hw, amod.learners([hung, fine]), jobs=1))
    took = time.monotonic() - t0
    assert took < 12, took  # one deadline (2 s), not the hang (an hour)
    g = grades["hung"]
    assert [r.ok for r in g.results] == [False, True, True]
    assert g.results[0].reason == ("did not finish within its deadline of 2 s (the worker was "
                                   "stopped)")
    assert (g.points, g.max_points) == (2, 4)
    assert grades["fine"].ok and grades["fine"].points == 4


def test_budget_cuts_a_learner_off_and_the_class_goes_on(hb, course, servers, tmp_path):
    a = tmp_path / "hw.yaml"
    a.write_text(textwrap.dedent("""\
        budget: 3
        deadline: 2
        checks:
          - {id: b1, check: {python: {call: "course_checks:banner", sandbox: a, port: 7007}}}
          - {id: b2, check: {python: {call: "course_checks:banner", sandbox: a, port: 7007}}}
          - {id: mtu, check: {mtu: {sandbox: a, mtu: 1500}}}
        """))
    hw = amod.load(str(a))
    grades = by_name(grading.grade(hw, amod.learners([hb.submission(tmp_path / "hung.yaml"),
                                                      _swapped(hb, tmp_path / "fine.yaml")]),
                                   jobs=2))
    reasons = [r.reason for r in grades["hung"].results]
    assert reasons[0] == "did not finish within its deadline of 2 s (the worker was stopped)"
    assert reasons[1] == "hung's time budget of 3 s ran out during this check"
    assert reasons[2] == "not run: hung's time budget of 3 s ran out before it"
    assert grades["hung"].points == 0 and grades["hung"].seconds < 5
    assert grades["fine"].ok


def test_an_exception_inside_a_check_is_a_failed_row(hb, course, tmp_path):
    a = tmp_path / "hw.yaml"
    a.write_text(textwrap.dedent("""\
        checks:
          - {id: crash, check: {python: {call: "course_checks:crash"}}}
          - {id: die, check: {python: {call: "course_checks:die"}}}
          - {id: ab, check: {reachable: {from: a, to: b}}}
          - {id: gone, check: {reachable: {from: nobody, to: b}}}
        """))
    hw = amod.load(str(a))
    [g] = grading.grade(hw, amod.learners([hb.submission(tmp_path / "alice.yaml")]))
    assert [r.ok for r in g.results] == [False, False, True, False]
    assert g.results[0].reason == "the check crashed: ZeroDivisionError: division by zero"
    assert g.results[1].reason == "the grader's worker died during this check (exit code 3)"
    assert "no sandbox 'nobody' in submission alice" in g.results[3].reason


def test_resolv_conf_fifo_cannot_hang_a_check(hb, tmp_path):
    """A learner's process whose /etc/resolv.conf is a FIFO: reading it used to block the
    grader forever (open() of a FIFO waits for a writer); now it is one failed row."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    proc = subprocess.Popen(["ip", "netns", "exec", hb["a"], "unshare", "--mount",
                             "--propagation", "private", "sh", "-c",
                             f"mount --bind {fifo} /etc/resolv.conf && exec sleep 60"])
    try:
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            try:
                if os.path.realpath(f"/proc/{proc.pid}/exe").endswith("sleep"):
                    break
            except OSError:
                pass
            time.sleep(0.05)
        sub = tmp_path / "dave.yaml"
        sub.write_text(f"sandboxes:\n  a: {{pid: {proc.pid}, addresses: {{lan: 10.77.0.2}}}}\n")
        t0 = time.monotonic()
        r = run_check(SubmissionTarget(str(sub)),
                      {"dns-resolves": {"from": "a", "name": "b", "expect": "10.77.0.3"}})
        assert time.monotonic() - t0 < 2
        assert not r.ok and r.reason == f"/proc/{proc.pid}/root/etc/resolv.conf is not a " \
                                        f"regular file", r.reason
    finally:
        proc.kill()
        proc.wait()


# ---------------------------------------------------------------------------------------------
# malformed submissions fail their learner only


@pytest.mark.parametrize("name, body, where", [
    ("anchor", "sandboxes: &h {h1: *h}\n", "anchor.yaml:1: sandboxes.h1: recursive alias"),
    ("bomb", "".join(f"{n}: &{n} [{', '.join(['*' + p] * 9) if p else 'x, x, x, x, x, x, x, x, x'}]\n"
                     for p, n in zip(["", "a", "b", "c", "d", "e", "f"],
                                     ["a", "b", "c", "d", "e", "f", "g"])),
     "bomb.yaml:6: f: the document expands to more than 100000 nodes"),
    ("types", "sandboxes:\n  a: {pid: '12'}\n", "types.yaml:2: sandboxes.a.pid: '12' is not a "
                                                "process id"),
    ("notyaml", "sandboxes: [\n", "notyaml.yaml:2: malformed YAML"),
    ("unknown", "sandboxes: {}\nweights: 3\n", "unknown.yaml:2: weights: unknown field"),
])
def test_malformed_submission_fails_that_learner_only(hb, hw, tmp_path, name, body, where):
    bad = tmp_path / f"{name}.yaml"
    bad.write_text(body)
    good = hb.submission(tmp_path / "alice.yaml")
    grades = by_name(grading.grade(hw, amod.learners([str(bad), good])))
    assert grades["alice"].ok
    g = grades[name]
    assert g.error.startswith(f"{tmp_path}/{where}"), g.error
    assert "\n" not in g.error
    assert len(g.results) == len(hw.checks) and not any(r.ok for r in g.results)


# ---------------------------------------------------------------------------------------------
# the CLI: table, JSON, JUnit


def test_grade_cli_outputs(hb, tmp_path):
    a = tmp_path / "hw.yaml"
    a.write_text(ASSIGNMENT)
    good = hb.submission(tmp_path / "alice.yaml")
    lazy = tmp_path / "bob.yaml"  # bob claims b at the wrong address: his reach to b fails
    lazy.write_text(open(good).read().replace("lan: 10.77.0.3", "lan: 10.77.0.9"))
    out_json, out_junit = tmp_path / "g.json", tmp_path / "g.xml"
    cp = cli("grade", "--assignment", str(a), good, str(lazy), "--json", str(out_json),
             "--junit", str(out_junit))
    assert cp.returncode == 1, cp.stdout + cp.stderr
    lines = cp.stdout.splitlines()
    assert lines[0].split() == ["learner", "result", "points", "passed", "failed", "checks"]
    assert lines[1].split()[:4] == ["alice", "PASS", "9/9", "6/6"]
    assert lines[2].split()[:4] == ["bob", "FAIL", "4/9", "4/6"]
    assert "reachable a -> b (icmp); matrix a b c (icmp)" in lines[2]
    sheet = json.loads(out_json.read_text())
    assert len(sheet["rows"]) == 12 and sheet["ok"] is False
    assert sheet["assignment"]["name"] == "hw" and sheet["assignment"]["max_points"] == 9
    assert sheet["learners"]["bob"]["points"] == 4
    assert {r["id"] for r in sheet["rows"]} == {"ab", "ba", "ac", "matrix", "mtu", "br0"}
    suites = ET.parse(out_junit).getroot().findall("testsuite")
    assert [s.get("name") for s in suites] == ["alice", "bob"]
    assert [s.get("failures") for s in suites] == ["0", "2"]
    cp = cli("grade", str(good))
    assert cp.returncode == 2 and "one of the arguments --assignment --profile is required" \
        in cp.stderr
    cp = cli("grade", "--assignment", str(a), str(tmp_path / "no.yaml"))
    assert cp.returncode == 1
    assert f"submission refused: {tmp_path / 'no.yaml'}: No such file or directory" in cp.stdout


def test_examples_load():
    root = os.path.join(os.path.dirname(__file__), "..", "examples", "grading")
    a = amod.load(os.path.join(root, "assignment.yaml"))
    assert a.profile == "bridge" and "hairpin" not in {c.id for c in a.checks}
    assert a.max_points == 21 and a.budget == 60
    t = SubmissionTarget(os.path.join(root, "alice.yaml"))
    assert t.learner == "alice" and set(t.sandboxes()) == {f"c{i}" for i in range(1, 7)}
    assert t.upstream().ip() == "198.51.100.10"
