"""The ``plugin-calls`` check: which calls a served plugin received, in order, and how it answered.

A learner writing a driver (lab 10) first needs to see Docker talk to it. The plugin's call log
(``NAME.sock.log`` beside its socket, written by ``cnmlab.plugin.sdk``) is the record: this
check passes when the named calls appear in it in that order (others may come between), each
answered without an error.

    - plugin-calls: {plugin: "{lab}-mydriver", calls: [Activate, GetCapabilities, CreateNetwork]}

A call is named as in the log (``NetworkDriver.Join``) or by its last part (``Join``).
"""
from __future__ import annotations

import json
from typing import Any

from cnmlab.checks.api import CheckResult, Target, check_kind
from cnmlab.checks.library import PARAMS, ParamError
from cnmlab.plugin import discovery

PARAMS["plugin-calls"] = {"required": ["plugin", "calls"], "optional": []}


def _short(call: str) -> str:
    return call.split(".", 1)[-1]


def _error_of(entry: dict[str, Any]) -> str | None:
    answer = entry.get("answer") or {}
    err = answer.get("Err") or answer.get("Error") if isinstance(answer, dict) else None
    return str(err) if err else None


@check_kind("plugin-calls")
def plugin_calls(target: Target, params: dict[str, Any]) -> CheckResult:
    name, want = params.get("plugin"), params.get("calls")
    if not isinstance(name, str) or not name:
        raise ParamError("check plugin-calls: plugin must be a plugin's name", "plugin")
    if not isinstance(want, list) or not want or not all(isinstance(c, str) for c in want):
        raise ParamError("check plugin-calls: calls must be a list of call names", "calls")
    label = f"plugin-calls {name}: {', '.join(want)}"
    expected = f"{name} received {' then '.join(want)} and answered each without an error"
    path = discovery.socket_path(name) + ".log"
    try:
        with open(path) as f:
            log = [json.loads(line) for line in f if line.strip()]
    except FileNotFoundError:
        return CheckResult(label, "plugin-calls", False, expected, "no call log",
                           f"nothing has served plugin {name} yet: start it with 'cnmlab "
                           f"plugin serve FILE.py:CLASS --name {name} ...'")
    except (OSError, ValueError) as e:
        return CheckResult(label, "plugin-calls", False, expected, "unreadable call log",
                           f"{path}: {e}")
    seen = [_short(str(e.get("call", ""))) for e in log]
    observed = ", ".join(seen[-12:]) if seen else "no calls yet"
    if len(seen) > 12:
        observed = "..., " + observed
    i, last_error = 0, None
    for entry in log:  # each wanted call in turn; a failed attempt may be retried later
        if i < len(want) and _short(str(entry.get("call", ""))) == _short(want[i]):
            err = _error_of(entry)
            if err is None:
                i, last_error = i + 1, None
            else:
                last_error = err
    if i == len(want):
        return CheckResult(label, "plugin-calls", True, expected, observed, "")
    missing = _short(want[i])
    if last_error is not None:
        return CheckResult(label, "plugin-calls", False, expected,
                           f"{observed}; {missing} answered: {last_error}",
                           f"your plugin answered {missing} with an error: see 'cnmlab plugin "
                           f"log {name}' and fix that method")
    return CheckResult(label, "plugin-calls", False, expected, observed,
                       f"{missing} never reached {name} after {', '.join(want[:i]) or 'start'}:"
                       f" the Docker command that causes it has not run against this plugin "
                       f"(or failed before it)")
