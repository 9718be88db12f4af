"""Decoders and encoders: G.711 bit-exact with the standard (audioop on 3.11 as the reference),
L16 both byte orders, G.722 and Opus through libavcodec, bad payloads give DecodeError."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from daemon.audio.codecs import (
    ALAW_TO_LINEAR,
    ULAW_TO_LINEAR,
    DecodeError,
    decode_alaw,
    decode_l16,
    decode_ulaw,
    encode_alaw,
    encode_ulaw,
    make_decoder,
)
from daemon.model import AudioFormat, Codec
from tests.conftest import CLIPS, read_wav

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop

ALL_CODES = bytes(range(256))
ALL_SAMPLES = np.arange(-32768, 32768, dtype=np.int16)


def test_ulaw_table_bit_exact() -> None:
    ref = np.frombuffer(audioop.ulaw2lin(ALL_CODES, 2), dtype="<i2")
    assert np.array_equal(ULAW_TO_LINEAR, ref)
    assert np.array_equal(decode_ulaw(ALL_CODES), ref)
    assert ULAW_TO_LINEAR[0xFF] == 0 and ULAW_TO_LINEAR[0x00] == -32124 and ULAW_TO_LINEAR[0x80] == 32124


def test_alaw_table_bit_exact() -> None:
    ref = np.frombuffer(audioop.alaw2lin(ALL_CODES, 2), dtype="<i2")
    assert np.array_equal(ALAW_TO_LINEAR, ref)
    assert np.array_equal(decode_alaw(ALL_CODES), ref)
    assert ALAW_TO_LINEAR[0xD5] == 8 and ALAW_TO_LINEAR[0x55] == -8


def test_encoders_bit_exact_for_every_sample() -> None:
    assert encode_ulaw(ALL_SAMPLES) == audioop.lin2ulaw(ALL_SAMPLES.tobytes(), 2)
    assert encode_alaw(ALL_SAMPLES) == audioop.lin2alaw(ALL_SAMPLES.tobytes(), 2)


def test_l16_byte_orders_and_odd_length() -> None:
    x = np.array([1, -2, 300, -32768, 32767], dtype=np.int16)
    assert np.array_equal(decode_l16(x.astype(">i2").tobytes(), big_endian=True), x)
    assert np.array_equal(decode_l16(x.astype("<i2").tobytes(), big_endian=False), x)
    with pytest.raises(DecodeError, match="odd length"):
        decode_l16(b"\x00\x01\x02", big_endian=True)


def test_l16_stereo_downmix_and_partial_frame() -> None:
    dec = make_decoder(AudioFormat(Codec.L16_BE, 48000, channels=2))
    stereo = np.array([100, 300, -100, -300], dtype=np.int16).astype(">i2").tobytes()
    assert list(dec.decode(stereo)) == [200, -200]
    with pytest.raises(DecodeError):
        dec.decode(stereo[:6])


def _best_correlation(a: np.ndarray, b: np.ndarray, max_lag: int = 400) -> float:
    a = a.astype(np.float64)
    b = b.astype(np.float64)
    best = 0.0
    for lag in range(max_lag):
        n = min(len(a), len(b) - lag)
        if n < 1000:
            break
        best = max(best, float(np.corrcoef(a[:n], b[lag:lag + n])[0, 1]))
    return best


def _encode_with_av(codec: str, pcm: np.ndarray, rate: int, frame: int) -> list[bytes]:
    import av

    enc = av.CodecContext.create(codec, "w")
    enc.sample_rate = rate
    enc.layout = "mono"
    enc.format = "s16"
    if codec == "libopus":
        enc.bit_rate = 32000
    packets: list[bytes] = []
    for i in range(0, len(pcm) - frame, frame):
        f = av.AudioFrame.from_ndarray(pcm[i:i + frame].reshape(1, -1), format="s16", layout="mono")
        f.sample_rate = rate
        f.pts = i
        packets += [bytes(p) for p in enc.encode(f)]
    return packets


def test_g722_real_codec_round_trip() -> None:
    pcm, rate = read_wav(CLIPS / "speech_clean_16k.wav")
    pcm = pcm[: 3 * rate]
    packets = _encode_with_av("g722", pcm, 16000, 320)
    assert len(packets[0]) == 160  # 20 ms at 64 kbit/s
    dec = make_decoder(AudioFormat(Codec.G722, 16000))
    out = np.concatenate([dec.decode(p) for p in packets])
    assert dec.out_rate == 16000
    assert abs(len(out) - len(pcm)) < 640
    assert _best_correlation(pcm, out) > 0.9


def test_opus_real_codec_round_trip() -> None:
    import soxr

    pcm16, _ = read_wav(CLIPS / "speech_clean_16k.wav")
    pcm48 = soxr.resample(pcm16[:48000], 16000, 48000).astype(np.int16)
    packets = _encode_with_av("libopus", pcm48, 48000, 960)
    dec = make_decoder(AudioFormat(Codec.OPUS, 48000, channels=2))
    out = np.concatenate([dec.decode(p) for p in packets])
    assert dec.out_rate == 48000
    assert _best_correlation(pcm48, out, max_lag=800) > 0.8


@pytest.mark.parametrize("codec", [Codec.G722, Codec.OPUS])
def test_garbage_or_empty_compressed_payload_is_decode_error_not_crash(codec: Codec) -> None:
    dec = make_decoder(AudioFormat(codec, 16000 if codec is Codec.G722 else 48000))
    with pytest.raises(DecodeError):
        dec.decode(b"")
    for junk in (b"\xff" * 3, bytes(range(200)), b"\x00"):
        try:
            out = dec.decode(junk)  # libavcodec may decode noise: that is fine, a crash is not
            assert out.dtype == np.int16
        except DecodeError:
            pass
