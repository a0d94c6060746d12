"""The host driver: the sandbox *is* the host's namespace; no IPAM, no interface, no ports.

Like null it makes nothing; the difference is in its capability: the controller does not give
the sandbox a namespace of its own, so the container sees the host's interfaces and routes.
"""
from __future__ import annotations

from cnmlab.driverapi import LOCAL, Capability
from cnmlab.drivers.null import NullDriver


class HostDriver(NullDriver):
    name = "host"
    capability = Capability(data_scope=LOCAL, connectivity_scope=LOCAL, needs_ipam=False,
                            own_namespace=False, single_instance=True)
