"""A live packet list for one interface of one lab member (``PacketPanel``).

Pick a target (host, sandbox, upstream) and one of its interfaces, then start: a thread worker
runs ``Capture(ns, interface).batches()`` and posts one message per burst (at most every 100 ms,
at most 200 packets each; the rest of a flood is counted, not shown), and the UI thread appends
the summaries to a log that keeps the last 500 lines. Stopping, switching interface or
unmounting the panel stops the capture socket at once (a stop pipe wakes its ``select``).

Keys: ``g`` start/stop, ``ctrl+l`` clear, ``f`` hide/show the checks' own packets. (The
step screen's letters, such as ``s`` for "show me" and ``c`` for check, mean the same here as
everywhere: one key, one meaning.)

The checks send every probe with DSCP "lower effort" (``cnmlab.checks.probes.CHECK_TOS``);
such packets are labelled ``[check]`` and can be hidden. A change of target or interface
writes a separator line into the list, so two captures never read as one stream.
"""
from __future__ import annotations

import time

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal
from textual.message import Message
from textual.widget import Widget
from textual.widgets import Button, RichLog, Select, Static
from textual.worker import get_current_worker

from cnmlab import frames
from cnmlab.checks.probes import CHECK_TOS
from cnmlab.errors import CnmError
from cnmlab.kernel.capture import Capture, Packet
from cnmlab.kernel.netlink import Netlink
from cnmlab.tui.livestate import find_member, lab_members

MAX_LINES = 500


def is_check_packet(frame: bytes) -> bool:
    """Was this frame sent by a check (IPv4 with the checks' DSCP), or is it the reply to one?

    ARP and the learner's own traffic are not marked; an echo reply copies the request's TOS.
    """
    off = 14
    if len(frame) < off + 2:
        return False
    etype = int.from_bytes(frame[12:14], "big")
    while etype in (0x8100, 0x88A8) and len(frame) >= off + 4:
        etype = int.from_bytes(frame[off + 2:off + 4], "big")
        off += 4
    return etype == 0x0800 and len(frame) > off + 1 and (frame[off + 1] & 0xFC) == CHECK_TOS


def packet_line(p: Packet, summary: str) -> str:
    """``HH:MM:SS.mmm < summary`` (``<`` in, ``>`` out)."""
    t = time.strftime("%H:%M:%S", time.localtime(p.ts)) + f".{int(p.ts % 1 * 1000):03d}"
    return f"{t} {'<' if p.direction == 'in' else '>'} {summary}"


def _style(summary: str) -> str:
    if summary.startswith("ARP"):
        return "yellow"
    if "VXLAN" in summary:
        return "magenta"
    if "ICMP" in summary:
        return "cyan"
    if "DNS" in summary:
        return "green"
    if "TCP [S]" in summary or "TCP [R" in summary:
        return "bold"
    return ""


class PacketPanel(Widget):
    """Choose namespace + interface, start/stop; a scrolling, rate-limited packet list.

    ``PacketPanel(lab_name, target=None, interface=None, autostart=False, max_lines=500)``;
    ``set_lab(name)``, ``choose(target, interface)``, ``start()``, ``stop()``, ``clear()``.
    Posts ``PacketPanel.Captured`` (the new packets) and ``PacketPanel.StateChanged``.
    """

    BINDINGS = [Binding("g", "toggle", "Capture on/off"), Binding("ctrl+l", "clear", "Clear"),
                Binding("f", "toggle_checks", "Checks' packets")]

    class Captured(Message):
        def __init__(self, panel: "PacketPanel", packets: list[Packet], skipped: int) -> None:
            super().__init__()
            self.panel, self.packets, self.skipped = panel, packets, skipped

        @property
        def control(self) -> "PacketPanel":
            return self.panel

    class StateChanged(Message):
        def __init__(self, panel: "PacketPanel", running: bool, error: str | None = None) -> None:
            super().__init__()
            self.panel, self.running, self.error = panel, running, error

        @property
        def control(self) -> "PacketPanel":
            return self.panel

    class _Batch(Message):
        def __init__(self, gen: int, packets: list[Packet], summaries: list[str],
                     skipped: int) -> None:
            super().__init__()
            self.gen, self.packets, self.skipped = gen, packets, skipped
            self.summaries = summaries

    class _Interfaces(Message):
        def __init__(self, target: str, names: list[str], error: str | None) -> None:
            super().__init__()
            self.target, self.names, self.error = target, names, error

    class _Ended(Message):
        def __init__(self, gen: int, error: str | None) -> None:
            super().__init__()
            self.gen, self.error = gen, error

    def __init__(self, lab_name: str | None = None, target: str | None = None,
                 interface: str | None = None, *, autostart: bool = False,
                 max_lines: int = MAX_LINES, name: str | None = None, id: str | None = None,
                 classes: str | None = None) -> None:
        super().__init__(name=name, id=id, classes=classes)
        self.lab_name = lab_name
        self.target = target
        self.interface = interface
        self.autostart = autostart
        self.max_lines = max_lines
        self.running = False
        self.count = 0  # packets shown since the last clear
        self.skipped = 0
        self.lines: list[str] = []  # plain summaries shown (last max_lines)
        self._gen = 0
        self._capture: Capture | None = None
        self.hide_checks = False  # hide the packets the checks sent (and their replies)
        self.from_checks = 0  # of the packets seen, how many were the checks'
        self._last_where: tuple[str | None, str | None] | None = None

    def compose(self) -> ComposeResult:
        with Horizontal(id="pk-controls"):
            yield Select([], prompt="target", id="pk-target", allow_blank=True)
            yield Select([], prompt="interface", id="pk-iface", allow_blank=True)
            yield Button("Start", id="pk-toggle", variant="success")
        yield Static(Text("choose a target and an interface", style="dim"), id="pk-status")
        yield RichLog(max_lines=self.max_lines, id="pk-log", wrap=False, markup=False)

    def on_mount(self) -> None:
        self._fill_targets()

    def on_unmount(self) -> None:
        self._stop_capture()

    # ---- public API --------------------------------------------------------------------
    def set_lab(self, lab_name: str | None) -> None:
        self.stop()
        self.lab_name = lab_name
        self.target = self.interface = None
        self._fill_targets()

    def choose(self, target: str, interface: str | None = None) -> None:
        """Select a target (and interface); a running capture moves to the new choice."""
        was_running = self.running
        self.stop()
        self.target, self.interface = target, interface
        self.autostart = self.autostart or was_running
        sel = self.query_one("#pk-target", Select)
        with sel.prevent(Select.Changed):
            try:
                sel.value = target
            except Exception:
                pass
        self._load_interfaces(target)

    def start(self) -> None:
        if not self.target or not self.interface:
            self._status("choose a target and an interface first", "yellow")
            return
        self._stop_capture()
        self._gen += 1
        try:
            ns = find_member(self.lab_name, self.target).ns
        except CnmError as e:
            self._status(str(e), "red")
            return
        self._capture = Capture(ns, self.interface)
        where = (self.target, self.interface)
        if self._last_where is not None and self._last_where != where and self.lines:
            self._write(f"──── now capturing on {self.target} {self.interface} ────",
                        "bold reverse")
        self._last_where = where
        self.running = True
        self.query_one("#pk-toggle", Button).label = "Stop"
        self.query_one("#pk-toggle", Button).variant = "error"
        self.set_class(True, "-running")
        self._status(f"capturing on {self.target} {self.interface}…", "green")
        self._run(self._gen, self._capture)
        self.post_message(self.StateChanged(self, True))

    def stop(self) -> None:
        if not self.running:
            return
        self._stop_capture()
        self._gen += 1
        self._stopped_ui(None)

    def clear(self) -> None:
        self.query_one("#pk-log", RichLog).clear()
        self.lines.clear()
        self.count = self.skipped = 0

    def text(self) -> str:
        return "\n".join(self.lines)

    def action_toggle(self) -> None:
        self.stop() if self.running else self.start()

    def action_clear(self) -> None:
        self.clear()

    def action_toggle_checks(self) -> None:
        self.hide_checks = not self.hide_checks
        self._status(("hiding" if self.hide_checks else "showing") + " the checks' own "
                     "packets (f toggles)", "dim")

    def _write(self, line: str, style: str = "") -> None:
        self.lines.append(line)
        self.query_one("#pk-log", RichLog).write(Text(line, style=style))

    # ---- internals ---------------------------------------------------------------------
    def _status(self, text: str, style: str = "dim") -> None:
        self.query_one("#pk-status", Static).update(Text(text, style=style))

    def _stop_capture(self) -> None:
        if self._capture is not None:
            self._capture.stop()
            self._capture = None

    def _stopped_ui(self, error: str | None) -> None:
        self.running = False
        self.set_class(False, "-running")
        if self.is_mounted:
            btn = self.query_one("#pk-toggle", Button)
            btn.label, btn.variant = "Start", "success"
            self._status(error or f"stopped; {self.count} packets", "red" if error else "dim")
        self.post_message(self.StateChanged(self, False, error))

    def _fill_targets(self) -> None:
        sel = self.query_one("#pk-target", Select)
        try:
            targets = lab_members(self.lab_name) if self.lab_name else []
        except CnmError as e:
            self._status(str(e), "red")
            targets = []
        with sel.prevent(Select.Changed):
            sel.set_options([(f"{t.name} ({t.role})", t.name) for t in targets])
            if self.target and any(t.name == self.target for t in targets):
                sel.value = self.target
        if self.target:
            self._load_interfaces(self.target)

    @work(thread=True, exclusive=True, group="pk-ifaces", exit_on_error=False)
    def _load_interfaces(self, target: str) -> None:
        try:  # Netlink (pyroute2 sync) must not run on the asyncio thread
            ns = find_member(self.lab_name, target).ns
            with Netlink(ns) as nl:
                names = [l.name for l in nl.links()]
            self.post_message(self._Interfaces(target, names, None))
        except CnmError as e:
            self.post_message(self._Interfaces(target, [], str(e)))

    def on_packet_panel__interfaces(self, msg: "_Interfaces") -> None:
        msg.stop()
        if msg.target != self.target:
            return
        if msg.error:
            self._status(msg.error, "red")
        sel = self.query_one("#pk-iface", Select)
        names = msg.names
        if self.interface not in names:
            self.interface = next((n for n in names if n == "eth0"),
                                  next((n for n in names if n != "lo"), None))
        with sel.prevent(Select.Changed):
            sel.set_options([(n, n) for n in names])
            if self.interface:
                sel.value = self.interface
        if self.autostart and self.interface:
            self.autostart = False
            self.start()
        elif not self.running:
            self._status(f"{self.target} {self.interface or ''}: press g to start", "dim")

    @on(Select.Changed, "#pk-target")
    def _target_changed(self, event: Select.Changed) -> None:
        event.stop()
        if isinstance(event.value, str) and event.value != self.target:
            self.choose(event.value)

    @on(Select.Changed, "#pk-iface")
    def _iface_changed(self, event: Select.Changed) -> None:
        event.stop()
        if isinstance(event.value, str) and event.value != self.interface:
            was = self.running
            self.stop()
            self.interface = event.value
            if was:
                self.start()

    @on(Button.Pressed, "#pk-toggle")
    def _toggle_pressed(self, event: Button.Pressed) -> None:
        event.stop()
        self.action_toggle()

    @work(thread=True, group="pk-capture", exit_on_error=False)
    def _run(self, gen: int, cap: Capture) -> None:
        worker = get_current_worker()
        error = None
        try:
            for packets, skipped in cap.batches(interval=0.1, limit=200):
                if worker.is_cancelled or cap.stopped:
                    break
                summaries = [frames.decode(p.data) for p in packets]  # not on the UI thread
                self.post_message(self._Batch(gen, packets, summaries, skipped))
        except OSError as e:
            error = f"capture on {cap.interface}: {e.strerror or e}"
        finally:
            cap.close()
            self.post_message(self._Ended(gen, error))

    def on_packet_panel__batch(self, msg: "_Batch") -> None:
        msg.stop()
        if msg.gen != self._gen:
            return
        log = self.query_one("#pk-log", RichLog)
        for p, summary in zip(msg.packets, msg.summaries):
            mine = is_check_packet(p.data)
            if mine:
                self.from_checks += 1
                if self.hide_checks:
                    continue
            line = ("[check] " if mine else "") + packet_line(p, summary)
            self.lines.append(line)
            log.write(Text(line, style="dim" if mine else _style(summary)))
        if msg.skipped:
            note = f"… {msg.skipped} more packets not shown (flood)"
            self.lines.append(note)
            log.write(Text(note, style="dim italic"))
        del self.lines[:-self.max_lines]
        self.count += len(msg.packets)
        self.skipped += msg.skipped
        self._status(f"capturing on {self.target} {self.interface}: {self.count} packets"
                     + (f", {self.skipped} not shown" if self.skipped else ""), "green")
        self.post_message(self.Captured(self, msg.packets, msg.skipped))

    def on_packet_panel__ended(self, msg: "_Ended") -> None:
        msg.stop()
        if msg.gen == self._gen and self.running:
            self._capture = None
            self._stopped_ui(msg.error)
