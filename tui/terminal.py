"""A live terminal inside the app: a shell on a pty, drawn from a ``pyte`` screen.

Why our own widget: ``textual-terminal`` 0.3 (2023) imports ``textual.app.DEFAULT_COLORS``,
which Textual 1.0 removed, so it does not load with the Textual we use; ``textual-tty`` 0.4 pins
``bittty<0.2`` (a whole second terminal emulator) while 0.3 is current. The part we need is
small: pyte (a VT100/xterm screen model, pure Python) does the escape sequences, this widget
only moves bytes and paints lines.

* Output: the pty's master fd is watched by the asyncio loop (``add_reader``); every chunk is
  fed to pyte, and only the lines pyte marks dirty are repainted (``render_line`` + Strips).
* Input: a focused ``TerminalView`` turns every key into the bytes a terminal sends, except
  the function keys, which stay with the app (so the app's commands work while typing here).
* ``paste(text)`` types a block into the shell as a *bracketed* paste when the shell asked for
  it (bash 5.1+ does): the lines land in the edit buffer and run only when Enter is pressed.
* When the shell ends, ``Exited`` is posted; ``feed()`` shows any message in the screen.
* Scrollback: lines scrolled off the top are kept (``ScrollbackScreen``, the last
  ``SCROLLBACK`` lines); shift+PgUp/shift+PgDn and the mouse wheel move the view through them,
  any key typed into the shell comes back to the bottom. pyte's own ``HistoryScreen`` was not
  used: it wraps every screen method call (``__getattribute__``), which costs on every byte,
  and pages by moving lines in and out of the live buffer.

The process is a child of the app; ``close()`` (also on unmount) hangs it up.
"""
from __future__ import annotations

import fcntl
import os
from collections import deque
import signal
import struct
import subprocess
import termios
from typing import Any

import pyte
from rich.segment import Segment
from rich.style import Style
from textual import events
from textual.geometry import Region, Size
from textual.message import Message
from textual.strip import Strip
from textual.widget import Widget

BRACKETED_PASTE = 2004 << 5  # pyte stores private modes shifted by 5
DECCKM = 1 << 5  # application cursor keys

_KEYS = {
    "enter": "\r", "tab": "\t", "backspace": "\x7f", "escape": "\x1b", "delete": "\x1b[3~",
    "insert": "\x1b[2~", "pageup": "\x1b[5~", "pagedown": "\x1b[6~", "home": "\x1b[H",
    "end": "\x1b[F", "shift+tab": "\x1b[Z", "ctrl+space": "\x00", "ctrl+@": "\x00",
}
_ARROWS = {"up": "A", "down": "B", "right": "C", "left": "D"}
SCROLLBACK = 2000  # lines kept above the screen
WHEEL_LINES = 3
_COLOURS = {"brown": "yellow", "default": None}


def _colour(name: str) -> str | None:
    if name in _COLOURS:
        return _COLOURS[name]
    if len(name) == 6 and all(c in "0123456789abcdefABCDEF" for c in name):
        return f"#{name}"
    if name.startswith("bright"):
        base = _COLOURS.get(name[6:], name[6:])
        return f"bright_{base}"
    return name


def key_bytes(event: events.Key, app_cursor: bool = False) -> bytes | None:
    """The bytes a terminal sends for a key; None for keys left to the app (F1-F12)."""
    key = event.key
    if key.startswith("f") and key[1:].isdigit():
        return None
    if key in _ARROWS:
        return (("\x1bO" if app_cursor else "\x1b[") + _ARROWS[key]).encode()
    if key.startswith(("ctrl+", "shift+", "alt+")) and key.rsplit("+", 1)[-1] in _ARROWS:
        mod = {"shift": 2, "alt": 3, "ctrl": 5}[key.split("+")[0]]
        return f"\x1b[1;{mod}{_ARROWS[key.rsplit('+', 1)[-1]]}".encode()
    if key in _KEYS:
        return _KEYS[key].encode()
    if key.startswith("alt+") and event.character:
        return b"\x1b" + event.character.encode()
    if event.character:
        return event.character.encode()
    if key.startswith("ctrl+") and len(key) == 6 and key[5].isalpha():
        return bytes([ord(key[5].lower()) & 0x1F])
    return None


class ScrollbackScreen(pyte.Screen):
    """A pyte screen that keeps the lines scrolled off its top (like xterm's saveLines).

    Only a scroll of the whole screen saves a line: a full-screen program (less, vim) that
    scrolls a region of its own does not fill the scrollback with its redraws. ``ESC [ 3 J``
    (what ``clear`` sends) empties it. ``added`` counts every saved line, so a view scrolled
    back can stay on the same text while new output arrives.
    """

    def __init__(self, columns: int, lines: int, keep: int = SCROLLBACK) -> None:
        self.scrollback: deque[Any] = deque(maxlen=keep)
        self.added = 0
        super().__init__(columns, lines)

    def index(self) -> None:
        top, bottom = self.margins or (0, self.lines - 1)
        if self.cursor.y == bottom and top == 0:
            # index() drops row ``top``'s object from the buffer: keep it (no copy needed)
            self.scrollback.append(self.buffer.pop(top, None))
            self.added += 1
        super().index()

    def erase_in_display(self, how: int = 0, *args: Any, **kwargs: Any) -> None:
        super().erase_in_display(how, *args, **kwargs)
        if how == 3:
            self.scrollback.clear()

    def reset(self) -> None:
        super().reset()
        self.scrollback.clear()


class TerminalView(Widget, can_focus=True):
    """One shell on a pty, shown through pyte. ``start(argv, env)``, ``send``, ``paste``."""

    class Exited(Message):
        """The shell ended (``returncode`` < 0: killed by that signal)."""

        def __init__(self, view: "TerminalView", returncode: int) -> None:
            super().__init__()
            self.view, self.returncode = view, returncode

        @property
        def control(self) -> "TerminalView":
            return self.view

    class RestartWanted(Message):
        """Enter was pressed in a terminal whose shell has ended."""

        def __init__(self, view: "TerminalView") -> None:
            super().__init__()
            self.view = view

        @property
        def control(self) -> "TerminalView":
            return self.view

    class Output(Message):
        """Output arrived (bubbles; benchmarks and tests time echoes with it)."""

        def __init__(self, view: "TerminalView") -> None:
            super().__init__()
            self.view = view

    def __init__(self, *, name: str | None = None, id: str | None = None,
                 classes: str | None = None, columns: int = 80, rows: int = 24) -> None:
        super().__init__(name=name, id=id, classes=classes)
        self.screen_model = ScrollbackScreen(columns, rows)
        self.scroll = 0  # lines the view is scrolled back into the scrollback (0: live)
        self.stream = pyte.ByteStream(self.screen_model)
        self.proc: subprocess.Popen[bytes] | None = None
        self.fd: int | None = None
        self.returncode: int | None = None
        self.bytes_in = 0  # output bytes seen (tests wait on it)
        self.keys_sent = 0  # keys the learner typed (a used terminal is worth asking about)
        self._styles: dict[tuple[Any, ...], Style] = {}
        self.post_output = False  # post Output messages (off by default: a flood of them)

    # ---- the child process ---------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self.proc is not None and self.returncode is None

    def start(self, argv: list[str], env: dict[str, str] | None = None) -> int:
        """Start ``argv`` on a new pty sized like the widget; returns its PID."""
        self.close()
        master, slave = os.openpty()
        self._set_size(slave)
        env = dict(os.environ if env is None else env)
        env["TERM"] = "xterm-256color"
        env.pop("COLUMNS", None)
        env.pop("LINES", None)

        def child_setup() -> None:  # the new session's controlling terminal is the pty
            fcntl.ioctl(0, termios.TIOCSCTTY, 0)

        try:
            self.proc = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave,
                                         env=env, start_new_session=True,
                                         cwd=env.get("HOME") or "/",
                                         preexec_fn=child_setup, close_fds=True)
        finally:
            os.close(slave)
        os.set_blocking(master, False)
        self.fd = master
        self.returncode = None
        self.screen_model.reset()
        self._attach_reader()
        return self.proc.pid

    def _attach_reader(self) -> None:
        import asyncio

        if self.fd is None:
            return
        self._loop = asyncio.get_running_loop()  # start() runs on the app's thread
        self._loop.add_reader(self.fd, self._readable)

    def _readable(self) -> None:
        assert self.fd is not None
        try:
            data = os.read(self.fd, 65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._ended()
            return
        self.feed(data)

    def _ended(self) -> None:
        fd, self.fd = self.fd, None
        if fd is not None:
            try:
                self._loop.remove_reader(fd)
            except Exception:
                pass
            os.close(fd)
        rc = -1
        if self.proc is not None:
            try:
                rc = self.proc.wait(timeout=2)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                rc = self.proc.wait()
        self.returncode = rc
        self.post_message(self.Exited(self, rc))

    def close(self) -> None:
        """Hang up the shell (SIGHUP to its session, then SIGKILL) and forget it."""
        proc, fd = self.proc, self.fd
        self.fd = None
        if fd is not None:
            try:
                self._loop.remove_reader(fd)
            except Exception:
                pass
            os.close(fd)
        if proc is not None and proc.poll() is None:
            for sig in (signal.SIGHUP, signal.SIGKILL):
                try:
                    os.killpg(proc.pid, sig)
                except OSError:
                    pass
                try:
                    proc.wait(timeout=1)
                    break
                except subprocess.TimeoutExpired:
                    continue
        if proc is not None and self.returncode is None:
            self.returncode = proc.poll()

    def on_unmount(self) -> None:
        self.close()

    # ---- bytes in and out ----------------------------------------------------------------
    def feed(self, data: bytes) -> None:
        """Show output (from the shell, or a message of the app's own)."""
        before = self.screen_model.added
        self.stream.feed(data)
        self.bytes_in += len(data)
        dirty = self.screen_model.dirty
        if self.scroll:  # scrolled back: stay on the same lines while new ones arrive
            self.scroll = min(self.scroll + self.screen_model.added - before,
                              len(self.screen_model.scrollback))
            self.refresh()
        elif len(dirty) > self.screen_model.lines // 2:
            self.refresh()
        else:
            width = self.size.width
            for y in dirty:
                self.refresh(Region(0, y, width, 1))
            cy = self.screen_model.cursor.y
            self.refresh(Region(0, cy, width, 1))
        dirty.clear()
        if self.post_output:
            self.post_message(self.Output(self))

    def send(self, data: bytes) -> None:
        """Type bytes into the shell."""
        if self.fd is None:
            return
        view = memoryview(data)
        while view:
            try:
                n = os.write(self.fd, view)
            except BlockingIOError:
                import select

                select.select([], [self.fd], [], 1.0)
                continue
            except OSError:
                return
            view = view[n:]

    def paste(self, text: str) -> None:
        """Type a block as a paste: with bracketed paste on, it waits for Enter."""
        body = text.rstrip("\n").replace("\r\n", "\n").replace("\n", "\r")
        if BRACKETED_PASTE in self.screen_model.mode:
            self.send(b"\x1b[200~" + body.encode() + b"\x1b[201~")
        else:
            self.send(body.encode())

    def text(self) -> str:
        """The screen as plain text (tests)."""
        return "\n".join(line.rstrip() for line in self.screen_model.display)

    # ---- scrollback ----------------------------------------------------------------------
    def scroll_back(self, lines: int) -> bool:
        """Move the view ``lines`` up (negative: down) in the scrollback; False if it could not."""
        new = max(0, min(self.scroll + lines, len(self.screen_model.scrollback)))
        if new == self.scroll:
            return False
        self.scroll = new
        self.refresh()
        return True

    def _row(self, y: int) -> Any:
        """The row object shown at line ``y`` of the view (None: an empty line)."""
        screen = self.screen_model
        if not self.scroll:
            return screen.buffer[y]
        back = screen.scrollback
        i = len(back) - self.scroll + y
        return back[i] if i < len(back) else screen.buffer[i - len(back)]

    def visible_text(self) -> str:
        """The lines as the view shows them, scrollback included (tests)."""
        screen = self.screen_model
        out = []
        for y in range(screen.lines):
            row = self._row(y)
            out.append("" if row is None else
                       "".join(row[x].data for x in range(screen.columns)).rstrip())
        return "\n".join(out)

    # ---- Textual -------------------------------------------------------------------------
    def on_key(self, event: events.Key) -> None:
        if event.key in ("shift+pageup", "shift+pagedown"):
            event.stop()
            event.prevent_default()
            half = max(1, self.screen_model.lines // 2)
            self.scroll_back(half if event.key == "shift+pageup" else -half)
            return
        data = key_bytes(event, app_cursor=DECCKM in self.screen_model.mode)
        if data is None:
            return  # F-keys: the app's
        event.stop()
        event.prevent_default()
        if self.fd is None:
            if event.key == "enter":
                self.post_message(self.RestartWanted(self))
            return
        self.keys_sent += 1
        if self.scroll:  # typing goes back to the live screen, as in xterm
            self.scroll = 0
            self.refresh()
        self.send(data)

    def on_mouse_scroll_up(self, event: events.MouseScrollUp) -> None:
        if self.scroll_back(WHEEL_LINES):
            event.stop()

    def on_mouse_scroll_down(self, event: events.MouseScrollDown) -> None:
        if self.scroll_back(-WHEEL_LINES):
            event.stop()

    def on_paste(self, event: events.Paste) -> None:
        event.stop()
        self.paste(event.text)

    def on_resize(self, event: events.Resize) -> None:
        cols, rows = max(event.size.width, 10), max(event.size.height, 3)
        if (cols, rows) != (self.screen_model.columns, self.screen_model.lines):
            self.screen_model.resize(rows, cols)
            if self.fd is not None:
                self._set_size(self.fd)
                if self.proc is not None:
                    try:
                        os.killpg(self.proc.pid, signal.SIGWINCH)
                    except OSError:
                        pass
            self.refresh()

    def _set_size(self, fd: int) -> None:
        rows, cols = self.screen_model.lines, self.screen_model.columns
        fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))

    def on_focus(self) -> None:
        self.refresh()

    def on_blur(self) -> None:
        self.refresh()

    def get_content_width(self, container: Size, viewport: Size) -> int:
        return self.screen_model.columns

    def get_content_height(self, container: Size, viewport: Size, width: int) -> int:
        return self.screen_model.lines

    def _style(self, ch: Any, cursor: bool) -> Style:
        key = (ch.fg, ch.bg, ch.bold, ch.italics, ch.underscore, ch.reverse, cursor)
        style = self._styles.get(key)
        if style is None:
            fg, bg = _colour(ch.fg), _colour(ch.bg)
            reverse = ch.reverse != cursor
            try:
                style = Style(color=fg, bgcolor=bg, bold=ch.bold or None,
                              italic=ch.italics or None, underline=ch.underscore or None,
                              reverse=reverse or None)
            except Exception:  # a colour rich does not know
                style = Style(reverse=reverse or None)
            self._styles[key] = style
        return style

    def render_line(self, y: int) -> Strip:
        screen = self.screen_model
        width = self.size.width
        if y >= screen.lines:
            return Strip.blank(width, self.rich_style)
        row = self._row(y)
        if row is None:
            return Strip.blank(width, self.rich_style)
        cur = screen.cursor
        show_cursor = self.has_focus and not cur.hidden and cur.y == y and not self.scroll
        segments: list[Segment] = []
        text = []
        last: Style | None = None
        for x in range(min(screen.columns, width)):
            ch = row[x]
            if ch.data == "":  # the right half of a wide character drawn just before
                continue
            style = self._style(ch, show_cursor and x == cur.x)
            if style is not last and text:
                segments.append(Segment("".join(text), last))
                text = []
            last = style
            text.append(ch.data or " ")
        if text:
            segments.append(Segment("".join(text), last))
        base = self.rich_style
        return Strip(segments).apply_style(base).extend_cell_length(width, base)
