"""A small typed facade over IPVS (the kernel's L4 load balancer), next to ``netlink``.

Docker's service VIPs are IPVS virtual services in a load-balancer namespace: a VIP:port (or a
firewall mark, for the ingress routing mesh), a scheduler (Docker uses ``rr``) and real servers
reached by masquerading (NAT). This module talks to the kernel through pyroute2's ``IPVS``
generic-netlink API (the same messages ``ipvsadm`` sends), so the engine needs no ``ipvsadm``
binary; learners still use ``ipvsadm -Ln`` to look, and see what this made.

IPVS state is per network namespace. pyroute2 binds a socket to the namespace of the thread
that opens it, so every call here opens its socket *inside* the wanted namespace (two setns(2))
and closes it: no socket can drift into the root namespace. Errors become cnmlab errors naming
the service.
"""
from __future__ import annotations

import errno
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from pyroute2 import IPVS, IPVSDest, IPVSService
from pyroute2.netlink.exceptions import NetlinkError

from cnmlab.kernel import netns
from cnmlab.errors import FeatureMissing, KernelError, ObjectExists, ObjectNotFound

PROTOS = {"tcp": socket.IPPROTO_TCP, "udp": socket.IPPROTO_UDP}
_PROTO_NAMES = {v: k for k, v in PROTOS.items()}
#: IP_VS_CONN_F_FWD_MASK values: how a real server is reached (ipvsadm -m / -i / -g)
FORWARD = {"masq": 0, "local": 1, "tunnel": 2, "route": 3}
_FORWARD_NAMES = {v: k for k, v in FORWARD.items()}
SCHEDULERS = ("rr", "wrr", "lc", "wlc", "lblc", "lblcr", "dh", "sh", "sed", "nq")


@dataclass(frozen=True)
class VirtualService:
    """``-t VIP:PORT`` / ``-u VIP:PORT`` (proto, vip, port) or ``-f MARK`` (fwmark)."""

    proto: str = "tcp"
    vip: str | None = None
    port: int = 0
    fwmark: int = 0

    def __str__(self) -> str:
        if self.fwmark:
            return f"FWM {self.fwmark}"
        return f"{self.proto.upper()} {self.vip}:{self.port}"

    def _request(self, **extra: Any) -> IPVSService:
        if self.fwmark:
            # the kernel wants a netmask on a full entry; pyroute2 adds it only with an address
            return IPVSService(fwmark=self.fwmark, af=socket.AF_INET,
                               netmask="255.255.255.255", **extra)
        if self.proto not in PROTOS or not self.vip or not 0 < self.port < 65536:
            raise ValueError(f"virtual service {self!s}: needs tcp|udp, an address and a port")
        return IPVSService(addr=self.vip, port=self.port, protocol=PROTOS[self.proto], **extra)


@dataclass
class RealServer:
    ip: str
    port: int
    forward: str = "masq"
    weight: int = 1
    active: int = 0  # connections in ESTABLISHED
    inactive: int = 0


@dataclass
class ServiceState:
    """One virtual service as the kernel holds it (what ``ipvsadm -Ln`` prints)."""

    service: VirtualService
    scheduler: str
    servers: list[RealServer] = field(default_factory=list)


def _error(e: NetlinkError, what: str) -> Exception:
    if e.code == errno.EEXIST:
        return ObjectExists(f"IPVS {what}: already exists")
    if e.code in (errno.ENOENT, errno.ESRCH, errno.ENODEV):
        return ObjectNotFound(f"IPVS {what}: no such service or real server")
    if e.code == errno.EOPNOTSUPP:
        return FeatureMissing(f"IPVS {what}: the running kernel does not support this")
    return KernelError(f"IPVS {what}: {e}")


class Ipvs:
    """IPVS in one namespace (by name or open fd; neither: the calling thread's)."""

    def __init__(self, ns: str | None = None, *, fd: int | None = None) -> None:
        self.ns = ns
        self.fd = fd  # an open namespace file instead of a name (a check's NsRef)

    @contextmanager
    def _sock(self, what: str) -> Iterator[IPVS]:
        ctx = (netns.entered(fd=self.fd) if self.fd is not None else
               netns.entered(self.ns) if self.ns else _here())
        with ctx:
            try:
                sock = IPVS()
            except NetlinkError as e:
                raise FeatureMissing(f"IPVS in {self.ns or 'this namespace'}: the kernel has no "
                                     f"IPVS (modprobe ip_vs, or use `cnmlab vm`): {e}") from None
            try:
                yield sock
            except NetlinkError as e:
                raise _error(e, what) from None
            finally:
                sock.close()

    # ---- services ----------------------------------------------------------------------
    def add_service(self, svc: VirtualService, scheduler: str = "rr") -> None:
        """``ipvsadm -A``: a virtual service with its scheduler (Docker: rr)."""
        if scheduler not in SCHEDULERS:
            raise ValueError(f"scheduler {scheduler!r}: one of {', '.join(SCHEDULERS)}")
        with self._sock(f"service {svc}") as s:
            s.service("add", service=svc._request(sched_name=scheduler))

    def delete_service(self, svc: VirtualService) -> None:
        with self._sock(f"service {svc}") as s:
            s.service("del", service=svc._request())

    # ---- real servers ------------------------------------------------------------------
    def add_server(self, svc: VirtualService, ip: str, port: int, forward: str = "masq",
                   weight: int = 1) -> None:
        """``ipvsadm -a -r IP:PORT -m``: a real server behind a service (NAT by default)."""
        with self._sock(f"real server {ip}:{port} of {svc}") as s:
            s.dest("add", service=svc._request(),
                   dest=IPVSDest(addr=ip, port=port, fwd_method=FORWARD[forward],
                                 weight=weight))

    def delete_server(self, svc: VirtualService, ip: str, port: int) -> None:
        """``ipvsadm -d``: no new connection goes to it from now on."""
        with self._sock(f"real server {ip}:{port} of {svc}") as s:
            s.dest("del", service=svc._request(), dest=IPVSDest(addr=ip, port=port))

    # ---- reading -----------------------------------------------------------------------
    def services(self) -> list[ServiceState]:
        """Every virtual service and its real servers (``ipvsadm -Ln``)."""
        out = []
        with self._sock("dump") as s:
            for msg in s.service("dump"):
                attrs = dict(msg.get("IPVS_CMD_ATTR_SERVICE")["attrs"])
                mark = int(attrs.get("IPVS_SVC_ATTR_FWMARK") or 0)
                vs = VirtualService(
                    proto=_PROTO_NAMES.get(attrs.get("IPVS_SVC_ATTR_PROTOCOL", 0), "tcp"),
                    vip=None if mark else attrs.get("IPVS_SVC_ATTR_ADDR"),
                    port=0 if mark else int(attrs.get("IPVS_SVC_ATTR_PORT") or 0),
                    fwmark=mark)
                state = ServiceState(vs, str(attrs.get("IPVS_SVC_ATTR_SCHED_NAME", "")))
                for d in s.dest("dump", service=vs._request()):
                    da = dict(d.get("IPVS_CMD_ATTR_DEST")["attrs"])
                    flags = int(da.get("IPVS_DEST_ATTR_FWD_METHOD") or 0) & 0x7
                    state.servers.append(RealServer(
                        ip=str(da.get("IPVS_DEST_ATTR_ADDR")),
                        port=int(da.get("IPVS_DEST_ATTR_PORT") or 0),
                        forward=_FORWARD_NAMES.get(flags, str(flags)),
                        weight=int(da.get("IPVS_DEST_ATTR_WEIGHT") or 0),
                        active=int(da.get("IPVS_DEST_ATTR_ACTIVE_CONNS") or 0),
                        inactive=int(da.get("IPVS_DEST_ATTR_INACT_CONNS") or 0)))
                out.append(state)
        return out

    def service(self, svc: VirtualService) -> ServiceState | None:
        return next((s for s in self.services() if s.service == svc), None)


@contextmanager
def _here() -> Iterator[None]:
    yield
