"""What macvlan and ipvlan share: one child link of the network's parent per endpoint.

A child is a link stacked on the parent (no veth, no bridge): the kernel switches frames
between the parent and its children itself. Docker creates the child in Join, in the host
namespace, and moves it into the container. cnmlab creates it at endpoint creation and, when
the endpoint joins a sandbox at once (``docker run``), straight inside the sandbox's namespace
(``IFLA_NET_NS_FD`` in the same request), sparing the kernel a move; the parent is looked up
in the host namespace either way. The child is named ``veth`` + 7 hex characters in both
cases, as libnetwork names it, until the controller renames it ``eth<N>``.
"""
from __future__ import annotations

import os
from typing import TYPE_CHECKING

from cnmlab.kernel import netns
from cnmlab.driverapi import JoinInfo
from cnmlab.drivers import parent
from cnmlab.drivers.bridge import veth_name
from cnmlab.errors import CnmError, FeatureMissing, InvalidInput, ObjectNotFound

if TYPE_CHECKING:
    from cnmlab.driverapi import HostContext
    from cnmlab.model import Endpoint, Network, Sandbox

KEY_MODE = "mode"


class ChildDriver:
    """Base of the macvlan and ipvlan drivers; subclasses say how to make one child."""

    name: str
    rules: parent.ParentRules
    mode_option: str  # "macvlan_mode" / "ipvlan_mode"
    modes: tuple[str, ...]  # the first is the default

    def _invalid_mode(self, mode: str) -> str:
        raise NotImplementedError

    def _add_child(self, ctx: HostContext, net: Network, ep: Endpoint, name: str,
                   parent_link: str, ns_fd: int | None) -> None:
        raise NotImplementedError

    def _routes(self, net: Network) -> tuple[str | None, list[tuple[str, str | None]]]:
        """(gateway, static routes) the sandbox gets on join."""
        return (None if net.internal else net.gateway), []

    def _disable_gateway(self, net: Network) -> bool:
        return False

    # ---- networks ----------------------------------------------------------------------
    def create_network(self, ctx: HostContext, net: Network) -> None:
        mode = net.options.get(self.mode_option, "") or self.modes[0]
        if mode not in self.modes:
            raise InvalidInput(self._invalid_mode(mode))
        net.driver_data[KEY_MODE] = mode
        net.device = parent.setup(ctx, net, self.rules)

    def delete_network(self, ctx: HostContext, net: Network) -> None:
        parent.teardown(ctx, net)

    # ---- endpoints ---------------------------------------------------------------------
    def create_endpoint(self, ctx: HostContext, net: Network, ep: Endpoint) -> None:
        link = net.driver_data.get(parent.KEY_PARENT) or ""
        name = veth_name()
        sandbox_ns = ctx.joining.netns if ctx.joining else None
        fd = netns.open_fd(sandbox_ns) if sandbox_ns else None
        try:
            self._add_child(ctx, net, ep, name, link, fd)
        except (FeatureMissing, InvalidInput):
            raise
        except ObjectNotFound:  # the parent went away (no extra lookup on the happy path)
            raise InvalidInput(f"the requested parent interface {link} was not found on the "
                               f"Docker host {ctx.host.name}") from None
        except CnmError as e:
            raise CnmError(f"failed to create the {self.name} port: {parent._errno_text(e)}"
                           f" (parent {link} on host {ctx.host.name})") from None
        finally:
            if fd is not None:
                os.close(fd)
        if sandbox_ns:
            ep.driver_data["src_ns"] = sandbox_ns
        else:
            ctx.undo(lambda: ctx.nl.delete_link(name) if ctx.nl.has_link(name) else None)
        ep.driver_data["src"] = name

    def delete_endpoint(self, ctx: HostContext, net: Network, ep: Endpoint) -> None:
        src = ep.driver_data.get("src")
        if src and not ep.driver_data.get("src_ns") and ctx.nl.has_link(src):
            ctx.nl.delete_link(src)  # made but never joined: still in the host

    def join(self, ctx: HostContext, net: Network, ep: Endpoint, sb: Sandbox) -> JoinInfo:
        src = ep.driver_data.get("src")
        if not src or (not ep.driver_data.get("src_ns") and not ctx.nl.has_link(src)):
            raise ObjectNotFound(f"endpoint {ep.name}: its {self.name} link {src} is gone "
                                 f"from host {ctx.host.name}")
        gateway, routes = self._routes(net)
        return JoinInfo(src_name=src, dst_prefix="eth", gateway=gateway, static_routes=routes,
                        src_ns=ep.driver_data.get("src_ns"),
                        disable_gateway=self._disable_gateway(net))

    def leave(self, ctx: HostContext, net: Network, ep: Endpoint, sb: Sandbox) -> None:
        pass
