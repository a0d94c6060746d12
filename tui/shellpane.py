"""The terminal pane beside a step: one live shell per lab member, the step's ``in:`` first.

``ShellPane.show(member)`` brings that member's terminal to the front, starting its shell on
first use (``ip netns exec NS bash`` with the lab prompt, the lab-gone guard and the history
file kept with the progress, see ``cnmlab.shells``). Each running shell is in the shell
registry (so stop and reset can count them) until it ends. A shell that ends says why in its
own screen: a loud banner when the lab went away (stopped, rebuilt), and "Enter opens a new
shell" in every case; it never leaves a prompt that looks like the lab's.
"""
from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from textual import on
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import ContentSwitcher, Static

from cnmlab import shells
from cnmlab.tui.terminal import TerminalView


def _view_id(member: str) -> str:
    return "term-" + "".join(c if c.isalnum() else "_" for c in member)


class ShellPane(Vertical):
    """Terminals of one lab, by member. ``members`` returns {name: (role, netns)}."""

    def __init__(self, lab_name: str, members: Callable[[], dict[str, tuple[str, str]]], *,
                 history: Callable[[str], str | None] | None = None, spawn: bool = True,
                 id: str | None = None) -> None:
        super().__init__(id=id)
        self.lab_name = lab_name
        self.members = members
        self.history = history
        self.spawn = spawn  # False: no shells are started (snapshots, read-only)
        self.member = ""
        self.views: dict[str, TerminalView] = {}

    def compose(self) -> ComposeResult:
        yield Static(id="term-title")
        yield ContentSwitcher(id="terms")

    def on_mount(self) -> None:
        self._title()

    @property
    def current(self) -> TerminalView | None:
        return self.views.get(self.member)

    def view(self, member: str) -> TerminalView:
        """The member's terminal (made, not started, when missing)."""
        v = self.views.get(member)
        if v is None:
            v = TerminalView(id=_view_id(member), classes="terminal")
            v.member = member  # type: ignore[attr-defined]
            self.views[member] = v
            self.query_one("#terms", ContentSwitcher).mount(v)
        return v

    def show(self, member: str, focus: bool = False) -> TerminalView | None:
        if not member:
            return None
        self.member = member
        v = self.view(member)
        switcher = self.query_one("#terms", ContentSwitcher)

        def front() -> None:
            switcher.current = v.id
            if self.spawn and v.proc is None:
                self.start(member)
            if focus:  # at once: the next key typed must already land in the shell
                self.screen.set_focus(v)

        if v.is_mounted:
            front()
        else:  # just made: laid out on the next refresh
            self.call_after_refresh(front)
        self._title()
        return v

    def start(self, member: str) -> None:
        """(Re)start the member's shell."""
        v = self.view(member)
        info = self.members().get(member)
        if info is None:
            v.feed(f"\r\n\x1b[1;33m{member} is not in lab {self.lab_name} (is the lab "
                   f"running?)\x1b[0m\r\n".encode())
            return
        _, ns = info
        env = shells.shell_env(self.lab_name, member, ns,
                               self.history(member) if self.history else None)
        pid = v.start(shells.shell_argv(ns), env)
        v.shell_info = shells.register(self.lab_name, member, ns, pid,  # type: ignore[attr-defined]
                                       f"app:{os.getpid()}")
        self._title()

    def restart_all_dead(self) -> None:
        for member, v in self.views.items():
            if v.proc is not None and not v.running and member == self.member:
                self.start(member)

    def close_all(self) -> None:
        for v in self.views.values():
            pid = v.proc.pid if v.proc is not None else None
            v.close()
            if pid is not None:
                shells.unregister(self.lab_name, pid)

    def alive(self) -> list[str]:
        return [m for m, v in self.views.items() if v.running]

    def _title(self) -> None:
        if not self.is_mounted:
            return
        role = ""
        try:
            role = self.members().get(self.member, ("", ""))[0]
        except Exception:
            role = ""
        what = f"{self.member} ({role})" if role else (self.member or "-")
        self.query_one("#term-title", Static).update(
            f" Terminal: {what} · F6 in/out · F4 next · F8 paste")
        self.border_title = None

    @on(TerminalView.Exited)
    def _exited(self, event: TerminalView.Exited) -> None:
        v = event.view
        member = getattr(v, "member", "?")
        if v.proc is not None:
            shells.unregister(self.lab_name, v.proc.pid)
        info = self.members().get(member)
        gone = (info is None or not shells.lab_alive(self.lab_name, info[1])
                or event.returncode < 0 or event.returncode == shells.SHELL_EXIT_LAB_GONE)
        if gone:
            why = (f"lab {self.lab_name} was stopped or rebuilt" if info is None
                   or not shells.lab_alive(self.lab_name, info[1])
                   else "its namespace was deleted"
                   if event.returncode == shells.SHELL_EXIT_LAB_GONE
                   else f"the shell was killed (signal {-event.returncode})")
            v.feed(shells.gone_banner(self.lab_name, member, why).encode())
        else:
            v.feed(f"\r\n\x1b[1;33m[the shell in {member} ended (exit "
                   f"{event.returncode})]\x1b[0m\r\n".encode())
        v.feed(f"\x1b[1mPress Enter for a new shell in {member}.\x1b[0m\r\n".encode())

    @on(TerminalView.RestartWanted)
    def _restart(self, event: TerminalView.RestartWanted) -> None:
        self.start(getattr(event.view, "member", self.member))

    def on_unmount(self) -> None:
        self.close_all()

    def describe(self) -> Any:
        return {m: v.running for m, v in self.views.items()}
