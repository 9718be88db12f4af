"""The SRS core with a fake clock and a recording MediaAllocator: dialogs, re-INVITE/UPDATE (hold),
BYE, CANCEL, OPTIONS, retransmissions, and every refusal counted with nothing left allocated."""

from __future__ import annotations

import ipaddress

from daemon.ingest.siprec.dialog import Peer
from daemon.ingest.siprec.message import SipMessage, parse_message
from tests.unit.siprec_support import UDP, Harness, ack, in_dialog, load, wire

INVITE = load("sipp_rfc7865.sip")
SDP_HOLD = """v=0
o=src 1 2 IN IP4 127.0.0.1
s=-
c=IN IP4 127.0.0.1
t=0 0
m=audio 41000 RTP/AVP 0
a=label:1
a={d1}
m=audio {port2} RTP/AVP 8
a=label:2
a={d2}
"""


def started(h: Harness) -> tuple[bytes, SipMessage]:
    trying, ok = h.send(INVITE)
    assert (trying.status, ok.status) == (100, 200)
    return INVITE, ok


def test_200_is_retransmitted_until_ack_and_then_never() -> None:
    h = Harness()
    _, ok = started(h)
    assert [len(h.advance(0.5)), len(h.advance(1.0)), len(h.advance(2.0))] == [1, 1, 1]
    assert h.send(ack(INVITE, ok)) == []
    assert sum(len(h.advance(1.0)) for _ in range(40)) == 0
    assert len(h.media.calls) == 1 and h.dropped == []


def test_no_ack_timer_h_ends_the_session_and_frees_ports() -> None:
    h = Harness()
    started(h)
    sent = sum(len(h.advance(0.5)) for _ in range(70))
    assert 6 <= sent <= 12
    assert h.media.calls == {} and h.media.released[0][1] == "no_ack"
    assert h.dropped == ["no_ack"] and h.core.sessions == {}


def test_retransmitted_invite_gets_the_same_200_and_no_second_allocation() -> None:
    h = Harness()
    _, ok = started(h)
    (again,) = h.send(INVITE)
    assert again.serialize() == ok.serialize()
    assert len(h.media.calls) == 1


def test_hold_and_resume_by_reinvite_keep_one_call_and_its_ports() -> None:
    h = Harness()
    _, ok = started(h)
    h.send(ack(INVITE, ok))
    (ports,) = h.media.calls.values()
    hold = in_dialog("INVITE", INVITE, ok, 2, SDP_HOLD.format(d1="inactive", d2="sendonly", port2=0),
                     "application/sdp")
    (held,) = h.send(hold)
    sdp = held.body.decode()
    assert held.status == 200 and "a=inactive" in sdp and f"m=audio {ports['caller']} " in sdp
    assert "m=audio 0 " in sdp  # an offered port 0 is answered with 0
    h.send(ack(INVITE, held, 2))
    resume = in_dialog("INVITE", INVITE, ok, 3, SDP_HOLD.format(d1="sendonly", d2="sendonly", port2=41002),
                       "application/sdp")
    (resumed,) = h.send(resume)
    assert resumed.status == 200 and resumed.body.decode().count("a=recvonly") == 2
    assert f"m=audio {ports['agent']} " in resumed.body.decode()
    assert len(h.media.calls) == 1 and h.media.released == []


def test_reinvite_before_ack_gets_491_and_old_cseq_500() -> None:
    h = Harness()
    _, ok = started(h)
    (pending,) = h.send(in_dialog("INVITE", INVITE, ok, 2))
    assert pending.status == 491
    h.send(ack(INVITE, ok))
    (old,) = h.send(in_dialog("INVITE", INVITE, ok, 1, branch="z9hG4bK-old"))
    assert old.status == 500 and len(h.media.calls) == 1


def test_update_with_metadata_and_a_bad_update_leave_the_call_running() -> None:
    h = Harness()
    _, ok = started(h)
    h.send(ack(INVITE, ok))
    req = parse_message(INVITE)
    (good,) = h.send(in_dialog("UPDATE", INVITE, ok, 2, req.body.decode(), req.get("content-type")))
    assert good.status == 200 and good.body.decode().count("a=recvonly") == 2
    (bad,) = h.send(in_dialog("UPDATE", INVITE, ok, 3, "--x\r\n", "multipart/mixed;boundary=foobar"))
    assert bad.status in (400, 488) and len(h.media.calls) == 1


def test_bye_ends_the_call_a_retransmitted_bye_gets_the_same_answer() -> None:
    h = Harness()
    _, ok = started(h)
    h.send(ack(INVITE, ok))
    bye = in_dialog("BYE", INVITE, ok, 2)
    (first,) = h.send(bye)
    (second,) = h.send(bye)
    assert first.status == second.status == 200
    assert h.media.released == [("siprec-1-100@127.0.0.1", "bye")] and h.media.calls == {}
    (unknown,) = h.send(in_dialog("BYE", INVITE, ok, 3))
    assert unknown.status == 481


def test_cancel_after_the_answer_has_no_effect_unknown_cancel_481() -> None:
    h = Harness()
    started(h)
    req = parse_message(INVITE)
    cancel = INVITE.split(b"\r\n\r\n")[0].replace(b"INVITE sip", b"CANCEL sip").replace(b"1 INVITE", b"1 CANCEL")
    cancel = cancel.replace(b"Content-Length: " + str(len(req.body)).encode(), b"Content-Length: 0") + b"\r\n\r\n"
    (resp,) = h.send(cancel)
    assert resp.status == 200 and len(h.media.calls) == 1
    (other,) = h.send(cancel.replace(b"Call-ID: 1-100@127.0.0.1", b"Call-ID: nope").replace(b"sipp-1", b"sipp-2"))
    assert other.status == 481


def test_options_ping_is_answered_200_with_allow() -> None:
    h = Harness()
    (resp,) = h.send(wire("""OPTIONS sip:srs@127.0.0.1 SIP/2.0
Via: SIP/2.0/UDP 127.0.0.1:5080;branch=z9hG4bK-opt
From: <sip:sbc@127.0.0.1>;tag=1
To: <sip:srs@127.0.0.1>
Call-ID: ping
CSeq: 1 OPTIONS
"""))
    assert resp.status == 200 and "INVITE" in resp.get("allow") and resp.get("supported") == "siprec"


def test_refusals_are_clear_counted_and_leak_nothing() -> None:
    h = Harness(max_calls=1)
    plain = INVITE.replace(b"Require: siprec\r\n", b"").replace(b";+sip.src", b"")
    assert h.send(plain)[0].status == 488
    (ext,) = h.send(INVITE.replace(b"Require: siprec", b"Require: siprec, 100rel"))
    assert ext.status == 420 and ext.get("unsupported") == "100rel"
    unknown_label = load("sipp_rfc7865.sip", ("<label>2</label>", "<label>9</label>"))
    (bad_md,) = h.send(unknown_label)
    assert bad_md.status == 400 and "label" in bad_md.phrase
    (bad_xml,) = h.send(load("sipp_rfc7865.sip", ("</recording>", "</recordin>")))
    assert bad_xml.status == 400
    (bad_body,) = h.send(INVITE.replace(b"boundary=foobar", b"boundary=nomatch"))
    assert bad_body.status == 400
    assert h.media.calls == {}
    started(h)
    (busy,) = h.send(INVITE.replace(b"Call-ID: 1-100", b"Call-ID: 2-100"))
    assert busy.status == 503 and busy.get("retry-after") == "5"
    (forbidden,) = h.send(INVITE, Peer("udp", ("192.0.2.7", 5060)))
    assert forbidden.status == 403
    assert h.dropped == ["not_siprec", "not_siprec", "metadata_unknown_stream", "bad_metadata", "bad_body",
                         "max_calls", "forbidden_source"]
    assert len(h.media.calls) == 1


def test_malformed_request_with_enough_headers_gets_400_garbage_gets_nothing() -> None:
    h = Harness()
    (resp,) = h.send(INVITE.replace(b"Content-Length: ", b"Content-Length: 9"))
    assert resp.status == 400
    assert h.send(b"\x00\x01garbage") == []
    assert h.dropped == ["bad_content_length", "malformed"] and h.media.calls == {}


def test_session_timeout_ends_a_silent_session_and_media_keeps_it_alive() -> None:
    h = Harness(session_timeout_s=10.0)
    _, ok = started(h)
    h.send(ack(INVITE, ok))
    (call_id,) = h.media.calls
    h.media.packet_count[call_id] = 50
    h.advance(10.0)
    assert len(h.media.calls) == 1
    h.advance(10.0)
    assert h.media.calls == {} and h.media.released == [(call_id, "session_timeout")]


def test_allowed_networks_take_other_sources() -> None:
    h = Harness(allowed_networks=[ipaddress.ip_network("10.0.0.0/8")])
    assert [r.status for r in h.send(INVITE, Peer("udp", ("10.1.2.3", 5060)))] == [100, 200]
    (resp,) = h.send(INVITE.replace(b"Call-ID: 1-100", b"Call-ID: 3-100"), UDP)
    assert resp.status == 403


def test_transfer_reinvite_with_a_new_participant_and_stream_keeps_the_call() -> None:
    h = Harness()
    _, ok = started(h)
    h.send(ack(INVITE, ok))
    (ports,) = h.media.calls.values()
    text = load("sipp_rfc7865.sip", ("sip:agent@example.com", "sip:supervisor@example.com"),
                ("a=label:2\na=sendonly\n", "a=label:2\na=sendonly\nm=audio 41004 RTP/AVP 0\na=label:3\na=sendonly\n"))
    req = parse_message(text)
    (resp,) = h.send(in_dialog("INVITE", INVITE, ok, 2, req.body.decode(), req.get("content-type")))
    sdp = resp.body.decode()
    assert resp.status == 200 and sdp.count("a=recvonly") == 2
    assert f"m=audio {ports['caller']} " in sdp and f"m=audio {ports['agent']} " in sdp
    assert "m=audio 0 " in sdp  # a stream added mid-call is declined (port 0): its leg cannot be created now
    assert len(h.media.calls) == 1 and h.media.released == [] and h.dropped == []


def test_srtp_streams_are_declined_and_an_all_srtp_offer_refused() -> None:
    h = Harness()
    one = load("sipp_rfc7865.sip", ("m=audio 41002 RTP/AVP 8", "m=audio 41002 RTP/SAVP 8"))
    _, ok = h.send(one)
    assert ok.status == 200 and "m=audio 0 RTP/SAVP 8" in ok.body.decode()
    (legs,) = h.media.calls.values()
    assert list(legs) == ["caller"]
    h.send(in_dialog("BYE", one, ok, 2))
    both = load("sipp_rfc7865.sip", ("m=audio 41002 RTP/AVP 8", "m=audio 41002 RTP/SAVP 8"),
                ("m=audio 41000 RTP/AVP 0", "m=audio 41000 RTP/SAVP 0"),
                ("Content-Type: application/rs-metadata+xml", "Content-Type: text/plain"))
    (resp,) = h.send(both)
    assert resp.status == 488 and h.media.calls == {}
