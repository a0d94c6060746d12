"""Real Docker (docker.io 20.10) in a network namespace, read through DockerTarget.

One daemon serves the module: a user-defined bridge ``cnmt-net`` with c1 and c2, and c3 on the
default bridge. Further daemons prove that two run side by side and that both ``stop()`` and
the emergency ``cleanup_workdir()`` leave nothing behind.
"""
from __future__ import annotations

import ipaddress
import json
import os
import re
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from cnmlab.checks import dockerd as dockerd_mod
from cnmlab.checks.docker_target import DockerTarget
from cnmlab.checks.dockerd import DockerDaemon, cleanup_workdir, missing_tools
from cnmlab.errors import CnmError
from cnmlab.kernel import netns

_missing = missing_tools()
pytestmark = [
    pytest.mark.docker,
    pytest.mark.skipif(os.geteuid() != 0, reason="real Docker needs root"),
    pytest.mark.skipif(bool(_missing), reason=f"real Docker not installed: missing "
                       f"{', '.join(_missing)} (apt-get install docker.io busybox-static)"),
]

PREFIX = f"cnmt-dkr-{os.getpid()}"


def sh(*cmd: str, check: bool = False) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, check=check, timeout=60)


def root_snapshot() -> tuple[str, str]:
    """The root namespace's links and iptables rules (without iptables-save's dated comments)."""
    links = sh("ip", "-o", "link").stdout
    rules = "\n".join(l for l in sh("iptables-save").stdout.splitlines() if not l.startswith("#"))
    return links, rules


def in_ns(path: str, *cmd: str) -> subprocess.CompletedProcess:
    return sh("nsenter", f"--net={path}", *cmd)


def assert_nothing_left(daemon: DockerDaemon, ns: str, workdir: Path) -> None:
    assert netns.pids_in(ns) == [], "processes left in the host namespace"
    for pid in (daemon.pid,):
        assert pid is None or not os.path.exists(f"/proc/{pid}"), f"dockerd {pid} still there"
    with open("/proc/self/mountinfo") as f:
        mounts = [l for l in f if str(workdir) in l]
    assert mounts == [], f"mounts left under {workdir}: {mounts}"
    assert not workdir.exists(), f"{workdir} not deleted"
    cg_root = dockerd_mod._cgroup2_root()
    if cg_root:
        assert not os.path.exists(os.path.join(cg_root, daemon.cgroup)), "cgroup left"
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        assert str(workdir).encode() not in cmd, f"process {pid} still uses {workdir}: {cmd!r}"
    netns.delete(ns)
    assert ns not in sh("ip", "netns", "list").stdout


@dataclass
class Lab:
    daemon: DockerDaemon
    target: DockerTarget
    ns: str
    workdir: Path


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("dkr-cache")


@pytest.fixture(scope="module")
def lab(tmp_path_factory, cache_dir):
    before = root_snapshot()
    ns = PREFIX
    workdir = tmp_path_factory.mktemp("dkr")
    netns.create(ns)
    daemon = DockerDaemon(ns, ns, workdir, cache_dir=cache_dir)
    try:
        daemon.start()
        daemon.network_create("cnmt-net")
        daemon.run("c1", "cnmt-net")
        daemon.run("c2", "cnmt-net")
        daemon.run("c3")
        yield Lab(daemon, DockerTarget(daemon), ns, workdir)
    finally:
        daemon.stop()
        daemon.stop()  # idempotent
        try:
            assert_nothing_left(daemon, ns, workdir)
        finally:
            netns.delete(ns)
        assert root_snapshot() == before, "the root namespace's links or iptables changed"


def test_sandboxes_have_live_pids_and_addresses(lab):
    boxes = lab.target.sandboxes()
    assert set(boxes) == {"c1", "c2", "c3"}
    for box in boxes.values():
        assert os.path.exists(f"/proc/{box.pid}"), f"{box.name}: pid {box.pid} not alive"
        assert box.netns_path == f"/proc/{box.pid}/ns/net"
        assert os.stat(box.netns_path).st_ino != os.stat(lab.target.host_netns_path).st_ino
    user_net = ipaddress.ip_network("172.18.0.0/16")
    default = ipaddress.ip_network("172.17.0.0/16")
    for name in ("c1", "c2"):
        assert set(boxes[name].addresses) == {"cnmt-net"}
        assert ipaddress.ip_address(boxes[name].addresses["cnmt-net"]) in user_net
        ep = boxes[name].endpoints["cnmt-net"]
        assert ep.prefixlen == 16 and ep.gateway == "172.18.0.1"
        assert re.fullmatch(r"02:42:ac:12(:[0-9a-f]{2}){2}", ep.mac)
    assert set(boxes["c3"].addresses) == {"bridge"}
    assert ipaddress.ip_address(boxes["c3"].addresses["bridge"]) in default
    assert boxes["c3"].endpoints["bridge"].gateway == "172.17.0.1"


def test_address_is_in_the_container_namespace(lab):
    for box in lab.target.sandboxes().values():
        out = in_ns(box.netns_path, "ip", "-o", "addr").stdout
        for ip in box.addresses.values():
            assert f"inet {ip}/16" in out, out


def test_networks_and_bridge_names(lab):
    nets = lab.target.networks()
    assert {"bridge", "host", "none", "cnmt-net"} <= set(nets)
    assert nets["bridge"].bridge == "docker0"
    assert nets["bridge"].subnet == "172.17.0.0/16" and nets["bridge"].gateway == "172.17.0.1"
    user = nets["cnmt-net"]
    assert user.driver == "bridge" and not user.internal
    assert re.fullmatch(r"br-[0-9a-f]{12}", user.bridge) and user.bridge == f"br-{user.id[:12]}"
    assert user.subnet == "172.18.0.0/16" and user.gateway == "172.18.0.1"
    links = in_ns(lab.target.host_netns_path, "ip", "-o", "link", "show", "type", "bridge").stdout
    assert "docker0" in links and user.bridge in links
    assert nets["host"].bridge is None and nets["none"].bridge is None


def test_same_network_resolves_and_pings_by_name(lab):
    r = lab.daemon.exec("c1", "ping", "-c1", "-W1", "c2")
    assert r.returncode == 0, r.stdout + r.stderr
    r = lab.daemon.exec("c2", "ping", "-c1", "-W1", "c1")
    assert r.returncode == 0, r.stdout + r.stderr


def test_different_networks_are_isolated(lab):
    boxes = lab.target.sandboxes()
    c1, c3 = boxes["c1"].addresses["cnmt-net"], boxes["c3"].addresses["bridge"]
    assert lab.daemon.exec("c1", "ping", "-c1", "-W1", c3).returncode != 0
    assert lab.daemon.exec("c3", "ping", "-c1", "-W1", c1).returncode != 0
    # ... while each still reaches its own gateway
    assert lab.daemon.exec("c3", "ping", "-c1", "-W1", "172.17.0.1").returncode == 0


def test_iptables_live_in_the_host_namespace(lab):
    rules = in_ns(lab.target.host_netns_path, "iptables-save").stdout
    assert ":DOCKER-ISOLATION-STAGE-1" in rules
    bridge = lab.target.networks()["cnmt-net"].bridge
    assert f"-A POSTROUTING -s 172.18.0.0/16 ! -o {bridge} -j MASQUERADE" in rules
    assert "-A POSTROUTING -s 172.17.0.0/16 ! -o docker0 -j MASQUERADE" in rules


def test_docker_target_from_socket_path(lab):
    t = DockerTarget(str(lab.daemon.socket))
    assert set(t.sandboxes()) == {"c1", "c2", "c3"}
    assert os.stat(t.host_netns_path).st_ino == os.stat(netns.path_of(lab.ns)).st_ino
    assert DockerTarget(f"unix://{lab.daemon.socket}").networks().keys() == t.networks().keys()


def test_unreachable_socket_is_a_clear_error(tmp_path):
    with pytest.raises(CnmError, match="cannot reach the Docker Engine"):
        DockerTarget(tmp_path / "nothing.sock").sandboxes()


def test_second_daemon_side_by_side_publish_and_stop(lab, tmp_path_factory, cache_dir):
    """A second daemon runs next to the first (later multi-host labs); stop() leaves nothing."""
    before = root_snapshot()
    ns = f"{PREFIX}-b"
    workdir = tmp_path_factory.mktemp("dkrb")
    netns.create(ns)
    daemon = DockerDaemon(ns, ns, workdir, cache_dir=cache_dir)
    try:
        with daemon:
            assert daemon.image_source == "cached tarball"
            daemon.run("web", publish=["8080:80"], command="httpd -f -p 80 -h /var/www")
            target = DockerTarget(daemon)
            assert target.published() == [("web", 8080, 80, "tcp")]
            # its own docker0 with the same subnet as the first daemon's: separate hosts
            assert target.networks()["bridge"].subnet == "172.17.0.0/16"
            assert target.sandboxes()["web"].addresses["bridge"].startswith("172.17.")
            for _ in range(50):  # httpd may not listen yet (docker-proxy already does)
                # (no -T: Debian's static busybox wget segfaults with it)
                r = in_ns(daemon.host_netns_path, "busybox", "wget", "-q", "-O", "-",
                          "http://127.0.0.1:8080/")
                if r.stdout:
                    break
                time.sleep(0.1)
            assert r.stdout == "cnmlab\n", r.stderr
            # the first daemon is unaffected
            assert set(lab.target.sandboxes()) == {"c1", "c2", "c3"}
        daemon.stop()  # idempotent after __exit__
        assert_nothing_left(daemon, ns, workdir)
    finally:
        daemon.stop()
        netns.delete(ns)
    assert root_snapshot() == before


def test_emergency_cleanup_from_workdir_only(tmp_path_factory, cache_dir):
    """cleanup_workdir(workdir) alone (as 'cnmlab clean' would) stops everything."""
    ns = f"{PREFIX}-c"
    workdir = tmp_path_factory.mktemp("dkrc")
    netns.create(ns)
    daemon = DockerDaemon(ns, ns, workdir, cache_dir=cache_dir, quiet=True)
    try:
        daemon.start()
        daemon.network_create("cnmt-em", subnet="10.77.0.0/24")
        daemon.run("e1", "cnmt-em", publish=["9090:80"], command="httpd -f -p 80")
        ctr_pid = DockerTarget(daemon).sandboxes()["e1"].pid
        assert cleanup_workdir(workdir) is True
        assert not os.path.exists(f"/proc/{ctr_pid}")
        assert cleanup_workdir(workdir) is False  # nothing left to do
        daemon._proc.wait(timeout=5)  # reap our child (a crashed controller would not have one)
        assert_nothing_left(daemon, ns, workdir)
    finally:
        daemon.stop()
        netns.delete(ns)


def test_cnmlab_clean_stops_a_left_behind_conform_daemon(cache_dir):
    """A daemon under DAEMONS_DIR (where 'cnmlab conform' puts them) is swept by clean_all."""
    ns = f"{PREFIX}-k"
    workdir = Path(dockerd_mod.DAEMONS_DIR) / ns
    netns.create(ns)
    daemon = DockerDaemon(ns, ns, workdir, cache_dir=cache_dir, quiet=True)
    try:
        daemon.start()
        assert f"dockerd {ns}" in dockerd_mod.clean_all()
        daemon._proc.wait(timeout=5)
        assert_nothing_left(daemon, ns, workdir)
    finally:
        daemon.stop()
        netns.delete(ns)


def test_a_full_clean_leaves_a_daemon_whose_owner_still_runs(tmp_path, monkeypatch):
    """Another live process's daemon is not a leftover; once its owner is gone, it is."""
    from cnmlab.kernel import procs

    monkeypatch.setattr(dockerd_mod, "DAEMONS_DIR", str(tmp_path / "daemons"))
    owner = subprocess.Popen(["sleep", "60"])
    try:
        workdir = tmp_path / "daemons" / "theirs"
        workdir.mkdir(parents=True)
        tmp_path.joinpath("daemons").chmod(0o700)
        workdir.chmod(0o700)
        state = {"name": "theirs", "owner": owner.pid, "owner_start": procs.start_time(owner.pid)}
        (workdir / dockerd_mod.STATE_FILE).write_text(json.dumps(state))
        assert dockerd_mod.clean_all() == []
        assert workdir.is_dir()
    finally:
        owner.kill()
        owner.wait()
    assert dockerd_mod.clean_all() == ["dockerd theirs"]
    assert not workdir.exists()
