"""Run the upstream simulator: a real BehavioralStreamingApi gRPC server for tests and demos.
TEST DOUBLE: its labels come from a 3000 Hz marker-tone rule, not from a deepfake detector.
It accepts the credentials in SPOOFWATCH_CID / SPOOFWATCH_API_KEY."""

from __future__ import annotations

import argparse
import sys

BANNER = "TEST DOUBLE: labels come from a 3000 Hz marker-tone rule, not from a deepfake detector"


def add_arguments(p: argparse.ArgumentParser) -> None:
    from daemon.config import SimulatorConfig

    d = SimulatorConfig()
    p.add_argument("--listen", default="127.0.0.1:50051", metavar="HOST:PORT", help="address (default 127.0.0.1:50051)")
    p.add_argument("--vad-threshold-dbfs", type=float, default=d.vad_threshold_dbfs)
    p.add_argument("--utterance-end-silence-ms", type=int, default=d.utterance_end_silence_ms)
    p.add_argument("--segment-s", type=float, default=d.segment_s)
    p.add_argument("--result-latency-ms", type=int, default=0, help="fault: delay before each result")
    p.add_argument("--unavailable-after-s", type=float, default=0.0, help="fault: UNAVAILABLE after N s of a stream")
    p.add_argument("--refuse-new-streams", action="store_true", help="fault: UNAVAILABLE for every new stream")
    p.add_argument("--drop-results-ratio", type=float, default=0.0, help="fault: share of results dropped")
    p.add_argument("--close-connection-after-s", type=float, default=0.0,
                   help="fault: reset each stream's connection after N s")
    p.add_argument("--tls-cert", default="", metavar="PEM", help="serve TLS with this certificate (chain)")
    p.add_argument("--tls-key", default="", metavar="PEM", help="private key of --tls-cert")


def main(args: argparse.Namespace) -> int:
    import asyncio
    import dataclasses
    import logging
    import signal

    from daemon.config import ConfigError, SimulatorConfig, parse_config, upstream_credentials
    from daemon.upstream.simulator import SimulatorServer

    try:
        creds = upstream_credentials()
        base = SimulatorConfig()
        overrides = {"vad_threshold_dbfs": args.vad_threshold_dbfs,
                     "utterance_end_silence_ms": args.utterance_end_silence_ms, "segment_s": args.segment_s,
                     "result_latency_ms": args.result_latency_ms, "unavailable_after_s": args.unavailable_after_s,
                     "refuse_new_streams": args.refuse_new_streams, "drop_results_ratio": args.drop_results_ratio,
                     "close_connection_after_s": args.close_connection_after_s, "listen": args.listen,
                     "tls_cert_file": args.tls_cert, "tls_key_file": args.tls_key}
        settings = parse_config({"simulator": {**dataclasses.asdict(base), **overrides}}, "command line").simulator
    except ConfigError as exc:
        print(f"spoofwatch simulator: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    print(BANNER, file=sys.stderr, flush=True)

    async def run() -> int:
        server = SimulatorServer(settings, cid=creds.cid, api_key=creds.api_key)
        try:
            port = await server.start(settings.listen)
        except (OSError, ConfigError) as exc:
            print(f"spoofwatch simulator: {exc}", file=sys.stderr)
            return 1
        host = settings.listen.rpartition(":")[0]
        print(f"spoofwatch simulator listening on {host}:{port}", file=sys.stderr, flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        await server.stop(grace=2.0)
        return 0

    return asyncio.run(run())
