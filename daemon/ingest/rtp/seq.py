"""RTP sequence number validation per RFC 3550 Appendix A.1 (sans-I/O, O(1) per packet).

A source is *on probation* until MIN_SEQUENTIAL packets have arrived in sequence, so one stray or
forged packet never becomes a stream. Once valid, each sequence number is judged against the
highest seen (`max_seq`, modulo 2^16):

- ahead by less than MAX_DROPOUT: in order, or a gap (the jitter buffer counts the loss);
- behind by at most `max_misorder`: reordered or duplicate (the jitter buffer decides late/duplicate);
- anything else is a very large jump (forward, or a rewind such as a PBX restarting its stream):
  the packet is not accepted, but `bad_seq` remembers the number after it, and when the next packet
  carries exactly that number the sender is taken to have restarted and the source re-synchronises
  there (two sequential packets, as in A.1). A single hostile packet thus never moves the stream.
"""

from __future__ import annotations

from enum import Enum

MIN_SEQUENTIAL = 2
MAX_DROPOUT = 3000
MAX_MISORDER = 100
RTP_SEQ_MOD = 1 << 16


class Seq(Enum):
    VALID = "valid"  # in sequence, a permissible gap, or reordered/duplicate within max_misorder
    PROBATION = "probation"  # the source is not valid yet (this packet may still turn out to be its start)
    JUMP = "jump"  # a very large jump: not accepted unless the next packet follows it
    RESYNC = "resync"  # this packet follows the last JUMP one: the sender restarted its sequence here


class SeqValidator:
    """One source's sequence state. `max_misorder` is raised to the jitter window when that is larger,
    so every packet the jitter buffer could still place counts as reordered, not as a jump."""

    __slots__ = ("bad_seq", "max_misorder", "max_seq", "probation", "resyncs")

    def __init__(self, first_seq: int, max_misorder: int = MAX_MISORDER) -> None:
        if not 0 < max_misorder < RTP_SEQ_MOD - MAX_DROPOUT:
            raise ValueError("max_misorder out of range")
        self.max_misorder = max_misorder
        self.max_seq = (first_seq - 1) & 0xFFFF  # A.1: a new source starts on probation, max_seq = seq - 1
        self.probation = MIN_SEQUENTIAL
        self.bad_seq = RTP_SEQ_MOD + 1  # matches no 16-bit number
        self.resyncs = 0

    @property
    def valid(self) -> bool:
        return self.probation == 0

    def update(self, seq: int) -> Seq:
        if self.probation:
            if seq == (self.max_seq + 1) & 0xFFFF:
                self.probation -= 1
                self.max_seq = seq
                if self.probation == 0:
                    self.bad_seq = RTP_SEQ_MOD + 1
                    return Seq.VALID
            else:
                self.probation = MIN_SEQUENTIAL - 1
                self.max_seq = seq
            return Seq.PROBATION
        udelta = (seq - self.max_seq) & 0xFFFF
        if udelta < MAX_DROPOUT:
            self.max_seq = seq  # (A.1 counts wrap cycles here; nothing of ours needs the extended number)
            return Seq.VALID
        if udelta <= RTP_SEQ_MOD - self.max_misorder:
            if seq == self.bad_seq:
                self.max_seq = seq
                self.bad_seq = RTP_SEQ_MOD + 1
                self.resyncs += 1
                return Seq.RESYNC
            self.bad_seq = (seq + 1) & 0xFFFF
            return Seq.JUMP
        return Seq.VALID  # behind max_seq by at most max_misorder: reordered or duplicate
