"""Per-leg jitter buffer (sans-I/O): packets in any order, out in sequence order.

- 16-bit sequence numbers with wrap at 65536 (compared modulo 2^16);
- reordering within `window` packets is undone; duplicates and late packets (behind the playout
  point) are dropped and counted;
- when a packet arrives `window` or more ahead, the missing ones before it are declared lost
  (counted; the gap is later filled with silence from the timestamp delta by the caller);
- a new SSRC starts a new sub-stream (senders switch SSRC mid-call): what was buffered for the old
  one is released first;
- at the start of a sub-stream packets are held until `window` have arrived or `start_playout()`
  is called (the ingest does at its next tick), so reordering of the very first packets is undone too.
"""

from __future__ import annotations

from dataclasses import dataclass

from daemon.ingest.rtp.packet import RtpPacket


@dataclass
class JitterStats:
    released: int = 0
    duplicates: int = 0
    late: int = 0
    lost: int = 0
    reordered: int = 0
    ssrc_changes: int = 0


class JitterBuffer:
    def __init__(self, window: int) -> None:
        if window < 1:
            raise ValueError("window must be at least 1")
        self.window = window
        self.stats = JitterStats()
        self._ssrc: int | None = None
        self._next: int | None = None  # next sequence number to release
        self._started = False
        self._held: dict[int, RtpPacket] = {}

    def push(self, pkt: RtpPacket) -> list[RtpPacket]:
        out: list[RtpPacket] = []
        if self._ssrc is not None and pkt.ssrc != self._ssrc:
            self.stats.ssrc_changes += 1
            out += self.flush()
            self._next = None
        self._ssrc = pkt.ssrc
        if self._next is None:
            self._next = pkt.sequence
            self._started = False
        if not self._started:
            if pkt.sequence in self._held:
                self.stats.duplicates += 1
                return out
            if (self._next - pkt.sequence) & 0xFFFF < 0x8000:  # earlier than anything held: playout starts there
                self._next = pkt.sequence
            self._held[pkt.sequence] = pkt
            if len(self._held) >= self.window:
                out += self.start_playout()
            return out
        delta = (pkt.sequence - self._next) & 0xFFFF
        if delta == 0 and not self._held:  # the common case: in order, nothing waiting
            self._next = (self._next + 1) & 0xFFFF
            self.stats.released += 1
            out.append(pkt)
            return out
        if delta >= 0x8000:  # behind the playout point
            self.stats.late += 1
            return out
        if pkt.sequence in self._held:
            self.stats.duplicates += 1
            return out
        if delta > 0:
            self.stats.reordered += 1 if delta < self.window else 0
        self._held[pkt.sequence] = pkt
        if delta >= self.window:  # only a packet a full window ahead can force losses (next only advances)
            while self._held and max(((s - self._next) & 0xFFFF) for s in self._held) >= self.window:
                out += self._release_or_skip()
        out += self._release_ready()
        return out

    def start_playout(self) -> list[RtpPacket]:
        """Stop waiting for early reordered packets: release from the earliest held one."""
        if self._started or self._next is None:
            return []
        self._started = True
        out: list[RtpPacket] = []
        while self._held and (max(((s - self._next) & 0xFFFF) for s in self._held)) >= self.window:
            out += self._release_or_skip()
        return out + self._release_ready()

    def _release_ready(self) -> list[RtpPacket]:
        out = []
        assert self._next is not None
        while self._next in self._held:
            out.append(self._held.pop(self._next))
            self._next = (self._next + 1) & 0xFFFF
        self.stats.released += len(out)
        return out

    def _release_or_skip(self) -> list[RtpPacket]:
        assert self._next is not None
        if self._next not in self._held:
            self.stats.lost += 1
            self._next = (self._next + 1) & 0xFFFF
            return []
        return self._release_ready()

    def flush(self) -> list[RtpPacket]:
        """Release everything held, in order, counting the holes as lost (leg end or SSRC change)."""
        out: list[RtpPacket] = []
        while self._held:
            out += self._release_or_skip()
        return out

    @property
    def held(self) -> int:
        return len(self._held)
