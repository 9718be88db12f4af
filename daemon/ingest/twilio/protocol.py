"""Twilio Media Streams, sans-I/O: websocket messages in, typed events out.

One `TwilioStreamParser` per websocket. Feed it every text message with `receive_text(text, now)`
(`now` = monotonic arrival time, used only for lag detection) and every binary message with
`receive_binary(data)`. It never raises on peer input and never does I/O; it returns events.
SignalWire's `<Stream>` speaks the same JSON and goes through the same parser.

Speed: after `start`, a message is first decoded by a typed msgspec decoder (mediastruct.py, ~0.5 µs
with the base64); anything that is not a well-formed `media` message falls back to `json.loads` and the
checks below, so both paths return the same events (tests/unit/test_twilio_protocol.py compares them).

Wire format (twilio.com/docs/voice/media-streams/websocket-messages): JSON text frames
`connected` → `start` → `media`* (with `dtmf`, `mark`) → `stop`; `chunk`, `timestamp` (ms since
the stream started) and `sequenceNumber` arrive as decimal strings; `media.track` is `inbound` or
`outbound` (`dtmf.track` says `inbound_track`: both spellings are accepted).

Timing, per track (`daemon.ingest.twilio.timing`): a `Gap` comes before a `Media` whose timestamp
jumps (Twilio lost audio: fill that much silence, within bounds), a `Lag` before one that arrived late
with continuous timestamps (count it, fill nothing); a timestamp going backwards is counted
(`timestamp_backwards`) but the audio is kept: the timestamps are advisory, the audio is not.

Problems. Every `Problem.reason` is a short label for `drops{ingest="twilio",reason=...}`.
Non-fatal ones drop the offending message (or, where noted, only count it) and the stream goes on;
one bad frame must not cost a call its analysis:
  binary_frame, invalid_json, not_object, missing_event, unknown_event (forward compatible),
  media_before_start, duplicate_start, wrong_stream_sid, missing_field, bad_field, bad_base64,
  empty_payload, unknown_track, bad_dtmf, after_stop, timestamp_backwards (counted, audio kept).
Fatal ones mean the stream cannot be analysed correctly; the server closes the socket with the
reason and ends the call; the parser returns nothing more afterwards:
  bad_start (no callSid/streamSid: no identity), unsupported_media_format (anything other than
  audio/x-mulaw 8000 Hz mono: decoding it as μ-law would feed the detector noise), oversize
  (message longer than `max_message_chars`), too_many_errors (more than `max_problems_before_start`
  problems before a valid `start`: not a Twilio peer).
"""

from __future__ import annotations

import binascii
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

import msgspec

from daemon.ingest.twilio.mediastruct import decode_media
from daemon.ingest.twilio.timing import MULAW_RATE, Backwards, MediaTiming
from daemon.ingest.twilio.timing import Gap as Gap  # the timing events are parser events too
from daemon.ingest.twilio.timing import Lag as Lag
from daemon.ingest.twilio.timing import Track as Track

#: The one media format Twilio (and SignalWire by default) sends.
MULAW_ENCODING = "audio/x-mulaw"
DTMF_DIGITS = frozenset("0123456789*#ABCD")

_TRACK_NAMES: dict[str, Track] = {
    "inbound": "inbound",
    "inbound_track": "inbound",
    "outbound": "outbound",
    "outbound_track": "outbound",
}


@dataclass(frozen=True, slots=True)
class MediaFormat:
    encoding: str
    sample_rate: int
    channels: int


@dataclass(frozen=True, slots=True)
class Connected:
    protocol: str
    version: str


@dataclass(frozen=True, slots=True)
class Started:
    call_sid: str
    stream_sid: str
    account_sid: str
    tracks: tuple[str, ...]
    custom_parameters: dict[str, str]
    media_format: MediaFormat


class Media(NamedTuple):
    """One frame of audio. A named tuple, not a frozen dataclass like the other events: it is made 50
    times per track and second, and a tuple is made in a third of the time (and is immutable too)."""

    track: Track
    chunk: int
    timestamp_ms: int
    payload: bytes  # μ-law 8 kHz bytes (160 per 20 ms frame)


@dataclass(frozen=True, slots=True)
class Dtmf:
    track: Track
    digit: str


@dataclass(frozen=True, slots=True)
class Mark:
    name: str


@dataclass(frozen=True, slots=True)
class Stopped:
    pass


@dataclass(frozen=True, slots=True)
class Problem:
    reason: str  # metric label
    fatal: bool
    detail: str = ""  # for logs only


TwilioEvent = Connected | Started | Media | Gap | Lag | Dtmf | Mark | Stopped | Problem


class _Bad(Exception):
    """Internal: a message field is missing or malformed."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


class TwilioStreamParser:
    """Parses one Twilio Media Streams websocket. Not thread-safe; one per connection."""

    def __init__(
        self,
        *,
        gap_fill_max_s: float = 2.0,
        lag_threshold_s: float = 0.25,
        max_message_chars: int = 65536,
        max_problems_before_start: int = 16,
    ) -> None:
        self.gap_fill_max_s = gap_fill_max_s
        self.lag_threshold_s = lag_threshold_s
        self.max_message_chars = max_message_chars
        self.max_problems_before_start = max_problems_before_start
        self.started: Started | None = None
        self.stopped = False
        self.failed = False  # a fatal problem was returned; nothing more is parsed
        self._timing = MediaTiming(gap_fill_max_s=gap_fill_max_s, lag_threshold_s=lag_threshold_s)
        self._problems_before_start = 0

    # public ------------------------------------------------------------------------------------
    def receive_binary(self, data: bytes) -> list[TwilioEvent]:
        """Twilio only sends text; a binary frame is dropped (Twilio warns 31950 the other way round)."""
        if self.failed:
            return []
        return self._problem("binary_frame", f"{len(data)} bytes")

    def receive_text(self, text: str | bytes, now: float) -> list[TwilioEvent]:
        """One text message, as str or as its UTF-8 bytes (invalid UTF-8 is `invalid_json`)."""
        if self.failed:
            return []
        if len(text) > self.max_message_chars:
            return self._fatal("oversize", f"{len(text)} chars > {self.max_message_chars}")
        if self.started is not None and not self.stopped:
            fast = self._fast_media(text, now)
            if fast is not None:
                return fast
        return self._receive_general(text, now)

    def _fast_media(self, text: str | bytes, now: float) -> list[TwilioEvent] | None:
        """The hot path: a well-formed `media` message decoded by msgspec into a typed struct. None for
        anything else (another event, a missing or odd field, bad base64...): the general path then
        parses it again with `json.loads` and gives the exact drop reason, so both paths agree."""
        try:
            msg = decode_media(text)
        except (msgspec.DecodeError, UnicodeDecodeError):  # ValidationError included; bad UTF-8 in bytes
            return None
        media, sid = msg.media, msg.streamSid
        started = self.started
        track = _TRACK_NAMES.get(media.track)
        chunk, ts, payload = media.chunk, media.timestamp, media.payload
        if (started is None or (sid is not None and sid != started.stream_sid) or track is None or not payload
                or not (chunk.isdigit() and chunk.isascii() and len(chunk) <= 15)
                or not (ts.isdigit() and ts.isascii() and len(ts) <= 15)):
            return None
        ts_ms = int(ts)
        media_event = Media(track, int(chunk), ts_ms, payload)
        timing = self._timing.observe(track, ts_ms, len(payload), now)
        if timing is None:
            return [media_event]
        if isinstance(timing, Backwards):
            return [Problem("timestamp_backwards", False, f"{track} {timing.last_ts_ms} → {ts_ms}"), media_event]
        return [timing, media_event]

    def _receive_general(self, text: str | bytes, now: float) -> list[TwilioEvent]:
        try:
            msg = json.loads(text)
        except ValueError as exc:  # JSONDecodeError, and bad unicode escapes
            return self._problem("invalid_json", str(exc)[:80])
        except RecursionError:  # deeply nested arrays: still just bad input
            return self._problem("invalid_json", "nested too deep")
        if not isinstance(msg, dict):
            return self._problem("not_object", type(msg).__name__)
        event = msg.get("event")
        if not isinstance(event, str):
            return self._problem("missing_event", "no string 'event' field")
        if self.stopped:
            return self._problem("after_stop", event)
        try:
            if event == "media":
                return self._media(msg, now)
            if event == "start":
                return self._start(msg)
            if event == "connected":
                return [Connected(_opt_str(msg, "protocol"), _opt_str(msg, "version"))]
            if event == "dtmf":
                return self._dtmf(msg)
            if event == "mark":
                return self._mark(msg)
            if event == "stop":
                return self._stop(msg)
        except _Bad as bad:
            return self._problem(bad.reason, bad.detail)
        return self._problem("unknown_event", event[:40])

    # messages ----------------------------------------------------------------------------------
    def _start(self, msg: dict[str, Any]) -> list[TwilioEvent]:
        if self.started is not None:
            return self._problem("duplicate_start", self.started.stream_sid)
        start = msg.get("start")
        if not isinstance(start, dict):
            return self._fatal("bad_start", "no 'start' object")
        call_sid = start.get("callSid")
        stream_sid = start.get("streamSid", msg.get("streamSid"))
        if not isinstance(call_sid, str) or not call_sid or not isinstance(stream_sid, str) or not stream_sid:
            return self._fatal("bad_start", "start needs callSid and streamSid")
        account_sid = start.get("accountSid", "")
        tracks_raw = start.get("tracks", [])
        params_raw = start.get("customParameters", {})
        if not isinstance(account_sid, str) or not isinstance(tracks_raw, list) or not isinstance(params_raw, dict):
            return self._fatal("bad_start", "accountSid, tracks or customParameters malformed")
        tracks = tuple(str(t) for t in tracks_raw)
        # Values are strings on the wire; coerce anything else rather than lose the call over metadata.
        params = {str(k): v if isinstance(v, str) else json.dumps(v) for k, v in params_raw.items()}
        fmt = _media_format(start.get("mediaFormat"))
        if fmt is None:
            return self._fatal("unsupported_media_format", f"mediaFormat {start.get('mediaFormat')!r} is malformed")
        if (fmt.encoding.lower(), fmt.sample_rate, fmt.channels) != (MULAW_ENCODING, MULAW_RATE, 1):
            return self._fatal(
                "unsupported_media_format",
                f"mediaFormat {fmt.encoding} {fmt.sample_rate} Hz {fmt.channels} ch; only {MULAW_ENCODING} "
                f"{MULAW_RATE} Hz mono is accepted",
            )
        self.started = Started(call_sid, stream_sid, account_sid, tracks, params, fmt)
        return [self.started]

    def _check_stream(self, msg: Mapping[str, Any], kind: str) -> Started:
        if self.started is None:
            raise _Bad(f"{kind}_before_start", kind)
        sid = msg.get("streamSid")
        # A message without streamSid is accepted (compatible dialects); a different one is not ours.
        if sid is not None and sid != self.started.stream_sid:
            raise _Bad("wrong_stream_sid", str(sid)[:40])
        return self.started

    def _media(self, msg: dict[str, Any], now: float) -> list[TwilioEvent]:
        # The hot path (50 messages per track per second): plain field checks inline, the common
        # case first; anything unusual falls back to the helpers for the exact reason.
        started = self.started
        if started is None:
            raise _Bad("media_before_start", "media")
        sid = msg.get("streamSid")
        if sid is not None and sid != started.stream_sid:
            raise _Bad("wrong_stream_sid", str(sid)[:40])
        media = msg.get("media")
        if not isinstance(media, dict):
            raise _Bad("missing_field", "no 'media' object")
        raw_track = media.get("track", "")
        track = _TRACK_NAMES.get(raw_track) if type(raw_track) is str else None  # a list is not even hashable
        if track is None:
            raise _Bad("unknown_track", str(media.get("track"))[:40])
        chunk = media.get("chunk")
        chunk = int(chunk) if type(chunk) is str and chunk.isdigit() and chunk.isascii() and len(chunk) <= 15 \
            else _int_field(media, "chunk")
        ts = media.get("timestamp")
        ts = int(ts) if type(ts) is str and ts.isdigit() and ts.isascii() and len(ts) <= 15 \
            else _int_field(media, "timestamp")
        b64 = media.get("payload")
        if not isinstance(b64, str):
            raise _Bad("missing_field", "media.payload")
        if not b64:
            raise _Bad("empty_payload", "media.payload is empty")
        try:
            # strict: only the base64 alphabet and correct padding (what b64decode(validate=True) checks)
            payload = binascii.a2b_base64(b64, strict_mode=True)
        except (binascii.Error, ValueError) as exc:
            raise _Bad("bad_base64", str(exc)[:80]) from None
        if not payload:
            raise _Bad("empty_payload", "media.payload decodes to nothing")

        media_event = Media(track, chunk, ts, payload)
        timing = self._timing.observe(track, ts, len(payload), now)
        if timing is None:
            return [media_event]
        if isinstance(timing, Backwards):
            return [Problem("timestamp_backwards", False, f"{track} {timing.last_ts_ms} → {ts}"), media_event]
        return [timing, media_event]

    def _dtmf(self, msg: dict[str, Any]) -> list[TwilioEvent]:
        self._check_stream(msg, "dtmf")
        dtmf = msg.get("dtmf")
        if not isinstance(dtmf, dict):
            raise _Bad("missing_field", "no 'dtmf' object")
        track = _TRACK_NAMES.get(str(dtmf.get("track", "inbound_track")))
        if track is None:
            raise _Bad("unknown_track", str(dtmf.get("track"))[:40])
        digit = dtmf.get("digit")
        if not isinstance(digit, str) or digit.upper() not in DTMF_DIGITS:
            raise _Bad("bad_dtmf", repr(digit)[:20])
        return [Dtmf(track, digit.upper())]

    def _mark(self, msg: dict[str, Any]) -> list[TwilioEvent]:
        self._check_stream(msg, "mark")
        mark = msg.get("mark")
        if not isinstance(mark, dict) or not isinstance(mark.get("name"), str):
            raise _Bad("missing_field", "mark.name")
        return [Mark(mark["name"])]

    def _stop(self, msg: dict[str, Any]) -> list[TwilioEvent]:
        self._check_stream(msg, "stop")
        self.stopped = True
        return [Stopped()]

    # problems ----------------------------------------------------------------------------------
    def _problem(self, reason: str, detail: str) -> list[TwilioEvent]:
        if self.started is None:
            self._problems_before_start += 1
            if self._problems_before_start > self.max_problems_before_start:
                return self._fatal("too_many_errors", f"{self._problems_before_start} bad messages "
                                   f"before start (last: {reason})")
        return [Problem(reason, False, detail)]

    def _fatal(self, reason: str, detail: str) -> list[TwilioEvent]:
        self.failed = True
        return [Problem(reason, True, detail)]


def _opt_str(msg: Mapping[str, Any], key: str) -> str:
    value = msg.get(key, "")
    return value if isinstance(value, str) else str(value)


def _int_field(obj: Mapping[str, Any], key: str) -> int:
    """Twilio sends numbers as decimal strings; plain JSON integers are accepted too."""
    value = obj.get(key)
    if value is None:
        raise _Bad("missing_field", f"media.{key}")
    if isinstance(value, bool):
        raise _Bad("bad_field", f"media.{key}={value!r}")
    if isinstance(value, int):
        result = value
    elif isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 15:
        result = int(value)
    else:
        raise _Bad("bad_field", f"media.{key}={value!r}"[:60])
    if result < 0:
        raise _Bad("bad_field", f"media.{key}={value!r}")
    return result


def _media_format(raw: object) -> MediaFormat | None:
    """None when malformed. A missing mediaFormat means Twilio's default (μ-law 8 kHz mono)."""
    if raw is None:
        return MediaFormat(MULAW_ENCODING, MULAW_RATE, 1)
    if not isinstance(raw, dict):
        return None
    encoding = raw.get("encoding")
    rate = raw.get("sampleRate")
    channels = raw.get("channels", 1)
    if not isinstance(encoding, str):
        return None
    try:
        rate_i = int(rate) if isinstance(rate, int | str) and not isinstance(rate, bool) else None
        channels_i = int(channels) if isinstance(channels, int | str) and not isinstance(channels, bool) else None
    except ValueError:
        return None
    if rate_i is None or channels_i is None:
        return None
    return MediaFormat(encoding, rate_i, channels_i)
