"""A namespace a lab borrows (a third-party plugin's host) and gives back exactly as it found it.

Why this exists: every other namespace of a lab is the lab's own, so deleting it removes all
the lab put there. A plugin that someone else started builds in *its* network namespace, and
``cnmlab conform --target plugin:SOCKET`` has to use that namespace as the Docker host (the
interfaces the plugin makes there are what the engine moves into sandboxes). The lab then
adds things to a namespace it must never delete: the uplink to its upstream (with its address
and default route), the default bridge ``docker0``, Docker's firewall rules, ``ip_forward``.

So, before the lab touches it, the namespace's state is recorded (``take``) in a file next to
the lab's state (``record``: write-ahead, as namespaces are logged before they are made), and
``restore`` puts it back: links that were not there are deleted (with their addresses and
routes), the iptables tables are restored to what ``iptables-save`` printed, the sysctls the
engine writes get their old values. Teardown (``cnmlab down``, ``cnmlab clean``, a failed
build's rollback) restores every recorded namespace and never deletes one, nor stops its
processes: the plugin keeps running.

One lab borrows a namespace at a time (``claim``: two labs restoring from two snapshots would
undo each other's work). A namespace without a name (a plugin started with ``unshare -n``) is
named by the lab for the run (``netns.attach``) and the name, only the name, goes after.

cnmlab simplifies here: the namespace is expected to be quiet while borrowed (only the plugin
and the lab write to it); a rule someone else adds meanwhile is removed by the restore.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field

from cnmlab import state
from cnmlab.errors import CnmError, InvalidInput, KernelError, ObjectExists
from cnmlab.firewall import reconcile
from cnmlab.firewall.iptables import namespace_lock
from cnmlab.kernel import netns, nsexec, rundir, sysctl
from cnmlab.kernel.netlink import Netlink

SYSCTLS = ("net.ipv4.ip_forward",)  # what the engine writes in a host namespace
UPLINK = "eth0"  # the name the lab gives a host's link to its upstream


@dataclass
class Snapshot:
    """What a borrowed namespace held before the lab touched it."""

    netns: str
    links: list[str] = field(default_factory=list)
    iptables: str = ""  # iptables-save output
    sysctls: dict[str, str] = field(default_factory=dict)
    # the name is the lab's own (``netns.attach`` of a process's unnamed namespace): teardown
    # takes the name away, never the namespace
    alias: bool = False
    taken: bool = True  # False: recorded before the state was read (nothing to restore yet)


def check_usable(ns: str) -> None:
    """Refuse, in one line, a namespace the lab cannot wire as a host without clobbering it."""
    if not netns.exists(ns):
        raise InvalidInput(f"network namespace {ns} does not exist")
    with Netlink(ns) as nl:
        if nl.has_link(UPLINK):
            raise InvalidInput(f"namespace {ns} already has a link {UPLINK}: cnmlab wires its "
                               f"upstream there as {UPLINK}; start the plugin in an empty "
                               f"namespace ('cnmlab plugin host LAB -- COMMAND...')")
        if any(r.dst == "default" for r in nl.routes()):
            raise InvalidInput(f"namespace {ns} already has a default route: cnmlab routes "
                               f"its host to the lab's upstream; start the plugin in an empty "
                               f"namespace ('cnmlab plugin host LAB -- COMMAND...')")


def _claim_file(ns: str) -> str:
    """One claim per namespace (by its inode, whatever it is named), for every lab."""
    st = os.stat(netns.path_of(ns))
    return os.path.join(rundir.state_dir(), f"_adopted-{st.st_dev}-{st.st_ino}")


def claim(lab: str, ns: str) -> None:
    """Borrow ``ns`` for ``lab`` alone: two labs restoring one namespace from two snapshots
    would undo each other's work. A claim whose lab is gone is stale and taken over."""
    path = _claim_file(ns)
    for _attempt in (1, 2):
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            try:
                with open(path) as f:
                    holder = f.read().strip()
            except FileNotFoundError:
                continue
            if holder == lab:
                return
            if holder and state.exists(holder):
                raise ObjectExists(f"namespace {ns} is already borrowed by lab {holder} "
                                   f"('cnmlab down {holder}' gives it back)")
            os.unlink(path)
            continue
        with os.fdopen(fd, "w") as f:
            f.write(lab)
        return
    raise ObjectExists(f"namespace {ns} is being borrowed by another lab right now")


def _release(lab: str, ns: str) -> None:
    """Give up the lab's claim on ``ns``; on every namespace, when ``ns`` is gone (its inode,
    the claim's key, is unknown then, and the lab is going away)."""
    if netns.exists(ns):
        paths = [_claim_file(ns)]
    else:
        folder = rundir.state_dir()
        paths = [os.path.join(folder, f) for f in os.listdir(folder)
                 if f.startswith("_adopted-")]
    for path in paths:
        try:
            with open(path) as f:
                if f.read().strip() == lab:
                    os.unlink(path)
        except OSError:
            pass


def take(ns: str) -> Snapshot:
    with Netlink(ns) as nl:
        links = sorted(link.name for link in nl.links())
    return Snapshot(netns=ns, links=links,
                    iptables=nsexec.run(ns, ["iptables-save"]).stdout,
                    sysctls={k: sysctl.read(k, ns) for k in SYSCTLS})


def _file(lab: str, ns: str) -> str:
    return state.aux_path(lab, f"adopted-{ns}")


def record(lab: str, snap: Snapshot) -> None:
    """Keep the snapshot with the lab's state, before anything is changed (write-ahead)."""
    path = _file(lab, snap.netns)
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(asdict(snap), f)
    os.replace(tmp, path)


def recorded(lab: str) -> list[Snapshot]:
    """The namespaces a lab borrowed, as recorded (a damaged record is skipped: nothing to
    restore from, and the namespace is still never deleted)."""
    prefix = os.path.basename(state.aux_path(lab, "adopted-"))
    folder = os.path.dirname(state.aux_path(lab, "x"))
    out = []
    try:
        names = sorted(os.listdir(folder))
    except FileNotFoundError:
        return out
    for f in names:
        if not f.startswith(prefix) or f.endswith(".tmp"):
            continue
        try:
            with open(os.path.join(folder, f)) as fh:
                out.append(Snapshot(**json.load(fh)))
        except (OSError, ValueError, TypeError):
            continue
    return out


def normalized(iptables_save: str) -> dict[str, dict[str, tuple[str, tuple[str, ...]]]]:
    """Tables as {table: {chain: (policy, rules)}}, counters ignored; a table holding nothing
    but built-in chains with policy ACCEPT counts as absent (iptables-nft shows a table once
    anything touched it, and an empty one filters nothing)."""
    out = {}
    for tname, table in reconcile.parse(iptables_save).items():
        chains = {c: (p, tuple(table.rules.get(c, []))) for c, p in table.policies.items()}
        if all(p == "ACCEPT" and not rules for p, rules in chains.values()):
            continue
        out[tname] = chains
    return out


def _restore_script(snap: Snapshot, now: str) -> tuple[str, list[str]]:
    """(``iptables-restore`` input, tables to drop): every table the snapshot has gets its
    content back (a flushing restore); a table it lacks, which the lab created, is dropped
    (iptables-nft keeps a table per namespace: ``nft delete table``), or emptied with ACCEPT
    policies where the backend keeps no such tables."""
    before = reconcile.parse(snap.iptables)
    out: list[str] = []
    drop: list[str] = []
    nft = "nf_tables" in now.splitlines()[0] if now.strip() else False
    for tname in sorted(set(before) | set(reconcile.parse(now))):
        table = before.get(tname)
        if table is None and nft:
            drop.append(tname)
            continue
        out.append(f"*{tname}")
        if table is None:
            out += [f":{c} ACCEPT [0:0]" for c in reconcile.BUILTIN.get(tname, ())]
        else:
            out += [f":{c} {p} [0:0]" for c, p in table.policies.items()]
            out += [r for rules in table.rules.values() for r in rules]
        out.append("COMMIT")
    return ("\n".join(out) + "\n" if out else ""), drop


def restore(snap: Snapshot) -> list[str]:
    """Put a borrowed namespace back as recorded; what was undone, for the caller to report.

    A namespace that is gone (its plugin ended) has nothing left to restore.
    """
    ns = snap.netns
    if not netns.exists(ns) or not snap.taken:
        return []
    undone: list[str] = []
    with Netlink(ns) as nl:
        for link in nl.links():
            if link.name not in snap.links and nl.has_link(link.name):  # a veth's peer may go
                try:
                    nl.delete_link(link.name)
                    undone.append(f"link {link.name} in {ns}")
                except CnmError:
                    if nl.has_link(link.name):
                        raise
    with namespace_lock(ns):
        now = nsexec.run(ns, ["iptables-save"]).stdout
        if normalized(now) != normalized(snap.iptables) or \
                set(reconcile.parse(now)) - set(reconcile.parse(snap.iptables)):
            script, drop = _restore_script(snap, now)
            if script:
                nsexec.run(ns, ["iptables-restore"], input=script)
            for tname in drop:
                nsexec.run(ns, ["nft", "delete", "table", "ip", tname])
            undone.append(f"iptables rules in {ns}")
    for key, value in snap.sysctls.items():
        try:
            if sysctl.read(key, ns) != value:
                sysctl.write(key, value, ns)
                undone.append(f"sysctl {key} in {ns}")
        except KernelError:
            pass
    return undone


def forget(lab: str, snap: Snapshot) -> None:
    """Drop the record, and the lab's own name for the namespace if it gave it one."""
    _release(lab, snap.netns)
    if snap.alias:
        netns.delete(snap.netns)  # unmount the name only: the plugin's process holds the ns
    try:
        os.unlink(_file(lab, snap.netns))
    except FileNotFoundError:
        pass
