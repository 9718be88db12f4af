"""RFC 3550 A.1 sequence validation, case by case (probation, dropout, misorder, bad_seq resync)."""

from __future__ import annotations

import pytest

from daemon.ingest.rtp.seq import MAX_DROPOUT, MAX_MISORDER, MIN_SEQUENTIAL, Seq, SeqValidator


def verdicts(v: SeqValidator, seqs: list[int]) -> list[Seq]:
    return [v.update(s & 0xFFFF) for s in seqs]


def test_a_new_source_is_valid_after_min_sequential_packets() -> None:
    v = SeqValidator(500)
    assert MIN_SEQUENTIAL == 2
    assert verdicts(v, [500, 501, 502]) == [Seq.PROBATION, Seq.VALID, Seq.VALID] and v.valid


def test_probation_restarts_on_a_packet_out_of_sequence() -> None:
    v = SeqValidator(500)
    assert verdicts(v, [500, 502, 501, 900, 901]) == [Seq.PROBATION] * 4 + [Seq.VALID]


def test_probation_across_the_wrap() -> None:
    assert verdicts(SeqValidator(65535), [65535, 0, 1]) == [Seq.PROBATION, Seq.VALID, Seq.VALID]


def valid_at(seq: int) -> SeqValidator:
    v = SeqValidator(seq - 1)
    verdicts(v, [seq - 1, seq])
    assert v.valid and v.max_seq == seq & 0xFFFF
    return v


@pytest.mark.parametrize("ahead", [1, 2, 100, MAX_DROPOUT - 1])
def test_gaps_below_max_dropout_are_valid(ahead: int) -> None:
    v = valid_at(65500)
    assert v.update((65500 + ahead) & 0xFFFF) is Seq.VALID and v.max_seq == (65500 + ahead) & 0xFFFF


@pytest.mark.parametrize("behind", [0, 1, MAX_MISORDER - 1])
def test_reordered_or_duplicate_within_max_misorder_is_valid(behind: int) -> None:
    v = valid_at(10)
    assert v.update((10 - behind) & 0xFFFF) is Seq.VALID and v.max_seq == 10  # max_seq does not go back


@pytest.mark.parametrize("offset", [MAX_DROPOUT, 30000, 65536 - MAX_MISORDER - 1])
def test_a_large_jump_needs_a_second_sequential_packet(offset: int) -> None:
    v = valid_at(1000)
    jump = (1000 + offset) & 0xFFFF
    assert v.update(jump) is Seq.JUMP and v.max_seq == 1000
    assert v.update((jump + 1) & 0xFFFF) is Seq.RESYNC and v.max_seq == (jump + 1) & 0xFFFF and v.resyncs == 1
    assert v.update((jump + 2) & 0xFFFF) is Seq.VALID


def test_a_rewind_resynchronises_after_two_packets() -> None:
    v = valid_at(40000)
    assert verdicts(v, [3, 4, 5]) == [Seq.JUMP, Seq.RESYNC, Seq.VALID]


def test_lone_jumps_never_resync() -> None:
    v = valid_at(1000)
    assert verdicts(v, [30000, 40000, 30001, 50000]) == [Seq.JUMP] * 4 and v.max_seq == 1000
    assert verdicts(v, [30000, 1001, 30001]) == [Seq.JUMP, Seq.VALID, Seq.RESYNC]  # A.1 keeps bad_seq


def test_max_misorder_follows_a_larger_jitter_window() -> None:
    v = SeqValidator(0, max_misorder=1024)
    verdicts(v, [0, 1, 2000])
    assert v.update(2000 - 1023) is Seq.VALID and v.update(2000 - 1024) is Seq.JUMP
    with pytest.raises(ValueError):
        SeqValidator(0, max_misorder=0)
