"""The one DNS codec: what the resolver, the probes and the packet view rely on (no root).

Messages here are written out byte by byte where it matters, so the codec is held to the wire
format, not only to itself.
"""
from __future__ import annotations

import pytest

from cnmlab import dnswire

QUERY = (bytes.fromhex("1234" "0100" "0001" "0000" "0000" "0000")  # id, RD, 1 question
         + b"\x03web\x07example\x00" + b"\x00\x01\x00\x01")  # web.example A IN


def test_build_query_is_the_wire_format():
    assert dnswire.build_query("web.example", 0x1234) == QUERY
    assert dnswire.build_query("web.example.", 0x1234) == QUERY


@pytest.mark.parametrize("bad", ["", "a..b", "x" * 64 + ".lab", "."])
def test_build_query_refuses_bad_names(bad):
    with pytest.raises(ValueError, match="bad DNS name"):
        dnswire.build_query(bad, 1)


def test_parse_query_and_answer():
    q = dnswire.parse_query(QUERY)
    assert q is not None and (q.id, q.name, q.qtype, q.qclass, q.opcode) == (
        0x1234, "web.example", dnswire.A, dnswire.IN, 0)
    out = dnswire.build_response(q, addrs=["10.0.0.7"], ttl=600)
    # header: same id, QR + RD + RA, NOERROR, one question, one answer
    assert out[:12] == bytes.fromhex("1234" "8180" "0001" "0001" "0000" "0000")
    assert out[12:12 + len(QUERY) - 12] == QUERY[12:]  # the question echoed as asked
    assert out.endswith(bytes.fromhex("00000258" "0004" "0a000007"))  # TTL 600, 10.0.0.7
    assert dnswire.parse_response(out, 0x1234) == (0, ["10.0.0.7"])


def test_authoritative_nxdomain_and_ptr():
    q = dnswire.parse_query(QUERY)
    nx = dnswire.build_response(q, dnswire.NXDOMAIN, authoritative=True)
    assert nx[2:4] == bytes.fromhex("8583")  # QR AA RD | RA NXDOMAIN
    assert dnswire.parse_response(nx, 0x1234) == (dnswire.NXDOMAIN, [])
    ptr = dnswire.build_response(q, ptr="db.net")
    assert ptr.endswith(b"\x02db\x03net\x00") and dnswire.summary(ptr).startswith("DNS reply A")


def test_parse_response_refuses_what_is_not_the_answer():
    q = dnswire.parse_query(QUERY)
    out = dnswire.build_response(q, addrs=["10.0.0.7"])
    with pytest.raises(ValueError):
        dnswire.parse_response(out, 0x4321)  # another query's answer
    with pytest.raises(ValueError):
        dnswire.parse_response(QUERY, 0x1234)  # a query, not an answer
    with pytest.raises(ValueError):
        dnswire.parse_response(out[:20], 0x1234)  # truncated


def test_unreadable_queries():
    assert dnswire.parse_query(b"\x00" * 5) is None
    assert dnswire.parse_query(QUERY[:12]) is None  # no question
    garbage = QUERY[:12] + b"\x3f"  # a label that runs past the end
    assert dnswire.parse_query(garbage) is None
    err = dnswire.error_reply(garbage, dnswire.FORMERR)
    assert err == bytes.fromhex("1234" "8081" "0000" "0000" "0000" "0000")
    assert dnswire.error_reply(b"\x00" * 5, dnswire.FORMERR) is None  # no ID to answer
    answer = dnswire.build_response(dnswire.parse_query(QUERY))
    assert dnswire.error_reply(answer, dnswire.FORMERR) is None  # never answer an answer


def test_ids_and_tcp_framing():
    assert dnswire.message_id(QUERY) == 0x1234 and dnswire.message_id(b"\x00") is None
    moved = dnswire.with_id(QUERY, 0xBEEF)
    assert moved[:2] == b"\xbe\xef" and moved[2:] == QUERY[2:]
    buf = bytearray(dnswire.tcp_frame(QUERY) + dnswire.tcp_frame(moved) + b"\x00")
    assert dnswire.tcp_messages(buf) == [QUERY, moved] and buf == bytearray(b"\x00")


def test_summary_lines():
    q = dnswire.parse_query(QUERY)
    assert dnswire.summary(QUERY) == "DNS query A? web.example"
    assert dnswire.summary(dnswire.build_response(q, addrs=["10.0.0.7", "10.0.0.8"])) == \
        "DNS reply A web.example -> 10.0.0.7, 10.0.0.8"
    assert dnswire.summary(dnswire.build_response(q, dnswire.NXDOMAIN)) == \
        "DNS reply A web.example: NXDOMAIN"
    assert dnswire.summary(b"\x00" * 4) == "DNS (truncated)"
    assert dnswire.summary(QUERY[:12] + b"\x3f") == "DNS id 4660 (malformed)"
