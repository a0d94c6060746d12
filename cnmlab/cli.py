"""The ``cnmlab`` command. User errors print one line and exit 1; no tracebacks."""
from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict

from cnmlab import state
from cnmlab.checks import cli as checks_cli
from cnmlab.checks import diffcli
from cnmlab.errors import CnmError, InvalidInput, NotRootError, one_line
from cnmlab.plugin import cli as plugin_cli
from cnmlab.vm import cli as vm_cli
from cnmlab.workshop import cli as workshop_cli


def _need_root() -> None:
    if os.geteuid() != 0:
        raise NotRootError("cnmlab needs root to create namespaces and links: run it with sudo")


def cmd_up(args: argparse.Namespace) -> int:
    from cnmlab import topofile

    _need_root()
    topo = topofile.load(args.file, args.name)
    if args.store:  # an existing etcd cluster instead of the lab's own
        topofile.parse_store(args.store)
        topo.control_plane = args.store
    lab = topofile.build(topo)
    print(f"lab {lab.name} is up: {len(lab.hosts())} host(s), "
          f"{sum(1 for _ in lab.sandboxes())} sandbox(es). 'cnmlab inspect {lab.name}' shows it.")
    lab.close()
    return 0


def cmd_down(args: argparse.Namespace) -> int:
    from cnmlab.lab import Lab

    _need_root()
    Lab.open(args.name).down()
    print(f"lab {args.name} removed")
    return 0


def cmd_ls(args: argparse.Namespace) -> int:
    rows = []
    for name in state.names():
        try:
            st = state.load(name)
        except CnmError:
            continue  # removed while we were listing
        rows.append({"name": name, "hosts": list(st.hosts),
                     "sandboxes": [s for h in st.hosts.values() for s in h.sandboxes],
                     "namespaces": len(st.namespaces)})
    if args.json:
        print(json.dumps(rows, indent=2))
    elif not rows:
        print("no lab is running")
    else:
        for r in rows:
            print(f"{r['name']:<20} hosts: {', '.join(r['hosts']) or '-'}   "
                  f"sandboxes: {', '.join(r['sandboxes']) or '-'}")
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    from cnmlab import inspection
    from cnmlab.lab import Lab

    _need_root()
    lab = Lab.open(args.name)
    data = inspection.inspect(lab)
    lab.close()
    print(json.dumps(data, indent=2) if args.json else inspection.render_text(data))
    return 0


def _exec_in(target: str, argv: list[str]) -> int:
    from cnmlab.kernel.nsexec import shell_argv
    from cnmlab.lab import resolve

    _need_root()
    _, ns = resolve(target)
    os.execvp("ip", shell_argv(ns, argv))
    return 0  # not reached


def cmd_exec(args: argparse.Namespace) -> int:
    argv = args.argv[1:] if args.argv[:1] == ["--"] else args.argv
    if not argv:
        raise InvalidInput("exec needs a command: cnmlab exec SANDBOX -- CMD ...")
    return _exec_in(args.target, argv)


def cmd_shell(args: argparse.Namespace) -> int:
    """A lab shell that stays supervised: registered while open (stop/reset ask first), with a
    loud banner instead of a silent ``Killed`` when its lab goes away."""
    from cnmlab import shells
    from cnmlab.lab import resolve

    _need_root()
    lab_name, ns = resolve(args.target)
    name = args.target.split("/")[-1]
    print(f"cnmlab: a shell in {lab_name}/{name} (netns {ns}); 'exit' or Ctrl-D leaves it.")
    rc = shells.run_shell(lab_name, name, ns, owner="cli", history=_history_file(lab_name, name))
    return 0 if rc in (0, 130) else 1


def _history_file(lab_name: str, member: str) -> str | None:
    """Where the commands typed in a guided lab's shells are kept (with the lab's progress)."""
    try:
        lab_id = state.load(lab_name).extra.get("labrun", {}).get("lab_id")
    except CnmError:
        return None
    if not lab_id:
        return None
    from cnmlab.workshop.progress import Progress

    return Progress().history_file(lab_id, member)


def cmd_clean(args: argparse.Namespace) -> int:
    from cnmlab.checks import dockerd
    from cnmlab.clean import clean, clean_plugin_sockets
    from cnmlab.workshop import labdocker

    _need_root()
    for name in state.names():  # a lab run against real Docker: its dockerd goes first
        if not args.lab or name in args.lab:
            labdocker.stop(name)
    removed = clean(args.lab or None)
    sockets = clean_plugin_sockets()
    daemons = [] if args.lab else dockerd.clean_all()  # the daemons 'conform' left behind
    print(f"removed {len(removed)} namespace(s)" + (f": {' '.join(removed)}" if removed else ""))
    if sockets or daemons:  # each names itself ("plugin socket PATH", "dockerd NS")
        print("also removed: " + ", ".join(sockets + daemons))
    return 0


def cmd_features(args: argparse.Namespace) -> int:
    from cnmlab.kernel import features

    _need_root()
    found = features.probe_all()
    if args.json:
        print(json.dumps(found, indent=2))
    else:
        for name, ok in found.items():
            print(f"{name:<12} {'yes' if ok else 'NO '}  {features.DESCRIPTIONS.get(name, '')}")
    return 0


def cmd_peers(args: argparse.Namespace) -> int:
    """The control plane's peer table next to each host's kernel (exit 2: out of sync)."""
    from cnmlab import peers
    from cnmlab.lab import Lab

    _need_root()
    lab = Lab.open(args.name)
    try:
        if lab.cluster is None:
            raise InvalidInput(f"lab {args.name} has no control plane (no global networks)")
        info = lab.control_plane or {}
        report = peers.report(lab.cluster, [h.controller for h in lab.hosts()])
        if args.json:
            print(json.dumps([asdict(h) | {"in_sync": h.in_sync} for h in report], indent=2))
        else:
            print(f"control plane {info.get('url', '?')}"
                  + (f" (embedded, in {info['netns']})" if info.get("embedded") else ""))
            print(peers.render(report))
    finally:
        lab.close()
    return 0 if not peers.out_of_sync(report) else 2


def cmd_agent(args: argparse.Namespace) -> int:
    """Stop a host's agent (a fault to study) or start it again (it reconciles first)."""
    from cnmlab.lab import Lab

    _need_root()
    lab = Lab.open(args.lab)
    try:
        if args.action == "stop":
            lab.stop_agent(args.host)
        else:
            lab.restart_agent(args.host)
            lab.converge()
        print(f"agent of {args.host}: {'stopped' if args.action == 'stop' else 'running'}")
    finally:
        lab.close()
    return 0


def cmd_tui(args: argparse.Namespace) -> int:
    try:
        from cnmlab.tui.app import run
    except ImportError as e:
        raise CnmError(f"the workshop app is not available: {e}") from None
    return run()


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="cnmlab", description="Docker networking, rebuilt from "
                                "real kernel objects. With no command: the workshop app.")
    p.add_argument("--labs-dir", action="append", default=[], metavar="DIR",
                   help="also offer the labs in DIR (repeatable; adds to $CNMLAB_LABS_PATH)")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    def add(name: str, fn: Callable[[argparse.Namespace], int], help: str) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help, description=help)
        sp.set_defaults(func=fn)
        return sp

    sp = add("up", cmd_up, "build a topology from a YAML file")
    sp.add_argument("file")
    sp.add_argument("--name", help="lab name (default: the file's 'name')")
    sp.add_argument("--store", metavar="etcd://HOST:PORT",
                    help="control plane for global networks: an existing etcd cluster "
                         "(default: a private etcd inside the lab, when the file needs one)")
    add("down", cmd_down, "tear a running lab down").add_argument("name")
    add("ls", cmd_ls, "list running labs").add_argument("--json", action="store_true")
    sp = add("inspect", cmd_inspect, "show a lab's hosts, networks and sandboxes")
    sp.add_argument("name")
    sp.add_argument("--json", action="store_true")
    sp = add("exec", cmd_exec, "run a command in a sandbox or host: exec NAME -- CMD")
    sp.add_argument("target", metavar="NAME")
    sp.add_argument("argv", nargs=argparse.REMAINDER)
    add("shell", cmd_shell, "open a shell in a sandbox or host").add_argument("target",
                                                                              metavar="NAME")
    add("clean", cmd_clean, "remove every cnmlab object left on this machine").add_argument(
        "--lab", action="append", help="only this lab (repeatable)")
    add("features", cmd_features, "which kernel features this machine has").add_argument(
        "--json", action="store_true")
    sp = add("peers", cmd_peers, "the control plane's peer table next to each host's kernel")
    sp.add_argument("name")
    sp.add_argument("--json", action="store_true")
    sp = add("agent", cmd_agent, "stop or start a host's control-plane agent")
    sp.add_argument("action", choices=["stop", "start"])
    sp.add_argument("lab")
    sp.add_argument("host")
    add("tui", cmd_tui, "open the workshop app (the default)")
    for extra in _extensions():
        extra(sub)
    return p


def _extensions() -> list[Callable[[argparse._SubParsersAction], None]]:  # type: ignore[type-arg]
    """Subcommands owned by the packages under the CLI (labs, checks, diff, plugins, the VM)."""
    return [workshop_cli.register, checks_cli.register, diffcli.register, plugin_cli.register,
            vm_cli.register]


def _add_labs_dirs(dirs: list[str]) -> None:
    """``--labs-dir`` goes into the environment: the lab finder, the TUI's workers and any
    child process (a shell, a check) then see the same labs."""
    if dirs:
        old = os.environ.get("CNMLAB_LABS_PATH")
        os.environ["CNMLAB_LABS_PATH"] = os.pathsep.join(
            [os.path.abspath(d) for d in dirs] + ([old] if old else []))


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func = getattr(args, "func", cmd_tui)
    _add_labs_dirs(args.labs_dir)
    try:
        return func(args) or 0
    except CnmError as e:
        print(f"cnmlab: {one_line(str(e))}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
