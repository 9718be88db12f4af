"""Values that flow between the layers: audio formats, ingest events, upstream results, alerts.

Every ingest adapter turns wire bytes into these; the call layer, the upstream client,
the verdict policy and the outbox only ever see these.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field

#: The upstream contract: 16 kHz mono s16le, cut in 250 ms chunks of exactly this many bytes.
UPSTREAM_RATE_HZ = 16000
CHUNK_MS = 250
CHUNK_BYTES = UPSTREAM_RATE_HZ * CHUNK_MS // 1000 * 2  # 8000


class Codec(enum.Enum):
    PCMU = "pcmu"
    PCMA = "pcma"
    L16_BE = "l16be"  # RTP L16 (RFC 3551 network order)
    L16_LE = "l16le"  # "slin" over websocket/TCP forks, WAV files
    G722 = "g722"
    OPUS = "opus"


@dataclass(frozen=True, slots=True)
class AudioFormat:
    """What one leg's payloads are. `sample_rate` is the audio rate (G.722: 16000, Opus: 48000)."""

    codec: Codec
    sample_rate: int
    channels: int = 1


PCMU_8K = AudioFormat(Codec.PCMU, 8000)
PCMA_8K = AudioFormat(Codec.PCMA, 8000)


@dataclass(frozen=True, slots=True)
class LegRef:
    """One analysed leg of one call: `leg` is e.g. "inbound"/"outbound", "caller"/"agent", "ch0"."""

    call_id: str
    leg: str

    def __str__(self) -> str:
        return f"{self.call_id}/{self.leg}"


class Level(enum.Enum):
    SEGMENT = "segment"
    UTTERANCE = "utterance"


@dataclass(frozen=True, slots=True)
class DeepfakeResult:
    """One `deepfake` InferenceResult of one leg, typed.

    Times are seconds of *leg audio* (call time): the upstream stream's own times plus the
    offset at which that stream started (non-zero after a reconnect).
    """

    leg: LegRef
    level: Level
    start_s: float
    end_s: float
    label: str  # final_label: "spoofed" or "bonafide"
    spoofed_posterior: float
    pid: int
    message_id: int
    simulated: bool
    received_at: float = 0.0  # monotonic time the result was read from the stream


class AlertType(enum.Enum):
    SPOOF_DETECTED = "call.spoof_detected"
    SUMMARY = "call.summary"
    UPSTREAM_DEGRADED = "upstream.degraded"
    UPSTREAM_RECOVERED = "upstream.recovered"


@dataclass(frozen=True, slots=True)
class CallInfo:
    """Identity and metadata of a call, as its ingest knows it."""

    call_id: str
    ingest: str  # "twilio", "rtp", "analyze", ...
    metadata: Mapping[str, str] = field(default_factory=dict)
