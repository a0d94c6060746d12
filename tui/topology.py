"""A text diagram of a lab that follows the kernel, not only the engine's model.

    upstream
    └── wan0 bridge 203.0.113.1/24
        └── h0-h1 ── h1 eth0 203.0.113.10/24
            ├── docker0 bridge 172.17.0.1/16
            │   └── veth1a2b3c4 ── c1 eth0 172.17.0.2/16
            └── vx0 vxlan ✎

Every namespace of the lab is watched (one ``NetlinkWatcher`` over all of them); on a change
the changed namespaces' links are read again with the ``Netlink`` facade, which gives each
veth's peer ifindex and the id of the peer's namespace, so the tree follows the actual
cables: a veth a learner creates by hand appears at once, in the right place, marked
``✎`` (not in the engine's model). New sandboxes are picked up because making one changes the
host's links, which re-reads the lab's state file and widens the set of watched namespaces.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

from rich.text import Text
from rich.tree import Tree
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
from cnmlab.kernel.netlink import Event, LinkInfo, Netlink
from cnmlab.model import LabState
from cnmlab.tui.livestate import LabMember, lab_members
from cnmlab.tui.watch import NetlinkWatcher

HAND = "✎"


@dataclass
class Topology:
    """Links per namespace plus the veth cabling between them, ready to draw."""

    lab: str
    targets: list[LabMember]
    links: dict[str, list[LinkInfo]] = field(default_factory=dict)  # ns -> links
    peers: dict[tuple[str, int], tuple[str, int]] = field(default_factory=dict)
    known: dict[str, set[str]] = field(default_factory=dict)  # ns -> link names in the model
    errors: dict[str, str] = field(default_factory=dict)

    def label_of(self, ns: str) -> str:
        for t in self.targets:  # hosts come before the sandboxes that share their namespace
            if t.ns == ns:
                return t.name
        return ns


def model_links(st: LabState) -> dict[str, set[str]]:
    """The link names the engine made in each namespace (the rest is hand-made)."""
    known: dict[str, set[str]] = {}
    if st.upstream:
        known[st.upstream] = {"lo", "wan0"} | {f"h{i}-{h}"[:15] for i, h in enumerate(st.hosts)}
    for h in st.hosts.values():
        names = known.setdefault(h.netns, set())
        names |= {"lo", "eth0"}
        for net in h.networks.values():
            if net.device:
                names.add(net.device)
            for ep in net.endpoints.values():
                if ep.host_ifname:
                    names.add(ep.host_ifname)
                sb = h.sandboxes.get(ep.sandbox or "")
                if sb is not None and ep.ifname:
                    known.setdefault(sb.netns or h.netns, {"lo"}).add(ep.ifname)
        for sb in h.sandboxes.values():
            known.setdefault(sb.netns or h.netns, set()).add("lo")
    return known


class TopologyReader:
    """Keeps a raw dump per namespace; ``read(changed)`` re-dumps only what changed."""

    def __init__(self, lab_name: str) -> None:
        self.lab_name = lab_name
        self._links: dict[str, list[LinkInfo]] = {}
        self._nsids: dict[str, dict[int, str]] = {}  # ns -> {nsid: other ns}

    def namespaces(self) -> tuple[LabState, list[LabMember]]:
        return state.load(self.lab_name), lab_members(self.lab_name)

    def _dump(self, ns: str) -> list[LinkInfo]:
        with Netlink(ns) as nl:
            return nl.links()

    def _resolve_nsids(self, ns: str, wanted: set[int], all_ns: list[str]) -> dict[int, str]:
        found = {k: v for k, v in self._nsids.get(ns, {}).items() if k in wanted}
        missing = wanted - set(found)
        if missing:
            with Netlink(ns) as nl:
                for other in all_ns:
                    if other == ns or other in found.values():
                        continue
                    try:
                        fd = _netns.open_fd(other)
                    except CnmError:
                        continue
                    try:
                        nsid = nl.nsid_of(fd)
                    finally:
                        os.close(fd)
                    if nsid is not None:
                        found[nsid] = other
                        missing.discard(nsid)
                    if not missing:
                        break
            self._nsids[ns] = dict(found)
        return found

    def read(self, changed: set[str] | None = None) -> Topology:
        st, targets = self.namespaces()
        all_ns: list[str] = []
        for t in targets:
            if t.ns not in all_ns:
                all_ns.append(t.ns)
        topo = Topology(self.lab_name, targets, known=model_links(st))
        for ns in list(self._links):
            if ns not in all_ns:
                del self._links[ns]
                self._nsids.pop(ns, None)
        for ns in all_ns:
            if changed is None or ns in changed or ns not in self._links:
                try:
                    self._links[ns] = self._dump(ns)
                except (OSError, CnmError) as e:
                    topo.errors[ns] = str(e)
                    self._links.pop(ns, None)
                    continue
                if changed is not None:
                    self._nsids.pop(ns, None)  # a moved/new peer may have a new id
        topo.links = {ns: self._links[ns] for ns in all_ns if ns in self._links}
        for ns, links in topo.links.items():
            wanted = {l.peer_netns_id for l in links
                      if l.peer_netns_id is not None and l.peer_netns_id >= 0 and l.peer_index}
            ids = self._resolve_nsids(ns, wanted, all_ns) if wanted else {}
            for l in links:
                if not l.peer_index:
                    continue
                if l.peer_netns_id is not None and l.peer_netns_id >= 0:
                    other = ids.get(l.peer_netns_id)
                    if other is not None:
                        topo.peers[(ns, l.index)] = (other, l.peer_index)
                elif l.kind == "veth":
                    topo.peers[(ns, l.index)] = (ns, l.peer_index)
        return topo


# ---- drawing -------------------------------------------------------------------------------------
def _addrs(l: LinkInfo) -> str:
    return " ".join(l.addresses)


def render(topo: Topology) -> Tree | Text:
    """A Rich Tree: upstream, hosts, bridges, veths and the sandboxes at their far ends."""
    if not topo.links:
        return Text("no namespaces (is the lab running?)", style="dim italic")
    by_index = {ns: {l.index: l for l in links} for ns, links in topo.links.items()}
    visited: set[str] = set()
    drawn: set[tuple[str, int]] = set()
    root = Tree(Text(f"lab {topo.lab}", style="bold"), guide_style="dim")

    def hand(ns: str, l: LinkInfo) -> bool:
        return l.name not in topo.known.get(ns, set())

    def link_text(ns: str, l: LinkInfo, with_kind: bool = True) -> Text:
        t = Text(l.name, style="bold yellow" if hand(ns, l) else "bold")
        if with_kind and l.kind not in ("veth", "device"):
            t.append(f" {l.kind}", style="dim")
        if l.addresses:
            t.append(f" {_addrs(l)}", style="cyan")
        if l.state in ("DOWN", "LOWERLAYERDOWN"):
            t.append(" down", style="red")
        if hand(ns, l):
            t.append(f" {HAND}", style="yellow")
        return t

    def add_link(ns: str, l: LinkInfo, parent: Tree) -> None:
        if (ns, l.index) in drawn:
            return
        peer = topo.peers.get((ns, l.index))
        peer_link = by_index.get(peer[0], {}).get(peer[1]) if peer else None
        if (peer and peer_link is not None and peer[0] != ns and peer[0] in visited
                and peer not in drawn and peer_link.master):
            return  # drawn from the far end, under the bridge it is plugged into
        drawn.add((ns, l.index))
        if peer and peer_link is not None:
            drawn.add(peer)
            text = link_text(ns, l, with_kind=False)
            text.append(" ── ", style="dim")
            if peer[0] != ns:
                text.append(f"{topo.label_of(peer[0])} ", style="bold green")
            text.append_text(link_text(peer[0], peer_link, with_kind=False))
            node = parent.add(text)
            if peer[0] != ns and peer[0] not in visited:
                add_namespace(peer[0], node)
            return
        text = link_text(ns, l)
        if peer:  # the far end is outside the lab (or not readable)
            text.append(" ── ?", style="dim")
        node = parent.add(text)
        if l.kind == "bridge":
            for port in ports.get((ns, l.name), []):
                add_link(ns, port, node)

    ports: dict[tuple[str, str], list[LinkInfo]] = {}  # (ns, bridge name) -> its ports
    for ns, links in topo.links.items():
        for l in links:
            if l.master:
                ports.setdefault((ns, l.master), []).append(l)

    def add_namespace(ns: str, parent: Tree) -> None:
        visited.add(ns)
        links = [l for l in topo.links.get(ns, []) if l.kind != "loopback"]
        bridges = [l for l in links if l.kind == "bridge"]
        bridge_names = {b.name for b in bridges}
        for b in bridges:
            add_link(ns, b, parent)
        for l in links:
            if l.kind != "bridge" and l.master not in bridge_names:
                add_link(ns, l, parent)

    order = {"upstream": 0, "host": 1, "sandbox": 2, "netns": 3}
    for t in sorted(topo.targets, key=lambda t: order.get(t.role, 4)):
        if t.ns in visited or t.ns not in topo.links:
            continue
        style = {"upstream": "bold magenta", "host": "bold blue"}.get(t.role, "bold green")
        node = root.add(Text(t.name, style=style).append(f" {t.role}", style="dim"))
        add_namespace(t.ns, node)
    for ns, err in topo.errors.items():
        root.add(Text(f"{topo.label_of(ns)}: {err}", style="red"))
    return root


# ---- the widget ----------------------------------------------------------------------------------
class TopologyView(Widget):
    """The lab as a tree of namespaces, bridges and veths, redrawn when the kernel changes.

    ``TopologyView(lab_name)``; ``set_lab(name)``; posts ``TopologyView.Changed`` after each
    redraw. Keys: ``r`` re-reads everything.
    """

    BINDINGS = [Binding("f5", "refresh_now", "Re-read", key_display="F5")]

    lab_name: reactive[str | None] = reactive(None, init=False)

    class Changed(Message):
        def __init__(self, view: "TopologyView", topology: Topology, events: list[Event]) -> None:
            super().__init__()
            self.view, self.topology, self.events = view, topology, events

        @property
        def control(self) -> "TopologyView":
            return self.view

    class _Topo(Message):
        def __init__(self, gen: int, topo: Topology | None, events: list[Event],
                     error: str | None = None) -> None:
            super().__init__()
            self.gen, self.topo, self.events, self.error = gen, topo, events, error

    def __init__(self, lab_name: str | None = None, *, name: str | None = None,
                 id: str | None = None, classes: str | None = None) -> None:
        super().__init__(name=name, id=id, classes=classes)
        self.set_reactive(TopologyView.lab_name, lab_name)
        self._gen = 0
        self._ready = False
        self._watcher: NetlinkWatcher | None = None
        self.topology: Topology | None = None
        self.plain = ""
        self.updates = 0

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="topo-body"):
            yield Static(Text("reading…", style="dim"), id="topo-tree")

    def on_mount(self) -> None:
        self._ready = True
        self._restart()

    def on_unmount(self) -> None:
        self._ready = False
        if self._watcher is not None:
            self._watcher.stop()
            self._watcher = None

    def set_lab(self, lab_name: str | None) -> None:
        self.lab_name = lab_name

    def watch_lab_name(self) -> None:
        self._restart()

    def action_refresh_now(self) -> None:
        self._restart()

    def text(self) -> str:
        return self.plain

    def _restart(self) -> None:
        if not self._ready:
            return
        if self._watcher is not None:
            self._watcher.stop()
        self._gen += 1
        if not self.lab_name:
            self._watcher = None
            self.query_one("#topo-tree", Static).update(Text("no lab", style="dim"))
            return
        self._watcher = NetlinkWatcher()
        self._follow(self._gen, self._watcher, self.lab_name)

    @work(thread=True, exclusive=True, group="topology", exit_on_error=False)
    def _follow(self, gen: int, watcher: NetlinkWatcher, lab_name: str) -> None:
        worker = get_current_worker()
        reader = TopologyReader(lab_name)
        try:
            try:
                watcher.watch({t.ns for t in lab_members(lab_name)})
                watcher.ready()
                topo = reader.read()
            except CnmError as e:
                self.post_message(self._Topo(gen, None, [], str(e)))
                return
            self.post_message(self._Topo(gen, topo, []))
            for batch in watcher.batches():
                if worker.is_cancelled or watcher.stopped:
                    break
                try:
                    wanted = {t.ns for t in lab_members(lab_name)}
                except CnmError as e:  # the lab was torn down
                    self.post_message(self._Topo(gen, None, batch, str(e)))
                    break
                new = wanted - watcher.namespaces
                watcher.watch(wanted)  # new sandboxes are watched from now on
                changed = {e.ns for e in batch} | new
                self.post_message(self._Topo(gen, reader.read(changed), batch))
        finally:
            watcher.close()

    def on_topology_view__topo(self, msg: "_Topo") -> None:
        msg.stop()
        if msg.gen != self._gen:
            return
        tree = self.query_one("#topo-tree", Static)
        if msg.topo is None:
            tree.update(Text(msg.error or "no lab", style="red"))
            self.plain = msg.error or ""
            return
        self.topology = msg.topo
        drawing = render(msg.topo)
        from cnmlab.tui.livestate import _plain

        plain = _plain(drawing, width=200)
        if plain != self.plain:
            self.plain = plain
            tree.update(drawing)
        self.updates += 1
        self.post_message(self.Changed(self, msg.topo, msg.events))
