"""The labs' claims about the kernel, each shown on real namespaces (issue 17's audit).

Every claim a lab's text makes about what the kernel does is either tested here, corrected in
the text, or listed in ``labs/CLAIMS.md`` with the reason it cannot be tested on this machine.
A claim test shows what breaks without the rule or setting, and under which setting.
"""
from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator

import pytest

from cnmlab import shells
from cnmlab.workshop import labfile

from cnmlab.workshop.progress import Progress

from cnmlab.workshop.runner import LabRun
from cnmlab.checks.kinds import run_check
from cnmlab.checks.targets import EngineTarget
from cnmlab.checks.vmlane import needs

PID = str(os.getpid())
pytestmark = pytest.mark.kernel

HAIRPIN = {"hairpin": {"host": "host", "port": 8080, "proto": "tcp", "to": "web",
                       "container_port": 80, "from": "client", "timeout": 0.5}}
DNAT_FROM_BRIDGE = ("iptables -t nat -I DOCKER 1 -i docker0 -p tcp -m tcp --dport 8080 "
                    "-j DNAT --to-destination 172.17.0.2:80")
HAIRPIN_MASQ = ("iptables -t nat -A POSTROUTING -s 172.17.0.0/16 -d 172.17.0.2/32 -p tcp "
                "-m tcp --dport 80 -j MASQUERADE")


def sh(ns: str, script: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", "netns", "exec", ns, "sh", "-ec", script], check=check,
                          capture_output=True, text=True)


@pytest.fixture
def ns_pair():
    """Two bare namespaces joined by a veth pair (a, b), both up."""
    a, b = f"cla{PID}", f"clb{PID}"
    subprocess.run(["ip", "netns", "add", a], check=True)
    subprocess.run(["ip", "netns", "add", b], check=True)
    try:
        sh(a, f"ip link add veth-a type veth peer name veth-b netns {b}")
        yield a, b
    finally:
        for n in (a, b):
            subprocess.run(["ip", "netns", "del", n], check=False)


def _started(lab_id: str, tmp_path) -> Iterator[LabRun]:
    """A lab run started for one test (its progress in the test's own folder), then stopped."""
    run = LabRun(labfile.get(lab_id), f"lab{lab_id}-{PID}", Progress(str(tmp_path / "p.json")))
    run.start()
    try:
        yield run
    finally:
        run.stop()


@pytest.fixture
def lab03(tmp_path):
    yield from _started("03", tmp_path)


# ---- lab 01 --------------------------------------------------------------------------------
def test_lab01_fresh_namespace_has_lo_down(ns_pair):
    a, _ = ns_pair
    assert "state DOWN" in sh(a, "ip link show lo").stdout or \
        "LOOPBACK>" in sh(a, "ip link show lo").stdout  # flags without UP
    assert sh(a, "ping -c1 -W1 127.0.0.1", check=False).returncode != 0


def test_lab01_veth_passes_traffic_only_with_both_ends_up(ns_pair):
    a, b = ns_pair
    sh(a, "ip addr add 10.0.0.1/24 dev veth-a; ip link set veth-a up")
    sh(b, "ip addr add 10.0.0.2/24 dev veth-b")  # veth-b stays down
    assert "NO-CARRIER" in sh(a, "ip link show veth-a").stdout
    assert sh(a, "ping -c1 -W1 10.0.0.2", check=False).returncode != 0
    sh(b, "ip link set veth-b up")
    assert sh(a, "ping -c1 -W2 10.0.0.2", check=False).returncode == 0
    assert "lladdr" in sh(a, "ip neigh show 10.0.0.2").stdout  # ARP resolved blue's MAC


def test_lab01_an_address_adds_its_on_link_route(ns_pair):
    a, _ = ns_pair
    assert "10.0.0.0/24" not in sh(a, "ip route").stdout
    sh(a, "ip addr add 10.0.0.1/24 dev veth-a; ip link set veth-a up")
    assert "10.0.0.0/24 dev veth-a proto kernel scope link" in sh(a, "ip route").stdout


def test_lab01_ip_netns_exec_mounts_the_sandbox_resolv_conf(ns_pair):
    a, _ = ns_pair
    os.makedirs(f"/etc/netns/{a}", exist_ok=True)
    try:
        with open(f"/etc/netns/{a}/resolv.conf", "w") as f:
            f.write(f"nameserver 192.0.2.53 # claim{PID}\n")
        assert f"claim{PID}" in sh(a, "cat /etc/resolv.conf").stdout
    finally:
        subprocess.run(["rm", "-rf", f"/etc/netns/{a}"])


# ---- lab 02 --------------------------------------------------------------------------------
def test_lab02_link_down_removes_its_routes_veth_mac_changes_while_up(ns_pair):
    a, b = ns_pair
    sh(a, "ip addr add 172.17.0.2/16 dev veth-a; ip link set veth-a up")
    sh(b, "ip addr add 172.17.0.1/16 dev veth-b; ip link set veth-b up")
    sh(a, "ip route add default via 172.17.0.1")
    # corrected claim: a veth takes a new MAC while up
    sh(a, "ip link set veth-a address 02:42:ac:11:00:02")
    assert "02:42:ac:11:00:02" in sh(a, "ip link show veth-a").stdout
    assert "default via 172.17.0.1" in sh(a, "ip route").stdout
    # the claim that stays: taking the link down deletes the default route through it
    sh(a, "ip link set veth-a down; ip link set veth-a up")
    assert "default" not in sh(a, "ip route").stdout


def test_lab02_no_default_route_network_unreachable(ns_pair):
    a, _ = ns_pair
    sh(a, "ip addr add 172.17.0.2/16 dev veth-a; ip link set veth-a up")
    out = sh(a, "ping -c1 -W1 203.0.113.10", check=False)
    assert out.returncode != 0 and "Network is unreachable" in (out.stderr + out.stdout)


# ---- lab 03 --------------------------------------------------------------------------------
def test_lab03_hairpin_masquerade_needed_only_when_bridged_frames_skip_iptables(lab03):
    """The corrected step 4: DNAT alone works with bridge-nf-call-iptables=1 (conntrack sees
    web's bridged reply and un-DNATs it); with 0 the reply reaches client unrewritten and the
    connection fails; the hairpin MASQUERADE makes it work again under 0."""
    lab03.solve(lab03.labdef.step("publish"))
    host = lab03.lab.netns_of("host")
    target = EngineTarget(lab03.lab)
    assert sh(host, "sysctl -n net.bridge.bridge-nf-call-iptables").stdout.strip() == "1"
    assert not run_check(target, HAIRPIN).ok  # the RETURN skips the DNAT for docker0
    sh(host, DNAT_FROM_BRIDGE)
    r = run_check(target, HAIRPIN)
    assert r.ok and "seen as 172.17.0.3" in r.observed, r.observed  # no MASQUERADE needed
    sh(host, "sysctl -qw net.bridge.bridge-nf-call-iptables=0")
    r = run_check(target, HAIRPIN)
    assert not r.ok, r.observed  # web's reply bypasses conntrack: client resets it
    sh(host, HAIRPIN_MASQ)
    r = run_check(target, HAIRPIN)
    assert r.ok and "seen as 172.17.0.1" in r.observed, r.observed  # web answers the host


def test_lab03_forwarding_and_masquerade_are_both_needed(lab03):
    host = lab03.lab.netns_of("host")
    target = EngineTarget(lab03.lab)
    reach = {"reachable": {"from": "web", "to": "upstream", "timeout": 0.5}}
    sh(host, "iptables -t nat -A POSTROUTING -s 172.17.0.0/16 ! -o docker0 -j MASQUERADE")
    assert not run_check(target, reach).ok  # ip_forward=0: the host does not route
    sh(host, "sysctl -qw net.ipv4.ip_forward=1")
    assert run_check(target, reach).ok
    sh(host, "iptables -t nat -F POSTROUTING")
    assert not run_check(target, reach).ok  # no MASQUERADE: no way back to 172.17.0.2


def test_lab03_a_drop_after_return_never_sees_the_packet(lab03):
    lab03.solve(lab03.labdef.step("masquerade"))
    host = lab03.lab.netns_of("host")
    target = EngineTarget(lab03.lab)
    iso = {"isolated": {"from": "client", "to": "upstream", "timeout": 0.5}}
    sh(host, "iptables -N DOCKER-USER; iptables -A DOCKER-USER -j RETURN; "
             "iptables -I FORWARD 1 -j DOCKER-USER; "
             "iptables -A DOCKER-USER -s 172.17.0.3/32 -o eth0 -j DROP")  # appended: too late
    r = run_check(target, iso)
    assert not r.ok and "first rule that matches decides" in r.reason, r.reason
    order = {"iptables-rule": {"host": "host", "rule": "-A DOCKER-USER -s 172.17.0.3/32 -o "
                               "eth0 -j DROP", "before": "-A DOCKER-USER -j RETURN"}}
    r = run_check(target, order)
    assert not r.ok and "rule 2 of DOCKER-USER, after -A DOCKER-USER -j RETURN" in r.reason
    sh(host, "iptables -D DOCKER-USER -s 172.17.0.3/32 -o eth0 -j DROP; "
             "iptables -I DOCKER-USER 1 -s 172.17.0.3/32 -o eth0 -j DROP")
    assert run_check(target, iso).ok and run_check(target, order).ok


# ---- labs 06-10: bare namespaces, one per machine the step talks about -----------------------
@pytest.fixture
def spaces():
    """Make namespaces named with this PID on demand; delete them all at the end."""
    made: list[str] = []

    def make(*roles: str) -> list[str]:
        names = [f"cl{r}{PID}" for r in roles]
        for n in names:
            subprocess.run(["ip", "netns", "add", n], check=True)
            made.append(n)
        return names

    try:
        yield make
    finally:
        for n in made:
            subprocess.run(["ip", "netns", "del", n], check=False)


def reaches(ns: str, ip: str, tries: int = 10) -> bool:
    """A ping that answers within a generous budget (ARP and a loaded machine are slow)."""
    return any(sh(ns, f"ping -c1 -W2 {ip}", check=False).returncode == 0 for _ in range(tries))


def silent(ns: str, ip: str) -> bool:
    return sh(ns, f"ping -c1 -W1 {ip}", check=False).returncode != 0


@pytest.fixture
def lab06(tmp_path):
    yield from _started("06", tmp_path)


def test_lab06_the_router_knows_a_container_only_once_it_talked_to_it(lab06):
    """06/2 (corrected): after steps 1-2 the router's `ip neigh` and the switch's FDB hold no
    container yet (nothing talked to the router); once m1, m2 and m3 ping it, it lists one
    MAC per address, each Docker's 02:42 + the address, and the switch has learned them."""
    lab06.solve(lab06.labdef.step("on-the-wire"))
    lan = lab06.lab.netns_of("lan")
    assert "lladdr 02:42" not in sh(lan, "ip neigh").stdout
    assert "02:42" not in sh(lan, "bridge fdb show br sw0").stdout
    for m in ("m1", "m2", "m3"):
        assert reaches(lab06.lab.netns_of(m), "192.168.50.1"), m
    neigh = sh(lan, "ip neigh").stdout
    for ip, mac in (("192.168.50.128", "02:42:c0:a8:32:80"),
                    ("192.168.50.129", "02:42:c0:a8:32:81"),
                    ("192.168.50.160", "02:42:c0:a8:32:a0")):
        assert f"{ip} dev sw0 lladdr {mac}" in neigh, neigh
        assert mac in sh(lan, "bridge fdb show br sw0").stdout


def test_lab06_private_children_stay_apart_even_through_a_hairpinning_switch(spaces):
    """06/4: private children 'never [talk], not even through the LAN'. The switch port
    reflects frames (hairpin on, what vepa needs), yet private siblings stay apart: the kernel
    drops a sibling's broadcast (its ARP) coming back. Switched to vepa, the same wiring works,
    so the isolation is private mode's doing, not the switch's."""
    sw, h, a, b = spaces("sw", "h", "a", "b")
    sh(sw, f"ip link add sw0 type bridge; ip link set sw0 up; "
           f"ip link add p-h type veth peer name eth0 netns {h}; "
           f"ip link set p-h master sw0 up; bridge link set dev p-h hairpin on")
    sh(h, f"ip link set eth0 up; "
          f"ip link add m1 link eth0 type macvlan mode private; ip link set m1 netns {a}; "
          f"ip link add m2 link eth0 type macvlan mode private; ip link set m2 netns {b}")
    sh(a, "ip addr add 192.168.50.128/24 dev m1; ip link set m1 up")
    sh(b, "ip addr add 192.168.50.129/24 dev m2; ip link set m2 up")
    assert "hairpin on" in sh(sw, "bridge -d link show dev p-h").stdout
    assert silent(a, "192.168.50.129")
    sh(a, "ip link set m1 type macvlan mode vepa")
    sh(b, "ip link set m2 type macvlan mode vepa")
    assert reaches(a, "192.168.50.129")


def test_lab06_a_bridge_container_is_cut_off_from_its_hosts_macvlan_children(spaces):
    """06/3: a container routed by h1 (docker0's way) is cut off from m1 as h1 itself is: h1
    forwards it out of eth0, and what the parent sends never reaches its own children. Through
    a shim (with m1 answering via the shim) the same container gets through."""
    sw, h, m, c = spaces("sw", "h", "m", "c")
    sh(sw, f"ip link add sw0 type bridge; ip link set sw0 up; "
           f"ip link add p-h type veth peer name eth0 netns {h}; ip link set p-h master sw0 up")
    sh(h, f"ip addr add 192.168.50.11/24 dev eth0; ip link set eth0 up; "
          f"sysctl -qw net.ipv4.ip_forward=1; "
          f"ip link add m1 link eth0 type macvlan mode bridge; ip link set m1 netns {m}; "
          f"ip link add docker0 type veth peer name eth0 netns {c}; "
          f"ip addr add 172.17.0.1/16 dev docker0; ip link set docker0 up")
    sh(m, "ip link set m1 name eth0; ip addr add 192.168.50.128/24 dev eth0; "
          "ip link set eth0 up; ip route add 172.17.0.0/16 via 192.168.50.254")
    sh(c, "ip addr add 172.17.0.2/16 dev eth0; ip link set eth0 up; "
          "ip route add default via 172.17.0.1")
    assert silent(c, "192.168.50.128")
    assert "192.168.50.128 dev eth0" in sh(h, "ip route get 192.168.50.128").stdout
    sh(h, "ip link add shim link eth0 type macvlan mode bridge; "
          "ip addr add 192.168.50.254/32 dev shim; ip link set shim up; "
          "ip route add 192.168.50.128/27 dev shim")
    assert reaches(c, "192.168.50.128")


def _overlay_host(ns: str, me: str, c: str, cip: str) -> None:
    """One host of a two-host VXLAN overlay, as the lab builds it: vxlan0 (no learning, proxy,
    misses) on br0 with a container's veth; the kernel chooses vxlan0's MTU from eth0's."""
    sh(ns, f"ip addr add {me}/24 dev eth0; ip link set eth0 up; "
           f"ip link add vxlan0 type vxlan id 4096 dstport 4789 dev eth0 nolearning proxy "
           f"l2miss l3miss; ip link add br0 type bridge; ip link set vxlan0 master br0 up; "
           f"ip link add v-c type veth peer name eth0 netns {c}; ip link set v-c master br0 up; "
           f"ip link set br0 up")
    mac = "02:42:" + ":".join(f"{int(x):02x}" for x in cip.split("."))
    sh(c, f"ip link set eth0 address {mac}; ip addr add {cip}/24 dev eth0; ip link set eth0 up")


def _program_peer(ns: str, ip: str, vtep: str) -> None:
    mac = "02:42:" + ":".join(f"{int(x):02x}" for x in ip.split("."))
    sh(ns, f"ip neigh replace {ip} lladdr {mac} dev vxlan0 nud permanent; "
           f"bridge fdb replace {mac} dev vxlan0 dst {vtep} self permanent")


def test_lab08_vxlan_costs_50_bytes_and_the_bridge_drops_a_bigger_frame_silently(spaces):
    """08/5: on a 1500-byte LAN the kernel itself gives vxlan0 1450 (50 bytes of outer IPv4,
    UDP, VXLAN and inner Ethernet); with c1's eth0 at 1500, a DF ping of 1422 bytes crosses,
    1423 vanishes with no error to c1 (br0 drops what vxlan0 cannot take). 08/3: a PERMANENT
    neighbour plus an FDB entry per remote endpoint is all the data plane needs."""
    h1, h2, c1, c2 = spaces("h1", "h2", "c1", "c2")
    sh(h1, f"ip link add eth0 type veth peer name eth0 netns {h2}")
    _overlay_host(h1, "192.168.50.11", c1, "10.0.0.2")
    _overlay_host(h2, "192.168.50.12", c2, "10.0.0.3")
    assert "mtu 1500" in sh(h1, "ip link show eth0").stdout
    assert "mtu 1450" in sh(h1, "ip link show vxlan0").stdout  # the kernel's own arithmetic
    assert "mtu 1500" in sh(c1, "ip link show eth0").stdout  # the 'fixed' container MTU
    assert silent(c1, "10.0.0.3")  # no learning, no flooding: no peer, no path
    _program_peer(h1, "10.0.0.3", "192.168.50.12")
    _program_peer(h2, "10.0.0.2", "192.168.50.11")
    assert reaches(c1, "10.0.0.3")
    assert sh(c1, "ping -c1 -W2 -M do -s 1422 10.0.0.3", check=False).returncode == 0
    big = sh(c1, "ping -c1 -W1 -M do -s 1423 10.0.0.3", check=False)
    assert big.returncode != 0 and "100% packet loss" in big.stdout, big.stdout
    assert "too long" not in big.stdout + big.stderr and "Frag" not in big.stdout + big.stderr
    sh(c1, "ip link set eth0 mtu 1450")  # the step's fix: now the sender refuses locally
    refused = sh(c1, "ping -c1 -W1 -M do -s 1423 10.0.0.3", check=False)
    assert "too long" in (refused.stdout + refused.stderr).lower(), refused


def test_lab08_vxlan_asks_with_l3miss_then_l2miss(spaces, tmp_path):
    """08/2: with no neighbour entry, a container's ARP makes vxlan0 (proxy, l3miss) report
    `miss 10.0.0.3 dev vxlan0`; with the neighbour but no FDB entry, the frame makes it report
    an l2miss for the MAC. (A ping from the overlay namespace itself shows no l3miss: its own
    INCOMPLETE entry counts as a neighbour; the lab pings from c1, as here.)"""
    ov, c1 = spaces("ov", "c1")
    sh(ov, f"ip link add vxlan0 type vxlan id 4096 dstport 4789 nolearning proxy l2miss l3miss;"
           f" ip link add br0 type bridge; ip link set vxlan0 master br0 up; "
           f"ip link add v-c type veth peer name eth0 netns {c1}; ip link set v-c master br0 up;"
           f" ip link set br0 up")
    sh(c1, "ip addr add 10.0.0.2/24 dev eth0; ip link set eth0 up")
    log = tmp_path / "monitor"
    with open(log, "w") as out:
        mon = subprocess.Popen(["ip", "netns", "exec", ov, "ip", "monitor", "neigh"],
                               stdout=out, stderr=subprocess.STDOUT)
    try:
        def seen(text: str) -> bool:
            for _ in range(20):  # the monitor subscribes asynchronously: ask until it hears
                sh(c1, "ping -c1 -W1 10.0.0.3", check=False)
                if text in log.read_text():
                    return True
            return False

        assert seen("miss 10.0.0.3 dev vxlan0"), log.read_text()
        assert "lladdr 02:42:0a:00:00:03" not in log.read_text()
        sh(ov, "ip neigh replace 10.0.0.3 lladdr 02:42:0a:00:00:03 dev vxlan0 nud permanent")
        assert seen("miss dev vxlan0 lladdr 02:42:0a:00:00:03"), log.read_text()
    finally:
        mon.terminate()
        mon.wait(timeout=10)


def test_lab08_a_vxlan_moved_into_the_network_namespace_keeps_its_socket_on_the_host(spaces):
    """08/1: vxlan0 is created in the host's namespace and moved in; its UDP socket stays on
    the host, where the LAN is, while the device sits in the network's namespace."""
    h, ov = spaces("h", "ov")
    sh(h, f"ip link add vx-001000-ab123 type vxlan id 4096 dstport 4789 nolearning proxy; "
          f"ip link set vx-001000-ab123 netns {ov}")
    sh(ov, "ip link set vx-001000-ab123 name vxlan0; ip link set vxlan0 up")
    assert ":4789" in sh(h, "ss -Hulna").stdout
    assert ":4789" not in sh(ov, "ss -Hulna").stdout


@needs("ipvlan")
def test_lab07_ipvlan_children_wear_the_parents_mac_and_l3_children_do_no_arp(spaces):
    """07/2: an ipvlan child has no MAC of its own (it shows its parent's); 07/3: in l3 mode
    the children do no ARP (NOARP) and reach each other by `default dev eth0` alone, the
    parent routing between them; in l2 mode they ARP like any NIC."""
    h, a, b, c = spaces("h", "a", "b", "c")
    sh(h, f"ip link add eth0 type veth peer name lan0; ip link set eth0 up; ip link set lan0 up;"
          f" ip link add i1 link eth0 type ipvlan mode l3; ip link set i1 netns {a}; "
          f"ip link add i2 link eth0 type ipvlan mode l3; ip link set i2 netns {b}")
    parent = sh(h, "cat /sys/class/net/eth0/address").stdout.strip()
    for ns, dev, ip in ((a, "i1", "10.50.0.2"), (b, "i2", "10.50.0.3")):
        sh(ns, f"ip link set {dev} name eth0; ip addr add {ip}/24 dev eth0; ip link set eth0 up;"
               f" ip route add default dev eth0")
        assert sh(ns, "cat /sys/class/net/eth0/address").stdout.strip() == parent
        assert "NOARP" in sh(ns, "ip link show eth0").stdout
    assert reaches(a, "10.50.0.3")
    # l2 children ARP: no NOARP flag, and still the parent's MAC
    sh(h, f"ip link add eth1 type veth peer name lan1; ip link set eth1 up; "
          f"ip link add i3 link eth1 type ipvlan mode l2; ip link set i3 netns {c}")
    assert "NOARP" not in sh(c, "ip link show i3").stdout
    assert sh(c, "cat /sys/class/net/i3/address").stdout.strip() == \
        sh(h, "cat /sys/class/net/eth1/address").stdout.strip()


# ---- lab 10 (a real dockerd 20.10 in the lab's host) ----------------------------------------
def test_lab10_docker_keeps_a_network_the_driver_never_made_and_quotes_its_error(tmp_path):
    """10/1: 'Docker does not check': after CreateNetwork answered {} with nothing made (no
    pl- bridge in the host), `docker network ls` lists plug. 10/2: `docker run` on it fails
    and Docker's error carries the skeleton's own message from CreateEndpoint."""
    run = LabRun(labfile.get("10"), f"lab10-{PID}", Progress(str(tmp_path / "p.json")))
    try:
        run.start()
        run.solve("hello-docker")
        ns = run.lab.netns_of("host")
        env = shells.shell_env(run.name, "host", ns)

        def docker(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(["ip", "netns", "exec", ns, "docker", *args], env=env,
                                  capture_output=True, text=True, timeout=120)

        assert "pl-" not in sh(ns, "ip -br link").stdout
        assert "plug" in docker("network", "ls", "--format", "{{.Name}}").stdout.split()
        out = docker("run", "-d", "--name", "c1", "--network", "plug", "cnmlab/busybox",
                     "sleep", "86400")
        assert out.returncode != 0
        assert "CreateEndpoint: make a veth pair (lab 10, step 2)" in out.stderr, out.stderr
    finally:
        run.stop()
