"""The explicit driver registry (libnetwork's ``drivers_linux.go``): add new drivers here.

Lookup by name happens here and only here; what the controller does with a driver is decided
by its declared ``Capability``. ``register`` adds a plug-in or a test's deliberately broken
driver at run time, and ``known`` lists every name in an unknown-driver error, as
containerlab's node registry does. A name that is not registered is looked up as a plugin
(``cnmlab.plugin.discovery``), as libnetwork falls back to its remote driver.
"""
from __future__ import annotations

from cnmlab.driverapi import Capability, Driver
from cnmlab.drivers.bridge import BridgeDriver
from cnmlab.drivers.host import HostDriver
from cnmlab.drivers.ipvlan import IpvlanDriver
from cnmlab.drivers.macvlan import MacvlanDriver
from cnmlab.drivers.null import NullDriver
from cnmlab.drivers.overlay import OverlayDriver
from cnmlab.drivers.remote import RemoteDriver
from cnmlab.errors import InvalidInput
from cnmlab.plugin import discovery

BUILTIN: dict[str, type] = {"bridge": BridgeDriver, "host": HostDriver, "null": NullDriver,
                            "macvlan": MacvlanDriver, "ipvlan": IpvlanDriver,
                            "overlay": OverlayDriver}

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


def registered() -> list[str]:
    """The drivers cnmlab implements itself (no plugins)."""
    return sorted(_registry)


def local(name: str) -> Driver:
    """A driver cnmlab implements itself, never a plugin (what ``plugin serve --driver``
    serves: serving a plugin through itself would loop)."""
    if name not in _registry:
        raise InvalidInput(f"unknown built-in driver {name!r}: cnmlab implements "
                           f"{', '.join(registered())}")
    return _registry[name]()


def known() -> list[str]:
    return sorted(set(_registry) | set(discovery.installed()))


_remote: dict[tuple[str, str], RemoteDriver] = {}


def _remote_driver(name: str) -> RemoteDriver:
    path = discovery.find(name)
    if path is None:
        raise InvalidInput(f"unknown network driver {name!r}: known drivers are "
                           f"{', '.join(known())} (a plugin is found in "
                           f"{discovery.CNMLAB_PLUGINS} or Docker's plugin folders)")
    if (name, path) not in _remote:  # activation costs two calls: once per process
        _remote[(name, path)] = RemoteDriver(name, path)
    return _remote[(name, path)]


def get(name: str) -> Driver:
    if name in _registry:
        return _registry[name]()
    return _remote_driver(name)


def capability(name: str) -> Capability:
    """A driver's declared capability (a plugin's, from its GetCapabilities)."""
    if name in _registry:
        return _registry[name].capability
    return _remote_driver(name).capability
