"""``cnmlab plugin``: serve a driver you wrote, watch Docker (or the engine) call it.

* ``cnmlab plugin serve FILE.py:CLASS --name NAME [--netns LAB/HOST]`` loads a class made
  with ``cnmlab.plugin.sdk`` and serves it on ``/run/cnmlab/plugins/NAME.sock``; the class
  is given the host namespace it must build in (its first argument). It stops on Ctrl-C and
  removes its socket; ``cnmlab clean`` removes what a killed one left.
* ``cnmlab plugin serve --driver bridge --netns LAB/HOST [--name cnmlab-bridge]`` serves one
  of cnmlab's own drivers, and cnmlab's IPAM, the same way (``cnmlab.plugin.adapter``).
  ``--detach`` runs it in the background and returns once it answers; ``cnmlab plugin stop
  NAME`` ends it (``cnmlab.plugin.process``).
* ``cnmlab plugin log NAME [--follow]`` prints every call and its JSON, in order.
* ``cnmlab plugin ls`` lists the plugins that discovery finds.
* ``cnmlab plugin host LAB -- COMMAND...`` makes lab LAB with one empty host namespace (no
  upstream, no docker0, no firewall rules) and runs COMMAND there: how a plugin that builds
  in its own network namespace (a third party's, or ``cnmlab plugin serve``) is started for
  ``cnmlab conform --target plugin:SOCKET``, which refuses one in the root namespace. The lab
  goes when COMMAND ends (or on Ctrl-C / SIGTERM, which COMMAND gets first).
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import signal
import subprocess
import time
from typing import Any

from cnmlab.errors import InvalidInput, NotRootError, ObjectExists, ObjectNotFound
from cnmlab.kernel.nsexec import shell_argv
from cnmlab.plugin import calllog, discovery, process
from cnmlab.plugin.adapter import builtin_plugin
from cnmlab.plugin.sdk import Plugin, PluginServer


def register(subparsers: Any) -> None:
    sp = subparsers.add_parser("plugin", help="serve or watch a network/IPAM driver plugin")
    sub = sp.add_subparsers(dest="plugin_command", metavar="COMMAND", required=True)
    s = sub.add_parser("serve", help="serve a driver class written with cnmlab.plugin.sdk, or "
                                     "one of cnmlab's own drivers (--driver)")
    s.add_argument("spec", metavar="FILE.py:CLASS", nargs="?")
    s.add_argument("--driver", metavar="DRIVER",
                   help="serve cnmlab's own driver (bridge, ...) and its IPAM instead")
    s.add_argument("--name", help="the driver's name (docker network create -d); "
                                  "default with --driver: cnmlab-DRIVER")
    s.add_argument("--netns", metavar="LAB/HOST",
                   help="the host namespace the driver builds in (default: the lab's host)")
    s.add_argument("--detach", action="store_true",
                   help="serve in the background; return once the plugin answers")
    s.set_defaults(func=cmd_serve)
    s = sub.add_parser("stop", help="stop a plugin served by 'cnmlab plugin serve'")
    s.add_argument("name")
    s.set_defaults(func=cmd_stop)
    s = sub.add_parser("log", help="print the calls a served plugin received")
    s.add_argument("name")
    s.add_argument("-f", "--follow", action="store_true")
    s.set_defaults(func=cmd_log)
    s = sub.add_parser("host", help="run a command (a plugin) in a new lab's empty host "
                                    "namespace: host LAB -- COMMAND...",
                       description="Make lab LAB with one empty host namespace (LAB/host: no "
                                   "upstream, no docker0, no rules) and run COMMAND in it; the "
                                   "lab is torn down when COMMAND ends. A plugin started this "
                                   "way builds in LAB/host, and 'cnmlab conform --target "
                                   "plugin:SOCKET' adopts that namespace as its Docker host.")
    s.add_argument("lab", metavar="LAB")
    s.add_argument("argv", nargs=argparse.REMAINDER, metavar="-- COMMAND...")
    s.set_defaults(func=cmd_host)
    s = sub.add_parser("ls", help="list the plugins discovery finds")
    s.set_defaults(func=lambda a: print("\n".join(discovery.installed()) or "no plugins") or 0)


def load_class(spec: str) -> type[Plugin]:
    path, _, cls_name = spec.rpartition(":")
    if not path or not cls_name or not os.path.isfile(path):
        raise InvalidInput(f"{spec}: give FILE.py:CLASS, with FILE.py an existing file")
    module_spec = importlib.util.spec_from_file_location(f"cnmlab_plugin_{cls_name}", path)
    assert module_spec and module_spec.loader
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    cls = getattr(module, cls_name, None)
    if not (isinstance(cls, type) and issubclass(cls, Plugin)):
        raise InvalidInput(f"{spec}: {cls_name} is not a NetworkDriver or IpamDriver class "
                           f"(from cnmlab.plugin.sdk)")
    return cls


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt  # SIGTERM stops a plugin as Ctrl-C does: socket removed


def cmd_serve(args: argparse.Namespace) -> int:
    if os.geteuid() != 0:
        raise NotRootError("serving a plugin needs root (its socket is under /run)")
    from cnmlab.lab import resolve  # the engine, only for the command that needs it

    chosen = [a for a in (args.spec, args.driver) if a]
    if len(chosen) != 1:
        raise InvalidInput("plugin serve: give FILE.py:CLASS or --driver DRIVER (one of them)")
    ns = resolve(args.netns)[1] if args.netns else None
    if args.driver:
        if not ns:
            raise InvalidInput("plugin serve --driver: --netns LAB/HOST names the host "
                               "namespace the driver builds in")
        args.name = args.name or f"cnmlab-{args.driver}"
        plugin: Plugin = builtin_plugin(args.driver, ns, args.name)
        what = f"cnmlab's {args.driver} driver and IPAM"
    else:
        if not args.name:
            raise InvalidInput("plugin serve: --name NAME is the driver's name "
                               "(docker network create -d NAME)")
        cls = load_class(args.spec)
        plugin = cls(ns) if ns else cls()
        what = cls.__name__
    sock = discovery.socket_path(args.name)
    if process.answers(sock):
        raise ObjectExists(f"plugin {args.name} is already served on {sock} "
                           f"('cnmlab plugin stop {args.name}' first)")
    if args.detach:
        argv = ["plugin", "serve", *([args.spec] if args.spec else []), "--name", args.name,
                *(["--driver", args.driver] if args.driver else []),
                *(["--netns", args.netns] if args.netns else [])]
        pid = process.detach(argv, sock)
        print(f"cnmlab: plugin {args.name} ({what}) serving on {sock}, pid {pid}; "
              f"'cnmlab plugin log {args.name} -f' shows its calls, its output goes to "
              f"{process.out_path(sock)}; 'cnmlab plugin stop {args.name}' ends it")
        return 0
    server = PluginServer(plugin, sock)
    process.record(sock)
    signal.signal(signal.SIGTERM, _interrupt)
    print(f"cnmlab: plugin {args.name} ({what}) on {server.socket_path}; "
          f"'cnmlab plugin log {args.name} -f' shows its calls; Ctrl-C stops it", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        process.forget(sock)
    return 0


def cmd_stop(args: argparse.Namespace) -> int:
    sock = discovery.socket_path(args.name)
    pid = process.stop(args.name, sock)
    print(f"cnmlab: plugin {args.name} (pid {pid}) stopped")
    return 0


def cmd_log(args: argparse.Namespace) -> int:
    reader = calllog.CallLogReader(args.name)
    if not os.path.exists(reader.path):
        raise ObjectNotFound(f"no call log for plugin {args.name} ({reader.path}): is it served "
                             f"by 'cnmlab plugin serve'?")
    while True:
        calls = reader.read()
        if reader.restarted:
            print("-- the plugin was served again: its log starts afresh --", flush=True)
        for call in calls:
            print("\n".join(call.lines()), flush=True)
        if not args.follow:
            return 0
        time.sleep(0.2)




def cmd_host(args: argparse.Namespace) -> int:
    """A lab whose one host namespace is empty, and COMMAND running in it until it ends."""
    if os.geteuid() != 0:
        raise NotRootError("cnmlab needs root to create namespaces: run it with sudo")
    from cnmlab.lab import Lab  # the engine, only for the command that needs it

    argv = args.argv[1:] if args.argv[:1] == ["--"] else args.argv
    if not argv:
        raise InvalidInput("plugin host needs a command: cnmlab plugin host LAB -- COMMAND...")
    lab = Lab(args.lab, upstream=False)
    try:
        host = lab.add_host("host", default_bridge=False, firewall="manual")
        print(f"cnmlab: lab {lab.name}: running {' '.join(argv)} in host namespace "
              f"{host.netns} ('--netns {lab.name}/host' for 'cnmlab plugin serve'); the lab is "
              f"torn down when it ends", flush=True)
        proc = subprocess.Popen(shell_argv(host.netns, argv))

        def forward(signum: int, frame: Any) -> None:
            if proc.poll() is None:
                proc.send_signal(signum)

        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, forward)
        rc = proc.wait()
    finally:
        lab.down()
    return rc if rc >= 0 else 128 - rc  # killed by a signal: the shell's convention
