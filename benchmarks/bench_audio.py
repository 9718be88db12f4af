"""Microseconds of decode + resample + chunk per 20 ms frame for one leg, per-frame (one push per
20 ms packet) and batched (one push per 100 ms), at 8 kHz PCMU, 16 kHz G.722, 48 kHz L16 and 48 kHz Opus
input, side by side in one process. Prints the calls per core each implies (a leg = 50 frames/s).

    .venv/bin/python benchmarks/bench_audio.py [--seconds 20] [--repeat 5]
"""

from __future__ import annotations

import argparse
import sys
import time
import wave
from collections.abc import Callable
from pathlib import Path

import numpy as np
import soxr

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from daemon.audio.codecs import encode_ulaw
from daemon.audio.path import LegAudioPath
from daemon.model import AudioFormat, Codec

ROOT = Path(__file__).resolve().parent.parent


def clip16k(seconds: float) -> np.ndarray:
    with wave.open(str(ROOT / "daemon/clips/speech_clean_16k.wav")) as w:
        pcm = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
    return np.tile(pcm, int(seconds * 16000 / len(pcm)) + 1)[: int(seconds * 16000)]


def av_packets(codec: str, pcm: np.ndarray, rate: int, frame: int) -> list[bytes]:
    import av

    enc = av.CodecContext.create(codec, "w")
    enc.sample_rate, enc.layout, enc.format = rate, "mono", "s16"
    out: list[bytes] = []
    for i in range(0, len(pcm) - frame, frame):
        f = av.AudioFrame.from_ndarray(pcm[i:i + frame].reshape(1, -1), format="s16", layout="mono")
        f.sample_rate, f.pts = rate, i
        out += [bytes(p) for p in enc.encode(f)]
    return out


def frames_for(kind: str, seconds: float) -> tuple[AudioFormat, list[bytes]]:
    pcm = clip16k(seconds)
    if kind == "pcmu_8k":
        ulaw = encode_ulaw(soxr.resample(pcm, 16000, 8000).astype(np.int16))
        return AudioFormat(Codec.PCMU, 8000), [ulaw[i:i + 160] for i in range(0, len(ulaw) - 159, 160)]
    if kind == "g722_16k":
        return AudioFormat(Codec.G722, 16000), av_packets("g722", pcm, 16000, 320)
    pcm48 = soxr.resample(pcm, 16000, 48000).astype(np.int16)
    if kind == "l16_48k":
        raw = pcm48.astype(">i2").tobytes()
        return AudioFormat(Codec.L16_BE, 48000), [raw[i:i + 1920] for i in range(0, len(raw) - 1919, 1920)]
    return AudioFormat(Codec.OPUS, 48000), av_packets("libopus", pcm48, 48000, 960)


def run(fmt: AudioFormat, frames: list[bytes], batch: int) -> float:
    path = LegAudioPath(fmt)
    push: Callable[[list[bytes]], list[bytes]] = path.push_many
    t0 = time.perf_counter()
    if batch == 1:
        for f in frames:
            path.push(f)
    else:
        for i in range(0, len(frames), batch):
            push(frames[i:i + batch])
    path.flush()
    return (time.perf_counter() - t0) / len(frames) * 1e6


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--repeat", type=int, default=5)
    args = p.parse_args()
    print(f"{args.seconds:.0f} s of speech per run, best of {args.repeat}; µs per 20 ms frame "
          f"(decode + soxr to 16 kHz + 8000-byte chunks); calls/core = 1e6 / (µs × 50)")
    print("| input | per-frame µs | batched 100 ms µs | ratio | legs/core per-frame | legs/core batched |")
    print("|---|---|---|---|---|---|")
    for kind in ("pcmu_8k", "g722_16k", "l16_48k", "opus_48k"):
        fmt, frames = frames_for(kind, args.seconds)
        single = min(run(fmt, frames, 1) for _ in range(args.repeat))
        batched = min(run(fmt, frames, 5) for _ in range(args.repeat))
        print(f"| {kind} | {single:.1f} | {batched:.1f} | {single / batched:.1f}× | {1e6 / (single * 50):.0f} | "
              f"{1e6 / (batched * 50):.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
