"""The contract shared by checks, targets, labs, the TUI and the pytest plugin.

A **target** says where sandboxes are (a namespace reference per sandbox, plus what it claims:
networks and addresses, hosts and the address published ports answer on, an upstream observer)
and which checks apply to it (its conformance ``profile``). A **check** is declarative data,
``{"reachable": {"from": "web", "to": "db"}}``, run by the function registered for its kind
against a target; it returns a ``CheckResult`` that says what was expected, what was observed,
and one line a learner can act on. Labs, grading and conformance all go through ``run_checks``.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from cnmlab.checks.nsref import NsRef
from cnmlab.constants import UPSTREAM, UPSTREAM_WEB  # the fake internet's observer, its "web"
from cnmlab.errors import CnmError, InvalidInput


UPSTREAM_NET = "internet"  # the network name under which the upstream's address is listed


@dataclass
class SandboxRef:
    """A sandbox as a check sees it, whoever built it (cnmlab, Docker, a learner by hand)."""

    name: str
    ns: NsRef
    addresses: dict[str, str] = field(default_factory=dict)  # network name -> IPv4 (no prefix)
    host: str | None = None  # the host (daemon) it runs on

    def ip(self, network: str | None = None) -> str:
        if network is not None:
            try:
                return self.addresses[network]
            except KeyError:
                raise CnmError(f"{self.name} has no address on network {network}") from None
        if not self.addresses:
            raise CnmError(f"{self.name} has no address")
        return next(iter(self.addresses.values()))


@dataclass
class HostRef:
    name: str
    ns: NsRef
    public_ip: str | None = None  # where published ports answer, as seen from upstream


class Target(Protocol):
    name: str
    profile: frozenset[str]  # check kinds that apply; empty: all

    def sandboxes(self) -> dict[str, SandboxRef]: ...

    def hosts(self) -> dict[str, HostRef]: ...

    def upstream(self) -> SandboxRef | None:
        """An observer outside every host (cnmlab's upstream namespace), if the target has one."""


@dataclass
class CheckResult:
    check: str  # one-line label: "reachable web -> db (icmp)"
    kind: str
    ok: bool
    expected: str
    observed: str
    reason: str  # what a learner should look at when it failed; "" when ok
    table: Any = None  # a TruthTable for matrix checks
    skipped: bool = False

    def to_json(self) -> dict[str, Any]:
        return {"check": self.check, "kind": self.kind, "ok": self.ok, "skipped": self.skipped,
                "expected": self.expected, "observed": self.observed, "reason": self.reason,
                "table": self.table.to_dict() if self.table is not None else None}


CheckFn = Callable[[Target, dict[str, Any]], CheckResult]
_registry: dict[str, CheckFn] = {}


def check_kind(name: str) -> Callable[[CheckFn], CheckFn]:
    """Register a check kind (a decorator); labs refer to kinds by these names."""
    def deco(fn: CheckFn) -> CheckFn:
        _registry[name] = fn
        return fn
    return deco


def kinds() -> list[str]:
    _load_builtin()
    return sorted(_registry)


def _load_builtin() -> None:
    import cnmlab.checks.library  # noqa: F401  (registers the built-in kinds)
    import cnmlab.checks.packets  # noqa: F401  (and the packet-level ones, Scapy on use)


def parse_spec(spec: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """``{"kind": {params}}`` -> (kind, params), with a clear error for anything else."""
    _load_builtin()
    if not isinstance(spec, dict) or len(spec) != 1:
        raise InvalidInput(f"a check is one mapping {{kind: {{...}}}}, got {spec!r}")
    kind, params = next(iter(spec.items()))
    if kind not in _registry:
        raise InvalidInput(f"unknown check {kind!r}; known: {', '.join(sorted(_registry))}")
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
        return _registry[kind](target, params)
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
