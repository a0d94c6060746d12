"""Scrollback in the embedded terminal: shift+PgUp/PgDn and the mouse wheel show the lines
that scrolled off the top, typing comes back to the live screen, ``clear`` empties it.

The widget runs a real shell on a real pty (no namespace: nothing here touches networking).
"""
from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from textual import events
from textual.app import App, ComposeResult

from cnmlab.tui.terminal import ScrollbackScreen, TerminalView

SIZE = (80, 24)
# 200 numbered lines, then a shell that stays (cat echoes what is typed, so the shell lives)
SCRIPT = "for i in $(seq 1 200); do echo line-$i; done; exec cat"


class TermApp(App[None]):
    def compose(self) -> ComposeResult:
        yield TerminalView(id="term")

    def on_mount(self) -> None:
        view = self.query_one(TerminalView)
        view.start(["/bin/sh", "-c", SCRIPT], env={"PATH": "/usr/bin:/bin", "HOME": "/"})
        view.focus()


async def wait_for(pilot, cond: Callable[[], bool], what: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await pilot.pause(0.05)


def rendered(view: TerminalView) -> list[str]:
    """What the widget paints, line by line (its strips, not the model)."""
    return ["".join(seg.text for seg in view.render_line(y)).rstrip()
            for y in range(view.screen_model.lines)]


def scroll_event(view: TerminalView, up: bool) -> events.MouseEvent:
    cls = events.MouseScrollUp if up else events.MouseScrollDown
    return cls(view, 1, 1, 0, -1 if up else 1, 0, False, False, False)


def test_scrollback_keys_wheel_typing_and_clear():
    app = TermApp()

    async def scenario() -> None:
        async with app.run_test(size=SIZE) as pilot:
            view = app.query_one(TerminalView)
            await wait_for(pilot, lambda: "line-200" in view.text(), "the 200 lines")
            assert isinstance(view.screen_model, ScrollbackScreen)
            live = rendered(view)
            assert "line-1" not in live and "line-200" in "\n".join(live)
            assert len(view.screen_model.scrollback) >= 200 - view.screen_model.lines

            # shift+PgUp: half a screen back; what is painted is older output
            await pilot.press("shift+pageup")
            half = view.screen_model.lines // 2
            assert view.scroll == half
            shown = rendered(view)
            assert shown != live and shown == view.visible_text().split("\n")
            first = int(shown[0].split("-")[1])
            assert first < int(live[0].split("-")[1])
            # all the way up: line-1 is on top
            for _ in range(30):
                await pilot.press("shift+pageup")
            assert rendered(view)[0] == "line-1"
            await pilot.press("shift+pagedown")
            assert view.scroll == len(view.screen_model.scrollback) - half

            # new output while scrolled back: the view stays on the same lines
            before = rendered(view)
            view.send(b"more\r")  # cat echoes it: new lines arrive
            await wait_for(pilot, lambda: "more" in view.text(), "cat's echo")
            assert rendered(view) == before

            # typing goes back to the live screen and reaches the shell
            await pilot.press("z")
            assert view.scroll == 0
            await wait_for(pilot, lambda: "z" in view.text().split("\n")[view.screen_model.cursor.y],
                           "the typed z")

            # the mouse wheel scrolls three lines a notch, both ways
            view.post_message(scroll_event(view, up=True))
            await pilot.pause()
            assert view.scroll == 3
            view.post_message(scroll_event(view, up=False))
            await pilot.pause()
            assert view.scroll == 0 and rendered(view)[-1] == view.text().split("\n")[-1]

            # ESC [ 3 J (what clear sends) empties the scrollback: nothing to scroll to
            view.feed(b"\x1b[H\x1b[2J\x1b[3J")
            assert not view.screen_model.scrollback
            await pilot.press("shift+pageup")
            assert view.scroll == 0
        view.close()

    asyncio.run(scenario())


def test_a_region_scroll_does_not_fill_the_scrollback():
    """A full-screen program scrolling a region of its own (DECSTBM) saves nothing, as in xterm."""
    screen = ScrollbackScreen(20, 5)
    from pyte import ByteStream

    stream = ByteStream(screen)
    stream.feed(b"\x1b[2;4r")  # scroll region: lines 2-4
    stream.feed(b"\x1b[4;1H" + b"x\n" * 10)
    assert not screen.scrollback
    stream.feed(b"\x1b[r\x1b[5;1H" + b"y\n" * 3)  # whole screen again: lines are kept
    assert len(screen.scrollback) == 3 and screen.added == 3
