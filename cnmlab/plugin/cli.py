"""``cnmlab plugin``: serve a driver you wrote, watch Docker (or the engine) call it.

* ``cnmlab plugin serve FILE.py:CLASS --name NAME [--netns LAB/HOST]`` loads a class made
  with ``cnmlab.plugin.sdk`` and serves it on ``/run/cnmlab/plugins/NAME.sock``; the class
  is given the host namespace it must build in (its first argument). It stops on Ctrl-C and
  removes its socket; ``cnmlab clean`` removes what a killed one left.
* ``cnmlab plugin log NAME [--follow]`` prints every call and its JSON, in order.
* ``cnmlab plugin ls`` lists the plugins that discovery finds.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import signal
import sys
import time
from typing import Any

from cnmlab.errors import InvalidInput, NotRootError, ObjectNotFound
from cnmlab.plugin import discovery
from cnmlab.plugin.sdk import Plugin, PluginServer


def register(subparsers: Any) -> None:
    sp = subparsers.add_parser("plugin", help="serve or watch a network/IPAM driver plugin")
    sub = sp.add_subparsers(dest="plugin_command", metavar="COMMAND", required=True)
    s = sub.add_parser("serve", help="serve a driver class written with cnmlab.plugin.sdk")
    s.add_argument("spec", metavar="FILE.py:CLASS")
    s.add_argument("--name", required=True, help="the driver's name (docker network create -d)")
    s.add_argument("--netns", metavar="LAB/HOST",
                   help="the host namespace the driver builds in (default: the lab's host)")
    s.set_defaults(func=cmd_serve)
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

    cls = load_class(args.spec)
    ns = resolve(args.netns)[1] if args.netns else None
    plugin = cls(ns) if ns else cls()
    server = PluginServer(plugin, discovery.socket_path(args.name))
    signal.signal(signal.SIGTERM, _interrupt)
    print(f"cnmlab: plugin {args.name} ({cls.__name__}) on {server.socket_path}; "
          f"'cnmlab plugin log {args.name} -f' shows its calls; Ctrl-C stops it", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        for path in (server.socket_path,):
            if os.path.exists(path):
                os.unlink(path)
    return 0


def format_call(entry: dict[str, Any]) -> str:
    stamp = time.strftime("%H:%M:%S", time.localtime(entry["time"]))
    return (f"{stamp} {entry['call']}\n  -> {json.dumps(entry['request'])}\n"
            f"  <- {json.dumps(entry['answer'])}")


def cmd_log(args: argparse.Namespace) -> int:
    path = discovery.socket_path(args.name) + ".log"
    if not os.path.exists(path):
        raise ObjectNotFound(f"no call log for plugin {args.name} ({path}): is it served by "
                             f"'cnmlab plugin serve'?")
    with open(path) as f:
        while True:
            line = f.readline()
            if line:
                print(format_call(json.loads(line)), flush=True)
            elif not args.follow:
                return 0
            else:
                time.sleep(0.2)
