"""``vagrant/``: both Vagrantfiles validate, and their provisioning works on a clean Debian.

VMs cannot boot on the machines this suite runs on (no VirtualBox, no nested libvirt), so the
Vagrantfiles themselves are checked by ``vagrant validate --ignore-provider`` (Debian's
``vagrant``, installed by ``scripts/install.sh --test``): Ruby that parses, machine definitions
Vagrant accepts, provisioner scripts that exist. What the VMs would run is checked for real:
the one provisioning step of both Vagrantfiles is ``bash scripts/install.sh`` in the synced
repository, so the test builds a clean Debian 12 root with ``debootstrap`` (minbase, from
Debian's mirror), copies the repository in as the rsync folder would, runs ``install.sh`` inside
it (``chroot``, in a private mount and PID namespace; apt and PyPI over the network, as in a
fresh VM), and runs ``cnmlab lab list`` and ``cnmlab features`` there. The same root is then
entered inside ``cnmlab vm`` (Debian's stock kernel, as on the box) to show that the features
the ipvlan and IPVS labs need are present under that kernel.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterator

import pytest

from cnmlab.kernel import features

pytestmark = pytest.mark.kernel

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SINGLE = os.path.join(REPO, "vagrant")
MULTI = os.path.join(REPO, "vagrant", "multi")
MIRROR = "http://deb.debian.org/debian"
SUITE = "bookworm"  # the box's release: debian/bookworm64
DEBOOTSTRAP_CACHE = "/var/cache/cnmlab-debootstrap"  # its .debs, kept: a rerun downloads nothing
VM_FEATURES = ("ipvs", "ipvlan")  # what labs 07 (ipvlan) and the IPVS lab need


def _need(program: str) -> str:
    found = shutil.which(program)
    if found is None:
        pytest.fail(f"{program} is not installed: run `bash scripts/install.sh --test` "
                    f"(it installs Debian's {program})")
    return found


def validate(folder: str, tmp_home: str, **env: str) -> subprocess.CompletedProcess[str]:
    """``vagrant validate --ignore-provider`` in FOLDER; a private VAGRANT_HOME so nothing is
    written under the user's ~/.vagrant.d. --ignore-provider: no provider is usable here, and
    without it Vagrant stops at "No usable default provider" before reading the machines."""
    full = {**os.environ, "VAGRANT_HOME": tmp_home, "VAGRANT_CHECKPOINT_DISABLE": "1", **env}
    return subprocess.run([_need("vagrant"), "validate", "--ignore-provider"], cwd=folder,
                          env=full, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("folder,env,machines", [
    (SINGLE, {}, ["default"]),
    (SINGLE, {"CNMLAB_VM_MEMORY": "4096", "CNMLAB_VM_CPUS": "4"}, ["default"]),
    (MULTI, {}, ["cnm1", "cnm2"]),
    (MULTI, {"CNMLAB_VMS": "3"}, ["cnm1", "cnm2", "cnm3"]),
], ids=["single", "single-sized", "multi-2", "multi-3"])
def test_vagrantfile_validates(folder: str, env: dict[str, str], machines: list[str],
                               tmp_path: object) -> None:
    r = validate(folder, str(tmp_path), **env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "validated successfully" in r.stdout
    for m in machines:  # Vagrant read every machine definition
        assert f"==> {m}:" in r.stdout, r.stdout
    assert not os.path.exists(os.path.join(folder, ".vagrant")) or _ignored(folder)


def _ignored(folder: str) -> bool:
    r = subprocess.run(["git", "-C", REPO, "check-ignore", "-q", os.path.join(folder, ".vagrant")])
    return r.returncode == 0


def test_validate_catches_a_broken_vagrantfile(tmp_path: object) -> None:
    """The check above fails when the Vagrantfile is wrong: no box, a provisioner script that
    does not exist, or a size that is not a number (one line naming the variable)."""
    work = os.path.join(str(tmp_path), "v")
    shutil.copytree(SINGLE, work, ignore=shutil.ignore_patterns("multi", ".vagrant"))
    home = os.path.join(str(tmp_path), "home")
    with open(os.path.join(work, "Vagrantfile")) as f:
        good = f.read()

    with open(os.path.join(work, "Vagrantfile"), "w") as f:
        f.write(good.replace('config.vm.box = BOX', 'config.vm.hostname = "cnmlab"'))
    r = validate(work, home)
    assert r.returncode != 0 and "box" in (r.stdout + r.stderr).lower(), r.stdout + r.stderr

    with open(os.path.join(work, "Vagrantfile"), "w") as f:
        f.write(good)
    os.remove(os.path.join(work, "vagrant-user.sh"))
    r = validate(work, home)
    assert r.returncode != 0 and "vagrant-user.sh" in r.stdout + r.stderr, r.stdout + r.stderr

    r = validate(SINGLE, home, CNMLAB_VM_MEMORY="lots")
    assert r.returncode != 0
    assert 'CNMLAB_VM_MEMORY="lots" is not a whole number' in r.stderr, r.stderr
    r = validate(MULTI, home, CNMLAB_VMS="5")
    assert r.returncode != 0 and "CNMLAB_VMS" in r.stderr, r.stderr


def test_multi_machine_etcd_listens_only_on_the_private_network() -> None:
    """The store's URLs all name the VM's private address, never 0.0.0.0 or localhost only: the
    other VMs reach it, nothing outside the private network does."""
    with open(os.path.join(MULTI, "etcd.sh")) as f:
        script = f.read()
    urls = [line.split("=", 1)[1] for line in script.splitlines()
            if line.startswith("ETCD_") and "_URLS=" in line]
    assert len(urls) == 4 and all(u.startswith("http://$ip:") for u in urls), urls
    assert "0.0.0.0" not in script


# --- the provisioning, for real, in a clean Debian root -------------------------------------

IN_ROOT = textwrap.dedent("""\
    set -e
    root=$1; shift
    mount --make-rprivate /
    mount -t proc proc "$root/proc"
    mount --rbind /dev "$root/dev"
    mount -t tmpfs tmpfs "$root/run"
    mount -t tmpfs tmpfs "$root/tmp"
    cp /etc/resolv.conf "$root/etc/resolv.conf"
    cp /etc/ssl/certs/ca-certificates.crt "$root/etc/cnmlab-host-ca.crt"
    exec chroot "$root" /usr/bin/env -i HOME=/root LANG=C.UTF-8 \\
        PIP_CERT=/etc/cnmlab-host-ca.crt \\
        PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin /bin/bash -c "$@"
    """)


def in_root(root: str, command: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """COMMAND in ROOT as a fresh VM's root shell would run it: chrooted, with its own /proc,
    /run and /tmp, in private mount and PID namespaces (nothing stays mounted, nothing keeps
    running after it). The machine's resolver and CA bundle go in, as a VM on this network
    would be given them: where HTTPS passes through an inspecting proxy, pip needs its CA."""
    return subprocess.run(["unshare", "--mount", "--pid", "--fork", "bash", "-c", IN_ROOT, "x",
                           root, command], capture_output=True, text=True, timeout=timeout)


def _repo_files() -> list[str]:
    """What `vagrant rsync` would copy: the repository without .git, .venv and ignored files."""
    out = subprocess.run(["git", "-C", REPO, "ls-files", "-z", "--cached", "--others",
                          "--exclude-standard"], capture_output=True, check=True).stdout
    return [p for p in out.decode().split("\0") if p and os.path.isfile(os.path.join(REPO, p))]


@pytest.fixture(scope="module")
def provisioned() -> Iterator[tuple[str, subprocess.CompletedProcess[str]]]:
    """A debootstrapped Debian 12 root, the repo synced to /cnmlab, before and after install.sh."""
    _need("debootstrap")
    base = f"/var/tmp/cnmt-vagrant-{os.getpid()}"
    root = os.path.join(base, "root")
    os.makedirs(DEBOOTSTRAP_CACHE, exist_ok=True)
    try:
        r = subprocess.run(["debootstrap", "--variant=minbase", f"--cache-dir={DEBOOTSTRAP_CACHE}",
                            SUITE, root, MIRROR], capture_output=True, text=True, timeout=900)
        assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
        for rel in _repo_files():
            dest = os.path.join(root, "cnmlab", rel)
            os.makedirs(os.path.dirname(dest), exist_ok=True)
            shutil.copy2(os.path.join(REPO, rel), dest)
        before = in_root(root, "cnmlab lab list")
        install = in_root(root, "cd /cnmlab && bash scripts/install.sh", timeout=1800)
        assert install.returncode == 0, install.stdout[-3000:] + install.stderr[-3000:]
        yield root, before
    finally:
        subprocess.run(["umount", "-R", "-l", root], capture_output=True)  # belt and braces
        shutil.rmtree(base, ignore_errors=True)


def _lab_ids(listing: str) -> list[str]:
    return [line.split()[0] for line in listing.splitlines() if line[:2].strip().isdigit()]


def test_provisioning_installs_a_working_cnmlab(
        provisioned: tuple[str, subprocess.CompletedProcess[str]]) -> None:
    root, before = provisioned
    assert before.returncode == 127, before.stdout + before.stderr  # not installed: clean root
    listing = in_root(root, "cnmlab lab list")
    assert listing.returncode == 0, listing.stdout + listing.stderr
    here = subprocess.run([sys.executable, "-m", "cnmlab.cli", "lab", "list"],
                          capture_output=True, text=True, timeout=60, cwd="/")
    assert _lab_ids(listing.stdout) and _lab_ids(listing.stdout) == _lab_ids(here.stdout), (
        listing.stdout, here.stdout)
    feats = in_root(root, "cnmlab features --json")
    assert feats.returncode == 0, feats.stdout + feats.stderr
    # every feature this cnmlab knows, as this (same) kernel has them; only the known ones are
    # compared: the machine's cached report may come from another cnmlab version
    report, here_report = json.loads(feats.stdout), features.probe_all()
    assert set(report) == set(features.DESCRIPTIONS), report
    assert report == {k: here_report.get(k) for k in report}, (report, here_report)
    # the apt packages the labs drive are there, from install.sh's one list
    tools = in_root(root, "command -v ip iptables-restore nft nsenter tcpdump ipvsadm tmux "
                          "dockerd containerd")  # real Docker for lab 10 and conform/diff
    assert tools.returncode == 0 and len(tools.stdout.split()) == 9, tools.stdout + tools.stderr


def test_provisioned_root_reports_ipvlan_and_ipvs_under_debians_kernel(
        provisioned: tuple[str, subprocess.CompletedProcess[str]]) -> None:
    """The box runs Debian's stock kernel; so does ``cnmlab vm``. Inside it, the provisioned
    root's own cnmlab (its venv, its Python) reports the features labs 07 and the IPVS lab need."""
    root, _ = provisioned
    inner = (f"mount -t proc proc {root}/proc && mount -t sysfs sysfs {root}/sys && "
             f"chroot {root} /usr/local/bin/cnmlab features --json")
    r = subprocess.run([sys.executable, "-m", "cnmlab.cli", "vm", "run", "--read-only", "--",
                        "sh", "-c", inner], capture_output=True, text=True, timeout=600, cwd="/")
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    report = json.loads(r.stdout)
    _assert_present(report, VM_FEATURES)


def _assert_present(report: object, names: tuple[str, ...]) -> None:
    assert isinstance(report, dict), report
    missing = [n for n in names if report.get(n) is not True]
    assert not missing, f"absent under Debian's kernel: {missing} in {report}"
