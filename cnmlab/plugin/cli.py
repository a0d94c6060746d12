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
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import signal
import time
from typing import Any

from cnmlab.errors import InvalidInput, NotRootError, ObjectExists, ObjectNotFound
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


