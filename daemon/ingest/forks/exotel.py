"""Exotel AgentStream (Stream / Voicebot applets), sans-I/O.

Sources: developer.exotel.com/docs/agentstream/websocket-protocol (events connected, start, media,
dtmf and mark (Voicebot only), stop; raw PCM every ~100 ms); developer.exotel.com/docs/agentstream/
stream-voicebot-applet ("Exotel sends the caller's voice data"; sample rate 8000/16000/24000 as a
`?sample-rate=` query parameter; up to 3 custom parameters in the URL query; auth by IP allow-list
or Basic auth `wss://<API_KEY>:<API_TOKEN>@host/path` → `Authorization: Basic …` on the upgrade);
developer.exotel.com/docs/exoml/verbs/stream (ExoML `<StartStream contentType=…>`, default
`audio/x-mulaw;rate=8000`).

Wire (JSON text, snake_case, numbers as decimal strings):
  {"event":"connected"}
  {"event":"start","sequence_number":"1","stream_sid":"MZ…","start":{"stream_sid":"MZ…","call_sid":"CA…",
   "account_sid":"AC…","from":"+91…","to":"+91…","custom_parameters":{…},
   "media_format":{"encoding":"audio/x-raw","sample_rate":"8000","bit_rate":"16"}}}
  {"event":"media","sequence_number":"3","stream_sid":"MZ…","media":{"chunk":"2","timestamp":"200",
   "payload":"<b64 s16le>"}}
  {"event":"dtmf","stream_sid":"MZ…","dtmf":{"digit":"5","duration":"100"}}
  {"event":"mark","stream_sid":"MZ…","mark":{"name":"x"}}    {"event":"stop",…}

Identity: `start.call_sid`. Metadata: stream_sid, account_sid, from, to, `custom_parameters.*` as
`param.<name>`. Leg: media frames carry no track; the one stream (the caller's voice) is named `inbound` (a
`media.track`, if present, is honoured). Audio: raw s16le at `sample_rate` (a string;
8000/16000/24000 accepted), `bit_rate` must be 16; `audio/x-mulaw` 8 kHz (ExoML streams) is
accepted too. Auth: the server checks the Basic credentials of the upgrade; optionally
`expected_param` requires a shared secret in `custom_parameters` (never in metadata).
"""

from __future__ import annotations

from typing import Any

from daemon.ingest.forks.common import (
    Bad,
    ForkParserBase,
    b64_payload,
    dtmf_digit,
    flatten_metadata,
    get_int,
    get_obj,
    get_str,
    load_json_object,
    token_matches,
)
from daemon.ingest.forks.events import (
    CLOSE_UNSUPPORTED_DATA,
    Audio,
    CallStart,
    Dtmf,
    ForkEvent,
    LegSpec,
    Mark,
)
from daemon.model import AudioFormat, Codec

INGEST = "exotel"
_TRACKS = {"inbound": "inbound", "inbound_track": "inbound", "outbound": "outbound", "outbound_track": "outbound"}
SUPPORTED_RATES = (8000, 16000, 24000)


class ExotelStreamParser(ForkParserBase):
    def __init__(self, *, expected_param: tuple[str, str] | None = None, **limits: int) -> None:
        super().__init__(**limits)
        self.expected_param = expected_param
        self.stream_sid = ""
        self.fmt: AudioFormat | None = None

    def receive_binary(self, data: bytes) -> list[ForkEvent]:
        if self.done:
            return []
        return self._problem("binary_frame", f"{len(data)} bytes")

    def receive_text(self, text: str) -> list[ForkEvent]:
        if self.done:
            return []
        too_big = self._oversize_text(text)
        if too_big is not None:
            return too_big
        try:
            msg = load_json_object(text)
            event = msg.get("event")
            if not isinstance(event, str):
                raise Bad("missing_event", "no string 'event'")
            if event == "media":
                return self._media(msg)
            if event == "start":
                return self._start(msg)
            if event == "connected":
                return []
            if event == "dtmf":
                self._check(msg, "dtmf")
                return [Dtmf("inbound", dtmf_digit(get_obj(msg, "dtmf").get("digit")))]
            if event == "mark":
                self._check(msg, "mark")
                return [Mark(get_str(get_obj(msg, "mark"), "name"))]
            if event == "stop":
                self._check(msg, "stop")
                return self._end("stop")
            raise Bad("unknown_event", event[:40])
        except Bad as bad:
            return self._problem(bad.reason, bad.detail)

    def connection_closed(self) -> list[ForkEvent]:
        if self.done:
            return []
        return self._end("socket_closed")

    def _start(self, msg: dict[str, Any]) -> list[ForkEvent]:
        if self.call is not None:
            raise Bad("duplicate_start", self.stream_sid)
        start = msg.get("start")
        if not isinstance(start, dict):
            return self._fatal("bad_start", "no 'start' object")
        call_id = start.get("call_sid")
        stream_sid = start.get("stream_sid", msg.get("stream_sid", ""))
        if not isinstance(call_id, str) or not call_id or not isinstance(stream_sid, str):
            return self._fatal("bad_start", "start needs call_sid (and a string stream_sid)")
        params = start.get("custom_parameters", {})
        if not isinstance(params, dict):
            return self._fatal("bad_start", "custom_parameters is not an object")
        skip: frozenset[str] = frozenset()
        if self.expected_param is not None:
            key, secret = self.expected_param
            if not token_matches(secret, params.get(key)):
                return self._unauthorized(f"custom_parameters.{key} missing or wrong")
            skip = frozenset({key})
        raw_fmt = start.get("media_format", {})
        fmt = _media_format(raw_fmt) if isinstance(raw_fmt, dict) else None
        if fmt is None:
            return self._fatal("unsupported_media_format", f"media_format {raw_fmt!r}"[:160], CLOSE_UNSUPPORTED_DATA)
        meta: dict[str, str] = {"stream_sid": stream_sid}
        for key in ("account_sid", "from", "to"):
            value = start.get(key)
            if isinstance(value, str):
                meta[key] = value
        meta.update(flatten_metadata(params, "param.", skip=skip))
        self.stream_sid, self.fmt = stream_sid, fmt
        self.call = CallStart(call_id, meta, (LegSpec("inbound", fmt),))
        return [self.call]

    def _check(self, msg: dict[str, Any], kind: str) -> None:
        if self.call is None:
            raise Bad(f"{kind}_before_start", kind)
        sid = msg.get("stream_sid")
        if sid is not None and sid != self.stream_sid:
            raise Bad("wrong_stream_sid", str(sid)[:40])

    def _media(self, msg: dict[str, Any]) -> list[ForkEvent]:
        self._check(msg, "media")
        assert self.fmt is not None
        media = get_obj(msg, "media")
        raw_track = media.get("track", "inbound")
        track = _TRACKS.get(raw_track) if isinstance(raw_track, str) else None
        if track is None:
            raise Bad("unknown_track", str(raw_track)[:40])
        payload = b64_payload(media.get("payload"))
        if self.fmt.codec is Codec.L16_LE and len(payload) % 2:
            raise Bad("odd_length", f"{len(payload)} bytes of s16le")
        return [Audio(track, payload, self.fmt)]


def _media_format(raw: dict[str, Any]) -> AudioFormat | None:
    try:
        rate = get_int(raw, "sample_rate", default=8000)
        bits = get_int(raw, "bit_rate", default=16)
    except Bad:
        return None
    encoding = raw.get("encoding", "audio/x-raw")
    if isinstance(encoding, str) and encoding.lower().startswith("audio/x-mulaw") and rate == 8000:
        return AudioFormat(Codec.PCMU, 8000)  # ExoML <StartStream contentType="audio/x-mulaw;rate=8000">
    if encoding != "audio/x-raw" or bits != 16 or rate not in SUPPORTED_RATES:
        return None
    return AudioFormat(Codec.L16_LE, rate)
