"""``scripts/install.sh --test`` installs Debian's docker.io without starting or enabling it.

A system dockerd would live in the machine's own network namespace (docker0, FORWARD policy
DROP); cnmlab's harness never needs it. The script is run for real, as root, on a throwaway
copy of this machine: an overlay of ``/`` in private mount, network and PID namespaces, chrooted,
with docker.io and containerd purged first (the overlay takes every dpkg change; nothing reaches
the machine, and no daemon could reach its network). The apt step uses the .deb files in apt's
cache (downloaded first when missing); the script is stopped right after its apt step by a
``PYTHON`` that fails, since the throwaway network namespace has no route to PyPI.
"""
from __future__ import annotations

import glob
import os
import shutil
import subprocess
import textwrap

import pytest

pytestmark = pytest.mark.kernel

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEBS = ("docker.io", "containerd", "runc", "tini")

OUTER = textwrap.dedent("""\
    set -e
    ov=$1; src=$2; policy=$3
    mount --make-rprivate /
    mount -t tmpfs tmpfs "$ov"
    mkdir "$ov/u" "$ov/w" "$ov/m"
    mount -t overlay overlay -o "lowerdir=/,upperdir=$ov/u,workdir=$ov/w" "$ov/m"
    M=$ov/m
    mount -t proc proc "$M/proc"
    mount --rbind /dev "$M/dev"
    mount -t tmpfs tmpfs "$M/run"
    mount -t tmpfs tmpfs "$M/tmp"
    mkdir -p "$M/root/cnm"
    cp -a "$src/." "$M/root/cnm/"
    exec chroot "$M" /bin/bash -c "$INNER" inner "$policy"
    """)

INNER = textwrap.dedent("""\
    export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
    dpkg --purge docker.io containerd >/dev/null 2>&1 || true
    rm -f /usr/sbin/policy-rc.d
    if [ "$1" = deny-all ]; then printf '#!/bin/sh\\nexit 101\\n' >/usr/sbin/policy-rc.d; chmod 755 /usr/sbin/policy-rc.d; fi
    # apt-get without the network: no update, packages from the cache only; and a record of
    # what the maintainer scripts would be told while the install runs
    cat >/usr/local/sbin/apt-get <<'EOF'
    #!/bin/sh
    [ "$1" = update ] && exit 0
    for unit in docker.service docker.socket containerd.service; do
      /usr/sbin/policy-rc.d "$unit" start >/dev/null 2>&1; echo "$unit $?" >>/root/policy.log
    done
    /usr/sbin/policy-rc.d --quiet docker start >/dev/null 2>&1; echo "sysv-docker $?" >>/root/policy.log
    /usr/sbin/policy-rc.d ssh start >/dev/null 2>&1; echo "ssh $?" >>/root/policy.log
    exec /usr/bin/apt-get --no-download "$@"
    EOF
    chmod 755 /usr/local/sbin/apt-get
    [ "$1" = none ] && { apt-get install -y -qq --no-install-recommends docker.io >/dev/null 2>&1 || exit 9; }
    [ "$1" != none ] && { cd /root/cnm && PYTHON=/bin/false bash scripts/install.sh --test >/root/out.log 2>&1; cd /; }
    echo "installed=$(dpkg-query -W -f='${Status}\\n' docker.io containerd 2>/dev/null | grep -c 'ok installed')"
    echo "wants=$(ls /etc/systemd/system/*.wants/ 2>/dev/null | grep -cE '^(docker|containerd)')"
    echo "sysv=$(ls /etc/rc2.d/ | grep docker)"
    echo "policy=$(tail -n1 /usr/sbin/policy-rc.d 2>/dev/null || echo absent)"
    echo "leftover=$(ls /usr/sbin/policy-rc.d.cnmlab-saved 2>/dev/null | wc -l)"
    echo "dockerd=$(pgrep -c -x dockerd || true)"
    echo "told=$(tr '\\n' ',' </root/policy.log 2>/dev/null)"
    echo "said=$(grep 'install.sh:' /root/out.log 2>/dev/null | head -1)"
    """)


def _debs_cached() -> bool:
    return all(glob.glob(f"/var/cache/apt/archives/{name}_*.deb") for name in DEBS)


@pytest.fixture(scope="module")
def debs() -> None:
    if not _debs_cached():  # only fills apt's cache; installs nothing on this machine
        r = subprocess.run(["apt-get", "install", "-y", "-qq", "--reinstall", "--download-only",
                            "--no-install-recommends", *DEBS], capture_output=True, text=True,
                           timeout=600)
        assert r.returncode == 0 and _debs_cached(), r.stderr[-2000:]


def run_in_throwaway(tmp_path, policy: str) -> dict[str, str]:
    """Install docker.io in a throwaway copy of this machine; what it left, as key=value."""
    src = tmp_path / "src"
    shutil.copytree(REPO, src, ignore=shutil.ignore_patterns(
        ".git", ".venv", "build", "*.egg-info", "__pycache__", "results"))
    ov = tmp_path / "ov"
    ov.mkdir()
    r = subprocess.run(["unshare", "--mount", "--net", "--pid", "--fork", "bash", "-c", OUTER,
                        "outer", str(ov), str(src), policy],
                       env=dict(os.environ, INNER=INNER), capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    return dict(line.split("=", 1) for line in r.stdout.splitlines() if "=" in line)


def test_install_keeps_dockerd_from_starting(debs, tmp_path):
    got = run_in_throwaway(tmp_path, "absent")
    assert got["installed"] == "2", got
    # while apt ran, maintainer scripts were told not to start Docker's daemons, others were not
    assert got["told"] == ("docker.service 101,docker.socket 101,containerd.service 101,"
                           "sysv-docker 101,ssh 0,"), got
    assert got["wants"] == "0", "docker/containerd would start at the next boot"
    assert got["sysv"].startswith("K"), got  # the sysvinit link is a stop link
    assert got["policy"] == "absent" and got["leftover"] == "0", got
    assert got["dockerd"] == "0"
    assert got["said"].startswith("install.sh: installed docker.io without starting"), got


def test_install_keeps_the_machines_own_policy(debs, tmp_path):
    got = run_in_throwaway(tmp_path, "deny-all")
    assert got["told"].endswith("ssh 101,"), got  # the machine's own answer for other services
    assert got["policy"] == "exit 101" and got["leftover"] == "0", got
    assert got["wants"] == "0", got


def test_plain_apt_install_would_enable_them(debs, tmp_path):
    """The broken setup this guards against: apt alone enables dockerd and containerd."""
    got = run_in_throwaway(tmp_path, "none")
    assert got["installed"] == "2", got
    assert got["wants"] == "3", got  # containerd.service, docker.service, docker.socket
    assert got["sysv"].startswith("S"), got
