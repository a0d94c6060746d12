"""The plugin call log, live: every call Docker (or the engine) made to a served plugin, in order.

``PluginLog(lab_name, target=None)`` lists the plugins that have a call log (the lab's own,
named ``LAB-...``, first), follows the chosen one from a thread worker
(``cnmlab.plugin.calllog.CallLogReader``, polled every 0.2 s) and appends each call with its
request and answer JSON; an error answer is shown in red. A plugin served again starts a fresh
log, and the panel says so. Layout lives in ``widgets.tcss``. It binds no keys of its own:
the step screen's letters mean one thing everywhere.
"""
from __future__ import annotations

import time

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.containers import Horizontal
from textual.message import Message
from textual.widget import Widget
from textual.widgets import RichLog, Select, Static
from textual.worker import get_current_worker

from cnmlab.plugin.calllog import Call, CallLogReader, logs

POLL = 0.2
MAX_LINES = 1500


class PluginLog(Widget):
    """Follow one plugin's call log; ``follow(name)`` switches, ``calls`` holds what was shown."""

    class _Calls(Message):
        def __init__(self, gen: int, calls: list[Call], restarted: bool) -> None:
            super().__init__()
            self.gen, self.calls, self.restarted = gen, calls, restarted

    class _Plugins(Message):
        def __init__(self, names: list[str]) -> None:
            super().__init__()
            self.names = names

    def __init__(self, lab_name: str | None = None, target: str | None = None, *,
                 name: str | None = None, id: str | None = None,
                 classes: str | None = None) -> None:
        super().__init__(name=name, id=id, classes=classes)
        self.lab_name = lab_name
        self.plugin: str | None = None
        self.calls: list[Call] = []  # shown since the last clear, in order
        self._names: list[str] = []
        self._gen = 0

    def compose(self) -> ComposeResult:
        with Horizontal(id="pl-controls"):
            yield Select([], prompt="plugin", id="pl-plugin", allow_blank=True)
            yield Static(id="pl-status")
        yield RichLog(max_lines=MAX_LINES, id="pl-log", wrap=True, markup=False)

    def on_mount(self) -> None:
        self._status("no plugin has a call log yet: 'cnmlab plugin serve ...' starts one")
        self._follow()

    # ---- public API --------------------------------------------------------------------
    def follow(self, plugin: str) -> None:
        """Follow ``plugin``'s log from its beginning."""
        if plugin == self.plugin:
            return
        self.plugin = plugin
        self._gen += 1
        self.clear()
        sel = self.query_one("#pl-plugin", Select)
        with sel.prevent(Select.Changed):
            if plugin in self._names:
                sel.value = plugin
        self._status(f"following {plugin}")

    def clear(self) -> None:
        self.query_one("#pl-log", RichLog).clear()
        self.calls.clear()

    # ---- the worker: reads files, posts messages -------------------------------------------
    @work(thread=True, exclusive=True, group="pl-follow", exit_on_error=False)
    def _follow(self) -> None:
        worker = get_current_worker()
        reader: CallLogReader | None = None
        gen = -1
        names: list[str] = []
        next_list = 0.0
        while not worker.is_cancelled:
            if time.monotonic() >= next_list:
                found = self._ordered(logs())
                if found != names:
                    names = found
                    self.post_message(self._Plugins(found))
                next_list = time.monotonic() + 1.0
            if self.plugin and (reader is None or reader.name != self.plugin or gen != self._gen):
                reader, gen = CallLogReader(self.plugin), self._gen
            if reader is not None:
                calls = reader.read()
                if calls or reader.restarted:
                    self.post_message(self._Calls(gen, calls, reader.restarted))
            time.sleep(POLL)

    def _ordered(self, names: list[str]) -> list[str]:
        """The lab's own plugins (``LAB-...``) first."""
        mine = [n for n in names if self.lab_name and n.startswith(f"{self.lab_name}-")]
        return mine + [n for n in names if n not in mine]

    # ---- the UI thread ---------------------------------------------------------------------
    def on_plugin_log__plugins(self, msg: "_Plugins") -> None:
        msg.stop()
        self._names = msg.names
        sel = self.query_one("#pl-plugin", Select)
        with sel.prevent(Select.Changed):
            sel.set_options([(n, n) for n in msg.names])
            if self.plugin in msg.names:
                sel.value = self.plugin
        if self.plugin is None and msg.names:
            self.follow(msg.names[0])

    def on_plugin_log__calls(self, msg: "_Calls") -> None:
        msg.stop()
        if msg.gen != self._gen:
            return
        log = self.query_one("#pl-log", RichLog)
        if msg.restarted:
            log.write(Text("-- the plugin was served again: its log starts afresh --",
                           style="dim italic"))
        for c in msg.calls:
            head, req, ans = c.lines()
            err = c.error
            log.write(Text(head, style="bold red" if err else "bold"))
            log.write(Text(req, style="cyan"))
            log.write(Text(ans, style="red" if err else "green"))
            self.calls.append(c)
        failed = sum(1 for c in self.calls if c.error)
        self._status(f"{self.plugin}: {len(self.calls)} calls"
                     + (f", {failed} answered an error" if failed else ""))

    @on(Select.Changed, "#pl-plugin")
    def _plugin_changed(self, event: Select.Changed) -> None:
        event.stop()
        if isinstance(event.value, str):
            self.follow(event.value)

    def _status(self, text: str) -> None:
        self.query_one("#pl-status", Static).update(Text(text, style="dim"))
