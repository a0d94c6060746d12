"""The contract shared by checks, targets, labs, the TUI and the pytest plugin.

A **target** says where sandboxes are (a namespace reference per sandbox, plus what it claims:
networks and addresses, hosts and the address published ports answer on, an upstream observer)
and which checks apply to it (its conformance ``profile``). A **check** is declarative data,
``{"reachable": {"from": "web", "to": "db"}}``, run by the function registered for its kind
against a target; it returns a ``CheckResult`` that says what was expected, what was observed,
and one line a learner can act on. Labs, grading and conformance all go through
``cnmlab.checks.kinds.run_checks``, where every built-in kind is registered.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from cnmlab.checks.nsref import NsRef
from cnmlab.constants import UPSTREAM, UPSTREAM_WEB  # the fake internet's observer, its "web"
from cnmlab.errors import CnmError


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


def registered() -> dict[str, CheckFn]:
    """Every kind registered so far (``cnmlab.checks.kinds`` imports the built-in ones)."""
    return _registry
