"""``cnmlab conform --target plugin:SPEC``: a profile through a driver served as a plugin.

SPEC is ``FILE.py:CLASS`` (a third-party driver written with ``cnmlab.plugin.sdk``) or the
name of one of cnmlab's own drivers (``plugin:bridge``: cnmlab's bridge driver behind the
remote API, ``cnmlab.plugin.adapter``). The profile's networks are made by cnmlab's engine with
the plugin as their driver, the way Docker would use it; the plugin is served for the run,
building in the lab's host namespace (where a driver must build), and its call log is kept
next to the results.
"""
from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

from cnmlab.checks import conformance
from cnmlab.lab import Lab
from cnmlab.plugin import discovery
from cnmlab.plugin.adapter import builtin_plugin
from cnmlab.plugin.cli import load_class
from cnmlab.plugin.sdk import Plugin, PluginServer


def plugin_factory(spec: str) -> tuple[str, Callable[[str], Plugin]]:
    """(a description, host namespace -> plugin) for ``FILE.py:CLASS`` or a driver name."""
    if ":" not in spec:
        builtin_plugin(spec, "unused")  # refuses, in one line, a driver it cannot serve
        return (f"cnmlab's {spec} driver as a plugin",
                lambda ns: builtin_plugin(spec, ns, f"cnmlab-{spec}"))
    cls = load_class(spec)
    return f"plugin {cls.__name__} ({spec})", cls


def conform_plugin(profile: Any, spec: str) -> tuple[str, list[Any], dict[str, float]]:
    what, factory = plugin_factory(spec)
    name = f"conformplugin{os.getpid()}"
    servers: list[PluginServer] = []

    def serve(host: Any) -> None:
        servers.append(PluginServer(factory(host.netns), discovery.socket_path(name)).start())

    t0 = time.monotonic()
    lab = Lab(f"conform{os.getpid()}")
    try:
        target = conformance.build_engine(lab, profile, driver=name, before=serve)
        t1 = time.monotonic()
        results = conformance.run_profile(target, profile)
    finally:
        lab.down()
        for srv in servers:
            srv.close()
    return (f"{what} driven by cnmlab's engine", results,
            {"build": t1 - t0, "total": time.monotonic() - t0})
