"""The overlay driver and its control plane, on real kernel objects and a real etcd.

Two or three hosts on one underlay, the lab's private etcd, an agent per host: the data plane
must read like Docker's (br0 + vxlan0 in a per-network namespace, peers as PERMANENT neighbour
and FDB entries and nothing else), the control plane must converge and show its faults.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time

import pytest

from cnmlab import peers, state
from cnmlab.kernel import netns
from cnmlab.drivers.overlay import overlay_ns
from cnmlab.errors import ActiveEndpoints
from cnmlab.etcd import EtcdStore, StoreUnreachable
from cnmlab.lab import Lab
from cnmlab.kernel.netlink import Netlink

pytestmark = [pytest.mark.kernel,
              pytest.mark.skipif(not shutil.which("etcd"), reason="needs etcd-server")]


def pings(sb, ip: str, within: float = 5.0) -> bool:
    """A reply within ``within`` seconds: a sandbox that just failed to resolve a neighbour
    keeps the failure for a moment, and its first echo may be refused locally."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if sb.exec(["ping", "-c1", "-W1", ip]).returncode == 0:
            return True
        time.sleep(0.2)
    return False


def overlay_lab(name: str, hosts: int = 2) -> Lab:
    lab = Lab(name)
    try:
        lab.add_underlay("lan", subnet="192.168.50.0/24")
        for i in range(hosts):
            lab.add_host(f"h{i + 1}", underlay="lan")
        lab.start_control_plane()
        lab.network_create("ov", "overlay")
    except BaseException:
        lab.down()
        raise
    return lab


@pytest.fixture
def ovlab(lab_name):
    lab = overlay_lab(lab_name)
    yield lab
    lab.down()


def ovns_of(lab: Lab, host: str) -> str:
    h = lab.host(host)
    return overlay_ns(h.model, h.networks()["ov"])


def test_the_data_plane_reads_like_dockers(ovlab):
    h1, h2 = ovlab.host("h1"), ovlab.host("h2")
    a = h1.run("a1", "ov")
    b = h2.run("b1", "ov")
    c = h2.run("c1", "ov")
    ovlab.converge()
    ns = ovns_of(ovlab, "h1")
    net = h1.networks()["ov"]
    assert ns.endswith(f".1-{net.id[:10]}")
    with Netlink(ns) as nl:
        links = {l.name: l for l in nl.links()}
        vx = nl.vxlan("vxlan0")
        neigh = {(n.ip, n.mac) for n in nl.neighbours()
                 if n.dev == "vxlan0" and n.state == "PERMANENT"}
        fdb = {(f.mac, f.dst) for f in nl.fdb() if f.dev == "vxlan0" and f.dst}
    assert links["br0"].kind == "bridge" and "10.0.0.1/24" in links["br0"].addresses
    assert links["vxlan0"].master == "br0" and links["vxlan0"].mtu == 1450
    assert vx == {"id": 4096, "port": 4789, "learning": True, "proxy": True, "l2miss": True,
                  "l3miss": True, "mtu": 1450}
    veths = [l for l in links.values() if l.kind == "veth"]
    assert [l.master for l in veths] == ["br0"] and veths[0].name.startswith("veth")
    # one PERMANENT neighbour and one FDB entry per remote endpoint, and nothing else
    vtep2 = h2.model.underlay_ip
    assert neigh == {(b.ip(), "02:42:0a:00:00:03"), (c.ip(), "02:42:0a:00:00:04")}
    assert fdb == {("02:42:0a:00:00:03", vtep2), ("02:42:0a:00:00:04", vtep2)}
    # the container: eth0 on the overlay (1450, Docker's MAC), eth1 on docker_gwbridge
    with Netlink(a.netns) as nl:
        sl = {l.name: l for l in nl.links()}
        routes = nl.routes()
    assert sl["eth0"].mtu == 1450 and sl["eth0"].mac == "02:42:0a:00:00:02"
    assert sl["eth1"].addresses[0].startswith("172.18.")
    assert [(r.gateway, r.dev) for r in routes if r.dst == "default"] == [("172.18.0.1", "eth1")]
    gw = h1.networks()["docker_gwbridge"]
    assert gw.device == "docker_gwbridge"
    assert gw.options["com.docker.network.bridge.enable_icc"] == "false"
    # traffic: across hosts, and out through the gateway bridge
    assert a.exec(["ping", "-c1", "-W1", b.ip()]).returncode == 0
    assert a.exec(["ping", "-c1", "-W1", ovlab.upstream_ip]).returncode == 0


def test_no_flooding_an_unannounced_address_stays_unreachable(ovlab):
    """No multicast, no flooding: a remote endpoint the store never announced gets no frame
    (learning is on, as in Docker, but nothing arrives to learn from)."""
    h1, h2 = ovlab.host("h1"), ovlab.host("h2")
    a = h1.run("a1", "ov")
    b = h2.run("b1", "ov")
    ovlab.converge()
    ovlab.stop_agent("h1")
    with Netlink(ovns_of(ovlab, "h1")) as nl:  # what a missing peer entry looks like
        nl.delete_neighbour("vxlan0", b.ip())
        nl.delete_fdb("vxlan0", "02:42:0a:00:00:03", h2.model.underlay_ip)
    assert a.exec(["ping", "-c1", "-W1", b.ip()]).returncode != 0
    report = peers.report(ovlab.cluster, [h.controller for h in ovlab.hosts()])
    assert peers.out_of_sync(report) == ["h1"]
    assert report[0].networks[0].rows[0].kernel == "missing"
    ovlab.restart_agent("h1")
    ovlab.converge()
    assert pings(a, b.ip())


def test_a_dead_agent_shows_out_of_sync_and_a_restarted_one_converges(ovlab):
    h1, h2 = ovlab.host("h1"), ovlab.host("h2")
    a_ip = h1.run("a1", "ov").ip()
    ovlab.converge()
    ovlab.stop_agent("h2")
    c = h1.run("c1", "ov")  # published while h2 does not listen
    h1.rm("a1")  # withdrawn while h2 does not listen
    time.sleep(0.2)
    report = {h.host: h for h in peers.report(ovlab.cluster, [x.controller for x in ovlab.hosts()])}
    rows = {r.ip: r.kernel for r in report["h2"].networks[0].rows}
    assert rows == {c.ip(): "missing", a_ip: "stale"}
    assert not report["h2"].in_sync and report["h1"].in_sync
    text = peers.render(list(report.values()))
    assert "host h2: OUT OF SYNC" in text and "missing" in text
    deadline = time.monotonic() + 10  # its lease expires: the store forgets the agent
    while "h2" in ovlab.cluster.agents() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert "h2" not in ovlab.cluster.agents()
    ovlab.restart_agent("h2")
    ovlab.converge()
    b = h2.run("b1", "ov")
    ovlab.converge()
    assert b.exec(["ping", "-c1", "-W1", c.ip()]).returncode == 0
    assert "h2" in ovlab.cluster.agents()


def test_agents_attach_declared_networks_and_detach_withdrawn_ones(lab_name):
    lab = overlay_lab(lab_name, hosts=3)
    try:
        with lab.locked():  # declared by h1 only, as one host's engine does
            ov2 = lab.host("h1").controller.create_network("ov2", "overlay")
        deadline = time.monotonic() + 5
        made = [f"{lab.host(h).netns}.1-{ov2.id[:10]}" for h in ("h2", "h3")]
        while not all(netns.exists(n) for n in made) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert all(netns.exists(n) for n in made), "agents did not build the declared network"
        assert ov2.options["com.docker.network.driver.overlay.vxlanid_list"] == "4097"
        x = lab.host("h1").run("x1", "ov")
        with pytest.raises(ActiveEndpoints, match="active endpoints"):
            lab.network_rm("ov")
        lab.host("h1").rm(x.name)
        lab.network_rm("ov")
        gone = [ovns_of_id(lab, h, "ov") for h in ("h1", "h2", "h3")]
        while any(netns.exists(n) for n in gone) and time.monotonic() < deadline + 5:
            time.sleep(0.02)
        assert not any(netns.exists(n) for n in gone)
        assert lab.cluster.network("ov") is None
    finally:
        lab.down()


def ovns_of_id(lab: Lab, host: str, net: str) -> str:
    rec = lab.cluster.network(net)
    h = lab.host(host).model
    return f"{h.netns}.1-{(rec.id if rec else '')[:10]}"


def test_an_unreachable_store_is_one_line(lab_name, capsys):
    with pytest.raises(StoreUnreachable) as e:
        EtcdStore("etcd://192.0.2.1:2379", timeout=0.3).get("/x")
    assert "\n" not in str(e.value) and "etcd://192.0.2.1:2379" in str(e.value)
    lab = overlay_lab(lab_name)
    try:
        pid = lab.control_plane["pid"]
        os.kill(pid, 9)
        deadline = time.monotonic() + 3
        while os.path.exists(f"/proc/{pid}") and time.monotonic() < deadline:
            try:
                os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                pass
            time.sleep(0.02)
        proc = subprocess.run([sys.executable, "-m", "cnmlab.cli", "peers", lab_name],
                              capture_output=True, text=True, timeout=30)
        assert proc.returncode == 1
        err = proc.stderr.strip()
        assert err.count("\n") == 0 and "cannot be reached" in err and "Traceback" not in err
    finally:
        lab.down()


def test_peers_command_shows_store_next_to_kernel(ovlab):
    ovlab.host("h1").run("a1", "ov")
    ovlab.host("h2").run("b1", "ov")
    ovlab.converge()
    proc = subprocess.run([sys.executable, "-m", "cnmlab.cli", "peers", ovlab.name],
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    assert "host h1: in sync, agent up" in proc.stdout
    assert "10.0.0.3" in proc.stdout and "192.168.50.12" in proc.stdout


def test_kill_9_leaves_nothing_clean_cannot_remove(lab_name):
    script = (f"from cnmlab.lab import Lab\nlab = Lab({lab_name!r})\n"
              "lab.add_underlay('lan')\nlab.add_host('h1', underlay='lan')\n"
              "lab.start_control_plane()\nlab.network_create('ov', 'overlay')\n"
              "lab.host('h1').run('a1', 'ov')\nprint('up', flush=True)\n"
              "import time\ntime.sleep(60)\n")
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "up"
        info = state.load(lab_name).extra["control_plane"]
        pids = [info["pid"], *info["agents"].values()]
        assert all(os.path.exists(f"/proc/{p}") for p in pids)
    finally:
        proc.kill()
        proc.wait()
    from cnmlab.clean import clean

    clean([lab_name])
    time.sleep(0.1)
    assert not [p for p in pids if os.path.exists(f"/proc/{p}")
                and open(f"/proc/{p}/stat").read().split(") ", 1)[1][0] != "Z"]
    assert not os.path.exists(state.aux_path(lab_name, "etcd"))
    assert not [n for n in netns.list_names() if lab_name in n]


def test_no_vxlan_packet_leaves_the_machines_real_interface(ovlab):
    """Capture on the root namespace's real uplink while the overlay carries traffic; the
    same capture on a host's LAN NIC (the positive control) does see the VNI."""
    from cnmlab.checks.library import capture_vnis
    from cnmlab.checks.nsref import NsRef

    route = subprocess.run(["ip", "-o", "route", "show", "default"], capture_output=True,
                           text=True).stdout.split()
    if "dev" not in route:
        pytest.skip("this machine has no default route: no real uplink to watch")
    real = route[route.index("dev") + 1]
    a = ovlab.host("h1").run("a1", "ov")
    b = ovlab.host("h2").run("b1", "ov")
    ovlab.converge()
    stop = time.monotonic() + 1.5

    def traffic() -> None:
        while time.monotonic() < stop:
            a.exec(["ping", "-c5", "-i", "0.05", "-W1", b.ip()])

    import threading

    t = threading.Thread(target=traffic)
    t.start()
    try:
        on_lan = capture_vnis(NsRef(name=ovlab.host("h1").netns), "eth0", 4789, 0.6)
        on_real = capture_vnis(NsRef(path=f"/proc/{os.getpid()}/ns/net"), real, 4789, 0.8)
    finally:
        t.join()
    assert on_lan == {4096}
    assert on_real == set()


def test_etcd_store_keeps_the_kv_contract(lab_name):
    """create-if-absent, prefix range, delete, revisions and a watch that carries deleted
    values, on the lab's own etcd; GlobalIpam over it never gives one address twice."""
    import threading

    from cnmlab.cluster import GlobalIpam

    with Lab(lab_name) as lab:
        lab.add_underlay("lan")
        cluster = lab.start_control_plane()
        store = cluster.store
        assert isinstance(store, EtcdStore)
        rev = store.revision()
        assert store.create("/t/a", "1") and not store.create("/t/a", "2")
        store.put("/t/b", "x")
        assert store.get("/t/a") == "1" and store.get("/t/zz") is None
        assert store.range("/t/") == {"/t/a": "1", "/t/b": "x"}
        assert store.delete("/t/b") and not store.delete("/t/b")
        assert store.revision() == rev + 3
        events = next(store.watch("/t/", rev + 1))
        assert [(e.type, e.key, e.value, e.prev_value) for e in events][:1] == \
            [("PUT", "/t/a", "1", None)]
        batch: list = []
        for b in store.watch("/t/", rev + 1):
            batch += b
            if len(batch) >= 3:
                break
        assert [(e.type, e.key, e.prev_value) for e in batch] == \
            [("PUT", "/t/a", None), ("PUT", "/t/b", None), ("DELETE", "/t/b", "x")]
        ipam = GlobalIpam(store, "/t/ipam/")
        ipam.request_pool("n1")
        got: list[str] = []

        def host() -> None:  # each thread its own connection, as each host has its own
            for _ in range(15):
                got.append(ipam.request_address("n1"))

        threads = [threading.Thread(target=host) for _ in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(got) == 45 and len(set(got)) == 45


def test_encrypted_overlay_needs_esp_and_says_so_in_one_line(lab_name):
    from cnmlab.kernel import features
    from cnmlab.errors import FeatureMissing

    if features.has("ipsec"):
        pytest.skip("this kernel has ESP: the encrypted overlay itself is tested instead")
    lab = overlay_lab(lab_name)
    try:
        with pytest.raises(FeatureMissing) as e:
            lab.network_create("sec", "overlay", options={"encrypted": ""})
        assert "ipsec" in str(e.value) and "\n" not in str(e.value)
        assert lab.cluster.network("sec") is None  # nothing declared, nothing allocated
    finally:
        lab.down()


@pytest.mark.cnmlab_needs("ipsec")
def test_encrypted_overlay_carries_only_esp_between_the_vteps(lab_name):
    """``--opt encrypted``: ESP transport SAs with rfc4106(gcm(aes)) between the hosts, a
    policy for marked VXLAN only, MTU 1424; the LAN sees ESP, never this network's VXLAN."""
    from cnmlab import xfrm
    from cnmlab.checks.kinds import run_checks
    from cnmlab.checks.targets import EngineTarget

    lab = overlay_lab(lab_name)
    try:
        sec = lab.network_create("sec", "overlay", options={"encrypted": ""})
        a = lab.host("h1").run("a1", "sec")
        b = lab.host("h2").run("b1", "sec")
        lab.host("h1").run("p1", "ov")
        lab.host("h2").run("p2", "ov")
        lab.converge()
        assert a.exec(["ping", "-c1", "-W2", b.ip()]).returncode == 0
        states = xfrm.states(lab.host("h1").netns)
        v1, v2 = lab.host("h1").model.underlay_ip, lab.host("h2").model.underlay_ip
        assert {(s.src, s.dst) for s in states} == {(v1, v2), (v2, v1)}
        results = run_checks(EngineTarget(lab), [
            {"mtu": {"sandbox": "a1", "mtu": 1424}},
            {"esp-on-wire": {"ns": "host:h2", "interface": "eth0", "vni": "sec",
                             "traffic": {"from": "a1", "to": "b1"}}},
            {"vxlan-on-wire": {"ns": "host:h2", "interface": "eth0", "vni": "ov",
                               "traffic": {"from": "p1", "to": "p2"}}},  # others stay clear
        ])
        assert all(r.ok for r in results), [(r.check, r.observed) for r in results]
        assert sec.options["com.docker.network.driver.overlay.vxlanid_list"] == "4097"
        lab.host("h2").rm("b1")
        lab.converge()
        deadline = time.monotonic() + 3  # the agent drops the SAs right after the entries
        while xfrm.has_out_policy(lab.host("h1").netns, v2) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not xfrm.has_out_policy(lab.host("h1").netns, v2)  # last peer there gone
    finally:
        lab.down()


def test_tui_peers_view_shows_the_store_next_to_the_kernel(ovlab):
    """The workshop's Peers tab: the same table as ``cnmlab peers``, refreshed live."""
    import asyncio

    from rich.console import Console
    from textual.app import App, ComposeResult
    from cnmlab.tui.peers import PeersView

    ovlab.host("h1").run("a1", "ov")
    ovlab.host("h2").run("b1", "ov")
    ovlab.converge()
    ovlab.stop_agent("h2")
    ovlab.host("h1").run("c1", "ov")  # h2 will miss it

    class Host(App):
        def compose(self) -> ComposeResult:
            yield PeersView(ovlab.name)

    def text_of(app: App) -> str:
        console = Console(width=120, record=True, file=open(os.devnull, "w"))
        console.print(app.query_one(PeersView).body)
        return console.export_text()

    async def scenario() -> str:
        app = Host()
        async with app.run_test() as pilot:
            for _ in range(100):
                await pilot.pause(0.05)
                if "OUT OF SYNC" in text_of(app):
                    break
            return text_of(app)

    text = asyncio.run(scenario())
    assert "host h1  in sync" in text and "host h2  OUT OF SYNC" in text
    assert "10.0.0.4" in text and "missing" in text


def test_topology_file_declares_overlays_once_for_all_hosts(tmp_path, lab_name):
    from cnmlab import topofile
    from cnmlab.errors import InvalidInput

    path = tmp_path / "ov.yaml"
    path.write_text(f"""name: {lab_name}
underlays:
  lan: {{subnet: 192.168.60.0/24}}
networks:
  web: {{driver: overlay, subnet: 10.9.0.0/24}}
hosts:
  h1:
    underlay: lan
    sandboxes:
      a1: {{network: web}}
  h2:
    underlay: lan
    sandboxes:
      b1: {{network: web}}
""")
    lab = topofile.build(topofile.load(str(path)))  # control_plane defaults to embedded
    try:
        assert lab.control_plane and lab.control_plane["embedded"]
        a, b = lab.sandbox("a1"), lab.sandbox("b1")
        assert (a.ip(), b.ip()) == ("10.9.0.2", "10.9.0.3")
        assert a.exec(["ping", "-c1", "-W1", b.ip()]).returncode == 0
    finally:
        lab.down()
    path.write_text("name: x\nnetworks:\n  loc: {driver: bridge}\nhosts:\n  h1: {}\n")
    with pytest.raises(InvalidInput, match=r"ov.yaml:3: networks.loc.driver: lab-wide networks "
                                           r"are global-scope"):
        topofile.load(str(path))
    with pytest.raises(InvalidInput, match="use 'embedded', 'on-demand' or etcd://HOST:PORT"):
        topofile.parse_store("consul://x")
