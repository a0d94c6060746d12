"""``cnmlab grade`` and ``cnmlab conform``: checks for instructors and implementers.

* ``cnmlab grade MANIFEST... [--json OUT] [--junit OUT] [--profile NAME]`` runs pytest with the
  cnmlab plugin over each learner's manifest (one item per check, in a subprocess so a learner's
  broken namespaces cannot wedge the caller), prints a per-learner table and exits 0 only if
  every learner passed.
* ``cnmlab conform --target engine|docker|docker:SOCKET [--profile bridge] [--json OUT]``
  builds the profile's topology with cnmlab's engine (in a fresh lab) or with real Docker
  (dockerd 20.10 started inside the manual host namespace of a fresh lab, whose upstream plays
  the internet), runs the profile's checks, prints expected vs observed per check and the truth
  tables, and tears everything down. ``docker:SOCKET`` checks an already running daemon that
  holds the profile's topology (``--upstream NETNS`` names its internet, if any).

Errors are one line (``cnmlab: ...``), as everywhere in the CLI.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from typing import Any

from cnmlab.errors import CnmError, InvalidInput, NotRootError, ObjectNotFound



def register(subparsers: Any) -> None:
    sp = subparsers.add_parser("grade", help="grade learners' hand-built setups (manifests)",
                               description="Run every learner's manifest checks through pytest "
                                           "and print a per-learner table.")
    sp.add_argument("manifests", nargs="+", metavar="MANIFEST")
    sp.add_argument("--json", metavar="OUT", help="write the grade sheet (one row per check)")
    sp.add_argument("--junit", metavar="OUT", help="write JUnit XML (one testcase per check)")
    sp.add_argument("--profile", metavar="NAME", help="also run a conformance profile's checks")
    sp.add_argument("-v", "--verbose", action="store_true", help="show pytest's own output")
    sp.set_defaults(func=cmd_grade)

    sp = subparsers.add_parser("conform", help="hold an implementation to a conformance profile",
                               description="Build a profile's topology with cnmlab's engine or "
                                           "real Docker and run its checks.")
    sp.add_argument("--target", required=True,
                    metavar="engine|docker|docker:SOCKET|plugin:FILE.py:CLASS")
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


def grade(manifests: list[str], json_out: str | None = None, junit_out: str | None = None,
          profile: str | None = None, verbose: bool = False) -> tuple[int, dict[str, Any]]:
    """Run pytest with the plugin over the manifests; (pytest's exit code, the grade sheet)."""
    for m in manifests:
        if not os.path.isfile(m):
            raise ObjectNotFound(f"no such manifest: {m}")
    with tempfile.TemporaryDirectory(prefix="cnmlab-grade-") as tmp:
        with open(os.path.join(tmp, "pytest.ini"), "w") as f:
            f.write("[pytest]\n")
        sheet_path = json_out or os.path.join(tmp, "grades.json")
        argv = [sys.executable, "-m", "pytest", tmp, "-c", os.path.join(tmp, "pytest.ini"),
                "--rootdir", tmp, "-p", "no:cacheprovider", "-q", "-rN",
                "--cnmlab-json", os.path.abspath(sheet_path)]
        for m in manifests:
            argv += ["--cnmlab-manifest", os.path.abspath(m)]
        if profile:
            argv += ["--cnmlab-profile", profile]
        if junit_out:
            argv += ["--junitxml", os.path.abspath(junit_out)]
        env = dict(os.environ)
        env.pop("PYTEST_ADDOPTS", None)
        cp = subprocess.run(argv, cwd=tmp, capture_output=not verbose, text=True, env=env)
        try:
            with open(sheet_path) as f:
                sheet = json.load(f)
        except (OSError, ValueError):
            tail = ((cp.stderr or "") + (cp.stdout or "")).strip().splitlines()[-1:] \
                if not verbose else []
            raise CnmError("grading did not produce a grade sheet (pytest exit "
                           f"{cp.returncode}{': ' + tail[0] if tail else ''})") from None
    return cp.returncode, sheet


def cmd_grade(args: argparse.Namespace) -> int:
    from cnmlab.checks import report

    _need_root()
    code, sheet = grade(args.manifests, args.json, args.junit, args.profile, args.verbose)
    print(report.render_grades(sheet, color=sys.stdout.isatty()))
    if code not in (0, 1):
        print(f"cnmlab: pytest ended with exit code {code}", file=sys.stderr)
        return 1
    return 0 if sheet.get("ok") and code == 0 else 1


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


def conform_docker(profile: Any, quiet: bool = False) -> tuple[str, list[Any], dict[str, float]]:
    """Real Docker: a fresh lab, dockerd in its manual host, the topology, the checks."""
    from cnmlab.checks import conformance
    from cnmlab.checks import dockerd
    from cnmlab.checks.dockerd import DockerDaemon, missing_tools
    from cnmlab.errors import FeatureMissing
    from cnmlab.lab import Lab

    missing = missing_tools()
    if missing:
        raise FeatureMissing(f"cannot run real Docker: missing {', '.join(missing)} "
                             "(apt-get install docker.io busybox-static)")
    t0 = time.monotonic()
    name = _conform_name()
    lab = Lab(name)
    daemon = None
    try:
        host = lab.add_host("docker", default_bridge=False, firewall="manual")
        daemon = DockerDaemon(name, host.netns, os.path.join(dockerd.DAEMONS_DIR, name),
                              cache_dir=dockerd.IMAGE_CACHE, quiet=quiet)
        daemon.start()
        t1 = time.monotonic()
        target = conformance.build_docker(daemon, profile, upstream=lab.upstream_netns)
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
            lab.down()
    return (f"docker {version or '?'} (dockerd in {host.netns})", results,
            {"daemon": t1 - t0, "build": t2 - t1, "checks": t3 - t2,
             "total": time.monotonic() - t0})


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
    else:
        raise InvalidInput(f"--target {args.target!r}: use engine, docker, docker:SOCKET or "
                           f"plugin:FILE.py:CLASS")
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
