"""Plivo `<Stream>` (XML audio streaming), sans-I/O.

Sources: docs.plivo.com/docs/voice/xml/audiostream (`contentType` audio/x-l16;rate=8000 (default) |
audio/x-l16;rate=16000 | audio/x-mulaw;rate=8000, `audioTrack` inbound|outbound|both,
`extraHeaders` "test1=12,test2=123", ≤ 512 B, alphanumerics); plivo.com/docs/voice-agents/
audio-streaming/concepts/audio-streaming-reference (messages start, media, dtmf, playedStream,
clearedAudio; `extra_headers` "userId=12345;sessionId=abc-xyz"; `media.chunk` a number; "inbound" =
caller audio; stream stop/timeout/failure go to the HTTP status callback, not the socket); PyPI
`plivo-stream-sdk` 0.1.1; repo pipecat-ai/pipecat src/pipecat/serializers/plivo.py.

Wire (JSON text, camelCase, integer `sequenceNumber`):
  {"event":"start","sequenceNumber":1,"start":{"callId":"…","streamId":"…","accountId":"…",
   "tracks":["inbound"],"mediaFormat":{"encoding":"audio/x-mulaw","sampleRate":8000}},
   "extra_headers":"userId=12345;sessionId=abc-xyz"}
  {"event":"media","sequenceNumber":1,"streamId":"…","media":{"track":"inbound","timestamp":"…",
   "chunk":41,"payload":"<b64>"},"extra_headers":"…"}
  {"event":"dtmf","streamId":"…","dtmf":{"track":"inbound","digit":"5","timestamp":"…"}}
There is **no stop event**: the socket closing ends the call (`connection_closed()`); a `stop`, if a
future version sends one, is honoured. `playedStream`/`clearedAudio` (answers to playback we never
send) are ignored.

Identity: `start.callId`. Metadata: streamId, accountId and `extra_headers` (a `k=v;k=v` string;
JSON strings and objects are accepted too) as `header.<name>`. Legs: `inbound`, `outbound` (per `start.tracks`).
Audio: L16 over websocket is little-endian (every integration found; Plivo's docs are silent), μ-law
8 kHz. Auth: Plivo documents no signature on the websocket upgrade: put a shared secret in
`extraHeaders` and set `expected_header=(name, secret)` (constant-time check, never in metadata),
or in the URL path the server matches.
"""

from __future__ import annotations

import json
from typing import Any

from daemon.ingest.forks.common import (
    TRACKS,
    Bad,
    dtmf_digit,
    flatten_metadata,
    get_int,
    get_obj,
    secret_skip,
)
from daemon.ingest.forks.events import CallStart, Dtmf, ForkEvent, LegSpec
from daemon.ingest.forks.jsonstream import StreamEventParser
from daemon.model import AudioFormat, Codec

INGEST = "plivo"


def content_format(encoding: str, rate: int | None) -> AudioFormat | None:
    """'audio/x-l16' + 16000, or 'audio/x-l16;rate=16000' → AudioFormat; None when unsupported."""
    base, _, params = encoding.strip().lower().partition(";")
    if params.strip().startswith("rate="):
        tail = params.strip()[5:]
        if not tail.isdigit():
            return None
        rate = int(tail)
    if base == "audio/x-mulaw" and rate in (None, 8000):
        return AudioFormat(Codec.PCMU, 8000)
    if base == "audio/x-l16" and (rate or 8000) in (8000, 16000):
        return AudioFormat(Codec.L16_LE, rate or 8000)
    return None


class PlivoStreamParser(StreamEventParser):
    stream_key = "streamId"
    ignored = frozenset({"connected", "playedStream", "clearedAudio", "mark"})

    def __init__(self, *, expected_header: tuple[str, str] | None = None, **limits: int) -> None:
        super().__init__(**limits)
        self.expected_header = expected_header
        del self.handlers["mark"]

    def _dtmf(self, msg: dict[str, Any]) -> list[ForkEvent]:
        self._check(msg, "dtmf")
        dtmf = get_obj(msg, "dtmf")
        track = TRACKS.get(str(dtmf.get("track", "inbound")), "inbound")
        return [Dtmf(track, dtmf_digit(dtmf.get("digit")))]

    def _start(self, msg: dict[str, Any]) -> list[ForkEvent]:
        start, call_id, stream_id = self._start_object(msg, "callId")
        headers, headers_ok = _extra_headers(msg.get("extra_headers", start.get("extra_headers")))
        skip = secret_skip(self.expected_header, headers.get, "extra_headers.{}")
        raw_fmt = start.get("mediaFormat", {})
        fmt = None
        if isinstance(raw_fmt, dict) and isinstance(raw_fmt.get("encoding", "audio/x-l16"), str):
            try:
                rate = get_int(raw_fmt, "sampleRate", default=0) or None
            except Bad:
                rate = -1
            fmt = content_format(raw_fmt.get("encoding", "audio/x-l16"), rate)
        if fmt is None:
            raise self._unsupported("mediaFormat", raw_fmt)
        tracks_raw = start.get("tracks", ["inbound"])
        tracks = [TRACKS[t] for t in tracks_raw if isinstance(t, str) and t in TRACKS] \
            if isinstance(tracks_raw, list) else []
        legs = tuple(LegSpec(t, fmt) for t in dict.fromkeys(tracks or ["inbound"]))
        meta: dict[str, str] = {"stream_id": stream_id}
        account = start.get("accountId")
        if isinstance(account, str):
            meta["account_id"] = account
        meta.update(flatten_metadata(headers, "header.", skip=skip))
        self.stream_id, self.fmt = stream_id, fmt
        self.call = CallStart(call_id, meta, legs)
        out: list[ForkEvent] = [self.call]
        if not headers_ok:
            out += self._problem("bad_extra_headers", "extra_headers is neither k=v pairs nor a JSON object")
        return out


def _extra_headers(raw: object) -> tuple[dict[str, Any], bool]:
    """`extra_headers` → (dict, ok). Plivo's reference shows `"userId=12345;sessionId=abc-xyz"` (the
    `extraHeaders` attribute is documented as `test1=12,test2=123`); some integrations send a JSON
    object string. Both separators, JSON strings and objects are accepted; anything else → ({}, False)."""
    if raw is None or raw == "":
        return {}, True
    if isinstance(raw, dict):
        return raw, True
    if not isinstance(raw, str):
        return {}, False
    if raw.lstrip().startswith("{"):
        try:
            value = json.loads(raw)
        except (ValueError, RecursionError):
            return {}, False
        return (value, True) if isinstance(value, dict) else ({}, False)
    out: dict[str, Any] = {}
    for pair in raw.replace(",", ";").split(";"):
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            return out, False
        out[key.strip()] = value.strip()
    return out, True
