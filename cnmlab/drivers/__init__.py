"""The explicit driver registry (libnetwork's ``drivers_linux.go``): add new drivers here.

Lookup by name happens here and only here; what the controller does with a driver is decided
by its declared ``Capability``. ``register`` adds a plug-in or a test's deliberately broken
driver at run time, and ``known`` lists every name in an unknown-driver error, as
containerlab's node registry does.
"""
from __future__ import annotations

from cnmlab.driverapi import Capability, Driver
from cnmlab.drivers.bridge import BridgeDriver
from cnmlab.drivers.host import HostDriver
from cnmlab.drivers.null import NullDriver
from cnmlab.errors import InvalidInput

BUILTIN: dict[str, type] = {"bridge": BridgeDriver, "host": HostDriver, "null": NullDriver}

_registry: dict[str, type] = dict(BUILTIN)


def register(name: str, factory: type) -> None:
    """Add a driver under ``name`` (a plug-in, or a test's own)."""
    _registry[name] = factory


def unregister(name: str) -> None:
    """Remove a driver added with ``register``; built-in drivers come back as they were."""
    if name in BUILTIN:
        _registry[name] = BUILTIN[name]
    else:
        _registry.pop(name, None)


def known() -> list[str]:
    return sorted(_registry)


def _factory(name: str) -> type:
    try:
        return _registry[name]
    except KeyError:
        raise InvalidInput(f"unknown network driver {name!r}: known drivers are "
                           f"{', '.join(known())}") from None


def get(name: str) -> Driver:
    return _factory(name)()


def capability(name: str) -> Capability:
    """A driver's declared capability, without making an instance."""
    return _factory(name).capability
