"""The macvlan driver: containers as first-class citizens of the host's LAN.

Each endpoint is a macvlan child of the parent link with a MAC of its own (``02:42`` + the
IPv4 address bytes, as libnetwork's ``GenerateMACFromIP``, unless ``--mac-address`` gives one),
so on the wire every container is one more machine on the LAN: it answers ARP itself, and the
LAN's router, not the Docker host, is its gateway. There is no bridge, no iptables rule and no
port publishing (Docker accepts ``-p`` on macvlan and ignores it).

Modes (``-o macvlan_mode=``): ``bridge`` (default: children talk to each other inside the
kernel), ``private`` (children never talk to each other, not even via the LAN), ``vepa``
(child-to-child goes out to the switch, which must hairpin it back), ``passthru`` (one child
owns the parent). The kernel never delivers the host's own frames from the parent to its
children: the host cannot reach its macvlan containers without a macvlan "shim" of its own.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from cnmlab.driverapi import GLOBAL, LOCAL, Capability
from cnmlab.drivers import parent
from cnmlab.drivers.bridge import docker_mac
from cnmlab.drivers.child import KEY_MODE, ChildDriver

if TYPE_CHECKING:
    from cnmlab.driverapi import HostContext
    from cnmlab.model import Endpoint, Network

MODES = ("bridge", "private", "vepa", "passthru")


class MacvlanDriver(ChildDriver):
    name = "macvlan"
    capability = Capability(data_scope=LOCAL, connectivity_scope=GLOBAL,
                            kernel_features=("macvlan",), gateway=True, embedded_dns=True,
                            firewall=False)
    rules = parent.ParentRules("macvlan", "dm-")
    mode_option = "macvlan_mode"
    modes = MODES

    def _invalid_mode(self, mode: str) -> str:
        return f"requested macvlan mode '{mode}' is not valid, 'bridge' mode is the macvlan " \
               f"driver default"

    def _add_child(self, ctx: HostContext, net: Network, ep: Endpoint, name: str,
                   parent_link: str, ns_fd: int | None) -> None:
        mode = net.driver_data[KEY_MODE]
        if mode == "passthru":
            ep.mac = None  # the one passthru child takes over its parent and the parent's MAC
        elif ep.ip and not ep.mac:
            ep.mac = docker_mac(ep.ip)
        ctx.nl.add_macvlan(name, parent_link, mode, ns_fd=ns_fd, mac=ep.mac)
