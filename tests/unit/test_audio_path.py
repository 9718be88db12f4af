"""The leg audio path: decode → soxr → exact 8000-byte chunks; rate switches, silence, flush."""

from __future__ import annotations

import numpy as np
import pytest

from daemon.audio.chunker import Chunker
from daemon.audio.codecs import encode_ulaw
from daemon.audio.path import LegAudioPath
from daemon.audio.resample import StreamResampler
from daemon.model import CHUNK_BYTES, PCMU_8K, AudioFormat, Codec


def tone(rate: int, seconds: float, freq: float = 440.0) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    return (8000 * np.sin(2 * np.pi * freq * t)).astype(np.int16)


def total_bytes(chunks: list[bytes]) -> int:
    return sum(len(c) for c in chunks)


def test_pcmu_8k_one_second_gives_four_chunks_after_flush() -> None:
    path = LegAudioPath(PCMU_8K)
    ulaw = encode_ulaw(tone(8000, 1.0))
    chunks = []
    for i in range(0, len(ulaw), 160):
        chunks += path.push(ulaw[i:i + 160])
    chunks += path.flush()
    assert all(len(c) == CHUNK_BYTES for c in chunks[:-1])
    assert abs(total_bytes(chunks) - 32000) <= 4  # 1 s of 16 kHz s16 (soxr rounding)
    assert path.chunks_out == len(chunks)


@pytest.mark.parametrize("rate", [8000, 11025, 16000, 22050, 44100, 48000])
def test_any_input_rate_to_16k(rate: int) -> None:
    path = LegAudioPath(AudioFormat(Codec.L16_LE, rate))
    chunks = path.push(tone(rate, 2.0).tobytes()) + path.flush()
    assert abs(total_bytes(chunks) / 2 - 32000) <= 2
    assert all(len(c) == CHUNK_BYTES for c in chunks[:-1])
    # the 440 Hz tone survives resampling: dominant frequency of the output
    out = np.frombuffer(b"".join(chunks), dtype="<i2").astype(float)
    spectrum = np.abs(np.fft.rfft(out[4000:20000]))
    assert abs(np.argmax(spectrum) * 16000 / 16000 - 440) < 3


def test_push_pcm_rate_switch_keeps_samples() -> None:
    path = LegAudioPath(PCMU_8K)
    chunks = path.push_pcm(tone(8000, 1.0), 8000)
    chunks += path.push_pcm(tone(48000, 1.0), 48000)
    chunks += path.flush()
    assert abs(total_bytes(chunks) / 2 - 32000) <= 4


def test_silence_keeps_time() -> None:
    path = LegAudioPath(PCMU_8K)
    chunks = path.push(encode_ulaw(tone(8000, 0.5))) + path.push_silence(0.5) + path.flush()
    assert abs(total_bytes(chunks) / 2 - 16000) <= 4


def test_zero_or_negative_silence_adds_nothing() -> None:
    ulaw = encode_ulaw(tone(8000, 0.6))
    ref = LegAudioPath(PCMU_8K)
    expected = ref.push(ulaw) + ref.flush()
    path = LegAudioPath(PCMU_8K)
    got = path.push(ulaw)
    assert path.push_silence(0.0) == []
    assert path.push_silence(-0.5) == []
    got += path.flush()
    assert got == expected  # the same bytes as without the calls: no sample added, nothing flushed early


def test_flush_closes_and_bad_payload_does_not_break_the_path() -> None:
    path = LegAudioPath(AudioFormat(Codec.L16_BE, 16000))
    with pytest.raises(ValueError):
        path.push(b"\x00\x01\x02")
    chunks = path.push(np.zeros(16000, dtype=">i2").tobytes())
    assert len(chunks) == 4
    assert path.flush() == []  # 16 kHz in: no resampler, nothing held back
    assert path.flush() == []
    with pytest.raises(RuntimeError):
        path.push(b"\x00\x00")


def test_push_many_equals_push_each_in_length() -> None:
    ulaw = encode_ulaw(tone(8000, 1.0))
    frames = [ulaw[i:i + 160] for i in range(0, len(ulaw), 160)]
    a, b = LegAudioPath(PCMU_8K), LegAudioPath(PCMU_8K)
    one = [c for f in frames for c in a.push(f)] + a.flush()
    batched = [c for i in range(0, len(frames), 5) for c in b.push_many(frames[i:i + 5])] + b.flush()
    assert total_bytes(one) == total_bytes(batched)
    assert b.push_many([]) == []


def test_chunker_rejects_bad_sizes_and_odd_pcm() -> None:
    with pytest.raises(ValueError):
        Chunker(7)
    with pytest.raises(ValueError):
        Chunker().push(b"\x00")
    assert Chunker().flush() is None


def test_resampler_rejects_bad_rates_and_passes_through() -> None:
    with pytest.raises(ValueError):
        StreamResampler(0)
    r = StreamResampler(16000)
    x = tone(16000, 0.1)
    assert r.process(x) is x and len(r.flush()) == 0


def test_g711_fast_path_cuts_chunks_where_the_general_path_does() -> None:
    """PCMU payloads (held undecoded, one comparison per push) and the same audio decoded to L16 (held
    decoded) complete every chunk at the same payload, silence and a rate switch included."""
    from daemon.audio.codecs import decode_ulaw

    ulaw = encode_ulaw(tone(8000, 6.0, freq=300.0))
    raw, pcm = LegAudioPath(PCMU_8K), LegAudioPath(AudioFormat(Codec.L16_LE, 8000))
    cut_raw: list[tuple[int, int]] = []
    cut_pcm: list[tuple[int, int]] = []
    for i in range(0, len(ulaw), 160):
        payload = ulaw[i:i + 160]
        cut_raw += [(i, len(c)) for c in raw.push(payload)]
        cut_pcm += [(i, len(c)) for c in pcm.push(decode_ulaw(payload).tobytes())]
        if i == 160 * 101:
            cut_raw += [(i, len(c)) for c in raw.push_silence(0.33)]
            cut_pcm += [(i, len(c)) for c in pcm.push_silence(0.33)]
        if i == 160 * 202:
            cut_raw += [(i, len(c)) for c in raw.push_pcm(tone(48000, 0.4), 48000)]
            cut_pcm += [(i, len(c)) for c in pcm.push_pcm(tone(48000, 0.4), 48000)]
    cut_raw += [(-1, len(c)) for c in raw.flush()]
    cut_pcm += [(-1, len(c)) for c in pcm.flush()]
    assert len(cut_raw) > 25
    assert cut_raw == cut_pcm
