"""The TUI's live kernel-state parts on real kernel objects: watcher, snapshot, capture, widgets."""
from __future__ import annotations

import asyncio
import os
import struct
import subprocess
import threading
import time
from pathlib import Path

import pytest

from cnmlab.kernel import netns
from cnmlab.kernel.netlink import Netlink

pytestmark = pytest.mark.kernel

PID = os.getpid()


# ---- helpers -----------------------------------------------------------------------------------
class Namespaces:
    """Throwaway namespaces named with this PID, always deleted."""

    def __init__(self, *suffixes: str) -> None:
        self.names = [f"tw{PID}{s}" for s in suffixes]

    def __enter__(self) -> list[str]:
        try:
            for n in self.names:
                netns.create(n)
        except BaseException:
            self.__exit__()
            raise
        return self.names

    def __exit__(self, *exc: object) -> None:
        for n in self.names:
            netns.kill_processes(n)
            netns.delete(n)


def _veth_pair(a: str, b: str, ip_a: str, ip_b: str, name_a: str = "va", name_b: str = "vb"):
    fd = netns.open_fd(b)
    try:
        with Netlink(a) as nl:
            nl.add_veth(name_a, name_b, peer_ns_fd=fd)
            nl.add_address(name_a, ip_a)
            nl.set_link(name_a, up=True)
            nl.set_link("lo", up=True)
    finally:
        os.close(fd)
    with Netlink(b) as nl:
        nl.add_address(name_b, ip_b)
        nl.set_link(name_b, up=True)
        nl.set_link("lo", up=True)


def _in_thread(fn):
    """Run fn in a thread and collect what it yields (for generators) until told to stop."""
    out: list = []
    th = threading.Thread(target=lambda: out.extend(fn()), daemon=True)
    th.start()
    return th, out


@pytest.fixture
def small_lab():
    from cnmlab.lab import Lab

    lab = Lab(f"tw{PID}")
    try:
        h = lab.add_host("h1")
        c1 = h.run("c1")
        c2 = h.run("c2")
        yield lab, h, c1, c2
    finally:
        lab.down()


# ---- the watcher -------------------------------------------------------------------------------
def test_watcher_sees_a_new_link_within_250ms():
    from cnmlab.tui.watch import NetlinkWatcher

    with Namespaces("w") as (ns,):
        watcher = NetlinkWatcher(ns)
        watcher.ready()
        seen: list[tuple[float, list]] = []

        def loop():
            for batch in watcher.batches():
                seen.append((time.monotonic(), batch))
            return []

        th, _ = _in_thread(loop)
        try:
            with Netlink(ns) as nl:
                t0 = time.monotonic()
                nl.add_bridge("brw0")
                deadline = t0 + 1.0
                while not seen and time.monotonic() < deadline:
                    time.sleep(0.002)
        finally:
            t_stop = time.monotonic()
            watcher.stop()
            th.join(2)
            watcher.close()
        assert not th.is_alive(), "stop() did not end the watcher loop"
        assert time.monotonic() - t_stop < 0.5
        assert seen, "no event within 1 s"
        when, batch = seen[0]
        assert when - t0 < 0.25, f"event after {(when - t0) * 1000:.0f} ms"
        assert any(e.kind == "link" and e.action == "new" and e.name == "brw0" for e in batch)
        assert all(e.ns == ns for e in batch)


def test_watcher_merges_a_flood_and_reports_kinds():
    from cnmlab.tui.watch import NetlinkWatcher

    with Namespaces("f") as (ns,):
        watcher = NetlinkWatcher(ns, settle=0.03, max_delay=0.5)
        watcher.ready()
        th, batches = _in_thread(watcher.batches)
        try:
            with Netlink(ns) as nl:
                nl.add_bridge("brf")
                nl.set_link("brf", up=True)
                for i in range(40):  # 40 links + their addresses and routes: > 100 events
                    nl.add_address("brf", f"10.{i}.0.1/24")
            time.sleep(0.3)
        finally:
            watcher.stop()
            th.join(2)
            watcher.close()
        events = [e for b in batches for e in b]
        assert len(events) >= 80
        assert len(batches) <= 3, [len(b) for b in batches]
        kinds = {e.kind for e in events}
        assert {"link", "addr", "route"} <= kinds
        assert any(e.kind == "addr" and e.name == "10.7.0.1" for e in events)


def test_watcher_drops_a_namespace_that_goes_away():
    from cnmlab.tui.watch import NetlinkWatcher

    ns = f"tw{PID}gone"
    netns.create(ns)
    try:
        watcher = NetlinkWatcher(ns)
        watcher.ready()
        netns.delete(ns)
        it = watcher.batches(check=0.05)
        batch = next(it)
        assert any(e.kind == "netns" and e.action == "del" for e in batch)
        watcher.stop()
        watcher.close()
    finally:
        netns.delete(ns)


# ---- snapshots ---------------------------------------------------------------------------------
def test_snapshot_of_an_engine_built_lab(small_lab):
    from cnmlab.tui.watch import IPVS_MISSING, Snapshot

    lab, h, c1, c2 = small_lab
    assert c1.exec(["ping", "-c", "1", "-W", "2", c2.ip()]).returncode == 0
    snap = Snapshot.read(h.netns, firewall=True)
    assert snap.error is None
    links = {l.name: l for l in snap.links}
    assert links["docker0"].kind == "bridge" and "172.17.0.1/16" in links["docker0"].addresses
    ports = [l for l in snap.links if l.master == "docker0"]
    assert len(ports) == 2 and all(l.kind == "veth" for l in ports)
    assert any(r.dst == "172.17.0.0/16" and r.dev == "docker0" for r in snap.routes)
    assert any(r.dst == "default" for r in snap.routes)
    c1_mac = next(l.mac for l in Snapshot.read(c1.netns).links if l.name == "eth0")
    learned = {f.mac: f for f in snap.bridge_fdb}
    assert c1_mac in learned and learned[c1_mac].master == "docker0"
    assert "-A DOCKER -i docker0 -j RETURN" in snap.firewall
    assert "MASQUERADE" in snap.firewall and "-P FORWARD DROP" in snap.firewall
    assert snap.ipvs == IPVS_MISSING or snap.ipvs

    sb = Snapshot.read(c1.netns)
    assert sb.firewall is None
    assert any(n.ip == c2.ip() and n.dev == "eth0" for n in sb.neighbours)
    assert any(r.dst == "default" and r.gateway == "172.17.0.1" for r in sb.routes)


# ---- capture and decoding ----------------------------------------------------------------------
def _capture_while(ns: str, iface: str, action) -> list[str]:
    from cnmlab.frames import decode
    from cnmlab.kernel.capture import Capture

    cap = Capture(ns, iface).open()
    lines: list[str] = []

    def loop():
        for batch, _ in cap.batches(interval=0.05):
            lines.extend(decode(p.data) for p in batch)
        return []

    th, _ = _in_thread(loop)
    try:
        action()
        time.sleep(0.3)
    finally:
        cap.stop()
        th.join(2)
        cap.close()
    assert not th.is_alive()
    return lines


def test_capture_sees_arp_and_icmp_echo_between_sandboxes(small_lab):
    lab, h, c1, c2 = small_lab
    ip1, ip2 = c1.ip(), c2.ip()
    lines = _capture_while(c1.netns, "eth0", lambda: c1.exec(
        ["ping", "-c", "2", "-i", "0.2", "-W", "2", ip2], check=True))
    text = "\n".join(lines)
    assert f"ARP who-has {ip2} tell {ip1}" in text, text
    assert f"ARP {ip2} is-at " in text, text
    assert f"IP {ip1} > {ip2}: ICMP echo request" in text, text
    assert f"IP {ip2} > {ip1}: ICMP echo reply" in text, text


def test_capture_decodes_vxlan_on_the_underlay():
    from cnmlab.tui.watch import Snapshot

    with Namespaces("xa", "xb") as (a, b):
        _veth_pair(a, b, "10.99.0.1/24", "10.99.0.2/24")
        for ns, local, remote, inner, dev in ((a, "10.99.0.1", "10.99.0.2", "10.200.0.1/24", "va"),
                                              (b, "10.99.0.2", "10.99.0.1", "10.200.0.2/24", "vb")):
            with Netlink(ns) as nl:
                nl.add_link("vx0", "vxlan", vxlan_id=42, vxlan_local=local, vxlan_group=remote,
                            vxlan_port=4789, vxlan_link=nl.index(dev))
                nl.add_address("vx0", inner)
                nl.set_link("vx0", up=True)
        lines = _capture_while(a, "va", lambda: subprocess.run(
            ["ip", "netns", "exec", a, "ping", "-c", "1", "-W", "2", "10.200.0.2"],
            capture_output=True, timeout=10))
        text = "\n".join(lines)
        assert "IP 10.99.0.1." in text and "> 10.99.0.2.4789: VXLAN vni 42 | " in text, text
        assert "VXLAN vni 42 | " in text and "ARP who-has 10.200.0.2 tell 10.200.0.1" in text
        assert any("VXLAN vni 42" in l and "ICMP echo request" in l for l in lines), text
        peers = Snapshot.read(a).vxlan_peers
        assert any(p.dev == "vx0" and p.dst == "10.99.0.2" for p in peers), peers


def test_decoder_on_crafted_frames():
    from cnmlab.frames import decode

    def eth(payload: bytes, etype: int = 0x0800) -> bytes:
        return bytes.fromhex("020000000002" "020000000001") + struct.pack("!H", etype) + payload

    def ipv4(proto: int, src: bytes, dst: bytes, seg: bytes) -> bytes:
        return struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(seg), 1, 0, 64, proto, 0,
                           src, dst) + seg

    a, b = bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2])
    tcp = struct.pack("!HHIIHHHH", 40000, 80, 1000, 0, (5 << 12) | 0x02, 65535, 0, 0)
    assert decode(eth(ipv4(6, a, b, tcp))) == "IP 10.0.0.1.40000 > 10.0.0.2.80: TCP [S] seq 1000 len 0"
    q = (struct.pack("!HHHHHH", 7, 0x0100, 1, 0, 0, 0) + b"\x03web\x07example\x00"
         + struct.pack("!HH", 1, 1))
    udp = struct.pack("!HHHH", 5353, 53, 8 + len(q), 0) + q
    assert decode(eth(ipv4(17, a, b, udp))).endswith("DNS query A? web.example")
    inner = eth(ipv4(1, bytes([172, 17, 0, 2]), bytes([172, 17, 0, 3]),
                     struct.pack("!BBHHH", 8, 0, 0, 9, 1)))
    vx = struct.pack("!B3xI", 0x08, 4096 << 8) + inner
    line = decode(eth(ipv4(17, a, b, struct.pack("!HHHH", 50000, 4789, 8 + len(vx), 0) + vx)))
    assert "VXLAN vni 4096 | " in line and "ICMP echo request id 9 seq 1" in line, line
    assert decode(b"\x00" * 5).startswith("runt")
    assert decode(eth(b"\x45\x00", 0x0800))  # truncated: a line, not an exception


# ---- the widgets in an app ---------------------------------------------------------------------
def _app(lab_name: str):
    from textual.app import App
    from textual.containers import Horizontal, Vertical

    import cnmlab.tui as tui_pkg
    from cnmlab.tui.livestate import LiveState
    from cnmlab.tui.packets import PacketPanel
    from cnmlab.tui.topology import TopologyView

    class LiveApp(App):
        CSS_PATH = [Path(tui_pkg.__file__).parent / "widgets.tcss"]

        def compose(self):
            with Horizontal():
                yield LiveState(lab_name, "h1", id="live")
                with Vertical():
                    yield TopologyView(lab_name, id="topo")
                    yield PacketPanel(lab_name, "c1", "eth0", autostart=True, id="pk")

    return LiveApp()


async def _until(pilot, cond, timeout: float = 5.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await pilot.pause(0.02)


def test_widgets_show_a_real_lab(small_lab):
    from cnmlab.tui.livestate import LiveState
    from cnmlab.tui.packets import PacketPanel
    from cnmlab.tui.topology import TopologyView

    lab, h, c1, c2 = small_lab
    name = lab.name

    async def main():
        app = _app(name)
        async with app.run_test(size=(160, 48)) as pilot:
            live = app.query_one(LiveState)
            topo = app.query_one(TopologyView)
            pk = app.query_one(PacketPanel)
            await _until(pilot, lambda: live.updates and live.firewall_dump, what="live state")
            await _until(pilot, lambda: topo.updates, what="topology")
            await _until(pilot, lambda: pk.running, what="capture start")
            text = live.text()
            for part in ("h1 host", "docker0", "172.17.0.1/16", "default via 203.0.113.1",
                         "table nat", "DOCKER", "MASQUERADE", "IPVS"):
                assert part in text, (part, text)
            tree = topo.text()
            assert "upstream" in tree and "h1 eth0 203.0.113.10/24" in tree, tree
            assert f"c1 eth0 {c1.ip()}/16" in tree and f"c2 eth0 {c2.ip()}/16" in tree, tree
            await pilot.pause(0.1)
            svg = app.export_screenshot()
            assert "docker0" in svg and "Interfaces" in svg

            # a learner's hand-made veth between the host and c2 shows up in both views
            def hand_made():
                fd = netns.open_fd(c2.netns)
                try:
                    with Netlink(h.netns) as nl:
                        nl.add_veth("hand0", "hand1", peer_ns_fd=fd)
                        nl.set_link("hand0", up=True)
                finally:
                    os.close(fd)

            await asyncio.to_thread(hand_made)
            await _until(pilot, lambda: "hand0" in live.text(), 2, "hand0 in LiveState")
            await _until(pilot, lambda: "hand0" in topo.text() and "hand1" in topo.text(), 2,
                         "hand0 in TopologyView")
            line = next(l for l in topo.text().splitlines() if "hand0" in l)
            # one line for the cable, drawn from whichever end is reached first
            assert "hand1" in line and "✎" in line, line
            assert "c2 hand1" in line or "h1 hand0" in line, line

            # packets between the sandboxes appear in the panel
            await asyncio.to_thread(c1.exec, ["ping", "-c", "2", "-i", "0.2", c2.ip()])
            await _until(pilot, lambda: "ICMP echo reply" in pk.text(), 3, "packets")
            assert f"ARP who-has {c2.ip()}" in pk.text()

            # switching the target re-reads another namespace
            live.select("c1")
            await _until(pilot, lambda: live.current and live.current.name == "c1", 3, "select")
            await _until(pilot, lambda: c2.ip() in live.text(), 3, "c1's neighbour")
            assert "default via 172.17.0.1" in live.text()
            assert "shown for hosts" in live.text()
            pk.stop()
            assert not pk.running

    asyncio.run(asyncio.wait_for(main(), 60))


def test_packets_label_the_checks_probes_hide_them_and_separate_captures(small_lab):
    """Issue 17 (6): the checks' own probes are labelled [check] (and their replies), the
    learner's traffic is not, ``f`` hides the checks' packets, and a new interface starts
    after a separator line, so two captures never read as one stream."""
    from cnmlab.checks import probes
    from cnmlab.tui.packets import PacketPanel

    lab, h, c1, c2 = small_lab

    async def main():
        app = _app(lab.name)
        async with app.run_test(size=(160, 48)) as pilot:
            pk = app.query_one(PacketPanel)
            await _until(pilot, lambda: pk.running, 30, "capture start")
            # the capture socket opens in the panel's worker thread: capturing once a packet shows
            deadline = time.monotonic() + 30
            while not pk.lines:
                assert time.monotonic() < deadline, "the capture saw nothing"
                await asyncio.to_thread(c1.exec, ["ping", "-c", "1", "-W", "1", c2.ip()])
                await pilot.pause(0.3)
            pk.clear()
            # a check's probe (DSCP lower effort) and the learner's own ping, c1 -> c2
            res = await asyncio.to_thread(probes.ping, c1.netns, c2.ip(), 2.0)
            assert res.ok, res.observed
            await asyncio.to_thread(c1.exec, ["ping", "-c", "1", c2.ip()])
            def replies(check: bool) -> int:
                return sum("ICMP echo reply" in l and l.startswith("[check] ") == check
                           for l in pk.lines)

            await _until(pilot, lambda: replies(True) and replies(False), 30, "both replies")
            echo = [l for l in pk.lines if "ICMP echo" in l]
            checks = [l for l in echo if l.startswith("[check] ")]
            learners = [l for l in echo if not l.startswith("[check] ")]
            # request and reply each (a retried probe may add a request)
            assert any("reply" in l for l in checks) and any("request" in l for l in checks), echo
            assert any("reply" in l for l in learners) and any("request" in l for l in learners)
            assert pk.from_checks >= 2
            # f hides the checks' packets; the learner's still show
            pk.action_toggle_checks()
            pk.clear()
            seen = pk.from_checks
            await asyncio.to_thread(probes.ping, c1.netns, c2.ip(), 2.0)
            await asyncio.to_thread(c1.exec, ["ping", "-c", "1", c2.ip()])
            await _until(pilot, lambda: pk.from_checks >= seen + 2, 30, "the hidden ones")
            await _until(pilot, lambda: replies(False), 30, "the learner's reply")
            assert not any(l.startswith("[check]") for l in pk.lines), pk.lines
            # another interface: a separator line before the new capture's packets
            pk.choose("c1", "lo")
            await _until(pilot, lambda: pk.running and pk.interface == "lo", 30, "restart")
            sep = [i for i, l in enumerate(pk.lines) if l.startswith("──── now capturing on")]
            assert sep and pk.lines[sep[-1]] == "──── now capturing on c1 lo ────", pk.lines
            pk.stop()

    asyncio.run(asyncio.wait_for(main(), 150))
