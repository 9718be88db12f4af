"""Stream a WAV file through the real audio path (resample → 250 ms chunks → one DeepfakeDetection
stream per channel) and print every result as one JSON line as it arrives. Each channel of a
stereo file is its own leg. Without --upstream the embedded simulator is used (a test double
with a marker-tone rule, not a detector); with it, SPOOFWATCH_CID / SPOOFWATCH_API_KEY are sent."""

from __future__ import annotations

import argparse
import sys


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", help="WAV file (16-bit PCM, any rate, mono or stereo)")
    p.add_argument("--upstream", metavar="HOST:PORT",
                   help="BehavioralStreamingApi target (default: embedded simulator)")
    p.add_argument("--tls", action="store_true", help="force TLS to --upstream (default: TLS unless it is loopback)")
    p.add_argument("--realtime", action="store_true", help="pace the audio in real time instead of as fast as possible")
    p.add_argument("--level", choices=("all", "segment", "utterance"), default="all", help="result level to ask for")
    p.add_argument("--timeout-s", type=float, default=30.0, help="wait this long for final results (default 30)")


def main(args: argparse.Namespace) -> int:
    import asyncio

    from daemon.config import ConfigError

    try:
        return asyncio.run(analyze(args))
    except ConfigError as exc:
        print(f"spoofwatch analyze: {exc}", file=sys.stderr)
        return 2
    except (OSError, ValueError) as exc:
        print(f"spoofwatch analyze: {exc}", file=sys.stderr)
        return 2


async def analyze(args: argparse.Namespace) -> int:
    import asyncio
    import dataclasses
    import json
    import secrets
    import wave

    import numpy as np

    from daemon.audio.path import LegAudioPath
    from daemon.clock import SystemClock
    from daemon.config import SimulatorConfig, UpstreamConfig, UpstreamCredentials, upstream_credentials
    from daemon.model import AudioFormat, Codec, DeepfakeResult, LegRef
    from daemon.ops.metrics import Metrics
    from daemon.upstream.channels import ChannelPool, use_tls
    from daemon.upstream.stream import LegStream

    try:
        with wave.open(args.file) as w:
            if w.getsampwidth() != 2:
                raise ValueError(f"{args.file}: only 16-bit PCM WAV is supported (got {8 * w.getsampwidth()}-bit)")
            rate, channels = w.getframerate(), w.getnchannels()
            pcm = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").reshape(-1, channels)
    except (wave.Error, EOFError) as exc:
        raise ValueError(f"{args.file}: not a readable WAV file: {exc}") from None

    clock = SystemClock()
    metrics = Metrics()
    simulator = None
    if args.upstream:
        creds = upstream_credentials()
        target = args.upstream
    else:
        from daemon.upstream.simulator import SimulatorServer

        creds = UpstreamCredentials(cid=1, api_key="local-" + secrets.token_hex(8))
        simulator = SimulatorServer(SimulatorConfig(), cid=creds.cid, api_key=creds.api_key)
        port = await simulator.start("127.0.0.1:0")
        target = f"127.0.0.1:{port}"
        print("# upstream: embedded simulator (test double, marker-tone rule, not a detector)", file=sys.stderr)
    upstream = dataclasses.replace(UpstreamConfig(), target=target, tls="on" if args.tls else "auto",
                                   result_level=args.level)
    pool = ChannelPool(target, tls=use_tls(upstream, target), size=1, keepalive_s=upstream.keepalive_s,
                       max_streams_per_channel=upstream.max_streams_per_channel,
                       breaker_failures=upstream.breaker_failures, breaker_open_s=upstream.breaker_open_s,
                       clock=clock, metrics=metrics)

    def on_result(r: DeepfakeResult) -> None:
        print(json.dumps({"leg": r.leg.leg, "level": r.level.value, "start_s": round(r.start_s, 3),
                          "end_s": round(r.end_s, 3), "label": r.label,
                          "spoofed_posterior": round(r.spoofed_posterior, 4), "pid": r.pid,
                          "message_id": r.message_id, "simulated": r.simulated}), flush=True)

    fmt = AudioFormat(Codec.L16_LE, rate)
    n_chunks = max(1, int(0.25 * rate))  # feed 250 ms of input at a time
    legs = []
    for ch in range(channels):
        stream = LegStream(pool, creds, LegRef(args.file, f"ch{ch}"), upstream=upstream,
                           queue_chunks=1_000_000, replay_chunks=40, metrics=metrics, clock=clock,
                           on_result=on_result, force_simulated=simulator is not None)
        stream.start()
        legs.append((LegAudioPath(fmt), stream))
    failed = False
    try:
        t0 = clock.monotonic()
        for i in range(0, len(pcm), n_chunks):
            block = pcm[i:i + n_chunks]
            now = clock.monotonic()
            for ch, (path, stream) in enumerate(legs):
                for chunk in path.push(np.ascontiguousarray(block[:, ch]).tobytes()):
                    stream.send_chunk(chunk, now)
            if args.realtime:
                await asyncio.sleep(max(0.0, t0 + (i + len(block)) / rate - clock.monotonic()))
            else:
                await asyncio.sleep(0)
        now = clock.monotonic()
        for path, stream in legs:
            for chunk in path.flush():
                stream.send_chunk(chunk, now)
        for _, stream in legs:
            await stream.finish(args.timeout_s)
            if not stream.analysed:
                failed = True
                print(f"spoofwatch analyze: leg {stream.leg.leg} was not analysed (state {stream.state})",
                      file=sys.stderr)
    finally:
        for _, stream in legs:
            await stream.aclose()
        await pool.close()
        if simulator is not None:
            await simulator.stop(grace=0.5)
    return 1 if failed else 0
