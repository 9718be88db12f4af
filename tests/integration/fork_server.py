"""A running shared websocket listener with every fork dialect (and AudioSocket) on 127.0.0.1:0, wired
from a parsed config exactly as the daemon wires it, in front of a recording CallAdmission."""

from __future__ import annotations

import asyncio
import tomllib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from daemon.calls.api import CallRefused
from daemon.clock import SystemClock
from daemon.config import parse_config
from daemon.ingest.audiosocket.server import AudioSocketIngest
from daemon.ingest.websocket.dialects import fork_dialects
from daemon.ingest.websocket.forkroute import ForkWebsocketIngest
from daemon.ingest.websocket.listener import WebsocketListener
from daemon.model import AudioFormat, CallInfo
from daemon.ops.metrics import Metrics
from tests.integration.fork_clients import CONFIG, ENV

WAIT = 15.0


@dataclass
class RecSink:
    fmt: AudioFormat
    bytes_in: int = 0
    silence_s: float = 0.0
    closed: bool = False

    def push(self, payload: bytes, received_at: float) -> None:
        self.bytes_in += len(payload)

    def push_pcm(self, samples: npt.NDArray[np.int16], rate: int, received_at: float) -> None:
        raise AssertionError("forks push encoded audio")

    def push_silence(self, seconds: float, received_at: float) -> None:
        self.silence_s += seconds

    def close(self) -> None:
        self.closed = True


@dataclass
class RecCall:
    info: CallInfo
    legs: dict[str, RecSink] = field(default_factory=dict)
    digits: list[str] = field(default_factory=list)
    end_reason: str | None = None

    def open_leg(self, leg: str, fmt: AudioFormat) -> RecSink:
        return self.legs.setdefault(leg, RecSink(fmt))

    def dtmf(self, leg: str, digit: str) -> None:
        self.digits.append(digit)

    def end(self, reason: str) -> None:
        assert self.end_reason is None, "end() called twice"
        self.end_reason = reason
        for sink in self.legs.values():
            sink.close()


class RecAdmission:
    def __init__(self) -> None:
        self.calls: dict[str, RecCall] = {}
        self.refuse: str | None = None

    def admit(self, info: CallInfo) -> RecCall:
        if self.refuse:
            raise CallRefused(self.refuse)
        if info.call_id in self.calls:
            raise CallRefused("duplicate_call_id")
        call = self.calls[info.call_id] = RecCall(info)
        return call

    async def wait(self, predicate: object, timeout: float = WAIT) -> None:
        """Poll the recorded state, bounded in count and time."""
        assert callable(predicate)
        for _ in range(int(timeout / 0.01)):
            if predicate():
                return
            await asyncio.sleep(0.01)
        raise AssertionError("condition not met in time")


@dataclass
class ForkServer:
    admission: RecAdmission
    metrics: Metrics
    port: int
    audiosocket_port: int
    routes: dict[str, ForkWebsocketIngest]
    listener: WebsocketListener

    def drops(self, ingest: str, reason: str) -> float:
        labels = {"ingest": ingest, "reason": reason}
        return self.metrics.registry.get_sample_value("spoofwatch_drops_total", labels) or 0.0

    def all_drops(self, ingest: str) -> dict[str, float]:
        out: dict[str, float] = {}
        for metric in self.metrics.registry.collect():
            for s in metric.samples:
                if s.name == "spoofwatch_drops_total" and s.labels.get("ingest") == ingest:
                    out[s.labels["reason"]] = s.value
        return out


@asynccontextmanager
async def fork_server(extra: str = "", start_timeout_s: float = 10.0) -> AsyncIterator[ForkServer]:
    cfg = parse_config(tomllib.loads('[ingest.websocket]\nlisten = "127.0.0.1:0"\nmax_frame_bytes = 65536\n'
                                     + CONFIG + extra))
    admission, metrics, clock = RecAdmission(), Metrics(), SystemClock()
    listener = WebsocketListener(cfg.ingest.websocket)
    routes = {}
    for dialect in fork_dialects(cfg.ingest, ENV, clock):
        route = ForkWebsocketIngest(dialect, admission, metrics, clock, start_timeout_s=start_timeout_s)
        routes[dialect.name] = route
        listener.add(route)
    audiosocket = AudioSocketIngest(cfg.ingest.audiosocket, admission, metrics, clock,
                                    start_timeout_s=start_timeout_s)
    port = await listener.start()
    as_port = await audiosocket.start()
    try:
        yield ForkServer(admission, metrics, port, as_port, routes, listener)
    finally:
        await listener.close()
        await audiosocket.close()
