"""The controller acts on a driver's declared capabilities, never on its name.

A new driver made by copying the smallest one (null) and declaring capabilities gets Docker's
gateway, embedded DNS, firewall, published-port and single-instance behaviour from the
declaration alone; the same driver declaring none gets none of it. Checked on real kernel
objects, plus a source scan that no code outside ``cnmlab/drivers/`` compares a driver's name.
"""
from __future__ import annotations

import ast
import ipaddress
from pathlib import Path

import pytest

from cnmlab import drivers
from cnmlab.checks.probes import dns_query
from cnmlab.driverapi import LOCAL, Capability, HostContext, JoinInfo
from cnmlab.drivers.bridge import veth_name
from cnmlab.errors import CnmError, FeatureMissing, InvalidInput
from cnmlab.inspection import routes
from cnmlab.kernel import features
from cnmlab.model import Endpoint, Network, Sandbox

ROOT = Path(__file__).resolve().parent.parent


class CopyCat:
    """drivers/null.py, copied, plus the least a driver with an interface needs: a bridge per
    network holding the gateway and a veth per endpoint. Its capability is set per test."""

    name = "copycat"
    capability = Capability(data_scope=LOCAL, connectivity_scope=LOCAL)

    def create_network(self, ctx: HostContext, net: Network) -> None:
        net.device = f"cc-{net.id[:8]}"
        ctx.nl.add_bridge(net.device)
        ctx.undo(lambda: ctx.nl.delete_link(net.device or ""))
        prefix = ipaddress.IPv4Network(net.subnet or "").prefixlen
        ctx.nl.add_address(net.device, f"{net.gateway}/{prefix}")
        ctx.nl.set_link(net.device, up=True)

    def delete_network(self, ctx: HostContext, net: Network) -> None:
        ctx.nl.delete_link(net.device or "")

    def create_endpoint(self, ctx: HostContext, net: Network, ep: Endpoint) -> None:
        ep.host_ifname, ep.driver_data["src"] = veth_name(), veth_name()
        ctx.nl.add_veth(ep.host_ifname, ep.driver_data["src"], master=net.device, up=True)
        ctx.undo(lambda: ctx.nl.delete_link(ep.host_ifname or ""))

    def delete_endpoint(self, ctx: HostContext, net: Network, ep: Endpoint) -> None:
        if ep.host_ifname and ctx.nl.has_link(ep.host_ifname):
            ctx.nl.delete_link(ep.host_ifname)

    def join(self, ctx: HostContext, net: Network, ep: Endpoint, sb: Sandbox) -> JoinInfo:
        return JoinInfo(src_name=ep.driver_data["src"])  # no gateway: the controller decides

    def leave(self, ctx: HostContext, net: Network, ep: Endpoint, sb: Sandbox) -> None:
        pass


def _register(**declared: object) -> None:
    cap = Capability(data_scope=LOCAL, connectivity_scope=LOCAL, **declared)  # type: ignore[arg-type]
    drivers.register("copycat", type("CopyCatDriver", (CopyCat,), {"capability": cap}))


@pytest.fixture
def copycat():
    yield _register
    drivers.unregister("copycat")


@pytest.mark.kernel
def test_copied_driver_gets_gateway_dns_and_firewall_from_its_capability(lab, copycat):
    copycat(gateway=True, embedded_dns=True, firewall=True)
    host = lab.add_host("h1")
    net = host.network_create("cats", "copycat", subnet="10.77.0.0/24")
    a = host.run("a1", "cats", publish=["8080:80"])
    host.run("b1", "cats")
    assert {"dst": "default", "gateway": "10.77.0.1", "dev": "eth0",
            "scope": "global"} in routes(a.netns)
    with open(f"/etc/netns/{a.netns}/resolv.conf") as f:
        assert "nameserver 127.0.0.11" in f.read()
    assert dns_query(a.netns, "b1", "127.0.0.11", timeout=2) == ["10.77.0.3"]
    rules = host.iptables()
    assert f"-A POSTROUTING -s 10.77.0.0/24 ! -o {net.device} -j MASQUERADE" in rules
    assert f"-A DOCKER-ISOLATION-STAGE-2 -o {net.device} -j DROP" in rules
    # published ports need ExternalConnectivity, which copycat does not have: Docker ignores -p
    assert a.endpoints()[0][1].ports == [] and "DNAT" not in rules


@pytest.mark.kernel
def test_copied_driver_without_capabilities_gets_none_of_it(lab, copycat):
    copycat()
    host = lab.add_host("h1", default_bridge=False)
    net = host.network_create("cats", "copycat", subnet="10.77.0.0/24")
    a = host.run("a1", "cats")
    assert not [r for r in routes(a.netns) if r["dst"] == "default"]
    with open(f"/etc/netns/{a.netns}/resolv.conf") as f:
        assert "127.0.0.11" not in f.read()
    assert net.device not in host.iptables()


@pytest.mark.kernel
def test_single_instance_and_kernel_features_come_from_the_capability(lab, copycat):
    copycat(single_instance=True)
    host = lab.add_host("h1", default_bridge=False)
    with pytest.raises(InvalidInput, match='only one instance of "copycat" network'):
        host.network_create("cats", "copycat")
    missing = next((f for f, ok in features.probe_all().items() if not ok), None)
    if missing is None:  # a full kernel: declare a feature no kernel has
        features.DESCRIPTIONS.setdefault("no-such-feature", "a feature no kernel has")
        missing = "no-such-feature"
    copycat(kernel_features=(missing,))
    with pytest.raises(FeatureMissing) as err:
        host.network_create("cats", "copycat")
    msg = str(err.value)
    assert "\n" not in msg and missing in msg and "cnmlab vm" in msg
    assert "cats" not in host.networks()  # nothing half-made


class _FailingDelete(CopyCat):
    """Its delete registers an undo and then fails: the undo must run (inside the transaction)."""

    undone: list[str] = []

    def delete_network(self, ctx: HostContext, net: Network) -> None:
        ctx.undo(lambda: self.undone.append(net.name))
        raise CnmError("deliberate failure while deleting")


@pytest.mark.kernel
def test_deletes_run_inside_the_transaction(lab):
    drivers.register("failing", type("F", (_FailingDelete,), {
        "capability": Capability(data_scope=LOCAL, connectivity_scope=LOCAL)}))
    try:
        host = lab.add_host("h1", default_bridge=False)
        host.network_create("doomed", "failing", subnet="10.78.0.0/24")
        with pytest.raises(CnmError, match="deliberate"):
            host.network_rm("doomed")
        assert _FailingDelete.undone == ["doomed"]
        assert "doomed" in host.networks()  # the model is as it was
    finally:
        drivers.unregister("failing")  # the bridge goes with the lab's namespaces


# ---- no driver-name comparisons outside the drivers package -------------------------------
def _mentions_driver(node: ast.AST) -> bool:
    for sub in ast.walk(node):
        if isinstance(sub, ast.Attribute) and sub.attr == "driver":
            return True
        if isinstance(sub, ast.Name) and sub.id in ("driver", "drv", "driver_name"):
            return True
        if (isinstance(sub, ast.Attribute) and sub.attr == "name"
                and isinstance(sub.value, ast.Name) and sub.value.id in ("drv", "driver")):
            return True
    return False


def driver_name_comparisons(root: Path) -> list[str]:
    """file:line of every comparison with a driver's name outside cnmlab/drivers/."""
    found = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root).as_posix()
        if rel.startswith(("cnmlab/drivers/", ".venv", "tests/", "bench/")) or "/." in rel:
            continue
        tree = ast.parse(path.read_text(), filename=rel)
        for node in ast.walk(tree):
            if isinstance(node, ast.Compare) and any(
                    _mentions_driver(side) for side in [node.left, *node.comparators]):
                found.append(f"{rel}:{node.lineno}")
    return found


def test_no_driver_name_comparison_outside_the_drivers_package():
    assert driver_name_comparisons(ROOT) == []


def test_the_scan_catches_a_driver_name_comparison(tmp_path):
    (tmp_path / "cnmlab").mkdir()
    (tmp_path / "cnmlab" / "sneaky.py").write_text(
        "def f(net):\n    return net.driver == 'bridge'\n")
    (tmp_path / "cnmlab" / "drivers").mkdir()
    (tmp_path / "cnmlab" / "drivers" / "ok.py").write_text("x = net.driver == 'bridge'\n")
    assert driver_name_comparisons(tmp_path) == ["cnmlab/sneaky.py:2"]


def test_registry_lists_known_drivers_on_an_unknown_name():
    with pytest.raises(InvalidInput, match="unknown network driver 'bridgy': known drivers are "
                                           "(.*, )?bridge, (.*, )?host, (.*, )?null, (.*, )?overlay"):
        drivers.get("bridgy")


def test_capabilities_of_the_builtin_drivers_follow_docker():
    bridge, host, null = (drivers.capability(n) for n in ("bridge", "host", "null"))
    assert (bridge.data_scope, bridge.connectivity_scope) == ("local", "local")
    assert bridge.gateway and bridge.embedded_dns and bridge.firewall
    assert host.single_instance and not host.own_namespace and not host.needs_ipam
    assert null.single_instance and null.connectivity_scope is None
    for name in ("macvlan", "ipvlan"):  # libnetwork: local data scope, global connectivity
        cap = drivers.capability(name)
        assert (cap.data_scope, cap.connectivity_scope) == ("local", "global")
        assert cap.gateway and cap.embedded_dns and not cap.firewall
        assert cap.kernel_features == (name,) and not cap.single_instance
