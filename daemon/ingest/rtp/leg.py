"""One RTP leg (one allocated port) and the playout of what its jitter buffer released: decode by
each packet's payload type, fill timestamp gaps with silence within the real-time budget
(gapfill.py), and push to the leg's sink. Synchronous; the caller counts drops by reason."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from daemon.audio.codecmap import CodecMap
from daemon.audio.codecs import DecodeError, Decoder, make_decoder
from daemon.calls.api import CallHandle, LegSink
from daemon.ingest.rtp.gapfill import GapFillBudget
from daemon.ingest.rtp.jitter import JitterBuffer
from daemon.ingest.rtp.packet import RtpPacket
from daemon.model import PCMU_8K, AudioFormat, Codec

if TYPE_CHECKING:
    import numpy.typing as npt

#: a timestamp jump longer than this is a discontinuity (sender restarted its clock), not loss
MAX_GAP_FILL_S = 2.0
#: codecs whose payloads the leg's audio path takes undecoded (one byte per sample, stateless)
RAW_CODECS = frozenset({Codec.PCMU, Codec.PCMA})


@dataclass
class RtpCall:
    call_id: str
    handle: CallHandle
    legs: dict[str, PortLeg] = field(default_factory=dict)
    auto: bool = False


@dataclass
class PortLeg:
    """One allocated port: the leg of a call it carries, and its receive state."""

    port: int
    call: RtpCall
    name: str
    codecs: CodecMap
    window: int
    jitter: JitterBuffer = field(init=False)
    reported: tuple[int, ...] = (0, 0, 0, 0, 0)  # jitter counts the metrics have been told (server._report)
    budget: GapFillBudget = field(default_factory=GapFillBudget)
    backlog: list[RtpPacket] = field(default_factory=list)
    last_arrival: float = 0.0
    source: Any = None  # the (ip, port) the leg latched on to: its first RTP packet's sender
    sink: LegSink | None = None
    sink_fmt: AudioFormat | None = None  # the format the sink's own audio path decodes
    raw_pt: int | None = None  # the payload type handed to the sink undecoded (G.711 in sink_fmt)
    raw_rate: int = 8000  # its RTP clock rate (one byte per sample)
    decoders: dict[int, Decoder] = field(default_factory=dict)
    expected_ts: int | None = None
    last_ssrc: int | None = None
    ended: bool = False
    failed: bool = False
    packets: int = 0
    bye_at: float | None = None

    def __post_init__(self) -> None:
        self.jitter = JitterBuffer(self.window)


def gap_s(leg: PortLeg, timestamp: int, clock_rate: int) -> float:
    """Seconds of audio the sender lost between the last packet and this one (an RTP timestamp jump);
    0 when none, or when the jump is a discontinuity rather than loss."""
    if leg.expected_ts is None:
        return 0.0
    gap_units = (timestamp - leg.expected_ts) & 0xFFFFFFFF
    if 0 < gap_units < 0x80000000:
        gap = gap_units / clock_rate
        if gap <= MAX_GAP_FILL_S:
            return gap
    return 0.0


def fill_gap(leg: PortLeg, sink: LegSink, timestamp: int, clock_rate: int, next_audio_s: float, now: float,
             drop: Callable[[str], None]) -> None:
    gap = gap_s(leg, timestamp, clock_rate)
    if not gap:
        return
    allowed = leg.budget.fill(gap, now, next_audio_s)
    if allowed < gap:
        drop("gap_fill_capped")  # the timestamps claim more loss than the wall clock allows
    if allowed > 0:
        sink.push_silence(allowed, now)


def play_out(leg: PortLeg, now: float, drop: Callable[[str], None]) -> None:
    """Decode and push the leg's backlog (packets in sequence order) to its sink."""
    packets, leg.backlog = leg.backlog, []
    if not packets or leg.ended:
        return
    rate = 0
    parts: list[npt.NDArray[np.int16]] = []

    def push_parts() -> None:
        nonlocal parts
        if parts and leg.sink is not None:
            leg.sink.push_pcm(np.concatenate(parts), rate, now)
        parts = []

    for pkt in packets:
        spec = leg.codecs.get(pkt.payload_type)
        if spec is None:
            drop("unknown_pt")
            continue
        if not spec.is_audio:
            drop("not_audio")  # telephone-event, CN: never audio
            continue
        if pkt.ssrc != leg.last_ssrc:
            leg.last_ssrc = pkt.ssrc
            leg.expected_ts = None  # new sub-stream: no gap fill across an SSRC change
        if leg.sink is not None and spec.fmt == leg.sink_fmt and spec.fmt is not None \
                and spec.fmt.codec in RAW_CODECS and pkt.payload:
            # the sink's own path decodes this payload type: hand over the bytes (1 byte = 1 sample)
            push_parts()
            seconds = len(pkt.payload) / spec.clock_rate
            fill_gap(leg, leg.sink, pkt.timestamp, spec.clock_rate, seconds, now, drop)
            leg.sink.push(pkt.payload, now)
            leg.budget.audio(seconds)
            leg.expected_ts = (pkt.timestamp + len(pkt.payload)) & 0xFFFFFFFF
            continue
        decoder = leg.decoders.get(pkt.payload_type)
        if decoder is None:
            assert spec.fmt is not None
            decoder = leg.decoders[pkt.payload_type] = make_decoder(spec.fmt)
        try:
            samples = decoder.decode(pkt.payload)
        except DecodeError:
            drop("decode_error")
            continue
        if leg.sink is None:
            leg.sink_fmt = spec.fmt or PCMU_8K
            leg.sink = leg.call.handle.open_leg(leg.name, leg.sink_fmt)
            if spec.fmt is not None and spec.fmt.codec in RAW_CODECS:
                leg.raw_pt, leg.raw_rate = pkt.payload_type, spec.clock_rate
        seconds = len(samples) / decoder.out_rate
        if gap_s(leg, pkt.timestamp, spec.clock_rate):
            push_parts()  # what came before the gap goes first
            fill_gap(leg, leg.sink, pkt.timestamp, spec.clock_rate, seconds, now, drop)
        if decoder.out_rate != rate:
            push_parts()
            rate = decoder.out_rate
        parts.append(samples)
        leg.budget.audio(seconds)
        leg.expected_ts = (pkt.timestamp + round(len(samples) * spec.clock_rate / decoder.out_rate)) & 0xFFFFFFFF
    push_parts()
