"""Telnyx Media Streaming (Call Control `stream_url`, TeXML `<Stream>`), sans-I/O.

Sources: developers.telnyx.com/api-reference/websockets/stream-call-media-over-websocket (AsyncAPI
spec: connected/start/media/stop/dtmf/mark/error frames; "Media frame order is not guaranteed. Use
media.chunk, media.timestamp, and sequence_number to order frames"; the optional streaming auth token
arrives as the `x-telnyx-streaming-auth-token` header and in the connected frame);
developers.telnyx.com/docs/voice/programmable-voice/texml-verbs/stream (audio = base64 RTP payloads
without headers, `codec` PCMU/PCMA/G722/OPUS/AMR-WB/L16); repo pipecat-ai/pipecat
src/pipecat/serializers/telnyx.py (L16 is network byte order, RFC 2586).

Wire (JSON text, snake_case; numbers often as decimal strings):
  {"event":"connected","version":"1.0.0"}
  {"event":"start","sequence_number":"1","stream_id":"…","start":{"call_control_id":"v3:…",
   "call_session_id":"…","from":"+1…","to":"+1…","client_state":"<b64>","custom_parameters":{…},
   "media_format":{"encoding":"PCMU","sample_rate":8000,"channels":1}}}
  {"event":"media","sequence_number":"4","stream_id":"…","media":{"track":"inbound","chunk":"2",
   "timestamp":"5","payload":"<b64 RTP payload>"}}
  {"event":"dtmf","stream_id":"…","dtmf":{"digit":"1"}}   {"event":"mark","mark":{"name":"x"}}
  {"event":"error","payload":{"code":…,"title":…,"detail":…}}   {"event":"stop",…}

Identity: `start.call_control_id` (call id); `stream_id`, `call_session_id`, from/to, `client_state`,
`custom_parameters.*` (as `param.<name>`) go to metadata. Legs: `inbound` and `outbound` tracks
(which arrive depends on `stream_track`). Each track has its own reorder buffer keyed by
`media.chunk` (fallback `sequence_number`): frames lost beyond the window become a counted
`reorder_lost` and a `Gap` (sized from the observed frame duration, capped at `max_gap_s`).
Auth: the server checks the `x-telnyx-streaming-auth-token` upgrade header with `token_matches`;
`expected_token` makes the parser also require it in the connected frame (Telnyx sends both);
optionally `expected_param` requires `custom_parameters[<key>]` to equal a shared secret (the key
never reaches the metadata).

Problems (reasons): binary_frame, invalid_json, not_object, missing_event, unknown_event, missing_field,
bad_field, bad_base64, empty_payload, unknown_track, media_before_start, duplicate_start,
wrong_stream_id, bad_dtmf, peer_error, reorder_late, reorder_duplicate; fatal: bad_start,
unsupported_media_format, unauthorized, oversize, too_many_errors.
"""

from __future__ import annotations

from typing import Any

from daemon.ingest.forks.common import (
    Bad,
    b64_payload,
    flatten_metadata,
    get_int,
    get_obj,
    media_track,
    token_matches,
)
from daemon.ingest.forks.events import (
    Audio,
    CallStart,
    ForkEvent,
    Gap,
    LegSpec,
    Problem,
)
from daemon.ingest.forks.jsonstream import StreamEventParser
from daemon.ingest.forks.reorder import ReorderBuffer
from daemon.model import AudioFormat, Codec

INGEST = "telnyx"
AUTH_HEADER = "x-telnyx-streaming-auth-token"
_DEFAULT_FRAME_S = 0.02


def media_format(raw: dict[str, Any]) -> AudioFormat | None:
    """`media_format` → AudioFormat of the RTP payloads, None when unsupported (AMR-WB, odd rates)."""
    encoding = raw.get("encoding")
    if not isinstance(encoding, str):
        return None
    try:
        rate = get_int(raw, "sample_rate", default=8000)
        channels = get_int(raw, "channels", default=1)
    except Bad:
        return None
    enc = encoding.upper()
    if enc in ("PCMU", "PCMA") and rate == 8000 and channels == 1:
        return AudioFormat(Codec.PCMU if enc == "PCMU" else Codec.PCMA, 8000)
    if enc == "G722" and channels == 1:
        return AudioFormat(Codec.G722, 16000)  # RTP clock 8000, audio 16 kHz (RFC 3551)
    if enc == "OPUS" and channels in (1, 2):
        return AudioFormat(Codec.OPUS, 48000, channels)
    if enc == "L16" and rate in (8000, 16000, 24000, 48000) and channels == 1:
        return AudioFormat(Codec.L16_BE, rate)  # RTP payload: network byte order
    return None


class TelnyxStreamParser(StreamEventParser):
    """One Telnyx media-streaming websocket. Call `connection_closed()` when the socket closes."""

    def __init__(self, *, reorder_window: int = 8, max_gap_s: float = 2.0, expected_token: str | None = None,
                 expected_param: tuple[str, str] | None = None, **limits: int) -> None:
        super().__init__(**limits)
        self.expected_token = expected_token
        self._token_ok = expected_token is None
        self.reorder_window = reorder_window
        self.max_gap_s = max_gap_s
        self.expected_param = expected_param
        self._reorder: dict[str, ReorderBuffer[tuple[int, bytes]]] = {}
        self._frame_s: dict[str, float] = {}
        self._prev: dict[str, tuple[int, int]] = {}  # track → (chunk, timestamp ms) last released
        self.handlers.update(connected=self._connected, error=self._error)

    def connection_closed(self) -> list[ForkEvent]:
        if self.done:
            return []
        return self._flush_all() + self._end("socket_closed")

    # messages ----------------------------------------------------------------------------------
    def _connected(self, msg: dict[str, Any]) -> list[ForkEvent]:
        if self.expected_token is not None:
            if not token_matches(self.expected_token, msg.get(AUTH_HEADER)):
                return self._unauthorized(f"connected frame without the right {AUTH_HEADER}")
            self._token_ok = True
        return []

    def _error(self, msg: dict[str, Any]) -> list[ForkEvent]:
        return self._problem("peer_error", str(msg.get("payload"))[:160])

    def _stop(self, msg: dict[str, Any]) -> list[ForkEvent]:
        self._check(msg, "stop")
        return self._flush_all() + self._end("stop")

    def _start(self, msg: dict[str, Any]) -> list[ForkEvent]:
        if self.call is not None:
            raise Bad("duplicate_start", self.stream_id)
        if not self._token_ok:
            return self._unauthorized(f"start before a connected frame with {AUTH_HEADER}")
        start, call_id, stream_id = self._start_object(msg, "call_control_id", stream_in_start_first=False)
        params, skip = self._custom_parameters(start, self.expected_param)
        raw_fmt = start.get("media_format", {"encoding": "PCMU"})
        fmt = media_format(raw_fmt) if isinstance(raw_fmt, dict) else None
        if fmt is None:
            raise self._unsupported("media_format", raw_fmt)
        meta: dict[str, str] = {"stream_id": stream_id}
        for key in ("call_session_id", "from", "to", "client_state", "user_id"):
            value = start.get(key)
            if isinstance(value, str):
                meta[key] = value
        tags = start.get("tags")
        if isinstance(tags, list):
            meta["tags"] = ",".join(str(t) for t in tags)[:1024]
        meta.update(flatten_metadata(params, "param.", skip=skip))
        self.stream_id = stream_id
        self.fmt = fmt
        self.call = CallStart(call_id, meta, (LegSpec("inbound", fmt), LegSpec("outbound", fmt)))
        return [self.call]

    def _media(self, msg: dict[str, Any]) -> list[ForkEvent]:
        self._check(msg, "media")
        media = get_obj(msg, "media")
        track = media_track(media)
        if "chunk" in media:
            seq = get_int(media, "chunk")
        else:
            seq = get_int(msg, "sequence_number")
        ts = get_int(media, "timestamp", default=-1)
        payload = b64_payload(media.get("payload"))
        buf = self._reorder.get(track)
        if buf is None:
            buf = self._reorder[track] = ReorderBuffer(self.reorder_window)
        late, dups = buf.stats.late, buf.stats.duplicates
        released = buf.push(seq, (ts, payload))
        if buf.stats.late != late:
            return self._problem("reorder_late", f"{track} chunk {seq}")
        if buf.stats.duplicates != dups:
            return self._problem("reorder_duplicate", f"{track} chunk {seq}")
        return self._emit(track, released)

    def _emit(self, track: str, released: list[Any]) -> list[ForkEvent]:
        assert self.fmt is not None
        out: list[ForkEvent] = []
        for rel in released:
            ts, payload = rel.item
            if rel.skipped_before:
                lost_s = rel.skipped_before * self._frame_s.get(track, _DEFAULT_FRAME_S)
                out.append(Problem("reorder_lost", False, f"{track}: {rel.skipped_before} frames, {lost_s:.3f} s"))
                self.drops.add("reorder_lost")
                # fill at most max_gap_s: a renumbering or long outage must not push minutes of silence
                out.append(Gap(track, min(lost_s, self.max_gap_s)))
            self._learn_frame_duration(track, rel.seq, ts)
            out.append(Audio(track, payload, self.fmt))
        return out

    def _learn_frame_duration(self, track: str, seq: int, ts: int) -> None:
        """Frame duration from consecutive (chunk, timestamp ms) pairs, to size Gaps; 20 ms until known."""
        if ts < 0:
            return
        prev = self._prev.get(track)
        if prev is not None and seq == prev[0] + 1 and 0 < ts - prev[1] <= 1000:
            self._frame_s[track] = (ts - prev[1]) / 1000
        self._prev[track] = (seq, ts)

    def _flush_all(self) -> list[ForkEvent]:
        out: list[ForkEvent] = []
        for track, buf in self._reorder.items():
            out += self._emit(track, buf.flush())
        return out
