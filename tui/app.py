"""The workshop app: ``cnmlab`` with no arguments (or ``cnmlab tui``).

Screens (``cnmlab.tui.screens``)::

    LabListScreen  every lab: summary, progress (passed/total), kernel features it needs
       | Enter: start the lab in a worker (or resume the running instance)
       v
    StepScreen     one step: prose (Markdown), task, check results with truth tables, hints,
                   "show me" solutions, live kernel state / topology / packets in tabs,
                   a real shell one key away (x)
    HelpScreen     every key of every screen (?)
    ConfirmScreen  yes/no for reset, solve, stop

Everything that touches the kernel (starting, checking, solving, resetting, stopping a lab,
probing features) runs in a Textual thread worker: the engine and the probes are blocking and
the UI never waits for them. A worker that fails (``CnmError`` or anything unexpected) becomes a
notification that says what to do; no traceback reaches the screen.

Not root: the lab list still opens, read-only, with a banner "run as root to start labs";
starting a lab says the same in a notification. ``run()`` returns the exit code (0).
"""
from __future__ import annotations

import asyncio
import os
import select
import signal
import sys
import threading
from typing import Any

from textual.app import App
from textual.binding import Binding

from cnmlab.errors import CnmError

#: the exit code when the terminal went away (the shell's convention for death by SIGHUP)
HANGUP_EXIT = 128 + signal.SIGHUP
HANGUP_GRACE = 10.0  # seconds an orderly exit may take once the terminal went away


def terminal_hung_up(fd: int) -> bool:
    """Whether the terminal on ``fd`` is gone (its pty master closed, the fd invalid).

    Polled for errors only (an empty event mask), so it never takes keys from the input
    thread: a hung-up tty reports ``POLLHUP`` whatever the mask."""
    p = select.poll()
    p.register(fd, 0)
    try:
        events = p.poll(0)
    except OSError:
        return True
    return any(ev & (select.POLLHUP | select.POLLERR | select.POLLNVAL) for _, ev in events)


def friendly(error: BaseException | None) -> str:
    """One line a learner can act on, for any error a worker may raise."""
    if error is None:
        return "something went wrong"
    if isinstance(error, CnmError):
        return str(error)
    if isinstance(error, PermissionError):
        return f"{error}: run cnmlab as root (sudo cnmlab)"
    if isinstance(error, FileNotFoundError) and error.filename:
        return f"{error.filename} is missing: install the packages listed in the README"
    return (f"unexpected error ({type(error).__name__}: {error}). The lab is still there: "
            "press c to re-check, or r to reset it")


class CnmlabApp(App[int]):
    """The workshop app.

    Arguments (for tests, benchmarks and snapshots):

    * ``instance_suffix``: labs run as ``lab01-SUFFIX`` instead of ``lab01`` (parallel tests)
    * ``labdefs``: the labs to show (default: ``catalog.previews()``; LabDefs work too)
    * ``features``: kernel features (default: ``features.probe_all()`` in a worker)
    * ``live``: False hides the live kernel views (deterministic snapshots)
    * ``root``: override the "am I root" test (read-only mode)
    """

    # the live widgets' styles (widgets.tcss) come from the engineer who owns them
    CSS_PATH = [os.path.join(os.path.dirname(__file__), f) for f in ("app.tcss", "widgets.tcss")
                if os.path.exists(os.path.join(os.path.dirname(__file__), f))]
    TITLE = "cnmlab"
    SUB_TITLE = "Docker networking from real kernel objects"
    ENABLE_COMMAND_PALETTE = False
    # Ctrl-C belongs to the shell while the terminal has the focus (it interrupts the command
    # running there); Ctrl-Q quits from anywhere. Both ask first when lab shells are open.
    BINDINGS = [Binding("ctrl+c", "interrupt_or_quit", "Quit", show=False, priority=True),
                Binding("ctrl+q", "request_quit", "Quit", show=False, priority=True)]

    def __init__(self, *, instance_suffix: str | None = None, labdefs: list[Any] | None = None,
                 features: dict[str, bool] | None = None, live: bool = True,
                 root: bool | None = None, progress: Any = None,
                 watch_poll: float = 2.0) -> None:
        super().__init__()
        self.instance_suffix = instance_suffix
        self.labdefs = labdefs
        self.kernel_features = features
        self.live = live
        self.is_root = (os.geteuid() == 0) if root is None else root
        self._progress = progress
        self.poll_interval = watch_poll
        self.runs: dict[str, Any] = {}  # lab id -> LabRun opened in this session
        self.first_paint: float | None = None  # time.monotonic() when the lab list showed labs
        self._hangup_timer: threading.Timer | None = None

    # ---- shared helpers ---------------------------------------------------------------------
    @property
    def progress(self) -> Any:
        if self._progress is None:
            from cnmlab.workshop.progress import Progress

            self._progress = Progress()
        return self._progress

    def instance_name(self, labdef: Any) -> str:
        base = labdef.default_name
        return f"{base}-{self.instance_suffix}" if self.instance_suffix else base

    def lab_run(self, labdef: Any) -> Any:
        """The LabRun of a lab for this session (made once, reused when re-opened)."""
        run = self.runs.get(labdef.id)
        if run is None:
            from cnmlab.workshop.runner import LabRun

            run = LabRun(labdef, self.instance_name(labdef), self.progress)
            self.runs[labdef.id] = run
        return run

    def show_error(self, error: BaseException | str, title: str = "") -> None:
        """Show an error as a notification (never a traceback)."""
        msg = error if isinstance(error, str) else friendly(error)
        if not isinstance(error, str) and not isinstance(error, CnmError):
            self.log.error(repr(error))
        self.notify(msg, title=title or "cnmlab", severity="error", timeout=8)

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        """Ctrl-C goes to the shell (as an interrupt) while a terminal has the focus."""
        from cnmlab.tui.terminal import TerminalView

        if action == "interrupt_or_quit":
            try:
                return not isinstance(self.screen.focused, TerminalView)
            except Exception:
                return True
        return True

    def action_interrupt_or_quit(self) -> None:
        self.action_request_quit()

    def open_shells(self) -> list[str]:
        """Lab shells a quit would end or leave behind: this app's terminals that were used,
        and shells in other terminals of the labs this app runs."""
        from cnmlab import shells

        out = []
        for screen in self.screen_stack:
            pane = getattr(screen, "pane", None) if hasattr(screen, "run") else None
            if pane is not None:
                out += [f"{screen.run.name}/{m} (the terminal here)" for m in pane.alive()
                        if pane.views[m].keys_sent]
        for lab_run in self.runs.values():
            out += [s.describe() for s in shells.others(lab_run.name)
                    if not s.owner.startswith(f"app:{os.getpid()}")]
        return out

    def action_request_quit(self) -> None:
        from cnmlab.tui.screens import ConfirmScreen

        if isinstance(self.screen, ConfirmScreen):  # a second Ctrl-C: yes
            self.exit(0)
            return
        open_ = self.open_shells()
        if not open_:
            self.exit(0)
            return

        def answer(yes: bool | None) -> None:
            if yes:
                self.exit(0)

        self.push_screen(ConfirmScreen(
            "Quit cnmlab?", "Lab shells are open: " + "; ".join(open_) + ". The terminals "
            "inside this app close; shells in other terminals keep running (the labs keep "
            "running too).", yes="Quit", no="Stay"), answer)

    def on_mount(self) -> None:
        from cnmlab.tui.screens import LabListScreen

        self.push_screen(LabListScreen())
        self._watch_terminal()

    # ---- the terminal going away ------------------------------------------------------------
    def _watch_terminal(self) -> None:
        """Exit when the terminal goes away. Textual's input thread reads end-of-file from a
        hung-up tty forever (an orphaned app spun at 30% CPU), and SIGHUP alone is not enough:
        the kernel sends it to the session leader (the shell that started the app), and a
        ``nohup`` or ``trap '' HUP`` before the app ignores it. So: SIGHUP quits, and so does
        the terminal reporting a hang-up, checked twice a second."""
        stdin = sys.__stdin__
        if self.is_headless or stdin is None or not stdin.isatty():
            return  # tests' headless apps: no terminal of their own to lose
        fd = stdin.fileno()
        asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, self._hung_up)

        def check() -> None:
            if terminal_hung_up(fd):
                self._hung_up()

        self.set_interval(0.5, check, name="terminal-watch")

    def _hung_up(self) -> None:
        """Quit; and if the orderly exit itself hangs (it restores a terminal that is gone,
        and waits for workers), leave anyway after ``HANGUP_GRACE`` s: nobody is left to see
        the app, and labs outlive it by design ('cnmlab lab stop' tears them down)."""
        if self._hangup_timer is None:
            self._hangup_timer = threading.Timer(HANGUP_GRACE, os._exit, [HANGUP_EXIT])
            self._hangup_timer.daemon = True
            self._hangup_timer.start()
        self.exit(HANGUP_EXIT)


def run(argv: list[str] | None = None) -> int:
    """Open the workshop app; returns the process exit code.

    ``CNMLAB_INSTANCE_SUFFIX`` (tests): labs run as ``lab01-SUFFIX`` instead of ``lab01``.
    """
    from cnmlab import state

    app = CnmlabApp(instance_suffix=os.environ.get("CNMLAB_INSTANCE_SUFFIX") or None)
    try:
        app.run()
    except CnmError as e:  # raised before the app could show it
        print(f"cnmlab: {e}")
        return 1
    code = app.return_code
    if code == HANGUP_EXIT:
        return code  # no terminal left to print to
    for lab_run in app.runs.values():
        if state.exists(lab_run.name):
            print(f"cnmlab: lab {lab_run.labdef.id} keeps running as {lab_run.name} "
                  f"('cnmlab lab stop {lab_run.labdef.id} --name {lab_run.name}' tears it down)")
    return 0 if code is None else code


if __name__ == "__main__":
    raise SystemExit(run())
