"""``EtcdStore``: the cluster's ``KeyValueStore`` over etcd v3's JSON gateway, in plain HTTP.

Why plain HTTP and not a client library: the gateway (``POST /v3/kv/range``, ``/kv/txn``,
``/watch``, ``/lease/*``, keys and values in base64) is five small JSON requests, and the one
thing cnmlab needs that a library hides is *where the socket is opened*. A lab's etcd listens
on an address inside the lab's own namespaces, never on the machine's interfaces, so a client
in the root namespace (the CLI, the tests) must open its socket inside a lab namespace; a
socket stays in the namespace it was made in, so ``netns=`` makes the connection there and
every later request uses it. ``http.client`` with one kept-alive connection per thread costs
about a millisecond a request here and adds no dependency (``etcd3gw`` would pull in
requests, futurist and pbr for the same five calls).

Create-if-absent is a transaction comparing the key's create revision with 0, as
``etcdctl txn`` would; a watch is one long streamed response with a JSON object per line.
Every failure to reach the store becomes one ``StoreUnreachable`` line naming the URL.
"""
from __future__ import annotations

import base64
import http.client
import json
import socket
import threading
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

from cnmlab.kernel import netns
from cnmlab.cluster import WatchEvent
from cnmlab.errors import CnmError, InvalidInput


class StoreUnreachable(CnmError):
    """The control plane cannot be reached (stopped, wrong address, blocked)."""


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def _unb64(text: str | None) -> str:
    return base64.b64decode(text or "").decode()


def prefix_end(prefix: str) -> str:
    """The first key after every key starting with ``prefix`` (etcd's range_end)."""
    raw = bytearray(prefix.encode())
    raw[-1] += 1
    return raw.decode()


def parse_url(url: str) -> tuple[str, int]:
    """``etcd://HOST:PORT`` or ``http://HOST:PORT`` -> (host, port); other schemes refused."""
    parts = urlsplit(url if "://" in url else f"etcd://{url}")
    if parts.scheme not in ("etcd", "http") or not parts.hostname:
        raise InvalidInput(f"store {url!r}: use etcd://HOST:PORT")
    try:
        return parts.hostname, parts.port or 2379
    except ValueError:
        raise InvalidInput(f"store {url!r}: the port is not a number") from None


class EtcdStore:
    """A KeyValueStore on an etcd 3.4+ cluster member (one endpoint).

    ``netns``: open connections inside this namespace (a lab's); None: where the calling
    thread is (an agent already runs inside its host).
    """

    def __init__(self, url: str, *, netns_name: str | None = None, timeout: float = 5.0) -> None:
        self.host, self.port = parse_url(url)
        self.url = f"etcd://{self.host}:{self.port}"
        self.netns = netns_name
        self.timeout = timeout
        self._local = threading.local()
        self.requests = 0  # round trips made (benchmarks count them: each is a raft wait)

    # ---- transport ---------------------------------------------------------------------
    def _connect(self, timeout: float | None) -> http.client.HTTPConnection:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=timeout)
        try:
            if self.netns:
                with netns.entered(self.netns):
                    conn.connect()
            else:
                conn.connect()
        except (OSError, CnmError) as e:
            raise self._unreachable(e) from None
        conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return conn

    def _unreachable(self, e: BaseException) -> StoreUnreachable:
        why = getattr(e, "strerror", None) or str(e) or type(e).__name__
        where = f" from namespace {self.netns}" if self.netns else ""
        return StoreUnreachable(f"control plane {self.url} cannot be reached{where} ({why}): "
                                f"is its etcd running ('cnmlab peers LAB' shows it)?")

    def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        data = json.dumps(body)
        self.requests += 1
        for attempt in (0, 1):  # a kept-alive connection the server closed: reconnect once
            conn = getattr(self._local, "conn", None)
            if conn is None:
                conn = self._local.conn = self._connect(self.timeout)
            try:
                conn.request("POST", f"/v3/{path}", data,
                             {"Content-Type": "application/json"})
                resp = conn.getresponse()
                raw = resp.read()
            except (OSError, http.client.HTTPException) as e:
                conn.close()
                self._local.conn = None
                if attempt:
                    raise self._unreachable(e) from None
                continue
            if resp.status != 200:
                raise CnmError(f"control plane {self.url}: {path} answered {resp.status} "
                               f"{raw[:200].decode(errors='replace').strip()}")
            return json.loads(raw)
        raise AssertionError("unreachable")

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    # ---- KeyValueStore -----------------------------------------------------------------
    def get(self, key: str) -> str | None:
        kvs = self._post("kv/range", {"key": _b64(key)}).get("kvs") or []
        return _unb64(kvs[0].get("value")) if kvs else None

    def create(self, key: str, value: str) -> bool:
        k = _b64(key)
        out = self._post("kv/txn", {
            "compare": [{"key": k, "target": "CREATE", "result": "EQUAL",
                         "create_revision": "0"}],
            "success": [{"request_put": {"key": k, "value": _b64(value)}}]})
        return bool(out.get("succeeded"))

    def put(self, key: str, value: str, lease: int | None = None) -> None:
        body: dict[str, Any] = {"key": _b64(key), "value": _b64(value)}
        if lease:
            body["lease"] = str(lease)
        self._post("kv/put", body)

    def delete(self, key: str) -> bool:
        return int(self._post("kv/deleterange", {"key": _b64(key)}).get("deleted", 0)) > 0

    def range(self, prefix: str) -> dict[str, str]:
        out = self._post("kv/range", {"key": _b64(prefix), "range_end": _b64(prefix_end(prefix))})
        return {_unb64(kv["key"]): _unb64(kv.get("value")) for kv in out.get("kvs") or []}

    def revision(self) -> int:
        out = self._post("kv/range", {"key": _b64("\0"), "limit": 1})
        return int(out["header"]["revision"])

    def watch(self, prefix: str, start_revision: int,
              end: str | None = None) -> Iterator[list[WatchEvent]]:
        """Every change under ``prefix`` (or in [prefix, end)) from ``start_revision`` on,
        a batch at a time.

        Deletions carry the deleted value (``prev_kv``), so a watcher knows *which* peer left.
        Ends (StoreUnreachable) when the stream breaks: the caller re-reads and re-watches.
        """
        conn = self._connect(timeout=None)  # a quiet cluster sends nothing for hours
        try:
            conn.request("POST", "/v3/watch", json.dumps({"create_request": {
                "key": _b64(prefix), "range_end": _b64(end or prefix_end(prefix)),
                "start_revision": str(start_revision), "prev_kv": True}}),
                {"Content-Type": "application/json"})
            resp = conn.getresponse()
            while True:
                line = resp.readline()
                if not line:
                    raise StoreUnreachable(f"control plane {self.url}: the watch stream ended")
                result = json.loads(line).get("result", {})
                if result.get("canceled"):
                    raise StoreUnreachable(f"control plane {self.url}: watch canceled "
                                           f"({result.get('cancel_reason', 'compacted')})")
                events = [WatchEvent(
                    type=e.get("type", "PUT"), key=_unb64(e["kv"]["key"]),
                    value=_unb64(e["kv"].get("value")) if e.get("type", "PUT") == "PUT" else None,
                    prev_value=_unb64(e["prev_kv"].get("value")) if e.get("prev_kv") else None,
                    revision=int(e["kv"].get("mod_revision", 0)))
                    for e in result.get("events", [])]
                if events:
                    yield events
        except (OSError, http.client.HTTPException, ValueError) as e:
            raise self._unreachable(e) from None
        finally:
            conn.close()

    # ---- leases: a key that lives as long as its writer keeps it alive -------------------
    def lease_grant(self, ttl: int) -> int:
        return int(self._post("lease/grant", {"TTL": ttl})["ID"])

    def lease_keepalive(self, lease: int) -> bool:
        """Renew; False when the lease already expired (its keys are gone)."""
        out = self._post("lease/keepalive", {"ID": str(lease)})
        return int(out.get("result", {}).get("TTL", 0)) > 0

    def lease_revoke(self, lease: int) -> None:
        self._post("lease/revoke", {"ID": str(lease)})
