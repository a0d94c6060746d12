"""Root acts on no file another user could have planted, and signals only the process it started.

* Private runtime folders (the state folder, the dockerd harness's folders under /tmp) are made
  0700 and checked before use: one planted by another user, writable by others or a symlink is
  refused with a one-line error, and nothing is read from or written into it.
* A recorded process (the DNS resolver, the dockerd harness's daemons) is signalled only while
  its PID still names the process that was recorded (PID and start time).
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cnmlab.kernel import procs, rundir

pytestmark = pytest.mark.kernel

if os.geteuid() != 0:
    pytest.skip("needs root (plants folders as another user)", allow_module_level=True)

NOBODY = 65534


def cnmlab(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cnmlab.cli", *args], capture_output=True,
                          text=True, timeout=60, env={**os.environ, **(env or {})})


def _planted(tmp_path: Path, how: str) -> Path:
    d = tmp_path / "run-cnmlab"
    if how == "other-user":
        d.mkdir(mode=0o700)
        os.chown(d, NOBODY, NOBODY)
    elif how == "world-writable":
        d.mkdir()
        os.chmod(d, 0o777)
    elif how == "group-writable":
        d.mkdir()
        os.chmod(d, 0o770)
    elif how == "symlink":
        target = tmp_path / "elsewhere"
        target.mkdir(mode=0o700)
        d.symlink_to(target)
    elif how == "file":
        d.write_text("")
    return d


PLANTS = ["other-user", "world-writable", "group-writable", "symlink", "file"]


@pytest.mark.parametrize("how", PLANTS)
def test_planted_folder_is_refused(tmp_path, how):
    d = _planted(tmp_path, how)
    before = os.lstat(d)
    with pytest.raises(rundir.UnsafeRunDir, match=f"refusing to use {d}") as e:
        rundir.private_dir(str(d))
    assert "\n" not in str(e.value)
    after = os.lstat(d)
    assert (after.st_uid, after.st_mode) == (before.st_uid, before.st_mode), "it was altered"


def test_private_folder_is_made_0700_and_an_old_0755_one_tightened(tmp_path):
    fresh = tmp_path / "fresh"
    rundir.private_dir(str(fresh))
    st = os.lstat(fresh)
    assert (st.st_uid, st.st_mode & 0o7777) == (0, 0o700)
    old = tmp_path / "old"
    old.mkdir(mode=0o755)  # what cnmlab made before: only root could write into it
    os.chmod(old, 0o755)
    rundir.private_dir(str(old))
    assert os.lstat(old).st_mode & 0o7777 == 0o700


@pytest.mark.parametrize("how", ["other-user", "world-writable", "symlink"])
def test_cli_refuses_a_planted_state_folder(tmp_path, lab_name, how):
    """A forged state folder: root neither reads the labs in it nor builds a lab into it."""
    d = _planted(tmp_path, how)
    target = d.resolve() if how == "symlink" else d
    (target / f"{lab_name}.json").write_text('{"name": "%s"}' % lab_name)
    (target / f"{lab_name}.ns").write_text("cnm-victim.ns\n")
    env = {"CNMLAB_STATE_DIR": str(d)}
    for args in (["ls"], ["down", lab_name], ["clean", "--lab", lab_name]):
        r = cnmlab(*args, env=env)
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 1 and len(lines) == 1, (args, r.stdout, r.stderr)
        assert f"refusing to use {d}" in lines[0] and "Traceback" not in r.stderr
    topo = tmp_path / "topo.yaml"
    topo.write_text(f"name: {lab_name}\nhosts:\n  h1: {{}}\n")
    r = cnmlab("up", str(topo), env=env)
    assert r.returncode == 1 and f"refusing to use {d}" in r.stderr
    assert not [n for n in os.listdir("/run/netns") if n.startswith(f"cnm-{lab_name}")]


@pytest.mark.parametrize("how", ["other-user", "world-writable", "symlink"])
def test_dockerd_harness_refuses_planted_folders(tmp_path, monkeypatch, how):
    from cnmlab.checks import dockerd

    d = _planted(tmp_path, how)
    monkeypatch.setattr(dockerd, "DAEMONS_DIR", str(d))
    with pytest.raises(rundir.UnsafeRunDir, match=f"refusing to use {d}"):
        dockerd.clean_all()  # would read state files and signal the PIDs they name
    daemon = dockerd.DockerDaemon("t", "nons", d / "w", cache_dir=d / "cache")
    with pytest.raises(rundir.UnsafeRunDir, match=f"refusing to use {d}"):
        daemon.image_tarball()  # would write the image tarball into it
    assert not (d.resolve() / "cache").exists()


# ---- recorded processes -----------------------------------------------------------------------

def _decoy(*argv: str) -> subprocess.Popen[bytes]:
    """A live process whose command line looks like the recorded one's."""
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", *argv])


def _alive(p: subprocess.Popen[bytes]) -> bool:
    time.sleep(0.2)
    return p.poll() is None


def test_signal_only_while_pid_and_start_time_match():
    p = _decoy()
    try:
        start = procs.start_time(p.pid)
        assert start is not None and procs.same_process(p.pid, start)
        assert not procs.signal_if_same(p.pid, start + 1, signal.SIGTERM)
        assert _alive(p), "a PID whose start time differs was signalled"
        assert procs.signal_if_same(p.pid, start, signal.SIGTERM)
        assert p.wait(timeout=5) == -signal.SIGTERM
        assert not procs.signal_if_same(p.pid, start, signal.SIGTERM)  # reaped: gone
    finally:
        p.kill()
        p.wait()


def test_dns_stop_spares_a_process_that_reused_the_resolvers_pid(lab_name):
    """The recorded resolver is gone and its PID now names another process (here one that
    even looks like a resolver of this lab): stop() must not signal it."""
    from cnmlab import dns
    from cnmlab.model import LabState

    p = _decoy("cnmlab.dns", "--lab", lab_name)
    try:
        start = procs.start_time(p.pid)
        assert start is not None
        lab = LabState(name=lab_name, extra={"dns_pid": p.pid, "dns_pid_start": start - 1})
        dns.stop(lab_name, lab)
        assert _alive(p), "stop() signalled a process that is not the recorded resolver"
        lab = LabState(name=lab_name, extra={"dns_pid": p.pid, "dns_pid_start": start})
        dns.stop(lab_name, lab)
        assert p.wait(timeout=5) in (-signal.SIGTERM, -signal.SIGKILL)
    finally:
        p.kill()
        p.wait()


def test_dockerd_cleanup_spares_processes_that_are_not_the_recorded_ones(tmp_path):
    """A daemon's state file names PIDs; cleanup signals them only if PID and start time
    match, and trusts a bare pidfile only for a process older than the file."""
    import json

    from cnmlab.checks import dockerd

    workdir = tmp_path / "w"
    workdir.mkdir(mode=0o700)
    sup = _decoy(str(workdir))  # command lines that mention the workdir, as the real ones do
    dkr = _decoy(str(workdir))
    try:
        (workdir / dockerd.STATE_FILE).write_text(json.dumps({
            "pid": sup.pid, "pid_start": procs.start_time(sup.pid) + 5}))
        # a pidfile written before its PID's current process started: that is a reuse
        (workdir / "docker.pid").write_text(f"{dkr.pid}\n")
        past = time.time() - 3600
        os.utime(workdir / "docker.pid", (past, past))
        dockerd.cleanup_workdir(workdir)
        assert _alive(sup) and _alive(dkr), "cleanup signalled a process it did not start"
    finally:
        for p in (sup, dkr):
            p.kill()
            p.wait()
    sup = _decoy(str(workdir))
    dkr = _decoy(str(workdir))
    try:
        workdir.mkdir(mode=0o700, exist_ok=True)
        (workdir / dockerd.STATE_FILE).write_text(json.dumps({
            "pid": sup.pid, "pid_start": procs.start_time(sup.pid)}))
        (workdir / "docker.pid").write_text(f"{dkr.pid}\n")  # written after dkr started
        dockerd.cleanup_workdir(workdir)
        assert sup.wait(timeout=60) < 0 and dkr.wait(timeout=30) < 0
    finally:
        for p in (sup, dkr):
            p.kill()
            p.wait()
