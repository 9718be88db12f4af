"""Twilio Media Streams websocket server: the thin I/O shell around `TwilioStreamParser`.

Served on the shared websocket listener (daemon.ingest.websocket.listener, `[ingest.websocket]
listen`) as the route of `cfg.path`; `start()` alone (tests, tools) gives it a listener of its own.

Per connection: upgrade (path, capacity and X-Twilio-Signature, unless turned off, checked in the handshake)
→ messages parsed → on `start` the call is admitted → each track is its own leg ("inbound",
"outbound", PCMU 8 kHz), opened at its first media, never mixed → `stop` or socket close ends the
call. We are a listen-only fork: nothing is ever sent to Twilio.

Call ids: the callSid; a second stream of the same call (stacked `<Start><Stream>`, or a restarted
fork while the earlier one still finishes) gets "<callSid>:<streamSid>". Metadata = the stream's
customParameters plus call_sid, stream_sid, account_sid (those three win over same-named parameters).

Refusals and closes:
- path other than `cfg.path` → HTTP 404; bad or missing signature → HTTP 403 (drops reason
  `signature_invalid` / `signature_missing`).
- after `stop_accepting()` or with `cfg.max_calls` sockets open → HTTP 503 on the upgrade: Twilio
  treats a failed upgrade as a stream error, the call itself goes on.
- a `start` refused by admission (or arriving while not accepting) → close 1013 (try again later)
  with the refusal reason.
- fatal protocol problems → close 1003 (unsupported_media_format), 1009 (oversize: websockets
  enforces `max_frame_bytes` itself) or 1008 (policy violation: bad_start, too_many_errors, no start
  within `start_timeout_s`).
- `close()` → open calls end with reason "shutdown", sockets close 1001 (going away).

What each parsed event does to the call (admission, legs, audio, drops) is in calls.py; this module owns
the listener route, the handshake and the socket's life.
"""

from __future__ import annotations

import asyncio
import http
import logging
from collections.abc import Sequence
from typing import Any

from websockets.asyncio.server import ServerConnection
from websockets.frames import CloseCode
from websockets.http11 import Request, Response

from daemon.calls.api import CallAdmission
from daemon.clock import Clock
from daemon.config import ConfigError, TwilioIngestConfig, read_secret
from daemon.configingest import WebsocketIngestConfig
from daemon.ingest.twilio.calls import INGEST, TwilioCallActions, TwilioStream
from daemon.ingest.twilio.protocol import (
    TwilioStreamParser,
)
from daemon.ingest.twilio.signature import DEV_AUTH_TOKEN, SIGNATURE_HEADER, expected_url, signature_valid
from daemon.ingest.websocket.connection import MediaConnection
from daemon.ingest.websocket.listener import WebsocketListener
from daemon.ops.metrics import Metrics

log = logging.getLogger("spoofwatch.ingest.twilio")

#: A socket that has not sent a valid `start` by then is not a Twilio stream.
START_TIMEOUT_S = 10.0


class TwilioIngest(TwilioCallActions):
    """Accepts Twilio (and SignalWire) Media Streams and feeds each call to `admission`."""

    def __init__(
        self,
        cfg: TwilioIngestConfig,
        admission: CallAdmission,
        metrics: Metrics,
        clock: Clock,
        *,
        start_timeout_s: float = START_TIMEOUT_S,
        max_frame_bytes: int = 65536,
        listen: str = "127.0.0.1:0",
        reuse_port: bool = False,
    ) -> None:
        self.cfg = cfg
        #: the shared listener's `max_size`; the parser's own bound on a text message
        self.max_frame_bytes = max_frame_bytes
        #: where `start()` listens when the ingest runs alone (the daemon uses the shared listener);
        #: SO_REUSEPORT: the workers of one host share the listener and the kernel spreads connections
        self._own_listener = WebsocketListener(WebsocketIngestConfig(listen=listen, max_frame_bytes=max_frame_bytes),
                                               reuse_port=reuse_port)
        self._standalone = False
        self.admission = admission
        self.metrics = metrics
        self.clock = clock
        self.start_timeout_s = start_timeout_s
        self._accepting = True
        self._token: str | None = None
        self._streams: set[TwilioStream] = set()
        #: callSid → streams of it still open: a second fork of the same call gets its own call id
        self._by_call_sid: dict[str, int] = {}
        self._frames_in = metrics.frames_in.labels(INGEST)  # resolved once: this is per media message

    # lifecycle ---------------------------------------------------------------------------------
    def prepare(self) -> None:
        """Read the auth token (before the shared listener starts). Raises ConfigError when the
        signature check is on but the auth token is missing."""
        if self.cfg.validate_signature:
            self._token = read_secret(self.cfg.auth_token_env)
            if not self._token:
                raise ConfigError(
                    f"ingest.twilio.validate_signature is true (the default) but {self.cfg.auth_token_env} is "
                    "not set: give the daemon your Twilio auth token (environment variable or systemd "
                    f"credential {self.cfg.auth_token_env}); `make run` sets the local development token "
                    f"{DEV_AUTH_TOKEN!r}, which `spoofwatch loadgen twilio` signs with by default"
                )
            if self._token == DEV_AUTH_TOKEN:
                log.warning("Twilio signatures are checked against the PUBLIC local development token (the "
                            "one `make run` sets): anyone can sign with it. Set %s to your Twilio auth token "
                            "before exposing %s", self.cfg.auth_token_env, self.cfg.path)

    async def start(self) -> int:
        """Run alone on a listener of its own; returns the bound port (the daemon instead calls
        `prepare()` and adds this route to the shared listener)."""
        self.prepare()
        self._standalone = True
        self._own_listener.add(self)
        return await self._own_listener.start()

    def stop_accepting(self) -> None:
        """New upgrades get HTTP 503; streams already open go on until they stop or `close()`."""
        self._accepting = False

    def end_all(self, reason: str) -> None:
        for stream in list(self._streams):
            stream.end(reason)

    async def close(self, timeout: float = 5.0) -> None:
        """End open calls (reason "shutdown"); alone, also close its sockets with 1001 and wait for
        handlers (on the shared listener, the listener's `close()` does that)."""
        self._accepting = False
        self.end_all("shutdown")
        if self._standalone:
            await self._own_listener.close(timeout)

    # WebsocketRoute ----------------------------------------------------------------------------
    @property
    def path(self) -> str:
        return self.cfg.path

    @property
    def subprotocols(self) -> Sequence[str]:
        return ()

    @property
    def compression(self) -> bool:
        # Twilio sends small JSON frames; a compression context per socket would cost memory per call.
        return False

    @property
    def sync_messages(self) -> bool:
        return True  # 50 media messages per second per call: parsed in data_received, no task wake-up each

    def check_upgrade(self, connection: ServerConnection, request: Request) -> Response | None:
        return self._process_request(connection, request)

    async def handle(self, ws: ServerConnection) -> None:
        await self._handle_connection(ws)

    @property
    def open_streams(self) -> int:
        return len(self._streams)

    # handshake ---------------------------------------------------------------------------------
    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        path = request.path.split("?", 1)[0]
        if path != self.cfg.path:
            return connection.respond(http.HTTPStatus.NOT_FOUND, "Not Found\n")
        if not self._accepting:
            self.metrics.calls_refused.labels(INGEST, "shutting_down").inc()
            return connection.respond(http.HTTPStatus.SERVICE_UNAVAILABLE, "Not accepting calls\n")
        if len(self._streams) >= self.cfg.max_calls:
            self.metrics.calls_refused.labels(INGEST, "ingest_max_calls").inc()
            return connection.respond(http.HTTPStatus.SERVICE_UNAVAILABLE, "Too many streams\n")
        if self._token is not None:
            given = request.headers.get(SIGNATURE_HEADER)
            url = expected_url(self.cfg.public_base_url, request.headers.get("Host"), request.path)
            if not signature_valid(self._token, url, given):
                reason = "signature_missing" if not given else "signature_invalid"
                self.metrics.drops.labels(INGEST, reason).inc()
                log.warning("twilio upgrade refused: %s for %s", reason, url)
                return connection.respond(http.HTTPStatus.FORBIDDEN, "Forbidden\n")
        return None

    # connection --------------------------------------------------------------------------------
    async def _handle_connection(self, ws: ServerConnection) -> None:
        parser = TwilioStreamParser(
            gap_fill_max_s=self.cfg.gap_fill_max_ms / 1000,
            max_message_chars=self.max_frame_bytes,
        )
        stream = TwilioStream(ws, parser)
        self._streams.add(stream)
        try:
            reason = await self._run(stream)
            stream.end(reason)
        except Exception:
            # One broken stream never touches another: log with its call id, count, close it.
            log.exception("twilio stream failed", extra={"call_id": stream.call_id or "-"})
            self.metrics.drops.labels(INGEST, "handler_error").inc()
            stream.end("error")
            await ws.close(CloseCode.INTERNAL_ERROR, "internal error")
        finally:
            stream.end("disconnected")
            self._count_frames(stream)
            self._streams.discard(stream)
            if stream.call_sid:
                left = self._by_call_sid.get(stream.call_sid, 1) - 1
                if left > 0:
                    self._by_call_sid[stream.call_sid] = left
                else:
                    self._by_call_sid.pop(stream.call_sid, None)

    async def _run(self, stream: TwilioStream) -> str:
        """Serve until the stream stops or the socket closes; returns the call's end reason. Messages
        are parsed and applied synchronously as they arrive (`_on_message`); this task only waits
        for the outcome: a close asked for by a message, the start timeout, or the peer leaving."""
        ws = stream.ws
        loop = asyncio.get_running_loop()
        outcome: asyncio.Future[tuple[int, str, str]] = loop.create_future()  # (close code, reason, end reason)
        stream.outcome = outcome
        if not isinstance(ws, MediaConnection) or not ws.sync_messages:  # cannot happen: the listener makes them
            raise RuntimeError("the Twilio route needs the listener's MediaConnection with sync_messages")
        closed = asyncio.ensure_future(ws.wait_closed())
        try:
            ws.set_message_sink(lambda is_text, data: self._on_message(stream, is_text, data))
            waiting: set[asyncio.Future[Any]] = {outcome, closed}
            if stream.handle is None:
                await asyncio.wait(waiting, timeout=self.start_timeout_s, return_when=asyncio.FIRST_COMPLETED)
                if stream.handle is None and not outcome.done() and not closed.done():
                    self.metrics.drops.labels(INGEST, "no_start").inc()
                    outcome.set_result((CloseCode.POLICY_VIOLATION, "no start message", "no_start"))
            await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
        finally:
            ws.drop_messages()
            closed.cancel()
        self._count_frames(stream)  # before the close handshake: a peer that saw it sees every count
        if outcome.done():
            code, close_reason, reason = outcome.result()
            await ws.close(code, close_reason[:120])
            return reason
        sent = ws.protocol.close_sent
        if sent is not None and sent.code == CloseCode.MESSAGE_TOO_BIG:  # websockets enforced max_size
            self.metrics.drops.labels(INGEST, "oversize").inc()
            return "oversize"
        return "disconnected"

    def _count_frames(self, stream: TwilioStream) -> None:
        if stream.frames_uncounted:
            self._frames_in.inc(stream.frames_uncounted)
            stream.frames_uncounted = 0

    def _on_message(self, stream: TwilioStream, is_text: bool, data: bytes) -> None:
        """One message, in the connection's data_received: parse, act, and settle the outcome when the
        socket must close. Never raises: one broken stream is logged, counted and closed (1011)."""
        outcome = stream.outcome
        if outcome is None or outcome.done():
            return  # closing: the rest of what the peer sent is not read
        try:
            now = self.clock.monotonic()
            events = stream.parser.receive_text(data, now) if is_text else stream.parser.receive_binary(data)
            for event in events:
                close = self._apply(stream, event, now)
                if close is not None:
                    code, reason = close
                    outcome.set_result((code, reason, reason))
                    return
        except Exception:
            log.exception("twilio stream failed", extra={"call_id": stream.call_id or "-"})
            self.metrics.drops.labels(INGEST, "handler_error").inc()
            stream.end("error")
            outcome.set_result((CloseCode.INTERNAL_ERROR, "internal error", "error"))



__all__ = ["START_TIMEOUT_S", "TwilioIngest"]
