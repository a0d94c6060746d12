"""``cnmlab lab ...``: list, start, show, check, hint, solve, reset, stop labs; plus
``cnmlab lab docker LAB ...``, a tiny docker-like front end to the engine for the labs whose
steps are ``docker network create`` / ``docker run`` (labs 4 and 5).

Errors are one line and exit 1 (``cli.main`` prints every ``CnmError``).
"""
from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING, Any

from cnmlab.errors import InvalidInput

if TYPE_CHECKING:
    from cnmlab.workshop.runner import LabRun

# The lab machinery (and the checks under it) is imported by the commands that use it, not
# here: ``cnmlab`` builds its whole argument parser on every call, and ``cnmlab ls`` or
# ``cnmlab up`` should not pay a third of a second for checks they never run.


def _run(args: argparse.Namespace) -> LabRun:
    from cnmlab.workshop import labfile
    from cnmlab.workshop.runner import LabRun

    return LabRun(labfile.get(args.lab), getattr(args, "name", None))


def cmd_list(args: argparse.Namespace) -> int:
    from cnmlab.workshop import labfile
    from cnmlab.workshop.progress import Progress
    from cnmlab.workshop.runner import running_instances

    prog = Progress()
    rows = []
    for lab in labfile.discover():
        p = prog.lab(lab.id)
        row = lab.summary_json()
        row["steps"] = [{**s, "passed": s["id"] in p["passed"]} for s in row["steps"]]
        row["progress"] = {"passed": p["passed"], "hints": p["hints"],
                           "done": sum(1 for s in lab.steps if s.id in p["passed"]),
                           "total": len(lab.steps)}
        row["running"] = running_instances(lab)
        rows.append(row)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    for r in rows:
        pr = r["progress"]
        run = f"  [running as {', '.join(r['running'])}]" if r["running"] else ""
        print(f"{r['id']:<28} {pr['done']}/{pr['total']} steps  {r['title']}{run}")
    return 0


def cmd_start(args: argparse.Namespace) -> int:
    run = _run(args)
    run.start(resume=args.resume)
    step = run.current_step
    print(f"lab {run.labdef.id} is up as '{run.name}' "
          f"({len(run.labdef.steps)} steps). Shells: cnmlab shell {run.name}/NAME")
    if step is not None:
        print(f"step {step.index + 1}: {step.title}  ('cnmlab lab show {run.labdef.id}')")
    run.lab.close()
    return 0


def _print_step(info: dict[str, Any]) -> None:
    if info.get("done"):
        print(f"lab {info['lab']}: every step has passed. Well done!")
        return
    mark = " (passed)" if info["passed"] else ""
    print(f"# Step {info['number']}/{info['of']}: {info['title']}{mark}")
    if info["concept"]:
        print(f"CNM concept: {info['concept']}")
    print()
    print(info["text"].rstrip())
    print()
    print("## Your task")
    print(info["task"].rstrip())


def cmd_show(args: argparse.Namespace) -> int:
    run = _run(args)
    if run.running:
        run._attach()
    info = run.show(args.step)
    _print_step(info)
    if info.get("done") and run.labdef.recap:
        print()
        print(run.render(run.labdef.recap).rstrip())
    elif info.get("where") and not info.get("done"):
        print(f"\n(work in: {', '.join(info['where'])}: cnmlab shell {run.name}/"
              f"{info['where'][0]})")
    return 0


def _result_lines(r: Any) -> list[str]:
    status = "SKIP" if getattr(r, "skipped", False) else ("PASS" if r.ok else "FAIL")
    lines = [f"{status}  {r.check}"]
    if not r.ok or r.skipped:
        lines.append(f"      expected: {r.expected}")
        lines.append(f"      observed: {r.observed}")
        if r.reason:
            lines.append(f"      why: {r.reason}")
    if r.table is not None:
        lines += ["      " + line for line in r.table.render_text().splitlines()]
    return lines


def cmd_check(args: argparse.Namespace) -> int:
    run = _run(args)
    step = run._step(args.step)
    if step is None:
        step = run.labdef.steps[-1]
    results = run.check(step)
    print(f"step {step.index + 1}: {step.title}")
    for r in results:
        print("\n".join(_result_lines(r)))
    ok = all(r.ok for r in results)
    if args.json:
        print(json.dumps([r.to_json() for r in results], indent=2))
    why = run.why.get(step.id)
    if why:
        print(f"why: {why}")
    if ok:
        nxt = run.current_step
        print("all checks pass." + (f" Next: step {nxt.index + 1}: {nxt.title}" if nxt else
                                    " The lab is done."))
    else:
        print(f"{sum(1 for r in results if not r.ok)} of {len(results)} checks fail. "
              f"'cnmlab lab hint {run.labdef.id}' gives a hint.")
    return 0 if ok else 1


def cmd_hint(args: argparse.Namespace) -> int:
    run = _run(args)
    h = run.hint(args.step)
    if h is None:
        print("no hints for this step: 'cnmlab lab solve' shows the solution")
        return 0
    print(str(h))
    if h.number == h.total:
        print(f"(that was the last hint; 'cnmlab lab solve {run.labdef.id}' applies the solution)")
    return 0


def _indent(line: str) -> str:
    """``[host] cmd1\ncmd2`` with the continuation lines under the first command."""
    pad = line.index("]") + 2 if line.startswith("[") else 0
    return "  " + line.replace("\n", "\n  " + " " * pad)


def cmd_solve(args: argparse.Namespace) -> int:
    run = _run(args)
    target = run._step(args.step)
    if target is None:
        print("every step has passed already")
        return 0
    if args.show:
        for s in run.labdef.steps[:target.index + 1]:
            print(f"# step {s.index + 1}: {s.title}")
            for line in run.solution(s):
                print(_indent(line))
        return 0
    solved = run.solve(target)
    for s in solved:
        print(f"solved step {s.index + 1}: {s.title}")
        for line in run.solution(s):
            print(_indent(line))
    if not solved:
        print("nothing to do: those steps are already solved in this run")
    return 0


def _shells_ok(run: Any, force: bool, what: str) -> bool:
    """Lab shells open elsewhere die with a teardown: ask (a terminal) or need --force."""
    import sys

    from cnmlab import shells

    open_ = shells.open_shells(run.name)
    if not open_ or force:
        return True
    names = "; ".join(s.describe() for s in open_)
    print(f"{len(open_)} shell(s) are open in {run.name}: {names}. {what} kills them.")
    if not sys.stdin.isatty():
        print("cnmlab: not done; close them, or add --force")
        return False
    return input(f"{what} anyway? [y/N] ").strip().lower() in ("y", "yes")


def cmd_reset(args: argparse.Namespace) -> int:
    run = _run(args)
    if not _shells_ok(run, args.force, "Resetting"):
        return 1
    if args.step:
        run.reset_step(args.step)
        s = run.labdef.step(args.step)
        print(f"lab {run.labdef.id} rebuilt as '{run.name}' up to step {s.index}; step "
              f"{s.index + 1} ({s.title}) starts again")
    else:
        run.reset()
        print(f"lab {run.labdef.id} rebuilt as '{run.name}'; progress cleared, back to step 1")
    run.lab.close()
    return 0


def cmd_stop(args: argparse.Namespace) -> int:
    run = _run(args)
    if not _shells_ok(run, args.force, "Stopping"):
        return 1
    run.stop()
    print(f"lab {run.labdef.id} ('{run.name}') stopped")
    return 0


# ---- cnmlab lab docker LAB ... : docker-like engine actions ---------------------------------

def _bool(v: str) -> bool:
    if v.lower() in ("1", "true", "yes", "on"):
        return True
    if v.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {v!r}")


def cmd_docker(args: argparse.Namespace) -> int:
    run = _run(args)
    run._attach()
    a = list(args.dargs)
    while a[:1] == ["--host"] and len(a) >= 2:  # `lab docker LAB --host H run ...`
        args.host, a = a[1], a[2:]
    if a[:1] == ["--"]:
        a = a[1:]
    hosts = [h.name for h in run.lab.hosts()]
    host = args.host or (hosts[0] if len(hosts) == 1 else None)
    if host is None:
        raise InvalidInput(f"lab has hosts {', '.join(hosts)}: say which with --host")
    act: dict[str, Any] = {"host": host}
    p = argparse.ArgumentParser(prog=f"cnmlab lab docker {args.lab}", exit_on_error=False)
    sub = p.add_subparsers(dest="what", required=True)
    run_p = sub.add_parser("run")
    run_p.add_argument("--network", "--net", default="bridge")
    run_p.add_argument("--ip")
    run_p.add_argument("--mac-address")
    run_p.add_argument("-p", "--publish", action="append", default=[])
    run_p.add_argument("--alias", "--network-alias", action="append", default=[])
    run_p.add_argument("name")
    rm_p = sub.add_parser("rm")
    rm_p.add_argument("sandbox")
    net_p = sub.add_parser("network")
    nsub = net_p.add_subparsers(dest="op", required=True)
    c = nsub.add_parser("create")
    c.add_argument("-d", "--driver", default="bridge")
    c.add_argument("--subnet")
    c.add_argument("--gateway")
    c.add_argument("--ip-range")
    c.add_argument("--internal", action="store_true")
    c.add_argument("--icc", type=_bool)
    c.add_argument("--masquerade", type=_bool)
    c.add_argument("--bridge-name")
    c.add_argument("--mtu", type=int)
    c.add_argument("-o", "--opt", action="append", default=[])
    c.add_argument("name")
    r = nsub.add_parser("rm")
    r.add_argument("name")
    for op in ("connect", "disconnect"):
        cp = nsub.add_parser(op)
        if op == "connect":
            cp.add_argument("--ip")
            cp.add_argument("--alias", action="append", default=[])
        cp.add_argument("network")
        cp.add_argument("sandbox")
    svc_p = sub.add_parser("service")
    ssub = svc_p.add_subparsers(dest="op", required=True)
    sc = ssub.add_parser("create")
    sc.add_argument("--network", "--net")
    sc.add_argument("--publish", "-p", help="PUBLISHED:TARGET: the routing mesh on every host")
    sc.add_argument("--replicas", type=int, default=1)
    sc.add_argument("--endpoint-mode", choices=("vip", "dnsrr"), default="vip")
    sc.add_argument("--port", type=int, default=80)
    sc.add_argument("name")
    ssub.add_parser("scale").add_argument("spec", metavar="NAME=REPLICAS")
    ssub.add_parser("rm").add_argument("name")
    try:
        ns = p.parse_args(a)
    except (argparse.ArgumentError, SystemExit) as e:
        raise InvalidInput(f"lab docker: {e or 'bad arguments'}") from None
    if ns.what == "run":
        act.update(engine="run", name=ns.name, network=ns.network, publish=ns.publish,
                   aliases=ns.alias)
        if ns.ip:
            act["ip"] = ns.ip
        if ns.mac_address:
            act["mac"] = ns.mac_address
    elif ns.what == "rm":
        act.update(engine="rm", sandbox=ns.sandbox)
    elif ns.what == "service":
        if ns.op == "create" and ns.publish:
            act.update(engine="service_create", name=ns.name, replicas=ns.replicas,
                       publish=[ns.publish])
        elif ns.op == "create":
            if not ns.network:
                raise InvalidInput("lab docker service create: give --network NET (a VIP "
                                   "service) or --publish PUBLISHED:TARGET (the routing mesh)")
            act.update(engine="service_create", name=ns.name, network=ns.network,
                       replicas=ns.replicas, endpoint_mode=ns.endpoint_mode, port=ns.port)
        elif ns.op == "scale":
            name, _, n = ns.spec.partition("=")
            if not n.isdigit():
                raise InvalidInput(f"lab docker service scale: {ns.spec!r}: use NAME=REPLICAS")
            act.update(engine="service_scale", name=name, replicas=int(n))
        else:
            act.update(engine="service_rm", name=ns.name)
    elif ns.op == "create":
        act.update(engine="network_create", name=ns.name, driver=ns.driver)
        for key in ("subnet", "gateway", "ip_range", "icc", "masquerade", "bridge_name", "mtu"):
            if getattr(ns, key) is not None:
                act[key] = getattr(ns, key)
        if ns.internal:
            act["internal"] = True
        opts = {}
        for o in ns.opt:
            k, _, v = o.partition("=")
            opts[k] = v
        if opts:
            act["options"] = opts
    elif ns.op == "rm":
        act.update(engine="network_rm", name=ns.name)
    else:
        act.update(engine=ns.op, network=ns.network, sandbox=ns.sandbox)
        if ns.op == "connect":
            if ns.ip:
                act["ip"] = ns.ip
            if ns.alias:
                act["aliases"] = ns.alias
    run.apply_action(act)
    print("ok")
    return 0


def register(subparsers: Any) -> None:
    lab = subparsers.add_parser("lab", help="guided labs: list, start, show, check, hint, solve",
                                description="Guided labs, step by step. LAB is a lab id, its "
                                "number (2, 02) or its lab name (lab02).")
    lsub = lab.add_subparsers(dest="lab_command", metavar="SUBCOMMAND", required=True)

    def add(name: str, fn: Any, help: str, lab_arg: bool = True,
            step_arg: bool = False) -> argparse.ArgumentParser:
        sp = lsub.add_parser(name, help=help, description=help)
        sp.set_defaults(func=fn)
        if lab_arg:
            sp.add_argument("lab", metavar="LAB")
            sp.add_argument("--name", help="instance name (default: lab01, lab02...)")
        if step_arg:
            sp.add_argument("step", nargs="?", metavar="STEP",
                            help="step id or number (default: the current step)")
        return sp

    add("list", cmd_list, "list the labs and your progress", lab_arg=False).add_argument(
        "--json", action="store_true")
    add("start", cmd_start, "build a lab's topology").add_argument(
        "--resume", action="store_true", help="re-apply the solutions of the steps you passed")
    add("show", cmd_show, "print a step's text and task", step_arg=True)
    add("check", cmd_check, "run a step's checks (exit 0 only if all pass)",
        step_arg=True).add_argument("--json", action="store_true")
    add("hint", cmd_hint, "the next hint for a step", step_arg=True)
    add("solve", cmd_solve, "apply the solutions up to a step (default: the current one)",
        step_arg=True).add_argument("--show", action="store_true",
                                    help="only print the solution, change nothing")
    sp = add("reset", cmd_reset, "rebuild a lab from scratch (clears its progress), or only "
             "back to the start of one step (--step)")
    sp.add_argument("--step", help="rebuild up to the step before this one (id or number)")
    sp.add_argument("--force", action="store_true", help="even with lab shells open")
    add("stop", cmd_stop, "tear a lab down").add_argument(
        "--force", action="store_true", help="even with lab shells open")
    sp = add("docker", cmd_docker, "docker-like engine commands on a lab's host: "
             "run, rm, network create|rm|connect|disconnect")
    sp.add_argument("--host", help="which host (needed when the lab has several)")
    sp.add_argument("dargs", nargs=argparse.REMAINDER, metavar="ARGS")
