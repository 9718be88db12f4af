"""The WHIP endpoint (RFC 9725) on aiohttp: the thin I/O shell around `protocol` and `WhipSession`.

    OPTIONS {path}[/{id}]  → 204, CORS headers, Accept-Post: application/sdp (no token needed: browsers
                             send preflights without Authorization)
    POST    {path}?call_id=…&k=v  Content-Type: application/sdp, Authorization: Bearer <token>
                           → 201 + SDP answer (aiortc gathers every candidate first: no trickle),
                             Location: {path}/{id}, ETag
    DELETE  {path}/{id}    → 200, the call ends and its summary goes out (also 200 for a session that
                             ended by itself in the last 2 minutes: OBS closes first, then DELETEs)
    PATCH   either         → 405 + Allow (no trickle ICE / ICE restart)

Refusals (each counted in spoofwatch_drops_total{ingest="whip",reason}, capacity in
spoofwatch_calls_refused_total like the other ingests): 400 bad_sdp / bad_metadata, 401 unauthorized
(+ WWW-Authenticate: Bearer), 404 unknown_session, 406 unsupported_codec (audio), 413 too_large,
415 bad_content_type, 422 no_audio / too_many_tracks / unsupported_codec (video), 503 + Retry-After
(max_calls, shutting down, admission refused, negotiation timeout), 500 negotiation_failed (aiortc
raised on an offer our checks passed: logged). A refused request leaves no peer
connection, task or call behind. Every response carries the CORS headers, so a page on another origin
(the operator page on [http] listen) can publish and read the errors.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections import OrderedDict
from collections.abc import Mapping

from aiohttp import web

from daemon.calls.api import CallAdmission, CallHandle, CallRefused
from daemon.clock import Clock
from daemon.config import ConfigError, WhipIngestConfig, parse_hostport, read_secret
from daemon.ingest.whip.protocol import (
    ACCEPTED_AUDIO,
    MAX_SDP_BYTES,
    SDP_CONTENT_TYPE,
    Offer,
    WhipRefusal,
    call_identity,
    check_bearer,
    check_content_type,
    check_offer,
    parse_sdp,
)
from daemon.ingest.whip.session import INGEST, WhipSession
from daemon.ingest.whip.tap import check_aiortc
from daemon.model import CallInfo
from daemon.ops.metrics import Metrics

log = logging.getLogger("spoofwatch.ingest.whip")

#: the token `make run` exports when none is set: fine on loopback, never in production
DEV_TOKEN = "local-dev-whip-token"
#: offer → answer, candidates gathered (host candidates: milliseconds; a STUN server: its round trip)
NEGOTIATE_TIMEOUT_S = 10.0
RETRY_AFTER_S = "5"
#: a DELETE for a session that ended by itself (inactivity, closed connection) within this long, of the
#: last ENDED_KEPT sessions, is answered 200 rather than 404
ENDED_KEPT_S = 120.0
ENDED_KEPT = 1024
CORS_ALLOW_METHODS = "POST, DELETE, OPTIONS"
CORS_ALLOW_HEADERS = "Authorization, Content-Type, If-Match"
CORS_EXPOSE_HEADERS = "Location, ETag, Link, Accept-Post, Retry-After, WWW-Authenticate"


class WhipIngest:
    """Accepts WHIP publishers and feeds each received audio track to `admission` as a leg."""

    def __init__(self, cfg: WhipIngestConfig, admission: CallAdmission, metrics: Metrics, clock: Clock, *,
                 environ: Mapping[str, str] | None = None) -> None:
        self.cfg = cfg
        self.admission = admission
        self.metrics = metrics
        self.clock = clock
        self.environ = environ
        self.port = 0
        self._token = ""
        self._accepting = True
        self._runner: web.AppRunner | None = None
        self._sessions: dict[str, WhipSession] = {}
        self._sweeper: asyncio.Task[None] | None = None
        #: sessions that ended by themselves → (when, why): their publisher's late DELETE still gets 200
        self._ended: OrderedDict[str, tuple[float, str]] = OrderedDict()
        self._timeout_s = cfg.inactivity_timeout_ms / 1000

    # lifecycle ---------------------------------------------------------------------------------
    async def start(self) -> int:
        """Bind and listen; returns the bound port. Raises ConfigError without a token."""
        token = read_secret(self.cfg.token_env, self.environ)
        if not token:
            raise ConfigError(
                f"ingest.whip is enabled but {self.cfg.token_env} is not set: set it to the bearer token WHIP "
                "publishers must send (environment variable or systemd credential), or set [ingest.whip] "
                "enabled = false")
        self._token = token
        check_aiortc()
        app = web.Application(client_max_size=MAX_SDP_BYTES)
        app.on_response_prepare.append(self._cors)
        path = self.cfg.path
        app.router.add_route("OPTIONS", path, self._options)
        app.router.add_post(path, self._post)
        app.router.add_route("PATCH", path, self._patch)
        app.router.add_route("OPTIONS", path + "/{session_id}", self._options)
        app.router.add_delete(path + "/{session_id}", self._delete)
        app.router.add_route("PATCH", path + "/{session_id}", self._patch)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        host, port = parse_hostport(self.cfg.listen)
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        sockets = getattr(site._server, "sockets", None) or []
        self.port = sockets[0].getsockname()[1] if sockets else port
        self._sweeper = asyncio.get_running_loop().create_task(self._sweep(), name="whip-inactivity")
        log.info("whip ingest listening on http://%s:%d%s", host, self.port, path)
        if token == DEV_TOKEN:
            log.warning("WHIP accepts the public local development token %r (from `make run`): anyone who can "
                        "reach %s:%d can publish; set %s to a secret of your own", DEV_TOKEN, host, self.port,
                        self.cfg.token_env)
        return self.port

    def stop_accepting(self) -> None:
        """New offers get 503; running sessions go on until they end or `close()`."""
        self._accepting = False

    async def close(self, timeout: float = 10.0) -> None:
        """End every session (reason "shutdown": calls end, peer connections close), then the server."""
        self._accepting = False
        tasks = [s.begin_close("shutdown") for s in list(self._sessions.values())]
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=timeout)
            if pending:
                log.warning("whip: %d sessions still closing after %.1f s", len(pending), timeout)
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
            self._sweeper = None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # observability -----------------------------------------------------------------------------
    @property
    def open_sessions(self) -> int:
        """Sessions whose peer connection is not closed yet (negotiating, running or closing)."""
        return len(self._sessions)

    def stats(self) -> dict[str, int]:
        sessions = list(self._sessions.values())
        return {"sessions": len(sessions), "calls": sum(1 for s in sessions if s.started),
                "live_tracks": sum(s.live_tracks for s in sessions),
                "track_queue_peak": max((s.queue_peak for s in sessions), default=0)}

    # HTTP --------------------------------------------------------------------------------------
    async def _cors(self, request: web.Request, response: web.StreamResponse) -> None:
        h = response.headers
        h["Access-Control-Allow-Origin"] = self.cfg.cors_allow_origin
        if self.cfg.cors_allow_origin != "*":
            h["Vary"] = "Origin"
        h["Access-Control-Expose-Headers"] = CORS_EXPOSE_HEADERS
        if request.method == "OPTIONS":
            h["Access-Control-Allow-Methods"] = CORS_ALLOW_METHODS
            h["Access-Control-Allow-Headers"] = CORS_ALLOW_HEADERS
            h["Access-Control-Max-Age"] = "600"
            if request.headers.get("Access-Control-Request-Private-Network") == "true":
                h["Access-Control-Allow-Private-Network"] = "true"

    async def _options(self, request: web.Request) -> web.Response:
        headers = {"Allow": "OPTIONS, POST" if "session_id" not in request.match_info else "OPTIONS, DELETE"}
        if "session_id" not in request.match_info:
            headers["Accept-Post"] = SDP_CONTENT_TYPE
        return web.Response(status=204, headers=headers)

    async def _patch(self, request: web.Request) -> web.Response:
        allow = "OPTIONS, DELETE" if "session_id" in request.match_info else "OPTIONS, POST"
        return web.Response(status=405, text="trickle ICE and ICE restarts are not supported: the answer "
                            "carries every candidate\n", headers={"Allow": allow})

    def _refuse(self, refusal: WhipRefusal) -> web.Response:
        self.metrics.drops.labels(INGEST, refusal.reason).inc()
        # bad tokens are what scanners send: counted, logged only at debug so they cannot flood the log
        level = logging.DEBUG if refusal.status == 401 else logging.INFO
        log.log(level, "whip request refused: %s %s", refusal.status, refusal.detail)
        return web.Response(status=refusal.status, text=refusal.detail + "\n", headers=refusal.headers)

    def _unavailable(self, reason: str, detail: str) -> web.Response:
        self.metrics.calls_refused.labels(INGEST, reason).inc()
        log.info("whip offer refused: %s", detail)
        return web.Response(status=503, text=detail + "\n", headers={"Retry-After": RETRY_AFTER_S})

    async def _post(self, request: web.Request) -> web.Response:
        if not self._accepting:
            return self._unavailable("shutting_down", "not accepting calls (shutting down)")
        try:
            check_bearer(request.headers.get("Authorization"), self._token)
            check_content_type(request.headers.get("Content-Type"))
        except WhipRefusal as refusal:
            return self._refuse(refusal)
        if len(self._sessions) >= self.cfg.max_calls:
            return self._unavailable("ingest_max_calls", f"too many WHIP sessions ({self.cfg.max_calls})")
        try:
            try:
                body = await request.read()
            except web.HTTPRequestEntityTooLarge:
                raise WhipRefusal(413, "too_large", f"an SDP offer is at most {MAX_SDP_BYTES} bytes") from None
            try:
                text = body.decode("utf-8")
            except UnicodeDecodeError:
                raise WhipRefusal(400, "bad_sdp", "SDP offer is not UTF-8 text") from None
            offer = check_offer(text)
            asked_id, metadata = call_identity(request.query.items())
        except WhipRefusal as refusal:
            return self._refuse(refusal)
        return await self._open_session(request, text, offer, asked_id, metadata)

    async def _open_session(self, request: web.Request, text: str, offer: Offer, asked_id: str,
                            metadata: dict[str, str]) -> web.Response:
        from aiortc import RTCConfiguration, RTCIceServer, RTCPeerConnection

        session_id = secrets.token_urlsafe(16)
        ice = [RTCIceServer(f"stun:{self.cfg.stun_server}")] if self.cfg.stun_server else []
        pc = RTCPeerConnection(RTCConfiguration(iceServers=ice))
        session = WhipSession(session_id, pc, clock=self.clock, metrics=self.metrics, on_closed=self._closed)
        self._sessions[session_id] = session
        pc.on("connectionstatechange", session.on_connection_state)
        ok = False
        try:
            try:
                answer = await self._negotiate(session, text, offer)
            except WhipRefusal as refusal:
                return self._refuse(refusal)
            except TimeoutError:
                self.metrics.drops.labels(INGEST, "negotiation_timeout").inc()
                return web.Response(status=503, text="ICE candidate gathering took too long\n",
                                    headers={"Retry-After": RETRY_AFTER_S})
            except Exception:
                if session.closing:  # shutdown closed the peer connection under the negotiation
                    return web.Response(status=503, text="not accepting calls (shutting down)\n",
                                        headers={"Retry-After": RETRY_AFTER_S})
                log.exception("whip: could not answer an offer")
                self.metrics.drops.labels(INGEST, "negotiation_failed").inc()
                return web.Response(status=500, text="could not answer the offer (logged)\n")
            handle = self._admit(session_id, asked_id, metadata)
            if handle is None:  # the admission counted its refusal (calls_refused) itself
                return web.Response(status=503, text="the daemon refused the call (limit reached or stopping)\n",
                                    headers={"Retry-After": RETRY_AFTER_S})
            session.start(handle)
            ok = True
        finally:
            if not ok:
                await session.close("refused")  # the pc and everything it started go away
        log.info("whip session started", extra={"call_id": handle.info.call_id, "whip_session": session_id,
                                                "legs": [t.leg for t in session.tracks],
                                                "user_agent": request.headers.get("User-Agent", "")[:120]})
        location = f"{self.cfg.path}/{session_id}"
        return web.Response(status=201, text=answer, content_type=SDP_CONTENT_TYPE,
                            headers={"Location": location, "ETag": f'"{secrets.token_hex(8)}"'})

    async def _negotiate(self, session: WhipSession, text: str, offer: Offer) -> str:
        """Offer in, full answer out (every candidate gathered); audio tracks paired with their legs."""
        from aiortc import RTCSessionDescription
        from aiortc.exceptions import OperationError

        pc = session.pc
        async with asyncio.timeout(NEGOTIATE_TIMEOUT_S):
            try:
                await pc.setRemoteDescription(RTCSessionDescription(sdp=text, type="offer"))
            except OperationError as exc:
                raise WhipRefusal(406, "unsupported_codec", f"no codec in common ({exc}): audio must offer one of "
                                  f"{ACCEPTED_AUDIO}; video (declined anyway) VP8 or H264 constrained baseline "
                                  "(profile-level-id 42e01f, packetization-mode=1)") from None
            except (ValueError, AssertionError, KeyError, IndexError, AttributeError, TypeError) as exc:
                # aiortc's own SDP checks, and its stumbles on SDP it did not expect
                raise WhipRefusal(400, "bad_sdp", f"unusable SDP offer: {exc or type(exc).__name__}") from None
            legs_by_mid = {s.mid: name for s, name in offer.legs if s.mid}
            audio = [t for t in pc.getTransceivers() if t.kind == "audio" and t.receiver.track is not None]
            for t in pc.getTransceivers():
                if t.kind != "audio":
                    t.direction = "inactive"  # video is not analysed: ask the publisher not to send it
            await pc.setLocalDescription(await pc.createAnswer())
        answer: str = pc.localDescription.sdp
        formats = {s.mid: s.audio_format() for s in parse_sdp(answer) if s.kind == "audio"}
        used: set[str] = set()
        for n, t in enumerate(audio):
            leg = legs_by_mid.get(t.mid or "", "")
            if not leg or leg in used:
                leg = f"track-{n}"
            used.add(leg)
            fmt = formats.get(t.mid or "") or offer.legs[0][0].audio_format()
            assert fmt is not None  # check_offer refused offers without a supported audio codec
            session.add_track(t.receiver, leg, fmt)
        return answer

    def _admit(self, session_id: str, asked_id: str, metadata: dict[str, str]) -> CallHandle | None:
        call_id = asked_id or f"whip-{secrets.token_hex(8)}"
        meta = {**metadata, "whip_session": session_id}
        try:
            try:
                return self.admission.admit(CallInfo(call_id=call_id, ingest=INGEST, metadata=meta))
            except CallRefused as exc:
                if exc.reason != "duplicate_call_id":
                    raise
                # the same call published twice (a retry while the first still finishes): its own id
                return self.admission.admit(CallInfo(call_id=f"{call_id}:{session_id[:8]}", ingest=INGEST,
                                                     metadata=meta))
        except CallRefused as exc:
            log.info("whip call refused by admission: %s", exc.reason, extra={"call_id": call_id})
            return None

    async def _delete(self, request: web.Request) -> web.Response:
        try:
            check_bearer(request.headers.get("Authorization"), self._token)
        except WhipRefusal as refusal:
            return self._refuse(refusal)
        session_id = request.match_info["session_id"]
        session = self._sessions.get(session_id)
        if session is None:
            ended = self._recently_ended(session_id)
            if ended is not None:  # e.g. OBS closes its connection first, then DELETEs
                return web.Response(status=200, text=f"session had already ended ({ended})\n")
            return self._refuse(WhipRefusal(404, "unknown_session", "no such WHIP session"))
        await session.close("delete")
        return web.Response(status=200, text="session ended\n")

    # sessions ----------------------------------------------------------------------------------
    def _closed(self, session: WhipSession) -> None:
        self._sessions.pop(session.id, None)
        if session.started:
            self._ended[session.id] = (self.clock.monotonic(), session.end_reason)
            while len(self._ended) > ENDED_KEPT:
                self._ended.popitem(last=False)

    def _recently_ended(self, session_id: str) -> str | None:
        """The end reason of a session that ended by itself less than ENDED_KEPT_S ago."""
        entry = self._ended.get(session_id)
        if entry is None or self.clock.monotonic() - entry[0] > ENDED_KEPT_S:
            return None
        return entry[1]

    async def _sweep(self) -> None:
        """End sessions that received no frame for inactivity_timeout_ms (the publisher vanished)."""
        interval = min(1.0, max(0.05, self._timeout_s / 4))
        while True:
            await asyncio.sleep(interval)
            try:
                self._end_idle_sessions(self.clock.monotonic())
            except Exception:  # never let one bad session stop the sweeping of the others
                log.exception("whip inactivity sweep failed")
                self.metrics.drops.labels(INGEST, "sweep_error").inc()

    def _end_idle_sessions(self, now: float) -> None:
        for session in list(self._sessions.values()):
            if session.started and not session.closing and session.idle_for(now) > self._timeout_s:
                log.info("whip session inactive for %.1f s: ending it", session.idle_for(now),
                         extra={"call_id": session.call_id})
                session.begin_close("inactivity")


__all__ = ["DEV_TOKEN", "WhipIngest"]
