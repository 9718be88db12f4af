"""One leg's audio path: decode → one soxr stream → exact 8000-byte chunks (sans-I/O)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from daemon.audio.chunker import Chunker
from daemon.audio.codecs import Decoder, Pcm, make_decoder
from daemon.audio.resample import StreamResampler
from daemon.model import UPSTREAM_RATE_HZ, AudioFormat, Codec


class LegAudioPath:
    """Call `flush()` at leg end or the last < 250 ms is lost; after it the path is closed."""

    def __init__(self, fmt: AudioFormat, out_rate: int = UPSTREAM_RATE_HZ) -> None:
        self.fmt = fmt
        self.out_rate = out_rate
        self._decoder: Decoder | None = None
        self._resampler: StreamResampler | None = None
        self._chunker = Chunker()
        self.samples_in = 0
        self.output_samples = 0
        self.chunks_out = 0
        self.closed = False
        self._held: list[Pcm] = []  # decoded input not yet resampled (less than one chunk's worth)
        # G.711 is one byte per sample and stateless: its payloads are held undecoded and decoded in
        # one table lookup per chunk (a per-20 ms-frame numpy call cost more than the lookup itself)
        self._raw_hold = fmt.codec in (Codec.PCMU, Codec.PCMA)
        self._held_raw = bytearray()
        self._held_rate: int | None = None
        self._held_samples = 0  # of `_held` (the decoded hold); the raw hold's is len(_held_raw)
        #: raw G.711 bytes held at which they are resampled: they then complete the pending chunk
        #: (recomputed whenever the chunker's pending output changes, so `push` is one comparison)
        self._raw_rate = fmt.sample_rate
        self._raw_need = self._need_for(self._raw_rate)

    def _decoder_for_payloads(self) -> Decoder:
        if self._decoder is None:
            self._decoder = make_decoder(self.fmt)
        return self._decoder

    def _resample(self, samples: Pcm, rate: int) -> list[bytes]:
        if self.closed:
            raise RuntimeError("audio path already flushed")
        chunks: list[bytes] = self._release_held() if self._held_raw or self._held else []
        if self._resampler is None or self._resampler.in_rate != rate:
            if self._resampler is not None:  # rate switch: drain the old filter first
                chunks += self._chunk(self._resampler.flush())
            self._resampler = StreamResampler(rate, self.out_rate)
        self.samples_in += len(samples)
        return chunks + self._chunk(self._resampler.process(samples))

    def _chunk(self, out: Pcm) -> list[bytes]:
        self.output_samples += len(out)
        chunks = self._chunker.push(out)
        self.chunks_out += len(chunks)
        if self._raw_hold:
            self._raw_need = self._need_for(self._raw_rate)
        return chunks

    def _need_for(self, rate: int) -> int:
        """Input samples at `rate` whose output completes the pending chunk (before the filter delay):
        the least n with n * out_rate >= missing output samples * rate."""
        missing_out = (self._chunker.chunk_bytes - self._chunker.pending_bytes) // 2
        return -(-missing_out * rate // self.out_rate)

    def push(self, payload: bytes) -> list[bytes]:
        """Decode one payload. Its samples are resampled together with the ones before it as soon as
        they can complete a 250 ms chunk (one soxr call per chunk instead of one per 20 ms packet,
        and no added chunk latency: the chunk is cut when its last input sample arrives)."""
        if self.closed:
            raise RuntimeError("audio path already flushed")
        if self._raw_hold:  # the G.711 hot path: one append and one comparison per payload
            held = self._held_raw
            held += payload
            self._held_rate = self._raw_rate
            if len(held) < self._raw_need:
                return []
            resampler = self._resampler
            if resampler is None or resampler.in_rate != self._raw_rate:
                return self._release_held()
            samples = self._decoder_for_payloads().decode(bytes(held))
            held.clear()
            self._held_rate = None
            self.samples_in += len(samples)
            return self._chunk(resampler.process(samples))
        decoder = self._decoder_for_payloads()
        rate = decoder.out_rate
        samples = decoder.decode(payload)
        if self._held_rate not in (None, rate):
            chunks = self._release_held()
            return chunks + self._resample(samples, rate)
        self._held.append(samples)
        self._held_rate = rate
        self._held_samples += len(samples)
        if self._held_samples >= self._need_for(rate):
            return self._release_held()
        return []

    def _release_held(self) -> list[bytes]:
        if self._held_raw:
            samples = self._decoder_for_payloads().decode(bytes(self._held_raw))
            self._held_raw.clear()
        elif self._held:
            samples = self._held[0] if len(self._held) == 1 else np.concatenate(self._held)
        else:
            return []
        rate = self._held_rate
        self._held, self._held_rate, self._held_samples = [], None, 0
        assert rate is not None
        return self._resample(samples, rate)

    def push_many(self, payloads: Sequence[bytes]) -> list[bytes]:
        """Decode each payload, resample them in one call (batching ~100 ms saves most of the cost)."""
        decoder = self._decoder_for_payloads()
        parts = [decoder.decode(p) for p in payloads]
        if not parts:
            return []
        return self._resample(np.concatenate(parts), decoder.out_rate)

    def push_pcm(self, samples: Pcm, rate: int) -> list[bytes]:
        return self._resample(np.asarray(samples, dtype=np.int16), rate)

    def push_silence(self, seconds: float) -> list[bytes]:
        rate = self._held_rate or (self._resampler.in_rate if self._resampler is not None else self._natural_rate())
        n = round(seconds * rate)
        return self._resample(np.zeros(n, dtype=np.int16), rate) if n > 0 else []

    def _natural_rate(self) -> int:
        if self._decoder is not None:
            return self._decoder.out_rate
        return {"g722": 16000, "opus": 48000}.get(self.fmt.codec.value, self.fmt.sample_rate)

    def flush(self) -> list[bytes]:
        if self.closed:
            return []
        chunks = self._release_held()
        if self._resampler is not None:
            chunks += self._chunk(self._resampler.flush())
        self.closed = True
        tail = self._chunker.flush()
        if tail:
            chunks.append(tail)
            self.chunks_out += 1
        return chunks
