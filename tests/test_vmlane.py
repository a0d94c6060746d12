"""The VM test lane (``cnmlab.checks.vmlane``) itself, driven through real pytest runs.

* A test file mixing lane tests (one passing, one failing on purpose), host tests and an
  unknown feature: the lane tests run in the VM (another kernel, ``CNMLAB_IN_VM`` set), the
  others here; every outcome, the guest's assertion text and captured output included, shows
  in the host's terminal and JUnit report.
* The real feature tests (``test_vm_features.py``) booted with IPVS, ipvlan, 802.1Q and dummy
  blacklisted: all four fail, each on the kernel refusing its feature: a broken feature fails
  its test, it is not skipped.
* A VM that cannot finish (the lane's timeout) fails each lane test with the reason.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import xml.etree.ElementTree as ET

import pytest

pytestmark = pytest.mark.kernel
pytest_plugins = ["pytester"]
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

MIXED = """
import os
import pytest
from cnmlab.checks.vmlane import needs

HOST_KERNEL = {release!r}


@needs("ipvlan")
def test_in_vm_passes():
    assert os.environ.get("CNMLAB_IN_VM") == "1"
    assert os.uname().release != HOST_KERNEL


@pytest.mark.needs("dummy")
def test_in_vm_fails_on_purpose():
    print("the guest says hello")
    assert 1 + 1 == 3, "deliberate failure inside the VM"


@needs("veth")
def test_on_host():
    assert os.environ.get("CNMLAB_IN_VM") is None and os.uname().release == HOST_KERNEL


def test_plain():
    assert os.uname().release == HOST_KERNEL


@needs("no-such-feature")
def test_unknown_feature():
    pass
"""


def _junit(path: str) -> dict[str, ET.Element]:
    return {tc.get("name"): tc for tc in ET.parse(path).getroot().iter("testcase")}


def _props(tc: ET.Element) -> dict[str, str]:
    return {p.get("name"): p.get("value") for p in tc.iter("property")}


def test_lane_reports_guest_outcomes_as_host_outcomes(pytester):
    from cnmlab.kernel import features

    have = features.probe_all()
    if have.get("ipvlan") and have.get("dummy"):
        pytest.skip("this kernel has ipvlan and dummy: nothing here goes to the VM lane")
    pytester.makeini("[pytest]\nmarkers =\n    needs(feature): a kernel feature\n")
    pytester.makepyfile(test_mixed=MIXED.format(release=os.uname().release))
    xml = str(pytester.path / "junit.xml")
    res = pytester.runpytest_subprocess("-p", "no:randomly", "-p", "no:cacheprovider", "-v",
                                        f"--junitxml={xml}", timeout=600)
    res.assert_outcomes(passed=3, failed=1, errors=1)  # the unknown feature: an error
    out = res.stdout.str()
    assert "test_mixed.py::test_in_vm_passes PASSED (vm)" in out
    assert "test_mixed.py::test_in_vm_fails_on_purpose FAILED (vm)" in out
    assert "test_mixed.py::test_on_host PASSED" in out and "test_on_host PASSED (vm)" not in out
    assert "deliberate failure inside the VM" in out and "the guest says hello" in out
    assert "needs: unknown feature 'no-such-feature'" in out
    assert "cnmlab vm lane: 2 test(s) ran in the full-kernel VM" in out
    cases = _junit(xml)
    failure = cases["test_in_vm_fails_on_purpose"].find("failure")
    assert failure is not None and "deliberate failure inside the VM" in failure.get("message", "")
    assert "cnmlab_vm" in _props(cases["test_in_vm_passes"])
    assert "cnmlab_vm" in _props(cases["test_in_vm_fails_on_purpose"])
    assert "cnmlab_vm" not in _props(cases["test_on_host"])


def test_broken_features_fail_their_lane_tests(tmp_path):
    xml = str(tmp_path / "junit.xml")
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:randomly",
                        "--cnmlab-vm=always",
                        "--cnmlab-vm-append=module_blacklist=ip_vs,ipvlan,8021q,dummy",
                        f"--junitxml={xml}", "tests/test_vm_features.py"],
                       cwd=REPO, capture_output=True, text=True, timeout=900)
    assert r.returncode == 1, r.stdout[-3000:]
    assert "4 failed" in r.stdout, r.stdout[-3000:]
    cases = _junit(xml)
    assert len(cases) == 4
    # each fails on the kernel refusing its feature, not on something incidental
    refused = {"ipvs": "ipvsadm -A -t 10.61.0.1:8080 -s rr in cnmt-vm",
               "ipvlan": "create ipvlan link ipv-a",
               "vlan": "create vlan link eth0.10",
               "dummy": "create dummy link dm-parent"}
    for name, tc in cases.items():
        failure = tc.find("failure")
        assert failure is not None, name
        text = (failure.get("message") or "") + (failure.text or "")
        feature = name.split("_")[1]
        assert refused[feature] in text, (name, text[-1500:])
        assert ("IP Virtual Server is built in the kernel" in text if feature == "ipvs" else
                "the running kernel does not support this" in text), (name, text[-1500:])
        assert "cnmlab_vm" in _props(tc)


def test_a_vm_that_cannot_finish_fails_each_lane_test_saying_why(pytester):
    pytester.makepyfile(test_t="""
        from cnmlab.checks.vmlane import needs

        @needs("ipvs")
        def test_a():
            pass

        @needs("ipvlan")
        def test_b():
            pass
    """)
    res = pytester.runpytest_subprocess("-p", "no:randomly", "-p", "no:cacheprovider",
                                        "--cnmlab-vm=always", "--cnmlab-vm-timeout=1",
                                        timeout=300)
    res.assert_outcomes(errors=2)
    out = res.stdout.str()
    assert out.count("the VM lane could not run: the VM did not finish within 1 s") >= 2


def test_the_sweep_removes_only_folders_of_runs_that_are_gone(tmp_path, monkeypatch) -> None:
    """A dead run's folder goes, a live run's stays, an unreadable name stays (CI stop 18 crashed here)."""
    import tempfile

    from cnmlab.checks import vmlane

    monkeypatch.setattr(tempfile, "gettempdir", lambda: str(tmp_path))
    dead = subprocess.Popen(["true"])
    dead.wait()
    names = {
        "dead": f"{vmlane.LANE_PREFIX}{dead.pid}-abc",
        "dead_xdist": f"{vmlane.LANE_PREFIX}{dead.pid}-xdist",
        "live": f"{vmlane.LANE_PREFIX}{os.getpid()}-abc",
        "odd": f"{vmlane.LANE_PREFIX}notapid",
        "other": "someone-elses-folder",
    }
    for name in names.values():
        (tmp_path / name).mkdir()
    vmlane._sweep()
    left = {p.name for p in tmp_path.iterdir()}
    assert left == {names["live"], names["odd"], names["other"]}


def test_a_lane_test_after_a_host_test_tears_the_host_fixtures_down(pytester):
    """A lane test is reported, not run, here: the host's setup state must still be torn down
    to the next test's needs, or the next file's first test errors with "previous item was not
    torn down properly" (seen in CI on test_overlay.py after test_labs.py's last lane test).
    A one-second lane timeout keeps this cheap: the lane tests error, the rest must not."""
    pytester.makepyfile(test_a="""
        import pytest
        from cnmlab.checks.vmlane import needs

        @pytest.fixture(scope="module")
        def mod_a():
            print("SETUP mod_a")
            yield
            print("TEARDOWN mod_a")

        def test_host_first(mod_a):
            pass

        @needs("ipvs")
        def test_lane_between(mod_a):
            pass

        def test_host_again(mod_a):
            pass

        @needs("ipvlan")
        def test_lane_last():
            pass
    """, test_b="""
        import pytest

        @pytest.fixture(scope="module")
        def mod_b():
            print("SETUP mod_b")
            yield
            print("TEARDOWN mod_b")

        def test_next_file(mod_b):
            pass
    """)
    res = pytester.runpytest_subprocess("-p", "no:randomly", "-p", "no:cacheprovider", "-s",
                                        "--cnmlab-vm=always", "--cnmlab-vm-timeout=1",
                                        "test_a.py", "test_b.py", timeout=300)
    out = res.stdout.str()
    assert "previous item was not torn down properly" not in out, out
    res.assert_outcomes(passed=3, errors=2)
    # the module fixture lives across the lane test between its users, and goes before test_b's
    events = re.findall(r"(?:SETUP|TEARDOWN) mod_[ab]", out)
    assert events == ["SETUP mod_a", "TEARDOWN mod_a", "SETUP mod_b", "TEARDOWN mod_b"], out
