"""The null driver: a sandbox with its own namespace and only ``lo`` (``--network none``).

The smallest complete driver, as libnetwork's ``drivers/null/null.go``: every call succeeds and
makes nothing, because a ``none`` sandbox has no endpoint interface at all.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from cnmlab.driverapi import LOCAL, Capability, HostContext, JoinInfo

if TYPE_CHECKING:
    from cnmlab.model import Endpoint, Network, Sandbox


class NullDriver:
    name = "null"
    capability = Capability(data_scope=LOCAL, connectivity_scope=None, needs_ipam=False,
                            single_instance=True)

    def create_network(self, ctx: HostContext, net: Network) -> None:
        pass

    def delete_network(self, ctx: HostContext, net: Network) -> None:
        pass

    def create_endpoint(self, ctx: HostContext, net: Network, ep: Endpoint) -> None:
        pass

    def delete_endpoint(self, ctx: HostContext, net: Network, ep: Endpoint) -> None:
        pass

    def join(self, ctx: HostContext, net: Network, ep: Endpoint, sb: Sandbox) -> JoinInfo:
        return JoinInfo()

    def leave(self, ctx: HostContext, net: Network, ep: Endpoint, sb: Sandbox) -> None:
        pass
