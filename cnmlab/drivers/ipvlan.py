"""The ipvlan driver: children that share their parent's MAC and differ only by IP.

Every endpoint is an ipvlan child of the parent link; all of them answer ARP with the
parent's MAC, so a switch with port security (one MAC per port) or a DHCP server keyed by MAC
sees one machine. Docker refuses ``--mac-address`` here.

Modes (``-o ipvlan_mode=``): ``l2`` (default: the children are on the parent's LAN, gateway
the LAN's router), ``l3`` (the parent routes for its children: no ARP from them, no gateway,
the sandbox's route is ``default dev eth0``, and the rest of the network needs a route to the
subnet via this host), ``l3s`` (l3 through the host's netfilter). Docker 20.10 knows l2 and
l3; l3s came later.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from cnmlab.driverapi import GLOBAL, LOCAL, Capability
from cnmlab.drivers import parent
from cnmlab.drivers.child import KEY_MODE, ChildDriver
from cnmlab.errors import InvalidInput

if TYPE_CHECKING:
    from cnmlab.driverapi import HostContext
    from cnmlab.model import Endpoint, Network

MODES = ("l2", "l3", "l3s")
KERNEL_MODE = {"l2": 0, "l3": 1, "l3s": 2}  # IPVLAN_MODE_L2, _L3, _L3S


class IpvlanDriver(ChildDriver):
    name = "ipvlan"
    capability = Capability(data_scope=LOCAL, connectivity_scope=GLOBAL,
                            kernel_features=("ipvlan",), gateway=True, embedded_dns=True,
                            firewall=False)
    rules = parent.ParentRules("ipvlan", "di-")
    mode_option = "ipvlan_mode"
    modes = MODES

    def _invalid_mode(self, mode: str) -> str:
        return f"requested ipvlan mode '{mode}' is not valid, 'l2' mode is the ipvlan driver " \
               f"default"

    def create_endpoint(self, ctx: HostContext, net: Network, ep: Endpoint) -> None:
        if ep.mac:
            raise InvalidInput("ipvlan interfaces do not support custom mac address assigment")
        super().create_endpoint(ctx, net, ep)

    def _add_child(self, ctx: HostContext, net: Network, ep: Endpoint, name: str,
                   parent_link: str, ns_fd: int | None) -> None:
        ctx.nl.add_ipvlan(name, parent_link, KERNEL_MODE[net.driver_data[KEY_MODE]],
                          ns_fd=ns_fd)

    def _routes(self, net: Network) -> tuple[str | None, list[tuple[str, str | None]]]:
        if net.driver_data.get(KEY_MODE) in ("l3", "l3s"):
            return None, [("default", None)]  # with DisableGatewayService: `default dev eth0`
        return super()._routes(net)

    def _disable_gateway(self, net: Network) -> bool:
        return net.driver_data.get(KEY_MODE) in ("l3", "l3s")
