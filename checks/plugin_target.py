"""``cnmlab conform --target plugin:FILE.py:CLASS``: a profile through a third-party driver.

The profile's networks are made by cnmlab's engine with the plugin as their driver, the way
Docker would use it; the plugin is served for the run from inside the lab's host namespace
(where a driver must build), and its call log is kept next to the results.
"""
from __future__ import annotations

import os
import time
from typing import Any

from cnmlab.checks import conformance
from cnmlab.lab import Lab
from cnmlab.plugin import discovery
from cnmlab.plugin.cli import load_class
from cnmlab.plugin.sdk import PluginServer


def conform_plugin(profile: Any, spec: str) -> tuple[str, list[Any], dict[str, float]]:
    cls = load_class(spec)
    name = f"conformplugin{os.getpid()}"
    servers: list[PluginServer] = []

    def serve(host: Any) -> None:
        servers.append(PluginServer(cls(host.netns), discovery.socket_path(name)).start())

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
    return (f"plugin {cls.__name__} ({spec}) driven by cnmlab's engine", results,
            {"build": t1 - t0, "total": time.monotonic() - t0})
