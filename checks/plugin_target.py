"""``cnmlab conform --target plugin:SPEC``: a profile through a driver served as a plugin.

SPEC is ``FILE.py:CLASS`` (a third-party driver written with ``cnmlab.plugin.sdk``) or the
name of one of cnmlab's own drivers (``plugin:bridge``: cnmlab's bridge driver behind the
remote API, ``cnmlab.plugin.adapter``). The profile's networks are made by cnmlab's engine with
the plugin as their driver, the way Docker would use it; the plugin is served for the run,
building in the lab's host namespace (where a driver must build), and its call log is kept
next to the results.

SPEC may also name a plugin that is already running, someone else's: a socket path
(``plugin:/run/docker/plugins/foo.sock``) or a name Docker's discovery rules find
(``plugin:foo``). Such a plugin builds in its own network namespace, so that namespace becomes
the lab's Docker host for the run (``Lab.adopt_host``): the process behind the socket is found
by SO_PEERCRED, a plugin in the machine's root namespace is refused (cnmlab never builds
there), and after the run the topology is taken down through the plugin (as Docker would) and
the namespace is put back exactly as it was found (``cnmlab.adopted``); it is never deleted.
"""
from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

from cnmlab import drivers
from cnmlab.checks import conformance
from cnmlab.checks.api import CheckResult
from cnmlab.drivers.remote import RemoteDriver
from cnmlab.errors import CnmError, InvalidInput
from cnmlab.kernel import netns
from cnmlab.lab import Lab
from cnmlab.model import PREDEFINED
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
    if is_running_plugin(spec):
        return conform_running(profile, spec)
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


# ---------------------------------------------------------------------------------------------
# a plugin someone else runs


HOST_HINT = ("start it inside a namespace cnmlab made, e.g. 'cnmlab plugin host LAB -- "
             "COMMAND...' (a lab with one empty host; the command runs there)")


def is_running_plugin(spec: str) -> bool:
    """Whether SPEC names an already running plugin (a socket path, or a name that is
    neither FILE.py:CLASS nor one of cnmlab's own drivers)."""
    path, _, cls = spec.rpartition(":")
    if path.endswith(".py") and cls.isidentifier():
        return False
    if "/" in spec or spec.endswith(".sock"):
        return True
    return ":" not in spec and spec not in drivers.registered()


def socket_of(spec: str) -> str:
    """The socket path of a running plugin named by path or by Docker's discovery rules."""
    if "/" in spec or spec.endswith(".sock"):
        return os.path.abspath(spec)
    path = discovery.find(spec)
    if path is None:
        raise InvalidInput(f"plugin:{spec}: no plugin named {spec} is running (discovery "
                           f"looks in {', '.join(discovery.SOCKET_DIRS + discovery.SPEC_DIRS)}; "
                           f"'cnmlab plugin ls' lists what it finds), and cnmlab has no driver "
                           f"of that name")
    return path


def plugin_namespace(pid: int, what: str) -> str | None:
    """The name under /run/netns of the namespace the plugin (process ``pid``) builds in, or
    None when it has none (the lab names it for the run); the root namespace is refused."""
    if netns.is_root_of(pid):
        raise InvalidInput(f"{what} (pid {pid}) runs in the machine's root network namespace, "
                           f"where cnmlab never builds: {HOST_HINT}")
    return netns.name_of_pid(pid)


def _alias(path: str) -> tuple[str, str | None]:
    """(driver name, alias link or None): the name under which the engine finds the plugin.

    A socket that discovery finds by its own name keeps it; any other path gets a link in
    cnmlab's plugin folder for the run (removed after it), never in Docker's.
    """
    base = os.path.basename(path)
    if base.endswith(".sock") and discovery.NAME.match(base[:-5]) \
            and discovery.find(base[:-5]) == path:
        return base[:-5], None
    name = f"conformsock{os.getpid()}"
    link = discovery.socket_path(name)
    os.makedirs(discovery.CNMLAB_PLUGINS, exist_ok=True)
    if os.path.lexists(link):
        os.unlink(link)
    os.symlink(path, link)
    return name, link


def _unbuild(lab: Lab) -> list[str]:
    """Take the topology down through the engine, hence through the plugin (Leave,
    DeleteEndpoint, DeleteNetwork, as Docker would): what failed, one line each."""
    errors: list[str] = []
    for host in lab.hosts():
        for sb in list(host.model.sandboxes):
            try:
                host.rm(sb)
            except CnmError as e:
                errors.append(f"rm {sb}: {e}")
        for net in [n for n in host.networks() if n not in PREDEFINED]:
            try:
                host.network_rm(net)
            except CnmError as e:
                errors.append(f"network rm {net}: {e}")
    return errors


def conform_running(profile: Any, spec: str) -> tuple[str, list[Any], dict[str, float]]:
    """The profile through a plugin someone else started, in the namespace it builds in."""
    if isinstance(profile, str):
        profile = conformance.load(profile)
    if profile.hosts or profile.underlay is not None:
        raise InvalidInput(f"plugin:{spec}: profile {profile.name} has several hosts; a "
                           f"running plugin serves one host (its namespace)")
    path = socket_of(spec)
    what = f"plugin {spec}" if path == spec else f"plugin {spec} ({path})"
    # the socket, then the plugin behind it, then its namespace: each refusal is one line
    pid = discovery.serving_pid(path)
    RemoteDriver(spec, path)  # Activate and GetCapabilities: no plugin, or a hung one, fails
    ns = plugin_namespace(pid, what)
    where = f"namespace {ns}" if ns else f"the unnamed namespace of pid {pid}"
    name, link = _alias(path)
    t0 = time.monotonic()
    lab = Lab(f"conform{os.getpid()}")
    undone: list[str] = []
    try:
        lab.adopt_host("host", ns, pid=pid if ns is None else None)
        try:
            target = conformance.build_engine(lab, profile, driver=name,
                                              existing_hosts=True)
            t1 = time.monotonic()
            results = conformance.run_profile(target, profile)
            t2 = time.monotonic()
        finally:  # a failed build too: what the plugin made, it takes down itself
            undone = _unbuild(lab)
    finally:
        try:
            lab.down()
        finally:
            if link:
                os.unlink(link)
    if undone:
        results.append(CheckResult(
            check="teardown through the plugin", kind="plugin", ok=False,
            expected="Leave, DeleteEndpoint and DeleteNetwork succeed",
            observed="; ".join(undone), reason="the plugin failed to take its objects down"))
    return (f"{what} in {where}, driven by cnmlab's engine", results,
            {"build": t1 - t0, "checks": t2 - t1, "total": time.monotonic() - t0})
