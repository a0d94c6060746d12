"""Read a real Docker Engine as a check target, through its API on the unix socket (stdlib only).

``DockerTarget`` answers the same questions the checks ask of a cnmlab lab: which sandboxes
(containers) exist, where their network namespaces are, which addresses they have on which
networks, what the networks look like (driver, subnet, gateway, bridge name) and which ports
are published.
"""
from __future__ import annotations

import contextlib
import http.client
import ipaddress
import json
import os
import socket
import subprocess
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cnmlab.constants import OPT_BRIDGE_NAME
from cnmlab.errors import CnmError

API_TIMEOUT = 5.0


@dataclass(frozen=True)
class EndpointInfo:
    network: str
    network_id: str
    ip: str
    prefixlen: int
    gateway: str
    mac: str


@dataclass(frozen=True)
class SandboxInfo:
    name: str
    id: str
    pid: int
    netns_path: str
    addresses: dict[str, str]  # network name -> IPv4 address
    endpoints: dict[str, EndpointInfo] = field(default_factory=dict)


@dataclass(frozen=True)
class NetworkInfo:
    name: str
    id: str
    driver: str
    subnet: str | None
    gateway: str | None
    internal: bool
    options: dict[str, str]
    bridge: str | None  # the Linux bridge in the host namespace, for bridge networks
    scope: str = "local"


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float):
        super().__init__("docker", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(self.timeout)
        try:
            s.connect(self._path)
        except OSError:
            s.close()
            raise
        self.sock = s


class DockerTarget:
    """A Docker Engine seen through its API: ``DockerTarget(daemon)`` or ``DockerTarget(sock)``.

    ``daemon`` is a ``checks.dockerd.DockerDaemon`` (its socket and host namespace are known);
    a socket path or ``unix://`` address also works, with ``host_netns_path`` given or found
    from a ``docker.pid`` next to the socket.
    """

    def __init__(self, daemon_or_socket: Any, *, host_netns_path: str | None = None,
                 timeout: float = API_TIMEOUT):
        self.timeout = timeout
        if isinstance(daemon_or_socket, (str, os.PathLike)):
            sock = os.fspath(daemon_or_socket)
            if sock.startswith("unix://"):
                sock = sock[len("unix://"):]
            self.socket_path = sock
            self.host_netns_path = host_netns_path or self._netns_from_pidfile(sock)
        else:
            self.socket_path = str(daemon_or_socket.socket)
            self.host_netns_path = host_netns_path or daemon_or_socket.host_netns_path

    @staticmethod
    def _netns_from_pidfile(sock: str) -> str | None:
        try:
            pid = int((Path(sock).parent / "docker.pid").read_text().strip())
        except (OSError, ValueError):
            return None
        return f"/proc/{pid}/ns/net" if os.path.exists(f"/proc/{pid}") else None

    # -- the API -----------------------------------------------------------------------------
    def get(self, path: str, **query: Any) -> Any:
        """GET an Engine API path and decode its JSON; CnmError when the daemon is unreachable."""
        if query:
            path += "?" + urllib.parse.urlencode(query)
        conn = _UnixHTTPConnection(self.socket_path, self.timeout)
        try:
            conn.request("GET", path)
            resp = conn.getresponse()
            body = resp.read()
        except (OSError, http.client.HTTPException) as e:
            reason = "timed out" if isinstance(e, TimeoutError) else (
                e.strerror if isinstance(e, OSError) and e.strerror else str(e) or type(e).__name__)
            raise CnmError(f"cannot reach the Docker Engine at unix://{self.socket_path}: "
                           f"{reason} (is that dockerd running?)") from None
        finally:
            conn.close()
        if resp.status != 200:
            try:
                msg = json.loads(body).get("message", "")
            except ValueError:
                msg = body.decode(errors="replace").strip()
            raise CnmError(f"Docker Engine GET {path}: {resp.status} {msg}")
        return json.loads(body)

    def containers(self) -> list[dict]:
        """``docker inspect`` of every running container."""
        return [self.get(f"/containers/{c['Id']}/json") for c in self.get("/containers/json")]

    # -- what the checks read ----------------------------------------------------------------
    def sandboxes(self) -> dict[str, SandboxInfo]:
        found = {}
        for c in self.containers():
            name = c["Name"].lstrip("/")
            pid = int(c["State"]["Pid"])
            endpoints = {}
            for net, ep in (c["NetworkSettings"].get("Networks") or {}).items():
                endpoints[net] = EndpointInfo(
                    network=net, network_id=ep.get("NetworkID", ""),
                    ip=ep.get("IPAddress", ""), prefixlen=int(ep.get("IPPrefixLen") or 0),
                    gateway=ep.get("Gateway", ""), mac=ep.get("MacAddress", ""))
            found[name] = SandboxInfo(
                name=name, id=c["Id"], pid=pid, netns_path=f"/proc/{pid}/ns/net",
                addresses={n: e.ip for n, e in endpoints.items() if e.ip},
                endpoints=endpoints)
        return found

    def networks(self) -> dict[str, NetworkInfo]:
        found = {}
        gateways: dict[str, str] | None = None
        for n in self.get("/networks"):
            configs = (n.get("IPAM") or {}).get("Config") or []
            v4 = next((c for c in configs if ":" not in c.get("Subnet", "")), {})
            options = dict(n.get("Options") or {})
            bridge = None
            if n.get("Driver") == "bridge":
                bridge = options.get(OPT_BRIDGE_NAME) or f"br-{n['Id'][:12]}"
            gateway = v4.get("Gateway")
            if v4.get("Subnet") and not gateway:
                # 20.10 leaves the default bridge's IPAM gateway empty unless --bip is given:
                # take it from an endpoint, else from the bridge's address on the host.
                if gateways is None:
                    gateways = {e.network_id: e.gateway for s in self.sandboxes().values()
                                for e in s.endpoints.values() if e.gateway}
                gateway = gateways.get(n["Id"]) or self._bridge_address(bridge, v4["Subnet"])
            found[n["Name"]] = NetworkInfo(
                name=n["Name"], id=n["Id"], driver=n.get("Driver", ""),
                subnet=v4.get("Subnet"), gateway=gateway,
                internal=bool(n.get("Internal")), options=options, bridge=bridge,
                scope=n.get("Scope", "local"))
        return found

    def _bridge_address(self, bridge: str | None, subnet: str) -> str | None:
        if not bridge or not self.host_netns_path:
            return None
        try:
            out = subprocess.run(["nsenter", f"--net={self.host_netns_path}", "ip", "-o", "-4",
                                  "addr", "show", "dev", bridge], capture_output=True,
                                 text=True, timeout=self.timeout).stdout
        except (OSError, subprocess.TimeoutExpired):
            return None
        net = ipaddress.ip_network(subnet, strict=False)
        for word in out.split():
            if "/" in word:
                with contextlib.suppress(ValueError):
                    iface = ipaddress.ip_interface(word)
                    if iface.ip in net:
                        return str(iface.ip)
        return None

    def published(self) -> list[tuple[str, int, int, str]]:
        """(container, host port, container port, proto) for every published port."""
        found = set()
        for c in self.containers():
            name = c["Name"].lstrip("/")
            for key, bindings in (c["NetworkSettings"].get("Ports") or {}).items():
                port, _, proto = key.partition("/")
                for b in bindings or []:
                    if b.get("HostPort"):
                        found.add((name, int(b["HostPort"]), int(port), proto or "tcp"))
        return sorted(found)
