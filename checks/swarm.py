"""A real two-node Docker swarm as a check target: the reference for the overlay profile.

Two dockerd 20.10 (``checks.dockerd.DockerDaemon``) run in two host namespaces of one cnmlab
lab, plugged into the same underlay (a LAN with a router that NATs to the lab's upstream), as
``machine.md`` records working here: ``swarm init --advertise-addr`` on the first,
``swarm join`` on the second, attachable overlay networks created on the manager, and each
profile container run on the daemon of the host the profile names. The hosts' firewalls are
Docker's own (``firewall="manual"``: cnmlab writes no rule there).

``SwarmTarget`` answers the checks' questions from both Engine APIs at once: containers of
both nodes, the two hosts with their LAN addresses, the underlay's router, and the networks
with their VNIs (``com.docker.network.driver.overlay.vxlanid_list`` on the manager).
"""
from __future__ import annotations

import os
import time
from typing import Any

from cnmlab.checks import dockerd
from cnmlab.checks.api import HostRef, SandboxRef
from cnmlab.checks.docker_target import DockerTarget
from cnmlab.checks.dockerd import DockerDaemon
from cnmlab.checks.nsref import NsRef
from cnmlab.checks.targets import UNDERLAY_NET, UPSTREAM, UPSTREAM_NET, _vni
from cnmlab.constants import UPSTREAM_WEB
from cnmlab.errors import CnmError
from cnmlab.kernel import sysctl

class Swarm:
    """Start a swarm of ``hosts`` (names) inside ``lab``; ``stop()`` removes the daemons."""

    def __init__(self, lab: Any, hosts: list[str], quiet: bool = True,
                 underlay: tuple[str, str] = ("lan", "192.168.50.0/24"),
                 fresh_machines: bool = False) -> None:
        """``fresh_machines``: each host forwards nothing when its daemon starts, as a fresh
        machine; Docker then turns forwarding on and, because it had to, sets the FORWARD
        policy to DROP (``cnmlab diff`` compares that with the engine's hosts)."""
        self.fresh_machines = fresh_machines
        self.lab = lab
        self.hosts = hosts
        self.underlay = underlay  # (name, subnet) of the LAN the nodes share
        self.quiet = quiet
        self.daemons: dict[str, DockerDaemon] = {}
        self.timings: dict[str, float] = {}

    def start(self) -> "Swarm":
        t0 = time.monotonic()
        lan, subnet = self.underlay
        if lan not in {u.name for u in self.lab.underlays()}:
            self.lab.add_underlay(lan, subnet=subnet)
        for h in self.hosts:
            host = self.lab.add_host(h, underlay=lan, default_bridge=False,
                                     firewall="manual")
            if self.fresh_machines:
                sysctl.write_many({"net.ipv4.ip_forward": 0}, host.netns)
            name = f"{self.lab.name}-{h}"[:40]
            self.daemons[h] = DockerDaemon(name, host.netns,
                                           os.path.join(dockerd.DAEMONS_DIR, name),
                                           cache_dir=dockerd.IMAGE_CACHE, quiet=self.quiet)
        try:
            for d in self.daemons.values():
                d.start()
            t1 = time.monotonic()
            manager = self.manager
            addr = self.lab.host(self.hosts[0]).model.underlay_ip
            manager.docker("swarm", "init", "--advertise-addr", addr, timeout=60)
            token = manager.docker("swarm", "join-token", "-q", "worker").stdout.strip()
            for h in self.hosts[1:]:
                self.daemons[h].docker("swarm", "join", "--token", token,
                                       "--advertise-addr",
                                       self.lab.host(h).model.underlay_ip or "",
                                       f"{addr}:2377", timeout=60)
            self._wait_nodes(len(self.hosts))
            self.timings = {"daemons": t1 - t0, "swarm": time.monotonic() - t1}
        except BaseException:
            self.stop()
            raise
        return self

    @property
    def manager(self) -> DockerDaemon:
        return self.daemons[self.hosts[0]]

    def _wait_nodes(self, n: int, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            out = self.manager.docker("node", "ls", "--format", "{{.Status}}",
                                      check=False).stdout.split()
            if out.count("Ready") >= n:
                return
            if time.monotonic() > deadline:
                raise CnmError(f"swarm: {out.count('Ready')} of {n} nodes ready after "
                               f"{timeout:.0f}s")
            time.sleep(0.2)

    def network_create(self, name: str, driver: str = "overlay", **kw: Any) -> str:
        extra = {k: v for k, v in kw.items() if v}
        return self.manager.docker("network", "create", "--driver", driver, "--attachable",
                                   *(["--subnet", extra["subnet"]] if "subnet" in extra else []),
                                   *(["--internal"] if extra.get("internal") else []),
                                   *[a for k, v in (extra.get("options") or {}).items()
                                     for a in ("-o", f"{k}={v}" if v != "" else k)],
                                   name, timeout=60).stdout.strip()

    def run(self, host: str, name: str, network: str) -> str:
        return self.daemons[host].run(name, network)

    def stop(self) -> None:
        for d in reversed(list(self.daemons.values())):
            try:
                d.stop()
            except CnmError:
                pass


class SwarmTarget:
    """The swarm's containers, hosts, underlay and networks in the ``api.Target`` shape."""

    def __init__(self, swarm: Swarm) -> None:
        self.swarm = swarm
        self.name = f"docker swarm of {', '.join(swarm.hosts)}"
        self.apis = {h: DockerTarget(d) for h, d in swarm.daemons.items()}
        self.profile: frozenset[str] = frozenset()

    def sandboxes(self) -> dict[str, SandboxRef]:
        out = {}
        for h, api in self.apis.items():
            for name, sb in api.sandboxes().items():
                out[name] = SandboxRef(name, NsRef(pid=sb.pid), dict(sb.addresses), h)
        return out

    def hosts(self) -> dict[str, HostRef]:
        return {h: HostRef(h, NsRef(name=self.swarm.lab.host(h).netns),
                           self.swarm.lab.host(h).model.underlay_ip)
                for h in self.swarm.hosts}

    def upstream(self) -> SandboxRef | None:
        return SandboxRef(UPSTREAM, NsRef(name=self.swarm.lab.upstream_netns),
                          {UPSTREAM_NET: UPSTREAM_WEB})

    def underlays(self) -> dict[str, SandboxRef]:
        return {u.name: SandboxRef(f"underlay:{u.name}", NsRef(name=u.netns),
                                   {UNDERLAY_NET: u.gateway})
                for u in self.swarm.lab.underlays()}

    def published(self) -> list[Any]:
        return []

    def networks(self) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        manager = self.swarm.hosts[0]
        for h in [manager, *self.swarm.hosts[1:]]:
            for n in self.apis[h].networks().values():
                out.setdefault(n.name, {
                    "host": h, "device": n.bridge, "subnet": n.subnet, "gateway": n.gateway,
                    "icc": n.options.get("com.docker.network.bridge.enable_icc", "true")
                    != "false", "internal": n.internal, "driver": n.driver,
                    "vni": _vni(n.options)})
        return out
