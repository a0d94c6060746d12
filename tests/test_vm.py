"""``cnmlab vm``: what must hold, each checked by booting the real VM (qemu, Debian's kernel).

* ``cnmlab vm run -- cnmlab features`` lists ipvs, ipvlan, vlan and dummy as available;
* the guest command's exit code is ours (``false`` -> 1), its stdout and stderr come back apart;
* a guest that hangs is killed at the timeout with a one-line error;
* nothing is left behind (qemu process, job folder) after a run, a timeout, Ctrl-C or even a
  ``kill -9`` of ``cnmlab`` (qemu dies with it; the next run sweeps the folder);
* the guest cannot write the host's files outside the results folder, not even by mounting the
  host's root share again (refused: its channel is in use; and qemu exports it ``readonly=on``,
  which refuses writes even through a read-write mount: checked by hand with a custom init);
* a missing host program is a one-line error naming the apt package;
* the kernel cache follows the kernel package's version, and ``--rebuild`` remakes it.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import pytest

from cnmlab.vm import boot, image, tools

pytestmark = pytest.mark.kernel


def cnmlab_vm(*args: str, timeout: float = 300, **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cnmlab.cli", "vm", *args], capture_output=True,
                          text=True, timeout=timeout, **kw)  # type: ignore[call-overload]


def leftovers(pid: int) -> list[str]:
    """This cnmlab process's job folders and any process (qemu) still running one of them."""
    prefix = f"{boot.JOB_PREFIX}{pid}-"
    found = [f"folder {d}" for d in os.listdir(tempfile.gettempdir()) if d.startswith(prefix)]
    for p in os.listdir("/proc"):
        if p.isdigit():
            try:
                with open(f"/proc/{p}/cmdline", "rb") as f:
                    if prefix.encode() in f.read():
                        found.append(f"process {p}")
            except OSError:
                pass
    return found


def _start(argv: list[str]) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "cnmlab.cli", "vm", "run", "--", *argv],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_line(proc: subprocess.Popen[str], want: str, timeout: float = 120) -> None:
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if want in line:
            return
        if not line and proc.poll() is not None:
            break
    raise AssertionError(f"the guest never printed {want!r}")


def test_vm_run_cnmlab_features_lists_the_full_kernel_features():
    r = cnmlab_vm("run", "--", "cnmlab", "features")
    assert r.returncode == 0, r.stderr
    rows = {l.split()[0]: l.split()[1] for l in r.stdout.splitlines() if l.strip()}
    for feature in ("ipvs", "ipvlan", "vlan", "dummy"):
        assert rows.get(feature) == "yes", r.stdout


def test_false_exits_1_and_leaves_nothing():
    proc = _start(["false"])
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 1, err
    assert "cnmlab:" not in err  # the command's failure, not an error of cnmlab's
    assert leftovers(proc.pid) == []


def test_exit_code_arguments_environment_and_both_streams(tmp_path):
    odd = ["a b", "it's", "$HOME", "", "*"]
    r = cnmlab_vm("run", "--", "sh", "-c", 'uname -r; pwd; printf "%s|" "$@"; echo; '
                  'echo "$CNMLAB_ODD"; [ -t 1 ] || echo stdout-is-a-pipe; echo to-stderr >&2; '
                  'exit 7', "sh", *odd, cwd=tmp_path,
                  env=dict(os.environ, CNMLAB_ODD="x'y $z \\ \"q\""))
    assert r.returncode == 7
    assert r.stdout.splitlines() == [image.ensure().kver, str(tmp_path), "|".join(odd) + "|",
                                     "x'y $z \\ \"q\"", "stdout-is-a-pipe"]
    assert image.ensure().kver != os.uname().release
    assert "to-stderr" in r.stderr.splitlines() and "to-stderr" not in r.stdout


def test_hung_guest_is_killed_at_the_timeout_with_one_line():
    t0 = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "cnmlab.cli", "vm", "run", "--timeout", "40",
                             "--", "sh", "-c", "echo started; sleep 600"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = proc.communicate(timeout=120)
    elapsed = time.monotonic() - t0
    assert "started" in out  # the guest ran the command, which then hung
    assert proc.returncode == 1 and elapsed < 90
    lines = [l for l in err.splitlines() if not l.startswith("cnmlab vm: ")]  # build progress
    assert lines == ["cnmlab: the VM did not finish within 40 s and was stopped (allow more "
                     "time with --timeout)"], err
    assert leftovers(proc.pid) == []


@pytest.mark.parametrize("sig,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)],
                         ids=["ctrl-c", "sigterm"])
def test_ctrl_c_or_sigterm_stops_the_vm_and_leaves_nothing(sig, code):
    proc = _start(["sh", "-c", "echo started; sleep 600"])
    try:
        _wait_line(proc, "started")  # streamed: the guest is still running
        proc.send_signal(sig)
        proc.wait(timeout=30)
    finally:
        proc.kill()
        proc.communicate()
    assert proc.returncode == code
    assert leftovers(proc.pid) == []


def test_kill_9_takes_qemu_along_and_the_next_run_sweeps_the_folder():
    proc = _start(["sh", "-c", "echo started; sleep 600"])
    try:
        _wait_line(proc, "started")
        proc.kill()
        proc.wait()
    finally:
        proc.kill()
        proc.communicate()
    deadline = time.monotonic() + 10
    while any(x.startswith("process") for x in leftovers(proc.pid)):
        assert time.monotonic() < deadline, leftovers(proc.pid)
        time.sleep(0.2)
    assert [x for x in leftovers(proc.pid) if x.startswith("folder")]  # no finally ran
    boot.sweep_stale_jobs()
    assert leftovers(proc.pid) == []


GUEST_WRITES = """
echo guest > {outside} && echo wrote-outside-in-overlay
rm -f {keep} && echo removed-keep-in-overlay
echo guest > {repo_file} && echo wrote-repo-in-overlay
echo guest > /etc/cnmlab-vm-probe-{pid}
mkdir -p /mnt/hostroot && mount -t 9p -o trans=virtio,version=9p2000.L hostroot /mnt/hostroot \
    && echo remounted-host-root
echo guest > /mnt/hostroot{outside} && echo BREACH-outside
touch /mnt/hostroot/etc/cnmlab-vm-probe-{pid} && echo BREACH-etc
echo made-in-guest > {results}/result.txt
echo "links: $(ls /sys/class/net)"
"""


def test_guest_cannot_write_host_files_outside_the_results_folder(tmp_path):
    outside = tmp_path / "outside.txt"
    outside.write_text("host\n")
    keep = tmp_path / "keep.txt"
    keep.write_text("keep\n")
    results = tmp_path / "results"
    results.mkdir()
    repo_file = os.path.join(os.path.dirname(__file__), f"vm-probe-{os.getpid()}.txt")
    script = GUEST_WRITES.format(outside=outside, keep=keep, repo_file=repo_file,
                                 pid=os.getpid(), results=results)
    r = cnmlab_vm("run", "--results", str(results), "--", "sh", "-c", script, cwd=tmp_path)
    # the guest believed its writes worked (they landed in its tmpfs overlay)...
    for said in ("wrote-outside-in-overlay", "removed-keep-in-overlay", "wrote-repo-in-overlay"):
        assert said in r.stdout, (r.stdout, r.stderr)
    # ...a second mount of the host's root share is refused (a virtio 9p channel serves one
    # mount; behind it qemu's readonly=on refuses writes even to a read-write mount)...
    assert "remounted-host-root" not in r.stdout and "BREACH" not in r.stdout
    assert "busy" in r.stderr, r.stderr
    # ...and the host is untouched
    assert outside.read_text() == "host\n" and keep.read_text() == "keep\n"
    assert not os.path.exists(repo_file)
    assert not os.path.exists(f"/etc/cnmlab-vm-probe-{os.getpid()}")
    assert (results / "result.txt").read_text() == "made-in-guest\n"
    assert "links: lo\n" in r.stdout  # no network device: nothing leaves the guest


def test_missing_qemu_is_one_line_naming_the_package(tmp_path):
    empty = tmp_path / "bin"
    empty.mkdir()
    r = cnmlab_vm("run", "--", "true", env=dict(os.environ, PATH=str(empty)))
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert r.stderr.splitlines() == ["cnmlab: cnmlab vm needs qemu-system-x86_64: install it "
                                     "with 'apt-get install --no-install-recommends "
                                     "qemu-system-x86'"]


def test_cache_follows_the_package_version_and_rebuild_remakes_it(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    stale = cache / "linux-image-0.0.0-0-amd64_0.0-0"
    stale.mkdir(parents=True)
    (stale / "image.json").write_text(json.dumps({"package": "linux-image-0.0.0-0-amd64",
                                                  "version": "0.0-0", "kver": "0.0.0-0-amd64",
                                                  "kernel": "vmlinux"}))
    (cache / "current.json").write_text(json.dumps({"dir": stale.name, "apt_stamp": -1}))
    monkeypatch.setenv("CNMLAB_VM_CACHE", str(cache))
    package, version = image.wanted_package()
    img = image.ensure()
    assert (img.package, img.version) == (package, version)
    assert os.path.basename(img.dir) == f"{package}_{version}"
    assert not stale.exists()  # an older kernel's image is removed
    assert os.path.exists(os.path.join(img.modules, "modules.dep"))
    marker = os.path.join(img.dir, "marker")
    open(marker, "w").close()
    r = cnmlab_vm("run", "--rebuild", "--", "true", env=dict(os.environ,
                                                              CNMLAB_VM_CACHE=str(cache)))
    assert r.returncode == 0, r.stderr
    assert "apt-get download" in r.stderr  # it fetched again...
    assert not os.path.exists(marker)      # ...and replaced the image


LAB = """\
id: 99-vmtest
title: A lab needing {feature}
needs: [veth, {feature}]
topology:
  hosts:
    host:
      default_bridge: false
      firewall: manual
      sandboxes:
        red: {{network: none}}
steps:
  - id: one
    title: Step one
    text: hello
    task: bring lo up
    checks:
      - link: {{ns: red, name: lo, up: true}}
    solution:
      - {{sh: "ip link set lo up", in: red}}
"""


def test_lab_needing_a_missing_feature_names_it_offers_the_vm_and_starts_there(tmp_path):
    from cnmlab.kernel import features

    if features.has("dummy"):
        pytest.skip("this kernel has dummy links: no lab here needs the VM")
    (tmp_path / "labs" / "99-vmtest").mkdir(parents=True)
    (tmp_path / "labs" / "99-vmtest" / "lab.yaml").write_text(LAB.format(feature="dummy"))
    env = dict(os.environ, CNMLAB_LABS=str(tmp_path / "labs"),
               CNMLAB_PROGRESS=str(tmp_path / "progress.json"))
    r = subprocess.run([sys.executable, "-m", "cnmlab.cli", "lab", "start", "99-vmtest"],
                       capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 1 and len(r.stderr.splitlines()) == 1, r.stderr
    assert "lab 99-vmtest needs dummy (dummy links" in r.stderr
    assert "'cnmlab vm' opens the workshop there" in r.stderr
    # what it offers works: in the VM the same lab starts (and stops)
    r = cnmlab_vm("run", "--", "sh", "-c", "cnmlab lab start 99-vmtest && "
                  "cnmlab lab stop 99-vmtest", env=env, cwd=tmp_path)
    assert r.returncode == 0, (r.stdout, r.stderr)
    assert "lab 99-vmtest is up" in r.stdout


def test_key_v_in_the_lab_list_opens_the_workshop_in_the_vm(tmp_path):
    """A learner in a real terminal (tmux): the lab list, ``v``, the same workshop running in
    the VM (its header says so), ``q`` there, and back in the host's lab list."""
    if shutil.which("tmux") is None:
        pytest.fail("tmux is missing: apt-get install --no-install-recommends tmux")
    sock = f"cnmvm{os.getpid()}"
    done = tmp_path / "exit-code"
    cmd = (f"CNMLAB_PROGRESS={tmp_path}/progress.json {sys.executable} -m cnmlab.cli; "
           f"echo $? > {done}")

    def tmux(*args: str) -> str:
        return subprocess.run(["tmux", "-L", sock, *args], capture_output=True, text=True,
                              timeout=20).stdout

    def wait(cond: object, timeout: float, what: str) -> str:
        deadline = time.monotonic() + timeout
        seen = ""
        while time.monotonic() < deadline:
            seen = tmux("capture-pane", "-p", "-t", "vm")
            if cond(seen):  # type: ignore[operator]
                return seen
            time.sleep(0.3)
        raise AssertionError(f"{what} never showed up; the screen was:\n{seen}")

    try:
        tmux("new-session", "-d", "-s", "vm", "-x", "120", "-y", "35", "sh", "-c", cmd)
        wait(lambda s: "cnmlab — labs" in s, 60, "the host's lab list")
        tmux("send-keys", "-t", "vm", "v")
        wait(lambda s: "labs · full-kernel VM" in s, 240, "the lab list inside the VM")
        tmux("send-keys", "-t", "vm", "q")
        wait(lambda s: "cnmlab — labs" in s and "full-kernel VM" not in s, 90,
             "the host's lab list again")
        tmux("send-keys", "-t", "vm", "q")
        deadline = time.monotonic() + 30
        while not done.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert done.read_text().strip() == "0"
    finally:
        tmux("kill-server")
