"""Every step of every lab: its checks FAIL before its solution and PASS after it (real kernel).

Also: a lab solved through a real shell (``ip netns exec NS bash`` fed the documented commands
on stdin, as a learner types them), two labs running at once, and start/reset/stop leaving no
namespace and no state file behind.
"""
from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import time

import pytest

from cnmlab import shells, state
from cnmlab.checks import dockerd
from cnmlab.kernel import rundir
from cnmlab.plugin import discovery, process
from cnmlab.workshop import labdocker, labfile
from cnmlab.workshop.progress import Progress
from cnmlab.workshop.runner import LabRun

pytestmark = pytest.mark.kernel

if os.geteuid() != 0:
    pytest.skip("lab tests need root", allow_module_level=True)

LABS = labfile.discover()
# a step runs where the kernel has what its lab and the step need (here, or the VM lane)
CASES = [pytest.param(lab, step, marks=pytest.mark.needs(*lab.needs, *step.needs),
                      id=f"{lab.id.split('-')[0]}-{step.id}")
         for lab in LABS for step in lab.steps]
_seq = itertools.count()


def _instance(tag: str) -> str:
    return f"t{os.getpid() % 100000}-{tag}{next(_seq)}"[:32]


@pytest.fixture(autouse=True)
def _progress(tmp_path, monkeypatch):
    monkeypatch.setenv("CNMLAB_PROGRESS", str(tmp_path / "progress.json"))


def _netns_list() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return {line.split()[0] for line in out.splitlines() if line.strip()}


def _fmt(results) -> str:
    return "\n".join(f"{'PASS' if r.ok else 'FAIL'} {r.check}: observed {r.observed}; {r.reason}"
                     for r in results)


@pytest.mark.parametrize("labdef,step", CASES)
def test_step_fails_before_and_passes_after_solution(labdef, step):
    run = LabRun(labdef, _instance("s"))
    try:
        run.start()
        if step.index > 0:
            run.solve(labdef.steps[step.index - 1])
        before = run.check(step)
        assert not all(r.ok for r in before), \
            f"step {step.id}: every check passes before its solution (a broken check):\n" \
            + _fmt(before)
        run.solve(step)
        after = run.check(step)
        assert all(r.ok for r in after), f"step {step.id} after its solution:\n" + _fmt(after)
        assert step.id in run.passed
    finally:
        run.stop()
    assert not state.exists(run.name)


def _shell(ns: str, script: str) -> subprocess.CompletedProcess[str]:
    """A learner's shell in a namespace: bash reading commands from stdin, one by one."""
    return subprocess.run(["ip", "netns", "exec", ns, "bash", "--norc", "--noprofile"],
                          input="set -e\n" + script + "\nexit 0\n", capture_output=True,
                          text=True, timeout=60)


def test_lab2_through_a_real_shell():
    labdef = labfile.get("02-default-bridge")
    run = LabRun(labdef, _instance("sh"))
    try:
        run.start()
        for step in labdef.steps:
            if any("sh" not in a.raw for a in step.solution):
                continue  # the engine step (compare-engine)
            for action in step.solution:
                ns = run.lab.netns_of(action.raw["in"])
                proc = _shell(ns, run.render(action.raw["sh"]))
                assert proc.returncode == 0, f"{step.id} in {action.raw['in']}: {proc.stderr}"
            results = run.check(step)
            assert all(r.ok for r in results), f"{step.id}:\n" + _fmt(results)
        # what the learner typed is visible to anyone looking at the kernel
        out = subprocess.run(["ip", "netns", "exec", run.lab.netns_of("host"), "bridge", "fdb",
                              "show", "br", "docker0"], capture_output=True, text=True).stdout
        assert "02:42:ac:11:00:02" in out
    finally:
        run.stop()


def test_two_labs_at_once_do_not_interfere():
    a = LabRun(labfile.get("01-sandboxes-by-hand"), _instance("a"))
    b = LabRun(labfile.get("01-sandboxes-by-hand"), _instance("b"))
    try:
        a.start()
        b.start()
        a.solve("address-and-ping")
        assert all(r.ok for r in a.check("address-and-ping"))
        # b is untouched: its sandboxes still have only lo, and lo is down
        assert not any(r.ok for r in b.check("veth-pair"))
        b.solve("address-and-ping")
        assert all(r.ok for r in b.check("address-and-ping"))
        a.stop()
        assert all(r.ok for r in b.check("address-and-ping"))
    finally:
        a.stop()
        b.stop()


def test_start_reset_stop_leave_nothing_behind():
    before = _netns_list()
    run = LabRun(labfile.get("03-nat-and-ports"), _instance("r"))
    try:
        run.start()
        mine = {ns for ns in _netns_list() - before if ns.startswith(f"cnm-{run.name}.")}
        assert mine, "the lab made no namespace"
        run.solve("masquerade")
        run.check("ip-forward")
        assert run.passed == ["ip-forward"]
        run.reset()
        assert run.passed == []
        assert run.current_step is not None and run.current_step.id == "ip-forward"
        # reset really rebuilt it: the setup ran again, forwarding is off again
        assert not all(r.ok for r in run.check("ip-forward"))
    finally:
        run.stop()
    assert not {ns for ns in _netns_list() if ns.startswith(f"cnm-{run.name}.")}
    assert not state.exists(run.name)
    assert not os.path.exists(os.path.join(rundir.STATE_DIR, f"{run.name}.json"))
    assert not os.path.exists(os.path.join(rundir.STATE_DIR, f"_{run.name}.lock"))


def test_hints_one_at_a_time_and_remembered(tmp_path):
    labdef = labfile.get("02-default-bridge")
    run = LabRun(labdef, "unused", progress=Progress(str(tmp_path / "p.json")))
    step = labdef.step("attach-c1")
    h1 = run.hint(step)
    assert (h1.number, h1.total) == (1, len(step.hints))
    again = LabRun(labdef, "unused", progress=Progress(str(tmp_path / "p.json")))
    assert again.hint(step).number == 2
    assert [h.number for h in again.hints_shown(step)] == [1, 2]


def test_lab10_runs_real_docker_and_stop_leaves_nothing():
    """Lab 10's dockerd: the lab's shells talk to it, its plugins are the learner's, and
    stopping the lab removes the daemon, the scratch folder and the plugins' sockets."""
    run = LabRun(labfile.get("10"), _instance("d"))
    try:
        run.start()
        ns = run.lab.netns_of("host")
        env = shells.shell_env(run.name, "host", ns)
        assert env["DOCKER_HOST"] == labdocker.docker_host(run.name)
        out = subprocess.run(["ip", "netns", "exec", ns, "docker", "version", "--format",
                              "{{.Server.Version}}"], env=env, capture_output=True, text=True,
                             timeout=60)
        assert out.stdout.startswith("20.10"), out.stderr
        run.solve("hello-docker")  # a plugin served from the lab's host
        sock = discovery.socket_path(f"{run.name}-mydriver")
        assert os.path.exists(sock)
        assert os.path.isdir(labdocker.work_folder(run.name))
    finally:
        run.stop()
    assert not os.path.exists(labdocker.workdir(run.name))
    assert not os.path.exists(labdocker.work_folder(run.name))
    assert not os.path.exists(sock) and not os.path.exists(sock + ".log")
    with open("/proc/self/mountinfo") as f:
        assert labdocker.workdir(run.name) not in f.read()
    assert dockerd.DAEMONS_DIR == os.path.dirname(labdocker.workdir(run.name))


def test_lab10_after_its_plugin_crashed_cnmlab_clean_leaves_nothing():
    """The learner's plugin dies (kill -9) with a Docker network made through it; 'cnmlab
    clean --lab' then removes the lab's dockerd, its namespaces, the plugin's socket and log."""
    run = LabRun(labfile.get("10"), _instance("k"))
    try:
        run.start()
        run.solve("hello-docker")  # a plugin served in the lab's host; network plug made by it
        sock = discovery.socket_path(f"{run.name}-mydriver")
        pid, start = process.recorded(sock)
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while process.start_time(pid) == start and time.monotonic() < deadline:
            time.sleep(0.05)
        assert process.start_time(pid) != start
        assert os.path.exists(sock)  # what the crash left
        with open(os.path.join(labdocker.workdir(run.name), "docker.pid")) as f:
            dockerd_pid = int(f.read())
        ns = run.lab.netns_of("host")
        run.lab.close()  # this process's netlink sockets would pin the namespaces
        cp = subprocess.run([sys.executable, "-m", "cnmlab.cli", "clean", "--lab", run.name],
                            capture_output=True, text=True, timeout=180)
        assert cp.returncode == 0, cp.stdout + cp.stderr
        # checked before run.stop() below, which would clean up after a clean that did not
        assert not os.path.exists(f"/proc/{dockerd_pid}")
        assert not os.path.exists(labdocker.workdir(run.name))
        with open("/proc/self/mountinfo") as f:
            assert labdocker.workdir(run.name) not in f.read()
        assert not os.path.exists(sock) and not os.path.exists(sock + ".log")
        assert not os.path.exists(f"/run/netns/{ns}")
        assert not state.exists(run.name)
    finally:
        run.stop()


def test_lab10_a_driver_whose_join_gives_no_gateway_is_caught_with_real_docker():
    """The deliberately wrong plugin, against real dockerd 20.10: step 2's driver (Join answers
    the interface, no Gateway) runs the gateway step's containers; Docker then routes them
    through docker_gwbridge instead of the plugin's bridge, and the step's route check fails."""
    labdef = labfile.get("10")
    run = LabRun(labdef, _instance("g"))
    try:
        run.start()
        run.solve("interface")  # the served driver is solution/interface.py: no Gateway
        gateway = labdef.step("gateway")
        run.apply_action(gateway.solution[1])  # plug2, g1 and g2: Docker calls that driver
        results = run.check(gateway)
        route = next(r for r in results if r.kind == "default-route")
        # Docker's own way out: eth1 on docker_gwbridge (which Docker NATs itself, so the
        # egress check alone would not notice); the route check does
        assert not route.ok and "10.78.0.1" not in route.observed, _fmt(results)
        assert "dev eth1" in route.observed, _fmt(results)
        assert "gateway" not in run.passed
        inspect = subprocess.run(["docker", "-H", labdocker.docker_host(run.name), "network",
                                  "ls", "--format", "{{.Name}}"], capture_output=True,
                                 text=True, timeout=60)
        assert "docker_gwbridge" in inspect.stdout.split(), inspect.stdout + inspect.stderr
    finally:
        run.stop()
    assert not state.exists(run.name)
