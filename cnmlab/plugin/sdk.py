"""Write a network driver (or IPAM driver) of your own: subclass, fill in the CNM calls, serve.

    class MyDriver(NetworkDriver):
        def create_network(self, req): ...          # req is the JSON Docker sent
        def join(self, req):
            return {"InterfaceName": {"SrcName": "veth-x", "DstPrefix": "eth"},
                    "Gateway": "10.9.0.1"}

    PluginServer(MyDriver(), "/run/cnmlab/plugins/mydriver.sock").serve_forever()

Each call ``NetworkDriver.CreateNetwork`` goes to the method ``create_network`` with the
decoded request; what it returns is the answer; an exception becomes the protocol's error
(``{"Err": ...}`` for drivers, ``{"Error": ...}`` for IPAM drivers) so the caller prints it.
Every call and its JSON is kept, in order, in ``plugin.calls`` and appended to a log file
beside the socket (``NAME.sock.log``, one JSON object a line) that the workshop app follows.
"""
from __future__ import annotations

import json
import os
import re
import socketserver
import threading
import time
from http.server import BaseHTTPRequestHandler
from typing import Any

from cnmlab.errors import CnmError
from cnmlab.plugin import protocol as P


def _method_name(call: str) -> str:
    """``NetworkDriver.CreateNetwork`` -> ``create_network``."""
    return re.sub(r"(?<!^)(?=[A-Z])", "_", call.split(".", 1)[1]).lower()


class NotImplementedCall(Exception):
    pass


def error_text(e: BaseException) -> str:
    """One line for the caller: a raised message as it is; a slip in the code with its class
    name (``KeyError: 'Gateway'`` says more to a learner than ``'Gateway'``)."""
    text = str(e).strip()
    if not (isinstance(e, (CnmError, NotImplementedCall, RuntimeError, ValueError))
            or type(e) is Exception):
        text = f"{e.__class__.__name__}: {text}" if text else e.__class__.__name__
    return text.splitlines()[0] if text else e.__class__.__name__


class Plugin:
    """What every plugin answers: ``Plugin.Activate``, and a log of every call."""

    implements: list[str] = []

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []
        self.log_path: str | None = None
        self._lock = threading.Lock()

    def dispatch(self, call: str, request: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        """Answer one call and log it."""
        status, answer = self.answer(call, request)
        self._record(call, request, answer)
        return status, answer

    def answer(self, call: str, request: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        """(HTTP status, answer) of one call, an exception becoming the protocol's error."""
        api = call.split(".", 1)[0]
        try:
            if call == P.ACTIVATE:
                answer: dict[str, Any] = {"Implements": list(self.implements)}
            elif api not in self.implements:
                raise NotImplementedCall(f"{call}: this plugin does not implement {api}")
            else:
                method = getattr(self, _method_name(call), None)
                if method is None:
                    raise NotImplementedCall(f"{call} is not implemented")
                answer = method(request) or {}
                if not isinstance(answer, dict):
                    raise TypeError(f"{call} must answer a dict, not {type(answer).__name__}")
            status = 200
        except Exception as e:  # the caller gets the plugin's error, in the protocol's field
            answer, status = {P.ERROR_FIELD.get(api, "Err"): error_text(e)}, 500
        return status, answer

    def _record(self, call: str, request: dict[str, Any], answer: dict[str, Any]) -> None:
        entry = {"time": round(time.time(), 3), "call": call, "request": request,
                 "answer": answer}
        with self._lock:
            self.calls.append(entry)
            if self.log_path:
                try:  # no O_CREAT: a call finishing after the server closed leaves no file
                    fd = os.open(self.log_path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
                except FileNotFoundError:
                    return
                with os.fdopen(fd, "a") as f:
                    f.write(json.dumps(entry) + "\n")


class NetworkDriver(Plugin):
    """A local-scope driver; override the calls you implement (libnetwork's remote API)."""

    implements = [P.NETWORK_DRIVER]

    def get_capabilities(self, req: dict[str, Any]) -> dict[str, Any]:
        return {"Scope": "local", "ConnectivityScope": "local"}

    def endpoint_oper_info(self, req: dict[str, Any]) -> dict[str, Any]:
        return {"Value": {}}

    def discover_new(self, req: dict[str, Any]) -> dict[str, Any]:
        return {}

    def discover_delete(self, req: dict[str, Any]) -> dict[str, Any]:
        return {}

    def program_external_connectivity(self, req: dict[str, Any]) -> dict[str, Any]:
        return {}

    def revoke_external_connectivity(self, req: dict[str, Any]) -> dict[str, Any]:
        return {}


class IpamDriver(Plugin):
    """An IPAM driver; override the calls you implement (libnetwork's ipam remote API)."""

    implements = [P.IPAM_DRIVER]

    def get_capabilities(self, req: dict[str, Any]) -> dict[str, Any]:
        return {"RequiresMACAddress": False}

    def get_default_address_spaces(self, req: dict[str, Any]) -> dict[str, Any]:
        return {"LocalDefaultAddressSpace": "local", "GlobalDefaultAddressSpace": "global"}


class PluginSet(Plugin):
    """Several plugins behind one socket, as one Docker plugin may implement both
    ``NetworkDriver`` and ``IpamDriver`` (their ``GetCapabilities`` would clash in one class).
    Calls go to the part implementing their API; one call log keeps them all, in order."""

    def __init__(self, *parts: Plugin) -> None:
        super().__init__()
        self.parts = parts
        self.implements = [api for p in parts for api in p.implements]

    def answer(self, call: str, request: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        api = call.split(".", 1)[0]
        for part in self.parts:
            if call != P.ACTIVATE and api in part.implements:
                return part.answer(call, request)
        return super().answer(call, request)


class _Handler(BaseHTTPRequestHandler):
    server: "PluginServer"

    def do_POST(self) -> None:  # noqa: N802 (http.server's name)
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        call = self.path.lstrip("/")
        try:
            request = json.loads(raw or b"{}")
            if not isinstance(request, dict):
                raise ValueError("not an object")
        except ValueError as e:
            status, answer = 400, {P.ERROR_FIELD.get(call.split(".")[0], "Err"):
                                   f"{call}: the request is not a JSON object ({e})"}
        else:
            status, answer = self.server.plugin.dispatch(call, request)
        body = json.dumps(answer).encode()
        self.send_response(status)
        self.send_header("Content-Type", P.CONTENT_TYPE)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # the plugin's own call log says more, in order


class PluginServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    """Serves one plugin on a unix socket (made 0600: only root may call it)."""

    daemon_threads = True

    def __init__(self, plugin: Plugin, socket_path: str, log: bool = True) -> None:
        os.makedirs(os.path.dirname(socket_path), mode=0o700, exist_ok=True)
        if os.path.exists(socket_path):
            os.unlink(socket_path)
        self.plugin = plugin
        self.socket_path = socket_path
        super().__init__(socket_path, _Handler)
        os.chmod(socket_path, 0o600)
        if log:  # after the socket: a log without one is an orphan clean_stale removes
            plugin.log_path = socket_path + ".log"
            open(plugin.log_path, "w").close()

    def start(self) -> "PluginServer":
        """Serve from a background thread (tests, the workshop app)."""
        threading.Thread(target=self.serve_forever, daemon=True,
                         name=f"plugin {self.socket_path}").start()
        return self

    def close(self) -> None:
        self.shutdown()
        self.server_close()
        for path in (self.socket_path, self.socket_path + ".log"):
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
