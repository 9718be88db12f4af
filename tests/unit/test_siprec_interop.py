"""The published SIPREC variants (tests/fixtures/siprec/) parse into the same kind of legs: RFC 7865
metadata (SIPp scenario), AudioCodes (legacy content type, pre-RFC <participant><send>, Contact ;src),
labels from 0 (with compact headers over TCP), OpenSIPS (no <stream>/send: m-line order)."""

from __future__ import annotations

import pytest

from daemon.ingest.siprec.message import parse_message
from daemon.ingest.siprec.metadata import parse_metadata, plan_legs, split_body, webhook_metadata
from daemon.ingest.siprec.sdp import parse_offer
from tests.unit.siprec_support import TCP, UDP, Harness, load


def legs_of(name: str) -> list[tuple[str, str, str]]:
    msg = parse_message(load(name))
    bodies = split_body(msg.get("content-type"), msg.body)
    offer = parse_offer(bodies.sdp)
    plans = plan_legs(offer.media, parse_metadata(bodies.metadata))
    return [(p.name, p.label, p.aor) for p in plans]


@pytest.mark.parametrize(("fixture", "expected"), [
    ("sipp_rfc7865.sip", [("caller", "1", "sip:caller@example.com"), ("agent", "2", "sip:agent@example.com")]),
    ("audiocodes_legacy.sip", [("1056", "1", "1056@192.168.241.44"), ("2000", "2", "2000@192.168.241.20")]),
    ("labels_from_0.sip", [("15551234567", "0", "tel:+15551234567"),
                           ("agent", "1", "sip:agent.smith@example.com")]),
    ("opensips_no_stream.sip", [("alice", "1", "sip:alice@example.com"), ("bob", "2", "sip:bob@example.com")]),
])
def test_variants_map_streams_to_participants(fixture: str, expected: list[tuple[str, str, str]]) -> None:
    assert legs_of(fixture) == expected


@pytest.mark.parametrize("fixture", ["sipp_rfc7865.sip", "audiocodes_legacy.sip", "labels_from_0.sip",
                                     "opensips_no_stream.sip"])
def test_every_variant_is_answered_with_one_recvonly_port_per_stream(fixture: str) -> None:
    h = Harness()
    peer = TCP if fixture == "labels_from_0.sip" else UDP
    trying, ok = h.send(load(fixture), peer)
    assert (trying.status, ok.status) == (100, 200)
    assert "+sip.srs" in ok.get("contact")
    sdp = ok.body.decode()
    assert sdp.count("a=recvonly") == 2 and sdp.count("m=audio 2000") == 2
    assert h.dropped == []
    (ports,) = h.media.calls.values()
    assert len(set(ports.values())) == 2


def test_webhook_metadata_names_the_original_call_and_participants() -> None:
    h = Harness()
    h.send(load("labels_from_0.sip"), TCP)
    (meta,) = h.media.meta.values()
    assert meta["sip_call_id"] == "labels-from-0@sbc"
    assert meta["sip_session_id"] == "a84b4c76e66710@pbx.example.com"
    assert meta["group_id"] == "7+OTCyoxTmqmqyA/1weDAg=="
    assert meta["participant.agent"] == "sip:agent.smith@example.com"
    assert meta["label.15551234567"] == "0"
    (maps,) = h.media.maps.values()
    assert (maps["agent"][96].name, maps["agent"][96].clock_rate) == ("opus", 48000)


def test_metadata_is_bounded_and_without_metadata_legs_are_named_by_label() -> None:
    msg = parse_message(load("sipp_rfc7865.sip"))
    offer = parse_offer(split_body(msg.get("content-type"), msg.body).sdp)
    plans = plan_legs(offer.media, None)
    assert [p.name for p in plans] == ["stream1", "stream2"]
    assert webhook_metadata(None, plans) == {"label.stream1": "1", "label.stream2": "2"}
