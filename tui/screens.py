"""Screens of the workshop app: the lab list, a lab's step, the key help, a yes/no question.

Layout and colours live in ``app.tcss``; Python only composes widgets and flips reactive
attributes and CSS classes (``-passed``, ``-failed``, ``-busy``, ``-watching``, ``-empty``).

Work that touches the kernel runs in thread workers (``@work(thread=True)``). Workers return
their result; ``on_worker_state_changed`` shows it (SUCCESS) or turns the error into a
notification (ERROR) -- workers never take the app down (``exit_on_error=False``). A check that
is re-run (``c`` pressed again, watch mode) cancels the previous one (``exclusive=True``); one
engine thread per lab run (``engine_call``) keeps engine operations in order and on one thread.
"""
from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.await_complete import AwaitComplete
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.reactive import reactive
from textual.screen import ModalScreen, Screen
from textual.widgets import (Button, Footer, Header, Markdown, OptionList, Static, TabbedContent,
                             TabPane)
from textual.widgets.option_list import Option
from textual.worker import Worker, WorkerState, get_current_worker

from cnmlab.errors import CnmError
from cnmlab.vm import in_vm

VM_KEY = "Press v to open the workshop in the full-kernel VM (cnmlab vm)."
from cnmlab.kernel.netlink import ADDR_EVENTS, LINK_EVENTS, ROUTE_EVENTS
from cnmlab.tui.watch import NetlinkWatcher
from cnmlab.workshop import catalog

# One engine thread per lab instance. Every engine call of a lab (start, check, solve, reset,
# stop) runs there, one at a time: they never interleave, and the engine always sees the same
# thread (driving one Lab from several short-lived threads loses state: after a solve from
# another thread than the start, lab 04's "web -> upstream" check times out).
_ENGINES: dict[str, ThreadPoolExecutor] = {}
_ENGINES_LOCK = threading.Lock()


def engine_call(name: str, fn: Any, *args: Any) -> Any:
    """Run ``fn(*args)`` in lab ``name``'s engine thread and wait (call it from a worker)."""
    with _ENGINES_LOCK:
        ex = _ENGINES.get(name)
        if ex is None:
            ex = _ENGINES[name] = ThreadPoolExecutor(1, thread_name_prefix=f"cnmlab-{name}")
    return ex.submit(fn, *args).result()


def target_cycle(lab_name: str) -> list[tuple[str, str, str]]:
    """(name, role, netns) of a running lab in the order ``t`` cycles the shell's target
    through: hosts, then sandboxes, then upstream."""
    from cnmlab import state

    st = state.load(lab_name)
    hosts: list[tuple[str, str, str]] = []
    sandboxes: list[tuple[str, str, str]] = []
    for h in st.hosts.values():
        hosts.append((h.name, "host", h.netns))
        for sb in h.sandboxes.values():
            sandboxes.append((sb.name, "sandbox", sb.netns or h.netns))
    out = hosts + sandboxes
    if st.upstream:
        out.append(("upstream", "upstream", st.upstream))
    return out


def _feature_line(labdef: Any, features: dict[str, bool] | None) -> tuple[Text, list[str]]:
    """``needs: veth ✔ bridge ✘`` and the missing features."""
    from cnmlab.kernel.features import DESCRIPTIONS

    line = Text("needs: ", style="dim")
    missing = []
    for n in labdef.needs:
        have = None if features is None else features.get(n)
        if have is None:
            line.append(f"{n} ? ", style="yellow")
        elif have:
            line.append(f"{n} ✔ ", style="green")
        else:
            line.append(f"{n} ✘ ", style="bold red")
            missing.append(n)
    if not labdef.needs:
        line.append("nothing special")
    if missing:
        line.append("\nmissing here: ", style="bold red")
        line.append("; ".join(DESCRIPTIONS.get(m, m) for m in missing), style="red")
    return line, missing


def result_renderable(r: Any) -> RenderableType:
    """One CheckResult: status, label, the learner-actionable reason, expected/observed, table."""
    if getattr(r, "skipped", False):
        mark, style = "○ SKIP", "dim"
    elif r.ok:
        mark, style = "✔ PASS", "bold green"
    else:
        mark, style = "✘ FAIL", "bold red"
    head = Text()
    head.append(mark, style=style)
    head.append("  ")
    head.append(r.check, style="bold")
    parts: list[RenderableType] = [head]
    if not r.ok or getattr(r, "skipped", False):
        if r.reason:
            parts.append(Text.assemble(("  why: ", "bold yellow"), r.reason))
        parts.append(Text.assemble(("  expected: ", "dim"), str(r.expected)))
        parts.append(Text.assemble(("  observed: ", "dim"), str(r.observed)))
    if r.table is not None:
        try:
            parts.append(r.table.to_rich())
        except Exception:  # a table that cannot render must not hide the result
            parts.append(Text(r.table.render_text()))
    return Group(*parts)


def _same(a: list[Any], b: list[Any]) -> bool:
    """Two check runs that a learner would see identically (watch mode skips the repaint)."""
    def key(r: Any) -> tuple[Any, ...]:
        table = r.table.summary if r.table is not None else None
        return (r.check, r.ok, r.expected, r.observed, r.reason, table,
                getattr(r, "skipped", False))

    return len(a) == len(b) and all(key(x) == key(y) for x, y in zip(a, b))


class WorkerErrors:
    """Mixin for screens: a failed worker becomes a notification, never a traceback."""

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        worker = event.worker
        if event.state == WorkerState.ERROR:
            self.worker_failed(worker.name, worker.error)  # type: ignore[attr-defined]
        elif event.state == WorkerState.SUCCESS:
            self.worker_done(worker.name, worker.result)  # type: ignore[attr-defined]

    def worker_failed(self, name: str, error: BaseException | None) -> None:
        self.app.show_error(error)  # type: ignore[attr-defined]

    def worker_done(self, name: str, result: Any) -> None:
        pass


# =============================================================================================
# the lab list


def _load_lab(folder: str) -> Any:
    """The full loader, for a lab file the lab list's quick read could not take: it says
    exactly what is wrong. Imported here, not at the top: the lab list must not wait for the
    checks the full loader brings in."""
    from cnmlab.workshop import labfile

    return labfile.load(folder)


class LabListScreen(WorkerErrors, Screen):
    """Every lab: title, progress, running or not, what it needs from the kernel."""

    BINDINGS = [
        Binding("enter", "open", "Open", tooltip="open the highlighted lab: start it (in the "
                "background) or resume it if it is already running"),
        Binding("d", "stop_lab", "Stop lab", tooltip="stop (tear down) the highlighted lab if "
                "it is running"),
        Binding("question_mark", "help", "Keys", key_display="?",
                tooltip="this list of keys"),
        Binding("q", "quit", "Quit", tooltip="quit the app (running labs keep running)"),
        Binding("v", "vm", "Full-kernel VM", show=False, tooltip="open the workshop in the "
                "full-kernel VM (cnmlab vm): for labs needing what this kernel lacks"),
    ]

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static(id="banner", classes="-empty")
        with Vertical(id="lab-body"):
            yield OptionList(id="labs")
            yield Static(id="lab-detail")
        yield Footer()

    def on_mount(self) -> None:
        self.title = "cnmlab"
        self.sub_title = "labs · full-kernel VM" if in_vm() else "labs"
        self.query_one("#labs").border_title = "Labs · ↑↓ choose · Enter open · ? keys"
        app = self.app
        if not app.is_root:  # type: ignore[attr-defined]
            self.banner("run as root to start labs (sudo cnmlab): you can read the labs here, "
                        "but not build them")
        if app.labdefs is None:  # type: ignore[attr-defined]
            try:
                app.labdefs = catalog.previews(broken=_load_lab)  # type: ignore[attr-defined]
            except CnmError as e:
                app.labdefs = []  # type: ignore[attr-defined]
                self.banner(f"cannot load the labs: {e}")
        self.fill()
        if app.kernel_features is None:  # type: ignore[attr-defined]
            self._probe()

    def on_screen_resume(self) -> None:
        if self.app.labdefs is not None:  # type: ignore[attr-defined]
            self.fill()

    def banner(self, text: str) -> None:
        b = self.query_one("#banner", Static)
        b.update(text)
        b.set_class(not text, "-empty")

    # ---- workers ---------------------------------------------------------------------------
    @work(thread=True, exclusive=True, group="probe", name="probe", exit_on_error=False)
    def _probe(self) -> dict[str, bool]:
        from cnmlab.kernel import features

        try:
            return features.probe_all()
        except CnmError:  # not root and no cached probe: unknown, shown as "?"
            return {}

    @work(thread=True, exclusive=True, group="start", name="start", exit_on_error=False)
    def _start(self, labdef: Any) -> Any:
        from cnmlab import state
        from cnmlab.workshop import labfile

        if not hasattr(labdef, "topology"):  # a preview: load and validate the lab now
            labdef = labfile.load(labdef.path)
        run = self.app.lab_run(labdef)  # type: ignore[attr-defined]

        def start() -> None:
            if run.running:  # resume the running instance
                st = state.load(run.name)
                other = st.extra.get("labrun", {}).get("lab_id")
                if other not in (None, labdef.id):
                    raise CnmError(f"{run.name} is running lab {other}: stop it first "
                                   f"(cnmlab lab stop {other} --name {run.name})")
                run._attach()
            else:
                run.start(resume=True)

        engine_call(run.name, start)
        return run

    @work(thread=True, exclusive=True, group="start", name="stop", exit_on_error=False)
    def _stop(self, labdef: Any) -> str:
        run = self.app.lab_run(labdef)  # type: ignore[attr-defined]
        engine_call(run.name, run.stop)
        return run.name

    def worker_done(self, name: str, result: Any) -> None:
        app = self.app
        if name == "probe":
            app.kernel_features = result  # type: ignore[attr-defined]
            self.fill()
        elif name == "start":
            self.query_one("#labs").loading = False
            from cnmlab.tui.screens import StepScreen

            self.app.push_screen(StepScreen(result))
        elif name == "stop":
            self.query_one("#labs").loading = False
            self.notify(f"lab {result} stopped")
            self.fill()

    def worker_failed(self, name: str, error: BaseException | None) -> None:
        self.query_one("#labs").loading = False
        if name == "start":
            self.fill()
        titles = {"start": "cannot start the lab", "stop": "cannot stop the lab"}
        self.app.show_error(error, title=titles.get(name, ""))  # type: ignore[attr-defined]

    # ---- the list ----------------------------------------------------------------------------
    def _row(self, labdef: Any) -> Table:
        from cnmlab import state

        app = self.app
        p = app.progress.lab(labdef.id)  # type: ignore[attr-defined]
        done = sum(1 for s in labdef.steps if s.id in p["passed"])
        total = len(labdef.steps)
        _, missing = _feature_line(labdef, app.kernel_features)  # type: ignore[attr-defined]
        running = state.exists(app.instance_name(labdef))  # type: ignore[attr-defined]
        grid = Table.grid(expand=True, padding=(0, 1))
        grid.add_column(width=1)
        grid.add_column(width=2)
        grid.add_column(ratio=1, no_wrap=True, overflow="ellipsis")
        grid.add_column(width=5, justify="right")
        grid.add_column(width=9)
        mark = Text("✔", style="green") if done == total else Text(" ")
        status = (Text("missing", style="bold red") if missing else
                  Text("running", style="bold cyan") if running else Text(""))
        num = labdef.id.split("-")[0][:2]
        grid.add_row(mark, Text(num, style="dim"), Text(labdef.title, style="bold"),
                     Text(f"{done}/{total}", style="green" if done == total else ""), status)
        return grid

    def fill(self) -> None:
        ol = self.query_one("#labs", OptionList)
        labdefs = self.app.labdefs or []  # type: ignore[attr-defined]
        keep = ol.highlighted
        ol.clear_options()
        ol.add_options([Option(self._row(ld), id=ld.id) for ld in labdefs])
        if labdefs:
            ol.highlighted = keep if keep is not None and keep < len(labdefs) else 0
            if self.app.first_paint is None:  # type: ignore[attr-defined]
                self.app.first_paint = time.monotonic()  # type: ignore[attr-defined]
        ol.focus()
        self.show_detail()

    def current(self) -> Any:
        ol = self.query_one("#labs", OptionList)
        labdefs = self.app.labdefs or []  # type: ignore[attr-defined]
        if ol.highlighted is None or ol.highlighted >= len(labdefs):
            return None
        return labdefs[ol.highlighted]

    @on(OptionList.OptionHighlighted, "#labs")
    def show_detail(self) -> None:
        from cnmlab import state
        from cnmlab.kernel.features import REMEDY

        labdef = self.current()
        detail = self.query_one("#lab-detail", Static)
        if labdef is None:
            detail.update(Text("no labs", style="dim"))
            return
        app = self.app
        p = app.progress.lab(labdef.id)  # type: ignore[attr-defined]
        done = sum(1 for s in labdef.steps if s.id in p["passed"])
        needs, missing = _feature_line(labdef, app.kernel_features)  # type: ignore[attr-defined]
        name = app.instance_name(labdef)  # type: ignore[attr-defined]
        text = Text()
        text.append(f"{labdef.id}", style="bold")
        text.append(f"  {done}/{len(labdef.steps)} steps passed", style="dim")
        if state.exists(name):
            text.append(f"  running as {name}", style="cyan")
        text.append("\n")
        text.append(" ".join(labdef.summary.split()))
        text.append("\n")
        text.append_text(needs)
        if missing:
            text.append(f"\n{REMEDY}", style="yellow")
            text.append(f"\n{VM_KEY}", style="bold yellow")
        self.set_class(bool(missing), "-missing")
        detail.update(text)

    # ---- actions -----------------------------------------------------------------------------
    @on(OptionList.OptionSelected, "#labs")
    def _selected(self) -> None:
        self.action_open()

    def action_open(self) -> None:
        from cnmlab.kernel.features import DESCRIPTIONS, REMEDY

        labdef = self.current()
        if labdef is None:
            return
        app = self.app
        if not app.is_root:  # type: ignore[attr-defined]
            app.show_error("labs build network namespaces: run cnmlab as root (sudo cnmlab)")
            return
        _, missing = _feature_line(labdef, app.kernel_features)  # type: ignore[attr-defined]
        if missing:
            what = ", ".join(DESCRIPTIONS.get(m, m) for m in missing)
            app.show_error(f"lab {labdef.id} needs {what}: {REMEDY}. {VM_KEY}",
                           title="missing kernel features")
            return
        if self.query_one("#labs").loading:
            return
        self.query_one("#labs").loading = True
        self._start(labdef)

    def action_stop_lab(self) -> None:
        from cnmlab import state

        labdef = self.current()
        if labdef is None:
            return
        name = self.app.instance_name(labdef)  # type: ignore[attr-defined]
        if not state.exists(name):
            self.notify(f"{name} is not running")
            return

        def answer(yes: bool | None) -> None:
            if yes:
                self.query_one("#labs").loading = True
                self._stop(labdef)

        self.app.push_screen(ConfirmScreen(f"Stop lab {name}?",
                                           "Every namespace of this lab is torn down. Your "
                                           "progress is kept.", yes="Stop"), answer)

    def action_vm(self) -> None:
        """This workshop again, inside the full-kernel VM (``cnmlab vm``); back here on quit."""
        if in_vm():
            self.notify("this is the full-kernel VM already")
            return
        try:
            with self.app.suspend():
                print("\033[2J\033[Hcnmlab: opening the workshop in the full-kernel VM "
                      "(Debian's kernel under qemu; the first time, its kernel is fetched). "
                      "Quit it (q) to come back here.\n", flush=True)
                subprocess.call([sys.executable, "-m", "cnmlab.cli", "vm"])
        except Exception as e:  # SuspendNotSupported (headless, web), ...
            self.app.show_error(f"cannot open the VM from here ({type(e).__name__}): in a "
                                f"terminal run: cnmlab vm")
            return
        self.fill()

    def action_help(self) -> None:
        self.app.push_screen(HelpScreen())

    def action_quit(self) -> None:
        self.app.exit(0)


# =============================================================================================
# a lab's step


LIVE_VIEWS = {  # tab id -> (module, class, tab title)
    "tab-live": ("livestate", "LiveState", "Live"),
    "tab-topology": ("topology", "TopologyView", "Topology"),
    "tab-packets": ("packets", "PacketPanel", "Packets"),
    "tab-peers": ("peers", "PeersView", "Peers"),  # labs with a control plane only
    "tab-plugins": ("pluginlog", "PluginLog", "Plugins"),  # calls a served plugin received
}


class StepScreen(WorkerErrors, Screen):
    """One step of a running lab: text, task, checks, hints, solution, live views, a shell."""

    # One key, one meaning, wherever the focus is. The letters are priority bindings, so no
    # widget inside a tab (a Select, a button, the packet list) can give them another meaning;
    # while the terminal has the focus they are off (``check_action``: the shell gets every
    # letter) and the function keys carry the same commands (the footer shows which).
    BINDINGS = [
        Binding("c", "check", "Check", priority=True, tooltip="run this step's checks"),
        Binding("h", "hint", "Hint", priority=True, tooltip="show the next hint"),
        Binding("s", "solve", "Show me", priority=True, tooltip="show the solution commands, "
                "then apply them if you say yes (steps before this one are solved too)"),
        Binding("n", "next_step", "Next", priority=True, tooltip="next step"),
        Binding("p", "prev_step", "Prev", priority=True, tooltip="previous step"),
        Binding("w", "toggle_watch", "Watch", priority=True, tooltip="watch mode: re-run the "
                "checks whenever the kernel state changes (and every 2 s); the step turns "
                "green when it passes"),
        Binding("i", "focus_terminal", "Type", priority=True, tooltip="type in the terminal "
                "beside the step (F6 comes back)"),
        Binding("y", "paste", "Paste cmd", priority=True, tooltip="pick a command block of "
                "this step and paste it into the terminal (it runs when you press Enter)"),
        Binding("t", "cycle_target", "Target", priority=True, tooltip="next lab member for the "
                "terminal and the live views: host, sandboxes, upstream"),
        Binding("x", "shell", "Full shell", priority=True, tooltip="open a full-screen shell "
                "in the selected lab member ('exit' comes back here)"),
        Binding("r", "reset", "Reset", priority=True, tooltip="reset this step (rebuild the "
                "lab up to the step before) or the whole lab (asks first)"),
        Binding("D", "docker_diff", "Docker?", key_display="D", priority=True,
                tooltip="what would real Docker have built here? runs the lab's commands on "
                "Docker 20.10 (5-10 s) and shows what differs from your host (labs that name "
                "a scenario)"),
        Binding("1", "tab('tab-step')", "Step tab", show=False, priority=True,
                tooltip="show the step"),
        Binding("2", "tab('tab-live')", "Live tab", show=False, priority=True,
                tooltip="live kernel state of the target"),
        Binding("3", "tab('tab-topology')", "Topology tab", show=False, priority=True,
                tooltip="the lab's topology"),
        Binding("4", "tab('tab-packets')", "Packets tab", show=False, priority=True,
                tooltip="packets seen by the target"),
        Binding("5", "tab('tab-plugins')", "Plugins tab", show=False, priority=True,
                tooltip="every call a served plugin received, with its JSON, live"),
        Binding("question_mark", "help", "Keys", key_display="?", priority=True,
                tooltip="this list of keys"),
        Binding("q", "back", "Back", priority=True, tooltip="back to the lab list (the lab "
                "keeps running)"),
        Binding("escape", "back", "Back", show=False, tooltip="back to the lab list"),
        Binding("Q", "stop_and_quit", "Stop+quit", key_display="Q", priority=True,
                tooltip="stop the lab (tear it down; progress is kept) and quit the app; "
                "asks first when shells are open in the lab"),
        # the same commands while typing in the terminal
        Binding("f1", "fkey('help')", "Keys", key_display="F1", priority=True,
                tooltip="in the terminal: this list of keys"),
        Binding("f2", "fkey('check')", "Check", key_display="F2", priority=True,
                tooltip="in the terminal: run this step's checks"),
        Binding("f3", "fkey('hint')", "Hint", key_display="F3", priority=True,
                tooltip="in the terminal: the next hint"),
        Binding("f4", "fkey('cycle_target')", "Next member", key_display="F4", priority=True,
                tooltip="in the terminal: the shell of the next lab member"),
        Binding("f6", "fkey('toggle_terminal')", "Leave terminal", key_display="F6",
                priority=True, tooltip="into the terminal, or back out of it"),
        Binding("f7", "fkey('shell')", "Full shell", key_display="F7", priority=True,
                tooltip="in the terminal: a full-screen shell"),
        Binding("f8", "fkey('paste')", "Paste cmd", key_display="F8", priority=True,
                tooltip="in the terminal: paste a command block of the step"),
        Binding("f9", "fkey('solve')", "Show me", key_display="F9", priority=True,
                tooltip="in the terminal: show me the solution"),
    ]
    _TERMINAL_KEYS = {"help", "check", "hint", "cycle_target", "toggle_terminal", "shell",
                      "paste", "solve"}

    step_index: reactive[int] = reactive(0, init=False)
    watching: reactive[bool] = reactive(False, init=False)
    passed: reactive[bool] = reactive(False, init=False)
    busy: reactive[str] = reactive("", init=False)
    target: reactive[str] = reactive("", init=False)

    def __init__(self, run: Any) -> None:
        super().__init__()
        self.run = run
        self.labdef = run.labdef
        self.results: dict[str, list[Any]] = {}  # step id -> last results
        self._watcher: NetlinkWatcher | None = None
        self._pending = False  # a watch tick came while a check ran
        self._checking = False
        self._members: list[tuple[str, str, str]] = []
        self.checks_done = 0  # completed check runs (tests wait on it)
        self.resets_done = 0  # completed resets (tests wait on it)

    # ---- layout ------------------------------------------------------------------------------
    def compose(self) -> ComposeResult:
        from cnmlab.tui.shellpane import ShellPane

        yield Header()
        yield Static(id="status")
        with Horizontal(id="workbench"):
            with TabbedContent(id="tabs", initial="tab-step"):
                with TabPane("Step", id="tab-step"):
                    with VerticalScroll(id="step-scroll"):
                        yield Markdown(id="step-text")
                        yield Markdown(id="task")
                        yield Static(id="where")
                        yield Static(id="hints", classes="-empty")
                        yield Static(id="solution", classes="-empty")
                        yield Static(id="verdict", classes="-empty")
                        yield Static(id="why", classes="-empty")
                        yield Vertical(id="results")
                        yield Markdown(id="recap", classes="-empty")
                for tab_id, (_, _, title) in LIVE_VIEWS.items():
                    if tab_id == "tab-peers" and not self.labdef.topology.control_plane:
                        continue
                    with TabPane(title, id=tab_id):
                        yield Static(self._placeholder_text(), classes="placeholder")
            yield ShellPane(self.run.name, self._member_map, history=self._history_file,
                            spawn=self.app.live, id="shell-pane")  # type: ignore[attr-defined]
        yield Footer()

    def _member_map(self) -> dict[str, tuple[str, str]]:
        return {name: (role, ns) for name, role, ns in self._members}

    def _history_file(self, member: str) -> str | None:
        try:
            return self.run.progress.history_file(self.labdef.id, member)
        except Exception:
            return None

    @property
    def pane(self) -> Any:
        return self.query_one("#shell-pane")

    def terminal_focused(self) -> bool:
        from cnmlab.tui.terminal import TerminalView

        return isinstance(self.focused, TerminalView)

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        """Letters while reading, function keys while typing (F6 in both)."""
        if action == "docker_diff" and self.labdef.docker_diff is None:
            return False
        in_term = self.terminal_focused()
        if action == "fkey":
            return in_term or parameters[:1] == ("toggle_terminal",)
        if in_term and action != "back":
            return False
        if in_term and action == "back":
            return False
        return True

    def action_fkey(self, name: str) -> None:
        getattr(self, f"action_{name}")()

    def on_descendant_focus(self) -> None:
        self.refresh_bindings()

    def on_descendant_blur(self) -> None:
        self.refresh_bindings()

    def _placeholder_text(self) -> str:
        if not self.app.live:  # type: ignore[attr-defined]
            return "live view off"
        return "live view not available"

    def on_mount(self) -> None:
        self.title = self.labdef.title
        self.sub_title = self.run.name
        cur = self.run.current_step
        self.refresh_members()
        self.set_reactive(StepScreen.step_index,
                          cur.index if cur is not None else len(self.labdef.steps) - 1)
        self.show_step()
        self.query_one("#step-scroll").focus()
        self.pane.show(self.target)

    def on_unmount(self) -> None:
        self._stop_watch()

    # ---- the step ------------------------------------------------------------------------------
    @property
    def step(self) -> Any:
        return self.labdef.steps[self.step_index]

    def watch_step_index(self) -> None:
        self.show_step()

    def show_step(self) -> None:
        info = self.run.show(self.step)
        concept = f"*CNM concept: {info['concept']}*\n\n" if info["concept"] else ""
        self.query_one("#step-text", Markdown).update(
            f"## Step {info['number']}/{info['of']}: {info['title']}\n\n{concept}{info['text']}")
        self.query_one("#task", Markdown).update(f"**Your task.** {info['task']}")
        self.query_one("#task").border_title = "Task"
        self._follow_step()
        self.query_one("#solution", Static).update("")
        self.query_one("#solution").set_class(True, "-empty")
        self.show_hints()
        self.show_results(self.results.get(self.step.id))
        self.passed = info["passed"]
        self.update_status()
        self.show_recap()
        self.query_one("#step-scroll").scroll_home(animate=False)

    def _follow_step(self) -> None:
        """The step says where the learner works (``in:``): the terminal goes there."""
        where = [w for w in self.step.where]
        names = [m[0] for m in self._members]
        first = next((w for w in where if w in names or not names), None)
        if first:
            self.target = first
        text = Text()
        text.append("Work in: ", style="bold")
        text.append(", ".join(where) if where else (self.target or "-"), style="cyan")
        text.append("  (the terminal beside: i or F6 types there, t/F4 switches member, "
                    "y/F8 pastes a command; x: full-screen shell)", style="dim")
        self.query_one("#where", Static).update(text)

    def show_recap(self) -> AwaitComplete | None:
        """At the end of the lab: what was built, the Docker equivalent, the commands typed.

        Returns the Markdown's update (``None`` when there is no recap): it parses in a thread
        and mounts its blocks later, so whoever scrolls to the recap must wait for it."""
        w = self.query_one("#recap", Markdown)
        last = self.step_index == len(self.labdef.steps) - 1
        done = self.run.current_step is None
        if not (last and done and self.labdef.recap):
            w.set_class(True, "-empty")
            return None
        body = f"## Recap: {self.labdef.title}\n\n{self.run.render(self.labdef.recap)}"
        try:
            typed = self.run.progress.history(self.labdef.id)
        except Exception:
            typed = {}
        if typed:
            body += "\n\n### The commands you typed\n"
            for member, lines in typed.items():
                body += f"\nin **{member}**:\n\n" + "".join(
                    f"    {l}\n" for l in lines[-15:])
        w.set_class(False, "-empty")
        return w.update(body)

    def show_hints(self) -> None:
        hints = self.run.hints_shown(self.step)
        w = self.query_one("#hints", Static)
        w.set_class(not hints, "-empty")
        w.border_title = "Hints"
        w.update(Text("\n".join(str(h) for h in hints)))

    def show_results(self, results: list[Any] | None) -> None:
        box = self.query_one("#results", Vertical)
        verdict = self.query_one("#verdict", Static)
        box.remove_children()
        # classes on the screen restyle every widget (and re-highlight the step's code
        # blocks): flip them only when the state really changes, never off-then-on
        if results is None:
            self._mark(False, "-failed")
            verdict.update("")
            verdict.set_class(True, "-empty")
            self.query_one("#why", Static).set_class(True, "-empty")
            return
        widgets = []
        for r in results:
            state = "-skip" if getattr(r, "skipped", False) else ("-ok" if r.ok else "-fail")
            widgets.append(Static(result_renderable(r), classes=f"result {state}"))
        box.mount_all(widgets)
        failing = sum(1 for r in results if not r.ok)
        why = self.run.why.get(self.step.id) if failing else None
        why_w = self.query_one("#why", Static)
        why_w.update(Text.assemble(("why: ", "bold yellow"), why or ""))
        why_w.set_class(not why, "-empty")
        if failing:
            text = (f"✘ {failing} of {len(results)} checks fail. "
                    "h: a hint · s: show me the solution · i: type in the terminal")
        else:
            nxt = self.step_index + 1 < len(self.labdef.steps)
            text = (f"✔ all {len(results)} checks pass: step passed! "
                    + ("n: next step" if nxt else "That was the last step: lab complete."))
        verdict.update(text)
        verdict.set_class(False, "-empty")
        verdict.set_class(bool(failing), "-fail")
        verdict.set_class(not failing, "-ok")
        self._mark(bool(failing), "-failed")

    def update_status(self) -> None:
        s = self.step
        n, total = s.index + 1, len(self.labdef.steps)
        left = Text()
        left.append(f"Step {n}/{total} ", style="bold")
        left.append(s.title)
        right = Text()
        if self.busy:
            right.append(f"{self.busy}… ", style="bold yellow")
        if self.watching:
            right.append("● watch ", style="bold magenta")
        if self.target:
            right.append(f"⌂ {self.target} ", style="cyan")
        right.append("✔ passed" if self.passed else "○ to do", style="bold")
        grid = Table.grid(expand=True)
        grid.add_column(ratio=1, no_wrap=True, overflow="ellipsis")
        grid.add_column(justify="right", no_wrap=True)
        grid.add_row(left, right)
        self.query_one("#status", Static).update(grid)

    def _mark(self, on: bool, cls: str) -> None:
        """Flip a step-state class on the widgets it styles (``#status``, ``#task``).

        Why not on the screen: a class on the screen re-matches the CSS of all of its ~400
        widgets and repaints them all (100-300 ms of UI thread on a loaded 2-core machine),
        and watch mode flips these classes while the learner types in the terminal.
        """
        for w in self.query("#status, #task"):
            w.set_class(on, cls)

    def watch_passed(self, passed: bool) -> None:
        self._mark(passed, "-passed")
        self.update_status()

    def watch_busy(self, busy: str) -> None:
        self._mark(bool(busy), "-busy")
        self.update_status()

    def watch_target(self, target: str) -> None:
        self.update_status()
        for w in self._live_widgets():
            self._select(w)
        if self.is_mounted:
            self.pane.show(target, focus=self.terminal_focused())

    # ---- checks (worker) ----------------------------------------------------------------------
    def action_check(self) -> None:
        self.start_check(quiet=False)

    def start_check(self, quiet: bool) -> None:
        self._checking = True
        self._pending = False
        if not quiet:  # watch mode's checks run quietly: no status flicker, no restyle
            self.busy = "checking"
        self._check(self.step, quiet)

    @work(thread=True, exclusive=True, group="check", name="check", exit_on_error=False)
    def _check(self, step: Any, quiet: bool) -> tuple[Any, list[Any], bool]:
        worker = get_current_worker()

        def check() -> list[Any]:
            return [] if worker.is_cancelled else self.run.check(step)

        results = engine_call(self.run.name, check)
        return step, results, quiet if results else True

    def _checked(self, step: Any, results: list[Any], quiet: bool) -> None:
        self._checking = False
        if self.busy == "checking":
            self.busy = ""
        if not results and quiet:
            return
        self.checks_done += 1
        was = self.results.get(step.id)
        self.results[step.id] = results
        ok = all(r.ok for r in results)
        if step is not self.step:
            return
        was_ok = was is not None and all(r.ok for r in was)
        if quiet and was is not None and _same(was, results):
            if self._pending and self.watching:  # nothing new to show: keep the screen still
                self.start_check(quiet=True)
            return
        self.show_results(results)
        self.passed = step.id in self.run.passed
        recap = self.show_recap()
        if ok and (not quiet or not was_ok):
            self.notify(f"step {step.index + 1} passed!", title=step.title)
        elif not quiet:
            failing = sum(1 for r in results if not r.ok)
            self.notify(f"{failing} of {len(results)} checks fail", severity="warning")
        if not quiet:
            self.query_one(TabbedContent).active = "tab-step"
            if ok and recap is not None:
                self._scroll_when_shown(recap, "#recap")
            else:
                self.call_after_refresh(self._scroll_to, "#verdict")
        if self._pending and self.watching:
            self.start_check(quiet=True)

    # ---- solve / reset / stop (workers) ---------------------------------------------------------
    def action_solve(self) -> None:
        if self.busy and self.busy != "checking":
            self.notify(f"wait: {self.busy}")
            return
        target = self.step
        todo = [s for s in self.labdef.steps[:target.index + 1]
                if s.id not in self.run.passed or s is target]
        body = Text()
        for s in todo:
            body.append(f"# step {s.index + 1}: {s.title}\n", style="bold")
            for line in self.run.solution(s):
                pad = line.index("]") + 2 if line.startswith("[") else 0
                body.append("  " + line.replace("\n", "\n  " + " " * pad) + "\n", style="cyan")
        self.query_one("#solution", Static).update(body)
        w = self.query_one("#solution")
        w.border_title = "Solution"
        w.set_class(False, "-empty")
        self.call_after_refresh(self._scroll_to, "#solution")

        def answer(yes: bool | None) -> None:
            if yes:
                self.busy = "solving"
                self._solve(target)

        self.app.push_screen(ConfirmScreen("Show me: the solution", body,
                                           yes="Apply", no="Not now"), answer)

    @work(thread=True, exclusive=False, group="engine", name="solve", exit_on_error=False)
    def _solve(self, step: Any) -> tuple[Any, list[Any]]:
        def solve() -> list[Any]:
            self.run.solve(step)
            return self.run.check(step)

        return step, engine_call(self.run.name, solve)

    def _shells_warning(self) -> str:
        """What a teardown would kill besides this app's own terminals."""
        from cnmlab import shells

        others = shells.others(self.run.name)
        if not others:
            return ""
        return (f"{len(others)} shell(s) are open in this lab elsewhere: "
                + "; ".join(s.describe() for s in others)
                + ". They will be killed (each says so on its screen).")

    def action_reset(self) -> None:
        if self.busy and self.busy != "checking":
            self.notify(f"wait: {self.busy}")
            return
        step = self.step

        def answer(choice: str | None) -> None:
            if choice in ("step", "lab"):
                self.busy = "resetting"
                self._stop_watch()
                self._reset(choice, step)

        warn = self._shells_warning()
        body = Text()
        body.append(f"1  this step: rebuild the lab as it was when step {step.index + 1} began "
                    "(the solutions of the steps before it are applied); this step and the "
                    "later ones count as not passed.\n")
        body.append("2  the whole lab: rebuild from step 1; this lab's progress (steps passed, "
                    "hints) is cleared.\n")
        body.append("Your terminals here get a new shell. ")
        if warn:
            body.append("\n" + warn, style="bold red")
        self.app.push_screen(ChoiceScreen(f"Reset lab {self.run.name}?", body,
                                          [("1", "step", f"This step ({step.index + 1})"),
                                           ("2", "lab", "Whole lab")]), answer)

    @work(thread=True, exclusive=False, group="engine", name="reset", exit_on_error=False)
    def _reset(self, what: str, step: Any) -> tuple[str, Any]:
        if what == "step":
            engine_call(self.run.name, self.run.reset_step, step)
        else:
            engine_call(self.run.name, self.run.reset)
        return what, step

    def action_stop_and_quit(self) -> None:
        warn = self._shells_warning()

        def answer(yes: bool | None) -> None:
            if yes:
                self.busy = "stopping the lab"
                self._stop_watch()
                self._stop()

        if warn:
            self.app.push_screen(ConfirmScreen(
                f"Stop lab {self.run.name} and quit?",
                Text(warn + " Your progress is kept.", style="bold"), yes="Stop and quit",
                no="Cancel"), answer)
            return
        answer(True)

    @work(thread=True, exclusive=False, group="engine", name="stop", exit_on_error=False)
    def _stop(self) -> None:
        engine_call(self.run.name, self.run.stop)

    # ---- what would Docker have built here? (worker) --------------------------------------------
    def action_docker_diff(self) -> None:
        if self.busy and self.busy != "checking":
            self.notify(f"wait: {self.busy}")
            return
        self.busy = "asking Docker"
        self._docker_diff()

    @work(thread=True, exclusive=True, group="docker-diff", name="docker-diff",
          exit_on_error=False)
    def _docker_diff(self) -> tuple[Any, list[str], str]:
        from cnmlab.checks import scenario

        name, host = self.labdef.docker_diff
        commands = [str(s) for s in scenario.load(name).steps]
        return engine_call(self.run.name, self.run.docker_diff), commands, host

    def worker_done(self, name: str, result: Any) -> None:
        if name == "docker-diff":
            from cnmlab.tui.dockerdiff import DockerDiffScreen

            self.busy = ""
            self.app.push_screen(DockerDiffScreen(*result))
        elif name == "check":
            self._checked(*result)
        elif name == "solve":
            step, results = result
            self.busy = ""
            self._checked(step, results, False)
        elif name == "reset":
            what, step = result
            self.busy = ""
            self.results.clear()
            self.refresh_members()
            index = step.index if what == "step" else 0
            self.notify(f"lab {self.run.name} rebuilt: "
                        + (f"step {index + 1} starts again" if what == "step"
                           else "back to step 1"))
            if self.step_index == index:
                self.show_step()
            self.step_index = index
            self.pane.restart_all_dead()
            self.resets_done += 1
            if self.watching:
                self._start_watch()
        elif name == "stop":
            self.busy = ""
            self.app.exit(0)

    def worker_failed(self, name: str, error: BaseException | None) -> None:
        self.busy = ""
        self._checking = False
        what = {"check": "check failed", "solve": "could not apply the solution",
                "reset": "reset failed", "stop": "could not stop the lab",
                "docker-diff": "could not compare with Docker"}.get(name, "")
        if name == "check" and self.watching:
            self.watching = False
            what += " (watch mode off)"
        self.app.show_error(error, title=what)  # type: ignore[attr-defined]

    # ---- hints, navigation --------------------------------------------------------------------
    def action_hint(self) -> None:
        try:
            before = len(self.run.hints_shown(self.step))
            h = self.run.hint(self.step)
        except (CnmError, OSError) as e:
            self.app.show_error(e)  # type: ignore[attr-defined]
            return
        if h is None:
            self.notify("no hints for this step: s shows the solution")
            return
        if before >= h.total:
            self.notify("that was the last hint: s shows the solution")
        self.show_hints()
        self.call_after_refresh(self._scroll_to, "#hints")

    def _scroll_when_shown(self, update: AwaitComplete, selector: str) -> None:
        """Scroll to a Markdown panel once its update has mounted its blocks. Scrolled to
        before (a loaded machine parses slowly), the empty panel sits at the bottom and its
        text then grows below the view, out of sight."""
        async def reveal() -> None:
            await update
            self.call_after_refresh(self._scroll_to, selector)

        self.run_worker(reveal(), name="reveal", group="reveal", exit_on_error=False)

    def _scroll_to(self, selector: str, again: bool = True) -> None:
        """Bring a panel to the top of the step (after the layout has caught up)."""
        if again:  # a panel just shown or filled is laid out on the next refresh
            self.call_after_refresh(self._scroll_to, selector, False)
            return
        scroll = self.query_one("#step-scroll", VerticalScroll)
        scroll.scroll_to_widget(self.query_one(selector), animate=False, top=True)

    def action_next_step(self) -> None:
        if self.step_index + 1 < len(self.labdef.steps):
            self.step_index += 1
            if self.watching:
                self.start_check(quiet=True)
        else:
            self.notify("this is the last step")

    def action_prev_step(self) -> None:
        if self.step_index > 0:
            self.step_index -= 1
            if self.watching:
                self.start_check(quiet=True)

    def action_tab(self, tab: str) -> None:
        # leave the old pane first: a focused widget left inside a hidden pane pulls the tabs
        # back to it (TabbedContent follows the focus)
        tabs = self.query_one(TabbedContent)
        if self.focused is not None and not self.terminal_focused():
            self.set_focus(None)
        tabs.active = tab
        if tab == "tab-step" and not self.terminal_focused():
            self.query_one("#step-scroll").focus()

    # ---- the terminal beside the step ---------------------------------------------------------
    def action_focus_terminal(self) -> None:
        v = self.pane.show(self.target, focus=True)
        if v is None:
            self.notify("the lab has no members yet")

    def action_toggle_terminal(self) -> None:
        if self.terminal_focused():
            self.set_focus(self.query_one("#step-scroll"))  # at once, not after a refresh
        else:
            self.action_focus_terminal()

    def action_paste(self) -> None:
        from cnmlab.tui.snippets import snippets

        blocks = snippets(self.run.show(self.step)["text"], [m[0] for m in self._members])
        if not blocks:
            self.notify("this step has no command block to paste")
            return

        def pick(index: int | None) -> None:
            if index is None:
                return
            snip = blocks[index]
            if snip.member and snip.member != self.target:
                self.target = snip.member
            view = self.pane.show(self.target, focus=True)

            def paste() -> None:
                if view is not None:
                    view.paste(snip.text)

            self.call_after_refresh(paste)

        self.app.push_screen(SnippetScreen(blocks), pick)

    def action_help(self) -> None:
        self.app.push_screen(HelpScreen())

    def action_back(self) -> None:
        self._stop_watch()
        self.app.pop_screen()
        self.app.notify(f"lab {self.run.name} keeps running; Q on its step screen (or "
                        f"d here) stops it", timeout=4)

    # ---- watch mode ---------------------------------------------------------------------------
    def action_toggle_watch(self) -> None:
        self.watching = not self.watching

    def watch_watching(self, on: bool) -> None:
        self._mark(on, "-watching")
        self.update_status()
        if on:
            self._start_watch()
            self.notify("watch mode: checks re-run when the kernel state changes")
            self.start_check(quiet=True)
        else:
            self._stop_watch()

    def _namespaces(self) -> list[str]:
        try:
            return [ns for _, _, ns in target_cycle(self.run.name)]
        except CnmError:
            return []

    def _start_watch(self) -> None:
        self._stop_watch()
        # no neighbour events: the checks' own pings would re-trigger the checks forever
        self._watcher = NetlinkWatcher(self._namespaces(),
                                       groups=LINK_EVENTS | ADDR_EVENTS | ROUTE_EVENTS)
        self._watch_kernel(self._watcher)

    def _stop_watch(self) -> None:
        if self._watcher is not None:
            self._watcher.stop()
            self._watcher = None

    @work(thread=True, exclusive=True, group="watch", name="watch", exit_on_error=False)
    def _watch_kernel(self, watcher: NetlinkWatcher) -> None:
        worker = get_current_worker()
        try:
            poll = self.app.poll_interval  # type: ignore[attr-defined]
            for batch in watcher.batches(timeout=poll):
                if worker.is_cancelled or watcher.stopped:
                    break
                watcher.watch(self._namespaces())  # sandboxes come and go
                self.app.call_from_thread(self._watch_tick, bool(batch))
        finally:
            watcher.close()

    def _watch_tick(self, changed: bool) -> None:
        if not self.watching or (self.busy and self.busy != "checking"):
            return
        if self._checking:
            self._pending = self._pending or changed
            return
        self.start_check(quiet=True)

    # ---- lab members, shell, live views ----------------------------------------------------------
    def refresh_members(self) -> None:
        try:
            self._members = target_cycle(self.run.name)
        except CnmError:
            self._members = []
        names = [m[0] for m in self._members]
        if self.target not in names:
            sandboxes = [m[0] for m in self._members if m[1] == "sandbox"]
            self.target = sandboxes[0] if sandboxes else (names[0] if names else "")

    def action_cycle_target(self) -> None:
        self.refresh_members()
        names = [m[0] for m in self._members]
        if not names:
            self.notify("the lab has no members yet")
            return
        i = names.index(self.target) if self.target in names else -1
        self.target = names[(i + 1) % len(names)]
        role = dict((m[0], m[1]) for m in self._members)[self.target]
        self.notify(f"target: {self.target} ({role})", timeout=2)

    def action_shell(self) -> None:
        from cnmlab import shells

        self.refresh_members()
        ns = {m[0]: m[2] for m in self._members}.get(self.target)
        if ns is None:
            self.app.show_error(f"lab {self.run.name} is not running: press r to rebuild it, or "
                           "q and open it again")
            return
        where = f"{self.run.name}/{self.target}"
        try:
            with self.app.suspend():
                print(f"\033[2J\033[Hcnmlab: a shell in {self.target} (netns {ns}). "
                      "'exit' or Ctrl-D goes back to the lab.\n", flush=True)
                shells.run_shell(self.run.name, self.target, ns, owner=f"app:{os.getpid()}",
                                 history=self._history_file(self.target))
        except Exception as e:  # SuspendNotSupported (headless, web), bash missing...
            self.app.show_error(f"cannot open a shell here ({type(e).__name__}): in another "
                           f"terminal run: cnmlab shell {where}")
            return
        self.refresh_members()
        if self.watching:
            self.start_check(quiet=True)

    def _live_widgets(self) -> list[Any]:
        out = []
        for tab_id in LIVE_VIEWS:
            for w in self.query(f"#{tab_id} .live-view"):
                out.append(w)
        return out

    @on(TabbedContent.TabActivated)
    def _tab_activated(self, event: TabbedContent.TabActivated) -> None:
        pane = event.pane
        live = self.app.live  # type: ignore[attr-defined]
        if pane is None or pane.id not in LIVE_VIEWS or not live:
            return
        if pane.query(".live-view"):
            return
        module, cls, _ = LIVE_VIEWS[pane.id]
        try:
            import importlib

            mod = importlib.import_module(f"cnmlab.tui.{module}")
            factory = getattr(mod, cls)
            widget = (factory(self.run.name) if cls == "TopologyView"
                      else factory(self.run.name, self.target or None))
            widget.add_class("live-view")
        except Exception as e:  # absent or broken: say so, keep the app alive
            pane.query_one(".placeholder", Static).update(
                f"live view not available ({type(e).__name__}: {e})")
            return
        pane.query(".placeholder").remove()
        pane.mount(widget)

    def _select(self, widget: Any) -> None:
        """Point a live view at the current target (LiveState.select, PacketPanel.choose)."""
        if not self.target:
            return
        for method in ("select", "choose"):
            fn = getattr(widget, method, None)
            if callable(fn):
                try:
                    fn(self.target)
                except Exception as e:  # the view's problem, not the learner's
                    self.app.log.error(f"live view {method}: {e!r}")
                return


# =============================================================================================
# help and confirm


class HelpScreen(ModalScreen[None]):
    """Every key of every screen, from the screens' own bindings."""

    BINDINGS = [Binding("escape,q,question_mark", "dismiss_help", "Close")]

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="help-box"):
            yield Static(self._keys(), id="help-keys")
            yield Static("Esc, q or ? closes this list. Arrows/PgUp/PgDn scroll; Tab moves "
                         "between widgets.", id="help-foot")

    def _keys(self) -> Group:
        parts: list[RenderableType] = []
        for title, screen in (("Lab list", LabListScreen), ("Step screen", StepScreen)):
            t = Table(title=title, title_justify="left", title_style="bold", box=None,
                      show_header=False, padding=(0, 1), expand=True)
            t.add_column(style="bold cyan", no_wrap=True, width=9)
            t.add_column(ratio=1)
            for b in screen.BINDINGS:
                if isinstance(b, Binding):
                    keys = b.key_display or ", ".join(
                        k.replace("escape", "Esc").replace("enter", "Enter")
                        for k in b.key.split(","))
                    t.add_row(keys, b.tooltip or b.description)
            parts.append(t)
        parts.append(Text("Every letter above means the same in every tab. Inside the Live and "
                          "Topology tabs F5 re-reads the kernel state; in the Packets tab g "
                          "starts/stops the capture, Ctrl-L clears it and f hides the checks' "
                          "own packets (marked [check]). While you type in the terminal, "
                          "letters go to the shell and F1-F9 carry the commands; Ctrl-C "
                          "interrupts the command in the shell, Ctrl-Q quits the app; "
                          "Shift+PgUp/PgDn or the mouse wheel scroll back through its output.",
                          style="dim"))
        return Group(*parts)

    def on_mount(self) -> None:
        self.query_one("#help-box").border_title = "Keys"
        self.query_one("#help-box").focus()

    def action_dismiss_help(self) -> None:
        self.dismiss(None)


class ConfirmScreen(ModalScreen[bool]):
    """A small yes/no question: y/Enter says yes, n/Esc says no."""

    BINDINGS = [Binding("y", "answer(True)", "Yes"),
                Binding("n,escape", "answer(False)", "No")]

    def __init__(self, title: str, body: RenderableType = "", yes: str = "Yes",
                 no: str = "Cancel") -> None:
        super().__init__()
        self._title, self._body, self._yes, self._no = title, body, yes, no

    def compose(self) -> ComposeResult:
        with Vertical(id="confirm-box"):
            with VerticalScroll(id="confirm-body"):
                yield Static(self._body)
            with Horizontal(id="confirm-buttons"):
                yield Button(f"{self._yes} (y)", id="yes", variant="primary")
                yield Button(f"{self._no} (n)", id="no")

    def on_mount(self) -> None:
        self.query_one("#confirm-box").border_title = self._title
        self.query_one("#yes", Button).focus()

    @on(Button.Pressed)
    def _pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id == "yes")

    def action_answer(self, yes: bool) -> None:
        self.dismiss(yes)


class ChoiceScreen(ModalScreen[str | None]):
    """A question with a few answers, each on a key (and a button); n/Esc cancels."""

    BINDINGS = [Binding("n,escape", "choose(None)", "Cancel")]

    def __init__(self, title: str, body: RenderableType, choices: list[tuple[str, str, str]]
                 ) -> None:
        super().__init__()
        self._title, self._body, self._choices = title, body, choices
        for key, value, _ in choices:
            self._bindings.bind(key, f"choose('{value}')", show=False)

    def compose(self) -> ComposeResult:
        with Vertical(id="confirm-box"):
            with VerticalScroll(id="confirm-body"):
                yield Static(self._body)
            with Horizontal(id="confirm-buttons"):
                for key, value, label in self._choices:
                    yield Button(f"{label} ({key})", id=f"choice-{value}", variant="primary")
                yield Button("Cancel (n)", id="choice-cancel")

    def on_mount(self) -> None:
        self.query_one("#confirm-box").border_title = self._title
        self.query_one(Button).focus()

    @on(Button.Pressed)
    def _pressed(self, event: Button.Pressed) -> None:
        value = (event.button.id or "").removeprefix("choice-")
        self.dismiss(None if value == "cancel" else value)

    def action_choose(self, value: str | None) -> None:
        self.dismiss(value)


class SnippetScreen(ModalScreen[int | None]):
    """Pick one of the step's command blocks to paste into the terminal."""

    BINDINGS = [Binding("escape,n", "pick(None)", "Cancel")]

    def __init__(self, blocks: list[Any]) -> None:
        super().__init__()
        self.blocks = blocks

    def compose(self) -> ComposeResult:
        with Vertical(id="snippet-box"):
            yield OptionList(*[Option(self._row(i, b), id=str(i))
                               for i, b in enumerate(self.blocks)], id="snippets")
            yield Static("Enter pastes it into the terminal (it runs when you press Enter "
                         "there) · Esc closes", id="snippet-foot")

    @staticmethod
    def _row(i: int, b: Any) -> Text:
        t = Text()
        t.append(f"{i + 1}. ", style="bold")
        if b.member:
            t.append(f"[{b.member}] ", style="bold cyan")
        t.append(b.text.rstrip())
        return t

    def on_mount(self) -> None:
        self.query_one("#snippet-box").border_title = "Paste a command into the terminal"
        self.query_one("#snippets").focus()

    @on(OptionList.OptionSelected, "#snippets")
    def _chosen(self, event: OptionList.OptionSelected) -> None:
        self.dismiss(int(event.option.id or 0))

    def action_pick(self, value: int | None) -> None:
        self.dismiss(value)
