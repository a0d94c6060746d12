"""The control plane's peer table next to each host's kernel, refreshed every second.

What ``cnmlab peers LAB`` prints, as a live view for labs with global networks (overlay): per
host, whether its agent is up and in sync, and per network each remote endpoint the store
holds (IP, MAC, VTEP, which host published it) with what the host's vxlan0 has for it (ok,
missing, wrong, or stale: in the kernel but not in the store). Reads run in a thread worker.
"""
from __future__ import annotations

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.containers import VerticalScroll
from textual.widget import Widget
from textual.widgets import Static
from textual.worker import get_current_worker

from cnmlab import peers
from cnmlab.errors import CnmError
from cnmlab.lab import Lab

_KERNEL_STYLE = {"ok": "green", "missing": "bold red", "wrong": "bold red", "stale": "yellow"}


def render(hosts: list[peers.HostPeers]) -> RenderableType:
    if not hosts:
        return Text("no control plane in this lab (no global networks)", style="dim")
    out: list[RenderableType] = []
    for h in hosts:
        head = Text(f"host {h.host}  ", style="bold")
        head.append("in sync" if h.in_sync else "OUT OF SYNC",
                    style="green" if h.in_sync else "bold red")
        head.append("  agent " + ("up" if h.agent else "DOWN"),
                    style="green" if h.agent else "bold red")
        out.append(head)
        for n in h.networks:
            t = Table(box=None, header_style="bold dim", pad_edge=False, padding=(0, 1),
                      title=f"{n.network} ({n.network_id[:12]})", title_justify="left")
            for col in ("ip", "mac", "vtep", "from", "kernel"):
                t.add_column(col)
            for r in n.rows:
                t.add_row(r.ip, r.mac, r.vtep, r.owner or "-",
                          Text(r.kernel, style=_KERNEL_STYLE.get(r.kernel, "")))
            out.append(t if n.rows else Text(f"  {n.network}: no remote endpoints", style="dim"))
    return Group(*out)


class PeersView(Widget):
    """``PeersView(lab_name, target)``: the target is ignored (the table spans every host)."""

    DEFAULT_CSS = "PeersView { height: 1fr; }"

    def __init__(self, lab_name: str, target: str | None = None) -> None:
        super().__init__()
        self.lab_name = lab_name
        self.body: RenderableType = Text("")  # what the table shows now

    def compose(self) -> ComposeResult:
        with VerticalScroll():
            yield Static(Text("reading the control plane…", style="dim"), id="peers-table")

    def on_mount(self) -> None:
        self.refresh_table()
        self.set_interval(1.0, self.refresh_table)

    @work(thread=True, exclusive=True)
    def refresh_table(self) -> None:
        try:
            lab = Lab.open(self.lab_name)
            try:
                body = render(peers.report(lab.cluster, [h.controller for h in lab.hosts()]))
            finally:
                lab.close()
        except CnmError as e:
            body = Text(str(e), style="red")
        if not get_current_worker().is_cancelled:
            self.app.call_from_thread(self._show, body)

    def _show(self, body: RenderableType) -> None:
        self.body = body
        self.query_one("#peers-table", Static).update(body)
