"""The userland proxy: one asyncio daemon per host serves every published port, as docker-proxy.

Real namespaces, real sockets: the servers run in a sandbox's namespace (sockets made there by a
thread of this process), the clients in the host's, where Docker's own proxy traffic comes from
(the host's loopback never passes PREROUTING's DNAT, so only the proxy can answer it).
"""
from __future__ import annotations

import os
import socket
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import pytest

from cnmlab import proxy
from cnmlab.errors import CnmError, KernelError
from cnmlab.kernel import netns, rundir

pytestmark = pytest.mark.kernel


def sock_in(ns: str, kind: int = socket.SOCK_STREAM) -> socket.socket:
    """A socket that lives in namespace ``ns`` whatever thread uses it later."""
    with netns.entered(ns):
        return socket.socket(socket.AF_INET, kind)


class Servers:
    """TCP and UDP test servers inside a sandbox, each on its own port, in daemon threads.

    ``eof`` TCP: reads until the client's end of stream, then answers ``echo:<all>`` and closes
    (the half-close case). ``chunk`` TCP: echoes each chunk at once. UDP: answers each datagram
    with ``<data>|<client port as seen>``.
    """

    def __init__(self, ns: str) -> None:
        self.ns = ns
        self.socks: list[socket.socket] = []

    def _thread(self, fn, *args) -> None:  # type: ignore[no-untyped-def]
        threading.Thread(target=fn, args=args, daemon=True).start()

    def tcp(self, port: int, mode: str) -> None:
        s = sock_in(self.ns)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("0.0.0.0", port))
        s.listen(64)
        self.socks.append(s)
        self._thread(self._accept, s, mode)

    def _accept(self, s: socket.socket, mode: str) -> None:
        while True:
            try:
                c, _ = s.accept()
            except OSError:
                return
            self._thread(self._serve_eof if mode == "eof" else self._serve_chunk, c)

    @staticmethod
    def _serve_eof(c: socket.socket) -> None:
        with c:
            data = b""
            while chunk := c.recv(4096):
                data += chunk
            c.sendall(b"echo:" + data)

    @staticmethod
    def _serve_chunk(c: socket.socket) -> None:
        with c:
            try:
                while chunk := c.recv(4096):
                    c.sendall(chunk)
            except OSError:
                pass

    def udp(self, port: int) -> None:
        s = sock_in(self.ns, socket.SOCK_DGRAM)
        s.bind(("0.0.0.0", port))
        self.socks.append(s)
        self._thread(self._udp_loop, s)

    @staticmethod
    def _udp_loop(s: socket.socket) -> None:
        while True:
            try:
                data, peer = s.recvfrom(65535)
                if peer is None:  # shut down
                    return
                s.sendto(data + b"|" + str(peer[1]).encode(), peer)
            except OSError:
                return

    def close(self) -> None:
        for s in self.socks:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()


@pytest.fixture
def servers(lab) -> Iterator[tuple[object, object, Servers]]:
    host = lab.add_host("h1")
    web = host.run("web")
    srv = Servers(web.netns)
    try:
        yield host, web, srv
    finally:
        srv.close()


def publish(host, web, proto: str, hport: int, cport: int, **kw) -> int:  # type: ignore[no-untyped-def]
    return proxy.publish(host.netns, proxy.Mapping(proto, "0.0.0.0", hport, web.ip(), cport, **kw))


def udp_ask(client: socket.socket, port: int, data: bytes) -> bytes:
    client.sendto(data, ("127.0.0.1", port))
    return client.recvfrom(65535)[0]


def proxy_pids(ns: str) -> list[int]:
    out = []
    for pid in netns.pids_in_many([ns]).get(ns, []):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if b"cnmlab.proxyd" in f.read():
                    out.append(pid)
        except OSError:
            pass
    return out


def test_half_closed_tcp_gets_its_reply(lab):
    """The reproduced bug: ``printf hi | nc -N 127.0.0.1 8080`` on the host got no reply."""
    host = lab.add_host("h1")
    web = host.run("web", publish=["8080:80"])
    srv = Servers(web.netns)
    srv.tcp(80, "eof")
    try:
        r = host.exec(["sh", "-c", "printf hi | nc -N -w 3 127.0.0.1 8080"], timeout=10)
        assert r.stdout == "echo:hi", (r.stdout, r.stderr)
        # the same with a socket: half-close, then read the whole answer, then EOF
        c = sock_in(host.netns)
        c.settimeout(3)
        c.connect(("127.0.0.1", 8080))
        c.sendall(b"x" * 200000)
        c.shutdown(socket.SHUT_WR)
        got = b""
        while chunk := c.recv(65536):
            got += chunk
        c.close()
        assert got == b"echo:" + b"x" * 200000
    finally:
        srv.close()


def test_udp_round_trip_and_flow_expiry(servers):
    host, web, srv = servers
    srv.udp(53)
    publish(host, web, "udp", 5353, 53, udp_timeout=1.0)
    c = sock_in(host.netns, socket.SOCK_DGRAM)
    c.settimeout(2)
    try:
        first = udp_ask(c, 5353, b"q1")
        data, flow_port = first.split(b"|")
        assert data == b"q1"
        # replies keep the flow alive: the container sees the same upstream port throughout
        for i in range(6):
            time.sleep(0.3)
            assert udp_ask(c, 5353, b"q") == b"q|" + flow_port
        assert [p["flows"] for p in proxy.published(host.netns)] == [1]
        time.sleep(1.6)  # no reply for longer than the timeout: the flow is gone
        assert [p["flows"] for p in proxy.published(host.netns)] == [0]
        again = udp_ask(c, 5353, b"q2")  # and a new one starts on the next datagram
        assert again.startswith(b"q2|") and again.split(b"|")[1] != flow_port
    finally:
        c.close()


def test_udp_flow_waits_for_a_late_server(servers):
    """ICMP port unreachable (nothing listens yet) does not end the flow (docker-proxy)."""
    host, web, srv = servers
    publish(host, web, "udp", 5354, 54, udp_timeout=5.0)
    c = sock_in(host.netns, socket.SOCK_DGRAM)
    c.settimeout(0.5)
    try:
        c.sendto(b"early", ("127.0.0.1", 5354))
        with pytest.raises(socket.timeout):
            c.recvfrom(100)
        srv.udp(54)
        c.settimeout(2)
        assert udp_ask(c, 5354, b"late").startswith(b"late|")
    finally:
        c.close()


def test_many_ports_one_process(lab):
    host = lab.add_host("h1")
    ports = [f"{9000 + i}:80" for i in range(40)] + [f"{9100 + i}:53/udp" for i in range(10)]
    web = host.run("web", publish=ports)
    srv = Servers(web.netns)
    srv.tcp(80, "eof")
    srv.udp(53)
    try:
        pids = set(host.model.proxies.values())
        assert len(host.model.proxies) == 50 and len(pids) == 1
        assert proxy_pids(host.netns) == list(pids)
        for port in (9000, 9017, 9039):
            c = sock_in(host.netns)
            c.settimeout(3)
            c.connect(("127.0.0.1", port))
            c.sendall(str(port).encode())
            c.shutdown(socket.SHUT_WR)
            assert c.recv(100) == f"echo:{port}".encode()
            c.close()
        u = sock_in(host.netns, socket.SOCK_DGRAM)
        u.settimeout(2)
        assert udp_ask(u, 9109, b"u").startswith(b"u|")
        u.close()
        # the hairpin from a container on the same bridge goes through it as well
        peer = host.run("peer")
        r = peer.exec(["sh", "-c", f"printf hi | nc -N -w 3 {host.public_ip} 9005"], timeout=10)
        assert r.stdout == "echo:hi", r.stderr
    finally:
        srv.close()


def test_adding_and_removing_ports_leaves_open_connections_alone(servers):
    host, web, srv = servers
    srv.tcp(80, "chunk")
    srv.udp(53)
    pid = publish(host, web, "tcp", 7000, 80)
    assert publish(host, web, "udp", 7053, 53) == pid
    assert publish(host, web, "tcp", 7001, 80) == pid
    conn = sock_in(host.netns)
    conn.settimeout(3)
    conn.connect(("127.0.0.1", 7000))
    u = sock_in(host.netns, socket.SOCK_DGRAM)
    u.settimeout(2)
    try:
        conn.sendall(b"before")
        assert conn.recv(100) == b"before"
        flow = udp_ask(u, 7053, b"a").split(b"|")[1]
        on_removed = sock_in(host.netns)
        on_removed.settimeout(3)
        on_removed.connect(("127.0.0.1", 7001))
        proxy.unpublish(host.netns, "tcp", "0.0.0.0", 7001)  # its own connections close
        assert publish(host, web, "tcp", 7002, 80) == pid      # one more port, same process
        assert on_removed.recv(100) == b""
        on_removed.close()
        conn.sendall(b"after")
        assert conn.recv(100) == b"after"                     # the other port's connection lives
        assert udp_ask(u, 7053, b"b") == b"b|" + flow          # and so does the UDP flow
        with pytest.raises(ConnectionRefusedError):
            sock_in(host.netns).connect(("127.0.0.1", 7001))
        assert sorted(p["host_port"] for p in proxy.published(host.netns)) == [7000, 7002, 7053]
        assert [p["connections"] for p in proxy.published(host.netns) if p["host_port"] == 7000] == [1]
    finally:
        conn.close()
        u.close()


def test_last_port_ends_the_daemon_and_a_new_one_starts(servers):
    host, web, srv = servers
    srv.tcp(80, "eof")
    first = publish(host, web, "tcp", 7100, 80)
    proxy.unpublish(host.netns, "tcp", "0.0.0.0", 7100)
    assert proxy.daemon(host.netns) is None and not os.path.exists(f"/proc/{first}/cmdline") \
        or proxy.start_time(first) is None
    assert proxy_pids(host.netns) == []
    second = publish(host, web, "tcp", 7100, 80)
    assert second != first and proxy_pids(host.netns) == [second]


def test_bind_failure_is_one_line_and_spares_the_other_ports(servers):
    host, web, srv = servers
    pid = publish(host, web, "tcp", 7200, 80)
    squatter = sock_in(host.netns)
    squatter.bind(("0.0.0.0", 7201))
    squatter.listen()
    try:
        with pytest.raises(KernelError) as e:
            publish(host, web, "tcp", 7201, 80)
        assert str(e.value).startswith("port proxy for 7201/tcp: cannot listen on 0.0.0.0:7201/tcp")
        assert "\n" not in str(e.value)
        assert proxy.daemon(host.netns)[0] == pid
        assert [p["host_port"] for p in proxy.published(host.netns)] == [7200]
    finally:
        squatter.close()


def test_engine_refuses_a_port_published_twice(lab):
    host = lab.add_host("h1")
    host.run("web", publish=["8080:80"])
    with pytest.raises(CnmError, match="port is already allocated"):
        host.run("web2", publish=["8080:81"])
    assert [p["host_port"] for p in proxy.published(host.netns)] == [8080]


def test_binding_follows_host_binding_ipv4_and_the_port_spec(lab):
    host = lab.add_host("h1")
    host.network_create("local", options={"com.docker.network.bridge.host_binding_ipv4":
                                          "127.0.0.1"})
    host.run("a1", "local", publish=["7300:80"])
    host.run("b1", publish=["127.0.0.1:7301:80", "7302:80"])
    got = {p["host_port"]: p["host_ip"] for p in proxy.published(host.netns)}
    assert got == {7300: "127.0.0.1", 7301: "127.0.0.1", 7302: "0.0.0.0"}
    host.rm("a1")
    assert sorted(p["host_port"] for p in proxy.published(host.netns)) == [7301, 7302]


def test_recorded_pid_is_checked_before_any_signal(servers):
    """PID reuse: a PID file naming another process (or a start time that changed) is not ours."""
    host, web, srv = servers
    publish(host, web, "tcp", 7400, 80)
    rec = proxy.daemon(host.netns)
    assert rec is not None and rec[1] == proxy.start_time(rec[0])
    _sock, _lock, pid_file = proxy._files(host.netns)
    bystander = subprocess.Popen(["sleep", "30"])
    try:
        with open(pid_file, "w") as f:  # what a reused PID looks like: same number, other start
            f.write(f"{bystander.pid} {proxy.start_time(bystander.pid) + 1}\n")
        assert proxy.daemon(host.netns) is None
        proxy.stop(host.netns)
        assert bystander.poll() is None, "stop() signalled a process that is not the daemon"
    finally:
        bystander.kill()
        bystander.wait()


def test_stop_after_the_control_socket_is_gone(servers):
    """Without its socket the daemon is still stopped, by signal, once verified."""
    host, web, srv = servers
    pid = publish(host, web, "tcp", 7500, 80)
    sock, _lock, _pid = proxy._files(host.netns)
    os.unlink(sock)
    proxy.stop(host.netns)
    assert proxy.start_time(pid) is None
    assert proxy_pids(host.netns) == []


def test_control_socket_is_root_only(servers, tmp_path, monkeypatch):
    host, web, srv = servers
    publish(host, web, "tcp", 7600, 80)
    sock, lock, pid_file = proxy._files(host.netns)
    folder = os.path.dirname(sock)
    assert stat.S_IMODE(os.stat(folder).st_mode) == 0o700 and os.stat(folder).st_uid == 0
    assert stat.S_IMODE(os.stat(sock).st_mode) == 0o600
    # another user cannot even reach it
    code = ("import os, socket, sys; os.setgid(65534); os.setuid(65534); s = socket.socket("
            "socket.AF_UNIX); s.connect(sys.argv[1])")
    r = subprocess.run([sys.executable, "-c", code, sock], capture_output=True, text=True)
    assert r.returncode != 0 and "PermissionError" in r.stderr
    # a runtime folder anyone could have made is refused, in one line
    monkeypatch.setattr(rundir, "STATE_DIR", str(tmp_path))
    os.mkdir(tmp_path / "proxy", 0o755)
    os.chmod(tmp_path / "proxy", 0o755)
    with pytest.raises(CnmError, match=r"proxy has mode 0755: it must be a folder of root's"):
        proxy.run_dir()
    os.rmdir(tmp_path / "proxy")
    os.symlink("/tmp", tmp_path / "proxy")
    with pytest.raises(CnmError, match="is not a folder"):
        proxy.run_dir()


def test_clean_after_kill_9_stops_the_daemon_and_forgets_its_files(lab_name):
    code = ("import os, sys; from cnmlab.lab import Lab\n"
            "lab = Lab(sys.argv[1]); h = lab.add_host('h1')\n"
            "h.run('web', publish=['8080:80', '8053:53/udp'])\n"
            "print(h.netns, h.model.proxies['tcp/8080'], flush=True); os.kill(os.getpid(), 9)\n")
    r = subprocess.run([sys.executable, "-c", code, lab_name], capture_output=True,
                       text=True, timeout=60)
    ns, pid = r.stdout.split()
    files = proxy._files(ns)
    assert proxy.daemon(ns) == (int(pid), proxy.start_time(int(pid)))
    assert all(os.path.exists(p) for p in files)
    r = subprocess.run([sys.executable, "-m", "cnmlab.cli", "clean", "--lab", lab_name],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert proxy.start_time(int(pid)) is None
    assert not any(os.path.exists(p) for p in files)


def test_concurrent_publishers_share_one_daemon(servers):
    """Callers in several processes at once: the lock makes them start exactly one daemon."""
    host, web, srv = servers
    srv.tcp(80, "eof")
    code = ("import sys; from cnmlab import proxy\n"
            "print(proxy.publish(sys.argv[1], proxy.Mapping('tcp', '0.0.0.0', int(sys.argv[2]),"
            " sys.argv[3], 80)))\n")
    procs = [subprocess.Popen([sys.executable, "-c", code, host.netns, str(7700 + i), web.ip()],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(6)]
    outs = [p.communicate(timeout=60) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1] for o in outs]
    assert len({o[0].strip() for o in outs}) == 1 and len(proxy_pids(host.netns)) == 1
    assert sorted(p["host_port"] for p in proxy.published(host.netns)) == list(range(7700, 7706))


def test_no_server_in_the_container_closes_the_client(servers):
    host, web, srv = servers
    publish(host, web, "tcp", 7800, 80)  # nothing listens on web:80
    c = sock_in(host.netns)
    c.settimeout(3)
    c.connect(("127.0.0.1", 7800))  # the proxy accepts, then finds no one behind it
    try:
        assert c.recv(100) == b""
    except ConnectionResetError:
        pass
    finally:
        c.close()


def test_an_idle_daemon_leaves_but_not_under_a_callers_lock(lab, tmp_path):
    """A daemon whose starter died before its first port leaves by itself, lock permitting."""
    import fcntl

    host = lab.add_host("h1")
    sock, lock = str(tmp_path / "c.sock"), str(tmp_path / "c.lock")
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)  # a caller is at work
    r, w = os.pipe()
    d = subprocess.Popen([sys.executable, "-m", "cnmlab.proxyd", "--netns", host.netns,
                          "--control", sock, "--lock", lock, "--ready-fd", str(w),
                          "--idle", "0.3"], pass_fds=(w,))
    os.close(w)
    try:
        assert os.read(r, 10) == b"ready\n"
        time.sleep(1.0)
        assert d.poll() is None and os.path.exists(sock)  # waits while the lock is held
        os.close(fd)
        assert d.wait(timeout=5) == 0
        assert not os.path.exists(sock)
    finally:
        os.close(r)
        if d.poll() is None:
            d.kill()
            d.wait()
