"""Docker's embedded DNS server (127.0.0.11), rebuilt for cnmlab sandboxes.

One resolver process per lab (``python -m cnmlab.dns --lab NAME``) serves every sandbox whose
model has ``dns=True`` (it is attached to a user-defined network), the way dockerd's
``libnetwork/resolver.go`` does for each container:

* it opens a UDP socket and a TCP listener *inside the sandbox's namespace* (a helper thread
  setns()es there, creates the sockets and ends; a socket stays in the namespace it was made in),
  bound to 127.0.0.11 on random ports;
* it installs Docker's nat rules in that namespace with ``iptables-restore --noflush`` (the
  first time; later namespaces get a byte-for-byte copy of those rules over nfnetlink,
  ``kernel.nftcopy``, without a fork), so ``iptables -t nat -S`` in the sandbox reads like in
  a Docker container::

      -A OUTPUT -d 127.0.0.11/32 -j DOCKER_OUTPUT
      -A POSTROUTING -d 127.0.0.11/32 -j DOCKER_POSTROUTING
      -A DOCKER_OUTPUT -d 127.0.0.11/32 -p tcp -m tcp --dport 53 -j DNAT --to-destination 127.0.0.11:<tcp>
      -A DOCKER_OUTPUT -d 127.0.0.11/32 -p udp -m udp --dport 53 -j DNAT --to-destination 127.0.0.11:<udp>
      -A DOCKER_POSTROUTING -s 127.0.0.11/32 -p tcp -m tcp --sport <tcp> -j SNAT --to-source :53
      -A DOCKER_POSTROUTING -s 127.0.0.11/32 -p udp -m udp --sport <udp> -j SNAT --to-source :53

  Fallback: when the rules cannot be installed (no iptables, no nat support in the kernel), the
  resolver binds 127.0.0.11:53 directly instead, which resolves the same but shows no rules.

It answers A queries for the container name, its aliases, its short ID and ``<name>.<network>``
of containers that share a user-defined network with the asking sandbox (the first of its
networks, in join order, that knows the name wins, as in Docker); several records come back
shuffled, with TTL 600. AAAA queries for those names get an empty NOERROR, PTR queries for their
addresses get ``<name>.<network>``. Anything else is forwarded to the lab's upstream DNS server
(198.51.100.53) *from inside the sandbox's namespace*, as Docker does for non-loopback servers
(``r.backend.ExecFunc(extConnect)``): it works when the sandbox's NAT path to the internet works,
and the answer is SERVFAIL when nothing answers within ``FORWARD_TIMEOUT``.

The process also plays the lab's fake internet DNS server on 198.51.100.53:53 in the upstream
namespace (``UPSTREAM_RECORDS``, everything else NXDOMAIN); ``--upstream`` runs only that.

It follows the lab's state file (polled every 200 ms, and at once on SIGUSR1, which
``ensure_running`` sends after each join), opens sockets for new dns sandboxes, closes those of
removed ones and exits when the state file disappears. Its main thread lives in the lab's
upstream namespace (or its first host's), so the engine's teardown, which SIGKILLs every process
in the lab's namespaces, stops it too.
"""
from __future__ import annotations

import argparse
import contextlib
import errno
import ipaddress
import os
import random
import selectors
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from cnmlab import state
from cnmlab.cluster import Peer
from cnmlab.constants import CONTROL_PLANE_KEY, EMBEDDED_DNS, UPSTREAM_DNS, UPSTREAM_WEB
from cnmlab.dnswire import (AAAA, FORMERR, IN, NOTIMP, NXDOMAIN, PTR, SERVFAIL, A, Query,
                            build_response, error_reply, message_id, parse_query, tcp_frame,
                            tcp_messages, with_id)
from cnmlab.kernel import netns, nftcopy, procs
from cnmlab.errors import CnmError
from cnmlab.model import LabState
from cnmlab.remotenames import RemoteNames

TTL = 600
POLL = 0.2
PREPARE_WORKERS = 4  # sandboxes whose sockets and nat rules are made at once
#: how long a new resolver may take to serve before the join returns anyway (it returns as
#: soon as it serves: a second here, tens of seconds on the VM lane's emulated CPU)
START_TIMEOUT = 120.0
FORWARD_TIMEOUT = 1.5  # below glibc's and dig's 5 s, so a dead upstream reads SERVFAIL
UPSTREAM_RECORDS = {"example.com": UPSTREAM_WEB, "www.example.com": UPSTREAM_WEB,
                    "web.example": UPSTREAM_WEB, "dns.example": UPSTREAM_DNS}


def _reply(q: Query, rcode: int = 0, addrs: list[str] | None = None, ptr: str | None = None,
           authoritative: bool = False) -> bytes:
    """An answer to ``q`` with Docker's TTL (600 s) on every record."""
    return build_response(q, rcode, addrs or [], ptr, authoritative, ttl=TTL)


# ---- names ----------------------------------------------------------------------------------
@dataclass
class DnsSandbox:
    """What the resolver knows about one sandbox it serves."""

    key: str  # sandbox id
    name: str
    netns: str
    networks: list[str]  # ids of its user-defined networks, in join order


@dataclass
class Names:
    """Per user-defined network (by id): name -> addresses, address -> PTR name."""

    a: dict[str, dict[str, list[str]]] = field(default_factory=dict)
    ptr: dict[str, dict[str, str]] = field(default_factory=dict)


def discoverable(net: Any) -> bool:
    """Docker's rule: names resolve on user-defined networks, never on the default bridge.

    The controller decided it from the driver's capability when the network was created.
    """
    return bool(net.embedded_dns)


def table_key(host: Any, net: Any) -> str:
    """Which name table a sandbox on ``host`` reads for ``net``: a global-scope network's
    table is per host (its own endpoints from the local state, every other host's from the
    control plane), a local network's is the network's own."""
    return f"{host.name}/{net.id}" if net.scope == "global" else net.id


def build_names(lab: LabState,
                remote: Iterable[Peer] = ()) -> tuple[dict[str, DnsSandbox], Names]:
    """The resolver's tables from this machine's state and, for global-scope networks, the
    endpoints other hosts published in the control plane (``remote``).

    A global network's table for host H takes H's own endpoints from the state and nothing
    else from it: another host's endpoints come only from the store, even when that host's
    state happens to sit in the same file (hosts that are namespaces of one machine), so
    what resolves is what would resolve with that host on another machine.
    """
    sandboxes: dict[str, DnsSandbox] = {}
    names = Names()
    by_net: dict[str, list[Peer]] = {}
    for peer in remote:
        by_net.setdefault(peer.network_id, []).append(peer)
    for host in lab.hosts.values():
        for net in host.networks.values():
            if not discoverable(net):
                continue
            key = table_key(host, net)
            table = names.a.setdefault(key, {})
            ptrs = names.ptr.setdefault(key, {})
            for ep in net.endpoints.values():
                sb = host.sandboxes.get(ep.sandbox or "")
                if not sb or not ep.ip:
                    continue
                _add_name(table, ptrs, net.name, ep.ip, sb.name, [sb.id[:12], *ep.aliases])
            if net.scope == "global":
                for peer in by_net.get(net.id, ()):
                    if peer.host != host.name and peer.name and peer.ip:
                        _add_name(table, ptrs, net.name, peer.ip, peer.name, peer.aliases)
        for svc in getattr(host, "services", {}).values():
            _service_names(host, svc, names)
        for sb in host.sandboxes.values():
            if not sb.dns or not sb.netns:
                continue
            nets = []
            for ref in sb.endpoints:
                net = host.networks.get(ref.network)
                if net and discoverable(net):
                    nets.append(table_key(host, net))
            sandboxes[sb.id] = DnsSandbox(sb.id, sb.name, sb.netns, nets)
    return sandboxes, names


def _add_name(table: dict[str, list[str]], ptrs: dict[str, str], net_name: str, ip: str,
              name: str, aliases: Iterable[str]) -> None:
    """A container's records: its name, ``name.network`` and its aliases (the short ID among
    them) -> its address; the address -> ``name.network``."""
    ip = ip.split("/")[0]
    for k in dict.fromkeys(k.lower() for k in (name, f"{name}.{net_name}", *aliases)):
        table.setdefault(k, [])
        if ip not in table[k]:
            table[k].append(ip)
    ptrs[ip] = f"{name}.{net_name}"


def _service_names(host: Any, svc: Any, names: Names) -> None:
    """A service's names (``cnmlab.services``): the name -> the VIP (vip mode) or the tasks'
    addresses (dnsrr); ``tasks.<name>`` -> the tasks' addresses, as swarm's resolver answers."""
    net = host.networks.get(svc.network)
    if net is None or not discoverable(net):
        return
    tasks = []
    for task in svc.tasks:
        sb = host.sandboxes.get(task)
        for ref in sb.endpoints if sb else ():
            ep = net.endpoints.get(ref.endpoint)
            if ref.network == net.name and ep and ep.ip:
                tasks.append(ep.ip.split("/")[0])
    table = names.a.setdefault(table_key(host, net), {})
    table[svc.name.lower()] = [svc.vip] if svc.vip else list(tasks)
    table[f"tasks.{svc.name}".lower()] = tasks


def reverse_ip(name: str) -> str | None:
    if not name.endswith(".in-addr.arpa"):
        return None
    parts = name[:-len(".in-addr.arpa")].split(".")
    if len(parts) != 4:
        return None
    try:
        return str(ipaddress.IPv4Address(".".join(reversed(parts))))
    except ValueError:
        return None


# ---- the server -----------------------------------------------------------------------------
def in_netns(ns: str, fn: Callable[[], Any]) -> Any:
    """Run ``fn`` in a short-lived thread that setns()es into ``ns`` (this thread stays put)."""
    box: dict[str, Any] = {}

    def body() -> None:
        try:
            with netns.entered(ns):
                box["value"] = fn()
        except BaseException as e:  # noqa: BLE001 - handed back to the caller
            box["error"] = e

    t = threading.Thread(target=body)
    t.start()
    t.join()
    if "error" in box:
        raise box["error"]
    return box["value"]


def nat_rules(udp_port: int, tcp_port: int, with_jumps: bool) -> str:
    lines = ["*nat", ":DOCKER_OUTPUT - [0:0]", ":DOCKER_POSTROUTING - [0:0]"]
    if with_jumps:
        # inserted first in their chains, as Docker's resolver does (``iptables -I``): in a
        # load balancer the IPVS SNAT rule made before stays behind the jump
        lines += [f"-I OUTPUT -d {EMBEDDED_DNS}/32 -j DOCKER_OUTPUT",
                  f"-I POSTROUTING -d {EMBEDDED_DNS}/32 -j DOCKER_POSTROUTING"]
    for proto, port in (("tcp", tcp_port), ("udp", udp_port)):
        lines.append(f"-A DOCKER_OUTPUT -d {EMBEDDED_DNS}/32 -p {proto} -m {proto} --dport 53 "
                     f"-j DNAT --to-destination {EMBEDDED_DNS}:{port}")
    for proto, port in (("tcp", tcp_port), ("udp", udp_port)):
        lines.append(f"-A DOCKER_POSTROUTING -s {EMBEDDED_DNS}/32 -p {proto} -m {proto} "
                     f"--sport {port} -j SNAT --to-source :53")
    return "\n".join(lines + ["COMMIT", ""])


def install_nat(ns: str, udp_port: int, tcp_port: int, fresh: bool = False) -> bool:
    """Docker's DOCKER_OUTPUT/DOCKER_POSTROUTING rules in ``ns``; False when impossible."""
    return bool(in_netns(ns, lambda: install_nat_here(udp_port, tcp_port, fresh)))


def install_nat_here(udp_port: int, tcp_port: int, fresh: bool = False) -> bool:
    """The same, in the namespace the calling thread is in.

    The first namespace gets its rules from ``iptables-restore`` (a child of this thread,
    which carries the thread's namespace, so no nsenter is exec'd in between); the rules it
    made are then read back and copied, ports rewritten, into every further namespace that
    holds none yet (``_NAT_COPY``): the same bytes at a fortieth of the cost of a fork and an
    exec per container. ``fresh``: the namespace appeared while this resolver ran, so nobody
    installed the jumps yet and the table need not be read first.
    """
    try:
        if _NAT_COPY.write(udp_port, tcp_port):
            return True  # the namespace held none of the rules: copied
    except OSError as e:
        # EEXIST: a previous resolver's rules are there (iptables replaces their ports
        # below); anything else: no nf_tables here, or the kernel refused, iptables decides
        fresh = fresh and e.errno != errno.EEXIST
    try:
        jumps = True
        if not fresh:
            have = subprocess.run(["iptables-save", "-t", "nat"], capture_output=True,
                                  text=True, timeout=10)
            if have.returncode != 0:
                return False
            jumps = f"-A OUTPUT -d {EMBEDDED_DNS}/32 -j DOCKER_OUTPUT" not in have.stdout
        done = subprocess.run(["iptables-restore", "--noflush"],
                              input=nat_rules(udp_port, tcp_port, jumps), capture_output=True,
                              text=True, timeout=10)
        if done.returncode != 0:
            return False
    except (OSError, subprocess.TimeoutExpired):
        return False
    _NAT_COPY.learn(udp_port, tcp_port)  # the first time only; checks what it learns from
    return True


class NatCopy:
    """Docker's DNS rules as ``iptables-restore`` made them in one namespace, for copying.

    Learnt only from a namespace whose nat table holds exactly those rules (the four chains,
    six rules, each port where ``nat_rules`` puts it: twice in its DNAT, once in its SNAT
    match), so nothing else of that namespace is ever copied to another one."""

    CHAINS = {"OUTPUT", "POSTROUTING", "DOCKER_OUTPUT", "DOCKER_POSTROUTING"}

    def __init__(self) -> None:
        self.lock = threading.Lock()
        #: the rules as one batch, and the two ports (udp, tcp) as they sit in it
        self.learnt: tuple[nftcopy.Batch, tuple[bytes, bytes]] | None = None

    def learn(self, udp_port: int, tcp_port: int) -> None:
        if self.learnt is not None or udp_port == tcp_port:
            return
        ports = (struct.pack("!H", udp_port), struct.pack("!H", tcp_port))
        try:
            table = nftcopy.read(socket.AF_INET, "nat")
        except OSError:
            return
        if (table is None or table.rule_count != 6 or set(table.chains()) != self.CHAINS
                or table.count(ports[0]) != 3 or table.count(ports[1]) != 3):
            return
        template = nftcopy.batch(table, ports, exclusive=frozenset({"DOCKER_OUTPUT"}),
                                 insert=frozenset({"OUTPUT", "POSTROUTING"}))
        if len(template.spots) != 6:
            return
        with self.lock:
            if self.learnt is None:
                self.learnt = (template, ports)

    def write(self, udp_port: int, tcp_port: int) -> bool:
        """Copy the rules here with these ports; False until a namespace taught them.
        Raises OSError (EEXIST) where DOCKER_OUTPUT exists already: nothing is written."""
        learnt = self.learnt
        if learnt is None:
            return False
        template, (udp, tcp) = learnt
        nftcopy.write(template, {udp: struct.pack("!H", udp_port),
                                 tcp: struct.pack("!H", tcp_port)})
        return True


_NAT_COPY = NatCopy()


#: what a sandbox's preparation makes: its UDP and TCP sockets on 127.0.0.11, the socket it
#: forwards from, and whether it serves on :53 itself (no nat rules could be installed)
Made = tuple[socket.socket, socket.socket, socket.socket, bool]


def _inode(ns: str) -> int | None:
    try:
        return os.stat(netns.path_of(ns)).st_ino
    except OSError:
        return None


def _discard(fut: "Future[Made]") -> None:
    """Close the sockets of a preparation nobody will register."""
    def close(done: "Future[Made]") -> None:
        if done.exception() is None:
            for sock in done.result()[:3]:
                sock.close()
    fut.add_done_callback(close)


@dataclass
class Pending:
    """A query forwarded upstream, waiting for its answer."""

    sb: "Served"
    orig_id: int
    reply: Callable[[bytes], None]
    query: Query
    deadline: float


@dataclass
class Served:
    info: DnsSandbox
    udp: socket.socket
    tcp: socket.socket
    fwd: socket.socket | None  # unconnected UDP socket in the sandbox, for forwarding
    direct: bool = False  # bound to :53 itself (no nat rules)
    conns: set[socket.socket] = field(default_factory=set)


REMOTE_WAKE = b"r"  # the watcher's byte on the wake socket (signals write their number)


class Resolver:
    def __init__(self, lab_name: str, embedded: bool = True, upstream: bool = True,
                 store_netns: str | None = None) -> None:
        """``store_netns``: where to open sockets to an external control plane (the
        namespace the process started in; a lab's own etcd names its namespace itself)."""
        self.lab_name = lab_name
        self.store_netns = store_netns
        self.remote: RemoteNames | None = None
        self.remote_dirty = False
        self.lab: LabState | None = None
        self.embedded = embedded
        self.sel = selectors.DefaultSelector()
        self.served: dict[str, Served] = {}
        self.nat_done: set[str] = set()  # namespaces this resolver installed its rules in
        self.names = Names()
        self.pending: dict[tuple[str, int], Pending] = {}
        self.stamp: tuple[int, int, int] | None = None
        self.upstream_socks: list[socket.socket] = []
        self.upstream_wanted = upstream
        self.upstream_done = False
        self.poke = False
        self.wake_r, self.wake_w = socket.socketpair()
        self.wake_r.setblocking(False)
        self.wake_w.setblocking(False)
        self.sel.register(self.wake_r, selectors.EVENT_READ, self._on_wake)
        self.pool = ThreadPoolExecutor(max_workers=PREPARE_WORKERS)
        #: namespaces announced during a batch (``announce``), prepared before the state says
        #: they want this resolver: namespace -> (its inode then, the sockets being made)
        self.ahead: dict[str, tuple[int, Future[Made]]] = {}
        self.ahead_sock: socket.socket | None = None
        if embedded:
            self._listen_ahead()

    # ---- state -------------------------------------------------------------------------
    def _stat(self) -> tuple[int, int, int] | None:
        try:
            st = os.stat(state._path(self.lab_name))
        except FileNotFoundError:
            return None
        return (st.st_ino, st.st_mtime_ns, st.st_size)

    def refresh(self, force: bool = False) -> bool:
        """Re-read the state when it changed; False when the lab is gone."""
        stamp = self._stat()
        if stamp is None:
            return False
        if stamp == self.stamp and not force:
            return True
        try:
            lab = state.load(self.lab_name)
        except (ValueError, TypeError, KeyError):
            return True  # caught it mid-change: next poll
        except Exception:  # noqa: BLE001 - gone between stat and open
            return self._stat() is not None
        first = self.stamp is None  # what exists now may hold a previous resolver's rules
        self.stamp = stamp
        self._serve_upstream(lab)
        if not self.embedded:
            self._write_seen(stamp)
            return True
        self.lab = lab
        self._follow_store(lab)
        wanted, self.names = build_names(lab, self._remote_peers())
        self._write_remote_seen()
        for key in [k for k, s in self.served.items() if k not in wanted
                    or s.info.netns != wanted[k].netns]:
            self._close(self.served.pop(key))
        new = []
        for key, info in wanted.items():
            if key in self.served:
                self.served[key].info = info
            elif netns.exists(info.netns):
                new.append((info, not first and info.netns not in self.nat_done))
        # sandboxes prepared side by side (each thread waits on the kernel), some of them
        # already while the batch that made them ran; then registered here, in the one thread
        # that owns the selector
        futures = [(info, self._take_ahead(info.netns)
                    or self.pool.submit(self._prepare, info.netns, fresh)) for info, fresh in new]
        for info, fut in futures:
            try:
                made = fut.result()
                self.served[info.key] = self._register(info, made)
            except (OSError, CnmError) as e:
                print(f"cnmlab-dns: cannot serve {info.name}: {e}", file=sys.stderr)
                continue
            if not made[3]:  # served through the nat rules: they are in place now
                self.nat_done.add(info.netns)
        self._drop_stale_ahead()
        self._write_seen(stamp)
        return True

    def _write_seen(self, stamp: state.Stamp) -> None:
        """Tell ensure_running which saved state is now served: every dns sandbox in it has
        its sockets and rules (or its error printed), so one file replaces a check of each.
        The whole stamp, not the inode alone: saves alternate between two inode numbers."""
        try:
            with open(_seen_path(self.lab_name), "w") as f:
                f.write(_stamp_text(stamp))
        except OSError:
            pass

    # ---- namespaces announced ahead of the state ---------------------------------------
    def _listen_ahead(self) -> None:
        path = ahead_path(self.lab_name)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)  # a dead resolver's
            sock.bind(path)
        except OSError:  # e.g. a path too long for a unix socket: announcements are a bonus
            sock.close()
            return
        sock.setblocking(False)
        self.ahead_sock = sock
        self.sel.register(sock, selectors.EVENT_READ, self._on_ahead)

    def _on_ahead(self) -> None:
        assert self.ahead_sock is not None
        while True:
            try:
                data = self.ahead_sock.recv(65536)
            except BlockingIOError:
                return
            for raw in data.split(b"\n"):
                ns = raw.decode(errors="replace")
                if not ns or ns in self.ahead or ns in self.nat_done:
                    continue
                inode = _inode(ns)
                if inode is not None:
                    self.ahead[ns] = (inode, self.pool.submit(self._prepare, ns, True))

    def _take_ahead(self, ns: str) -> "Future[Made] | None":
        """What was prepared for ``ns``, if it is still that namespace (a name can be reused
        by a new namespace within a batch: the old one's sockets are dropped)."""
        entry = self.ahead.pop(ns, None)
        if entry is None:
            return None
        if _inode(ns) == entry[0]:
            return entry[1]
        _discard(entry[1])
        return None

    def _drop_stale_ahead(self) -> None:
        """Close what was prepared for namespaces that are gone (removed inside the batch):
        the sockets would keep a deleted namespace alive."""
        for ns in [n for n, (ino, f) in self.ahead.items() if f.done() and _inode(n) != ino]:
            _discard(self.ahead.pop(ns)[1])

    def _serve_upstream(self, lab: LabState) -> None:
        if self.upstream_done or not self.upstream_wanted or not lab.upstream:
            return
        self.upstream_done = True

        def make() -> list[socket.socket]:
            u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            t = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            try:
                u.bind((UPSTREAM_DNS, 53))
                t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                t.bind((UPSTREAM_DNS, 53))
                t.listen(16)
            except OSError:
                u.close()
                t.close()
                raise
            return [u, t]

        try:
            self.upstream_socks = in_netns(lab.upstream, make)
        except OSError as e:  # somebody else plays the internet's DNS already
            print(f"cnmlab-dns: upstream DNS not served: {e}", file=sys.stderr)
            return
        u, t = self.upstream_socks
        for s in (u, t):
            s.setblocking(False)
        self.sel.register(u, selectors.EVENT_READ, lambda: self._on_udp(u, self._answer_upstream))
        self.sel.register(t, selectors.EVENT_READ,
                          lambda: self._on_accept(t, self._answer_upstream, None))

    @staticmethod
    def _prepare(ns: str, fresh: bool = False) -> "Made":
        """The sandbox's sockets and nat rules, made inside its namespace by the pool worker
        that runs this (it enters for the call and comes back: no thread of its own per
        sandbox). Touches nothing of the resolver's, so several sandboxes are prepared at once."""
        def make() -> Made:
            u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            t = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            f = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            try:
                u.bind((EMBEDDED_DNS, 0))
                t.bind((EMBEDDED_DNS, 0))  # listen() comes last: it tells ensure_running
                if install_nat_here(u.getsockname()[1], t.getsockname()[1], fresh):
                    return u, t, f, False
                # no nat rules: listen on :53 itself, like a resolver without iptables would
                u.close()
                t.close()
                u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                t = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                u.bind((EMBEDDED_DNS, 53))
                t.bind((EMBEDDED_DNS, 53))
                return u, t, f, True
            except BaseException:
                for sock in (u, t, f):
                    sock.close()
                raise

        with netns.entered(ns):
            return make()

    def _register(self, info: DnsSandbox, made: "Made") -> Served:
        udp, tcp, fwd, direct = made
        tcp.listen(16)
        sv = Served(info, udp, tcp, fwd, direct)
        for s in (udp, tcp, fwd):
            s.setblocking(False)
        answer = lambda q, msg, reply, sv=sv: self._answer_embedded(sv, q, msg, reply)  # noqa: E731
        self.sel.register(udp, selectors.EVENT_READ, lambda: self._on_udp(udp, answer))
        self.sel.register(tcp, selectors.EVENT_READ, lambda: self._on_accept(tcp, answer, sv))
        self.sel.register(fwd, selectors.EVENT_READ, lambda: self._on_forward_reply(sv))
        return sv

    def _close(self, sv: Served) -> None:
        for s in [sv.udp, sv.tcp, sv.fwd, *sv.conns]:
            if s is None:
                continue
            try:
                self.sel.unregister(s)
            except (KeyError, ValueError):
                pass
            s.close()
        for k in [k for k, p in self.pending.items() if p.sb is sv]:
            del self.pending[k]

    # ---- I/O -----------------------------------------------------------------------------
    def _on_wake(self) -> None:
        got = b""
        try:
            while chunk := self.wake_r.recv(64):
                got += chunk
        except BlockingIOError:
            pass
        if REMOTE_WAKE in got:
            self.remote_dirty = True
        if got.replace(REMOTE_WAKE, b""):
            self.poke = True

    def _remote_changed(self) -> None:
        """From the watcher thread: the store's records changed (the main loop rebuilds)."""
        try:
            self.wake_w.send(REMOTE_WAKE)
        except OSError:
            pass  # the socket buffer is full: a wake-up is pending anyway

    def _follow_store(self, lab: LabState) -> None:
        """Start watching the control plane's endpoint records once the lab has one."""
        info = lab.extra.get(CONTROL_PLANE_KEY)
        if self.remote is not None or not info or not self.embedded:
            return
        # imported here: the etcd client is a third of the resolver's start-up, which runs on
        # the other CPU while a batch builds, and most labs have no control plane
        from cnmlab import controlplane
        ns = info.get("netns") or self.store_netns
        cluster = controlplane.cluster_of({**info, "netns": ns})
        self.remote = RemoteNames(cluster, self._remote_changed)
        self.remote.start()

    def _rebuild_names(self) -> None:
        """Remote records changed, the state did not: new tables, same sandboxes."""
        if self.lab is None:
            return
        _, self.names = build_names(self.lab, self._remote_peers())
        self._write_remote_seen()

    def _remote_peers(self) -> list[Peer]:
        return list(self.remote.snapshot()[0].values()) if self.remote else []

    def _write_remote_seen(self) -> None:
        """Tell the engine on this machine which store records the tables hold (Lab.converge
        waits for them: a name resolves once its host's kernels and this resolver know it)."""
        if self.remote is None:
            return
        table, loaded = self.remote.snapshot()
        if not loaded:
            return
        tmp = f"{remote_seen_path(self.lab_name)}.tmp"
        try:
            with open(tmp, "w") as f:
                f.write("\n".join(sorted(table)))
            os.replace(tmp, remote_seen_path(self.lab_name))
        except OSError:
            pass

    def _on_udp(self, sock: socket.socket, answer: Callable[..., bytes | None]) -> None:
        for _ in range(64):
            try:
                msg, addr = sock.recvfrom(4096)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return

            def reply(data: bytes, sock: socket.socket = sock, addr: Any = addr) -> None:
                try:
                    sock.sendto(data, addr)
                except OSError:
                    pass

            self._handle(msg, answer, reply)

    def _on_accept(self, lsock: socket.socket, answer: Callable[..., bytes | None],
                   sv: Served | None) -> None:
        try:
            conn, _ = lsock.accept()
        except OSError:
            return
        conn.setblocking(False)
        buf = bytearray()
        owner = sv.conns if sv else set()
        owner.add(conn)

        def close() -> None:
            owner.discard(conn)
            try:
                self.sel.unregister(conn)
            except (KeyError, ValueError):
                pass
            conn.close()

        def reply(data: bytes) -> None:
            try:
                conn.setblocking(True)
                conn.settimeout(1)
                conn.sendall(tcp_frame(data))
                conn.setblocking(False)
            except OSError:
                close()

        def readable() -> None:
            try:
                chunk = conn.recv(65535)
            except BlockingIOError:
                return
            except OSError:
                chunk = b""
            if not chunk:
                close()
                return
            buf.extend(chunk)
            for msg in tcp_messages(buf):
                self._handle(msg, answer, reply)

        self.sel.register(conn, selectors.EVENT_READ, readable)

    def _handle(self, msg: bytes, answer: Callable[..., bytes | None],
                reply: Callable[[bytes], None]) -> None:
        q = parse_query(msg)
        if q is None:
            err = error_reply(msg, FORMERR)
            if err:
                reply(err)
            return
        out = answer(q, msg, reply)
        if out is not None:
            reply(out)

    # ---- answers -------------------------------------------------------------------------
    def lookup(self, sv: Served, name: str) -> list[str]:
        for net_id in sv.info.networks:
            found = self.names.a.get(net_id, {}).get(name)
            if found:
                addrs = list(found)
                random.shuffle(addrs)
                return addrs
        return []

    def _answer_embedded(self, sv: Served, q: Query, msg: bytes = b"",
                         reply: Callable[[bytes], None] | None = None) -> bytes | None:
        if q.opcode:
            return _reply(q, NOTIMP)
        if q.qclass == IN and q.qtype in (A, AAAA):
            addrs = self.lookup(sv, q.name)
            if addrs:
                return _reply(q, addrs=addrs if q.qtype == A else [])
        if q.qclass == IN and q.qtype == PTR:
            ip = reverse_ip(q.name)
            for net_id in sv.info.networks:
                name = self.names.ptr.get(net_id, {}).get(ip or "")
                if name:
                    return _reply(q, ptr=name)
        return self._forward(sv, q, msg, reply)

    def _forward(self, sv: Served, q: Query, msg: bytes,
                 reply: Callable[[bytes], None] | None) -> bytes | None:
        if sv.fwd is None or reply is None or not msg:
            return _reply(q, SERVFAIL)
        for _ in range(8):
            new_id = random.getrandbits(16)
            if (sv.info.key, new_id) not in self.pending:
                break
        else:
            return _reply(q, SERVFAIL)
        try:
            sv.fwd.sendto(with_id(msg, new_id), (UPSTREAM_DNS, 53))
        except OSError:
            return _reply(q, SERVFAIL)  # e.g. no route (internal network)
        self.pending[(sv.info.key, new_id)] = Pending(sv, q.id, reply, q,
                                                      time.monotonic() + FORWARD_TIMEOUT)
        return None

    def _on_forward_reply(self, sv: Served) -> None:
        assert sv.fwd is not None
        for _ in range(64):
            try:
                msg, addr = sv.fwd.recvfrom(65535)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                continue  # an ICMP error (port unreachable): the timeout answers it
            if addr != (UPSTREAM_DNS, 53) or len(msg) < 12:
                continue
            p = self.pending.pop((sv.info.key, message_id(msg)), None)
            if p:
                p.reply(with_id(msg, p.orig_id))

    def _expire(self) -> None:
        now = time.monotonic()
        for key in [k for k, p in self.pending.items() if p.deadline <= now]:
            p = self.pending.pop(key)
            p.reply(_reply(p.query, SERVFAIL))

    def _answer_upstream(self, q: Query, msg: bytes = b"",
                         reply: Callable[[bytes], None] | None = None) -> bytes:
        if q.name in UPSTREAM_RECORDS:
            addrs = [UPSTREAM_RECORDS[q.name]] if q.qtype == A else []
            return _reply(q, addrs=addrs, authoritative=True)
        return _reply(q, NXDOMAIN, authoritative=True)

    # ---- loop ----------------------------------------------------------------------------
    def run(self) -> None:
        last = time.monotonic()
        while True:
            timeout = POLL
            if self.pending:
                timeout = max(0.0, min(timeout, min(p.deadline for p in self.pending.values())
                                       - time.monotonic()))
            for key, _ in self.sel.select(timeout):
                key.data()
            self._expire()
            now = time.monotonic()
            if self.poke or now - last >= POLL:
                forced, self.poke, last = self.poke, False, now
                dirty, self.remote_dirty = self.remote_dirty, False
                if not self.refresh(force=forced or dirty):
                    return
            elif self.remote_dirty:
                self.remote_dirty = False
                self._rebuild_names()


# ---- process management (the engine's API) --------------------------------------------------
def _home_netns(lab: LabState) -> str | None:
    """Where the resolver process lives: the lab's upstream, else its first host."""
    if lab.upstream and netns.exists(lab.upstream):
        return lab.upstream
    for h in lab.hosts.values():
        if netns.exists(h.netns):
            return h.netns
    return None


def _is_resolver(pid: Any, lab_name: str, start: Any = ...) -> bool:
    """Whether ``pid`` is a resolver of this lab; with ``start`` (the start time recorded with
    the PID), also that it is the very process that was recorded, not a reuse of its PID."""
    if not isinstance(pid, int) or pid <= 0:
        return False
    if start is not ... and not procs.same_process(pid, start):
        return False
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = f.read().split(b"\0")
        with open(f"/proc/{pid}/stat") as f:
            if f.read().split(") ", 1)[1].startswith("Z"):
                return False
    except OSError:
        return False
    if argv == [b""] and start is not ...:
        # between exec and the new program's arguments being set up the kernel shows none:
        # the very process started (its start time matches) is a resolver starting up
        return True
    return b"cnmlab.dns" in argv and lab_name.encode() in argv


def wants_dns(lab: LabState) -> bool:
    return any(sb.dns and sb.netns for h in lab.hosts.values() for sb in h.sandboxes.values())


def ensure_running(lab_name: str, lab: LabState, timeout: float = 5.0) -> None:
    """Start the lab's resolver if a sandbox needs it and none runs; nudge it otherwise.

    Records the PID in ``lab.extra["dns_pid"]`` (the caller saves the state). A new resolver
    is waited for until it serves every dns sandbox in the saved state; a running one is sent
    SIGUSR1 and re-reads the state at once (a few ms), so a new name resolves right away.
    """
    if not wants_dns(lab):
        return
    pid = lab.extra.get("dns_pid")
    if _is_resolver(pid, lab_name, lab.extra.get("dns_pid_start")):
        saved = state.stamp(lab_name)
        # re-read the state now, not at the next poll
        if procs.signal_if_same(pid, lab.extra.get("dns_pid_start"), signal.SIGUSR1):
            # a resolver started during a batch (Announcer) may still be starting up
            wait = max(timeout, START_TIMEOUT) if (lab_name, pid) in _early else min(timeout, 2.0)
            if _wait_seen(lab_name, saved, wait, pid):
                _confirmed[(lab_name, pid)] = {sb.id for sb in _dns_sandboxes(lab)}
            else:  # it died, or followed another save: look at each new sandbox
                _wait_served(lab_name, pid, lab, min(wait, 2.0))
            _early.discard((lab_name, pid))
            return
    pid, lab.extra["dns_pid_start"] = _spawn(lab_name, [], max(timeout, START_TIMEOUT))
    lab.extra["dns_pid"] = pid
    _confirmed[(lab_name, pid)] = {sb.id for sb in _dns_sandboxes(lab)}


class Announcer:
    """Tells the lab's resolver, during a batch, each new namespace that will want it.

    Inside a batch the state is saved once, at the end, and the resolver would then prepare
    every sandbox at once while the build waits. Announced, it prepares each one (sockets and
    nat rules) as the batch goes on, on the other CPU; the end of the batch then only
    registers them. The resolver is started at the first announcement if none runs (not
    waited for). Best effort: a namespace whose announcement is lost is prepared when the
    saved state shows it, as without announcements.
    """

    CHUNK = 64  # names per datagram when a backlog is flushed
    # names gathered before a datagram goes: each one wakes the resolver, and a woken process
    # tends to run on the waker's CPU for a while, pausing the build (one datagram per
    # sandbox cost 20-30 ms of wall time per hundred sandboxes here, for 7-9 ms of CPU)
    EVERY = 8

    def __init__(self, lab_name: str) -> None:
        self.lab_name = lab_name
        self.sock: socket.socket | None = None
        self.backlog: list[str] = []
        self.started = False

    def announce(self, lab: LabState, ns: str) -> None:
        if not self.started:
            self.started = True
            self._start(lab)
        self.backlog.append(ns)
        if len(self.backlog) >= self.EVERY:
            self.flush()

    def _start(self, lab: LabState) -> None:
        pid = lab.extra.get("dns_pid")
        if not _is_resolver(pid, self.lab_name, lab.extra.get("dns_pid_start")):
            try:
                saved = state.load(self.lab_name)
            except Exception:  # noqa: BLE001 - not saved yet: the batch's end starts it
                return
            if _home_netns(saved) is None:
                return  # it would have no namespace to live in yet
            pid, lab.extra["dns_pid_start"] = _spawn(self.lab_name, [], 0.0)
            lab.extra["dns_pid"] = pid
            _early.add((self.lab_name, pid))
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.setblocking(False)

    def flush(self) -> None:
        if self.sock is None:
            self.backlog.clear()
            return
        while self.backlog:
            try:
                self.sock.sendto("\n".join(self.backlog[:self.CHUNK]).encode(),
                                 ahead_path(self.lab_name))
            except OSError:  # not listening yet, or its queue is full: later, or never
                return
            del self.backlog[:self.CHUNK]

    def close(self) -> None:
        self.flush()
        if self.sock is not None:
            self.sock.close()
            self.sock = None


# resolvers started during a batch, not yet waited for: (lab, pid)
_early: set[tuple[str, int]] = set()

# sandboxes this process has seen served, per (lab, resolver pid): checked once each
_confirmed: dict[tuple[str, int], set[str]] = {}


def ahead_path(lab_name: str) -> str:
    """The resolver's datagram socket for namespaces announced during a batch."""
    return state.aux_path(lab_name, "dns-ahead")


def _seen_path(lab_name: str) -> str:
    return state.aux_path(lab_name, "dns-seen")


def remote_seen_path(lab_name: str) -> str:
    return state.aux_path(lab_name, "dns-remote")


def remote_names_seen(lab_name: str, lab: LabState) -> set[str] | None:
    """The control plane's endpoint records (``network_id/endpoint_id``) the running resolver
    has in its tables; None when no resolver of this lab runs (nothing to wait for)."""
    if not _is_resolver(lab.extra.get("dns_pid"), lab_name, lab.extra.get("dns_pid_start")):
        return None
    try:
        with open(remote_seen_path(lab_name)) as f:
            return set(f.read().split())
    except OSError:
        return set()


def _stamp_text(stamp: "state.Stamp | None") -> str:
    return " ".join(map(str, stamp)) if stamp else ""


def _wait_seen(lab_name: str, saved: "state.Stamp | None", timeout: float, pid: int) -> bool:
    """Wait until the resolver serves the saved state (``saved``) or the one saved after it
    (the newest state is what must be served); False if it does not in time, or died."""
    if saved is None:
        return False
    deadline = time.monotonic() + timeout
    alive_checked = time.monotonic()
    while time.monotonic() < deadline:
        try:
            with open(_seen_path(lab_name)) as f:
                seen = f.read().strip()
            if seen and seen in (_stamp_text(saved), _stamp_text(state.stamp(lab_name))):
                return True
        except OSError:
            pass
        time.sleep(0.002)
        if time.monotonic() - alive_checked > 0.5:
            alive_checked = time.monotonic()
            if not _is_resolver(pid, lab_name):
                return False
    return False


def _dns_sandboxes(lab: LabState) -> list[Any]:
    return [sb for h in lab.hosts.values() for sb in h.sandboxes.values() if sb.dns and sb.netns]


def _listening(ns: str) -> bool:
    """Whether the sandbox has the resolver's TCP listener on 127.0.0.11 (made after its rules)."""
    def read() -> bool:
        with open("/proc/thread-self/net/tcp") as f:
            return any(fields[1].startswith("0B00007F:") and fields[3] == "0A"
                       for fields in (line.split() for line in f) if len(fields) > 3)
    try:
        return bool(in_netns(ns, read))
    except Exception:  # noqa: BLE001 - the namespace went away meanwhile
        return True


def _wait_served(lab_name: str, pid: int, lab: LabState, timeout: float) -> None:
    """After a nudge, wait until every new dns sandbox has its sockets and nat rules
    (or the resolver died: nothing will come then)."""
    done = _confirmed.setdefault((lab_name, pid), set())
    deadline = time.monotonic() + timeout
    alive_checked = time.monotonic()
    for sb in _dns_sandboxes(lab):
        if sb.id in done:
            continue
        while not _listening(sb.netns) and time.monotonic() < deadline:
            time.sleep(0.002)
            if time.monotonic() - alive_checked > 0.5:
                alive_checked = time.monotonic()
                if not _is_resolver(pid, lab_name):
                    return
        done.add(sb.id)


def start_upstream(lab_name: str, lab: LabState, timeout: float = 5.0) -> None:
    """Play the fake internet's DNS (198.51.100.53) even when no sandbox uses the embedded one.

    The embedded resolver serves it too while it runs; this is for labs whose sandboxes are all
    on the default bridge (their resolv.conf names 198.51.100.53). PID in
    ``lab.extra["upstream_dns_pid"]``; teardown stops it with the upstream namespace.
    """
    if not lab.upstream or _is_resolver(lab.extra.get("upstream_dns_pid"), lab_name,
                                        lab.extra.get("upstream_dns_pid_start")):
        return
    lab.extra["upstream_dns_pid"], lab.extra["upstream_dns_pid_start"] = _spawn(
        lab_name, ["--upstream"], timeout)


def _spawn(lab_name: str, extra: list[str], timeout: float) -> tuple[int, int | None]:
    """Start a resolver process and wait until it serves (or died, or ``timeout`` passed).

    Returns its PID and start time: the pair, not the PID alone, names the process later.
    """
    import select

    r, w = os.pipe()
    # The child starts with SIGUSR1 blocked (a signal mask survives fork and exec): until its
    # main() installs a handler, SIGUSR1's default action is to kill it, and the next join's
    # nudge (ensure_running) can come that early when its start outlasts ``timeout`` (the VM
    # lane's emulated CPU: tens of seconds). Blocked, the nudge waits for the handler.
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})
    try:
        proc = subprocess.Popen([sys.executable, "-m", "cnmlab.dns", "--lab", lab_name, *extra,
                                 "--ready-fd", str(w)], pass_fds=(w,), start_new_session=True,
                                # no inherited pipes: a caller's capture_output must not wait
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)
        os.close(w)
    try:
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            if select.select([r], [], [], left)[0]:
                os.read(r, 16)  # a byte when ready, EOF if it died
                break
    finally:
        os.close(r)
    start = procs.start_time(proc.pid)  # not reaped yet: still this process's
    threading.Thread(target=proc.wait, daemon=True).start()  # reap it if it ends before us
    return proc.pid, start


def stop(lab_name: str, lab: LabState) -> None:
    """Stop the lab's resolver and upstream DNS processes (the caller saves the state)."""
    for key in ("dns_pid", "upstream_dns_pid"):
        pid = lab.extra.pop(key, None)
        start = lab.extra.pop(f"{key}_start", None)
        if not _is_resolver(pid, lab_name, start):
            continue  # gone, or its PID now names another process: never signal that
        if not procs.signal_if_same(pid, start, signal.SIGTERM):
            continue
        deadline = time.monotonic() + 2
        while _is_resolver(pid, lab_name, start) and time.monotonic() < deadline:
            time.sleep(0.01)
        procs.signal_if_same(pid, start, signal.SIGKILL)


def main(argv: list[str] | None = None) -> int:
    # first: ensure_running may nudge us early (_spawn started us with SIGUSR1 blocked, so a
    # nudge sent before this line waits, pending, instead of killing us)
    signal.signal(signal.SIGUSR1, lambda *_: None)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGUSR1})
    ap = argparse.ArgumentParser(prog="python -m cnmlab.dns",
                                 description="Docker's embedded DNS for a cnmlab lab")
    ap.add_argument("--lab", required=True)
    ap.add_argument("--upstream", action="store_true",
                    help="serve only the fake internet DNS on 198.51.100.53 (upstream namespace)")
    ap.add_argument("--ready-fd", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    try:
        lab = state.load(args.lab)
    except Exception as e:  # noqa: BLE001
        print(f"cnmlab-dns: {e}", file=sys.stderr)
        return 1
    home = lab.upstream if args.upstream else _home_netns(lab)
    if not home:
        print(f"cnmlab-dns: lab {args.lab} has no namespace to live in", file=sys.stderr)
        return 1
    # the main thread (the one /proc/PID/ns/net shows) moves into a namespace of the lab, so
    # teardown's kill_processes finds and stops this process
    # the namespace it started in stays at hand: an external control plane is reached from it
    start_ns = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    fd = netns.open_fd(home)
    netns.setns(fd)
    os.close(fd)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    res = Resolver(args.lab, embedded=not args.upstream, upstream=True,
                   store_netns=f"/proc/self/fd/{start_ns}")
    signal.set_wakeup_fd(res.wake_w.fileno(), warn_on_full_buffer=False)
    if not res.refresh(force=True):
        return 0
    if args.upstream and not res.upstream_socks:
        return 1  # somebody else answers on 198.51.100.53 already
    if args.ready_fd is not None:
        try:
            os.write(args.ready_fd, b"1")
        except BrokenPipeError:
            pass  # the starter stopped waiting (a slow start): serve all the same
        os.close(args.ready_fd)
    res.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
