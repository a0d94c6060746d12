"""A small setup built by hand with real namespaces, as a learner would for a grading exercise.

Host namespace ``h`` holds bridge ``br0`` (10.77.0.1/24) with sandboxes ``a`` (.2) and ``b``
(.3), and bridge ``br1`` (10.78.0.1/24) with ``c`` (.2). The host does not forward by default,
so ``c`` is cut off from ``a`` and ``b``; ``forward(True)`` lets it route between the bridges.
Every name carries the test process's PID (tests run in parallel on one machine).
"""
from __future__ import annotations

import os
import subprocess
import textwrap
from typing import Any

from cnmlab.kernel import netns, sysctl
from cnmlab.kernel.netlink import Netlink

ROLES = ("h", "a", "b", "c")
ADDR = {"a": "10.77.0.2", "b": "10.77.0.3", "c": "10.78.0.2"}


class HandBuilt:
    def __init__(self, tag: str) -> None:
        self.prefix = f"cnmt-{tag}-{os.getpid()}"
        self.names = {r: f"{self.prefix}-{r}" for r in ROLES}

    def __getitem__(self, role: str) -> str:
        return self.names[role]

    def build(self) -> "HandBuilt":
        from cnmlab.controller import setup_namespace

        try:
            for n in self.names.values():
                setup_namespace(n)
            with Netlink(self["h"]) as h:
                for br, gw in (("br0", "10.77.0.1/24"), ("br1", "10.78.0.1/24")):
                    h.add_bridge(br)
                    h.add_address(br, gw)
                    h.set_link(br, up=True)
                for sb, br, gw in (("a", "br0", "10.77.0.1"), ("b", "br0", "10.77.0.1"),
                                   ("c", "br1", "10.78.0.1")):
                    fd = netns.open_fd(self[sb])
                    try:
                        h.add_veth(f"v{sb}", "eth0", peer_ns_fd=fd)
                    finally:
                        os.close(fd)
                    h.set_link(f"v{sb}", master=br, up=True)
                    with Netlink(self[sb]) as s:
                        s.add_address("eth0", f"{ADDR[sb]}/24")
                        s.set_link("eth0", up=True)
                        s.add_route("default", gateway=gw)
        except BaseException:
            self.teardown()
            raise
        return self

    def teardown(self) -> None:
        for role in ROLES:
            netns.kill_processes(self[role])
            netns.delete(self[role])

    def forward(self, on: bool) -> None:
        sysctl.write("net.ipv4.ip_forward", int(on), ns=self["h"])

    def iptables(self, role: str, *args: str) -> None:
        subprocess.run(["ip", "netns", "exec", self[role], "iptables", "-w", *args], check=True,
                       capture_output=True, text=True)

    def flush(self) -> None:
        for role in ROLES:
            for chain in ("INPUT", "OUTPUT", "FORWARD"):
                self.iptables(role, "-F", chain)

    def submission(self, path: Any, extra: str = "") -> str:
        """The learner's submission file naming these namespaces (``extra`` appended)."""
        body = textwrap.dedent(f"""\
            sandboxes:
              a: {{netns: {self['a']}, addresses: {{lan: {ADDR['a']}}}}}
              b: {{netns: {self['b']}, addresses: {{lan: {ADDR['b']}}}}}
              c: {{netns: {self['c']}, addresses: {{dmz: {ADDR['c']}}}}}
            hosts:
              h: {{netns: {self['h']}}}
            """) + textwrap.dedent(extra)
        with open(path, "w") as f:
            f.write(body)
        return str(path)
