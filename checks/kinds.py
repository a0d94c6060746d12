"""The check kinds, all registered, and the one way to run a check.

The built-in kinds live in ``library`` (state, reachability, DNS, firewall, VXLAN on the wire)
and ``packets`` (Scapy, imported on first use) and ``plugincalls`` (what a served plugin was
asked, lab 10); each registers itself with ``api.check_kind``
when its module is imported, and this module imports them: it is the registration table, the
way ``cnmlab.drivers`` is for drivers. Everything that runs or validates checks (labs,
grading, conformance, targets) comes here, so no kind can be missing, and the contract in
``api`` never has to import the kinds that implement it.
"""
from __future__ import annotations

from typing import Any

from cnmlab.checks import library, packets, plugincalls
from cnmlab.checks.api import CheckResult, Target, registered
from cnmlab.errors import CnmError, InvalidInput

BUILTIN_MODULES = (library, packets, plugincalls)


def kinds() -> list[str]:
    return sorted(registered())


def parse_spec(spec: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """``{"kind": {params}}`` -> (kind, params), with a clear error for anything else."""
    if not isinstance(spec, dict) or len(spec) != 1:
        raise InvalidInput(f"a check is one mapping {{kind: {{...}}}}, got {spec!r}")
    kind, params = next(iter(spec.items()))
    table = registered()
    if kind not in table:
        raise InvalidInput(f"unknown check {kind!r}; known: {', '.join(sorted(table))}")
    if params is None:
        params = {}
    if not isinstance(params, dict):
        raise InvalidInput(f"check {kind}: parameters must be a mapping")
    return kind, params


def run_check(target: Target, spec: dict[str, Any]) -> CheckResult:
    """Run one check; whatever goes wrong inside it is a failed result with a one-line reason
    (a bad spec, a gone namespace, a bug in the check itself), never an exception, so a grade
    sheet or a lab step always gets its row."""
    try:
        kind, params = parse_spec(spec)
    except InvalidInput as e:
        label = next(iter(spec), "check") if isinstance(spec, dict) and spec else "check"
        return CheckResult(check=str(label), kind=str(label), ok=False, expected=str(spec),
                           observed="error", reason=str(e))
    if target.profile and kind not in target.profile:
        return CheckResult(check=kind, kind=kind, ok=True, expected="-", observed="-",
                           reason=f"not in the {target.name} profile", skipped=True)
    try:
        return registered()[kind](target, params)
    except CnmError as e:
        what = describe(kind, params)
        return CheckResult(check=what, kind=kind, ok=False, expected=what,
                           observed="the check could not run", reason=str(e))
    except Exception as e:  # a bug in a check (or an instructor's python check)
        text = " ".join(str(e).split())[:300]
        what = describe(kind, params)
        return CheckResult(check=what, kind=kind, ok=False, expected=what,
                           observed="the check could not run",
                           reason=f"the check crashed: {type(e).__name__}: {text}")


def describe(kind: str, params: dict[str, Any]) -> str:
    """A check as one line a learner reads (``reachable from=red to=10.0.0.2``), never a dict."""
    def value(v: Any) -> str:
        if isinstance(v, dict):
            return "/".join(str(x) for x in v.values())
        if isinstance(v, list):
            return ",".join(value(x) for x in v)
        return str(v)

    return " ".join([kind] + [f"{k}={value(v)}" for k, v in params.items()])


def run_checks(target: Target, specs: list[dict[str, Any]]) -> list[CheckResult]:
    return [run_check(target, s) for s in specs]
