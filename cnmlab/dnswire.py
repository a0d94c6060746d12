"""The DNS wire format, in one place, by a kept library (dnslib) rather than by hand.

Three parts of cnmlab speak DNS on the wire: the embedded resolver (``cnmlab.dns``) reads
queries and writes answers, the probes (``cnmlab.checks.probes``) write queries and read
answers, and the packet view (``cnmlab.frames``) prints one line per DNS message it sees. They
all go through the functions here, so there is one codec to trust and to test.

dnslib costs tens of microseconds a message (``bench/bench_dns.py``), three orders of magnitude
below a probe's round trip, so nothing needs a hand-rolled path.

(dnslib's headers set RD unless told otherwise: every header here is built from ``bitmap=0``.)
A forwarded message is passed on byte for byte except its ID (``with_id``): the resolver does
not re-encode what the upstream server said. DNS over TCP frames each message with its length
(``tcp_frame``, ``tcp_messages``).
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from dnslib import PTR as PTR_RDATA
from dnslib import QTYPE, RCODE, RR, DNSBuffer, DNSHeader, DNSQuestion, DNSRecord
from dnslib import A as A_RDATA

A, PTR, AAAA = QTYPE.A, QTYPE.PTR, QTYPE.AAAA
IN = 1
NOERROR, FORMERR, SERVFAIL, NXDOMAIN, NOTIMP = 0, 1, 2, 3, 4
MAX_LABEL = 63


@dataclass
class Query:
    """The first question of a query, as the resolver needs it."""

    id: int
    opcode: int
    name: str  # lowercase, no trailing dot
    qtype: int
    qclass: int
    record: DNSRecord  # the parsed query: a reply echoes its question exactly


def _parse(msg: bytes) -> DNSRecord | None:
    try:
        return DNSRecord.parse(msg)
    except Exception:  # any malformed input (DNSError, or worse): a server must not fall over
        return None


def parse_query(msg: bytes) -> Query | None:
    """The first question of a DNS query, or None when it is not a query we can read."""
    rec = _parse(msg)
    if rec is None or rec.header.qr or not rec.questions:
        return None
    q = rec.questions[0]
    return Query(rec.header.id, rec.header.opcode, str(q.qname).rstrip(".").lower(), q.qtype,
                 q.qclass, rec)


def build_response(q: Query, rcode: int = NOERROR, addrs: Iterable[str] = (),
                   ptr: str | None = None, authoritative: bool = False, ttl: int = 600) -> bytes:
    """A reply echoing ``q``'s question with A records (or one PTR record) for it.

    Opcode and RD are copied from the query, RA is set (the embedded DNS recurses by
    forwarding), AA only for the zone a server owns.
    """
    head = q.record.header
    reply = DNSRecord(DNSHeader(id=q.id, bitmap=0, qr=1, opcode=head.opcode,
                                aa=int(authoritative), rd=head.rd, ra=1, rcode=rcode),
                      q=q.record.q)
    qname = q.record.q.qname
    for ip in addrs:
        reply.add_answer(RR(qname, A, IN, ttl, A_RDATA(ip)))
    if ptr:
        reply.add_answer(RR(qname, PTR, IN, ttl, PTR_RDATA(ptr)))
    return bytes(reply.pack())


def error_reply(msg: bytes, rcode: int) -> bytes | None:
    """An answer without a question for a query we could not read (FORMERR), if it has an ID."""
    try:
        head = DNSHeader.parse(DNSBuffer(msg))
    except Exception:
        return None
    if head.qr:
        return None
    return bytes(DNSRecord(DNSHeader(id=head.id, bitmap=0, qr=1, ra=1, rcode=rcode)).pack())


def build_query(name: str, qid: int, qtype: int = A) -> bytes:
    """A query with one question and recursion desired; ``ValueError`` for a bad name."""
    labels = []
    for label in name.rstrip(".").split("."):
        try:
            raw = label.encode("idna") if label else b""
        except UnicodeError:
            raise ValueError(f"bad DNS name {name!r}") from None
        if not raw or len(raw) > MAX_LABEL:
            raise ValueError(f"bad DNS name {name!r}")
        labels.append(raw.decode("ascii"))
    query = DNSRecord(DNSHeader(id=qid, bitmap=0, rd=1),
                      q=DNSQuestion(".".join(labels), qtype, IN))
    return bytes(query.pack())


def parse_response(msg: bytes, qid: int) -> tuple[int, list[str]]:
    """(rcode, IPv4 addresses of the A records in the answer); ``ValueError`` when ``msg`` is
    not a readable answer to query ``qid``."""
    rec = _parse(msg)
    if rec is None:
        raise ValueError("malformed DNS message")
    if rec.header.id != qid or not rec.header.qr:
        raise ValueError("not a response to this query")
    addrs = [str(rr.rdata) for rr in rec.rr if rr.rtype == A and rr.rclass == IN]
    return rec.header.rcode, addrs


def message_id(msg: bytes) -> int | None:
    return int.from_bytes(msg[:2], "big") if len(msg) >= 12 else None


def with_id(msg: bytes, qid: int) -> bytes:
    """``msg`` with its ID replaced and every other byte as it was."""
    return qid.to_bytes(2, "big") + msg[2:]


def tcp_frame(msg: bytes) -> bytes:
    return len(msg).to_bytes(2, "big") + msg


def tcp_messages(buf: bytearray) -> list[bytes]:
    """Take every complete length-prefixed message off the front of ``buf``."""
    out = []
    while len(buf) >= 2:
        n = int.from_bytes(buf[:2], "big")
        if len(buf) < 2 + n:
            break
        out.append(bytes(buf[2:2 + n]))
        del buf[:2 + n]
    return out


def rcode_name(rcode: int) -> str:
    return str(RCODE.get(rcode, rcode))


def summary(msg: bytes) -> str:
    """One line for a DNS message seen on the wire (never raises)."""
    if len(msg) < 12:
        return "DNS (truncated)"
    rec = _parse(msg)
    if rec is None:
        return f"DNS id {message_id(msg)} (malformed)"
    q = rec.questions[0] if rec.questions else None
    name = str(q.qname).rstrip(".") if q else ""
    qt = str(QTYPE.get(q.qtype, q.qtype)) if q else "?"
    if not rec.header.qr:
        return f"DNS query {qt}? {name}"
    if rec.header.rcode:
        return f"DNS reply {qt} {name}: {rcode_name(rec.header.rcode)}"
    answers = []
    for rr in rec.rr[:4]:
        if rr.rtype == A:
            answers.append(str(rr.rdata))
        elif rr.rtype == QTYPE.CNAME:
            answers.append(f"CNAME {str(rr.rdata).rstrip('.')}")
    return f"DNS reply {qt} {name} -> {', '.join(answers) or f'{len(rec.rr)} answers'}"
