"""Install a rendered ruleset next to rules cnmlab did not write, without wiping either.

Why this exists: a host namespace may hold rules from more than one writer. cnmlab's engine
renders its bridges' rules; a bridge driver that cnmlab serves as a plugin renders its own
(``cnmlab plugin serve --driver bridge``) into the same namespace; real dockerd, run there
against that plugin, inserts and deletes its own rules one at a time, as libnetwork does; a
user adds rules to DOCKER-USER. Restoring a whole table (plain ``iptables-restore``) would
flush every rule its writer did not render; and each writer cannot move the others' rules into
its own chains, because Docker's isolation only works when every bridge's rules share the
same DOCKER-ISOLATION-STAGE-1/2 chains (a packet from docker0 is dropped in STAGE-2 only if
the other writer's bridge has its ``-o br -j DROP`` there).

So every writer keeps what it rendered last (its *owned* lines) and reconciles, per chain:

* a line it owned and no longer renders is deleted (``-D``, one instance);
* a line it renders that is already in the chain, whoever put it there, is kept as it is:
  the scaffold every writer renders alike (``-j DOCKER-USER``, ``-j RETURN`` at a chain's end,
  the nat ``-j DOCKER`` jumps) exists once, as Docker's ``iptables -C`` checks keep it;
* a missing line is inserted just before the next line it renders that is present, or
  appended when none is (Docker inserts per-network rules and appends per-port ones; this
  keeps every writer's own order and leaves the others' lines where they were);
* a chain holding nothing but the writer's lines is rewritten whole (``-F`` then ``-A``), so a
  namespace with a single writer gets exactly the rendered order (the golden text, and
  Docker's order as ``cnmlab diff`` checks it).

Everything goes to one ``iptables-restore --noflush`` per call: atomic per table. Existing user
chains are never declared (``:CHAIN`` flushes an existing chain under ``--noflush``); missing
ones are. Writers of the same namespace in cnmlab take an exclusive lock on the namespace's
file first; dockerd does not share that lock, which is as safe as two dockerds would be
(nf_tables refuses a batch built on a stale ruleset and iptables retries it).
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

BUILTIN = {"filter": ("INPUT", "FORWARD", "OUTPUT"),
           "nat": ("PREROUTING", "INPUT", "OUTPUT", "POSTROUTING")}


@dataclass
class Table:
    """One table as ``iptables-save`` prints it: chains (with policies) and rules by chain."""

    policies: dict[str, str] = field(default_factory=dict)  # chain -> policy or "-" (user)
    rules: dict[str, list[str]] = field(default_factory=dict)  # chain -> ["-A CHAIN ..."]


def parse(text: str) -> dict[str, Table]:
    """``iptables-save`` (or ``render``) text -> tables; comments and counters ignored."""
    tables: dict[str, Table] = {}
    cur: Table | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#") or line == "COMMIT":
            continue
        if line.startswith("*"):
            cur = tables.setdefault(line[1:], Table())
        elif cur is None:
            continue
        elif line.startswith(":"):
            name, policy = line[1:].split()[:2]
            cur.policies[name] = policy
            cur.rules.setdefault(name, [])
        elif line.startswith("-A "):
            chain = line.split()[1]
            cur.rules.setdefault(chain, []).append(line)
    return tables


def owned(tables: dict[str, Table]) -> list[str]:
    """The lines a writer owns once ``tables`` is installed: ``"TABLE -A CHAIN ..."``."""
    return [f"{t} {r}" for t, tab in tables.items() for rules in tab.rules.values() for r in rules]


def _spec(rule: str) -> str:
    """``-A CHAIN rest`` -> ``rest``."""
    return rule.split(None, 2)[2] if len(rule.split(None, 2)) > 2 else ""


def _chain_ops(chain: str, want: list[str], cur: list[str], mine: Counter[str]) -> list[str]:
    """The restore lines that make ``cur`` hold ``want`` in order, other writers' lines kept."""
    ops: list[str] = []
    sim = list(cur)
    for line, n in (mine - Counter(want)).items():  # owned, no longer rendered: delete
        for _ in range(n):
            if line in sim:
                sim.remove(line)  # iptables -D removes the first match, as list.remove does
                ops.append(f"-D {chain} {_spec(line)}".rstrip())
    avail = Counter(sim)
    present = []
    for w in want:
        present.append(avail[w] > 0)
        if avail[w] > 0:
            avail[w] -= 1
    if not +avail:  # nobody else's line in this chain: rewrite it whole, in rendered order
        return [] if cur == want else [f"-F {chain}", *want]
    for i, w in enumerate(want):
        if present[i]:
            continue
        nxt = next((want[j] for j in range(i + 1, len(want)) if present[j]), None)
        if nxt is None:
            sim.append(w)
            ops.append(w)
        else:
            pos = sim.index(nxt)
            sim.insert(pos, w)
            ops.append(f"-I {chain} {pos + 1} {_spec(w)}".rstrip())
        present[i] = True
    return ops


def plan(desired: dict[str, Table], current: dict[str, Table], last: list[str]) -> str:
    """``iptables-restore --noflush`` input taking ``current`` to ``desired``.

    ``last`` is what this writer owned before (``owned`` of its previous ``desired``); lines
    nobody owns or someone else owns stay. Returns "" when nothing needs to change.
    """
    mine: dict[tuple[str, str], Counter[str]] = {}
    for entry in last:
        table, _, rule = entry.partition(" ")
        chain = rule.split()[1] if len(rule.split()) > 1 else ""
        mine.setdefault((table, chain), Counter())[rule] += 1
    out: list[str] = []
    for tname, want in desired.items():
        have = current.get(tname, Table())
        body: list[str] = []
        for chain, policy in want.policies.items():
            if policy != "-" and have.policies.get(chain) != policy:
                body.append(f":{chain} {policy} [0:0]")  # a built-in's policy: no flush
            elif policy == "-" and chain not in have.policies:
                body.append(f":{chain} - [0:0]")  # a missing user chain: created
        for chain in want.policies:
            body += _chain_ops(chain, want.rules.get(chain, []), have.rules.get(chain, []),
                               mine.get((tname, chain), Counter()))
        # chains this writer filled before and renders no more keep other writers' lines
        for (t, chain), rules in mine.items():
            if t == tname and chain not in want.policies and chain in have.rules:
                body += _chain_ops(chain, [], have.rules[chain], rules)
        if body:
            out += [f"*{tname}", *body, "COMMIT"]
    return "\n".join(out) + "\n" if out else ""
