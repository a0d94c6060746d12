"""An external etcd (``--store etcd://HOST:PORT``): a store cnmlab did not start, and it going away.

The store is a plain ``etcd`` process this test starts itself, in a namespace of its own
(the "store machine", a host of a second lab), listening only on that namespace's LAN address.
The overlay lab is driven from another namespace of that LAN (the "engine machine"): its
agents, its resolver and its own client reach the store from there, as on a real machine they
would from the machine's own namespace. Nothing listens on, or routes through, the machine's
real interfaces.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time

import pytest

from cnmlab import state
from cnmlab.checks import probes
from cnmlab.constants import EMBEDDED_DNS
from cnmlab.etcd import EtcdStore, StoreUnreachable
from cnmlab.kernel import netns
from cnmlab.lab import Lab

pytestmark = [pytest.mark.kernel,
              pytest.mark.skipif(not shutil.which("etcd"), reason="needs etcd-server")]

STORE_IP = "192.168.60.12"  # the store machine's LAN address (second host of the infra lab)
URL = f"etcd://{STORE_IP}:2379"


class ExternalEtcd:
    """An etcd member started by hand in ``ns``, as an operator would run one."""

    def __init__(self, ns: str, data: str, log: str) -> None:
        self.ns, self.data, self.log = ns, data, log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        client = f"http://{STORE_IP}:2379"
        peer = "http://127.0.0.1:2380"
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                ["nsenter", f"--net={netns.path_of(self.ns)}", "--", "etcd", "--name", "ext",
                 "--data-dir", self.data, "--listen-client-urls", client,
                 "--advertise-client-urls", client, "--listen-peer-urls", peer,
                 "--initial-advertise-peer-urls", peer, "--initial-cluster", f"ext={peer}",
                 "--log-level", "error"], stdout=out, stderr=out, stdin=subprocess.DEVNULL)
        probe = EtcdStore(URL, netns_name=self.ns, timeout=1.0)
        deadline = time.monotonic() + 30
        while True:
            try:
                probe.revision()
                break
            except StoreUnreachable:
                assert self.proc.poll() is None, open(self.log).read()[-2000:]
                assert time.monotonic() < deadline, "the external etcd did not start"
                time.sleep(0.1)
        probe.close()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self.proc = None


def until(cond, within: float = 20.0) -> bool:
    deadline = time.monotonic() + within
    while not cond():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def pings(sb, ip: str, within: float = 10.0) -> bool:
    return until(lambda: sb.exec(["ping", "-c1", "-W1", ip]).returncode == 0, within)


def resolves(ns: str, name: str, want: str, within: float = 10.0) -> bool:
    def ok() -> bool:
        try:
            return probes.dns_query(ns, name, EMBEDDED_DNS, timeout=1.0) == [want]
        except probes.DnsError:
            return False
    return until(ok, within)


def log_of(lab: str, host: str) -> str:
    with open(state.aux_path(lab, f"agent-{host}.log")) as f:
        return f.read()


@pytest.fixture
def machines(lab_name, tmp_path):
    """Two namespaces on a LAN of their own: the engine's machine and the store's, whose
    etcd the test runs. Yields (engine machine namespace, the store)."""
    infra = Lab(f"{lab_name}x", upstream=False)
    store = None
    try:
        infra.add_underlay("net", subnet="192.168.60.0/24")
        machine = infra.add_host("machine", underlay="net")
        store_host = infra.add_host("store", underlay="net")
        assert infra.state.hosts["store"].underlay_ip == STORE_IP
        store = ExternalEtcd(store_host.netns, str(tmp_path / "etcd"), str(tmp_path / "etcd.log"))
        store.start()
        yield machine.netns, store
    finally:
        if store is not None:
            store.stop()
        infra.down()


def test_an_external_store_carries_the_overlay_and_survives_going_away(lab_name, machines):
    machine_ns, store = machines
    with netns.entered(machine_ns):  # this thread is "the machine" the engine runs on
        lab = Lab(lab_name)
        try:
            lab.add_underlay("lan", subnet="192.168.50.0/24")
            h1, h2 = lab.add_host("h1", underlay="lan"), lab.add_host("h2", underlay="lan")
            lab.start_control_plane(URL)
            info = lab.control_plane
            assert info["url"] == URL and not info["embedded"] and info["pid"] is None
            lab.network_create("ov", "overlay")
            a, b = h1.run("a1", "ov"), h2.run("b1", "ov")
            lab.converge(timeout=30)
            assert pings(a, b.ip("ov"))
            assert resolves(a.netns, "b1", b.ip("ov"))
            # what the store holds is in the store cnmlab did not start, under the lab's prefix
            direct = EtcdStore(URL, netns_name=machines[1].ns)
            assert set(direct.range(f"/cnmlab/{lab_name}/agents/")) == {
                f"/cnmlab/{lab_name}/agents/h1", f"/cnmlab/{lab_name}/agents/h2"}
            direct.close()

            store.stop()  # the store goes away
            gone = f"control plane {URL}"  # the agent's one line when the store drops away
            assert until(lambda: all(gone in log_of(lab_name, h) for h in ("h1", "h2")))
            assert pings(a, b.ip("ov"))  # the kernels keep what they were given
            assert resolves(a.netns, "b1", b.ip("ov"))  # and so does the resolver
            with pytest.raises(StoreUnreachable) as e:
                h1.run("c1", "ov")  # cannot be published: refused in one line, rolled back
            assert "\n" not in str(e.value) and URL in str(e.value)
            assert "c1" not in lab.state.hosts["h1"].sandboxes
            assert not netns.exists(lab.ns_name("c1"))
            peers_cli = subprocess.run(
                ["nsenter", f"--net={netns.path_of(machine_ns)}", "--", sys.executable, "-m",
                 "cnmlab.cli", "peers", lab_name], capture_output=True, text=True, timeout=60)
            assert peers_cli.returncode == 1
            err = peers_cli.stderr.strip()
            assert "\n" not in err and "cannot be reached" in err and "Traceback" not in err

            store.start()  # back, with its data
            assert until(lambda: set(lab.cluster.agents()) == {"h1", "h2"}, 30)
            c = h1.run("c1", "ov")
            d = h2.run("d1", "ov")
            lab.converge(timeout=30)
            assert pings(d, c.ip("ov")) and pings(c, b.ip("ov"))
            assert resolves(d.netns, "c1", c.ip("ov"))
            for h in ("h1", "h2"):  # one line for the outage, then in sync again
                text = log_of(lab_name, h)
                assert text.count(gone) == 1, text
                assert "in sync at revision" in text.rsplit(gone, 1)[1], text
        finally:
            lab.down()
    # the lab's keys stay in an external store only as long as the lab: down() withdrew them
    left = EtcdStore(URL, netns_name=store.ns)
    assert not [k for k in left.range(f"/cnmlab/{lab_name}/peers/")]
    left.close()
