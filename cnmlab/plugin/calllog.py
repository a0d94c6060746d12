"""Reading a served plugin's call log as it grows (``cnmlab plugin log -f``, the workshop app).

The SDK appends one JSON object a line to ``NAME.sock.log``: ``{"time", "call", "request",
"answer"}``. A reader keeps its offset and returns only what was added since; a log that got
shorter was started afresh (the plugin restarted), and the reader says so and starts over. A
line still being written (no newline yet) waits for the next read.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from typing import Any

from cnmlab.plugin import discovery
from cnmlab.plugin.protocol import ERROR_FIELD


@dataclass
class Call:
    time: float
    call: str
    request: Any
    answer: Any

    @property
    def error(self) -> str | None:
        """The plugin's error answer, if it gave one."""
        if not isinstance(self.answer, dict):
            return None
        field_ = ERROR_FIELD.get(self.call.split(".")[0], "Err")
        err = self.answer.get(field_) or self.answer.get("Err") or self.answer.get("Error")
        return str(err) if err else None

    def lines(self) -> list[str]:
        """Three lines as the CLI and the app print them: when and what, request, answer."""
        stamp = time.strftime("%H:%M:%S", time.localtime(self.time))
        return [f"{stamp} {self.call}", f"  -> {json.dumps(self.request)}",
                f"  <- {json.dumps(self.answer)}"]


@dataclass
class CallLogReader:
    """``read()`` returns the calls added to plugin ``name``'s log since the last read."""

    name: str
    offset: int = 0
    restarted: bool = False  # set by a read that found the log started afresh
    _partial: bytes = field(default=b"", repr=False)

    @property
    def path(self) -> str:
        return discovery.socket_path(self.name) + ".log"

    def read(self) -> list[Call]:
        self.restarted = False
        try:
            size = os.path.getsize(self.path)
        except OSError:
            return []
        if size < self.offset:  # truncated: the plugin was served again
            self.offset, self._partial, self.restarted = 0, b"", True
        if size == self.offset:
            return []
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            data = f.read(size - self.offset)
        self.offset += len(data)
        data = self._partial + data
        *complete, self._partial = data.split(b"\n")
        out = []
        for raw in complete:
            try:
                e = json.loads(raw)
                out.append(Call(float(e.get("time", 0)), str(e.get("call", "?")),
                                e.get("request"), e.get("answer")))
            except (ValueError, AttributeError, TypeError):
                continue  # not ours: skip it, keep reading
        return out


def logs() -> list[str]:
    """Names of the plugins that have a call log (served now or stopped, not yet cleaned)."""
    try:
        files = os.listdir(discovery.CNMLAB_PLUGINS)
    except OSError:
        return []
    return sorted(f[:-len(".sock.log")] for f in files if f.endswith(".sock.log"))
