"""Calls to a plugin over its unix socket, bounded in time, failing in one line.

A plugin is someone else's program: it may answer an error, garbage, the wrong shape, or
nothing at all. Every call has a deadline, and every failure becomes a ``PluginError`` that
names the plugin, the call and what went wrong, in the words Docker would print (the plugin's
own ``Err``/``Error`` text when it gave one).
"""
from __future__ import annotations

import http.client
import json
import socket
from typing import Any

from cnmlab.errors import CnmError
from cnmlab.plugin.protocol import CONTENT_TYPE, ERROR_FIELD

DEFAULT_TIMEOUT = 10.0


class PluginError(CnmError):
    """A plugin said no, answered nonsense, or did not answer."""


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self._path)


class PluginClient:
    def __init__(self, name: str, socket_path: str, timeout: float | None = None) -> None:
        self.name = name
        self.socket_path = socket_path
        self.timeout = timeout or DEFAULT_TIMEOUT  # read now: tests and callers may lower it

    def call(self, method: str, body: dict[str, Any] | None = None,
             required: tuple[str, ...] = ()) -> dict[str, Any]:
        """POST /<method>; the decoded answer, which must carry every ``required`` key."""
        api = method.split(".")[0]
        what = f"plugin {self.name}: {method}"
        conn = _UnixConnection(self.socket_path, self.timeout)
        try:
            conn.request("POST", f"/{method}", body=json.dumps(body or {}),
                         headers={"Content-Type": CONTENT_TYPE, "Accept": CONTENT_TYPE})
            resp = conn.getresponse()
            raw = resp.read()
        except (FileNotFoundError, ConnectionRefusedError):
            raise PluginError(f"{what}: nothing listens on {self.socket_path} (is the plugin "
                              f"running?)") from None
        except (TimeoutError, socket.timeout):
            raise PluginError(f"{what}: no answer within {self.timeout:g} s") from None
        except (OSError, http.client.HTTPException) as e:
            raise PluginError(f"{what}: {e.__class__.__name__}: {e}") from None
        finally:
            conn.close()
        try:
            data = json.loads(raw or b"{}")
        except ValueError:
            raise PluginError(f"{what}: the answer is not JSON: {raw[:60]!r}") from None
        if not isinstance(data, dict):
            raise PluginError(f"{what}: the answer is not a JSON object: {raw[:60]!r}")
        err = data.get(ERROR_FIELD.get(api, "Err")) or data.get("Err") or data.get("Error")
        if err:
            raise PluginError(f"{what}: {str(err).splitlines()[0]}")
        if resp.status != 200:
            raise PluginError(f"{what}: HTTP {resp.status} {resp.reason}")
        missing = [k for k in required if k not in data or data[k] in (None, "")]
        if missing:
            raise PluginError(f"{what}: the answer lacks {', '.join(missing)}")
        return data
