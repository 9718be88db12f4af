"""One track's decoder: encoded frames (aiortc `JitterFrame`s) → mono s16 samples and their rate.

Opus (what browsers send) is decoded by libopus straight to 16 kHz (daemon/ingest/whip/libopus.py), or,
without a system libopus, by PyAV's libopus at 48 kHz (FFmpeg's wrapper always gives 48 kHz). Either way
*mono* while the packets are mono: cheaper than aiortc's stereo decoder in time and state (PyAV mono:
~20 % less time, ~33 KiB instead of ~54 KiB; FFmpeg's native Opus decoder is faster but holds ~220 KiB
per track). A mono decoder would *average* a stereo packet's channels, and two channels may be two
speakers, so the first stereo packet (TOC "s" bit) switches the track to a stereo decoder for good, and
its first channel is taken. G.711 and G.722 go through aiortc's own decoders.
"""

from __future__ import annotations

from typing import Any

from daemon.ingest.whip import libopus
from daemon.ingest.whip.media import Pcm, first_channel

OPUS_RATE = 48000


def _libopus(channels: int) -> Any:
    import av

    ctx = av.CodecContext.create("libopus", "r")
    ctx.format = "s16"
    ctx.layout = "stereo" if channels == 2 else "mono"
    ctx.sample_rate = OPUS_RATE
    return ctx


class TrackDecoder:
    """Decoders are made at the first frame of each codec (a track keeps one codec in practice)."""

    def __init__(self) -> None:
        self._codec = ""
        self._ctx: Any = None
        self._stereo = False

    def decode(self, codec: Any, frame: Any) -> list[tuple[Pcm, int]]:
        """(samples, rate) for one encoded frame; raises ValueError or av.FFmpegError for undecodable data."""
        name = str(codec.name).lower()
        if name != self._codec:
            self.close()
            self._codec, self._stereo = name, False
        if name == "opus":
            return self._opus(bytes(frame.data))
        if self._ctx is None:
            from aiortc.codecs import get_decoder

            self._ctx = get_decoder(codec)
        out: list[tuple[Pcm, int]] = []
        for f in self._ctx.decode(frame):
            out.append((first_channel(f.to_ndarray(), len(f.layout.channels), f.format.is_planar), f.sample_rate))
        return out

    def close(self) -> None:
        """Free the decoder's state (libopus' is outside Python's heap)."""
        if isinstance(self._ctx, libopus.OpusDecoder):
            self._ctx.close()
        self._ctx = None

    def _opus(self, data: bytes) -> list[tuple[Pcm, int]]:
        import av

        if not data:
            return []
        if data[0] & 0x04 and not self._stereo:
            self.close()
            self._stereo = True
        channels = 2 if self._stereo else 1
        if self._ctx is None:
            self._ctx = libopus.OpusDecoder(channels) if libopus.OpusDecoder.available() else _libopus(channels)
        if isinstance(self._ctx, libopus.OpusDecoder):
            samples = self._ctx.decode(data)
            return [(samples[::2].copy() if self._stereo else samples, libopus.RATE)]
        return [(first_channel(f.to_ndarray(), channels, False), OPUS_RATE) for f in self._ctx.decode(av.Packet(data))]
