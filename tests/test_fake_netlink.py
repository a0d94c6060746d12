"""A driver's logic against the fake netlink (no root), and the fake held to the real kernel.

The unit tests run the bridge driver's calls on ``cnmlab.testing.FakeNetlink``; the parity
test runs the very same sequence on the real facade in a throwaway namespace and requires both
to report the same links, masters, MACs and addresses, so the fake cannot drift.
"""
from __future__ import annotations

import os
import uuid

import pytest

from cnmlab.driverapi import HostContext
from cnmlab.drivers.bridge import BridgeDriver
from cnmlab.errors import CnmError, InvalidInput, ObjectExists
from cnmlab.kernel import netns
from cnmlab.kernel.netlink import Netlink
from cnmlab.model import Endpoint, Host, Network
from cnmlab.testing import FakeKernel, FakeNetlink, fake_context


def _network() -> Network:
    return Network(id="ab" * 32, name="app", driver="bridge", subnet="172.18.0.0/16",
                   gateway="172.18.0.1")


def _build(ctx: HostContext) -> tuple[Network, Endpoint]:
    net = _network()
    drv = BridgeDriver()
    drv.create_network(ctx, net)
    ep = Endpoint(id="e1", name="web", network="app", ip="172.18.0.2/16")
    drv.create_endpoint(ctx, net, ep)
    return net, ep


def _summary(nl) -> dict[str, tuple]:
    """Links by role (veth names are random): kind, master, MAC when it is Docker's, addresses."""
    out = {}
    for link in nl.links():
        if link.name == "lo":
            continue
        role = link.name if not link.name.startswith("veth") else (
            "veth-host" if link.master else "veth-container")
        mac = link.mac if link.mac.startswith("02:42") else None
        if link.kind == "bridge" and mac:
            mac = "02:42 random"  # libnetwork gives bridges a random 02:42 MAC
        out[role] = (link.kind, link.master, mac, sorted(link.addresses))
    return out


EXPECTED = {"br-abababababab": ("bridge", None, "02:42 random", ["172.18.0.1/16"]),
            "veth-host": ("veth", "br-abababababab", None, []),
            "veth-container": ("veth", None, "02:42:ac:12:00:02", [])}


def test_bridge_driver_on_the_fake_kernel():
    ctx = fake_context()
    net, ep = _build(ctx)
    assert net.device == "br-abababababab" and ep.mac == "02:42:ac:12:00:02"
    assert _summary(ctx.nl) == EXPECTED
    BridgeDriver().delete_endpoint(ctx, net, ep)
    assert set(_summary(ctx.nl)) == {"br-abababababab"}  # one veth end took the other along
    BridgeDriver().delete_network(ctx, net)
    assert _summary(ctx.nl) == {}


def test_bridge_driver_refuses_an_existing_device_and_undo_removes_what_it_made():
    kernel = FakeKernel()
    ctx = fake_context(kernel=kernel)
    _build(ctx)
    again = fake_context(kernel=kernel)
    with pytest.raises(InvalidInput, match="bridge device br-abababababab already exists"):
        BridgeDriver().create_network(again, _network())
    third = fake_context(kernel=FakeKernel())
    net = _network()
    net.options["com.docker.network.bridge.name"] = "mybr"
    BridgeDriver().create_network(third, net)
    for action in reversed(third._undo):
        action()
    assert not third.nl.has_link("mybr")


def test_fake_keeps_the_kernel_rules_drivers_rely_on():
    nl = FakeNetlink(FakeKernel())
    with pytest.raises(CnmError, match="Invalid argument"):
        nl.add_bridge("a-name-longer-than-15")
    nl.add_bridge("br0")
    with pytest.raises(ObjectExists):
        nl.add_bridge("br0")
    with pytest.raises(CnmError, match="not found"):
        nl.add_veth("v0", "v1", master="nobr")
    nl.add_veth("v0", "v1", peer_ns="sandbox")
    assert not nl.has_link("v1") and FakeNetlink(nl.kernel, "sandbox").has_link("v1")
    FakeNetlink(nl.kernel, "sandbox").set_link("v1", rename="eth0")
    nl.delete_link("v0")
    assert not FakeNetlink(nl.kernel, "sandbox").has_link("eth0")


@pytest.mark.kernel
def test_the_fake_reports_what_the_real_kernel_reports():
    if os.geteuid() != 0:
        pytest.skip("needs root")
    ns = f"cnmt-fake{os.getpid()}{uuid.uuid4().hex[:4]}"
    netns.create(ns)
    try:
        with Netlink(ns) as nl:
            ctx = HostContext(Host(name="h1", netns=ns, public_ip=None), nl)
            _build(ctx)
            real = _summary(nl)
    finally:
        netns.delete(ns)
    fake = fake_context()
    _build(fake)
    assert real == _summary(fake.nl) == EXPECTED
