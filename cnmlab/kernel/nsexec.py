"""Run a program inside a namespace.

``nsenter --net=PATH`` enters only the network namespace (a PID's or a named one), which is
what the firewall and the probes need. Interactive shells of cnmlab sandboxes use
``ip netns exec`` instead, because it also bind-mounts the sandbox's own resolv.conf
(``/etc/netns/NAME/resolv.conf``), just as Docker gives each container its own.
"""
from __future__ import annotations

import subprocess
from collections.abc import Sequence

from cnmlab.errors import CnmError, KernelError
from cnmlab.kernel import etcfiles, netns


def netns_path(ns: str) -> str:
    return ns if ns.startswith("/") else netns.path_of(ns)


def run(ns: str | None, argv: Sequence[str], *, input: str | None = None, timeout: float = 30,
        check: bool = True) -> subprocess.CompletedProcess[str]:
    cmd = list(argv) if ns is None else ["nsenter", f"--net={netns_path(ns)}", "--", *argv]
    try:
        proc = subprocess.run(cmd, input=input, capture_output=True, text=True, timeout=timeout)
    except FileNotFoundError:
        raise CnmError(f"{argv[0]} is not installed (see README: install the apt packages)") from None
    except subprocess.TimeoutExpired:
        raise KernelError(f"{' '.join(argv)} in {ns}: no answer after {timeout:g} s") from None
    if check and proc.returncode != 0:
        msg = (proc.stderr or proc.stdout).strip().splitlines()
        raise KernelError(f"{' '.join(argv)} in {ns} failed: {msg[-1] if msg else proc.returncode}")
    return proc


def shell_argv(ns: str, command: Sequence[str]) -> list[str]:
    """argv that runs ``command`` in a named cnmlab namespace with its own /etc overlay.

    Inside a batch the overlay's files may still be on their way (``etcfiles``): they are
    waited for here, since ``ip netns exec`` mounts only what is there when it starts."""
    etcfiles.settle()
    return ["ip", "netns", "exec", ns, *command]
