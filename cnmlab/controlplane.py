"""A lab's control plane: a private etcd inside the lab, and one agent per host.

Embedded (the default on one machine): ``etcd`` runs inside one of the lab's own namespaces
(the underlay's, else the upstream's), listening only on that namespace's lab address, its data
under /run/cnmlab (removed with the lab). No port is opened on the machine's interfaces; clients
in the root namespace (the CLI, tests) open their socket inside that namespace
(``EtcdStore(netns_name=...)``), agents reach it from their host over the underlay.

External: ``etcd://HOST:PORT`` names a cluster someone else runs (several machines); agents
then talk to it from the machine's own namespace.

Each host gets an agent (``python -m cnmlab.agent``) started inside the host's namespace, so a
lab's teardown, which stops every process in its namespaces, stops it; its pid is recorded in
the lab's state as well. What the control plane is, is saved in the lab's state
(``extra["control_plane"]``), so any later cnmlab process reconnects to it.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from typing import Any

from cnmlab import state
from cnmlab.kernel import netns, procs
from cnmlab.cluster import Cluster
from cnmlab.constants import CONTROL_PLANE_KEY
from cnmlab.errors import CnmError, FeatureMissing
from cnmlab.etcd import EtcdStore, StoreUnreachable

CLIENT_PORT = 2379
PEER_PORT = 2380


def prefix_for(lab: str) -> str:
    return f"/cnmlab/{lab}"


def _spawn(ns: str, argv: list[str], log: str, pass_fds: tuple[int, ...] = ()) -> int:
    with open(log, "ab") as out:
        proc = subprocess.Popen(["nsenter", f"--net={netns.path_of(ns)}", "--", *argv],
                                stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                start_new_session=True, pass_fds=pass_fds)
    return proc.pid


def start_embedded(lab: str, ns: str, ip: str, timeout: float = 15.0) -> dict[str, Any]:
    """Start the lab's private etcd in namespace ``ns`` on ``ip``; wait until it answers."""
    if not shutil.which("etcd"):
        raise FeatureMissing("the embedded control plane needs etcd: apt-get install "
                             "etcd-server (scripts/install.sh does)")
    data = state.aux_path(lab, "etcd")
    shutil.rmtree(data, ignore_errors=True)
    url = f"http://{ip}:{CLIENT_PORT}"
    peer = f"http://127.0.0.1:{PEER_PORT}"  # the namespace's own loopback
    pid = _spawn(ns, ["etcd", "--name", lab, "--data-dir", data,
                      "--listen-client-urls", url, "--advertise-client-urls", url,
                      "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
                      "--initial-cluster", f"{lab}={peer}", "--log-level", "error"],
                 state.aux_path(lab, "etcd.log"))
    info = {"url": f"etcd://{ip}:{CLIENT_PORT}", "netns": ns, "pid": pid, "embedded": True,
            "prefix": prefix_for(lab)}
    store = EtcdStore(info["url"], netns_name=ns, timeout=1.0)
    deadline = time.monotonic() + timeout
    while True:
        try:
            store.revision()
            break
        except StoreUnreachable:
            if time.monotonic() > deadline or not os.path.exists(f"/proc/{pid}"):
                raise CnmError(f"lab {lab}: the embedded etcd did not start within "
                               f"{timeout:g} s (see {state.aux_path(lab, 'etcd.log')})") from None
            time.sleep(0.05)
    store.close()
    return info


def external(lab: str, url: str) -> dict[str, Any]:
    store = EtcdStore(url, timeout=2.0)
    store.revision()  # fail now, in one line, if it cannot be reached
    store.close()
    return {"url": store.url, "netns": None, "pid": None, "embedded": False,
            "prefix": prefix_for(lab)}


def cluster_of(info: dict[str, Any]) -> Cluster:
    return Cluster(EtcdStore(info["url"], netns_name=info.get("netns")), info["prefix"])


def start_agent(lab: str, info: dict[str, Any], host: str, host_ns: str, vtep: str) -> int:
    """The host's agent, started inside the host's namespace (so teardown's sweep of the
    lab's namespaces stops it). It reaches the store over the underlay (embedded) or, through
    a handle on this process's namespace passed down to it, from the machine's own namespace
    (an external cluster)."""
    argv = [sys.executable, "-m", "cnmlab.agent", "--lab", lab, "--host", host,
            "--netns", host_ns, "--store", info["url"], "--prefix", info["prefix"],
            "--vtep", vtep]
    log = state.aux_path(lab, f"agent-{host}.log")
    if info.get("embedded"):
        return _spawn(host_ns, argv, log)
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        return _spawn(host_ns, argv + ["--store-netns-fd", str(home)], log, pass_fds=(home,))
    finally:
        os.close(home)


def is_agent(pid: int | None, lab: str, host: str | None = None) -> bool:
    """Is ``pid`` still this lab's agent (pids are reused: look at its command line)?"""
    if not pid:
        return False
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = f.read().split(b"\0")
    except OSError:
        return False
    if b"cnmlab.agent" not in argv or lab.encode() not in argv:
        return False
    return host is None or host.encode() in argv


def alive(pid: int | None) -> bool:
    """The process exists and is not a zombie (its command line is not looked at: it reads
    empty while the process is between nsenter and the exec of python)."""
    if not pid:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            return not f.read().split(") ", 1)[1].startswith("Z")
    except OSError:
        return False


def stop_agent(pid: int | None, lab: str, host: str) -> None:
    if not is_agent(pid, lab, host):
        return
    assert pid
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return
    procs.wait_gone([pid], 20.0, poll=0.01)  # returns as soon as it is gone


def withdraw_hosts(lab_state: Any) -> None:
    """Take back from an external store what this lab's hosts published there.

    An embedded store goes with the lab; an external one outlives it and is shared with the
    lab's hosts on other machines, so only this machine's endpoints (peer records and their
    addresses) are withdrawn: the network declarations stay for the others. A store that
    cannot be reached keeps them ('cnmlab peers' shows them as another host's).
    """
    info = lab_state.extra.get(CONTROL_PLANE_KEY) or {}
    if not info or info.get("embedded"):
        return
    store = EtcdStore(info["url"], netns_name=info.get("netns"), timeout=2.0)
    cluster = Cluster(store, info["prefix"])
    try:
        for p in cluster.peers():
            if p.host in lab_state.hosts:
                cluster.withdraw_peer(p.network_id, p.endpoint_id)
                cluster.ipam.release_address(p.network_id, p.ip)
    except CnmError:
        pass
    finally:
        store.close()


def stop_all(lab_state: Any) -> None:
    """Stop agents recorded for a lab (an external store's agents live outside its
    namespaces only if someone moved them; teardown's namespace sweep gets the rest)."""
    info = lab_state.extra.get(CONTROL_PLANE_KEY) or {}
    for host, pid in (info.get("agents") or {}).items():
        stop_agent(pid, lab_state.name, host)
