""""What would Docker have built here?": the lab's host next to real Docker, in a dialog.

The step screen's ``D`` key runs the lab's ``docker_diff`` scenario on a throwaway dockerd
20.10 in a worker (``StepScreen._docker_diff``: 5-10 s, never on the event loop) and shows the
result here: the Docker commands that ran, then section by section the lines only the
learner's host has (``-``, yours) and the lines only Docker has (``+``), the known, deliberate
differences dimmed with their reason. Layout and colours of the boxes live in ``app.tcss``.
"""
from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Static

from cnmlab.checks.diff import DiffResult


def summary(result: DiffResult) -> str:
    unlisted = len(result.unlisted)
    known = len(result.differences) - unlisted
    if not result.differences:
        return f"{result.sections} sections compared: your host matches Docker's exactly"
    return (f"{result.sections} sections compared: {unlisted} differences"
            + (f" and {known} known ones" if known else "")
            + "  (- only yours · + only Docker's)")


def body(result: DiffResult, commands: list[str]) -> Text:
    """The commands Docker ran, then the differences, one section header each."""
    text = Text()
    text.append("Docker 20.10 ran, in a throwaway namespace:\n", style="bold")
    for c in commands:
        text.append(f"  $ {c}\n", style="cyan")
    section = None
    for d in result.differences:
        if d.section != section:
            section = d.section
            text.append(f"\n[{section}]\n", style="bold")
        if d.known:
            text.append(f"  {'-' if d.side == 'engine' else '+'} {d.line}\n", style="dim")
            text.append(f"      known: {d.known}\n", style="dim italic")
        elif d.side == "engine":
            text.append(f"  - {d.line}\n", style="red")
        else:
            text.append(f"  + {d.line}\n", style="green")
    return text


class DockerDiffScreen(ModalScreen[None]):
    """The result of one comparison; Esc, q or D closes it."""

    BINDINGS = [Binding("escape,q,D", "close", "Close")]

    def __init__(self, result: DiffResult, commands: list[str], host: str) -> None:
        super().__init__()
        self.result = result
        self.commands = commands
        self.host = host

    def compose(self) -> ComposeResult:
        # title and class are set before the box is mounted: never a frame without its title
        same = self.result.ok and not self.result.differences
        with Vertical(id="diff-box", classes="-same" if same else "") as box:
            box.border_title = f"What would Docker have built on {self.host}?"
            yield Static(summary(self.result), id="diff-summary")
            with VerticalScroll(id="diff-body"):
                yield Static(body(self.result, self.commands), id="diff-lines")
            yield Static("Generated names are shown by role (<veth:c1.eth0>, <br:bridge>): "
                         "your own names are no difference. Esc, q or D closes.",
                         id="diff-foot")

    def on_mount(self) -> None:
        self.query_one("#diff-body").focus()

    def action_close(self) -> None:
        self.dismiss(None)
