"""Per-leg jitter buffer (sans-I/O): packets in any order, out in sequence order.

- Each SSRC is validated as in RFC 3550 A.1 (seq.py): a new source's packets are held on
  probation until MIN_SEQUENTIAL of them arrive in sequence, then become the leg's stream (senders
  switch SSRC mid-call; what was buffered for the old one is released first). A single stray packet
  from another SSRC never interrupts the stream.
- 16-bit sequence numbers with wrap at 65536 (compared modulo 2^16). Reordering within `window`
  packets is undone; duplicates and late packets (behind the playout point) are dropped and counted.
- A packet `window` or more ahead of the playout point declares the missing ones before it lost:
  counted in one step, so the work per packet is O(window), never O(gap). The caller fills the gap
  from the timestamp delta.
- A very large jump or a rewind on the same SSRC (a PBX restarting its stream) is taken once the
  next packet follows it (A.1's bad_seq): the old numbering's buffered packets are released and
  playout restarts at the new one. One lone jumping packet is dropped and counted.
- At the start of a (sub-)stream packets are held until `window` have arrived or `start_playout()`
  is called (the ingest does at its next tick), so reordering of the very first packets is undone too.

Every packet pushed is accounted for exactly once: released, or counted in `duplicates`, `late`,
`probation` or `jumps` (or still held, until `flush()`).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from daemon.ingest.rtp.packet import RtpPacket
from daemon.ingest.rtp.seq import MAX_DROPOUT, MAX_MISORDER, MIN_SEQUENTIAL, RTP_SEQ_MOD, Seq, SeqValidator


@dataclass
class JitterStats:
    released: int = 0
    duplicates: int = 0
    late: int = 0
    lost: int = 0  # sequence numbers that never arrived (not packets received)
    reordered: int = 0
    ssrc_changes: int = 0
    probation: int = 0  # packets of a source that was never validated (dropped)
    jumps: int = 0  # very large jumps that no following packet confirmed (dropped)
    resyncs: int = 0  # confirmed jumps/rewinds: playout restarted at the new numbering


class JitterBuffer:
    def __init__(self, window: int) -> None:
        if window < 1:
            raise ValueError("window must be at least 1")
        self.window = window
        self.stats = JitterStats()
        self._max_misorder = max(MAX_MISORDER, window)
        self._ssrc: int | None = None  # the validated source being played out
        self._seqv: SeqValidator | None = None
        self._next: int | None = None  # next sequence number to release
        self._started = False
        self._held: dict[int, RtpPacket] = {}
        self._jump: RtpPacket | None = None  # the last packet of a not (yet) confirmed large jump
        self._cand_ssrc: int | None = None  # a source on probation, and its packets (bounded)
        self._cand_seqv: SeqValidator | None = None
        self._cand: deque[RtpPacket] = deque(maxlen=max(window, MIN_SEQUENTIAL))

    def push(self, pkt: RtpPacket) -> list[RtpPacket]:
        if pkt.ssrc != self._ssrc:
            return self._probe(pkt)
        assert self._seqv is not None
        verdict = self._seqv.update(pkt.sequence)
        if verdict is Seq.VALID:
            return self._accept(pkt)
        if verdict is Seq.JUMP:
            if self._jump is not None:
                self.stats.jumps += 1
            self._jump = pkt
            return []
        # Seq.RESYNC: the sender restarted its numbering at the last jump packet
        self.stats.resyncs += 1
        out = self._flush_held()
        restart = [pkt] if self._jump is None else [self._jump, pkt]
        self._jump = None
        self._next = None
        for p in restart:
            out += self._accept(p)
        return out

    def take_next(self, ssrc: int, seq: int) -> bool:
        """The in-order common case without a packet object: True when `seq` of the playing source is
        exactly the next to release and nothing is held or pending (the state moves on as `push` would
        have moved it, and the caller plays the payload out); False: nothing changed, use `push`."""
        seqv = self._seqv
        if (ssrc != self._ssrc or seq != self._next or not self._started or self._held or self._jump is not None
                or seqv is None or seqv.probation or (seq - seqv.max_seq) & 0xFFFF >= MAX_DROPOUT):
            return False
        seqv.max_seq = seq
        self._next = (seq + 1) & 0xFFFF
        self.stats.released += 1
        return True

    def start_playout(self) -> list[RtpPacket]:
        """Stop waiting for early reordered packets: release from the earliest held one."""
        if self._started or self._next is None:
            return []
        self._started = True
        out: list[RtpPacket] = []
        if self._held:
            far = max((s - self._next) & 0xFFFF for s in self._held)
            if far >= self.window:
                out = self._advance((self._next + far - self.window + 1) & 0xFFFF)
        return out + self._release_ready()

    def flush(self) -> list[RtpPacket]:
        """Release everything held, in order, counting the holes as lost (leg end). Packets of a source
        still on probation and an unconfirmed jump are dropped and counted."""
        self.stats.probation += len(self._cand)
        self._cand.clear()
        self._cand_ssrc = self._cand_seqv = None
        if self._jump is not None:
            self.stats.jumps += 1
            self._jump = None
        return self._flush_held()

    @property
    def held(self) -> int:
        return len(self._held) + len(self._cand) + (self._jump is not None)

    # ---------------------------------------------------------------------------------------------
    def _probe(self, pkt: RtpPacket) -> list[RtpPacket]:
        """A packet of another SSRC: on probation until its source is valid, then that source is played."""
        if pkt.ssrc != self._cand_ssrc or self._cand_seqv is None:
            self.stats.probation += len(self._cand)
            self._cand.clear()
            self._cand_ssrc = pkt.ssrc
            self._cand_seqv = SeqValidator(pkt.sequence, self._max_misorder)
        seqv = self._cand_seqv
        verdict = seqv.update(pkt.sequence)
        if len(self._cand) == self._cand.maxlen:
            self.stats.probation += 1  # the deque drops its oldest
        self._cand.append(pkt)
        if verdict is not Seq.VALID:
            return []
        out = self._flush_held()
        if self._ssrc is not None:
            self.stats.ssrc_changes += 1
        if self._jump is not None:
            self.stats.jumps += 1
            self._jump = None
        self._ssrc, self._seqv, self._next = pkt.ssrc, seqv, None
        packets = list(self._cand)
        self._cand.clear()
        self._cand_ssrc = self._cand_seqv = None
        ahead = 0
        for p in packets:  # what probation held goes in if A.1 would call it valid now; reordering is undone
            d = (p.sequence - pkt.sequence) & 0xFFFF
            if d < MAX_DROPOUT or d >= RTP_SEQ_MOD - self._max_misorder:
                if d < MAX_DROPOUT:
                    ahead = max(ahead, d)
                out += self._accept(p)
            else:
                self.stats.probation += 1
        seqv.max_seq = (pkt.sequence + ahead) & 0xFFFF
        return out

    def _accept(self, pkt: RtpPacket) -> list[RtpPacket]:
        seq = pkt.sequence
        if self._next is None:
            self._next = seq
            self._started = False
        if not self._started:
            if seq in self._held:
                self.stats.duplicates += 1
                return []
            if (self._next - seq) & 0xFFFF < 0x8000:  # earlier than anything held: playout starts there
                self._next = seq
            self._held[seq] = pkt
            if len(self._held) >= self.window:
                return self.start_playout()
            return []
        delta = (seq - self._next) & 0xFFFF
        if delta == 0 and not self._held:  # the common case: in order, nothing waiting
            self._next = (seq + 1) & 0xFFFF
            self.stats.released += 1
            return [pkt]
        if delta >= 0x8000:  # behind the playout point
            self.stats.late += 1
            return []
        if seq in self._held:
            self.stats.duplicates += 1
            return []
        if 0 < delta < self.window:
            self.stats.reordered += 1
        self._held[seq] = pkt
        out = self._advance((seq - self.window + 1) & 0xFFFF) if delta >= self.window else []
        return out + self._release_ready()

    def _advance(self, target: int) -> list[RtpPacket]:
        """Move the playout point forward to `target` in one step: held packets before it are released
        in order, the numbers in between that never arrived are counted lost. O(held), not O(gap)."""
        assert self._next is not None
        nxt = self._next
        span = (target - nxt) & 0xFFFF
        before = sorted(off for s in self._held if (off := (s - nxt) & 0xFFFF) < span)
        out = [self._held.pop((nxt + off) & 0xFFFF) for off in before]
        self.stats.lost += span - len(out)
        self.stats.released += len(out)
        self._next = target
        return out

    def _release_ready(self) -> list[RtpPacket]:
        out = []
        assert self._next is not None
        while self._next in self._held:
            out.append(self._held.pop(self._next))
            self._next = (self._next + 1) & 0xFFFF
        self.stats.released += len(out)
        return out

    def _flush_held(self) -> list[RtpPacket]:
        if not self._held or self._next is None:
            return []
        far = max((s - self._next) & 0xFFFF for s in self._held)
        return self._advance((self._next + far + 1) & 0xFFFF)
