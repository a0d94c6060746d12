"""``cnmlab vm``: the workshop, a shell, or one command, in the full-kernel VM.

    cnmlab vm                     the workshop app inside the VM (labs needing ipvlan, IPVS...)
    cnmlab vm shell               an interactive shell inside the VM
    cnmlab vm run -- CMD ...      run CMD inside; its output streams back, its exit code is ours
    cnmlab vm features            the VM kernel's `cnmlab features`

Options (before or after the subcommand): ``--timeout SECONDS`` (the VM is stopped after it),
``--rebuild`` (fetch and prepare the kernel again), ``--results DIR`` (the one host folder the
guest may write; default: the current folder, or for the workshop the folder holding the
learner's progress, so progress made in the VM is kept), ``--read-only`` (no writable folder).
"""
from __future__ import annotations

import argparse
import os
import signal
import sys
from typing import Any

from cnmlab.errors import InvalidInput
from cnmlab.state import progress_path
from cnmlab.vm import boot, image

RUN_TIMEOUT = 600.0
INTERACTIVE_TIMEOUT = 8 * 3600.0


class _Say(image.Progress):
    def step(self, text: str) -> None:
        print(f"cnmlab vm: {text}", file=sys.stderr, flush=True)


def _terminate(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)  # unwinds through boot.run's cleanup


def _results(args: argparse.Namespace, default: str | None) -> str | None:
    if getattr(args, "read_only", False):
        return None
    chosen = getattr(args, "results", None) or default
    if chosen is None or os.path.realpath(chosen) == "/":
        return None
    os.makedirs(chosen, exist_ok=True)
    return chosen


def _go(args: argparse.Namespace, argv: list[str], *, terminal: bool, results: str | None,
        timeout: float, cwd: str | None = None) -> int:
    signal.signal(signal.SIGTERM, _terminate)
    if terminal and not sys.stdin.isatty():
        raise InvalidInput("this needs a terminal; without one use: cnmlab vm run -- CMD ...")
    t = getattr(args, "timeout", None)
    r = boot.run(argv, terminal=terminal, results=results, cwd=cwd,
                 timeout=float(t) if t is not None else timeout,
                 rebuild=bool(getattr(args, "rebuild", False)), progress=_Say())
    return r.exit_code


def cmd_run(args: argparse.Namespace) -> int:
    argv = args.argv[1:] if args.argv[:1] == ["--"] else args.argv
    if not argv:
        raise InvalidInput("vm run needs a command: cnmlab vm run -- CMD ...")
    return _go(args, argv, terminal=False, results=_results(args, os.getcwd()),
               timeout=RUN_TIMEOUT)


def cmd_shell(args: argparse.Namespace) -> int:
    shell = os.environ.get("SHELL") or "/bin/bash"
    return _go(args, [shell, "-i"], terminal=True, results=_results(args, os.getcwd()),
               timeout=INTERACTIVE_TIMEOUT)


def cmd_features(args: argparse.Namespace) -> int:
    return _go(args, ["cnmlab", "features", *(["--json"] if args.json else [])],
               terminal=False, results=None, timeout=RUN_TIMEOUT, cwd="/")


def cmd_workshop(args: argparse.Namespace) -> int:
    return _go(args, ["cnmlab", "tui"], terminal=True,
               results=_results(args, os.path.dirname(progress_path())),
               timeout=INTERACTIVE_TIMEOUT)


def _options(p: argparse.ArgumentParser, sub: bool) -> None:
    """The same options on ``vm`` and on each subcommand; a subcommand's must not reset the
    value given before it, hence SUPPRESS there."""
    d = argparse.SUPPRESS if sub else None
    p.add_argument("--timeout", type=float, metavar="SECONDS", default=d,
                   help=f"stop the VM after this long (default {RUN_TIMEOUT:g} s for run and "
                        f"features, {INTERACTIVE_TIMEOUT / 3600:g} h for the workshop and shell)")
    p.add_argument("--rebuild", action="store_true", default=d,
                   help="fetch and prepare the kernel again")
    p.add_argument("--results", metavar="DIR", default=d,
                   help="the host folder the guest may write (default: the current folder)")
    p.add_argument("--read-only", action="store_true", default=d,
                   help="let the guest write no host folder at all")


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    help_text = ("the full-kernel VM (Debian's kernel under qemu) for labs and tests needing "
                 "features this kernel lacks: ipvlan, IPVS, 802.1Q, dummy")
    p = subparsers.add_parser("vm", help=help_text, description=help_text + ". With no "
                              "subcommand: the workshop app inside the VM.")
    _options(p, sub=False)
    p.set_defaults(func=cmd_workshop)
    sub = p.add_subparsers(dest="vm_command", metavar="VMCOMMAND")
    r = sub.add_parser("run", help="run a command in the VM: cnmlab vm run -- CMD ...")
    _options(r, sub=True)
    r.add_argument("argv", nargs=argparse.REMAINDER)
    r.set_defaults(func=cmd_run)
    s = sub.add_parser("shell", help="an interactive shell in the VM")
    _options(s, sub=True)
    s.set_defaults(func=cmd_shell)
    f = sub.add_parser("features", help="which kernel features the VM has")
    _options(f, sub=True)
    f.add_argument("--json", action="store_true")
    f.set_defaults(func=cmd_features)
