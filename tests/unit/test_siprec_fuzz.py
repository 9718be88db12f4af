"""Hostile bytes: the parser raises only SipError, and the SRS core never raises, never leaks a port, and
answers a mutated INVITE with exactly one final response (or nothing)."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from daemon.ingest.siprec.message import SipError, StreamFramer, parse_message
from tests.unit.siprec_support import Harness, load

INVITE = load("sipp_rfc7865.sip")


@given(st.binary(max_size=2000))
def test_parser_raises_only_sip_error(data: bytes) -> None:
    try:
        parse_message(data)
    except SipError:
        pass


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(0, len(INVITE) - 1), st.binary(min_size=1, max_size=8), st.integers(0, 8))
def test_mutated_invite_gets_one_answer_and_leaks_nothing(at: int, junk: bytes, cut: int) -> None:
    h = Harness()
    data = INVITE[:at] + junk + INVITE[at + cut:]
    replies = h.send(data)
    finals = [r for r in replies if r.status >= 200]
    assert len(finals) <= 1
    if finals and finals[0].status != 200:
        assert h.media.calls == {}  # refused: nothing allocated
    h.core.close()
    assert h.media.calls == {}


@given(st.lists(st.integers(1, 400), min_size=1, max_size=30))
def test_framer_any_chunking(sizes: list[int]) -> None:
    stream = INVITE * 2
    framer, got, i = StreamFramer(), [], 0
    for n in sizes:
        got += framer.feed(stream[i:i + n])
        i += n
    got += framer.feed(stream[i:])
    assert got == [INVITE, INVITE]
