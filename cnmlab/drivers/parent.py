"""The parent link of a macvlan or ipvlan network: found, or made (802.1Q or dummy), and owned.

macvlan and ipvlan hang their children off one existing link of the host (``-o parent=eth0``),
and libnetwork's two drivers share the same rules (``macvlan_network.go``/``macvlan_setup.go``,
``ipvlan_*`` alike, Docker 20.10), kept here once:

* no parent (or ``--internal``): a dummy link ``dm-<id12>`` (macvlan) / ``di-<id12>`` (ipvlan)
  is made and the network is internal, since nothing can leave through a dummy;
* a parent that does not exist and is named ``name.vid``: an 802.1Q sub-interface of ``name``
  is made (a trunk port), and deleted with the network, but only because cnmlab made it;
* one network per parent per driver (20.10: "network dm-... is already using parent
  interface eth0"; newer Docker lets non-passthru networks share a parent);
* errors use Docker's words, so a learner can search for them.

Missing kernel features (dummy, 802.1Q) are one-line ``FeatureMissing`` errors that name the
feature, checked before the kernel is asked.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from cnmlab.kernel import features
from cnmlab.errors import CnmError, InvalidInput, ObjectExists

if TYPE_CHECKING:
    from cnmlab.driverapi import HostContext
    from cnmlab.model import Network

OPT_PARENT = "parent"
KEY_PARENT = "parent"  # Network.driver_data keys
KEY_CREATED = "created_parent"  # "vlan", "dummy" or absent: what cnmlab made for the network


@dataclass(frozen=True)
class ParentRules:
    """What differs between macvlan and ipvlan: the driver's name and its dummy's prefix."""

    driver: str  # "macvlan" / "ipvlan"
    dummy_prefix: str  # "dm-" / "di-"

    def dummy_name(self, net_id: str) -> str:
        return f"{self.dummy_prefix}{net_id[:12]}"


def setup(ctx: HostContext, net: Network, rules: ParentRules) -> str:
    """Resolve (and if needed make) the network's parent; record it in ``net.driver_data``."""
    parent = net.options.get(OPT_PARENT, "")
    if parent == "lo":
        raise InvalidInput(f"loopback interface is not a valid {rules.driver} parent link")
    if net.internal or not parent:
        # Docker: an empty -o parent= and --internal are handled the same
        parent = rules.dummy_name(net.id)
        net.internal = True
    for other in ctx.host.networks.values():
        if other.driver == rules.driver and other.driver_data.get(KEY_PARENT) == parent:
            raise ObjectExists(f"network {rules.dummy_name(other.id)} is already using parent "
                               f"interface {parent}")
    net.driver_data[KEY_PARENT] = parent
    if ctx.nl.has_link(parent):
        return parent
    if net.internal:
        _make_dummy(ctx, parent, rules)
        net.driver_data[KEY_CREATED] = "dummy"
    else:
        _make_vlan(ctx, parent)
        net.driver_data[KEY_CREATED] = "vlan"
    ctx.nl.set_link(parent, up=True)
    return parent


def _make_dummy(ctx: HostContext, name: str, rules: ParentRules) -> None:
    features.require(["dummy"], f"a {rules.driver} network without -o parent (or --internal)")
    ctx.nl.add_link(name, "dummy")
    ctx.undo(lambda: ctx.nl.delete_link(name) if ctx.nl.has_link(name) else None)


def _make_vlan(ctx: HostContext, name: str) -> None:
    if "." not in name:
        raise InvalidInput(f"invalid subinterface vlan name {name}, example formatting is "
                           f"eth0.10")
    parts = name.split(".")
    if len(parts) != 2:
        raise InvalidInput(f"required interface name format is: name.vlan_id, ex. eth0.10 for "
                           f"vlan 10, instead received {name}")
    base, vid_text = parts
    try:
        vid = int(vid_text)
    except ValueError:
        raise InvalidInput(f"unable to parse a valid vlan id from: {vid_text} (ex. eth0.10 for "
                           f"vlan 10)") from None
    if not ctx.nl.has_link(base):
        raise InvalidInput(f"-o parent interface does was not found on the host: {base}")
    if not 1 <= vid <= 4094:
        raise InvalidInput(f"vlan id must be between 1-4094, received: {vid}")
    features.require(["vlan"], f"-o parent={name} (a VLAN trunk)")
    try:
        ctx.nl.add_vlan(name, base, vid)
    except CnmError as e:
        raise CnmError(f"failed to create {name} vlan link: {_errno_text(e)}") from None
    ctx.undo(lambda: ctx.nl.delete_link(name) if ctx.nl.has_link(name) else None)


def teardown(ctx: HostContext, net: Network) -> None:
    """Delete the parent only if cnmlab made it for this network (as Docker's DeleteNetwork)."""
    parent = net.driver_data.get(KEY_PARENT)
    if parent and net.driver_data.get(KEY_CREATED) and ctx.nl.has_link(parent):
        ctx.nl.delete_link(parent)


def _errno_text(e: CnmError) -> str:
    """The kernel's words at the end of a netlink error ("...: Operation not supported")."""
    text = str(e)
    return text.rsplit(": ", 1)[-1] if ": " in text else text
