"""``cnmlab grade`` and ``cnmlab conform``: checks for instructors and implementers.

* ``cnmlab grade (--assignment FILE | --profile NAME) SUBMISSION... [--json OUT] [--junit OUT]``
  grades every learner's submission (``PATH``, the learner being the file's name, or
  ``NAME=PATH``) against the instructor's assignment (``checks/grading.py``: each learner in
  a worker process with a wall-clock budget, each check with a deadline), prints a per-learner
  table with points and exits 0 only if every learner passed every required check.
* ``cnmlab conform --target engine|docker|docker:SOCKET|plugin:SPEC|plugin:SOCKET|docker-plugin:SPEC``
  ``[--profile bridge] [--json OUT]``
  builds the profile's topology with cnmlab's engine (in a fresh lab) or with real Docker
  (dockerd 20.10 started inside the manual host namespace of a fresh lab, whose upstream plays
  the internet), runs the profile's checks, prints expected vs observed per check and the truth
  tables, and tears everything down. ``docker:SOCKET`` checks an already running daemon that
  holds the profile's topology (``--upstream NETNS`` names its internet, if any). ``swarm``
  (multi-host profiles such as ``overlay``) starts a real two-node Docker swarm on a lab's
  underlay, builds the profile there and tears it down.
  ``plugin:SPEC`` makes the profile's networks with a driver served as a plugin (SPEC: one of
  cnmlab's drivers, or ``FILE.py:CLASS`` written with the SDK) driven by cnmlab's engine;
  ``docker-plugin:SPEC`` has real Docker drive it. ``plugin:SOCKET`` (a socket path, or a
  plugin name Docker's discovery finds) drives a plugin someone else already runs, in its own
  network namespace, which the run adopts as the lab's host and gives back as found
  (``checks/plugin_target.py``); one in the root namespace is refused.

Errors are one line (``cnmlab: ...``), as everywhere in the CLI.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any

from cnmlab.errors import InvalidInput, NotRootError

def register(subparsers: Any) -> None:
    sp = subparsers.add_parser(
        "grade", help="grade learners' submissions against an assignment",
        description="Run the instructor's assignment (or a conformance profile) against every "
                    "learner's submission and print a per-learner table. A submission only "
                    "says which of the learner's namespaces plays which role; the learner is "
                    "named by the file (or NAME=PATH), never by its content.")
    sp.add_argument("submissions", nargs="+", metavar="[NAME=]SUBMISSION")
    what = sp.add_mutually_exclusive_group(required=True)
    what.add_argument("--assignment", metavar="FILE", help="the instructor's assignment file")
    what.add_argument("--profile", metavar="NAME",
                      help="grade a conformance profile's checks (one point each)")
    sp.add_argument("--budget", metavar="S", type=float,
                    help="wall-clock seconds per learner (overrides the assignment's)")
    sp.add_argument("--jobs", metavar="N", type=int, default=None,
                    help="learners graded at a time (default 8)")
    sp.add_argument("--json", metavar="OUT", help="write the grade sheet (one row per check)")
    sp.add_argument("--junit", metavar="OUT", help="write JUnit XML (one testcase per check)")
    sp.add_argument("-v", "--verbose", action="store_true",
                    help="print every learner's results, not only the table")
    sp.set_defaults(func=cmd_grade)

    sp = subparsers.add_parser("conform", help="hold an implementation to a conformance profile",
                               description="Build a profile's topology with cnmlab's engine or "
                                           "real Docker and run its checks.")
    sp.add_argument("--target", required=True,
                    metavar="engine|docker|docker:SOCKET|plugin:SPEC|plugin:SOCKET|"
                            "docker-plugin:SPEC|swarm",
                    help="SPEC: one of cnmlab's drivers (bridge) or FILE.py:CLASS, served for "
                         "the run; plugin: the engine drives it, docker-plugin: real Docker "
                         "drives it. plugin:SOCKET (a socket path or a plugin name discovery "
                         "finds): a plugin already running in a network namespace of its own "
                         "(not the root one: start it with 'cnmlab plugin host LAB -- "
                         "COMMAND...'), which becomes the lab's host for the run and is left "
                         "as it was found")
    sp.add_argument("--profile", default="bridge", metavar="NAME")
    sp.add_argument("--json", metavar="OUT", help="write the results as a grade sheet")
    sp.add_argument("--junit", metavar="OUT", help="write JUnit XML (one testcase per check)")
    sp.add_argument("--upstream", metavar="NETNS",
                    help="with docker:SOCKET: the namespace that plays the internet")
    sp.add_argument("--no-color", action="store_true")
    sp.set_defaults(func=cmd_conform)


def _need_root() -> None:
    if os.geteuid() != 0:
        raise NotRootError("cnmlab needs root to create namespaces: run it with sudo")


# ---------------------------------------------------------------------------------------------
# grade


def load_assignment(assignment: str | None, profile: str | None,
                    budget: float | None = None) -> Any:
    """The instructor's side: an assignment file, or a profile graded one point per check."""
    from cnmlab.checks import assignment as amod

    if (assignment is None) == (profile is None):
        raise InvalidInput("give --assignment FILE or --profile NAME: the instructor decides "
                           "what is checked, never the submission")
    a = amod.load(assignment) if assignment is not None else amod.from_profile(profile)
    if budget is not None:
        if not 0 < budget <= amod.MAX_SECONDS:
            raise InvalidInput(f"--budget {budget:g}: give seconds in (0, {amod.MAX_SECONDS:g}]")
        a.budget = budget
    return a


def grade(submissions: list[str], assignment: Any, json_out: str | None = None,
          junit_out: str | None = None, jobs: int | None = None,
          on_learner: Any = None) -> tuple[list[Any], dict[str, Any]]:
    """Grade the class; (one ``LearnerGrade`` per learner, the grade sheet)."""
    from cnmlab.checks import assignment as amod
    from cnmlab.checks import grading, report

    learners = amod.learners(submissions)
    t0 = time.monotonic()
    grades = grading.grade(assignment, learners, jobs=jobs or grading.DEFAULT_JOBS,
                           on_learner=on_learner)
    sheet = report.grading_sheet(grades, assignment, tool="cnmlab grade",
                                 seconds=round(time.monotonic() - t0, 3))
    if json_out:
        report.write_json(json_out, sheet)
    if junit_out:
        report.write_junit(junit_out, {g.learner: g.results for g in grades},
                           suite=f"cnmlab.{assignment.name}")
    return grades, sheet


def cmd_grade(args: argparse.Namespace) -> int:
    from cnmlab.checks import report

    _need_root()
    a = load_assignment(args.assignment, args.profile, args.budget)
    color = sys.stdout.isatty()

    def progress(g: Any) -> None:
        if args.verbose and g.error:
            print(f"{g.learner}: submission refused: {g.error}")
        elif args.verbose:
            print(report.render_results(g.results, title=f"{g.learner}:", color=color))
            if g.extra:
                print(report.render_results(g.extra, title=f"{g.learner}, own checks "
                                                           f"(not graded):", color=color))

    grades, sheet = grade(args.submissions, a, args.json, args.junit, args.jobs, progress)
    print(report.render_grades(sheet, color=color))
    return 0 if sheet.get("ok") else 1


# ---------------------------------------------------------------------------------------------
# conform


def _conform_name() -> str:
    return f"conform{os.getpid()}"


def conform_engine(profile: Any) -> tuple[str, list[Any], dict[str, float]]:
    from cnmlab.checks import conformance
    from cnmlab.lab import Lab

    t0 = time.monotonic()
    lab = Lab(_conform_name())
    try:
        target = conformance.build_engine(lab, profile)
        t1 = time.monotonic()
        results = conformance.run_profile(target, profile)
        t2 = time.monotonic()
    finally:
        lab.down()
    return "cnmlab engine", results, {"build": t1 - t0, "checks": t2 - t1,
                                      "total": time.monotonic() - t0}


def conform_docker(profile: Any, quiet: bool = False,
                   plugin: str | None = None) -> tuple[str, list[Any], dict[str, float]]:
    """Real Docker: a fresh lab, dockerd in its manual host, the topology, the checks.

    ``plugin`` (``FILE.py:CLASS`` or one of cnmlab's drivers) is served in that host and
    makes the profile's networks: real Docker driving a plugin.
    """
    from cnmlab.checks import conformance
    from cnmlab.checks import dockerd
    from cnmlab.checks.dockerd import DockerDaemon
    from cnmlab.lab import Lab

    dockerd.require_tools()
    if profile.hosts or profile.underlay is not None:
        return conform_docker_hosts(profile, quiet)

    from cnmlab.plugin import discovery
    from cnmlab.plugin.sdk import PluginServer

    t0 = time.monotonic()
    name = _conform_name()
    lab = Lab(name)
    daemon = None
    server = None
    what = ""
    try:
        host = lab.add_host("docker", default_bridge=False, firewall="manual")
        if plugin:
            from cnmlab.checks.plugin_target import plugin_factory

            what, factory = plugin_factory(plugin)
            server = PluginServer(factory(host.netns), discovery.socket_path(name)).start()
        daemon = DockerDaemon(name, host.netns, os.path.join(dockerd.DAEMONS_DIR, name),
                              cache_dir=dockerd.IMAGE_CACHE, quiet=quiet,
                              plugins_dir=discovery.CNMLAB_PLUGINS if plugin else None)
        daemon.start()
        t1 = time.monotonic()
        target = conformance.build_docker(daemon, profile, upstream=lab.upstream_netns,
                                          driver=name if plugin else None)
        t2 = time.monotonic()
        version = daemon.docker("version", "--format", "{{.Server.Version}}",
                                check=False).stdout.strip()
        results = conformance.run_profile(target, profile)
        t3 = time.monotonic()
    finally:
        try:
            if daemon is not None:
                daemon.stop()
        finally:
            if server is not None:
                server.close()
            lab.down()
    via = f" driving {what}" if plugin else ""
    return (f"docker {version or '?'} (dockerd in {host.netns}){via}", results,
            {"daemon": t1 - t0, "build": t2 - t1, "checks": t3 - t2,
             "total": time.monotonic() - t0})


def conform_docker_hosts(profile: Any, quiet: bool = False) -> tuple[str, list[Any],
                                                                     dict[str, float]]:
    """A multi-host profile with real Docker: the profile's hosts (and underlay) in a fresh
    lab, one dockerd in each, the topology built through each daemon, the checks."""
    from cnmlab.checks import conformance, dockerd
    from cnmlab.checks.dockerd import DockerDaemon
    from cnmlab.lab import Lab

    t0 = time.monotonic()
    name = _conform_name()
    lab = Lab(name)
    daemons: dict[str, Any] = {}
    try:
        hosts = conformance.build_hosts(lab, profile, "docker", default_bridge=False,
                                        firewall="manual")
        for h in hosts:
            d = DockerDaemon(f"{name}-{h.name}", h.netns,
                             os.path.join(dockerd.DAEMONS_DIR, f"{name}-{h.name}"),
                             cache_dir=dockerd.IMAGE_CACHE, quiet=quiet)
            daemons[h.name] = d
            d.start()
        t1 = time.monotonic()
        target = conformance.build_docker_hosts(daemons, profile, lab)
        t2 = time.monotonic()
        first = next(iter(daemons.values()))
        version = first.docker("version", "--format", "{{.Server.Version}}",
                               check=False).stdout.strip()
        results = conformance.run_profile(target, profile)
        t3 = time.monotonic()
    finally:
        try:
            for d in daemons.values():
                d.stop()
        finally:
            lab.down()
    return (f"docker {version or '?'} ({len(daemons)} daemons: {', '.join(daemons)})", results,
            {"daemons": t1 - t0, "build": t2 - t1, "checks": t3 - t2,
             "total": time.monotonic() - t0})


def conform_swarm(profile: Any, quiet: bool = False) -> tuple[str, list[Any], dict[str, float]]:
    """A real two-node swarm: a fresh lab with an underlay, a dockerd per host, swarm
    init/join, the profile's overlays and containers, the checks; everything torn down."""
    from cnmlab.checks import conformance, dockerd
    from cnmlab.lab import Lab

    dockerd.require_tools()
    t0 = time.monotonic()
    lab = Lab(_conform_name())
    target = None
    try:
        target = conformance.build_swarm(lab, profile, quiet=quiet)
        t1 = time.monotonic()
        version = target.swarm.manager.docker("version", "--format", "{{.Server.Version}}",
                                              check=False).stdout.strip()
        results = conformance.run_profile(target, profile)
        t2 = time.monotonic()
    finally:
        try:
            if target is not None:
                target.swarm.stop()
        finally:
            lab.down()
    return (f"docker {version or '?'} swarm of {len(target.swarm.hosts)} nodes", results,
            {"build": t1 - t0, "checks": t2 - t1, "total": time.monotonic() - t0})


def conform_socket(profile: Any, socket: str, upstream: str | None) -> tuple[str, list[Any],
                                                                              dict[str, float]]:
    from cnmlab.checks import conformance, targets

    t0 = time.monotonic()
    target = targets.make_target("docker", socket)
    if upstream:
        target._upstream = conformance.upstream_ref(upstream)
    results = conformance.run_profile(target, profile)
    return target.name, results, {"checks": time.monotonic() - t0}


def cmd_conform(args: argparse.Namespace) -> int:
    from cnmlab.checks import conformance, report

    _need_root()
    profile = conformance.load(args.profile)
    kind, _, arg = args.target.partition(":")
    if kind == "engine" and not arg:
        name, results, timings = conform_engine(profile)
    elif kind == "docker" and not arg:
        name, results, timings = conform_docker(profile)
    elif kind == "docker":
        name, results, timings = conform_socket(profile, arg, args.upstream)
    elif kind == "plugin" and arg:
        from cnmlab.checks.plugin_target import conform_plugin

        name, results, timings = conform_plugin(profile, arg)
    elif kind == "swarm" and not arg:
        name, results, timings = conform_swarm(profile)
    elif kind == "docker-plugin" and arg:
        name, results, timings = conform_docker(profile, plugin=arg)
    else:
        raise InvalidInput(f"--target {args.target!r}: use engine, docker, docker:SOCKET, "
                           f"plugin:DRIVER|FILE.py:CLASS|SOCKET, "
                           f"docker-plugin:DRIVER|FILE.py:CLASS or swarm")
    color = sys.stdout.isatty() and not args.no_color
    print(report.render_results(results, color=color, verbose=True,
                                title=f"profile {profile.name} against {name}:"))
    print("  timings: " + ", ".join(f"{k} {v:.1f}s" for k, v in timings.items()))
    learner = f"{kind}" if not arg else args.target
    if args.json:
        sheet = report.grade_sheet(report.rows({learner: results}), tool="cnmlab conform",
                                   profile=profile.name, target=name, timings=timings)
        report.write_json(args.json, sheet)
    if args.junit:
        report.write_junit(args.junit, {learner: results}, suite=f"cnmlab.{profile.name}")
    return 0 if conformance.passed(results) else 1
