"""SIP parser/serializer (sans-I/O): good input round-trips, bad input raises SipError with a reason."""

from __future__ import annotations

import pytest

from daemon.ingest.siprec.message import SipError, StreamFramer, parse_message, response_to
from tests.unit.siprec_support import load, wire

OPTIONS = """OPTIONS sip:srs@127.0.0.1 SIP/2.0
Via: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bK-1;rport
From: <sip:sbc@10.0.0.1>;tag=abc
To: <sip:srs@127.0.0.1>
Call-ID: ping-1
CSeq: 5 OPTIONS
"""


def test_compact_names_and_folded_headers_are_read() -> None:
    msg = parse_message(load("labels_from_0.sip"))
    assert msg.method == "INVITE" and msg.call_id == "labels-from-0@sbc"
    assert msg.branch == "z9hG4bK-l0" and msg.from_tag == "l0tag"
    assert msg.get("content-type").startswith("multipart/mixed")
    folded = wire(OPTIONS.replace("Call-ID: ping-1", "Subject: a\n  folded\n\tsubject\nCall-ID: ping-1"))
    assert parse_message(folded).get("subject") == "a folded subject"


def test_response_copies_the_transaction_headers_and_round_trips() -> None:
    req = parse_message(wire(OPTIONS))
    resp = response_to(req, 200, to_tag="xyz", headers=[("allow", "INVITE")], body=b"hi")
    again = parse_message(resp.serialize())
    assert (again.status, again.phrase) == (200, "OK")
    assert again.to_tag == "xyz" and again.branch == "z9hG4bK-1" and again.cseq == (5, "OPTIONS")
    assert again.get("content-length") == "2" and again.body == b"hi"
    assert b"Call-ID: ping-1\r\n" in resp.serialize() and b"CSeq: 5 OPTIONS\r\n" in resp.serialize()


def test_body_past_content_length_is_cut() -> None:
    data = wire(OPTIONS, "abc") + b"trailing junk"
    assert parse_message(data).body == b"abc"


@pytest.mark.parametrize(("data", "reason"), [
    (wire(OPTIONS.replace("Call-ID: ping-1\n", "")), "missing_header"),
    (wire(OPTIONS.replace("Via: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bK-1;rport\n", "")), "missing_header"),
    (wire(OPTIONS).replace(b"Content-Length: 0", b"Content-Length: 40"), "bad_content_length"),
    (wire(OPTIONS).replace(b"Content-Length: 0", b"Content-Length: -1"), "bad_content_length"),
    (wire(OPTIONS).replace(b"Content-Length: 0", b"Content-Length: x"), "bad_content_length"),
    (wire(OPTIONS.replace("CSeq: 5 OPTIONS", "CSeq: five OPTIONS")), "malformed"),
    (wire(OPTIONS.replace("CSeq: 5 OPTIONS", "CSeq: 5 INVITE")), "malformed"),
    (wire(OPTIONS.replace("OPTIONS sip:srs@127.0.0.1 SIP/2.0", "OPTIONS sip:srs@127.0.0.1 HTTP/1.1")), "malformed"),
    (wire(OPTIONS.replace("To: <sip:srs@127.0.0.1>", "To <sip:srs@127.0.0.1>")), "malformed"),
    (b"INVITE sip:x SIP/2.0\r\nVia: x\r\n", "malformed"),  # no empty line
    (b"\xff\xfe garbage\r\n\r\n", "malformed"),
    (b"x" * 70000, "too_large"),
])
def test_bad_input_raises_sip_error(data: bytes, reason: str) -> None:
    with pytest.raises(SipError) as err:
        parse_message(data)
    assert err.value.reason == reason


def test_stream_framer_cuts_by_content_length_in_any_chunking() -> None:
    a, b = load("sipp_rfc7865.sip"), wire(OPTIONS)
    stream = b"\r\n\r\n" + a + b"\r\n" + b + a  # keep-alive CRLFs between messages
    for size in (1, 7, 500, len(stream)):
        framer = StreamFramer()
        got = [m for i in range(0, len(stream), size) for m in framer.feed(stream[i:i + size])]
        assert got == [a, b, a]


def test_stream_framer_refuses_a_message_without_content_length() -> None:
    with pytest.raises(SipError) as err:
        StreamFramer().feed(b"OPTIONS sip:x SIP/2.0\r\nVia: x\r\n\r\n")
    assert err.value.reason == "bad_content_length"
