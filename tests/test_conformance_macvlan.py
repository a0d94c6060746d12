"""The macvlan and ipvlan conformance profiles: engine, real Docker 20.10, and broken setups.

``checks/profiles/macvlan.yaml`` is built by cnmlab's engine and by two real dockerd, each in
a host namespace on one underlay LAN; both must pass every check. Broken on purpose, it must
fail exactly the checks that name the breakage: private mode (siblings cut off), one MAC for
two addresses where macvlan gives each its own, ipvlan where macvlan is expected, and an ipvlan
l3 subnet the LAN's router has no route to (the last two in the full-kernel VM lane).
"""
from __future__ import annotations

import copy
import json
import os
import subprocess
import sys

import pytest

from cnmlab.checks import conformance, report
from cnmlab.checks.dockerd import missing_tools
from cnmlab.errors import InvalidInput

pytestmark = pytest.mark.kernel
PID = os.getpid()

if os.geteuid() != 0:
    pytest.skip("needs root", allow_module_level=True)


def _by_id(profile: conformance.Profile, results) -> dict[str, object]:
    return {c.id: r for c, r in zip(profile.checks, results)}


def _failed_ids(profile: conformance.Profile, results) -> set[str]:
    return {i for i, r in _by_id(profile, results).items() if not r.ok}


def _run_engine(profile: conformance.Profile, tag: str, tamper=None):
    from cnmlab.lab import Lab

    lab = Lab(f"cfm{tag}{PID}"[:32])
    try:
        target = conformance.build_engine(lab, profile)
        if tamper is not None:
            tamper(lab)
        return conformance.run_profile(target, profile)
    finally:
        lab.down()


def _text(results) -> str:
    return report.render_results(results, verbose=True)


# ---- the profiles as data ------------------------------------------------------------------

def test_profiles_load_with_hosts_underlay_and_per_host_ranges():
    p = conformance.load("macvlan")
    assert {"macvlan", "ipvlan", "bridge"} <= set(conformance.available())
    assert p.hosts == ["h1", "h2"] and p.underlay == conformance.UnderlaySpec(
        "lan", "192.168.50.0/24", [])
    assert p.network_hosts("lan", "h1") == ["h1", "h2"] and p.network_hosts("app", "h1") == ["h1"]
    assert p.ip_range("lan", "h2") == "192.168.50.160/27" and p.ip_range("app", "h1") is None
    assert {c: (x.network, x.host) for c, x in p.containers.items()} == {
        "m1": ("lan", "h1"), "m2": ("lan", "h1"), "m3": ("lan", "h2"), "b1": ("app", "h1")}
    kinds = {c.kind for c in p.checks}
    assert {"arp-macs", "arp-reply", "matrix", "isolated", "dns-absent"} <= kinds
    assert [c.id for c in p.checks if c.optional] == ["docker-mac"]
    q = conformance.load("ipvlan")
    assert q.underlay.routes == [("10.50.0.0/24", "h2")]
    assert "default-route i3 dev eth0" in [c.label for c in q.checks]


@pytest.mark.parametrize("text,message", [
    ("topology:\n  hosts: [h1]\n  networks: {n: {hosts: [h9]}}\n",
     "topology.networks.n.hosts: no host 'h9' in topology.hosts"),
    ("topology:\n  hosts: [h1]\n  networks: {n: {}}\n  containers:\n"
     "    c1: {network: n, host: h2}\n", "topology.containers.c1.host: no host 'h2'"),
    ("topology:\n  networks: {n: {colour: red}}\n",
     "topology.networks.n.colour: unknown field; known: driver, gateway, hosts"),
    ("topology:\n  underlay: {}\n", "topology.underlay: must be a mapping with subnet:"),
    ("topology:\n  racks: 2\n", "topology.racks: unknown field"),
])
def test_profile_errors_name_the_field(tmp_path, text, message):
    bad = tmp_path / "bad.yaml"
    bad.write_text(text)
    with pytest.raises(InvalidInput, match=message.replace(".", r"\.")):
        conformance.load(str(bad))


# ---- the engine ----------------------------------------------------------------------------

def test_engine_passes_the_macvlan_profile():
    p = conformance.load("macvlan")
    results = _run_engine(p, "ok")
    assert not _failed_ids(p, results), _text(results)
    assert not [r for r in results if r.skipped], _text(results)
    matrix = _by_id(p, results)["truth-table"]
    assert matrix.observed == "0 wrong, 12 correct"
    macs = _by_id(p, results)["distinct-macs"].observed
    assert "m1 (192.168.50.128) is-at 02:42:c0:a8:32:80" in macs


def test_conform_cli_engine_macvlan(tmp_path):
    out = tmp_path / "engine.json"
    cp = subprocess.run([sys.executable, "-m", "cnmlab.cli", "conform", "--target", "engine",
                         "--profile", "macvlan", "--json", str(out)],
                        capture_output=True, text=True, timeout=180)
    assert cp.returncode == 0, cp.stdout + cp.stderr
    assert "profile macvlan against cnmlab engine:" in cp.stdout
    assert "15 passed, 0 failed" in cp.stdout
    assert json.loads(out.read_text())["ok"]


# ---- broken setups are caught --------------------------------------------------------------

def test_private_mode_is_caught_as_siblings_cut_off():
    p = conformance.load("macvlan")
    broken = copy.deepcopy(p)
    broken.networks["lan"]["options"]["macvlan_mode"] = "private"
    results = _run_engine(broken, "pv")
    assert _failed_ids(p, results) == {"same-host-reach", "same-host-reach-back",
                                       "truth-table"}, _text(results)
    matrix = _by_id(p, results)["truth-table"]
    assert set(matrix.table.wrong) == {("m1", "m2"), ("m2", "m1")}
    hint = _by_id(p, results)["same-host-reach"].reason
    assert "stacked on eth0 in mode private" in hint and "FORWARD" not in hint


def test_one_mac_for_two_addresses_is_caught():
    """The host's NIC given m2's MAC: two addresses, one MAC on the wire (as proxy ARP or
    ipvlan would show); the distinct-MAC check names them."""
    p = conformance.load("macvlan")

    def clone_mac(lab):
        h1 = lab.host("h1")
        assert h1.exec(["ip", "link", "set", "eth0", "address", "02:42:c0:a8:32:81"]
                       ).returncode == 0

    results = _run_engine(p, "mac", clone_mac)
    # and the duplicate bites: replies to h1's address now go to m2 (the macvlan port owns
    # that MAC), so b1, masqueraded as h1, no longer hears back from m3
    assert _failed_ids(p, results) == {"distinct-macs", "truth-table"}, _text(results)
    r = _by_id(p, results)["distinct-macs"]
    assert "m2, host:h1 answer with the same MAC 02:42:c0:a8:32:81" in r.reason
    assert _by_id(p, results)["truth-table"].table.wrong == [("b1", "m3")]


@pytest.mark.needs("ipvlan")
def test_ipvlan_where_macvlan_is_expected_is_caught():
    p = conformance.load("macvlan")
    broken = copy.deepcopy(p)
    broken.networks["lan"]["driver"] = "ipvlan"
    results = _run_engine(broken, "ipv")
    failed = _failed_ids(p, results)
    assert "distinct-macs" in failed, _text(results)
    assert "shared" not in _by_id(p, results)["distinct-macs"].reason
    assert "the same MAC" in _by_id(p, results)["distinct-macs"].reason


@pytest.mark.needs("ipvlan")
def test_engine_passes_the_ipvlan_profile():
    p = conformance.load("ipvlan")
    results = _run_engine(p, "ipok")
    assert not _failed_ids(p, results), _text(results)


@pytest.mark.needs("ipvlan")
def test_a_missing_l3_route_is_caught():
    p = conformance.load("ipvlan")
    broken = copy.deepcopy(p)
    broken.underlay.routes = []
    results = _run_engine(broken, "ipnr")
    assert _failed_ids(p, results) == {"l3-from-the-lan", "l3-to-l2-across-hosts",
                                       "l3-egress"}, _text(results)


# ---- real Docker 20.10: two daemons on one LAN ---------------------------------------------

_missing = missing_tools()


@pytest.mark.docker
@pytest.mark.skipif(bool(_missing), reason=f"real Docker not installed: missing "
                                           f"{', '.join(_missing)}")
def test_docker_passes_the_macvlan_profile(tmp_path):
    out = tmp_path / "docker.json"
    cp = subprocess.run([sys.executable, "-m", "cnmlab.cli", "conform", "--target", "docker",
                         "--profile", "macvlan", "--json", str(out)],
                        capture_output=True, text=True, timeout=300)
    assert cp.returncode == 0, cp.stdout + cp.stderr
    assert "profile macvlan against docker 20.10" in cp.stdout
    assert "(2 daemons: h1, h2)" in cp.stdout and "15 passed, 0 failed" in cp.stdout
    sheet = json.loads(out.read_text())
    rows = {r["check"]: r for r in sheet["rows"]}
    assert "02:42:c0:a8:32:80" in rows["arp-reply m3 who-has m1 is-at docker"]["observed"]
