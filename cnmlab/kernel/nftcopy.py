"""Copy an nf_tables table from one network namespace into others, in-process.

Why: the embedded DNS installs the same six iptables rules (only two port numbers differ) in
every container's namespace. ``iptables-restore`` costs a fork and an exec that loads every
xtables extension: about 13 ms per namespace here, most of what a large macvlan build spends
beyond the bare kernel work. The rules ``iptables-nft`` made in one namespace are read back
over nfnetlink (table, chains, rules, exactly as the kernel holds them: the ``xt`` targets
included) and sent to the next namespace as one atomic batch, with chosen byte strings
replaced inside rule data. The copy is byte-for-byte what ``iptables-restore`` would have made,
so ``iptables-save`` in the copy reads the same, and the kernel checks it as it checks any
batch (a bad copy is refused, never half-applied).

Sockets are opened by the calling thread, so they talk to the namespace that thread is in
(``netns.entered`` in a short-lived thread, as the resolver does).
"""
from __future__ import annotations

import errno
import os
import re
import socket
import struct
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

NETLINK_NETFILTER = 12
NFNL_SUBSYS_NFTABLES = 10
NFNL_MSG_BATCH_BEGIN, NFNL_MSG_BATCH_END = 0x10, 0x11
NFT_MSG_NEWTABLE, NFT_MSG_GETTABLE = 0, 1
NFT_MSG_NEWCHAIN, NFT_MSG_GETCHAIN = 3, 4
NFT_MSG_NEWRULE, NFT_MSG_GETRULE = 6, 7
NLM_F_REQUEST, NLM_F_ACK, NLM_F_DUMP = 0x1, 0x4, 0x300
NLM_F_EXCL, NLM_F_CREATE, NLM_F_APPEND = 0x200, 0x400, 0x800
NLMSG_ERROR, NLMSG_DONE = 2, 3
NLA_TYPE_MASK = 0x3FFF  # without NLA_F_NESTED / NLA_F_NET_BYTEORDER

#: attributes the kernel reports but a creating request must not carry (handles, use counts,
#: counters of base chains, padding): per message kind, by attribute number
_TABLE_NAME, _CHAIN_TABLE, _CHAIN_NAME = 1, 1, 3
_RULE_TABLE, _RULE_CHAIN, _RULE_EXPRESSIONS = 1, 2, 4
_KEEP = {
    NFT_MSG_NEWTABLE: {1, 2, 6},  # name, flags, userdata
    NFT_MSG_NEWCHAIN: {1, 3, 4, 5, 7, 12},  # table, name, hook, policy, type, userdata
    NFT_MSG_NEWRULE: {1, 2, 4, 5, 7},  # table, chain, expressions, compat, userdata
}
#: leaf attributes whose bytes ``patched`` may rewrite: an xt target's info blob and the value
#: of an nft_data (cmp / immediate operands), found inside a rule's expression list
_NESTED = {_RULE_EXPRESSIONS}


@dataclass(frozen=True)
class Message:
    kind: int  # NFT_MSG_NEW*
    family: int
    attrs: tuple[tuple[int, bytes], ...]  # top-level attributes, raw (type with its flags)


@dataclass(frozen=True)
class TableCopy:
    """A table as the kernel holds it: its message, its chains', its rules' (in order)."""

    messages: tuple[Message, ...]

    @property
    def rule_count(self) -> int:
        return sum(1 for m in self.messages if m.kind == NFT_MSG_NEWRULE)

    def chains(self) -> list[str]:
        return [_attr(m, _CHAIN_NAME).rstrip(b"\0").decode() for m in self.messages
                if m.kind == NFT_MSG_NEWCHAIN]

    def count(self, needle: bytes) -> int:
        """How often ``needle`` occurs in the rules' data (what ``patched`` would rewrite)."""
        found = 0

        def tally(leaf: bytes) -> bytes:
            nonlocal found
            found += len(re.findall(re.escape(needle), leaf))
            return leaf

        self._map_leaves(tally)
        return found

    def patched(self, replace: Mapping[bytes, bytes]) -> "TableCopy":
        """The same table with each key of ``replace`` rewritten in the rules' data, in one
        pass (a replacement is never rewritten again). Keys and values have equal lengths."""
        if not replace:
            return self
        if any(len(k) != len(v) for k, v in replace.items()):
            raise ValueError("a replacement must keep the length of what it replaces")
        pattern = re.compile(b"|".join(re.escape(k) for k in replace))
        return self._map_leaves(lambda leaf: pattern.sub(lambda mt: replace[mt.group()], leaf))

    def _map_leaves(self, fn: Callable[[bytes], bytes]) -> "TableCopy":
        """The table with ``fn`` applied to every leaf of the rules' data (lengths kept)."""
        out = []
        for m in self.messages:
            if m.kind == NFT_MSG_NEWRULE:
                m = Message(m.kind, m.family, tuple(
                    (t, _map_expressions(v, fn) if t & NLA_TYPE_MASK in _NESTED else v)
                    for t, v in m.attrs))
            out.append(m)
        return TableCopy(tuple(out))


def read(family: int, table: str) -> TableCopy | None:
    """The table ``table`` of ``family`` in this thread's namespace; None when it is absent."""
    name = table.encode() + b"\0"
    with _socket() as sock:
        try:
            tables = _request(sock, NFT_MSG_GETTABLE, family, [(_TABLE_NAME, name)], dump=False)
        except OSError as e:
            if e.errno == errno.ENOENT:
                return None
            raise
        chains = [m for m in _request(sock, NFT_MSG_GETCHAIN, family, [], dump=True)
                  if _attr(m, _CHAIN_TABLE) == name]
        rules = [m for m in _request(sock, NFT_MSG_GETRULE, family, [], dump=True)
                 if _attr(m, _RULE_TABLE) == name]
    messages = [_creating(m) for m in tables + chains + rules]
    return TableCopy(tuple(messages))


def has_chain(family: int, table: str, chain: str) -> bool:
    """Whether ``table`` holds ``chain`` in this thread's namespace (one small request)."""
    with _socket() as sock:
        try:
            _request(sock, NFT_MSG_GETCHAIN, family,
                     [(_CHAIN_TABLE, table.encode() + b"\0"),
                      (_CHAIN_NAME, chain.encode() + b"\0")], dump=False)
        except OSError as e:
            if e.errno == errno.ENOENT:
                return False
            raise
    return True


@dataclass(frozen=True)
class Batch:
    """A table copy serialised once, with the places its chosen byte strings sit, so each
    further namespace costs a few slice assignments and one send instead of a rebuild."""

    data: bytes
    seqs: tuple[int, ...]  # the messages the kernel acknowledges
    spots: tuple[tuple[int, bytes], ...]  # (offset, which key) of each occurrence

    def render(self, values: Mapping[bytes, bytes]) -> bytes:
        out = bytearray(self.data)
        for off, key in self.spots:
            value = values[key]
            out[off:off + len(value)] = value
        return bytes(out)


def batch(copy: TableCopy, keys: tuple[bytes, ...] = (),
          exclusive: frozenset[str] = frozenset(),
          insert: frozenset[str] = frozenset()) -> Batch:
    """``copy`` as one nfnetlink batch. ``keys``: byte strings to be replaced per namespace
    (``Batch.render``); ``exclusive``: chains that must not exist yet (the whole batch is
    refused with EEXIST when one does, so a namespace is never written twice); ``insert``:
    chains whose rules go before the rules already there (``iptables -I``), not after."""
    copy = _inserting(copy, insert)
    data, seqs = _serialise(copy, exclusive, insert)
    spots = []
    for key in keys:
        # rewrite only this key with bytes that differ from it everywhere: the offsets where
        # the two serialisations differ are exactly its occurrences (lengths never change)
        marker = bytes(b ^ 0xFF for b in key)
        other, _ = _serialise(copy.patched({key: marker}), exclusive, insert)
        off = 0
        while off < len(data):
            if data[off] != other[off]:
                spots.append((off, key))
                off += len(key)
            else:
                off += 1
    return Batch(data, seqs, tuple(spots))


def write(copy: TableCopy | Batch, values: Mapping[bytes, bytes] | None = None) -> None:
    """Create the copy in this thread's namespace, in one batch (all of it or nothing).
    Chains and rules are appended: a table or base chain that exists already is kept."""
    if isinstance(copy, TableCopy):
        copy = batch(copy)
    with _socket() as sock:
        sock.sendall(copy.render(values or {}))
        pending = set(copy.seqs)
        while pending:
            for kind, mseq, payload in _receive(sock):
                if kind == NLMSG_ERROR:
                    code = struct.unpack_from("i", payload)[0]
                    if code:
                        raise OSError(-code, f"nf_tables refused the copy: {os.strerror(-code)}")
                    pending.discard(mseq)


def _chain_of(m: Message) -> str:
    number = _RULE_CHAIN if m.kind == NFT_MSG_NEWRULE else _CHAIN_NAME
    return _attr(m, number).rstrip(b"\0").decode()


def _inserting(copy: TableCopy, insert: frozenset[str]) -> TableCopy:
    """The rules of ``insert`` chains in reverse: each is put first, so they end in order."""
    if not insert:
        return copy
    out = list(copy.messages)
    for chain in insert:
        spots = [i for i, m in enumerate(out)
                 if m.kind == NFT_MSG_NEWRULE and _chain_of(m) == chain]
        for i, m in zip(spots, [out[i] for i in reversed(spots)]):
            out[i] = m
    return TableCopy(tuple(out))


def _serialise(copy: TableCopy, exclusive: frozenset[str],
               insert: frozenset[str] = frozenset()) -> tuple[bytes, tuple[int, ...]]:
    seq = 0
    parts = [_batch_marker(NFNL_MSG_BATCH_BEGIN, seq)]
    seqs = []
    for m in copy.messages:
        seq += 1
        flags = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE
        if m.kind == NFT_MSG_NEWRULE and _chain_of(m) not in insert:
            flags |= NLM_F_APPEND  # without it (and a position) a rule goes first
        elif m.kind == NFT_MSG_NEWCHAIN and _chain_of(m) in exclusive:
            flags |= NLM_F_EXCL
        parts.append(_message(m.kind, flags, seq, m.family, m.attrs))
        seqs.append(seq)
    parts.append(_batch_marker(NFNL_MSG_BATCH_END, seq + 1))
    return b"".join(parts), tuple(seqs)


# ---- netlink plumbing ----------------------------------------------------------------------

class _socket:
    def __enter__(self) -> socket.socket:
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
        self.sock.settimeout(5)
        self.sock.bind((0, 0))
        return self.sock

    def __exit__(self, *exc: object) -> None:
        self.sock.close()


def _nlattr(t: int, value: bytes) -> bytes:
    raw = struct.pack("HH", 4 + len(value), t) + value
    return raw + b"\0" * (-len(raw) % 4)


def _parse_attrs(data: bytes) -> Iterator[tuple[int, bytes]]:
    off = 0
    while off + 4 <= len(data):
        length, t = struct.unpack_from("HH", data, off)
        if length < 4:
            return
        yield t, data[off + 4:off + length]
        off += (length + 3) & ~3


def _message(kind: int, flags: int, seq: int, family: int,
             attrs: tuple[tuple[int, bytes], ...] | list[tuple[int, bytes]]) -> bytes:
    body = struct.pack("BBH", family, 0, 0) + b"".join(_nlattr(t, v) for t, v in attrs)
    return struct.pack("IHHII", 16 + len(body), (NFNL_SUBSYS_NFTABLES << 8) | kind, flags,
                       seq, 0) + body


def _batch_marker(kind: int, seq: int) -> bytes:
    body = struct.pack("BBH", socket.AF_UNSPEC, 0, socket.htons(NFNL_SUBSYS_NFTABLES))
    return struct.pack("IHHII", 16 + len(body), kind, NLM_F_REQUEST, seq, 0) + body


def _receive(sock: socket.socket) -> Iterator[tuple[int, int, bytes]]:
    data = sock.recv(1 << 20)
    off = 0
    while off + 16 <= len(data):
        length, kind, _flags, seq, _pid = struct.unpack_from("IHHII", data, off)
        if length < 16:
            return
        yield kind, seq, data[off + 16:off + length]
        off += (length + 3) & ~3


def _request(sock: socket.socket, kind: int, family: int, attrs: list[tuple[int, bytes]],
             dump: bool) -> list[Message]:
    """One GET request; the NEW* messages it returns (a single get ends with its reply)."""
    flags = NLM_F_REQUEST | (NLM_F_DUMP if dump else NLM_F_ACK)
    sock.sendall(_message(kind, flags, 1, family, attrs))
    out: list[Message] = []
    while True:
        for mkind, _seq, payload in _receive(sock):
            if mkind == NLMSG_DONE:
                return out
            if mkind == NLMSG_ERROR:
                code = struct.unpack_from("i", payload)[0]
                if code:
                    raise OSError(-code, os.strerror(-code))
                return out  # the ack of a single get
            fam = payload[0]
            out.append(Message(mkind & 0xFF, fam, tuple(_parse_attrs(payload[4:]))))


def _creating(m: Message) -> Message:
    """A GET reply (NEW* kind already) stripped of what only the kernel may set."""
    keep = _KEEP[m.kind]
    return Message(m.kind, m.family, tuple((t, v) for t, v in m.attrs
                                           if t & NLA_TYPE_MASK in keep))


def _attr(m: Message, number: int) -> bytes:
    for t, v in m.attrs:
        if t & NLA_TYPE_MASK == number:
            return v
    return b""


# Inside NFTA_RULE_EXPRESSIONS: NFTA_LIST_ELEM { NFTA_EXPR_NAME, NFTA_EXPR_DATA { ... } }.
# The data of an expression is walked one level down: an xt target's NFTA_TARGET_INFO (3) and
# an nft_data operand's NFTA_DATA_VALUE (1, inside NFTA_CMP_DATA / NFTA_IMMEDIATE_DATA) are
# the leaves that hold addresses and ports.
_EXPR_NAME, _EXPR_DATA = 1, 2
_LEAF_IN = {b"target": 3}  # NFTA_TARGET_INFO
_DATA_HOLDERS = {b"cmp": 3, b"immediate": 2}  # NFTA_CMP_DATA, NFTA_IMMEDIATE_DATA
_DATA_VALUE = 1


def _map_expressions(value: bytes, fn: Callable[[bytes], bytes]) -> bytes:
    """The expression list rebuilt with ``fn`` applied to its leaves; ``fn`` keeps lengths,
    so every enclosing length stays right."""
    elems = []
    for elem_t, elem in _parse_attrs(value):
        name = b""
        for t, v in _parse_attrs(elem):
            if t & NLA_TYPE_MASK == _EXPR_NAME:
                name = v.rstrip(b"\0")
        parts = []
        for t, v in _parse_attrs(elem):
            if t & NLA_TYPE_MASK == _EXPR_DATA:
                data = []
                for dt, dv in _parse_attrs(v):
                    kind = dt & NLA_TYPE_MASK
                    if _LEAF_IN.get(name) == kind:
                        dv = fn(dv)
                    elif _DATA_HOLDERS.get(name) == kind:
                        dv = b"".join(_nlattr(vt, fn(vv) if vt & NLA_TYPE_MASK == _DATA_VALUE
                                              else vv) for vt, vv in _parse_attrs(dv))
                    data.append(_nlattr(dt, dv))
                v = b"".join(data)
            parts.append(_nlattr(t, v))
        elems.append(_nlattr(elem_t, b"".join(parts)))
    return b"".join(elems)
