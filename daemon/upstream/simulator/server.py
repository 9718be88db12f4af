"""A real grpc.aio server for BehavioralStreamingApi that behaves as the seed documents say.

It is a TEST DOUBLE: labels come from the 3000 Hz marker-tone rule in rule.py. Every response
carries the initial metadata `x-spoofwatch-simulated: marker-tone-rule`, so clients (the daemon)
mark everything they get from it as simulated.

Protocol rules, each answered with the status a real gRPC server would use:
- first message: `config` and no audio; later messages: audio and no config → INVALID_ARGUMENT
- `cid` and `x_auth_token` on every message, equal to the accepted ones → UNAUTHENTICATED
  (the detail says which: token missing, token wrong, cid missing, cid wrong)
- encoding LINEAR_PCM at 16000 Hz only; odd-length audio → INVALID_ARGUMENT
- audio_content over max_message_bytes → RESOURCE_EXHAUSTED (gRPC's own limit answers the same)
- StreamAudio → UNIMPLEMENTED (only DeepfakeDetection is simulated)

Faults (settings, CLI flags, or `server.faults = dataclasses.replace(...)` from tests): delay per
result, UNAVAILABLE after N s of a stream, refusing new streams (UNAVAILABLE), dropping a share of
results, and closing the connection after N s (the stream ends with UNAVAILABLE "connection reset").

TLS: with `tls_cert_file` / `tls_key_file` set the server speaks TLS only (to test the client's TLS).
Records: `streams` holds a `StreamRecord` per open stream; finished ones (with the audio received,
up to RECORD_CAP_BYTES each) are kept only when a test asks (`keep_records=True`): the embedded
simulator of a running daemon keeps nothing per stream once the stream ended.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import logging
import math
import random
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import grpc

from daemon.clock import Clock, SystemClock
from daemon.config import ConfigError, SimulatorConfig, parse_hostport
from daemon.model import Level
from daemon.upstream.pb import api_pb2, api_pb2_grpc
from daemon.upstream.simulator.engine import SimResult, SimulatorEngine

log = logging.getLogger("spoofwatch.simulator")

SIMULATED_HEADER = ("x-spoofwatch-simulated", "marker-tone-rule")
RECORD_CAP_BYTES = 4 * 1024 * 1024  # per kept stream, for tests; later audio is counted, not kept


@dataclass(frozen=True)
class Faults:
    result_latency_ms: int = 0
    unavailable_after_s: float = 0.0
    refuse_new_streams: bool = False
    drop_results_ratio: float = 0.0
    close_connection_after_s: float = 0.0

    @classmethod
    def from_settings(cls, s: SimulatorConfig) -> Faults:
        return cls(s.result_latency_ms, s.unavailable_after_s, s.refuse_new_streams, s.drop_results_ratio,
                   s.close_connection_after_s)


@dataclass
class StreamRecord:
    pid: int
    peer: str
    chunks: list[bytes] = field(default_factory=list)
    audio_bytes: int = 0
    messages: int = 0
    results_sent: int = 0
    status_code: grpc.StatusCode | None = None
    detail: str = ""
    done: bool = False


class _Abort(Exception):
    def __init__(self, code: grpc.StatusCode, detail: str) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail


class _Servicer(api_pb2_grpc.BehavioralStreamingApiServicer):  # type: ignore[misc]
    def __init__(self, server: SimulatorServer) -> None:
        self.sim = server

    async def StreamAudio(self, request_iterator: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED,
                            "this simulator implements only DeepfakeDetection (StreamAudio is not simulated)")

    async def DeepfakeDetection(self, request_iterator: AsyncIterator[api_pb2.AudioStream],
                                context: grpc.aio.ServicerContext[Any, Any]) -> None:
        sim = self.sim
        await context.send_initial_metadata((SIMULATED_HEADER,))
        if sim.faults.refuse_new_streams:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "refusing new streams (fault injection)")
        pid = next(sim._pids)
        record = StreamRecord(pid=pid, peer=context.peer())
        sim.streams[pid] = record
        sim.streams_opened += 1
        opened = sim.clock.monotonic()
        message_id = 0
        logits = False
        try:
            engine: SimulatorEngine | None = None
            async for msg in request_iterator:
                record.messages += 1
                self._check_auth(msg, record.messages)
                faults = sim.faults
                elapsed = sim.clock.monotonic() - opened
                if faults.unavailable_after_s and elapsed >= faults.unavailable_after_s:
                    raise _Abort(grpc.StatusCode.UNAVAILABLE, "service unavailable (fault injection)")
                if faults.close_connection_after_s and elapsed >= faults.close_connection_after_s:
                    raise _Abort(grpc.StatusCode.UNAVAILABLE, "connection reset (fault injection)")
                if engine is None:
                    engine, logits = self._configure(msg)
                    continue
                audio = self._check_audio(msg, record.messages)
                record.audio_bytes += len(audio)
                if sim.keep_records and record.audio_bytes <= RECORD_CAP_BYTES:
                    record.chunks.append(audio)
                for result in engine.feed(audio):
                    message_id = await self._send(context, record, result, message_id, logits)
            if engine is not None:
                for result in engine.finish():
                    message_id = await self._send(context, record, result, message_id, logits)
            record.status_code = grpc.StatusCode.OK
        except _Abort as abort:
            record.status_code, record.detail = abort.code, abort.detail
            await context.abort(abort.code, abort.detail)
        finally:
            record.done = True
            if record.status_code is None:
                record.status_code = grpc.StatusCode.CANCELLED
            if not sim.keep_records:
                sim.streams.pop(pid, None)
        return

    def _check_auth(self, msg: api_pb2.AudioStream, n: int) -> None:
        sim = self.sim
        if not msg.x_auth_token:
            raise _Abort(grpc.StatusCode.UNAUTHENTICATED, f"x_auth_token missing on message {n}")
        if msg.x_auth_token != sim.api_key:
            raise _Abort(grpc.StatusCode.UNAUTHENTICATED, f"x_auth_token not accepted on message {n}")
        if msg.cid == 0:
            raise _Abort(grpc.StatusCode.UNAUTHENTICATED, f"cid missing on message {n}")
        if msg.cid != sim.cid:
            raise _Abort(grpc.StatusCode.UNAUTHENTICATED, f"cid {msg.cid} is not the project of this API key")

    def _configure(self, msg: api_pb2.AudioStream) -> tuple[SimulatorEngine, bool]:
        if not msg.HasField("config"):
            raise _Abort(grpc.StatusCode.INVALID_ARGUMENT, "the first message must carry config (and no audio)")
        if msg.audio_content:
            raise _Abort(grpc.StatusCode.INVALID_ARGUMENT, "the first message must not carry audio_content")
        cfg = msg.config
        if cfg.encoding != api_pb2.LINEAR_PCM:
            raise _Abort(grpc.StatusCode.INVALID_ARGUMENT, f"encoding {cfg.encoding} not supported: LINEAR_PCM only")
        if cfg.sample_rate_hertz != 16000:
            raise _Abort(grpc.StatusCode.INVALID_ARGUMENT,
                         f"sample_rate_hertz {cfg.sample_rate_hertz} not supported: 16000 only")
        level = None
        if cfg.HasField("level"):
            level = Level.SEGMENT if cfg.level == api_pb2.segment else Level.UTTERANCE
        return SimulatorEngine(self.sim.settings, level), cfg.HasField("logits") and cfg.logits

    def _check_audio(self, msg: api_pb2.AudioStream, n: int) -> bytes:
        if msg.HasField("config"):
            raise _Abort(grpc.StatusCode.INVALID_ARGUMENT, f"message {n}: config is allowed on the first message only")
        audio = msg.audio_content
        if not audio:
            raise _Abort(grpc.StatusCode.INVALID_ARGUMENT, f"message {n}: audio_content missing")
        if len(audio) % 2:
            raise _Abort(grpc.StatusCode.INVALID_ARGUMENT,
                         f"message {n}: audio_content of odd length {len(audio)} (16-bit samples expected)")
        if len(audio) > self.sim.settings.max_message_bytes:
            raise _Abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                         f"message {n}: audio_content of {len(audio)} bytes over {self.sim.settings.max_message_bytes}")
        return audio

    async def _send(self, context: grpc.aio.ServicerContext[Any, Any], record: StreamRecord, result: SimResult,
                    message_id: int, logits: bool) -> int:
        faults = self.sim.faults
        if faults.drop_results_ratio and self.sim.rng.random() < faults.drop_results_ratio:
            return message_id
        if faults.result_latency_ms:
            await asyncio.sleep(faults.result_latency_ms / 1000)
        message_id += 1
        await context.write(self.sim.to_message(result, record.pid, message_id, logits))
        record.results_sent += 1
        return message_id


class SimulatorServer:
    def __init__(self, settings: SimulatorConfig, *, cid: int, api_key: str, clock: Clock | None = None,
                 rng: random.Random | None = None, keep_records: bool = False) -> None:
        self.settings = settings
        self.cid = cid
        self.api_key = api_key
        self.clock = clock or SystemClock()
        self.rng = rng or random.Random()
        self.faults = Faults.from_settings(settings)
        #: open streams, and the finished ones too (with their audio) when `keep_records`, for tests
        self.streams: dict[int, StreamRecord] = {}
        self.keep_records = keep_records
        self.streams_opened = 0
        # pids are unique across restarts, as the real service's are
        self._pids = itertools.count(self.rng.randrange(10**6, 10**9))
        self._server: grpc.aio.Server | None = None
        self.port = 0

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def streams_active(self) -> int:
        return sum(1 for r in self.streams.values() if not r.done)

    def to_message(self, r: SimResult, pid: int, message_id: int, logits: bool = False) -> api_pb2.StreamResult:
        # posteriors as strings of 4 decimals that sum to exactly 1
        spoofed_e4 = round(r.spoofed_posterior * 10000)
        bonafide_e4 = 10000 - spoofed_e4
        spoofed_label = spoofed_e4 >= round(self.settings.spoof_threshold * 10000)
        preds = []
        for label, e4 in (("spoofed", spoofed_e4), ("bonafide", bonafide_e4)):
            p = api_pb2.Prediction(label=label, posterior=f"{e4 / 10000:.4f}")
            if logits:
                q = min(max(e4 / 10000, 1e-6), 1 - 1e-6)
                p.logit = f"{math.log(q / (1 - q)):.4f}"
            preds.append(p)
        if not spoofed_label:
            preds.reverse()  # the dominant class first, as the service's own results show it
        result = api_pb2.InferenceResult(
            id=r.id, start_time=f"{r.start_s:.3f}", end_time=f"{r.end_s:.3f}", task="deepfake", prediction=preds,
            final_label="spoofed" if spoofed_label else "bonafide",
            level=api_pb2.segment if r.level is Level.SEGMENT else api_pb2.utterance,
        )
        return api_pb2.StreamResult(cid=self.cid, pid=pid, message_id=message_id, result=[result])

    async def start(self, listen: str) -> int:
        host, port = parse_hostport(listen)
        credentials = self._tls_credentials() if self.settings.tls_cert_file else None
        limit = self.settings.max_message_bytes + 4096
        self._server = grpc.aio.server(options=[("grpc.max_receive_message_length", limit),
                                                ("grpc.so_reuseport", 0),
                                                ("grpc.http2.min_ping_interval_without_data_ms", 5000),
                                                ("grpc.keepalive_permit_without_calls", 1)])
        api_pb2_grpc.add_BehavioralStreamingApiServicer_to_server(_Servicer(self), self._server)
        if credentials is not None:
            bound = self._server.add_secure_port(f"{host}:{port}", credentials)
        else:
            bound = self._server.add_insecure_port(f"{host}:{port}")
        if bound == 0:
            raise OSError(f"simulator cannot listen on {listen}")
        await self._server.start()
        self.port = bound
        log.info("simulator listening on %s:%d%s (TEST DOUBLE: marker-tone rule, not a detector)", host, bound,
                 " with TLS" if self.settings.tls_cert_file else "")
        return bound

    def _tls_credentials(self) -> grpc.ServerCredentials:
        pem: dict[str, bytes] = {}
        for key, path in (("tls_cert_file", self.settings.tls_cert_file), ("tls_key_file", self.settings.tls_key_file)):
            try:
                with open(path, "rb") as f:
                    pem[key] = f.read()
            except OSError as exc:
                raise ConfigError(f"simulator.{key}: cannot read {path}: {exc.strerror}") from None
        return grpc.ssl_server_credentials([(pem["tls_key_file"], pem["tls_cert_file"])])

    def set_faults(self, **changes: Any) -> None:
        self.faults = dataclasses.replace(self.faults, **changes)

    async def stop(self, grace: float = 1.0) -> None:
        if self._server is not None:
            await self._server.stop(grace)
            self._server = None
