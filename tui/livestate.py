"""The live kernel state of one lab member (a host, a sandbox or the upstream), as it changes.

How updates flow::

    thread worker (one per selected target, exclusive)         UI thread
    ─────────────────────────────────────────────────         ─────────────────────────────
    NetlinkWatcher(ns).batches()  ── burst of events ──▶      _Snap message ─▶ re-render the
      Snapshot.read(ns) (Netlink)                               sections whose text changed,
      read_firewall(ns) (iptables -S) ── if changed ──▶        then post LiveState.Updated
                                                                for the app

The view is driven by rtnetlink events, not by a blind poll: a burst of changes (100 events in
50 ms) costs one re-read and one re-render. iptables changes have no netlink event, so for a
*host* the firewall alone is also re-read on a slow 2 s tick (``firewall_poll``) and after every
netlink burst; the rest of the state is only re-read when the kernel says it changed.

Keys: ``r`` re-reads now; the body scrolls with the arrow and page keys once focused.
"""
from __future__ import annotations

import io
import time
from dataclasses import dataclass

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.message import Message
from textual.reactive import reactive
from textual.widget import Widget
from textual.widgets import Static
from textual.worker import get_current_worker

from cnmlab import state
from cnmlab.errors import CnmError
from cnmlab.kernel import netns as _netns
from cnmlab.kernel.netlink import Event, Netlink
from cnmlab.lab import split_ns_name
from cnmlab.tui.watch import NetlinkWatcher, Snapshot, parts_for, read_firewall

UPSTREAM = "upstream"


# ---- lab members -------------------------------------------------------------------------------
@dataclass(frozen=True)
class LabMember:
    """A lab member a view can look at: its lab name, its namespace and its role."""

    name: str
    ns: str
    role: str  # "upstream" | "host" | "sandbox" | "netns"
    host: str | None = None  # the host a sandbox runs on


def lab_members(lab_name: str) -> list[LabMember]:
    """upstream, then each host followed by its sandboxes (read from the lab's state file)."""
    st = state.load(lab_name)
    out: list[LabMember] = []
    if st.upstream:
        out.append(LabMember(UPSTREAM, st.upstream, "upstream"))
    for h in st.hosts.values():
        out.append(LabMember(h.name, h.netns, "host"))
        for sb in h.sandboxes.values():
            out.append(LabMember(sb.name, sb.netns or h.netns, "sandbox", h.name))
    known = {t.ns for t in out}
    for ns in st.namespaces:  # anything else the lab recorded (and still exists)
        if ns not in known and _netns.exists(ns):
            known.add(ns)
            parts = split_ns_name(ns)
            out.append(LabMember(parts[1] if parts and parts[0] == lab_name else ns, ns, "netns"))
    return out


def find_member(lab_name: str | None, name: str) -> LabMember:
    """A lab member by name (or a raw namespace name when there is no lab)."""
    if lab_name:
        for t in lab_members(lab_name):
            if t.name == name or t.ns == name:
                return t
    if _netns.exists(name):
        return LabMember(name, name, "netns")
    raise CnmError(f"{name!r} is not a host, sandbox or namespace of lab {lab_name}")


# ---- rendering (pure: Snapshot -> Rich renderables) ----------------------------------------------
_STATE_STYLE = {"UP": "green", "DOWN": "red", "LOWERLAYERDOWN": "red", "UNKNOWN": "yellow"}
_TARGET_STYLE = {"ACCEPT": "green", "DROP": "bold red", "REJECT": "red", "RETURN": "dim",
                 "DNAT": "magenta", "SNAT": "magenta", "MASQUERADE": "magenta"}


def _table(*columns: str) -> Table:
    t = Table(box=None, show_header=True, header_style="bold dim", pad_edge=False,
              padding=(0, 1), expand=False, show_edge=False)
    for c in columns:
        t.add_column(c, overflow="fold")
    return t


def _empty(text: str) -> Text:
    return Text(text, style="dim italic")


def render_interfaces(snap: Snapshot) -> RenderableType:
    """name, state, kind (``@master`` when enslaved, mtu when not 1500), MAC, addresses."""
    t = _table("name", "state", "kind", "mac", "addresses")
    for col in t.columns[:4]:
        col.no_wrap = True
    for l in snap.links:
        kind = Text(l.kind, style="dim" if l.kind == "loopback" else "")
        if l.master:
            kind.append(f"@{l.master}", style="yellow")
        if l.mtu and l.mtu != 1500 and l.kind != "loopback":
            kind.append(f" mtu {l.mtu}", style="dim")
        t.add_row(Text(l.name, style="bold"), Text(l.state, style=_STATE_STYLE.get(l.state, "")),
                  kind, Text(l.mac, style="dim"), Text(" ".join(l.addresses), style="cyan"))
    return t if snap.links else _empty("no interfaces")


def render_routes(snap: Snapshot) -> RenderableType:
    lines = []
    for r in snap.routes:
        line = Text(r.dst, style="bold")
        if r.gateway:
            line.append(" via ").append(r.gateway, style="cyan")
        if r.dev:
            line.append(f" dev {r.dev}")
        if r.scope != "global":
            line.append(f" scope {r.scope}", style="dim")
        lines.append(line)
    return Group(*lines) if lines else _empty("no routes (main table)")


def render_fdb(snap: Snapshot) -> RenderableType:
    entries = snap.bridge_fdb
    if not entries:
        return _empty("no bridge FDB entries")
    t = _table("mac", "port", "bridge", "")
    for f in sorted(entries, key=lambda f: (f.master or "", f.permanent, f.dev, f.mac)):
        t.add_row(f.mac, f.dev, f.master or "",
                  Text("local" if f.permanent else "learned", style="dim"))
    return t


def render_neighbours(snap: Snapshot) -> RenderableType:
    if not snap.neighbours:
        return _empty("no neighbours (ARP cache empty)")
    t = _table("address", "mac", "dev", "state")
    for n in sorted(snap.neighbours, key=lambda n: (n.dev, n.ip)):
        style = {"REACHABLE": "green", "FAILED": "red", "INCOMPLETE": "yellow"}.get(n.state, "")
        t.add_row(n.ip, n.mac or "-", n.dev, Text(n.state, style=style))
    return t


def render_vxlan(snap: Snapshot) -> RenderableType:
    peers = snap.vxlan_peers
    vx = [l.name for l in snap.links if l.kind == "vxlan"]
    if not vx:
        return _empty("no VXLAN links")
    if not peers:
        return _empty(f"{', '.join(vx)}: no remote peers in the FDB")
    t = _table("mac", "dev", "remote")
    for f in peers:
        t.add_row(f.mac, f.dev, Text(f.dst or "", style="cyan"))
    return t


def parse_iptables(dump: str) -> list[tuple[str, list[tuple[str, str | None, list[str]]]]]:
    """``iptables -S`` (filter then nat) -> [(table, [(chain, policy, rules)])].

    ``-S`` prints no table names; each table's listing starts with its first built-in chain's
    policy (``-P INPUT`` for filter, ``-P PREROUTING`` for nat), which is where we split.
    """
    tables: list[tuple[str, list[tuple[str, str | None, list[str]]]]] = []
    chains: dict[str, list] = {}
    for line in dump.splitlines():
        parts = line.split(None, 2)
        if len(parts) < 2 or line.startswith("#"):
            continue
        op, chain = parts[0], parts[1]
        if op == "-P" and chain in ("INPUT", "PREROUTING") and (not tables or chain in chains
                                                                or chain == "PREROUTING"):
            tables.append(("nat" if chain == "PREROUTING" else "filter", []))
            chains = {}
        if not tables:
            tables.append(("filter", []))
        if chain not in chains:
            chains[chain] = [chain, None, []]
        if op == "-P":
            chains[chain][1] = parts[2] if len(parts) > 2 else None
        elif op == "-A" and len(parts) > 2:
            chains[chain][2].append(parts[2])
        tables[-1] = (tables[-1][0], [tuple(c) for c in chains.values()])
    return tables


def _rule_text(rule: str) -> Text:
    head, sep, target = rule.partition("-j ")
    if not sep:
        head, sep, target = rule.partition("-g ")
    text = Text(head.strip() or "(all)", style="" if head.strip() else "dim")
    if sep:
        name, _, rest = target.partition(" ")
        text.append(" → ")
        text.append(name, style=_TARGET_STYLE.get(name, "bold cyan"))
        if rest:
            text.append(" " + rest, style="magenta")
    return text


def render_firewall(dump: str | None, role: str) -> RenderableType:
    if role != "host":
        return _empty("the firewall is shown for hosts (Docker programs it there)")
    if dump is None:
        return _empty("reading iptables…")
    tables = parse_iptables(dump)
    order = {"nat": 0, "filter": 1}
    out: list[RenderableType] = []
    for table, chains in sorted(tables, key=lambda t: order.get(t[0], 2)):
        out.append(Text(f"table {table}", style="bold underline"))
        idle = []
        for chain, policy, rules in chains:
            if not rules and policy == "ACCEPT":
                idle.append(chain)
                continue
            head = Text(f" {chain}", style="bold yellow" if "DOCKER" in chain else "bold")
            if policy:
                head.append(f" (policy {policy})", style=_TARGET_STYLE.get(policy, "dim"))
            if not rules:
                head.append("  empty", style="dim")
            out.append(head)
            for r in rules:
                out.append(Text("   ").append_text(_rule_text(r)))
        if idle:
            out.append(Text(f" {' '.join(idle)}: policy ACCEPT, no rules", style="dim"))
    return Group(*out) if out else _empty("no rules")


SECTIONS = ("interfaces", "routes", "fdb", "neighbours", "firewall", "ipvs", "vxlan")
TITLES = {"interfaces": "Interfaces", "routes": "Routes", "fdb": "Bridge FDB",
          "neighbours": "Neighbours", "firewall": "Firewall (nat + filter)", "ipvs": "IPVS",
          "vxlan": "VXLAN peers"}


class _Section(Static):
    """One titled block; its text is also kept as plain text (tests, diffing)."""

    def __init__(self, key: str) -> None:
        super().__init__(_empty("…"), id=f"live-{key}", classes="live-section")
        self.key = key
        self.border_title = TITLES[key]
        self.plain = ""

    def show(self, renderable: RenderableType, plain: str) -> bool:
        if plain == self.plain:
            return False
        self.plain = plain
        self.update(renderable)
        return True


def _plain(renderable: RenderableType, width: int = 76) -> str:
    from rich.console import Console

    console = Console(width=width, file=io.StringIO(), color_system=None, legacy_windows=False)
    console.print(renderable)
    return console.file.getvalue()  # type: ignore[attr-defined]


def _rendered(renderable: RenderableType) -> tuple[RenderableType, str]:
    return renderable, _plain(renderable)


def render_sections(snap: Snapshot, target: LabMember,
                    ) -> dict[str, tuple[RenderableType, str]]:
    """Every section but a host's firewall, with its plain text (runs in the worker)."""
    out = {"interfaces": _rendered(render_interfaces(snap)),
           "routes": _rendered(render_routes(snap)),
           "fdb": _rendered(render_fdb(snap)),
           "neighbours": _rendered(render_neighbours(snap)),
           "ipvs": _rendered(Text(snap.ipvs, style="dim" if "not available" in snap.ipvs else "")),
           "vxlan": _rendered(render_vxlan(snap))}
    if target.role != "host":
        out["firewall"] = _rendered(render_firewall(None, target.role))
    return out


# ---- the widget ----------------------------------------------------------------------------------
class LiveState(Widget):
    """Live Interfaces / Routes / Bridge FDB / Neighbours / Firewall / IPVS / VXLAN of a target.

    ``LiveState(lab_name, target)``; ``select(name)`` switches to another host, sandbox or
    ``"upstream"``; ``set_lab(name)`` to another lab. Posts ``LiveState.Updated`` after each
    re-render (the app can re-run a step's checks on it). See the module docstring for the
    update flow and why the firewall alone is also polled.
    """

    BINDINGS = [Binding("f5", "refresh_now", "Re-read", key_display="F5")]

    lab_name: reactive[str | None] = reactive(None, init=False)
    target: reactive[str | None] = reactive(None, init=False)

    class Updated(Message):
        """The view shows new state (``events``: what triggered it; empty on a first read)."""

        def __init__(self, live: "LiveState", target: "LabMember", snapshot: Snapshot,
                     events: list[Event]) -> None:
            super().__init__()
            self.live = live
            self.target = target
            self.snapshot = snapshot
            self.events = events

        @property
        def control(self) -> "LiveState":
            return self.live

    class _Snap(Message):
        def __init__(self, gen: int, target: LabMember, snap: Snapshot, events: list[Event],
                     sections: dict[str, tuple[RenderableType, str]]) -> None:
            super().__init__()
            self.gen, self.target, self.snap, self.events = gen, target, snap, events
            self.sections = sections  # rendered in the worker: the UI thread only swaps them

    class _Firewall(Message):
        def __init__(self, gen: int, dump: str, rendered: tuple[RenderableType, str]) -> None:
            super().__init__()
            self.gen, self.dump, self.rendered = gen, dump, rendered

    class _Problem(Message):
        def __init__(self, gen: int, text: str) -> None:
            super().__init__()
            self.gen, self.text = gen, text

    def __init__(self, lab_name: str | None = None, target: str | None = None, *,
                 firewall_poll: float = 2.0, name: str | None = None, id: str | None = None,
                 classes: str | None = None) -> None:
        super().__init__(name=name, id=id, classes=classes)
        self.firewall_poll = firewall_poll
        self._gen = 0
        self._ready = False
        self._watcher: NetlinkWatcher | None = None
        self._role = "sandbox"
        self.current: LabMember | None = None
        self.snapshot: Snapshot | None = None
        self.firewall_dump: str | None = None
        self.updates = 0  # renders done (tests and the benchmark wait on it)
        self.set_reactive(LiveState.lab_name, lab_name)
        self.set_reactive(LiveState.target, target)

    def compose(self) -> ComposeResult:
        yield Static(_empty("choose a host, sandbox or upstream"), id="live-header")
        with VerticalScroll(id="live-body"):
            for key in SECTIONS:
                yield _Section(key)

    def on_mount(self) -> None:
        self._ready = True
        self._restart()

    def on_unmount(self) -> None:
        self._ready = False
        self._stop_watcher()

    # ---- public API --------------------------------------------------------------------
    def select(self, name: str | None) -> None:
        """Show another lab member: a host, a sandbox or ``"upstream"``."""
        self.target = name

    def set_lab(self, lab_name: str | None, target: str | None = None) -> None:
        self.set_reactive(LiveState.target, target)
        self.lab_name = lab_name

    def text(self) -> str:
        """What the sections show, as plain text."""
        parts = [str(self.query_one("#live-header", Static).content)]
        for sec in self.query(_Section):
            parts.append(f"[{TITLES[sec.key]}]\n{sec.plain}")
        return "\n".join(parts)

    def action_refresh_now(self) -> None:
        self._restart()

    # ---- reactive plumbing -------------------------------------------------------------
    def watch_target(self) -> None:
        self._restart()

    def watch_lab_name(self) -> None:
        self._restart()

    def _stop_watcher(self) -> None:
        if self._watcher is not None:
            self._watcher.stop()
            self._watcher = None

    def _restart(self) -> None:
        if not self._ready:
            return
        self._stop_watcher()
        self._gen += 1
        header = self.query_one("#live-header", Static)
        if not self.target:
            header.update(_empty("choose a host, sandbox or upstream"))
            return
        header.update(Text(f"{self.target}  reading…", style="dim"))
        self._watcher = NetlinkWatcher()
        self._watch(self._gen, self._watcher, self.lab_name, self.target)

    @work(thread=True, exclusive=True, group="live-state", exit_on_error=False)
    def _watch(self, gen: int, watcher: NetlinkWatcher, lab_name: str | None, name: str) -> None:
        worker = get_current_worker()
        nl: Netlink | None = None
        try:
            try:
                target = find_member(lab_name, name)
                watcher.watch([target.ns])
                watcher.ready()
                if target.ns in watcher.errors:
                    raise CnmError(watcher.errors[target.ns])
                nl = Netlink(target.ns)  # one socket for the life of this follower
            except CnmError as e:
                self.post_message(self._Problem(gen, str(e)))
                return
            is_host = target.role == "host"
            snap = Snapshot.read(target.ns, nl=nl)
            self.post_message(self._Snap(gen, target, snap, [], render_sections(snap, target)))
            fw = None
            if is_host:
                fw = read_firewall(target.ns)
                self.post_message(self._Firewall(gen, fw, _rendered(render_firewall(fw, "host"))))
            for batch in watcher.batches(timeout=self.firewall_poll if is_host else None):
                if worker.is_cancelled or watcher.stopped:
                    break
                if any(e.kind == "netns" and e.action == "del" for e in batch):
                    self.post_message(self._Problem(gen, f"namespace {target.ns} is gone"))
                    break
                if batch:
                    snap = Snapshot.read(target.ns, nl=nl, parts=parts_for(batch), base=snap)
                    self.post_message(self._Snap(gen, target, snap, batch,
                                                 render_sections(snap, target)))
                if is_host:
                    now = read_firewall(target.ns)
                    if now != fw:
                        fw = now
                        self.post_message(self._Firewall(gen, fw,
                                                         _rendered(render_firewall(fw, "host"))))
        finally:
            if nl is not None:
                nl.close()
            watcher.close()

    # ---- rendering (UI thread) ---------------------------------------------------------
    def _section(self, key: str) -> _Section:
        return self.query_one(f"#live-{key}", _Section)

    def on_live_state__problem(self, msg: "_Problem") -> None:
        msg.stop()
        if msg.gen != self._gen:
            return
        self.query_one("#live-header", Static).update(Text(msg.text, style="bold red"))

    def on_live_state__firewall(self, msg: "_Firewall") -> None:
        msg.stop()
        if msg.gen != self._gen:
            return
        self.firewall_dump = msg.dump
        self._section("firewall").show(*msg.rendered)

    def on_live_state__snap(self, msg: "_Snap") -> None:
        msg.stop()
        if msg.gen != self._gen:
            return
        snap, target = msg.snap, msg.target
        self.current, self.snapshot, self._role = target, snap, target.role
        self.set_class(target.role == "host", "-host")
        header = Text()
        header.append(target.name, style="bold")
        header.append(f" {target.role}", style="cyan")
        header.append(f"  netns {target.ns}", style="dim")
        header.append("  " + time.strftime("%H:%M:%S", time.localtime(snap.taken)), style="dim")
        if msg.events:
            header.append(f"  {len(msg.events)} change{'s' * (len(msg.events) != 1)}",
                          style="yellow")
        if snap.error:
            header.append(f"\n{snap.error}", style="bold red")
        self.query_one("#live-header", Static).update(header)
        for key, (renderable, plain) in msg.sections.items():
            self._section(key).show(renderable, plain)
        self.updates += 1
        self.post_message(self.Updated(self, target, snap, msg.events))
