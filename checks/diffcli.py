"""``cnmlab diff SCENARIO``: what Docker would have built, next to what the engine built.

Runs a shipped scenario (``cnmlab diff --list``) or a scenario file on the engine and on real
Docker 20.10 (started in a namespace of a throwaway lab, as ``cnmlab conform`` does), prints
the differences section by section, marks the deliberate ones with their reason, and exits 1
when any other difference is found. Nothing is left behind on either side.
"""
from __future__ import annotations

import argparse
import json
import os
from typing import Any

from cnmlab.errors import FeatureMissing, NotRootError


def register(subparsers: Any) -> None:
    sp = subparsers.add_parser(
        "diff", help="compare the engine's kernel state with real Docker's after the same "
                     "commands",
        description="Run a scenario (a short list of docker commands) on cnmlab's engine and "
                    "on real Docker, and print the normalised difference of their kernel state.")
    sp.add_argument("scenario", nargs="*", metavar="SCENARIO",
                    help="a shipped scenario name or a scenario file (default: all shipped)")
    sp.add_argument("--list", action="store_true", help="list the shipped scenarios")
    sp.add_argument("--json", metavar="OUT", help="write every difference as JSON")
    sp.add_argument("--against", metavar="LAB[/HOST]",
                    help="compare a running lab (e.g. what you built by hand) instead of a "
                         "fresh engine: what would Docker have built here?")
    sp.set_defaults(func=cmd_diff)


def cmd_diff(args: argparse.Namespace) -> int:
    from cnmlab.checks import diff, scenario

    if args.list:
        for name in scenario.available():
            print(f"{name:22} {scenario.load(name).description}")
        return 0
    if os.geteuid() != 0:
        raise NotRootError("cnmlab needs root to create namespaces: run it with sudo")
    known = diff.load_known()
    results = []
    missing: list[str] = []
    for name in args.scenario or scenario.available():
        sc = scenario.load(name)
        for step in sc.steps:
            print(f"  $ {step}")
        try:
            if args.against:
                lab_name, _, host = args.against.partition("/")
                result = diff.run_against(sc, lab_name, host or None, known)
            else:
                result = diff.diff(sc, known)
        except FeatureMissing as e:
            if args.scenario:
                raise
            # running every shipped scenario: one this kernel cannot run (ipvs) is reported,
            # not compared, and the run fails; the others still run
            print(f"scenario {name}: not run: {e} (run it in the full-kernel VM: "
                  f"cnmlab vm run -- cnmlab diff {name})")
            missing.append(name)
            continue
        print(result.render())
        results.append(result)
    if args.json:
        with open(args.json, "w") as f:
            json.dump([r.to_json() for r in results], f, indent=2)
    return 0 if all(r.ok for r in results) and not missing else 1
